//! Storage and queue work this isolate did, by phase: what each webhook and each
//! delivered event costs (D1 queries, Durable Object calls, rows written, queue
//! messages). Read by operators and the load scripts at `GET /v1/admin/metrics`.

use serde::Serialize;
use std::cell::RefCell;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Webhooks and product events, from request to answer.
    Ingest,
    /// Queue consumers: admission, sending, outcomes.
    Delivery,
    /// Everything else: admin API, views, cron.
    Other,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counters {
    /// Requests answered 2xx (ingest) or queue batches handled (delivery).
    pub units: u64,
    pub d1_queries: u64,
    pub object_calls: u64,
    pub rows_written: u64,
    pub queue_messages_sent: u64,
    /// `sendBatch` calls: below one per webhook when the merchant object's group
    /// commit carries several notifications in one.
    pub queue_send_calls: u64,
    pub queue_messages_acked: u64,
    pub queue_messages_retried: u64,
    pub events_delivered: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Snapshot {
    pub ingest: Counters,
    pub delivery: Counters,
    pub other: Counters,
}

thread_local! {
    static COUNTERS: RefCell<Snapshot> = RefCell::new(Snapshot::default());
}

fn with(phase: Phase, change: impl FnOnce(&mut Counters)) {
    COUNTERS.with(|all| {
        let mut all = all.borrow_mut();
        change(match phase {
            Phase::Ingest => &mut all.ingest,
            Phase::Delivery => &mut all.delivery,
            Phase::Other => &mut all.other,
        })
    });
}

pub fn unit(phase: Phase) {
    with(phase, |c| c.units += 1);
}
pub fn d1_queries(phase: Phase, n: usize) {
    with(phase, |c| c.d1_queries += n as u64);
}
pub fn object_call(phase: Phase) {
    with(phase, |c| c.object_calls += 1);
}
pub fn rows_written(phase: Phase, n: u64) {
    with(phase, |c| c.rows_written += n);
}
pub fn queue_sent(phase: Phase, n: usize) {
    with(phase, |c| c.queue_messages_sent += n as u64);
}
pub fn queue_send_calls(phase: Phase, n: usize) {
    with(phase, |c| c.queue_send_calls += n as u64);
}
pub fn queue_settled(acked: usize, retried: usize, delivered: usize) {
    with(Phase::Delivery, |c| {
        c.queue_messages_acked += acked as u64;
        c.queue_messages_retried += retried as u64;
        c.events_delivered += delivered as u64;
    });
}

pub fn snapshot() -> Snapshot {
    COUNTERS.with(|all| *all.borrow())
}
