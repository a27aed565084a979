//! Queue consumers: deliver jobs to destinations, and record dead letters.
//!
//! Every message is acked or retried on its own; the handler never returns an error,
//! which would retry the whole batch.

use super::regions::{dead_letter_binding, queue_region};
use super::routing::Routing;
use super::store::{AttemptRecord, DeliveryRow, Store};
use super::{emit, keyring, now_ms, operator_settings, outbound, OperatorSettings};
use crate::config::{MerchantConfig, Region};
use crate::delivery::{self, decide, DeadLetter, Decision, DeliveryJob, JobMessage, JobReference};
use crate::destinations::{
    self, google_ads, AuthSpec, BuildError, Context, DestinationSpec, OutboundRequest, Outcome,
};
use crate::event::CanonicalEvent;
use crate::hashing::sha256_hex;
use crate::identity::{self, MatchQuality};
use crate::log::Log;
use crate::secrets::config_context;
use std::collections::HashMap;
use worker::{
    Env, MessageBatch, MessageBuilder, MessageExt, QueueContentType, QueueRetryOptionsBuilder,
    RawMessage,
};

fn body_text(message: &RawMessage) -> Option<String> {
    message.body().as_string()
}

/// Each region's queue is consumed against that region's database only. The batch is
/// grouped by (merchant, destination) and each group goes out in as few requests as the
/// platform allows; every message is still acked or retried on its own.
pub async fn consume_deliveries(batch: MessageBatch<String>, env: &Env) {
    let region = queue_region(&batch.queue());
    let store = match Store::for_region(env, region) {
        Ok(store) => store,
        Err(err) => {
            emit(Log::error("deliveries: storage unavailable, batch retried").reason(&err));
            batch.retry_all();
            return;
        }
    };
    let messages: Vec<RawMessage> = batch.raw_iter().collect();
    let started_ms = now_ms();
    let sent_before = outbound::requests_sent();
    // Decode every message first, so the batch is admitted with one D1 read.
    let mut jobs: Vec<(usize, DeliveryJob)> = Vec::with_capacity(messages.len());
    let mut references: Vec<(usize, JobReference)> = Vec::new();
    for (index, message) in messages.iter().enumerate() {
        let body = body_text(message);
        match body.as_deref().map(serde_json::from_str::<JobMessage>) {
            Some(Ok(JobMessage::Inline(job))) => jobs.push((index, job)),
            Some(Ok(JobMessage::ByReference(reference))) => references.push((index, reference)),
            _ => match record_poison(&store, body.as_deref().unwrap_or("<non-text body>")).await {
                Ok(_) => message.ack(),
                Err(err) => {
                    emit(
                        Log::error("deliveries: poison message not recorded, retried")
                            .text("message_id", &message.id())
                            .reason(&err),
                    );
                    message.retry();
                }
            },
        }
    }
    // Jobs too large for one message name their stored event: read back in one query.
    if !references.is_empty() {
        let ids: Vec<&str> = references
            .iter()
            .map(|(_, r)| r.event_id.as_str())
            .collect();
        match store.events_by_id(&ids).await {
            Ok(events) => {
                for (index, reference) in references {
                    match events.get(&reference.event_id) {
                        Some(event) if event.merchant_id == reference.merchant_id => jobs.push((
                            index,
                            DeliveryJob {
                                job_id: reference.job_id,
                                destination: reference.destination,
                                event: event.clone(),
                            },
                        )),
                        // Erased or purged since: nothing may be sent.
                        _ => messages[index].ack(),
                    }
                }
            }
            Err(err) => {
                emit(
                    Log::error("deliveries: referenced events unreadable, retried")
                        .number("messages", references.len() as i64)
                        .reason(&err),
                );
                for (index, _) in &references {
                    messages[*index].retry();
                }
            }
        }
    }
    let job_ids: Vec<&str> = jobs.iter().map(|(_, job)| job.job_id.as_str()).collect();
    let rows = match store.deliveries(&job_ids).await {
        Ok(rows) => rows,
        Err(err) => {
            emit(
                Log::error("deliveries: admission read failed, retried")
                    .number("messages", jobs.len() as i64)
                    .reason(&err),
            );
            for (index, _) in &jobs {
                messages[*index].retry();
            }
            return;
        }
    };
    let mut pending: Vec<Pending> = Vec::new();
    for (index, job) in jobs {
        match admit(rows.get(&job.job_id), &job) {
            Some(attempt) => pending.push(Pending {
                message: index,
                job,
                attempt,
            }),
            None => messages[index].ack(),
        }
    }
    // One event fans out to several destinations: enrich each event once per batch.
    let enriched = match enrich_identities(&store, pending.iter().map(|p| &p.job.event)).await {
        Ok(enriched) => enriched,
        Err(err) => {
            emit(
                Log::error("deliveries: identity lookup failed, retried")
                    .number("messages", pending.len() as i64)
                    .reason(&err),
            );
            for member in &pending {
                messages[member.message].retry();
            }
            return;
        }
    };

    let settings = operator_settings(env);
    let mut merchants: HashMap<String, Option<MerchantConfig>> = HashMap::new();
    let groups = delivery::group_jobs(pending.iter().map(|p| &p.job));
    // Parked destinations (failing every request) hold their jobs: one read per batch.
    let pairs: Vec<(String, String)> = groups
        .iter()
        .map(|g| {
            let job = &pending[g[0]].job;
            (job.event.merchant_id.clone(), job.destination.clone())
        })
        .collect();
    let healths = match store.destination_health(&pairs).await {
        Ok(healths) => healths,
        Err(err) => {
            emit(
                Log::error("deliveries: destination health unreadable, batch retried").reason(&err),
            );
            for member in &pending {
                messages[member.message].retry();
            }
            return;
        }
    };
    for (group, pair) in groups.into_iter().zip(pairs) {
        let members: Vec<&Pending> = group.iter().map(|&i| &pending[i]).collect();
        let mut health = healths.get(&pair).cloned().unwrap_or_default();
        let now = now_ms();
        let (send, hold_seconds) = match health.admit(now) {
            delivery::Admission::SendAll => (members.len(), 0),
            // The rest come back shortly: released by then if the probe is answered.
            delivery::Admission::ProbeOne => (1, PROBE_FOLLOWERS_WAIT_SECONDS),
            delivery::Admission::Hold { seconds } => (0, seconds),
        };
        let (sent_members, held) = members.split_at(send);
        let mut steps = Vec::with_capacity(members.len());
        let mut answers = Vec::new();
        if !sent_members.is_empty() {
            match deliver_group(
                env,
                region,
                &store,
                &settings,
                &mut merchants,
                &enriched,
                sent_members,
                health.is_parked(),
            )
            .await
            {
                Ok((group_steps, group_answers)) => {
                    steps.extend(group_steps);
                    answers = group_answers;
                }
                Err(err) => {
                    emit(
                        Log::error("deliveries: group bookkeeping failed, retried")
                            .merchant(&pair.0)
                            .destination(&pair.1)
                            .number("messages", sent_members.len() as i64)
                            .reason(&err),
                    );
                    steps.extend(vec![Err(err.to_string()); sent_members.len()]);
                }
            }
        }
        if !held.is_empty() {
            let ids: Vec<&str> = held.iter().map(|m| m.job.job_id.as_str()).collect();
            // Touched, so the sweeper does not take held jobs for lost.
            let held_step = match store.touch_jobs(&ids, now).await {
                Ok(()) => Ok(Step::RetryIn(hold_seconds)),
                Err(err) => Err(err.to_string()),
            };
            emit(
                Log::warn("destination parked: jobs held without spending attempts")
                    .merchant(&pair.0)
                    .destination(&pair.1)
                    .number("held", held.len() as i64)
                    .number("retry_in_s", i64::from(hold_seconds)),
            );
            steps.extend(vec![held_step; held.len()]);
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
            if let Err(err) = store
                .put_destination_health(&pair.0, &pair.1, &health, now_ms())
                .await
            {
                emit(Log::error("destination health not saved").reason(&err));
            }
        }
        match change {
            delivery::HealthChange::Parked => emit(
                Log::warn("destination parked after consecutive transient failures")
                    .merchant(&pair.0)
                    .destination(&pair.1)
                    .number(
                        "consecutive_failures",
                        i64::from(health.consecutive_failures),
                    ),
            ),
            delivery::HealthChange::Released => emit(
                Log::warn("destination answered a probe: released")
                    .merchant(&pair.0)
                    .destination(&pair.1),
            ),
            delivery::HealthChange::None => {}
        }
        for (member, step) in members.iter().zip(steps) {
            let message = &messages[member.message];
            match step {
                Ok(Step::Ack) => message.ack(),
                Ok(Step::RetryIn(seconds)) => message.retry_with_options(
                    &QueueRetryOptionsBuilder::new()
                        .with_delay_seconds(seconds)
                        .build(),
                ),
                Err(err) => {
                    // Our own bookkeeping failed (D1/queue): let the queue redeliver it.
                    emit(
                        Log::error("deliveries: bookkeeping failed, message retried")
                            .job(&member.job.job_id)
                            .reason(&err),
                    );
                    message.retry();
                }
            }
        }
    }
    // One line per invocation: what a batch cost (load script and operators read it).
    emit(
        Log::info("deliveries batch")
            .number("messages", messages.len() as i64)
            .number("admitted", pending.len() as i64)
            .number(
                "outbound_requests",
                (outbound::requests_sent() - sent_before) as i64,
            )
            .duration_ms(now_ms() - started_ms),
    );
}

