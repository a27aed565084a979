//! Queue consumers: deliver jobs to destinations, and record dead letters.
//!
//! Every message is acked or retried on its own; the handler never returns an error,
//! which would retry the whole batch. Per merchant in a batch the consumer makes two
//! calls to the merchant's object: one to admit and enrich, one to record outcomes.

use super::merchant::MerchantClient;
use super::metrics::{self, Phase};
use super::regions::{queue_region, send_messages};
use super::send;
use super::settings::cached_merchant;
use super::{emit, now_ms, operator_settings, outbound, OperatorSettings};
use crate::config::Region;
use crate::delivery::{self, DeadLetter, DeliveryJob, EventMessage};
use crate::destinations;
use crate::hashing::sha256_hex;
use crate::log::Log;
use crate::records::{AdmitAnswer, AdmitRequest, Admitted, Outcomes};
use std::collections::BTreeMap;
use worker::{Env, MessageBatch, MessageExt, QueueRetryOptionsBuilder, RawMessage};

fn body_text(message: &RawMessage) -> Option<String> {
    message.body().as_string()
}

/// Unreadable messages name no merchant: they are kept in this region's object of
/// that name, visible to operators.
pub const UNATTRIBUTED: &str = "unattributed";

/// Each region's queue is consumed against that region's objects only. The batch is
/// split by merchant, then by destination; each group goes out in as few requests as
/// the platform allows, and every message is still acked or retried on its own.
pub async fn consume_deliveries(batch: MessageBatch<String>, env: &Env) {
    let region = queue_region(&batch.queue());
    let messages: Vec<RawMessage> = batch.raw_iter().collect();
    let started_ms = now_ms();
    let sent_before = outbound::requests_sent();
    let mut by_merchant: BTreeMap<String, Vec<(usize, EventMessage)>> = BTreeMap::new();
    for (index, message) in messages.iter().enumerate() {
        let body = body_text(message);
        match body.as_deref().map(serde_json::from_str::<EventMessage>) {
            Some(Ok(event)) => by_merchant
                .entry(event.merchant_id.clone())
                .or_default()
                .push((index, event)),
            _ => {
                let letter = poison_letter(body.as_deref().unwrap_or("<non-text body>"));
                emit(Log::error(
                    "unreadable queue message recorded as dead letter",
                ));
                let recorded = match MerchantClient::new(env, region, UNATTRIBUTED, Phase::Delivery)
                {
                    Ok(client) => client.record_dead_letter(&letter).await,
                    Err(err) => Err(err),
                };
                match recorded {
                    Ok(()) => message.ack(),
                    Err(err) => {
                        emit(
                            Log::error("deliveries: poison message not recorded, retried")
                                .text("message_id", &message.id())
                                .reason(&err),
                        );
                        message.retry();
                    }
                }
            }
        }
    }
    let settings = operator_settings(env);
    // Each message's jobs and what became of each (a job not admitted is done).
    let mut per_message: BTreeMap<usize, Vec<(Option<DeliveryJob>, Step)>> = BTreeMap::new();
    for (merchant_id, events) in by_merchant {
        let indexes: Vec<usize> = events.iter().map(|(i, _)| *i).collect();
        for &index in &indexes {
            per_message.entry(index).or_default();
        }
        match deliver_merchant(env, region, &settings, &merchant_id, events).await {
            Ok(settled) => {
                for (index, job, step) in settled {
                    per_message
                        .entry(index)
                        .or_default()
                        .push((Some(job), step));
                }
            }
            Err(err) => {
                emit(
                    Log::error("deliveries: merchant's records unavailable, retried")
                        .merchant(&merchant_id)
                        .number("messages", indexes.len() as i64)
                        .reason(&err),
                );
                for index in indexes {
                    per_message
                        .entry(index)
                        .or_default()
                        .push((None, Step::Retry));
                }
            }
        }
    }
    let mut tally = Tally::default();
    for (index, steps) in per_message {
        settle(env, region, &messages[index], steps, &mut tally).await;
    }
    metrics::unit(Phase::Delivery);
    metrics::queue_settled(tally.acked, tally.retried, tally.delivered);
    metrics::queue_sent(Phase::Delivery, tally.sent);
    // One line per invocation: what a batch cost (load script and operators read it).
    emit(
        Log::info("deliveries batch")
            .number("messages", messages.len() as i64)
            .number("admitted", tally.jobs as i64)
            .number(
                "outbound_requests",
                (outbound::requests_sent() - sent_before) as i64,
            )
            .duration_ms(now_ms() - started_ms),
    );
}

