//! The merchant's intent records (`tracklayer::intent_store`) over SQLite, as the
//! merchant's object runs them: a scored journey, the high-intent queue and its alert,
//! abandons found on wake-up, the timeline with identify and conversions, the seed
//! batch and its idempotency, erasure and retention.

use crate::records_store::{store, Sqlite};
use serde_json::json;
use tracklayer::identity::Touchpoints;
use tracklayer::intent::{Activity, FormStep, IntentSettings, Rule};
use tracklayer::intent_store::{IntentStore, SeedRun, SeedRunStatus, TimelineEntry};
use tracklayer::pixel::{visitor_key, Capture};
use tracklayer::records::{Param, Records, Sql};

const MERCHANT: &str = "m_intent";
const T0: i64 = 1_780_000_000_000;
const MIN: i64 = 60_000;
const VISITOR: &str = "0123456789abcdef0123456789abcdef";
const OTHER: &str = "fedcba9876543210fedcba9876543210";
/// printf '%s' 'ada@example.com' | sha256sum
const ADA_SHA256: &str = "b5fc85e55755f9e0d030a10ab4429b6b2944855f9a0d60077fe832becbc41d72";

fn view(path: &str) -> Activity {
    Activity::page_view(path, Some("Title")).unwrap()
}

fn settings_with_alert() -> IntentSettings {
    IntentSettings {
        alert_webhook_url: Some("https://hooks.slack.com/services/T0/B0/x".into()),
        ..IntentSettings::default()
    }
    .validated()
    .unwrap()
}

/// Pricing, three docs pages, a demo form started and left, a competitor page.
fn journey(intent: &IntentStore, settings: &IntentSettings, visitor: &str) {
    let key = visitor_key(visitor);
    let steps = [
        (T0, view("/pricing")),
        (T0 + MIN, view("/docs/a")),
        (T0 + 2 * MIN, view("/docs/b")),
        (T0 + 3 * MIN, view("/docs/c")),
        (T0 + 4 * MIN, view("/demo")),
        (
            T0 + 5 * MIN,
            Activity::form("demo", FormStep::Start, Some("/demo")).unwrap(),
        ),
        (T0 + 6 * MIN, view("/vs/competitor")),
    ];
    for (at, activity) in steps {
        assert_eq!(intent.observe(settings, &key, at, &activity).unwrap(), None);
    }
}

fn identify(sql: &Sqlite, visitor: &str, email: &str, at: i64) {
    let capture = Capture {
        visitor_key: visitor_key(visitor),
        touchpoints: Touchpoints::default(),
        link_keys: vec![format!("email:{email}")],
        reports_ids: true,
        activity: None,
    };
    Records::new(sql, MERCHANT)
        .record_visitor(&capture, at)
        .unwrap();
}

fn count(sql: &Sqlite, table: &str) -> i64 {
    sql.query(&format!("SELECT count(*) AS n FROM {table}"), vec![])
        .unwrap()[0]["n"]
        .as_i64()
        .unwrap()
}

#[test]
fn a_journey_qualifies_once_on_wake_up_and_queues_one_alert() {
    let sql = store();
    let intent = IntentStore::new(&sql, MERCHANT);
    let settings = settings_with_alert();
    journey(&intent, &settings, VISITOR);
    // The demo form's window (30 min from T0 + 5 min) is the object's next wake-up.
    assert_eq!(intent.next_wakeup().unwrap(), Some(T0 + 35 * MIN));
    assert_eq!(intent.expire_due(&settings, T0 + 34 * MIN).unwrap(), 0);
    assert_eq!(intent.expire_due(&settings, T0 + 35 * MIN).unwrap(), 1);
    let queue = intent.queue(&settings, T0 + 36 * MIN, 10, 0).unwrap();
    assert_eq!(queue.len(), 1);
    assert_eq!(queue[0].visitor_id, VISITOR);
    assert_eq!(queue[0].score, 20.0);
    assert_eq!(queue[0].qualified_at, Some(T0 + 35 * MIN));
    assert_eq!(queue[0].qualified_rule, Some(Rule::DemoFormAbandon));
    assert_eq!(queue[0].page_views, 6);
    // The alert is due at once; a failure backs off, a success is final.
    identify(&sql, VISITOR, "ada@example.com", T0 + 37 * MIN);
    let alerts = intent.due_alerts(T0 + 40 * MIN, 10).unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].email.as_deref(), Some("ada@example.com"));
    intent
        .alert_result(VISITOR, Some("HTTP 500"), T0 + 40 * MIN)
        .unwrap();
    assert!(intent.due_alerts(T0 + 40 * MIN, 10).unwrap().is_empty());
    assert_eq!(intent.next_wakeup().unwrap(), Some(T0 + 40 * MIN + 30_000));
    intent.alert_result(VISITOR, None, T0 + 41 * MIN).unwrap();
    assert_eq!(intent.next_wakeup().unwrap(), None);
    // More activity never queues the visitor or alerts again.
    intent
        .observe(
            &settings,
            &visitor_key(VISITOR),
            T0 + DAY,
            &view("/pricing"),
        )
        .unwrap();
    assert_eq!(count(&sql, "intent_alerts"), 1);
    let row = &sql
        .query("SELECT qualified_at FROM intent_visitors", vec![])
        .unwrap()[0];
    assert_eq!(row["qualified_at"], json!(T0 + 35 * MIN));
}