/// While a parked destination's probe is out, the group's other jobs wait this long.
const PROBE_FOLLOWERS_WAIT_SECONDS: u32 = 5;

/// How long a correction waits before it looks again for the conversion it corrects.
const CORRECTION_WAIT_SECONDS: u32 = 60;

#[derive(Clone, Copy)]
enum Step {
    Ack,
    RetryIn(u32),
}

struct Pending {
    message: usize,
    job: DeliveryJob,
    attempt: u32,
}

/// A job is worked on only while its delivery row is pending. A missing row means the
/// data was erased (GDPR) or the merchant deleted since: nothing may be sent. Returns the
/// attempt number this run is.
fn admit(row: Option<&DeliveryRow>, job: &DeliveryJob) -> Option<u32> {
    let Some(row) = row else {
        emit(
            Log::info("job dropped: no delivery record (erased)")
                .merchant(&job.event.merchant_id)
                .destination(&job.destination)
                .job(&job.job_id),
        );
        return None;
    };
    if row.status != "pending" {
        emit(
            Log::info("duplicate message skipped")
                .merchant(&job.event.merchant_id)
                .destination(&job.destination)
                .job(&job.job_id)
                .outcome(&row.status),
        );
        return None;
    }
    Some(row.attempts.max(0) as u32 + 1)
}

