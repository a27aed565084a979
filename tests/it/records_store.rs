//! The merchant's records (`tracklayer::records`) run natively against SQLite, as the
//! merchant's Durable Object runs them: dedup, "enqueued once", admission, outcomes,
//! replay, erasure, retention and the sweeper's view, over real signed Stripe fixtures.

use crate::mapping;

use rusqlite::types::ValueRef;
use serde_json::{json, Map, Value};
use tracklayer::config::MerchantConfig;
use tracklayer::delivery::{AttemptOutcome, DeadLetter, DeliveryJob, DeliveryStatus, EventMessage};
use tracklayer::records::{
    self, AdmitRequest, AttemptRecord, Claimed, Outcomes, Param, Records, RecordsError, Sql,
};
use tracklayer::sources::{self, Headers, SourceOutput};

const SECRET: &str = "whsec_records_store";
const MERCHANT: &str = "m_records";
const NOW_MS: i64 = 1_773_000_000_000;

pub(crate) struct Sqlite(pub(crate) rusqlite::Connection);

fn bind(params: Vec<Param>) -> Vec<rusqlite::types::Value> {
    params
        .into_iter()
        .map(|p| match p {
            Param::Null => rusqlite::types::Value::Null,
            Param::Int(i) => rusqlite::types::Value::Integer(i),
            Param::Real(f) => rusqlite::types::Value::Real(f),
            Param::Text(t) => rusqlite::types::Value::Text(t),
        })
        .collect()
}

impl Sql for Sqlite {
    fn query(&self, sql: &str, params: Vec<Param>) -> records::Result<Vec<Map<String, Value>>> {
        let error = |e: rusqlite::Error| RecordsError(format!("{sql}: {e}"));
        let mut statement = self.0.prepare(sql).map_err(error)?;
        let names: Vec<String> = statement
            .column_names()
            .iter()
            .map(|n| n.to_string())
            .collect();
        let mut rows = statement
            .query(rusqlite::params_from_iter(bind(params)))
            .map_err(error)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(error)? {
            let mut object = Map::new();
            for (i, name) in names.iter().enumerate() {
                let value = match row.get_ref(i).map_err(error)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(n) => Value::from(n),
                    ValueRef::Real(f) => Value::from(f),
                    ValueRef::Text(t) => Value::from(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(_) => Value::Null,
                };
                object.insert(name.clone(), value);
            }
            out.push(object);
        }
        Ok(out)
    }

    fn execute(&self, sql: &str, params: Vec<Param>) -> records::Result<u64> {
        self.0
            .execute(sql, rusqlite::params_from_iter(bind(params)))
            .map(|n| n as u64)
            .map_err(|e| RecordsError(format!("{sql}: {e}")))
    }
}

pub(crate) fn store() -> Sqlite {
    let sql = Sqlite(rusqlite::Connection::open_in_memory().unwrap());
    records::migrate(&sql).unwrap();
    sql
}

fn merchant() -> MerchantConfig {
    MerchantConfig {
        merchant_id: MERCHANT.into(),
        plan: tracklayer::config::Plan::Scale,
        ..MerchantConfig::default()
    }
    .with_source("stripe", json!({ "endpoint_secrets": [SECRET] }))
    .with_destination("meta", json!({ "pixel_id": "1", "access_token": "t" }))
    .with_destination("tiktok", json!({ "pixel_code": "C1", "access_token": "t" }))
}

/// A Stripe fixture as Stripe would send it: fresh id, signed.
fn stripe(fixture: &str, event_id: &str) -> SourceOutput {
    stripe_created(fixture, event_id, None)
}

/// As [`stripe`], sent at `created` (unix seconds) instead of the fixture's time.
fn stripe_created(fixture: &str, event_id: &str, created: Option<i64>) -> SourceOutput {
    let mut payload: Value = serde_json::from_slice(&mapping::fixture("stripe", fixture)).unwrap();
    payload["id"] = json!(event_id);
    if let Some(created) = created {
        payload["created"] = json!(created);
    }
    let body = serde_json::to_vec(&payload).unwrap();
    let now = payload["created"].as_i64().unwrap();
    let headers = Headers::new().with(
        "Stripe-Signature",
        &sources::stripe::sign(SECRET, now, &body),
    );
    mapping::ingest_one("stripe", &merchant(), &headers, &body, now).expect("accepted")
}