#[derive(Default)]
struct Tally {
    acked: usize,
    retried: usize,
    delivered: usize,
    jobs: usize,
    sent: usize,
}

/// Settles one message from its jobs' steps: acked when every job is done; retried as a
/// whole when its waiting jobs all wait the same time (done ones are dropped at the next
/// admission); otherwise acked once the waiting jobs travel on in new messages, one per
/// delay. Bookkeeping that failed retries the whole message.
async fn settle(
    env: &Env,
    region: Region,
    message: &RawMessage,
    steps: Vec<(Option<DeliveryJob>, Step)>,
    tally: &mut Tally,
) {
    tally.jobs += steps.len();
    tally.delivered += steps
        .iter()
        .filter(|(_, s)| matches!(s, Step::Delivered))
        .count();
    if steps.iter().any(|(_, s)| matches!(s, Step::Retry)) {
        tally.retried += 1;
        message.retry();
        return;
    }
    let mut waits: BTreeMap<u32, Vec<&DeliveryJob>> = BTreeMap::new();
    for (job, step) in &steps {
        if let (Some(job), Step::RetryIn(seconds)) = (job, step) {
            waits.entry(*seconds).or_default().push(job);
        }
    }
    let retry_in = |seconds: u32| {
        QueueRetryOptionsBuilder::new()
            .with_delay_seconds(seconds)
            .build()
    };
    match waits.len() {
        0 => {
            tally.acked += 1;
            message.ack();
        }
        1 => {
            let seconds = *waits.keys().next().unwrap_or(&0);
            tally.retried += 1;
            message.retry_with_options(&retry_in(seconds));
        }
        _ => {
            let mut sent = 0;
            for (seconds, jobs) in &waits {
                let messages = EventMessage::for_jobs(jobs.iter().copied(), false);
                match send_messages(env, region, messages, Some(*seconds)).await {
                    Ok(n) => sent += n,
                    Err(err) => {
                        emit(
                            Log::error("deliveries: re-enqueue failed, message retried")
                                .reason(&err),
                        );
                        tally.sent += sent;
                        tally.retried += 1;
                        message.retry();
                        return;
                    }
                }
            }
            tally.sent += sent;
            tally.acked += 1;
            message.ack();
        }
    }
}