async fn load_merchant(
    env: &Env,
    region: Region,
    store: &Store,
    merchants: &mut HashMap<String, Option<MerchantConfig>>,
    merchant_id: &str,
) -> worker::Result<Option<MerchantConfig>> {
    if let Some(known) = merchants.get(merchant_id) {
        return Ok(known.clone());
    }
    let loaded = match Routing::from_env(env)?.route(merchant_id).await? {
        // A job is only ever delivered from its merchant's own region.
        Some(route) if route.region == region => {
            store.load_merchant(&route, keyring(env).as_ref()).await?
        }
        Some(_) => {
            emit(Log::error("jobs arrived in the wrong region").merchant(merchant_id));
            None
        }
        None => None,
    };
    merchants.insert(merchant_id.to_string(), loaded.clone());
    Ok(loaded)
}

/// Identity enrichment at send time, for every event of the batch with two queries: a
/// customer event, or a signup with click ids, may have arrived after the billing event.
async fn enrich_identities<'a>(
    store: &Store,
    events: impl Iterator<Item = &'a CanonicalEvent>,
) -> worker::Result<HashMap<String, CanonicalEvent>> {
    let mut enriched: HashMap<String, CanonicalEvent> = HashMap::new();
    for event in events {
        enriched
            .entry(event.event_id.clone())
            .or_insert_with(|| event.clone());
    }
    let without_email: Vec<(String, String, String)> = enriched
        .values()
        .filter(|e| e.customer.email.is_none())
        .filter_map(|e| {
            let customer_id = e.customer.customer_id.clone()?;
            Some((e.merchant_id.clone(), e.source.clone(), customer_id))
        })
        .collect();
    let emails = store.customer_emails(&without_email).await?;
    for event in enriched.values_mut() {
        if event.customer.email.is_none() {
            if let Some(customer_id) = &event.customer.customer_id {
                let known = (
                    event.merchant_id.clone(),
                    event.source.clone(),
                    customer_id.clone(),
                );
                event.customer.email = emails.get(&known).cloned();
            }
        }
    }
    let mut keys: Vec<(String, String)> = enriched
        .values()
        .flat_map(|e| {
            identity::keys(e)
                .into_iter()
                .map(|k| (e.merchant_id.clone(), k))
        })
        .collect();
    keys.sort();
    keys.dedup();
    let records = store.identity_records(&keys).await?;
    for event in enriched.values_mut() {
        let own_keys = identity::keys(event);
        let stored = identity::merge_freshest_first(
            records
                .iter()
                .filter(|(merchant, key, _)| {
                    *merchant == event.merchant_id && own_keys.contains(key)
                })
                .map(|(_, _, touchpoints)| touchpoints),
        );
        if let Some(stored) = stored {
            event.touchpoints.fill_from(&stored);
        }
    }
    Ok(enriched)
}