const DAY: i64 = 86_400_000;

#[test]
fn visitors_rank_by_score_and_the_timeline_tells_the_whole_path() {
    let sql = store();
    let intent = IntentStore::new(&sql, MERCHANT);
    let settings = IntentSettings::default();
    journey(&intent, &settings, VISITOR);
    intent
        .observe(&settings, &visitor_key(OTHER), T0, &view("/vs/other"))
        .unwrap();
    intent.expire_due(&settings, T0 + 40 * MIN).unwrap();
    let ranked = intent.ranked(&settings, T0 + 40 * MIN, 10, 0).unwrap();
    let order: Vec<(&str, f64)> = ranked
        .iter()
        .map(|v| (v.visitor_id.as_str(), v.score))
        .collect();
    assert_eq!(order, [(VISITOR, 20.0), (OTHER, 4.0)]);
    assert_eq!(intent.ranked(&settings, T0, 10, 1).unwrap().len(), 1);

    identify(&sql, VISITOR, "ada@example.com", T0 + 50 * MIN);
    // A billing conversion for the same person, after the visit.
    sql.execute(
        "INSERT INTO canonical_events (event_id, merchant_id, name, source, source_event_id, source_event_type, \
           occurred_at_s, payload, received_at) VALUES ('ev_1', ?1, 'subscription_started', 'stripe', 'evt_1', \
           'invoice.paid', ?2, ?3, ?4)",
        vec![
            MERCHANT.into(),
            Param::Int((T0 + DAY) / 1000),
            json!({ "customer": { "email": "Ada@Example.com" }, "values": { "currency": "USD", "mrr": "49.00" } })
                .to_string()
                .into(),
            Param::Int(T0 + DAY),
        ],
    )
    .unwrap();
    let timeline = intent
        .timeline(&settings, T0 + 2 * DAY, VISITOR, 500)
        .unwrap()
        .expect("visitor");
    assert_eq!(timeline.visitor.emails, ["ada@example.com"]);
    let kinds: Vec<String> = timeline
        .entries
        .iter()
        .map(|e| match e {
            TimelineEntry::PageView { path, .. } => format!("view {path}"),
            TimelineEntry::FormStart { form, .. } => format!("start {form}"),
            TimelineEntry::FormSubmit { form, .. } => format!("submit {form}"),
            TimelineEntry::Signal { rule, points, .. } => format!("+{points} {}", rule.as_str()),
            TimelineEntry::Qualified { score, .. } => format!("qualified {score}"),
            TimelineEntry::Identify { identity, .. } => format!("identify {identity}"),
            TimelineEntry::Conversion { name, .. } => format!("conversion {name}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "view /pricing",
            "+5 pricing_page",
            "view /docs/a",
            "view /docs/b",
            "view /docs/c",
            "+3 docs_deep_dive",
            "view /demo",
            "start demo",
            "view /vs/competitor",
            "+4 competitor_page",
            "+8 demo_form_abandon",
            "qualified 20",
            "identify email:ada@example.com",
            "conversion subscription_started",
        ]
    );
    assert!(intent
        .timeline(&settings, T0, "00000000000000000000000000000000", 10)
        .unwrap()
        .is_none());
}

#[test]
fn the_seed_batch_uploads_each_visitor_with_an_email_once_per_segment() {
    let sql = store();
    let intent = IntentStore::new(&sql, MERCHANT);
    let settings = IntentSettings::default();
    journey(&intent, &settings, VISITOR);
    journey(&intent, &settings, OTHER);
    intent.expire_due(&settings, T0 + 40 * MIN).unwrap();
    identify(&sql, VISITOR, " Ada@Example.com ", T0 + 41 * MIN);
    let segment = "urn:li:dmpSegment:1234";
    let batch = intent.seed_batch(segment, 100).unwrap();
    assert_eq!(batch.skipped_without_email, 1, "OTHER has no email yet");
    assert_eq!(batch.candidates.len(), 1);
    assert_eq!(batch.candidates[0].email_sha256, [ADA_SHA256]);
    let run = SeedRun {
        day: "2026-05-28".into(),
        trigger: "cron".into(),
        started_at: T0 + DAY,
        finished_at: T0 + DAY + 1_000,
        status: SeedRunStatus::Succeeded,
        segment: Some(segment.into()),
        uploaded: 1,
        skipped_without_email: 1,
        failed: 0,
        error: None,
        segment_size: Some(0),
        segment_status: Some("BUILDING".into()),
    };
    intent.record_seed_run(&run, &batch.candidates).unwrap();
    // A second run the same day finds nothing new; another segment starts over.
    let again = intent.seed_batch(segment, 100).unwrap();
    assert!(again.candidates.is_empty());
    assert_eq!(
        intent
            .seed_batch("urn:li:dmpSegment:99", 100)
            .unwrap()
            .candidates
            .len(),
        1
    );
    // The other visitor identifies later and goes in the next run.
    identify(&sql, OTHER, "grace@example.com", T0 + 2 * DAY);
    let next = intent.seed_batch(segment, 100).unwrap();
    assert_eq!(next.candidates.len(), 1);
    assert_eq!(next.candidates[0].visitor_key, visitor_key(OTHER));
    assert_eq!(intent.seed_uploaded(segment).unwrap(), 1);
    let runs = intent.seed_runs(10).unwrap();
    assert_eq!(runs, [run]);
}

#[test]
fn a_changed_half_life_rekeys_the_ranking_and_settings_round_trip() {
    let sql = store();
    let intent = IntentStore::new(&sql, MERCHANT);
    assert_eq!(intent.settings().unwrap(), IntentSettings::default());
    let plain = IntentSettings::default();
    intent.save_settings(&plain, T0).unwrap();
    // Strong intent long ago, weak intent today.
    journey(&intent, &plain, VISITOR);
    intent.expire_due(&plain, T0 + 40 * MIN).unwrap();
    intent
        .observe(&plain, &visitor_key(OTHER), T0 + 30 * DAY, &view("/vs/x"))
        .unwrap();
    intent
        .observe(
            &plain,
            &visitor_key(OTHER),
            T0 + 30 * DAY + MIN,
            &view("/pricing"),
        )
        .unwrap();
    let first = |s: &IntentSettings| {
        intent.ranked(s, T0 + 30 * DAY, 1, 0).unwrap()[0]
            .visitor_id
            .clone()
    };
    assert_eq!(first(&plain), VISITOR, "20 points beat 9 without decay");
    let decaying = IntentSettings {
        decay_half_life_days: Some(7),
        ..plain.clone()
    };
    intent.save_settings(&decaying, T0 + 30 * DAY).unwrap();
    assert_eq!(intent.settings().unwrap(), decaying);
    assert_eq!(
        first(&decaying),
        OTHER,
        "20 points four half-lives ago are ~1"
    );
    intent.remember_segment("urn:li:dmpSegment:5").unwrap();
    assert_eq!(
        intent.stored_settings().unwrap().unwrap().1.as_deref(),
        Some("urn:li:dmpSegment:5")
    );
}

#[test]
fn erasure_and_retention_remove_a_visitors_intent() {
    let sql = store();
    let intent = IntentStore::new(&sql, MERCHANT);
    let settings = settings_with_alert();
    journey(&intent, &settings, VISITOR);
    journey(&intent, &settings, OTHER);
    intent.expire_due(&settings, T0 + 40 * MIN).unwrap();
    identify(&sql, VISITOR, "ada@example.com", T0 + 41 * MIN);
    let records = Records::new(&sql, MERCHANT);
    let counts = records
        .erase_customer(Some("ada@example.com"), None)
        .unwrap();
    assert_eq!(counts["intent_visitors"], 1);
    assert_eq!(counts["intent_activity"], 7);
    assert_eq!(counts["intent_signals"], 4);
    assert_eq!(counts["intent_alerts"], 1);
    assert!(intent
        .timeline(&settings, T0, VISITOR, 10)
        .unwrap()
        .is_none());
    assert!(intent.timeline(&settings, T0, OTHER, 10).unwrap().is_some());
    // Retention: the identity window covers intent too.
    let policy = tracklayer::retention::RetentionPolicy::default();
    let purges = policy.regional_purges(T0 + 400 * DAY);
    records.purge(&purges, T0).unwrap();
    for table in [
        "intent_visitors",
        "intent_activity",
        "intent_signals",
        "intent_alerts",
    ] {
        assert_eq!(count(&sql, table), 0, "{table}");
    }
}