fn ready(claimed: Claimed) -> Box<records::Prepared> {
    match claimed {
        Claimed::Ready(prepared) => prepared,
        Claimed::Duplicate(_) => panic!("duplicate"),
        Claimed::InFlight => panic!("in flight"),
    }
}

fn count(sql: &Sqlite, query: &str) -> i64 {
    sql.query(query, vec![]).unwrap()[0]["n"].as_i64().unwrap()
}

#[test]
fn a_notification_is_claimed_once_and_a_redelivery_is_a_duplicate() {
    let sql = store();
    let records = Records::new(&sql, MERCHANT);
    let output = stripe("customer.subscription.created.active.json", "evt_rec_1");
    let prepared = ready(
        records
            .prepare(output.clone(), &merchant(), NOW_MS)
            .unwrap(),
    );
    assert_eq!(prepared.plan_jobs.len(), 2, "one job per destination");
    assert_eq!(prepared.enqueue_events.len(), 1);
    // While the first is between claim and commit, a redelivery is told to retry.
    assert!(matches!(
        records
            .prepare(output.clone(), &merchant(), NOW_MS + 1)
            .unwrap(),
        Claimed::InFlight
    ));
    records.commit(&prepared, NOW_MS).unwrap();
    match records.prepare(output, &merchant(), NOW_MS + 2).unwrap() {
        Claimed::Duplicate(summary) => assert_eq!(summary["status"], "duplicate"),
        _ => panic!("a committed notification is a duplicate"),
    }
    assert_eq!(count(&sql, "SELECT count(*) AS n FROM deliveries"), 2);
    assert_eq!(
        count(&sql, "SELECT count(*) AS n FROM subscription_state"),
        1,
        "the subscription's state moved on"
    );
}

/// The claim is one statement on the common path. A claim whose holder died is taken
/// over once its lease has run out, not before; a committed one stays a duplicate.
#[test]
fn an_expired_claim_is_taken_over_and_a_committed_one_stays_a_duplicate() {
    use tracklayer::ledger::CLAIM_LEASE_MS;
    let sql = store();
    let records = Records::new(&sql, MERCHANT);
    let output = stripe("customer.subscription.created.active.json", "evt_lease_1");
    let _died = ready(
        records
            .prepare(output.clone(), &merchant(), NOW_MS)
            .unwrap(),
    );
    let lease_end = NOW_MS + CLAIM_LEASE_MS;
    assert!(matches!(
        records
            .prepare(output.clone(), &merchant(), lease_end - 1)
            .unwrap(),
        Claimed::InFlight
    ));
    let taken = ready(
        records
            .prepare(output.clone(), &merchant(), lease_end)
            .unwrap(),
    );
    records.commit(&taken, lease_end).unwrap();
    assert!(matches!(
        records
            .prepare(output, &merchant(), lease_end + CLAIM_LEASE_MS)
            .unwrap(),
        Claimed::Duplicate(_)
    ));
    assert_eq!(count(&sql, "SELECT count(*) AS n FROM seen"), 1);
}

/// A store that counts the statements whose text contains `pattern`.
struct Counting<'a> {
    inner: &'a Sqlite,
    pattern: &'static str,
    seen: std::cell::Cell<usize>,
}

impl<'a> Counting<'a> {
    fn new(inner: &'a Sqlite, pattern: &'static str) -> Self {
        Counting {
            inner,
            pattern,
            seen: std::cell::Cell::new(0),
        }
    }

    fn tally(&self, sql: &str) {
        if sql.contains(self.pattern) {
            self.seen.set(self.seen.get() + 1);
        }
    }
}

impl Sql for Counting<'_> {
    fn query(&self, sql: &str, params: Vec<Param>) -> records::Result<Vec<Map<String, Value>>> {
        self.tally(sql);
        self.inner.query(sql, params)
    }
    fn execute(&self, sql: &str, params: Vec<Param>) -> records::Result<u64> {
        self.tally(sql);
        self.inner.execute(sql, params)
    }
}

