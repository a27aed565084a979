//! Background tasks on the `TASKS` queue (merchant ids only, nothing personal): the
//! daily cron puts one LinkedIn seed sync per merchant on it, and each message runs
//! that merchant's sync. Rules are in `crate::seed` and `crate::intent_store`; this
//! file sends the requests and records the run in the merchant's object.

use super::merchant::{MerchantClient, SeedPrepareRequest, SeedPrepared, SeedRecordRequest};
use super::metrics::Phase;
use super::outbound;
use super::routing::Routing;
use super::settings::{cached_merchant, Missing};
use super::{emit, now_ms, operator_settings};
use crate::config::MerchantStatus;
use crate::destinations::linkedin::{self, LinkedInConfig};
use crate::intent_store::{SeedCandidate, SeedRun, SeedRunStatus};
use crate::log::Log;
use crate::plans::Feature;
use crate::seed::{self, SeedClient, Task};
use std::time::Duration;
use worker::{Delay, Env, MessageBatch, MessageExt, Result};

pub const BINDING: &str = "TASKS";

/// Puts one seed-sync task per merchant on the queue.
pub async fn fan_out_seed_sync(env: &Env, day: &str) -> Result<usize> {
    let routes = Routing::from_env(env)?.routes(None).await?;
    let queue = env.queue(BINDING)?;
    let tasks: Vec<String> = routes
        .iter()
        .filter(|route| route.status == MerchantStatus::Active)
        .map(|route| {
            serde_json::to_string(&Task::SeedSync {
                merchant_id: route.merchant_id.clone(),
                day: day.to_string(),
                trigger: "cron".into(),
            })
            .unwrap_or_default()
        })
        .collect();
    let count = tasks.len();
    // Queues take at most 100 messages per batch.
    for chunk in tasks.chunks(100) {
        let messages = chunk
            .iter()
            .map(|body| {
                worker::MessageBuilder::new(body.clone())
                    .content_type(worker::QueueContentType::Text)
                    .build()
            })
            .collect::<Vec<_>>();
        queue.send_batch(messages).await?;
    }
    Ok(count)
}

pub async fn consume(batch: MessageBatch<String>, env: &Env) {
    let messages = match batch.messages() {
        Ok(messages) => messages,
        Err(err) => {
            emit(Log::error("tasks batch unreadable").reason(err));
            batch.retry_all();
            return;
        }
    };
    for message in messages {
        let task: Task = match serde_json::from_str(message.body()) {
            Ok(task) => task,
            Err(err) => {
                emit(Log::error("unknown task dropped").text("error", &err.to_string()));
                message.ack();
                continue;
            }
        };
        let Task::SeedSync {
            merchant_id,
            day,
            trigger,
        } = task;
        match seed_sync(env, &merchant_id, &day, &trigger).await {
            Ok(_) => message.ack(),
            Err(reason) => {
                emit(
                    Log::warn("seed sync failed; the queue retries it")
                        .merchant(&merchant_id)
                        .text("error", &reason),
                );
                message.retry();
            }
        }
    }
}