/// Delivers one (merchant, destination) group; one step per member, in order.
async fn deliver_group(
    env: &Env,
    region: Region,
    store: &Store,
    settings: &OperatorSettings,
    merchants: &mut HashMap<String, Option<MerchantConfig>>,
    enriched: &HashMap<String, CanonicalEvent>,
    members: &[&Pending],
    probe: bool,
) -> worker::Result<(Vec<Result<Step, String>>, Vec<delivery::Answer>)> {
    let Some(first) = members.first() else {
        return Ok((Vec::new(), Vec::new()));
    };
    let merchant =
        load_merchant(env, region, store, merchants, &first.job.event.merchant_id).await?;
    let spec = destinations::find(&first.job.destination);
    let mut run = Run {
        env,
        region,
        store,
        settings,
        members,
        steps: vec![None; members.len()],
        quality: vec![None; members.len()],
        answers: Vec::new(),
        probe,
    };
    let (Some(merchant), Some(spec)) = (merchant, spec) else {
        let reason = if spec.is_none() {
            format!("unknown destination {}", first.job.destination)
        } else {
            format!("merchant {} no longer exists", first.job.event.merchant_id)
        };
        for i in 0..members.len() {
            run.finish(
                i,
                &Outcome::Permanent {
                    reason: reason.clone(),
                },
                None,
                None,
                0,
            )
            .await?;
        }
        return Ok(run.into_steps());
    };

    let google_conversions = if spec.name == google_ads::NAME {
        google_ads::conversion_names(&merchant)
    } else {
        Vec::new()
    };
    // Google Ads corrections adjust conversions Google accepted: found here, or the
    // correction waits (no attempt spent) or is skipped with the reason.
    let mut events = Vec::with_capacity(members.len());
    let mut settled = vec![false; members.len()];
    for (i, member) in members.iter().enumerate() {
        let mut event = enriched
            .get(&member.job.event.event_id)
            .cloned()
            .unwrap_or_else(|| member.job.event.clone());
        if spec.name == google_ads::NAME && google_ads::needs_original(&event) {
            let candidates: Vec<(CanonicalEvent, google_ads::UploadState)> = store
                .correction_candidates(
                    &merchant.merchant_id,
                    spec.name,
                    &event,
                    &google_conversions,
                )
                .await?
                .into_iter()
                .map(|(c, status)| (c, google_ads::UploadState::from_status(status.as_deref())))
                .collect();
            let plan = match merchant.destination_config::<google_ads::GoogleAdsConfig>(spec.name) {
                Ok(config) => google_ads::plan_correction(&event, &candidates, &config),
                Err(err) => google_ads::CorrectionPlan::Skip(err.to_string()),
            };
            match plan {
                google_ads::CorrectionPlan::Adjust(originals) => {
                    google_ads::attach_originals(&mut event, &originals, &merchant);
                }
                google_ads::CorrectionPlan::Wait(reason) => {
                    // Touched, so the pending-job sweeper does not take it for lost.
                    store
                        .touch_jobs(&[member.job.job_id.as_str()], now_ms())
                        .await?;
                    run.wait(i, CORRECTION_WAIT_SECONDS, &reason);
                    settled[i] = true;
                }
                google_ads::CorrectionPlan::Skip(reason) => {
                    run.record_final(i, "skipped", Some(&reason), None, "skipped")
                        .await?;
                    settled[i] = true;
                }
            }
        }
        events.push(event);
    }
    for (i, event) in events.iter().enumerate() {
        run.quality[i] = Some(identity::match_quality(event, spec.match_keys));
    }
    // What is left to build: `member_of[k]` is the member the k-th built event belongs to.
    let member_of: Vec<usize> = (0..members.len()).filter(|&i| !settled[i]).collect();
    if member_of.is_empty() {
        return Ok(run.into_steps());
    }
    let events: Vec<CanonicalEvent> = member_of.iter().map(|&i| events[i].clone()).collect();

    let now = now_ms();
    let mut token = None;
    if let Some(auth) = spec.auth {
        match access_token(env, store, &merchant, spec.name, auth, settings, now).await? {
            Ok(t) => token = Some(t),
            Err(outcome) => {
                for &i in &member_of {
                    run.finish(i, &outcome, None, None, 0).await?;
                }
                return Ok(run.into_steps());
            }
        }
    }
    let context = Context {
        endpoints: &settings.endpoints,
        operator: &settings.operator,
        now_s: now / 1000,
        access_token: token.as_deref(),
    };
    let plan = match (spec.build)(&events, &merchant, &context) {
        Ok(plan) => plan,
        Err(err) => {
            for &i in &member_of {
                run.refused(i, &err).await?;
            }
            return Ok(run.into_steps());
        }
    };
    for (k, err) in &plan.refused {
        run.refused(member_of[*k], err).await?;
    }

    for planned in &plan.requests {
        let distinct = destinations::distinct_rows(&planned.rows);
        if merchant.dry_run {
            // Record exactly what would be sent (URL without credentials), send nothing.
            for &k in &distinct {
                run.simulated(member_of[k], &planned.request).await?;
            }
            continue;
        }
        let rows = planned.rows.len();
        let sent = send_rows(store, &merchant.merchant_id, spec, &planned.request, rows).await?;
        let log_url = Some(planned.request.log_url.as_str());
        match sent.outcomes {
            Some(outcomes) => {
                run.answered(&outcomes);
                for (k, outcome) in destinations::merge_row_outcomes(&planned.rows, outcomes) {
                    run.finish(
                        member_of[k],
                        &outcome,
                        sent.status,
                        log_url,
                        sent.duration_ms,
                    )
                    .await?;
                }
            }
            None => {
                // Refused as a whole without saying which row: each event goes alone.
                emit(
                    Log::warn(
                        "batch refused without per-row outcomes; re-sending each event alone",
                    )
                    .merchant(&merchant.merchant_id)
                    .destination(spec.name)
                    .number("rows", rows as i64)
                    .number("http_status", i64::from(sent.status.unwrap_or(0))),
                );
                for &k in &distinct {
                    let i = member_of[k];
                    match destinations::build_single(spec.build, &events[k], &merchant, &context) {
                        Err(err) => run.refused(i, &err).await?,
                        Ok(request) => {
                            let alone =
                                send_rows(store, &merchant.merchant_id, spec, &request, 1).await?;
                            // A single row always gets an outcome.
                            let outcome = alone
                                .outcomes
                                .and_then(|o| o.into_iter().next())
                                .unwrap_or(Outcome::Retry {
                                    after_seconds: None,
                                    reason: "no outcome for a single event".into(),
                                });
                            run.answered(std::slice::from_ref(&outcome));
                            run.finish(
                                i,
                                &outcome,
                                alone.status,
                                Some(&request.log_url),
                                alone.duration_ms,
                            )
                            .await?;
                        }
                    }
                }
            }
        }
    }
    Ok(run.into_steps())
}

