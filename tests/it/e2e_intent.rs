//! End to end under `wrangler dev`, in headless Chromium: the real pixel on a merchant's
//! site scores a buying journey (pricing, three docs pages, a demo form left unsent, a
//! competitor page), the visitor identifies and crosses the threshold once, the alert
//! goes out, the 09:00 UTC trigger uploads exactly that hashed email to a LinkedIn
//! stand-in once (a second trigger sends nothing), a Starter merchant's visitor with the
//! same path is scored but never sent, and the timeline pages sign in, rank and show
//! the journey in a real browser (screenshots under `target/e2e-output/intent/`).

use crate::support::{
    all_platforms_at, eventually, free_port, http, post_stripe, stripe_event, StandIn, Worker, ROOT,
};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);
const SECRET: &str = "whsec_intent_e2e";
/// The Stripe fixtures' customer: the visitor identifies as them.
const EMAIL: &str = "jane.doe@example.com";
const STARTER_EMAIL: &str = "grace.hopper@example.com";
const SEGMENT: &str = "urn:li:dmpSegment:7001";
const USERS_PATH: &str = "/rest/dmpSegments/7001/users";

pub(crate) fn output_dir() -> PathBuf {
    let dir = PathBuf::from(ROOT).join("target/e2e-output/intent");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub(crate) fn chromium(args: &[String]) -> Value {
    let output = Command::new("node")
        .arg(format!("{ROOT}/tests/it/support/chromium.cjs"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run node");
    assert!(
        output.status.success(),
        "chromium step failed (is Debian's chromium installed? scripts/test.sh installs it): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("chromium output is JSON")
}

/// A visitor's whole journey on a fresh browser; returns the driver's report.
fn journey(worker: &Worker, merchant: &str, email: &str) -> Value {
    let site_port = free_port();
    let pixel = worker.admin(
        "PUT",
        &format!("/v1/admin/merchants/{merchant}/pixel"),
        Some(&json!({ "allowed_origins": [format!("http://localhost:{site_port}")] })),
    );
    assert_eq!(pixel.status, 200, "{}", pixel.body);
    let snippet_file = output_dir().join(format!("{merchant}-snippet.html"));
    std::fs::write(&snippet_file, pixel.json()["snippet"].as_str().unwrap()).unwrap();
    chromium(&[
        "journey".into(),
        format!("http://127.0.0.1:{}", worker.port),
        snippet_file.to_string_lossy().into_owned(),
        email.into(),
        output_dir().to_string_lossy().into_owned(),
        site_port.to_string(),
    ])
}

fn merchant_api(worker: &Worker, key: &str, path: &str) -> Value {
    let auth = format!("Bearer {key}");
    let answer = http("GET", worker.port, path, &[("authorization", &auth)], b"");
    assert_eq!(answer.status, 200, "{path}: {}", answer.body);
    answer.json()
}

fn intent_settings(seed: Option<Value>) -> Value {
    let mut settings = json!({
        // Short, so the test need not wait half an hour for the abandon.
        "rules": { "demo_form_abandon": { "forms": ["demo"], "points": 8, "abandon_after_seconds": 3 } },
        "alert_webhook_url": "https://hooks.slack.com/services/T0000/B0000/intent-e2e",
    });
    if let Some(seed) = seed {
        settings["linkedin_seed"] = seed;
    }
    settings
}

fn fire_daily_cron(worker: &Worker) {
    let fired = http(
        "GET",
        worker.port,
        "/cdn-cgi/handler/scheduled?cron=0+9+*+*+*",
        &[],
        b"",
    );
    assert_eq!(fired.status, 200, "{}", fired.body);
}

#[test]
fn e2e_intent_journey_scores_once_syncs_the_seed_once_and_reads_in_the_browser() {
    let platforms = StandIn::start();
    let mut vars = all_platforms_at(&platforms.base_url());
    vars.push((
        "INTENT_ALERT_TEST_URL",
        format!("{}/alert", platforms.base_url()),
    ));
    vars.push(("PUBLIC_BASE_URL", "https://tracklayer.example".into()));
    let worker = Worker::start(&vars);
    worker.provision(
        json!({ "merchant_id": "m_intent_pro", "plan": "pro" }),
        &[("stripe", json!({ "endpoint_secrets": [SECRET] }))],
        &[(
            "linkedin",
            json!({ "access_token": "li_intent_e2e", "conversion_rules": { "subscription_started": "104099" } }),
        )],
    );
    worker.provision(
        json!({ "merchant_id": "m_intent_starter", "plan": "starter" }),
        &[],
        &[],
    );
    // LinkedIn accepts the user and reports the segment's size (below the 300 an
    // audience needs). The users path first: the stand-in matches fragments in order.
    platforms.script(USERS_PATH, vec![(200, r#"{"elements":[{"status":201}]}"#)]);
    let segment = r#"{"id":7001,"matchedCount":1,"destinations":[{"destination":"LINKEDIN","status":"BUILDING"}]}"#;
    platforms.script(
        "/rest/dmpSegments/7001",
        vec![(200, segment), (200, segment)],
    );

    // 1. Settings: the seed sync is a Pro feature; rules are validated when stored.
    let seed = json!({ "ad_account": "urn:li:sponsoredAccount:507404993", "segment": SEGMENT });
    let refused = worker.admin(
        "PUT",
        "/v1/admin/merchants/m_intent_starter/intent",
        Some(&intent_settings(Some(seed.clone()))),
    );
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(refused.json()["error"]["code"], "plan_required");
    let invalid = worker.admin(
        "PUT",
        "/v1/admin/merchants/m_intent_pro/intent",
        Some(&json!({ "rules": { "pricing_page": { "paths": ["pricing"], "points": 5 } } })),
    );
    assert_eq!(invalid.status, 422, "{}", invalid.body);
    for (merchant, seed) in [("m_intent_pro", Some(seed)), ("m_intent_starter", None)] {
        let saved = worker.admin(
            "PUT",
            &format!("/v1/admin/merchants/{merchant}/intent"),
            Some(&intent_settings(seed)),
        );
        assert_eq!(saved.status, 200, "{}", saved.body);
    }

    // 2. The Pro merchant's visitor, in Chromium.
    let pro = journey(&worker, "m_intent_pro", EMAIL);
    let visitor_id = pro["visitor_id"]
        .as_str()
        .expect("visitor cookie")
        .to_string();
    let requests = pro["worker_requests"].as_array().unwrap();
    let beacons: Vec<Value> = requests
        .iter()
        .filter(|r| r["method"] == "POST")
        .map(|r| serde_json::from_str(r["body"].as_str().unwrap()).unwrap())
        .collect();
    // No request to TrackLayer carries the page's URL, though the page allows it.
    for request in requests {
        assert!(
            request["referer"].is_null(),
            "a Referer left the page: {request}"
        );
    }
    let all = serde_json::to_string(&beacons).unwrap();
    assert!(
        !all.contains("utm_source") && !all.contains("leak") && !all.contains("#plans"),
        "query and fragment stay on the page: {all}"
    );
    let paths: Vec<&str> = beacons
        .iter()
        .filter_map(|b| b["page"]["path"].as_str())
        .collect();
    assert_eq!(
        paths,
        [
            "/pricing",
            "/docs/a",
            "/docs/b",
            "/docs/c",
            "/demo",
            "/vs/competitor",
            "/welcome"
        ]
    );
    assert_eq!(beacons[0]["landing"]["gclid"], "Cj0KCQiA-intent-gclid");
    assert!(beacons
        .iter()
        .any(|b| b["form"] == json!({ "form": "demo", "step": "start", "path": "/demo" })));
    assert!(beacons.iter().any(|b| b["identify"]["email"] == EMAIL));

    // 3. The same path on the Starter merchant: scored, never synced.
    let starter = journey(&worker, "m_intent_starter", STARTER_EMAIL);
    let starter_visitor = starter["visitor_id"].as_str().unwrap().to_string();

    // 4. The abandon is found by the object's alarm: 20 points, in the queue once.
    let key = worker
        .admin(
            "POST",
            "/v1/admin/merchants/m_intent_pro/api-keys",
            Some(&json!({ "label": "timeline" })),
        )
        .json()["api_key"]
        .as_str()
        .unwrap()
        .to_string();
    let queue = eventually(WAIT, "the visitor in the high-intent queue", || {
        let queue = merchant_api(&worker, &key, "/v1/merchants/m_intent_pro/intent/queue");
        (queue["visitors"].as_array().map(Vec::len) == Some(1)).then_some(queue)
    });
    let queued = &queue["visitors"][0];
    assert_eq!(queued["visitor_id"], visitor_id.as_str());
    assert_eq!(queued["score"], 20.0, "{queued}");
    assert_eq!(queued["qualified_rule"], "demo_form_abandon");
    assert_eq!(queued["emails"], json!([EMAIL]));
    let alert = eventually(WAIT, "the high-intent alert", || {
        platforms.requests_to("/alert").first().cloned()
    });
    let message: Value = serde_json::from_str(&alert.body).unwrap();
    assert_eq!(message["visitor_id"], visitor_id.as_str());
    assert!(
        message["text"].as_str().unwrap().contains(&format!(
            "https://tracklayer.example/app/visitors/{visitor_id}"
        )),
        "{message}"
    );
    let starter_queue = eventually(WAIT, "the Starter visitor scored", || {
        let rows = worker.object_rows(
            Some("us"),
            &format!(
                "SELECT qualified_at FROM intent_visitors WHERE merchant_id = 'm_intent_starter' \
                 AND visitor_key = 'visitor:{starter_visitor}' AND qualified_at IS NOT NULL"
            ),
        );
        (!rows.is_empty()).then_some(rows)
    });
    assert_eq!(starter_queue.len(), 1);

    // A billing conversion for the same person follows, and joins the timeline.
    let customer = stripe_event("customer.created.json", "evt_intent_customer");
    assert_eq!(
        post_stripe(&worker, "m_intent_pro", SECRET, &customer).status,
        202
    );
    let paid = stripe_event(
        "customer.subscription.updated.trial-converted.json",
        "evt_intent_paid",
    );
    let answer = post_stripe(&worker, "m_intent_pro", SECRET, &paid);
    assert_eq!(answer.status, 202, "{}", answer.body);

    // 5. 09:00 UTC: exactly the hashed email goes to LinkedIn, once.
    fire_daily_cron(&worker);
    let upload = eventually(WAIT, "the seed upload", || {
        platforms.requests_to(USERS_PATH).first().cloned()
    });
    assert_eq!(upload.method, "POST");
    let header = |name: &str| {
        upload
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("x-restli-method").as_deref(), Some("BATCH_CREATE"));
    assert_eq!(
        header("x-restli-protocol-version").as_deref(),
        Some("2.0.0")
    );
    assert!(header("linkedin-version").is_some());
    assert_eq!(
        header("authorization").as_deref(),
        Some("Bearer li_intent_e2e")
    );
    let body: Value = serde_json::from_str(&upload.body).unwrap();
    assert_eq!(
        body,
        json!({ "elements": [{ "action": "ADD", "userIds": [{
            "idType": "SHA256_EMAIL",
            "idValue": tracklayer::hashing::sha256_hex(EMAIL)
        }]}]})
    );
    let runs = eventually(WAIT, "the first run recorded", || {
        let overview = merchant_api(&worker, &key, "/v1/merchants/m_intent_pro/intent");
        (!overview["seed_sync"]["runs"].as_array()?.is_empty()).then_some(overview)
    });
    assert_eq!(runs["seed_sync"]["runs"][0]["uploaded"], 1, "{runs}");
    assert_eq!(runs["seed_sync"]["segment_size"], 1);
    assert_eq!(runs["seed_sync"]["minimum_to_serve"], 300);

    // A second trigger the same day uploads nothing.
    fire_daily_cron(&worker);
    let second = eventually(WAIT, "the second run recorded", || {
        let overview = merchant_api(&worker, &key, "/v1/merchants/m_intent_pro/intent");
        (overview["seed_sync"]["runs"].as_array()?.len() == 2).then_some(overview)
    });
    assert_eq!(second["seed_sync"]["runs"][0]["uploaded"], 0, "{second}");
    assert_eq!(second["seed_sync"]["uploaded_visitors"], 1);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(platforms.requests_to(USERS_PATH).len(), 1);
    let starter_hash = tracklayer::hashing::sha256_hex(STARTER_EMAIL);
    assert!(
        platforms
            .requests_to("/rest/")
            .iter()
            .all(|r| !r.body.contains(&starter_hash)),
        "the Starter merchant's visitor is never sent"
    );

    // 6. The timeline over the API, then the pages in Chromium.
    let timeline = merchant_api(
        &worker,
        &key,
        &format!("/v1/merchants/m_intent_pro/intent/visitors/{visitor_id}"),
    );
    let kinds: Vec<&str> = timeline["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for kind in [
        "page_view",
        "form_start",
        "signal",
        "qualified",
        "identify",
        "conversion",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing: {timeline}");
    }
    let foreign = http(
        "GET",
        worker.port,
        &format!("/v1/merchants/m_intent_starter/intent/visitors/{starter_visitor}"),
        &[("authorization", &format!("Bearer {key}"))],
        b"",
    );
    assert_eq!(foreign.status, 403, "a key reads only its own merchant");

    // `localhost`: browsers keep Secure cookies from http://localhost only (tests).
    let pages = chromium(&[
        "pages".into(),
        format!("http://localhost:{}", worker.port),
        key.clone(),
        visitor_id.clone(),
        output_dir().to_string_lossy().into_owned(),
    ]);
    assert_eq!(pages["wrong_key"]["status"], 401, "{pages}");
    assert_eq!(pages["wrong_key"]["cookies"], 0);
    let csp = pages["csp"].as_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    let cookie = &pages["cookie"];
    assert_eq!(cookie["httpOnly"], true, "{cookie}");
    assert_eq!(cookie["secure"], true);
    assert_eq!(cookie["sameSite"], "Strict");
    assert_eq!(cookie["path"], "/app");
    let lifetime = cookie["expires"].as_f64().unwrap() - crate::support::now() as f64;
    assert!(
        (7.0 * 3600.0..=8.0 * 3600.0 + 60.0).contains(&lifetime),
        "{cookie}"
    );
    let ranked = pages["home"]["ranked"].as_array().unwrap();
    assert_eq!(ranked.len(), 1, "{pages}");
    let first = ranked[0].as_array().unwrap();
    assert!(first[1].as_str().unwrap().contains(EMAIL), "{first:?}");
    assert_eq!(first[2], "20");
    assert!(
        pages["home"]["seed"]
            .as_str()
            .unwrap()
            .contains("at least 300 matched members"),
        "{pages}"
    );
    assert!(pages["home"]["scripts_ran"].as_u64().unwrap() > 0);
    assert_eq!(pages["visitor"]["score"], "20");
    let lines: Vec<&str> = pages["visitor"]["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    for expected in [
        "Viewed /pricing",
        "+5 Pricing page visit",
        "+3 Docs deep dive",
        "Started the demo form",
        "+4 Competitor comparison page",
        "+8 Demo form abandoned",
        "Entered the high-intent queue at 20 points",
        "Identified by email jane.doe@example.com",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(expected)),
            "{expected:?} not in {lines:#?}"
        );
    }
    assert!(
        lines.iter().any(|l| l.contains("from stripe")),
        "the conversion: {lines:#?}"
    );
    assert!(
        pages["phone_scroll_width"].as_u64().unwrap() <= 390,
        "the overview fits a phone: {pages}"
    );
    assert_eq!(pages["signed_out"]["cookies"], 0);
    assert_eq!(pages["signed_out"]["sign_in_form"], true);
    for shot in pages["screenshots"].as_array().unwrap() {
        let path = shot.as_str().unwrap();
        assert!(std::fs::metadata(path).unwrap().len() > 1000, "{path}");
        println!("screenshot: {path}");
    }
}