/// While one notification awaits the queue, the object may accept a newer one for the
/// same subscription and commit it. The older one's commit then starts from the newer
/// state (the object remembers what it wrote), so the newer observation stays; the
/// state is not read a second time. An instance that remembers nothing reads it.
#[test]
fn a_newer_state_committed_while_an_older_notification_awaited_the_queue_stays() {
    use tracklayer::records::ObjectMemory;
    let fixture = "customer.subscription.created.active.json";
    let state = |sql: &Sqlite| {
        sql.query("SELECT state FROM subscription_state", vec![])
            .unwrap()
            .iter()
            .map(|row| {
                let state: Value = serde_json::from_str(row["state"].as_str().unwrap()).unwrap();
                state["source_event_id"].as_str().unwrap().to_string()
            })
            .collect::<Vec<_>>()
    };
    let sqlite = store();
    let sql = Counting::new(
        &sqlite,
        "SELECT state FROM subscription_state WHERE ordering_key = ?1",
    );
    let memory = ObjectMemory::default();
    let records = Records::new(&sql, MERCHANT).with_memory(&memory);
    let older = stripe_created(fixture, "evt_order_old", Some(1_767_229_200));
    let newer = stripe_created(fixture, "evt_order_new", Some(1_767_229_260));
    let awaiting = ready(records.prepare(older.clone(), &merchant(), NOW_MS).unwrap());
    let meanwhile = ready(
        records
            .prepare(newer.clone(), &merchant(), NOW_MS + 1)
            .unwrap(),
    );
    records.commit(&meanwhile, NOW_MS + 1).unwrap();
    records.commit(&awaiting, NOW_MS + 2).unwrap();
    assert_eq!(state(&sqlite), ["evt_order_new"]);
    assert_eq!(sql.seen.get(), 0, "no second read of the state");

    // A fresh instance (a restart between the two) reads the stored state once.
    let sqlite = store();
    let sql = Counting::new(
        &sqlite,
        "SELECT state FROM subscription_state WHERE ordering_key = ?1",
    );
    let first = Records::new(&sql, MERCHANT);
    let prepared_newer = ready(first.prepare(newer, &merchant(), NOW_MS).unwrap());
    let prepared_older = ready(first.prepare(older, &merchant(), NOW_MS).unwrap());
    first.commit(&prepared_newer, NOW_MS).unwrap();
    Records::new(&sql, MERCHANT)
        .commit(&prepared_older, NOW_MS + 1)
        .unwrap();
    assert_eq!(state(&sqlite), ["evt_order_new"]);
    assert_eq!(sql.seen.get(), 1);
}

/// The object remembers the chain's head between requests: appends read nothing after
/// the first, and the chain they build verifies, across a cleared memory too.
#[test]
fn audit_appends_through_the_object_memory_build_a_valid_chain() {
    use tracklayer::audit::AuditRecord;
    use tracklayer::records::ObjectMemory;
    let sqlite = store();
    let sql = Counting::new(&sqlite, "FROM audit_log ORDER BY seq DESC");
    let memory = ObjectMemory::default();
    let record = |i: i64| AuditRecord {
        kind: "operator.change".into(),
        actor: "operator".into(),
        subject: format!("destinations/{i}"),
        details: json!({ "status": 200 }),
    };
    for i in 0..3 {
        // A new `Records` per request, one memory per object.
        let records = Records::new(&sql, MERCHANT).with_memory(&memory);
        records.append_audit(record(i), NOW_MS + i).unwrap();
    }
    assert_eq!(sql.seen.get(), 1, "only the first append reads the head");
    memory.clear();
    let records = Records::new(&sql, MERCHANT).with_memory(&memory);
    records.append_audit(record(3), NOW_MS + 3).unwrap();
    records.append_audit(record(4), NOW_MS + 4).unwrap();
    assert_eq!(sql.seen.get(), 2, "a cleared cache reads the head once");
    let verified = records.verify_audit(MERCHANT).unwrap();
    assert_eq!((verified.entries, verified.broken), (5, None));
}

#[test]
fn a_refused_enqueue_releases_the_claim_and_the_retry_enqueues_again() {
    let sql = store();
    let records = Records::new(&sql, MERCHANT);
    let output = stripe("customer.subscription.created.active.json", "evt_rec_2");
    let first = ready(
        records
            .prepare(output.clone(), &merchant(), NOW_MS)
            .unwrap(),
    );
    records.abandon(&first).unwrap();
    let retry = ready(records.prepare(output, &merchant(), NOW_MS + 1).unwrap());
    assert_eq!(retry.enqueue_events, first.enqueue_events);
    assert_eq!(retry.plan_jobs.len(), 2);
}