/// One request sent and its answer judged per row.
struct Sent {
    /// One outcome per row, or `None` when the rows must be re-sent one by one.
    outcomes: Option<Vec<Outcome>>,
    status: Option<u16>,
    duration_ms: i64,
}

async fn send_rows(
    store: &Store,
    merchant_id: &str,
    spec: &DestinationSpec,
    request: &OutboundRequest,
    rows: usize,
) -> worker::Result<Sent> {
    let started = now_ms();
    let answer = outbound::send(request).await;
    let duration_ms = now_ms() - started;
    let answer = match answer {
        Ok(answer) => answer,
        Err(reason) => {
            let retry = Outcome::Retry {
                after_seconds: None,
                reason,
            };
            return Ok(Sent {
                outcomes: Some(vec![retry; rows]),
                status: None,
                duration_ms,
            });
        }
    };
    // A rejected access token is not reused by the retry.
    if answer.status == 401 && spec.auth.is_some() {
        store.drop_token(merchant_id, spec.name).await?;
    }
    Ok(Sent {
        outcomes: destinations::row_outcomes(
            spec,
            answer.status,
            answer.retry_after.as_deref(),
            &answer.body,
            rows,
        ),
        status: Some(answer.status),
        duration_ms,
    })
}

/// A valid access token for the destination: the cached one, or a fresh one from the
/// OAuth token endpoint (cached sealed until a minute before it expires).
async fn access_token(
    env: &Env,
    store: &Store,
    merchant: &MerchantConfig,
    destination: &str,
    auth: &AuthSpec,
    settings: &OperatorSettings,
    now: i64,
) -> worker::Result<Result<String, Outcome>> {
    let context_name = config_context(&merchant.merchant_id, "oauth", destination);
    let keyring = keyring(env);
    if let (Some(sealed), Some(keyring)) = (
        store
            .cached_token(&merchant.merchant_id, destination, now)
            .await?,
        keyring.as_ref(),
    ) {
        if let Ok(token) = keyring.open(&sealed, &context_name) {
            if let Ok(token) = String::from_utf8(token) {
                return Ok(Ok(token));
            }
        }
    }
    let context = Context {
        endpoints: &settings.endpoints,
        operator: &settings.operator,
        now_s: now / 1000,
        access_token: None,
    };
    let request = match (auth.token_request)(merchant, &context) {
        Ok(request) => request,
        Err(err) => {
            return Ok(Err(Outcome::Permanent {
                reason: err.to_string(),
            }))
        }
    };
    let answer = match outbound::send(&request).await {
        Ok(answer) => answer,
        Err(reason) => {
            return Ok(Err(Outcome::Retry {
                after_seconds: None,
                reason: format!("OAuth token endpoint: {reason}"),
            }))
        }
    };
    let token = match (auth.parse_token)(answer.status, &answer.body) {
        Ok(token) => token,
        Err(outcome) => return Ok(Err(outcome)),
    };
    if let Some(keyring) = keyring.as_ref() {
        let mut nonce = [0u8; crate::secrets::NONCE_LEN];
        if getrandom::getrandom(&mut nonce).is_ok() {
            if let Ok(sealed) = keyring.seal(token.token.as_bytes(), &context_name, nonce) {
                let expires_at = now + (token.expires_in_s - 60).max(0) * 1000;
                store
                    .store_token(&merchant.merchant_id, destination, &sealed, expires_at)
                    .await?;
            }
        }
    }
    Ok(Ok(token.token))
}

