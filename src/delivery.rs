//! Delivery jobs on the queue, the retry schedule, and what to do with each outcome.

use crate::destinations::Outcome;
use crate::event::CanonicalEvent;
use crate::hashing::sha256_hex;
use serde::{Deserialize, Serialize};

/// One canonical event bound for one destination: the unit of retry, so a failing
/// destination never holds back the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryJob {
    pub job_id: String,
    pub destination: String,
    pub event: CanonicalEvent,
}

impl DeliveryJob {
    pub fn new(event: CanonicalEvent, destination: &str) -> Self {
        DeliveryJob {
            job_id: job_id(&event.event_id, destination),
            destination: destination.into(),
            event,
        }
    }
}

/// Cloudflare Queues takes messages up to 128 KB. An event that would not fit (a 100–400
/// KB field in a signed webhook) travels as a reference to the stored event.
pub const MAX_INLINE_JOB_BYTES: usize = 96 * 1024;

/// One event on the queue with the destinations it still goes to: one message per
/// event, not per destination (each message is written, read and deleted, and billed
/// for each). Every job is still settled on its own; one that needs a retry while the
/// others are done travels on in a new message of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventMessage {
    pub merchant_id: String,
    pub event_id: String,
    /// The event itself, or absent: the consumer reads the stored one (too large for a
    /// message, or waiting for sibling notifications to merge into it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<CanonicalEvent>,
    pub jobs: Vec<MessageJob>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageJob {
    pub job_id: String,
    pub destination: String,
}

impl EventMessage {
    /// One message per event of `jobs` (in first-seen order), carrying the event when it
    /// fits and `by_reference` is false.
    pub fn for_jobs<'a>(
        jobs: impl IntoIterator<Item = &'a DeliveryJob>,
        by_reference: bool,
    ) -> Vec<EventMessage> {
        let mut messages: Vec<EventMessage> = Vec::new();
        for job in jobs {
            let entry = MessageJob {
                job_id: job.job_id.clone(),
                destination: job.destination.clone(),
            };
            match messages.iter_mut().find(|m| {
                m.event_id == job.event.event_id && m.merchant_id == job.event.merchant_id
            }) {
                Some(message) => {
                    if !message.jobs.contains(&entry) {
                        message.jobs.push(entry)
                    }
                }
                None => messages.push(EventMessage {
                    merchant_id: job.event.merchant_id.clone(),
                    event_id: job.event.event_id.clone(),
                    event: (!by_reference).then(|| job.event.clone()),
                    jobs: vec![entry],
                }),
            }
        }
        messages
    }

    /// The queue message body: the event inline when it fits, else by reference.
    pub fn encode(mut self) -> String {
        if self.event.is_some() {
            let inline = serde_json::to_string(&self).unwrap_or_default();
            if !inline.is_empty() && inline.len() <= MAX_INLINE_JOB_BYTES {
                return inline;
            }
            self.event = None;
        }
        serde_json::to_string(&self).unwrap_or_default()
    }
}

/// `sendBatch` takes at most 100 messages and 256 KB in all.
pub const MAX_BATCH_MESSAGES: usize = 100;
pub const MAX_BATCH_BYTES: usize = 250 * 1024;

/// Message bodies split into batches the queue accepts, in order.
pub fn queue_batches(bodies: Vec<String>) -> Vec<Vec<String>> {
    queue_batches_by(bodies, |body| body.len())
}