#[test]
fn one_conversion_reported_by_two_notifications_is_enqueued_once_and_merged() {
    let sql = store();
    let records = Records::new(&sql, MERCHANT);
    // Stripe reports a trial conversion on the subscription update and on the invoice.
    let update = stripe(
        "customer.subscription.updated.trial-converted.json",
        "evt_rec_3a",
    );
    let invoice = stripe("invoice.paid.trial-end.json", "evt_rec_3b");
    let first = ready(records.prepare(update, &merchant(), NOW_MS).unwrap());
    records.commit(&first, NOW_MS).unwrap();
    let second = ready(records.prepare(invoice, &merchant(), NOW_MS + 1).unwrap());
    let shared: Vec<&String> = second
        .output
        .events
        .iter()
        .map(|e| &e.event_id)
        .filter(|id| first.enqueue_events.contains(id))
        .collect();
    assert!(!shared.is_empty(), "both report the same conversion");
    for id in shared {
        assert!(
            !second.enqueue_events.contains(id),
            "the sibling does not enqueue {id} again"
        );
    }
}

fn delivered(job: &DeliveryJob, attempt: u32) -> AttemptRecord {
    AttemptRecord {
        job_id: job.job_id.clone(),
        event_id: job.event.event_id.clone(),
        destination: job.destination.clone(),
        attempt,
        outcome: AttemptOutcome::Delivered,
        http_status: Some(200),
        detail: None,
        request_url: Some("https://graph.facebook.com/v25.0/1/events".into()),
        duration_ms: 80,
        new_status: DeliveryStatus::Delivered,
        match_score: Some(3),
        match_keys: Some("em,external_id".into()),
        at_ms: NOW_MS + 10,
    }
}

#[test]
fn admission_sends_pending_jobs_once_and_resolves_references() {
    let sql = store();
    let records = Records::new(&sql, MERCHANT);
    let output = stripe("customer.subscription.created.active.json", "evt_rec_4");
    let prepared = ready(records.prepare(output, &merchant(), NOW_MS).unwrap());
    let meta = prepared
        .plan_jobs
        .iter()
        .find(|j| j.destination == "meta")
        .unwrap()
        .clone();
    let tiktok = prepared
        .plan_jobs
        .iter()
        .find(|j| j.destination == "tiktok")
        .unwrap()
        .clone();
    let inline = |job: &DeliveryJob| EventMessage::for_jobs([job], false).remove(0);
    // Both destinations in one message, the event read back from the store.
    let reference = EventMessage::for_jobs([&meta, &tiktok], true).remove(0);
    assert!(reference.event.is_none());
    let mut foreign = meta.clone();
    foreign.event.merchant_id = "m_other".into();
    let answer = records
        .admit(AdmitRequest {
            messages: vec![
                (0, reference.clone()),
                (1, inline(&meta)),
                (2, inline(&foreign)),
            ],
            now_ms: NOW_MS,
            ..AdmitRequest::default()
        })
        .unwrap();
    let admitted: Vec<(usize, &str)> = answer
        .admitted
        .iter()
        .map(|a| (a.message, a.job.destination.as_str()))
        .collect();
    assert_eq!(admitted, vec![(0, "meta"), (0, "tiktok")], "{answer:?}");
    let dropped: Vec<usize> = answer.dropped.iter().map(|(m, _)| *m).collect();
    assert_eq!(
        dropped,
        vec![2, 1],
        "another merchant's job, then the repeat"
    );
    assert!(answer.admitted.iter().all(|a| a.attempt == 1));
    assert_eq!(
        answer.admitted[1].job.event, tiktok.event,
        "read from the store"
    );

    records
        .record_outcomes(&Outcomes {
            attempts: vec![delivered(&meta, 1)],
            dead_letters: vec![DeadLetter {
                job: tiktok.clone(),
                attempts: 1,
                last_error: "400 invalid pixel".into(),
                reason: "permanent".into(),
            }],
            now_ms: NOW_MS + 10,
            ..Outcomes::default()
        })
        .unwrap();
    let again = records
        .admit(AdmitRequest {
            messages: vec![(0, inline(&meta)), (1, reference)],
            now_ms: NOW_MS + 20,
            ..AdmitRequest::default()
        })
        .unwrap();
    assert!(
        again.admitted.is_empty(),
        "delivered and dead-lettered jobs are done"
    );

    // The dead letter replays: pending again, attempts from zero, marked replayed.
    let filter: tracklayer::admin::ReplayFilter = serde_json::from_str("{}").unwrap();
    let replayed = records.replay(None, &filter, NOW_MS + 30).unwrap();
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].job_id, tiktok.job_id);
    assert_eq!(
        count(
            &sql,
            "SELECT count(*) AS n FROM deliveries WHERE status = 'pending' AND attempts = 0"
        ),
        1
    );
    assert!(records
        .replay(None, &filter, NOW_MS + 40)
        .unwrap()
        .is_empty());
}