/// Bookkeeping for one group: records each member's attempt once and remembers the step.
struct Run<'a> {
    env: &'a Env,
    region: Region,
    store: &'a Store,
    settings: &'a OperatorSettings,
    members: &'a [&'a Pending],
    steps: Vec<Option<Step>>,
    quality: Vec<Option<MatchQuality>>,
    /// How the destination answered each request sent (for parking).
    answers: Vec<delivery::Answer>,
    /// A probe of a parked destination: a transient failure spends no attempt.
    probe: bool,
}

impl Run<'_> {
    fn into_steps(self) -> (Vec<Result<Step, String>>, Vec<delivery::Answer>) {
        let steps = self
            .steps
            .into_iter()
            .map(|s| s.ok_or_else(|| "no outcome recorded".to_string()))
            .collect();
        (steps, self.answers)
    }

    /// Notes how the destination answered one request: any real answer means it is up;
    /// only transient failures everywhere mean it is failing.
    fn answered(&mut self, outcomes: &[Outcome]) {
        if outcomes.is_empty() {
            return;
        }
        let transient = outcomes.iter().all(|o| matches!(o, Outcome::Retry { .. }));
        self.answers.push(if transient {
            delivery::Answer::Transient
        } else {
            delivery::Answer::Answered
        });
    }

    async fn refused(&mut self, i: usize, err: &BuildError) -> worker::Result<()> {
        match delivery::refusal(err) {
            Ok(outcome) => self.finish(i, &outcome, None, None, 0).await,
            Err(reason) => {
                self.record_final(i, "skipped", Some(&reason), None, "skipped")
                    .await
            }
        }
    }

    /// Comes back later without recording an attempt: nothing was tried.
    fn wait(&mut self, i: usize, seconds: u32, reason: &str) {
        let job = &self.members[i].job;
        emit(
            Log::info("correction waits for its conversion")
                .merchant(&job.event.merchant_id)
                .destination(&job.destination)
                .event(&job.event.event_id)
                .job(&job.job_id)
                .outcome("waiting")
                .number("retry_in_s", i64::from(seconds))
                .reason(reason),
        );
        self.steps[i] = Some(Step::RetryIn(seconds));
    }

    async fn simulated(&mut self, i: usize, request: &OutboundRequest) -> worker::Result<()> {
        self.record_final(
            i,
            "dry_run",
            Some(&request.body),
            Some(&request.log_url),
            "simulated",
        )
        .await
    }

    async fn record_final(
        &mut self,
        i: usize,
        outcome: &str,
        detail: Option<&str>,
        request_url: Option<&str>,
        status: &str,
    ) -> worker::Result<()> {
        let member = self.members[i];
        let record = AttemptRecord {
            attempt: member.attempt,
            outcome,
            http_status: None,
            detail,
            request_url,
            duration_ms: 0,
            new_status: status,
            match_quality: self.quality[i].as_ref(),
        };
        self.store
            .record_attempt(&member.job, &record, now_ms())
            .await?;
        self.steps[i] = Some(Step::Ack);
        Ok(())
    }

    async fn finish(
        &mut self,
        i: usize,
        outcome: &Outcome,
        http_status: Option<u16>,
        request_url: Option<&str>,
        duration_ms: i64,
    ) -> worker::Result<()> {
        let member = self.members[i];
        let job = &member.job;
        let probe_failed = self.probe && matches!(outcome, Outcome::Retry { .. });
        // A failed probe is logged but not counted: the job keeps its attempts.
        let attempt = if probe_failed {
            member.attempt.saturating_sub(1)
        } else {
            member.attempt
        };
        let decision = if probe_failed {
            Decision::RetryIn {
                seconds: self
                    .settings
                    .retry
                    .backoff_seconds(attempt.max(1), &job.job_id),
                reason: "probe of a parked destination failed".into(),
            }
        } else {
            decide(outcome, member.attempt, &self.settings.retry, &job.job_id)
        };
        let (label, detail) = delivery::attempt_label(outcome);
        let label = if probe_failed { "probe_failed" } else { label };
        let record = AttemptRecord {
            attempt,
            outcome: label,
            http_status,
            detail,
            request_url,
            duration_ms,
            new_status: delivery::status_after(&decision),
            match_quality: self.quality[i].as_ref(),
        };
        self.store.record_attempt(job, &record, now_ms()).await?;
        let step = match decision {
            Decision::Done => Step::Ack,
            Decision::RetryIn { seconds, reason } => {
                emit(
                    Log::warn("delivery attempt failed")
                        .merchant(&job.event.merchant_id)
                        .destination(&job.destination)
                        .event(&job.event.event_id)
                        .job(&job.job_id)
                        .outcome("retry")
                        .number("attempt", i64::from(member.attempt))
                        .number("retry_in_s", i64::from(seconds))
                        .duration_ms(duration_ms)
                        .reason(&reason),
                );
                Step::RetryIn(seconds)
            }
            Decision::DeadLetter { reason, last_error } => {
                emit(
                    Log::warn("delivery dead-lettered")
                        .merchant(&job.event.merchant_id)
                        .destination(&job.destination)
                        .event(&job.event.event_id)
                        .job(&job.job_id)
                        .outcome("dead_lettered")
                        .number("attempt", i64::from(member.attempt))
                        .duration_ms(duration_ms)
                        .reason(&reason),
                );
                let letter = DeadLetter {
                    job: job.clone(),
                    attempts: member.attempt,
                    last_error,
                    reason,
                };
                send_to_dlq(self.env, self.region, self.store, &letter).await?;
                Step::Ack
            }
        };
        self.steps[i] = Some(step);
        Ok(())
    }
}