/// Items (messages with whatever travels beside them) split into batches the queue
/// accepts, in order; `bytes` is an item's message size.
pub fn queue_batches_by<T>(items: Vec<T>, bytes: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut batches: Vec<Vec<T>> = Vec::new();
    let mut current: Vec<T> = Vec::new();
    let mut current_bytes = 0;
    for item in items {
        let size = bytes(&item);
        if !current.is_empty()
            && (current.len() == MAX_BATCH_MESSAGES || current_bytes + size > MAX_BATCH_BYTES)
        {
            batches.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current_bytes += size;
        current.push(item);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Deterministic per (event, destination): a redelivered message maps to the same row.
pub fn job_id(event_id: &str, destination: &str) -> String {
    format!(
        "job_{}",
        &sha256_hex(&format!("{event_id}\u{1f}{destination}"))[..32]
    )
}

/// Sent to the dead-letter queue when we give up on a job ourselves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub job: DeliveryJob,
    pub attempts: u32,
    pub last_error: String,
    /// `permanent`, `exhausted`, or `queue_exhausted` when the queue moved it.
    pub reason: String,
}

/// Exponential backoff with ±20 % jitter, then the dead-letter store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base_delay_seconds: u32,
    pub max_delay_seconds: u32,
    /// Attempts in total, the first one included.
    pub max_attempts: u32,
}

/// Cloudflare Queues accepts per-message delays up to 12 hours.
pub const MAX_QUEUE_DELAY_SECONDS: u32 = 12 * 3600;

/// The default schedule keeps trying for at least this long: a platform outage of an
/// afternoon must not dead-letter what is in flight (Stripe itself retries for 3 days).
pub const MIN_RETRY_SPAN_SECONDS: u64 = 24 * 3600;

impl Default for RetryPolicy {
    /// 30 s doubling to the 3 h cap: 17 attempts span about 25 hours.
    fn default() -> Self {
        RetryPolicy {
            base_delay_seconds: 30,
            max_delay_seconds: 3 * 3600,
            max_attempts: 17,
        }
    }
}

impl RetryPolicy {
    /// Nominal time from the first attempt to the last (jitter averages out).
    pub fn span_seconds(&self) -> u64 {
        (1..self.max_attempts)
            .map(|attempt| {
                let exponent = attempt.saturating_sub(1).min(20);
                ((self.base_delay_seconds as u64) << exponent).min(self.max_delay_seconds as u64)
            })
            .sum()
    }

    /// Delay before attempt `attempt + 1`, given that `attempt` (1-based) just failed.
    /// The jitter is derived from the job id so a burst of failures spreads out
    /// without needing a random source.
    pub fn backoff_seconds(&self, attempt: u32, jitter_key: &str) -> u32 {
        let exponent = attempt.saturating_sub(1).min(20);
        let raw = (self.base_delay_seconds as u64) << exponent;
        let capped = raw.min(self.max_delay_seconds as u64) as i64;
        let digest = sha256_hex(&format!("{jitter_key}:{attempt}"));
        let unit = u16::from_str_radix(&digest[..4], 16).unwrap_or(0) as i64; // 0..=65535
        let jitter = capped * 2 * (unit - 32768) / (10 * 32768); // ±20 %
        (capped + jitter).clamp(1, MAX_QUEUE_DELAY_SECONDS as i64) as u32
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Delivered (or the platform already had it): acknowledge the message.
    Done,
    RetryIn {
        seconds: u32,
        reason: String,
    },
    DeadLetter {
        reason: String,
        last_error: String,
    },
}

pub fn decide(outcome: &Outcome, attempt: u32, policy: &RetryPolicy, jitter_key: &str) -> Decision {
    match outcome {
        Outcome::Delivered | Outcome::AlreadyDelivered => Decision::Done,
        Outcome::Permanent { reason } => Decision::DeadLetter {
            reason: "permanent".into(),
            last_error: reason.clone(),
        },
        Outcome::Retry {
            after_seconds,
            reason,
        } => {
            if attempt >= policy.max_attempts {
                return Decision::DeadLetter {
                    reason: "exhausted".into(),
                    last_error: reason.clone(),
                };
            }
            let backoff = policy.backoff_seconds(attempt, jitter_key);
            let seconds = after_seconds.map_or(backoff, |after| after.max(backoff));
            Decision::RetryIn {
                seconds: seconds.min(MAX_QUEUE_DELAY_SECONDS),
                reason: reason.clone(),
            }
        }
    }
}

/// After this many requests in a row that a destination answered with nothing but
/// transient failures (5xx, 429, timeouts), its jobs are parked: held without spending
/// attempts, while one probe request at a time checks whether it is back.
pub const PARK_AFTER_FAILED_REQUESTS: u32 = 5;
/// Longest pause between probes of a parked destination.
pub const MAX_PROBE_DELAY_SECONDS: u32 = 15 * 60;

/// How one (merchant, destination) has been answering, across queue batches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationHealth {
    /// Requests in a row answered only with transient failures.
    pub consecutive_failures: u32,
    /// Set while parked (unix ms).
    pub parked_since: Option<i64>,
    pub next_probe_at: Option<i64>,
    pub probes: u32,
    /// Set while an anomaly (or an operator) has paused the destination: its jobs stay
    /// pending in the merchant's object until it is resumed.
    #[serde(default)]
    pub paused_since: Option<i64>,
}

/// What a batch may do with a destination's jobs now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    SendAll,
    /// Parked and a probe is due: send one job, hold the others.
    ProbeOne,
    /// Parked: hold every job this long, spending no attempt.
    Hold {
        seconds: u32,
    },
    /// Paused: take the jobs off the queue, leaving them pending; resuming re-enqueues
    /// them in order.
    Paused,
}