#[test]
fn the_sweeper_sees_untouched_pending_jobs_only() {
    let sql = store();
    let records = Records::new(&sql, MERCHANT);
    let output = stripe("customer.subscription.created.active.json", "evt_rec_5");
    let prepared = ready(records.prepare(output, &merchant(), NOW_MS).unwrap());
    assert_eq!(
        count(
            &sql,
            "SELECT count(*) AS n FROM deliveries WHERE status = 'pending'"
        ),
        2
    );
    let stale = records.stale_jobs(NOW_MS + 1, NOW_MS - 1, 100).unwrap();
    assert_eq!(stale.len(), 2);
    records.touch_jobs(&stale, NOW_MS + 5).unwrap();
    assert!(records
        .stale_jobs(NOW_MS + 1, NOW_MS - 1, 100)
        .unwrap()
        .is_empty());
    assert_eq!(stale[0].event, prepared.plan_jobs[0].event);
}

#[test]
fn erasure_removes_the_customer_everywhere_and_retention_keeps_pending_work() {
    let sql = store();
    let records = Records::new(&sql, MERCHANT);
    let output = stripe("customer.subscription.created.active.json", "evt_rec_6");
    let email = output.events[0].customer.email.clone();
    let customer_id = output.events[0].customer.customer_id.clone();
    let prepared = ready(records.prepare(output, &merchant(), NOW_MS).unwrap());
    // Retention: everything is older than the cutoff, but an event with pending
    // deliveries stays until they are done.
    let policy = tracklayer::retention::RetentionPolicy::default();
    let later = NOW_MS + 500 * 86_400_000;
    let purged = records.purge(&policy.regional_purges(later), 0).unwrap();
    assert_eq!(
        purged["canonical_events"], 0,
        "pending work is never purged"
    );
    records
        .record_outcomes(&Outcomes {
            attempts: prepared.plan_jobs.iter().map(|j| delivered(j, 1)).collect(),
            now_ms: NOW_MS + 10,
            ..Outcomes::default()
        })
        .unwrap();
    let purged = records.purge(&policy.regional_purges(later), 0).unwrap();
    assert_eq!(purged["canonical_events"], 1);
    assert_eq!(
        purged["attempt_log"], 1,
        "one attempt-log row for the event's batch"
    );

    let output = stripe("customer.subscription.created.active.json", "evt_rec_7");
    ready(records.prepare(output, &merchant(), NOW_MS).unwrap());
    let erased = records
        .erase_customer(email.as_deref(), customer_id.as_deref())
        .unwrap();
    assert_eq!(erased["canonical_events"], 1, "{erased}");
    assert!(erased["deliveries"].as_u64().unwrap() >= 2, "{erased}");
    assert_eq!(count(&sql, "SELECT count(*) AS n FROM canonical_events"), 0);
}

#[test]
fn every_table_of_the_object_is_counted_for_deletion_and_migration_is_idempotent() {
    let sql = store();
    records::migrate(&sql).unwrap();
    let tables: Vec<String> = sql
        .query(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
             AND name <> 'schema_version' ORDER BY name",
            vec![],
        )
        .unwrap()
        .into_iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    let mut listed: Vec<String> = records::TABLES.iter().map(|t| t.to_string()).collect();
    listed.sort();
    assert_eq!(tables, listed);
    let counts = Records::new(&sql, MERCHANT).counts().unwrap();
    assert_eq!(counts.len(), records::TABLES.len());
}