async fn send_to_dlq(
    env: &Env,
    region: Region,
    store: &Store,
    letter: &DeadLetter,
) -> worker::Result<()> {
    let body =
        serde_json::to_string(letter).map_err(|e| worker::Error::RustError(e.to_string()))?;
    // Too large for one queue message: record it where the DLQ consumer would.
    if body.len() > delivery::MAX_INLINE_JOB_BYTES {
        return store.record_dead_letter(letter, now_ms()).await;
    }
    env.queue(dead_letter_binding(region))?
        .send(
            MessageBuilder::new(body)
                .content_type(QueueContentType::Text)
                .build(),
        )
        .await
}

/// A pending job untouched this long without an attempt is taken as lost (a crash
/// between the write and the queue send, a lost message) and enqueued again.
pub const SWEEP_UNATTEMPTED_AFTER_MS: i64 = 5 * 60_000;
/// A retried job is silent at most the longest queue delay (12 h); past that, lost too.
pub const SWEEP_ATTEMPTED_AFTER_MS: i64 = 13 * 3_600_000;
const SWEEP_BATCH: i64 = 1_000;

/// Re-enqueues lost pending jobs of one region. Idempotent: the consumer only works on
/// pending rows and every platform deduplicates by our event id, and a re-enqueued job
/// is touched so the next sweep leaves it alone. Returns how many it re-enqueued.
pub async fn sweep_pending(env: &Env, region: Region) -> worker::Result<usize> {
    let store = Store::for_region(env, region)?;
    let now = now_ms();
    let jobs = store
        .stale_jobs(
            now - SWEEP_UNATTEMPTED_AFTER_MS,
            now - SWEEP_ATTEMPTED_AFTER_MS,
            SWEEP_BATCH,
        )
        .await?;
    super::regions::enqueue_jobs(env, region, &jobs).await?;
    let ids: Vec<&str> = jobs.iter().map(|j| j.job_id.as_str()).collect();
    store.touch_jobs(&ids, now).await?;
    Ok(jobs.len())
}