/// How a destination answered one request, for [`DestinationHealth::observe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// It answered (delivered, duplicate, or refused one event on its merits).
    Answered,
    /// 5xx, 429, timeout: the platform itself is failing.
    Transient,
}

/// What changed with an observation, for the log and the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthChange {
    None,
    Parked,
    Released,
}

impl DestinationHealth {
    pub fn is_parked(&self) -> bool {
        self.parked_since.is_some()
    }

    pub fn admit(&self, now_ms: i64) -> Admission {
        if self.paused_since.is_some() {
            return Admission::Paused;
        }
        match self.next_probe_at {
            Some(at) if self.is_parked() && now_ms < at => Admission::Hold {
                seconds: ((at - now_ms + 999) / 1000).clamp(1, MAX_PROBE_DELAY_SECONDS as i64)
                    as u32,
            },
            _ if self.is_parked() => Admission::ProbeOne,
            _ => Admission::SendAll,
        }
    }

    /// Folds in one request's answer. Any real answer releases the destination; only
    /// transient failures count toward parking, and while parked each failed probe
    /// pushes the next one further out (the retry policy's backoff, capped).
    pub fn observe(&mut self, answer: Answer, now_ms: i64, policy: &RetryPolicy) -> HealthChange {
        match answer {
            Answer::Answered => {
                let was_parked = self.is_parked();
                *self = DestinationHealth {
                    paused_since: self.paused_since,
                    ..DestinationHealth::default()
                };
                if was_parked {
                    HealthChange::Released
                } else {
                    HealthChange::None
                }
            }
            Answer::Transient => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                let delay = |probes: u32| {
                    let exponent = probes.min(20);
                    ((policy.base_delay_seconds as u64) << exponent)
                        .min(MAX_PROBE_DELAY_SECONDS as u64) as i64
                };
                if self.is_parked() {
                    self.probes = self.probes.saturating_add(1);
                    self.next_probe_at = Some(now_ms + delay(self.probes) * 1000);
                    HealthChange::None
                } else if self.consecutive_failures >= PARK_AFTER_FAILED_REQUESTS {
                    self.parked_since = Some(now_ms);
                    self.probes = 0;
                    self.next_probe_at = Some(now_ms + delay(0) * 1000);
                    HealthChange::Parked
                } else {
                    HealthChange::None
                }
            }
        }
    }
}

/// Groups a queue batch by (merchant, destination), each group in queue order, groups
/// in order of first appearance: one build (and as few requests as the platform
/// allows) per group.
pub fn group_jobs<'a>(jobs: impl IntoIterator<Item = &'a DeliveryJob>) -> Vec<Vec<usize>> {
    let mut groups: Vec<((&str, &str), Vec<usize>)> = Vec::new();
    for (index, job) in jobs.into_iter().enumerate() {
        let key = (job.event.merchant_id.as_str(), job.destination.as_str());
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, members)) => members.push(index),
            None => groups.push((key, vec![index])),
        }
    }
    groups.into_iter().map(|(_, members)| members).collect()
}