/// A Google Ads cancellation reads the conversion it retracts, with its delivery state,
/// through the destination's correction hook: waits while the start is pending, then
/// names it once Google has it.
#[test]
fn a_correction_finds_the_conversion_it_adjusts_and_waits_until_it_is_settled() {
    let sql = store();
    let records = Records::new(&sql, MERCHANT);
    let merchant = merchant().with_destination(
        "google_ads",
        json!({
            "customer_id": "123-456-7890",
            "refresh_token": "1//0records",
            "conversion_actions": { "subscription_started": "987654321" },
            "retract_cancellations_within_days": 30
        }),
    );
    let start = stripe("customer.subscription.created.active.json", "evt_rec_8a");
    let start = ready(records.prepare(start, &merchant, NOW_MS).unwrap());
    let google_start = start
        .plan_jobs
        .iter()
        .find(|j| j.destination == "google_ads")
        .expect("the start goes to Google Ads")
        .clone();
    let mut cancel = stripe("customer.subscription.deleted.json", "evt_rec_8b");
    for event in &mut cancel.events {
        event.occurred_at = start.output.events[0].occurred_at + 3600;
        event.subscription.subscription_id =
            start.output.events[0].subscription.subscription_id.clone();
    }
    let cancel = ready(records.prepare(cancel, &merchant, NOW_MS + 1).unwrap());
    let google_cancel = cancel
        .plan_jobs
        .iter()
        .find(|j| j.destination == "google_ads")
        .expect("the cancellation goes to Google Ads")
        .clone();
    let spec = tracklayer::destinations::find("google_ads").unwrap();
    let corrections = spec.corrections.expect("Google Ads corrects");
    let admit = |now| {
        records
            .admit(AdmitRequest {
                messages: vec![(0, EventMessage::for_jobs([&google_cancel], false).remove(0))],
                correction_names: [("google_ads".to_string(), (corrections.originals)(&merchant))]
                    .into_iter()
                    .collect(),
                now_ms: now,
                ..AdmitRequest::default()
            })
            .unwrap()
    };
    let answer = admit(NOW_MS + 2);
    let stored = &answer.corrections[&google_cancel.job_id];
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].1, Some(DeliveryStatus::Pending));
    let event = answer.admitted[0].job.event.clone();
    assert!(matches!(
        (corrections.resolve)(event, stored, &merchant),
        tracklayer::destinations::Correction::Wait(_)
    ));
    records
        .record_outcomes(&Outcomes {
            attempts: vec![delivered(&google_start, 1)],
            now_ms: NOW_MS + 3,
            ..Outcomes::default()
        })
        .unwrap();
    let answer = admit(NOW_MS + 4);
    let stored = &answer.corrections[&google_cancel.job_id];
    assert_eq!(stored[0].1, Some(DeliveryStatus::Delivered));
    let event = answer.admitted[0].job.event.clone();
    match (corrections.resolve)(event, stored, &merchant) {
        tracklayer::destinations::Correction::Send(adjusting) => {
            let named = serde_json::to_string(&adjusting).unwrap();
            assert!(named.contains(&google_start.event.event_id), "{named}");
        }
        other => panic!("{other:?}"),
    }
}

