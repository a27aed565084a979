//! Queue consumers: deliver jobs to destinations, and record dead letters.
//!
//! Every message is acked or retried on its own; the handler never returns an error,
//! which would retry the whole batch.

use super::regions::{dead_letter_binding, queue_region};
use super::routing::Routing;
use super::{keyring, now_ms, operator_settings, outbound, store::Store};
use crate::config::{MerchantConfig, Region};
use crate::delivery::{decide, DeadLetter, Decision, DeliveryJob};
use crate::destinations::{self, Outcome};
use crate::hashing::sha256_hex;
use std::collections::HashMap;
use worker::{
    console_error, console_log, console_warn, Env, MessageBatch, MessageBuilder, MessageExt,
    QueueContentType, QueueRetryOptionsBuilder, RawMessage,
};

fn body_text(message: &RawMessage) -> Option<String> {
    message.body().as_string()
}

/// Each region's queue is consumed against that region's database only.
pub async fn consume_deliveries(batch: MessageBatch<String>, env: &Env) {
    let region = queue_region(&batch.queue());
    let store = match Store::for_region(env, region) {
        Ok(store) => store,
        Err(err) => {
            console_error!("deliveries: D1 unavailable ({err}); retrying batch");
            batch.retry_all();
            return;
        }
    };
    let mut merchants: HashMap<String, Option<MerchantConfig>> = HashMap::new();
    for message in batch.raw_iter() {
        let body = body_text(&message);
        let result = match body.as_deref().map(serde_json::from_str::<DeliveryJob>) {
            Some(Ok(job)) => deliver(env, region, &store, &mut merchants, job).await,
            _ => record_poison(&store, body.as_deref().unwrap_or("<non-text body>")).await,
        };
        match result {
            Ok(Step::Ack) => message.ack(),
            Ok(Step::RetryIn(seconds)) => message.retry_with_options(
                &QueueRetryOptionsBuilder::new()
                    .with_delay_seconds(seconds)
                    .build(),
            ),
            Err(err) => {
                // Our own bookkeeping failed (D1/queue): let the queue redeliver it.
                console_error!(
                    "deliveries: {err}; message {} will be retried",
                    message.id()
                );
                message.retry();
            }
        }
    }
}

enum Step {
    Ack,
    RetryIn(u32),
}

async fn deliver(
    env: &Env,
    region: Region,
    store: &Store,
    merchants: &mut HashMap<String, Option<MerchantConfig>>,
    mut job: DeliveryJob,
) -> worker::Result<Step> {
    let previous = store.delivery(&job.job_id).await?;
    // Every job's row is written before it is enqueued: a missing row means the data
    // was erased (GDPR) or the merchant deleted since. Nothing may be sent.
    let Some(row) = &previous else {
        console_log!(
            "job {} has no delivery record (erased); dropping it",
            job.job_id
        );
        return Ok(Step::Ack);
    };
    {
        if row.status != "pending" {
            console_log!(
                "job {} already {}; skipping duplicate message",
                job.job_id,
                row.status
            );
            return Ok(Step::Ack);
        }
    }
    let attempt = previous.map_or(0, |r| r.attempts.max(0) as u32) + 1;
    let merchant_id = job.event.merchant_id.clone();
    if !merchants.contains_key(&merchant_id) {
        let loaded = match Routing::from_env(env)?.route(&merchant_id).await? {
            // A job is only ever delivered from its merchant's own region.
            Some(route) if route.region == region => {
                store.load_merchant(&route, keyring(env).as_ref()).await?
            }
            Some(_) => {
                console_error!(
                    "job {} of merchant {merchant_id} arrived in the wrong region",
                    job.job_id
                );
                None
            }
            None => None,
        };
        merchants.insert(merchant_id.clone(), loaded);
    }
    let settings = operator_settings(env);
    let now = now_ms();

    // Identity enrichment, again at send time: a customer event may have arrived after
    // the subscription event that carried no email.
    if job.event.customer.email.is_none() {
        if let Some(customer_id) = job.event.customer.customer_id.clone() {
            job.event.customer.email = store
                .known_customer(&merchant_id, &job.event.source, &customer_id)
                .await?
                .and_then(|c| c.email);
        }
    }

    let merchant = merchants.get(&merchant_id).and_then(Option::as_ref);
    let spec = destinations::find(&job.destination);
    let built = match (merchant, spec) {
        (None, _) => Err(format!("merchant {merchant_id} no longer exists")),
        (_, None) => Err(format!("unknown destination {}", job.destination)),
        (Some(merchant), Some(spec)) => (spec.build)(
            std::slice::from_ref(&job.event),
            merchant,
            &settings.endpoints,
            now / 1000,
        )
        .map_err(|e| e.to_string()),
    };

    // Dry run: record exactly what would be sent (URL without credentials, body), send
    // nothing. The body stays in the merchant's regional database like every event.
    if let (Some(merchant), Ok(request)) = (merchant, &built) {
        if merchant.dry_run {
            store
                .record_attempt(
                    &job,
                    attempt,
                    "dry_run",
                    None,
                    Some(&request.body),
                    Some(&request.log_url),
                    0,
                    "simulated",
                    now_ms(),
                )
                .await?;
            return Ok(Step::Ack);
        }
    }

    let started = now_ms();
    let (outcome, http_status, log_url) = match built {
        Err(reason) => (Outcome::Permanent { reason }, None, None),
        Ok(request) => {
            let answer = outbound::send(&request).await;
            let outcome = match (&answer, spec) {
                (Ok(answer), Some(spec)) => {
                    (spec.classify)(answer.status, answer.retry_after.as_deref(), &answer.body)
                }
                (Err(reason), _) => Outcome::Retry {
                    after_seconds: None,
                    reason: reason.clone(),
                },
                (Ok(_), None) => Outcome::Permanent {
                    reason: "unknown destination".into(),
                },
            };
            (
                outcome,
                answer.ok().map(|a| a.status),
                Some(request.log_url),
            )
        }
    };
    let duration = now_ms() - started;
    let decision = decide(&outcome, attempt, &settings.retry, &job.job_id);
    let (label, detail) = match &outcome {
        Outcome::Delivered => ("delivered", None),
        Outcome::AlreadyDelivered => ("already_delivered", None),
        Outcome::Retry { reason, .. } => ("retry", Some(reason.as_str())),
        Outcome::Permanent { reason } => ("permanent", Some(reason.as_str())),
    };
    let new_status = match decision {
        Decision::Done => "delivered",
        _ => "pending",
    };
    store
        .record_attempt(
            &job,
            attempt,
            label,
            http_status,
            detail,
            log_url.as_deref(),
            duration,
            new_status,
            now_ms(),
        )
        .await?;
    match decision {
        Decision::Done => Ok(Step::Ack),
        Decision::RetryIn { seconds, reason } => {
            console_warn!(
                "job {} attempt {attempt} failed ({reason}); retry in {seconds}s",
                job.job_id
            );
            Ok(Step::RetryIn(seconds))
        }
        Decision::DeadLetter { reason, last_error } => {
            console_warn!(
                "job {} dead-lettered after {attempt} attempt(s): {reason}",
                job.job_id
            );
            let letter = DeadLetter {
                job,
                attempts: attempt,
                last_error,
                reason,
            };
            send_to_dlq(env, region, &letter).await?;
            Ok(Step::Ack)
        }
    }
}

