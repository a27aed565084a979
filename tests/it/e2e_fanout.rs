//! End to end through `wrangler dev`: one Stripe `trial_converted` fanned out to all six
//! platforms (recording stand-ins), carrying the click ids the app captured at signup
//! three weeks earlier; then the fault cases: Google Ads partial failure on one row of a
//! batch and a LinkedIn 426 version sunset.
//!
//! Needs the toolchain from `bash scripts/setup.sh` (the README test command runs it).

use crate::support;

use crate::support::{
    carrying, eventually, http, now, post_stripe, stripe_event, Recorded, StandIn, Worker,
};
use serde_json::{json, Value};
use std::thread;
use std::time::Duration;
use tracklayer::hashing::sha256_hex;

const SECRET: &str = "whsec_fanout_e2e";
const WAIT: Duration = Duration::from_secs(60);
const GOOGLE_UPLOAD: &str = "/v26/customers/1234567890:uploadClickConversions";
const EMAIL: &str = "jane.doe@example.com";

fn product_events(worker: &Worker, key: &str, body: &Value) -> support::HttpResponse {
    let auth = format!("Bearer {key}");
    http(
        "POST",
        worker.port,
        "/v1/product-events",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
}

fn items(worker: &Worker, merchant: &str, view: &str) -> Vec<Value> {
    let answer = worker.admin(
        "GET",
        &format!("/v1/admin/merchants/{merchant}/{view}"),
        None,
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The row of a batched request body that carries this event (`id_field` = its id).
fn row(request: &Recorded, list: &str, id_field: &str, event_id: &str) -> Value {
    request.json()[list]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r[id_field] == event_id).cloned())
        .unwrap_or_else(|| panic!("no row for {event_id} in {}", request.body))
}

fn api_key(worker: &Worker, merchant: &str) -> String {
    let created = worker.admin(
        "POST",
        &format!("/v1/admin/merchants/{merchant}/api-keys"),
        None,
    );
    assert_eq!(created.status, 201, "{}", created.body);
    created.json()["api_key"].as_str().unwrap().to_string()
}

#[test]
fn one_trial_conversion_reaches_all_six_platforms_and_faults_end_right() {
    let platforms = StandIn::start();
    platforms.script(
        "/token",
        vec![(
            200,
            r#"{"access_token":"ya29.e2e-access","expires_in":3599,"scope":"https://www.googleapis.com/auth/adwords","token_type":"Bearer"}"#,
        )],
    );
    // TikTok judges by the body's `code`; the stand-in's default answer has none.
    let tiktok_ok = r#"{"code":0,"message":"OK","request_id":"e2e","data":{}}"#;
    platforms.script("/open_api/v1.3/event/track/", vec![(200, tiktok_ok); 10]);
    let base = platforms.base_url();
    let mut vars = support::all_platforms_at(&base);
    vars.push(("RETRY_BASE_DELAY_SECONDS", "1".into()));
    let worker = Worker::start(&vars);
    worker.provision(
        json!({ "merchant_id": "m_six", "plan": "scale" }),
        &[("stripe", json!({ "endpoint_secrets": [SECRET] }))],
        &[
            ("meta", json!({ "pixel_id": "px_six", "access_token": "tok_six_meta" })),
            ("klaviyo", json!({ "private_api_key": "pk_six_klaviyo_e2e" })),
            ("tiktok", json!({ "pixel_code": "CSIX00001", "access_token": "tt_six_e2e" })),
            ("ga4", json!({ "measurement_id": "G-SIX0001", "api_secret": "mp_six_e2e" })),
            (
                "linkedin",
                json!({ "access_token": "li_six_e2e", "conversion_rules": { "trial_converted": "104012" } }),
            ),
            (
                "google_ads",
                json!({
                    "customer_id": "123-456-7890",
                    "login_customer_id": "111-222-3333",
                    "refresh_token": "1//0e2e-refresh-token",
                    "conversion_actions": { "trial_converted": "987654321", "activation_milestone": "987654399" }
                }),
            ),
        ],
    );

    // Three weeks ago the app reported the signup with the cookies and click ids it read.
    let key = api_key(&worker, "m_six");
    let signed_up_at = now() - 21 * 86_400;
    let signup = product_events(
        &worker,
        &key,
        &json!({
            "event": "signup", "user_id": "u_jane", "email": "Jane.Doe@example.com",
            "occurred_at": signed_up_at,
            "context": {
                "_fbc": "fb.1.1793480000000.IwAR2fanout", "_fbp": "fb.1.1793480000000.1234567890",
                "gclid": "Cj0KCQiA-fanout-gclid", "li_fat_id": "3a1b2c3d-0000-4000-8000-00000000e2e0",
                "ttclid": "E.C.P.fanout-ttclid", "_ga": "GA1.1.1180129581.1793480000",
                "ip": "203.0.113.7", "user_agent": "Mozilla/5.0 (Macintosh) E2E", "phone": "+1 (616) 954-7888"
            }
        }),
    );
    assert_eq!(signup.status, 202, "{}", signup.body);

    // Stripe: the customer, then the trial conversion (which itself names no email).
    let customer = stripe_event("customer.created.json", "evt_fan_customer");
    assert_eq!(post_stripe(&worker, "m_six", SECRET, &customer).status, 202);
    let converted = stripe_event(
        "customer.subscription.updated.trial-converted.json",
        "evt_fan_converted",
    );
    let answer = post_stripe(&worker, "m_six", SECRET, &converted);
    assert_eq!(answer.status, 202, "{}", answer.body);
    let event = &answer.json()["events"][0];
    assert_eq!(event["name"], "trial_converted");
    let event_id = event["event_id"].as_str().unwrap().to_string();

    let sent = eventually(WAIT, "the conversion at all six platforms", || {
        let found = [
            carrying(platforms.requests_to("/px_six/events"), &event_id),
            carrying(platforms.requests_to("/api/events"), &event_id),
            carrying(
                platforms.requests_to("/open_api/v1.3/event/track/"),
                &event_id,
            ),
            carrying(platforms.requests_to("/mp/collect"), &event_id),
            carrying(platforms.requests_to("/rest/conversionEvents"), &event_id),
            carrying(platforms.requests_to(GOOGLE_UPLOAD), &event_id),
        ];
        found.iter().all(|r| !r.is_empty()).then_some(found)
    });
    // Settle, then check nothing went twice.
    thread::sleep(Duration::from_secs(3));
    let [meta, klaviyo, tiktok, ga4, linkedin, google] = sent;
    for (name, requests) in [
        ("meta", &meta),
        ("klaviyo", &klaviyo),
        ("tiktok", &tiktok),
        ("ga4", &ga4),
        ("linkedin", &linkedin),
        ("google_ads", &google),
    ] {
        assert_eq!(requests.len(), 1, "{name} got the conversion exactly once");
    }
    let email_hash = sha256_hex(EMAIL);

    // Meta: Subscribe, hashed email and phone (digits), click ids and device data unhashed.
    let m = &row(&meta[0], "data", "event_id", &event_id);
    assert_eq!(m["event_name"], "Subscribe");
    assert_eq!(m["event_id"], event_id.as_str());
    assert_eq!(m["user_data"]["em"][0], email_hash.as_str());
    assert_eq!(m["user_data"]["ph"][0], sha256_hex("16169547888").as_str());
    assert_eq!(m["user_data"]["fbc"], "fb.1.1793480000000.IwAR2fanout");
    assert_eq!(m["user_data"]["fbp"], "fb.1.1793480000000.1234567890");
    assert_eq!(m["user_data"]["client_ip_address"], "203.0.113.7");
    assert_eq!(
        m["user_data"]["client_user_agent"],
        "Mozilla/5.0 (Macintosh) E2E"
    );
    assert!(
        m["event_time"].as_i64().unwrap() < 10_000_000_000,
        "seconds"
    );

    // Klaviyo: metric = canonical name, profile by email, our id as unique_id.
    let k = klaviyo[0].json();
    assert_eq!(klaviyo[0].header("revision"), Some("2026-04-15"));
    assert_eq!(k["data"]["attributes"]["unique_id"], event_id.as_str());
    assert_eq!(
        k["data"]["attributes"]["metric"]["data"]["attributes"]["name"],
        "trial_converted"
    );
    assert_eq!(
        k["data"]["attributes"]["profile"]["data"]["attributes"]["email"],
        EMAIL
    );

    // TikTok: hashed email, unhashed ttclid, seconds.
    assert_eq!(tiktok[0].header("access-token"), Some("tt_six_e2e"));
    let t = &row(&tiktok[0], "data", "event_id", &event_id);
    assert_eq!(t["event_id"], event_id.as_str());
    assert_eq!(t["user"]["email"], email_hash.as_str());
    assert_eq!(t["user"]["ttclid"], "E.C.P.fanout-ttclid");

    // GA4: purchase, the client id from the _ga cookie captured at signup, microseconds.
    let g = ga4[0].json();
    assert!(ga4[0].target.contains("api_secret=mp_six_e2e"));
    assert_eq!(g["client_id"], "1180129581.1793480000");
    assert_eq!(g["events"][0]["name"], "purchase");
    assert!(g["timestamp_micros"].as_i64().unwrap() > 1_000_000_000_000_000);

    // LinkedIn: rule URN, milliseconds, SHA256_EMAIL and the li_fat_id.
    assert!(linkedin[0].header("linkedin-version").is_some());
    let l = linkedin[0].json();
    assert_eq!(l["conversion"], "urn:lla:llaPartnerConversion:104012");
    assert_eq!(l["eventId"], event_id.as_str());
    assert!(l["conversionHappenedAt"].as_i64().unwrap() > 1_000_000_000_000);
    let ids: Vec<&str> = l["user"]["userIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["idType"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["SHA256_EMAIL", "LINKEDIN_FIRST_PARTY_ADS_TRACKING_UUID"]
    );

    // Google Ads: OAuth refresh once, developer token and MCC headers, gclid, orderId.
    let token_calls = platforms.requests_to("/token");
    assert_eq!(token_calls.len(), 1);
    assert!(token_calls[0].body.contains("grant_type=refresh_token"));
    assert!(token_calls[0]
        .body
        .contains("refresh_token=1%2F%2F0e2e-refresh-token"));
    assert_eq!(
        google[0].header("authorization"),
        Some("Bearer ya29.e2e-access")
    );
    assert_eq!(google[0].header("developer-token"), Some("dev-token-e2e"));
    assert_eq!(google[0].header("login-customer-id"), Some("1112223333"));
    assert_eq!(google[0].json()["partialFailure"], true);
    let row = &row(&google[0], "conversions", "orderId", &event_id);
    assert_eq!(row["gclid"], "Cj0KCQiA-fanout-gclid");
    assert_eq!(row["orderId"], event_id.as_str());
    assert_eq!(
        row["conversionAction"],
        "customers/1234567890/conversionActions/987654321"
    );
    assert!(row["conversionDateTime"]
        .as_str()
        .unwrap()
        .ends_with("+00:00"));

    // Every delivery of the conversion is delivered, with its match score recorded.
    let deliveries: Vec<Value> = items(&worker, "m_six", "deliveries")
        .into_iter()
        .filter(|d| d["event_id"] == event_id.as_str())
        .collect();
    assert_eq!(deliveries.len(), 6, "{deliveries:?}");
    for d in &deliveries {
        assert_eq!(d["status"], "delivered", "{d}");
        assert!(d["match_score"].as_i64().unwrap() > 0, "{d}");
    }
    let meta_delivery = deliveries
        .iter()
        .find(|d| d["destination"] == "meta")
        .unwrap();
    assert_eq!(meta_delivery["match_score"], 100);
    assert!(meta_delivery["match_keys"]
        .as_str()
        .unwrap()
        .contains("fbc"));

    // Fault: Google Ads accepts one row of a batch and refuses the other.
    platforms.script(
        GOOGLE_UPLOAD,
        vec![(
            200,
            r#"{"partialFailureError":{"code":3,"message":"Partial failure","details":[{"@type":"type.googleapis.com/google.ads.googleads.v26.errors.GoogleAdsFailure","errors":[{"errorCode":{"conversionUploadError":"UNPARSEABLE_GCLID"},"message":"The imported gclid could not be decoded.","location":{"fieldPathElements":[{"fieldName":"conversions","index":1},{"fieldName":"gclid"}]}}],"requestId":"e2e"}]},"results":[{"gclid":"Cj0KCQiA-good","conversionAction":"customers/1234567890/conversionActions/987654399","conversionDateTime":"x"},{}]}"#,
        )],
    );
    let before = platforms.requests_to(GOOGLE_UPLOAD).len();
    let milestones = product_events(
        &worker,
        &key,
        &json!({ "events": [
            { "event": "activation_milestone", "user_id": "u_good", "milestone": "first_invoice_sent",
              "email": "good@example.com", "context": { "gclid": "Cj0KCQiA-good" } },
            { "event": "activation_milestone", "user_id": "u_bad", "milestone": "first_invoice_sent",
              "email": "bad@example.com", "context": { "gclid": "not-a-gclid" } }
        ]}),
    );
    assert_eq!(milestones.status, 202, "{}", milestones.body);
    let dead = eventually(WAIT, "the refused row in the dead letters", || {
        let letters: Vec<Value> = items(&worker, "m_six", "dead-letters")
            .into_iter()
            .filter(|l| l["destination"] == "google_ads")
            .collect();
        (!letters.is_empty()).then_some(letters)
    });
    assert_eq!(dead.len(), 1, "only the bad row: {dead:?}");
    assert!(dead[0]["last_error"]
        .as_str()
        .unwrap()
        .contains("UNPARSEABLE_GCLID"));
    let uploads = platforms.requests_to(GOOGLE_UPLOAD);
    assert_eq!(uploads.len(), before + 1, "both rows in one request");
    assert_eq!(
        uploads[before].json()["conversions"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let google_rows: Vec<Value> = items(&worker, "m_six", "deliveries")
        .into_iter()
        .filter(|d| d["destination"] == "google_ads" && d["event_id"] != event_id.as_str())
        .collect();
    let statuses: Vec<&str> = google_rows
        .iter()
        .map(|d| d["status"].as_str().unwrap())
        .collect();
    assert!(statuses.contains(&"delivered"), "{google_rows:?}");
    assert!(statuses.contains(&"dead_lettered"), "{google_rows:?}");
    assert_eq!(
        platforms.requests_to("/token").len(),
        1,
        "the access token is cached"
    );

    // Fault: LinkedIn retired the pinned version before the date we hold for it (426)
    // → dead letter with a hint.
    worker.provision(
        json!({ "merchant_id": "m_li_old", "plan": "scale" }),
        &[("stripe", json!({ "endpoint_secrets": [SECRET] }))],
        &[(
            "linkedin",
            json!({ "access_token": "li_old_e2e", "linkedin_version": support::linkedin_version_near_sunset(),
                    "conversion_rules": { "trial_started": "104011" } }),
        )],
    );
    platforms.script(
        "/rest/conversionEvents",
        vec![(
            426,
            r#"{"status":426,"code":"NONEXISTENT_VERSION","message":"Requested version 20241101 is not active"}"#,
        )],
    );
    let customer = stripe_event("customer.created.json", "evt_li_old_customer");
    assert_eq!(
        post_stripe(&worker, "m_li_old", SECRET, &customer).status,
        202
    );
    let trial = stripe_event("customer.subscription.created.trialing.json", "evt_li_old");
    assert_eq!(post_stripe(&worker, "m_li_old", SECRET, &trial).status, 202);
    let letters = eventually(WAIT, "the 426 dead letter", || {
        let letters = items(&worker, "m_li_old", "dead-letters");
        (!letters.is_empty()).then_some(letters)
    });
    assert_eq!(letters[0]["reason"], "permanent");
    let error = letters[0]["last_error"].as_str().unwrap();
    assert!(error.contains("HTTP 426"), "{error}");
    assert!(error.contains("set a current linkedin_version"), "{error}");
}