/// The audit chain: an accepted notification appends one entry (customer hashed, nothing
/// for a refused enqueue or a duplicate), operator changes follow, the chain verifies,
/// a daily head is signed, and an edit in storage is named by seq.
#[test]
fn the_audit_chain_records_accepted_notifications_and_names_a_tampered_entry() {
    use tracklayer::audit::{self, AuditRecord};
    let sql = store();
    let records = Records::new(&sql, MERCHANT);
    let output = stripe("customer.subscription.created.active.json", "evt_audit_1");
    let refused = ready(
        records
            .prepare(output.clone(), &merchant(), NOW_MS)
            .unwrap(),
    );
    records.abandon(&refused).unwrap();
    assert_eq!(records.audit_head().unwrap(), None, "not accepted yet");
    let prepared = ready(
        records
            .prepare(output.clone(), &merchant(), NOW_MS + 1)
            .unwrap(),
    );
    records.commit(&prepared, NOW_MS + 1).unwrap();
    assert!(matches!(
        records.prepare(output, &merchant(), NOW_MS + 2).unwrap(),
        Claimed::Duplicate(_)
    ));
    for subject in ["destinations/meta", "api-keys/0123456789abcdef"] {
        records
            .append_audit(
                AuditRecord {
                    kind: "operator.change".into(),
                    actor: "operator".into(),
                    subject: subject.into(),
                    details: json!({ "status": 200 }),
                },
                NOW_MS + 3,
            )
            .unwrap();
    }
    let entries = records.audit_entries(0, 10).unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0].kind, "webhook.accepted");
    assert_eq!(entries[0].actor, "source:stripe");
    assert_eq!(entries[0].subject, "evt_audit_1");
    let text = serde_json::to_string(&entries[0].details).unwrap();
    assert!(text.contains("subscription_started"), "{text}");
    assert!(
        !text.to_lowercase().contains("acme-analytics") && !text.contains("cus_"),
        "no personal data in clear: {text}"
    );
    let key = audit::signing_key(&"11".repeat(32)).unwrap();
    let head = records
        .sign_audit_head(MERCHANT, "2026-11-30", &key, NOW_MS + 4)
        .unwrap()
        .unwrap();
    assert_eq!(head.seq, 3);
    let verified = records.verify_audit(MERCHANT).unwrap();
    assert_eq!(verified.entries, 3);
    assert_eq!(verified.broken, None);
    assert!(verified.signed_heads[0].signature_valid && verified.signed_heads[0].matches_chain);

    // Someone edits entry 2 in storage.
    sql.execute(
        "UPDATE audit_log SET subject = 'destinations/tiktok' WHERE seq = 2",
        vec![],
    )
    .unwrap();
    let broken = records.verify_audit(MERCHANT).unwrap();
    assert_eq!(broken.broken.as_ref().map(|b| b.seq), Some(2), "{broken:?}");
    assert_eq!(broken.entries, 1);
    // Erasure leaves the chain alone.
    records
        .erase_customer(Some("ops@acme-analytics.io"), None)
        .unwrap();
    assert_eq!(records.audit_entries(0, 10).unwrap().len(), 3);
}

/// Anomaly auto-pause in the object: a failure spike opens one incident and pauses the
/// destination; its jobs taken off the queue are held (the sweeper leaves them), and
/// resuming releases exactly those, oldest first, once.
#[test]
fn a_failure_spike_pauses_the_destination_and_resume_releases_held_jobs_once_in_order() {
    use tracklayer::health::{AnomalyKind, AnomalySettings};
    use tracklayer::ops_store::OpsStore;
    let sql = store();
    let records = Records::new(&sql, MERCHANT);
    let ops = OpsStore::new(&sql, MERCHANT);
    let settings = AnomalySettings {
        failure_min_attempts: 3,
        ..AnomalySettings::default()
    };
    ops.save_settings(&settings, NOW_MS).unwrap();
    let mut meta_jobs = Vec::new();
    for (i, fixture) in [
        "customer.subscription.created.active.json",
        "customer.subscription.created.trialing.json",
        "invoice.paid.renewal.json",
    ]
    .iter()
    .enumerate()
    {
        let at = NOW_MS + i as i64 * 1_000;
        let prepared = ready(
            records
                .prepare(stripe(fixture, &format!("evt_ops_{i}")), &merchant(), at)
                .unwrap(),
        );
        records.commit(&prepared, at).unwrap();
        meta_jobs.extend(
            prepared
                .plan_jobs
                .into_iter()
                .filter(|j| j.destination == "meta"),
        );
    }
    assert_eq!(meta_jobs.len(), 3);
    // Meta fails every attempt.
    let failures: Vec<AttemptRecord> = meta_jobs
        .iter()
        .map(|job| AttemptRecord {
            outcome: AttemptOutcome::Retry,
            http_status: Some(500),
            detail: Some("HTTP 500".into()),
            new_status: DeliveryStatus::Pending,
            at_ms: NOW_MS + 5_000,
            ..delivered(job, 1)
        })
        .collect();
    records
        .record_outcomes(&Outcomes {
            attempts: failures,
            now_ms: NOW_MS + 5_000,
            ..Outcomes::default()
        })
        .unwrap();
    let now = NOW_MS + 6_000;
    let evaluation = ops.evaluate(now).unwrap();
    assert_eq!(evaluation.opened.len(), 1, "{evaluation:?}");
    let incident = &evaluation.opened[0];
    assert_eq!(incident.kind, AnomalyKind::FailureSpike);
    assert_eq!(incident.destination.as_deref(), Some("meta"));
    assert!(incident.paused);
    assert!(
        ops.evaluate(now + 1).unwrap().opened.is_empty(),
        "one incident while open"
    );
    assert!(records.paused_destinations().unwrap().contains("meta"));
    // Two jobs come back from the queue while paused and are held; the third is
    // still on the queue (its retry not due yet).
    records
        .record_outcomes(&Outcomes {
            held: meta_jobs[..2]
                .iter()
                .map(|j| (j.event.event_id.clone(), "meta".to_string()))
                .collect(),
            now_ms: now + 2,
            ..Outcomes::default()
        })
        .unwrap();
    let stale = records
        .stale_jobs(now + 86_400_000, now + 86_400_000, 100)
        .unwrap();
    assert!(
        stale.iter().all(|j| j.destination != "meta"),
        "the sweeper leaves paused jobs"
    );
    assert_eq!(ops.overview(now + 3, 10).unwrap().paused[0].held, 2);
    let released = ops.resume("meta", "operator", now + 4).unwrap();
    let ids: Vec<&str> = released.iter().map(|j| j.job_id.as_str()).collect();
    assert_eq!(
        ids,
        [meta_jobs[0].job_id.as_str(), meta_jobs[1].job_id.as_str()]
    );
    assert!(
        ops.resume("meta", "operator", now + 5).unwrap().is_empty(),
        "released once"
    );
    assert!(records.paused_destinations().unwrap().is_empty());
    let overview = ops.overview(now + 6, 10).unwrap();
    assert_eq!(overview.incidents[0].status, "resolved");
    assert_eq!(
        overview.incidents[0].resolved_by.as_deref(),
        Some("operator")
    );
    let meta = &overview.destinations["meta"];
    assert_eq!(meta.last_hour.failed_attempts, 3);
    assert_eq!(meta.last_hour.planned, 3);
}