async fn send_to_dlq(env: &Env, region: Region, letter: &DeadLetter) -> worker::Result<()> {
    let body =
        serde_json::to_string(letter).map_err(|e| worker::Error::RustError(e.to_string()))?;
    env.queue(dead_letter_binding(region))?
        .send(
            MessageBuilder::new(body)
                .content_type(QueueContentType::Text)
                .build(),
        )
        .await
}

/// A message that is not a job at all still ends up visible to an operator.
async fn record_poison(store: &Store, body: &str) -> worker::Result<Step> {
    console_error!("deliveries: unreadable message recorded as dead letter");
    let letter = poison_letter(body);
    store.record_dead_letter(&letter, now_ms()).await?;
    Ok(Step::Ack)
}

fn poison_letter(body: &str) -> DeadLetter {
    let job = DeliveryJob {
        job_id: format!("poison_{}", &sha256_hex(body)[..32]),
        destination: "unknown".into(),
        event: crate::event::CanonicalEvent {
            event_id: "unknown".into(),
            merchant_id: "unknown".into(),
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

/// Dead-letter queue: our own `DeadLetter`s, or raw jobs the queue gave up on.
pub async fn consume_dead_letters(batch: MessageBatch<String>, env: &Env) {
    let store = match Store::for_region(env, queue_region(&batch.queue())) {
        Ok(store) => store,
        Err(err) => {
            console_error!("dead letters: D1 unavailable ({err}); retrying batch");
            batch.retry_all();
            return;
        }
    };
    for message in batch.raw_iter() {
        let body = body_text(&message).unwrap_or_default();
        let letter = serde_json::from_str::<DeadLetter>(&body).ok().or_else(|| {
            serde_json::from_str::<DeliveryJob>(&body)
                .ok()
                .map(|job| DeadLetter {
                    job,
                    attempts: 0,
                    last_error: "queue retries exhausted before the consumer gave up".into(),
                    reason: "queue_exhausted".into(),
                })
        });
        let letter = letter.unwrap_or_else(|| poison_letter(&body));
        match store.record_dead_letter(&letter, now_ms()).await {
            Ok(()) => message.ack(),
            Err(err) => {
                console_error!(
                    "dead letters: could not record {}: {err}",
                    letter.job.job_id
                );
                message.retry();
            }
        }
    }
}