/// One merchant's share of a batch: admit (one call), deliver per destination, record
/// every outcome (one call). Returns each admitted job with what to do next.
async fn deliver_merchant(
    env: &Env,
    region: Region,
    settings: &OperatorSettings,
    merchant_id: &str,
    events: Vec<(usize, EventMessage)>,
) -> worker::Result<Vec<(usize, DeliveryJob, Step)>> {
    let merchant = match cached_merchant(env, merchant_id, Phase::Delivery).await? {
        // A job is only ever delivered from its merchant's own region.
        Ok(merchant) if merchant.region == region => Some(merchant),
        Ok(_) => {
            emit(Log::error("jobs arrived in the wrong region").merchant(merchant_id));
            None
        }
        Err(_) => None,
    };
    let client = MerchantClient::new(env, region, merchant_id, Phase::Delivery)?;
    let now = now_ms();
    let mut specs: Vec<&'static destinations::DestinationSpec> = events
        .iter()
        .flat_map(|(_, event)| event.jobs.iter())
        .filter_map(|job| destinations::find(&job.destination))
        .collect();
    specs.sort_by_key(|spec| spec.name);
    specs.dedup_by_key(|spec| spec.name);
    // What the object reads for them: cached tokens, and the conversions a correction
    // may adjust (as this merchant maps them).
    let token_destinations = specs
        .iter()
        .filter(|spec| spec.auth.is_some())
        .map(|spec| spec.name.to_string())
        .collect();
    let correction_names = specs
        .iter()
        .filter_map(|spec| {
            Some((
                spec.name.to_string(),
                (spec.corrections?.originals)(merchant.as_ref()?),
            ))
        })
        .collect();
    let request = AdmitRequest {
        messages: events,
        correction_names,
        token_destinations,
        now_ms: now,
    };
    let answer: AdmitAnswer = client.admit(&request).await?;
    let mut settled: Vec<(usize, DeliveryJob, Step)> = Vec::new();
    let mut outcomes = Outcomes {
        now_ms: now,
        ..Outcomes::default()
    };
    let pending = &answer.admitted;
    let groups = delivery::group_jobs(pending.iter().map(|p| &p.job));
    for group in groups {
        let members: Vec<&Admitted> = group.iter().map(|&i| &pending[i]).collect();
        let destination = members[0].job.destination.clone();
        let mut health = answer.health.get(&destination).cloned().unwrap_or_default();
        let now = now_ms();
        let (send, hold_seconds) = match health.admit(now) {
            delivery::Admission::SendAll => (members.len(), 0),
            // The rest come back shortly: released by then if the probe is answered.
            delivery::Admission::ProbeOne => (1, PROBE_FOLLOWERS_WAIT_SECONDS),
            delivery::Admission::Hold { seconds } => (0, seconds),
            delivery::Admission::Paused => {
                // Off the queue, still pending in the object: resuming re-enqueues them
                // in order, and the sweeper leaves a paused destination's jobs alone.
                emit(
                    Log::warn("destination paused: jobs kept pending until it is resumed")
                        .merchant(merchant_id)
                        .destination(&destination)
                        .number("held", members.len() as i64),
                );
                for member in &members {
                    outcomes.held.push((
                        member.job.event.event_id.clone(),
                        member.job.destination.clone(),
                    ));
                    settled.push((member.message, member.job.clone(), Step::Ack));
                }
                continue;
            }
        };
        let (sent_members, held) = members.split_at(send);
        let mut run = send::Run {
            settings,
            members: sent_members,
            steps: vec![None; sent_members.len()],
            quality: vec![None; sent_members.len()],
            answers: Vec::new(),
            probe: health.is_parked(),
            outcomes: &mut outcomes,
        };
        if !sent_members.is_empty() {
            send::deliver_group(env, merchant.as_ref(), &answer, &mut run).await;
        }
        let answers = std::mem::take(&mut run.answers);
        let steps = run.into_steps();
        for (member, step) in sent_members.iter().zip(steps) {
            settled.push((member.message, member.job.clone(), step));
        }
        if !held.is_empty() {
            emit(
                Log::warn("destination parked: jobs held without spending attempts")
                    .merchant(merchant_id)
                    .destination(&destination)
                    .number("held", held.len() as i64)
                    .number("retry_in_s", i64::from(hold_seconds)),
            );
            for member in held {
                // Touched, so the sweeper does not take held jobs for lost.
                outcomes.touch.push((
                    member.job.event.event_id.clone(),
                    member.job.destination.clone(),
                ));
                settled.push((
                    member.message,
                    member.job.clone(),
                    Step::RetryIn(hold_seconds),
                ));
            }
        }
        let before = health.clone();
        let mut change = delivery::HealthChange::None;
        for answer in answers {
            match health.observe(answer, now_ms(), &settings.retry) {
                delivery::HealthChange::None => {}
                other => change = other,
            }
        }
        if health != before {
            outcomes.health.push((destination.clone(), health.clone()));
        }
        match change {
            delivery::HealthChange::Parked => emit(
                Log::warn("destination parked after consecutive transient failures")
                    .merchant(merchant_id)
                    .destination(&destination)
                    .number(
                        "consecutive_failures",
                        i64::from(health.consecutive_failures),
                    ),
            ),
            delivery::HealthChange::Released => emit(
                Log::warn("destination answered a probe: released")
                    .merchant(merchant_id)
                    .destination(&destination),
            ),
            delivery::HealthChange::None => {}
        }
    }
    outcomes.now_ms = now_ms();
    // Nothing is acknowledged before its outcome is recorded: if this fails, every
    // message comes back and the platforms deduplicate a resend by our event id.
    client.record_outcomes(&outcomes).await?;
    Ok(settled)
}