pub use crate::destinations::DeliveryStatus;

/// What one attempt came to, as the attempt log says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Delivered,
    AlreadyDelivered,
    Retry,
    Permanent,
    /// A probe of a parked destination failed: logged, no attempt spent.
    ProbeFailed,
    /// A dry-run merchant's request, built and not sent (its delivery is `simulated`
    /// too: "dry run" names the merchant's mode, "simulated" what it produced).
    Simulated,
    Skipped,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::AlreadyDelivered => "already_delivered",
            AttemptOutcome::Retry => "retry",
            AttemptOutcome::Permanent => "permanent",
            AttemptOutcome::ProbeFailed => "probe_failed",
            AttemptOutcome::Simulated => "simulated",
            AttemptOutcome::Skipped => "skipped",
        }
    }

    /// Whether the attempt leaves no error to show on the delivery.
    pub fn is_success(self) -> bool {
        matches!(
            self,
            AttemptOutcome::Delivered
                | AttemptOutcome::AlreadyDelivered
                | AttemptOutcome::Simulated
        )
    }
}

/// The attempt log's outcome and detail.
pub fn attempt_label(outcome: &Outcome) -> (AttemptOutcome, Option<&str>) {
    match outcome {
        Outcome::Delivered => (AttemptOutcome::Delivered, None),
        Outcome::AlreadyDelivered => (AttemptOutcome::AlreadyDelivered, None),
        Outcome::Retry { reason, .. } => (AttemptOutcome::Retry, Some(reason.as_str())),
        Outcome::Permanent { reason } => (AttemptOutcome::Permanent, Some(reason.as_str())),
    }
}

/// The delivery's status after a decision.
pub fn status_after(decision: &Decision) -> DeliveryStatus {
    match decision {
        Decision::Done => DeliveryStatus::Delivered,
        // A dead letter is marked when it is recorded, with the same outcomes.
        Decision::RetryIn { .. } | Decision::DeadLetter { .. } => DeliveryStatus::Pending,
    }
}