/// A message that is not a job at all still ends up visible to an operator.
async fn record_poison(store: &Store, body: &str) -> worker::Result<Step> {
    emit(Log::error(
        "unreadable queue message recorded as dead letter",
    ));
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

/// Dead-letter queue: our own `DeadLetter`s, or raw jobs the queue gave up on.
pub async fn consume_dead_letters(batch: MessageBatch<String>, env: &Env) {
    let store = match Store::for_region(env, queue_region(&batch.queue())) {
        Ok(store) => store,
        Err(err) => {
            emit(Log::error("dead letters: storage unavailable, batch retried").reason(&err));
            batch.retry_all();
            return;
        }
    };
    for message in batch.raw_iter() {
        let body = body_text(&message).unwrap_or_default();
        let exhausted = |job| DeadLetter {
            job,
            attempts: 0,
            last_error: "queue retries exhausted before the consumer gave up".into(),
            reason: "queue_exhausted".into(),
        };
        let letter = match serde_json::from_str::<DeadLetter>(&body) {
            Ok(letter) => Some(letter),
            Err(_) => match serde_json::from_str::<JobMessage>(&body) {
                Ok(JobMessage::Inline(job)) => Some(exhausted(job)),
                Ok(JobMessage::ByReference(reference)) => {
                    match store.events_by_id(&[reference.event_id.as_str()]).await {
                        Ok(mut events) => events.remove(&reference.event_id).map(|event| {
                            exhausted(DeliveryJob {
                                job_id: reference.job_id.clone(),
                                destination: reference.destination.clone(),
                                event,
                            })
                        }),
                        Err(err) => {
                            emit(
                                Log::error("dead letters: referenced event unreadable, retried")
                                    .reason(&err),
                            );
                            message.retry();
                            continue;
                        }
                    }
                }
                Err(_) => None,
            },
        };
        let letter = letter.unwrap_or_else(|| poison_letter(&body));
        match store.record_dead_letter(&letter, now_ms()).await {
            Ok(()) => message.ack(),
            Err(err) => {
                emit(
                    Log::error("dead letter not recorded, retried")
                        .merchant(&letter.job.event.merchant_id)
                        .destination(&letter.job.destination)
                        .job(&letter.job.job_id)
                        .reason(&err),
                );
                message.retry();
            }
        }
    }
}