/// While a parked destination's probe is out, the group's other jobs wait this long.
const PROBE_FOLLOWERS_WAIT_SECONDS: u32 = 5;

#[derive(Clone, Copy, Debug)]
pub(super) enum Step {
    Ack,
    /// Acknowledged after the destination took it.
    Delivered,
    RetryIn(u32),
    /// Our own bookkeeping failed: the queue redelivers it after its own delay.
    Retry,
}

/// Re-enqueues lost pending jobs of one region, merchant by merchant; each object
/// finds its own (see `Records::stale_jobs`). Returns how many it re-enqueued.
pub async fn sweep_pending(env: &Env, region: Region) -> worker::Result<usize> {
    let routes = super::routing::Routing::from_env(env)?
        .routes(Some(region))
        .await?;
    let mut swept = 0;
    for route in routes {
        let client = MerchantClient::new(env, region, &route.merchant_id, Phase::Other)?;
        match client.sweep().await {
            Ok(n) => swept += n as usize,
            Err(err) => emit(
                Log::error("sweep failed for a merchant; the next run tries again")
                    .merchant(&route.merchant_id)
                    .reason(&err),
            ),
        }
    }
    Ok(swept)
}

fn poison_letter(body: &str) -> DeadLetter {
    let job = DeliveryJob {
        job_id: format!("poison_{}", &sha256_hex(body)[..32]),
        destination: "unknown".into(),
        event: crate::event::CanonicalEvent {
            event_id: "unknown".into(),
            merchant_id: UNATTRIBUTED.into(),
            name: crate::event::EventName::SubscriptionUpdated,
            source: "unknown".into(),
            occurrence_key: "unknown".into(),
            source_event_id: "unknown".into(),
            source_event_type: "unknown".into(),
            occurred_at: 0,
            customer: Default::default(),
            subscription: Default::default(),
            values: Default::default(),
            livemode: false,
            properties: Default::default(),
            touchpoints: Default::default(),
        },
    };
    let preview: String = body.chars().take(500).collect();
    DeadLetter {
        job,
        attempts: 0,
        last_error: format!("unreadable queue message: {preview}"),
        reason: "poison".into(),
    }
}

/// Dead-letter queue: messages the queue gave up on (the consumer itself kept failing),
/// recorded as dead letters in their merchant's object, one per job.
pub async fn consume_dead_letters(batch: MessageBatch<String>, env: &Env) {
    let region = queue_region(&batch.queue());
    for message in batch.raw_iter() {
        let body = body_text(&message).unwrap_or_default();
        let exhausted = |job| DeadLetter {
            job,
            attempts: 0,
            last_error: "queue retries exhausted before the consumer gave up".into(),
            reason: "queue_exhausted".into(),
        };
        let (owner, letters) = match serde_json::from_str::<EventMessage>(&body) {
            Ok(message) => {
                // The object stores each letter with the stored event when it has one.
                let mut placeholder = poison_letter(&body).job.event;
                placeholder.event_id = message.event_id.clone();
                placeholder.merchant_id = message.merchant_id.clone();
                let event = message.event.clone().unwrap_or(placeholder);
                let letters = message
                    .jobs
                    .iter()
                    .map(|job| {
                        exhausted(DeliveryJob {
                            job_id: job.job_id.clone(),
                            destination: job.destination.clone(),
                            event: event.clone(),
                        })
                    })
                    .collect();
                (message.merchant_id, letters)
            }
            Err(_) => (UNATTRIBUTED.to_string(), vec![poison_letter(&body)]),
        };
        let recorded = async {
            let client = MerchantClient::new(env, region, &owner, Phase::Delivery)?;
            for letter in &letters {
                client.record_dead_letter(letter).await?;
            }
            Ok::<_, worker::Error>(())
        }
        .await;
        match recorded {
            Ok(()) => message.ack(),
            Err(err) => {
                emit(
                    Log::error("dead letters not recorded, retried")
                        .merchant(&owner)
                        .number("letters", letters.len() as i64)
                        .reason(&err),
                );
                message.retry();
            }
        }
    }
}