/// What a build refusal means for a job: `Err(reason)` when there is nothing to send by
/// design (recorded as skipped), otherwise the permanent outcome.
pub fn refusal(err: &crate::destinations::BuildError) -> Result<Outcome, String> {
    match err {
        crate::destinations::BuildError::NotApplicable { .. } => Err(err.to_string()),
        _ => Ok(Outcome::Permanent {
            reason: err.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry(after: Option<u32>) -> Outcome {
        Outcome::Retry {
            after_seconds: after,
            reason: "HTTP 500".into(),
        }
    }

    #[test]
    fn backoff_grows_with_bounded_jitter() {
        let policy = RetryPolicy::default();
        for attempt in 1..=5 {
            let nominal = (30u32 << (attempt - 1)).min(3 * 3600);
            let delay = policy.backoff_seconds(attempt, "job_x");
            assert!(
                delay >= nominal * 8 / 10 && delay <= nominal * 12 / 10,
                "{attempt}: {delay}"
            );
        }
        assert!(policy.backoff_seconds(30, "job_x") <= 3 * 3600 * 12 / 10);
        assert_eq!(
            policy.backoff_seconds(2, "job_x"),
            policy.backoff_seconds(2, "job_x")
        );
    }

    /// The default gave up after 15.5 minutes: a 20-minute outage dead-lettered
    /// everything in flight.
    #[test]
    fn the_default_schedule_outlasts_a_day_long_outage() {
        let policy = RetryPolicy::default();
        assert!(
            policy.span_seconds() >= MIN_RETRY_SPAN_SECONDS,
            "{}",
            policy.span_seconds()
        );
        // Still bounded: the last attempt comes within two days.
        assert!(policy.span_seconds() <= 2 * MIN_RETRY_SPAN_SECONDS);
        let worst_case: u64 = (1..policy.max_attempts)
            .map(|a| policy.backoff_seconds(a, "job_x") as u64)
            .sum();
        assert!(
            worst_case >= MIN_RETRY_SPAN_SECONDS * 8 / 10,
            "{worst_case}"
        );
    }

    #[test]
    fn retries_until_max_attempts_then_dead_letters() {
        let policy = RetryPolicy {
            base_delay_seconds: 1,
            max_delay_seconds: 10,
            max_attempts: 3,
        };
        assert!(matches!(
            decide(&retry(None), 1, &policy, "j"),
            Decision::RetryIn { .. }
        ));
        assert!(matches!(
            decide(&retry(None), 2, &policy, "j"),
            Decision::RetryIn { .. }
        ));
        assert_eq!(
            decide(&retry(None), 3, &policy, "j"),
            Decision::DeadLetter {
                reason: "exhausted".into(),
                last_error: "HTTP 500".into()
            }
        );
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let policy = RetryPolicy {
            base_delay_seconds: 1,
            max_delay_seconds: 10,
            max_attempts: 5,
        };
        match decide(&retry(Some(120)), 1, &policy, "j") {
            Decision::RetryIn { seconds, .. } => assert_eq!(seconds, 120),
            other => panic!("{other:?}"),
        }
        match decide(&retry(Some(10 * 86400)), 1, &policy, "j") {
            Decision::RetryIn { seconds, .. } => assert_eq!(seconds, MAX_QUEUE_DELAY_SECONDS),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn permanent_and_success_outcomes() {
        let policy = RetryPolicy::default();
        assert_eq!(decide(&Outcome::Delivered, 1, &policy, "j"), Decision::Done);
        assert_eq!(
            decide(&Outcome::AlreadyDelivered, 4, &policy, "j"),
            Decision::Done
        );
        assert!(matches!(
            decide(
                &Outcome::Permanent {
                    reason: "bad".into()
                },
                1,
                &policy,
                "j"
            ),
            Decision::DeadLetter { .. }
        ));
    }

    /// A 300 KB field made `send_batch` fail on the 128 KB message limit: 503 forever.
    #[test]
    fn an_event_too_large_for_one_message_travels_by_reference() {
        let mut event = crate::event::tests_support::event();
        let small = DeliveryJob::new(event.clone(), "meta");
        let encoded = EventMessage::for_jobs([&small], false).remove(0).encode();
        let decoded: EventMessage = serde_json::from_str(&encoded).unwrap();
        assert_eq!(decoded.event, Some(small.event.clone()));
        event
            .properties
            .insert("plan_description".into(), "x".repeat(300 * 1024));
        let large = DeliveryJob::new(event, "meta");
        let encoded = EventMessage::for_jobs([&large], false).remove(0).encode();
        assert!(encoded.len() < 1024, "{}", encoded.len());
        let decoded: EventMessage = serde_json::from_str(&encoded).unwrap();
        assert_eq!(decoded.event, None);
        assert_eq!(decoded.event_id, large.event.event_id);
        assert_eq!(decoded.merchant_id, large.event.merchant_id);
        assert_eq!(decoded.jobs[0].job_id, large.job_id);
    }

    /// Six destinations of one event are one message; two events are two.
    #[test]
    fn one_message_per_event_carries_all_its_destinations() {
        let event = crate::event::tests_support::event();
        let mut other = event.clone();
        other.event_id = "tl_other".into();
        let jobs: Vec<DeliveryJob> = ["meta", "tiktok", "ga4", "klaviyo", "linkedin", "google_ads"]
            .iter()
            .map(|d| DeliveryJob::new(event.clone(), d))
            .chain([DeliveryJob::new(other, "meta")])
            .collect();
        let messages = EventMessage::for_jobs(&jobs, false);
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].jobs.len(), 6);
        assert_eq!(messages[1].jobs.len(), 1);
        let by_reference = EventMessage::for_jobs(&jobs, true);
        assert!(by_reference.iter().all(|m| m.event.is_none()));
    }

    #[test]
    fn batches_respect_the_count_and_byte_limits() {
        let big = "x".repeat(90 * 1024);
        let batches = queue_batches(vec![big.clone(); 6]);
        assert!(batches
            .iter()
            .all(|b| b.iter().map(String::len).sum::<usize>() <= MAX_BATCH_BYTES));
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 6);
        let small = queue_batches(vec!["{}".to_string(); 250]);
        assert_eq!(
            small.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![100, 100, 50]
        );
        assert!(queue_batches(Vec::new()).is_empty());
    }

    /// A destination failing every event used to burn every job's attempts until all
    /// were dead-lettered; now it is parked and probed until it answers.
    #[test]
    fn a_destination_failing_every_request_is_parked_probed_and_released() {
        let policy = RetryPolicy::default();
        let mut health = DestinationHealth::default();
        let mut now = 1_000_000;
        for _ in 1..PARK_AFTER_FAILED_REQUESTS {
            assert_eq!(
                health.observe(Answer::Transient, now, &policy),
                HealthChange::None
            );
            assert_eq!(health.admit(now), Admission::SendAll);
        }
        assert_eq!(
            health.observe(Answer::Transient, now, &policy),
            HealthChange::Parked
        );
        assert_eq!(health.admit(now), Admission::Hold { seconds: 30 });
        now += 30_000;
        assert_eq!(health.admit(now), Admission::ProbeOne);
        // A failed probe pushes the next one out, up to the cap.
        health.observe(Answer::Transient, now, &policy);
        assert_eq!(health.admit(now), Admission::Hold { seconds: 60 });
        for _ in 0..20 {
            health.observe(Answer::Transient, now, &policy);
        }
        assert_eq!(
            health.admit(now),
            Admission::Hold {
                seconds: MAX_PROBE_DELAY_SECONDS
            }
        );
        now += i64::from(MAX_PROBE_DELAY_SECONDS) * 1000;
        assert_eq!(health.admit(now), Admission::ProbeOne);
        assert_eq!(
            health.observe(Answer::Answered, now, &policy),
            HealthChange::Released
        );
        assert_eq!(health, DestinationHealth::default());
        assert_eq!(health.admit(now), Admission::SendAll);
    }

    #[test]
    fn an_answer_between_failures_keeps_the_destination_live() {
        let policy = RetryPolicy::default();
        let mut health = DestinationHealth::default();
        for i in 0..50 {
            let answer = if i % 4 == 3 {
                Answer::Answered
            } else {
                Answer::Transient
            };
            assert_ne!(health.observe(answer, 0, &policy), HealthChange::Parked);
        }
    }

    #[test]
    fn job_ids_are_deterministic_per_destination() {
        assert_eq!(job_id("tl_1", "meta"), job_id("tl_1", "meta"));
        assert_ne!(job_id("tl_1", "meta"), job_id("tl_1", "google_ads"));
    }

    #[test]
    fn groups_by_merchant_and_destination_in_queue_order() {
        let mut a = crate::event::tests_support::event();
        a.merchant_id = "m_a".into();
        let mut b = a.clone();
        b.merchant_id = "m_b".into();
        let jobs = [
            DeliveryJob::new(a.clone(), "meta"),
            DeliveryJob::new(b.clone(), "meta"),
            DeliveryJob::new(a.clone(), "tiktok"),
            DeliveryJob::new(a.clone(), "meta"),
            DeliveryJob::new(b, "meta"),
        ];
        assert_eq!(group_jobs(&jobs), vec![vec![0, 3], vec![1, 4], vec![2]]);
        assert!(group_jobs(&[]).is_empty());
    }

    #[test]
    fn not_applicable_is_skipped_not_dead_lettered() {
        use crate::destinations::BuildError;
        let skip = BuildError::NotApplicable {
            destination: "google_ads",
            reason: "nothing to adjust".into(),
        };
        assert!(refusal(&skip).is_err());
        assert!(matches!(
            refusal(&BuildError::NoIdentity),
            Ok(Outcome::Permanent { .. })
        ));
    }
}