/// One merchant's sync. `Ok(None)`: nothing configured. `Err`: a failure worth
/// retrying (it is recorded in the run history too).
pub async fn seed_sync(
    env: &Env,
    merchant_id: &str,
    day: &str,
    trigger: &str,
) -> std::result::Result<Option<SeedRun>, String> {
    let routing = Routing::from_env(env).map_err(|e| e.to_string())?;
    let Some(route) = routing
        .route(merchant_id)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    let client = MerchantClient::new(env, route.region, merchant_id, Phase::Other)
        .map_err(|e| e.to_string())?;
    let plan_allows =
        route.plan.includes(Feature::LinkedinSeedSync) && route.status == MerchantStatus::Active;
    let prepared = client
        .seed_prepare(&SeedPrepareRequest {
            plan_allows,
            day: day.to_string(),
            trigger: trigger.to_string(),
        })
        .await
        .map_err(|e| e.to_string())?;
    let (seed_settings, segment, batch) = match prepared {
        SeedPrepared::NotConfigured => return Ok(None),
        SeedPrepared::PlanRequired => return Ok(None),
        SeedPrepared::Ready {
            seed,
            segment,
            batch,
        } => (seed, segment, batch),
    };
    let started_at = now_ms();
    let mut run = SeedRun {
        day: day.to_string(),
        trigger: trigger.to_string(),
        started_at,
        finished_at: started_at,
        status: SeedRunStatus::Succeeded,
        segment: segment.clone(),
        uploaded: 0,
        skipped_without_email: batch.skipped_without_email,
        failed: 0,
        error: None,
        segment_size: None,
        segment_status: None,
    };
    let record = |run: SeedRun, uploaded: Vec<SeedCandidate>| {
        let client = &client;
        async move {
            client
                .seed_record(&SeedRecordRequest { run, uploaded })
                .await
                .map_err(|e| e.to_string())
        }
    };
    let merchant = match cached_merchant(env, merchant_id, Phase::Other).await {
        Ok(Ok(merchant)) => merchant,
        Ok(Err(Missing::Unknown | Missing::NoSettings)) => return Ok(None),
        Err(err) => return Err(err.to_string()),
    };
    let Ok(config) = merchant.destination_config::<LinkedInConfig>(linkedin::NAME) else {
        run.status = SeedRunStatus::NotConnected;
        run.error = Some(
            "connect the LinkedIn destination: the seed sync uploads with its access token".into(),
        );
        run.finished_at = now_ms();
        record(run.clone(), Vec::new()).await?;
        return Ok(Some(run));
    };
    let operator = operator_settings(env);
    let linkedin = SeedClient::new(&operator.endpoints, &config);
    let fail = |mut run: SeedRun, failure: seed::SeedFailure| {
        run.status = SeedRunStatus::Failed;
        run.error = Some(failure.reason.clone());
        run.finished_at = now_ms();
        (run, failure)
    };

    let segment = match segment {
        Some(segment) => segment,
        None if batch.candidates.is_empty() => {
            // Nothing to upload yet: the segment is created with its first members.
            run.finished_at = now_ms();
            record(run.clone(), Vec::new()).await?;
            return Ok(Some(run));
        }
        None => {
            let answer = outbound::send(&linkedin.create_segment(&seed_settings)).await;
            let created = match answer {
                Ok(answer) => seed::created_segment(
                    answer.status,
                    answer.created_id.as_deref(),
                    answer.location.as_deref(),
                    &answer.body,
                ),
                Err(reason) => Err(seed::SeedFailure {
                    reason,
                    retryable: true,
                }),
            };
            match created {
                Ok(segment) => {
                    client
                        .seed_remember_segment(&segment)
                        .await
                        .map_err(|e| e.to_string())?;
                    // LinkedIn asks for a pause before users are added to a new segment.
                    Delay::from(Duration::from_millis(seed::WAIT_AFTER_CREATE_MS)).await;
                    segment
                }
                Err(failure) => {
                    let (run, failure) = fail(run, failure);
                    record(run.clone(), Vec::new()).await?;
                    return if failure.retryable {
                        Err(failure.reason)
                    } else {
                        Ok(Some(run))
                    };
                }
            }
        }
    };
    run.segment = Some(segment.clone());

    let mut accepted = vec![true; batch.candidates.len()];
    let mut failure: Option<seed::SeedFailure> = None;
    for (request, owners) in linkedin.add_users(&segment, &batch.candidates) {
        let answer = outbound::send(&request).await;
        let elements = match answer {
            Ok(answer) => seed::accepted_elements(answer.status, &answer.body, owners.len()),
            Err(reason) => Err(seed::SeedFailure {
                reason,
                retryable: true,
            }),
        };
        match elements {
            Ok(elements) => {
                for (owner, ok) in owners.iter().zip(elements) {
                    if !ok {
                        accepted[*owner] = false;
                    }
                }
            }
            Err(err) => {
                for owner in &owners {
                    accepted[*owner] = false;
                }
                failure = Some(err);
            }
        }
    }
    let uploaded: Vec<SeedCandidate> = batch
        .candidates
        .iter()
        .zip(&accepted)
        .filter(|(_, ok)| **ok)
        .map(|(c, _)| c.clone())
        .collect();
    run.uploaded = uploaded.len() as i64;
    run.failed = (batch.candidates.len() - uploaded.len()) as i64;
    if run.failed > 0 && failure.is_none() {
        failure = Some(seed::SeedFailure {
            reason: format!("LinkedIn refused {} of the users", run.failed),
            retryable: false,
        });
    }
    // Best effort: the size is for the merchant's view only.
    if let Ok(answer) = outbound::send(&linkedin.get_segment(&segment)).await {
        if (200..300).contains(&answer.status) {
            let (size, status) = seed::segment_size(&answer.body);
            run.segment_size = size;
            run.segment_status = status;
        }
    }
    run.finished_at = now_ms();
    let retry = match failure {
        Some(failure) => {
            run.status = SeedRunStatus::Failed;
            run.error = Some(failure.reason.clone());
            failure.retryable.then_some(failure.reason)
        }
        None => None,
    };
    record(run.clone(), uploaded).await?;
    emit(
        Log::info("seed sync done")
            .merchant(merchant_id)
            .number("uploaded", run.uploaded)
            .number("skipped_without_email", run.skipped_without_email)
            .number("failed", run.failed),
    );
    match retry {
        Some(reason) => Err(reason),
        None => Ok(Some(run)),
    }
}