/// RFM in the object: billing events become scored subscribers, and where the merchant
/// turns it on, the segment and predicted LTV travel on the events admitted for delivery.
#[test]
fn rfm_scores_subscribers_and_carries_the_segment_on_admitted_events() {
    use tracklayer::rfm_store::RfmStore;
    let sql = store();
    let records = Records::new(&sql, MERCHANT);
    for (i, fixture) in [
        "customer.subscription.created.active.json",
        "invoice.paid.renewal.json",
    ]
    .iter()
    .enumerate()
    {
        let prepared = ready(
            records
                .prepare(
                    stripe(fixture, &format!("evt_rfm_{i}")),
                    &merchant(),
                    NOW_MS,
                )
                .unwrap(),
        );
        records.commit(&prepared, NOW_MS).unwrap();
    }
    let rfm = RfmStore::new(&sql, MERCHANT);
    let subscribers = rfm.subscribers().unwrap();
    assert!(!subscribers.is_empty());
    assert!(
        subscribers.iter().all(|s| !s.payments.is_empty()),
        "{subscribers:?}"
    );
    let segments = rfm.compute(NOW_MS + 86_400_000).unwrap();
    assert_eq!(segments.values().sum::<usize>(), subscribers.len());
    let scores = rfm.scores(None, 10, 0).unwrap();
    assert_eq!(scores.len(), subscribers.len());
    assert!(scores[0].ltv.is_some(), "{:?}", scores[0]);
    let (counts, computed_at) = rfm.segments().unwrap();
    assert_eq!(computed_at, Some(NOW_MS + 86_400_000));
    assert_eq!(counts.values().sum::<i64>() as usize, scores.len());

    // Off by default: nothing is added to outbound events.
    let output = stripe("customer.subscription.updated.upgrade.json", "evt_rfm_up");
    let prepared = ready(records.prepare(output, &merchant(), NOW_MS + 2).unwrap());
    let job = prepared.plan_jobs[0].clone();
    let admit = |records: &Records| {
        records
            .admit(AdmitRequest {
                messages: vec![(0, EventMessage::for_jobs([&job], false).remove(0))],
                now_ms: NOW_MS + 3,
                ..AdmitRequest::default()
            })
            .unwrap()
            .admitted
    };
    let plain = admit(&records);
    assert!(plain[0].job.event.property("rfm_segment").is_none());
    rfm.set_carry_on_events(true, NOW_MS).unwrap();
    let carried = admit(&records);
    let event = &carried[0].job.event;
    let key = tracklayer::identity::keys(event)[0].clone();
    let own = scores
        .iter()
        .find(|s| s.key == key)
        .expect("scored customer");
    assert_eq!(event.property("rfm_segment"), Some(own.segment.as_str()));
    assert!(event.property("ltv_model").is_some());
}
