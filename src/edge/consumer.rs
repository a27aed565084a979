//! Queue consumers: deliver jobs to destinations, and record dead letters.
//!
//! Every message is acked or retried on its own; the handler never returns an error,
//! which would retry the whole batch. Per merchant in a batch the consumer makes two
//! calls to the merchant's object: one to admit and enrich, one to record outcomes.

use super::merchant::MerchantClient;
use super::metrics::{self, Phase};
use super::regions::{queue_region, send_messages};
use super::settings::cached_merchant;
use super::{emit, keyring, now_ms, operator_settings, outbound, OperatorSettings};
use crate::config::{MerchantConfig, Region};
use crate::delivery::{
    self, decide, AttemptOutcome, DeadLetter, Decision, DeliveryJob, DeliveryStatus, EventMessage,
};
use crate::destinations::{
    self, google_ads, AuthSpec, BuildError, Context, DestinationSpec, OutboundRequest, Outcome,
};
use crate::event::CanonicalEvent;
use crate::hashing::sha256_hex;
use crate::identity::{self, MatchQuality};
use crate::log::Log;
use crate::records::{AdmitAnswer, AdmitRequest, Admitted, AttemptRecord, Outcomes};
use crate::secrets::config_context;
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
    let mut destinations_with_auth: Vec<String> = events
        .iter()
        .flat_map(|(_, event)| event.jobs.iter().map(|job| job.destination.clone()))
        .filter(|name| destinations::find(name).is_some_and(|spec| spec.auth.is_some()))
        .collect();
    destinations_with_auth.sort();
    destinations_with_auth.dedup();
    let request = AdmitRequest {
        messages: events,
        correction_names: merchant
            .as_ref()
            .map(google_ads::conversion_names)
            .unwrap_or_default(),
        token_destinations: destinations_with_auth,
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
        };
        let (sent_members, held) = members.split_at(send);
        let mut run = Run {
            settings,
            members: sent_members,
            steps: vec![None; sent_members.len()],
            quality: vec![None; sent_members.len()],
            answers: Vec::new(),
            probe: health.is_parked(),
            outcomes: &mut outcomes,
        };
        if !sent_members.is_empty() {
            deliver_group(env, merchant.as_ref(), &answer, &mut run).await;
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

/// How long a correction waits before it looks again for the conversion it corrects.
const CORRECTION_WAIT_SECONDS: u32 = 60;

#[derive(Clone, Copy, Debug)]
enum Step {
    Ack,
    /// Acknowledged after the destination took it.
    Delivered,
    RetryIn(u32),
    /// Our own bookkeeping failed: the queue redelivers it after its own delay.
    Retry,
}

/// Delivers one (merchant, destination) group; records one step per member.
async fn deliver_group(
    env: &Env,
    merchant: Option<&MerchantConfig>,
    admitted: &AdmitAnswer,
    run: &mut Run<'_>,
) {
    let members = run.members;
    let Some(first) = members.first() else {
        return;
    };
    let spec = destinations::find(&first.job.destination);
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
            );
        }
        return;
    };
    let settings = run.settings;

    // Google Ads corrections adjust conversions Google accepted: found here, or the
    // correction waits (no attempt spent) or is skipped with the reason.
    let mut events = Vec::with_capacity(members.len());
    let mut settled = vec![false; members.len()];
    for (i, member) in members.iter().enumerate() {
        let mut event = member.job.event.clone();
        if spec.name == google_ads::NAME && google_ads::needs_original(&event) {
            let candidates: Vec<(CanonicalEvent, google_ads::UploadState)> = admitted
                .corrections
                .get(&member.job.job_id)
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|(c, status)| (c, google_ads::UploadState::from_status(status.as_deref())))
                .collect();
            let plan = match merchant.destination_config::<google_ads::GoogleAdsConfig>(spec.name) {
                Ok(config) => google_ads::plan_correction(&event, &candidates, &config),
                Err(err) => google_ads::CorrectionPlan::Skip(err.to_string()),
            };
            match plan {
                google_ads::CorrectionPlan::Adjust(originals) => {
                    google_ads::attach_originals(&mut event, &originals, merchant);
                }
                google_ads::CorrectionPlan::Wait(reason) => {
                    run.wait(i, CORRECTION_WAIT_SECONDS, &reason);
                    settled[i] = true;
                }
                google_ads::CorrectionPlan::Skip(reason) => {
                    run.record_final(
                        i,
                        AttemptOutcome::Skipped,
                        Some(&reason),
                        None,
                        DeliveryStatus::Skipped,
                    );
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
        return;
    }
    let events: Vec<CanonicalEvent> = member_of.iter().map(|&i| events[i].clone()).collect();

    let now = now_ms();
    let mut token = None;
    if let Some(auth) = spec.auth {
        let cached = admitted.tokens.get(spec.name).map(String::as_str);
        match access_token(
            env,
            run.outcomes,
            merchant,
            spec.name,
            auth,
            settings,
            cached,
            now,
        )
        .await
        {
            Ok(t) => token = Some(t),
            Err(outcome) => {
                for &i in &member_of {
                    run.finish(i, &outcome, None, None, 0);
                }
                return;
            }
        }
    }
    let context = Context {
        endpoints: &settings.endpoints,
        operator: &settings.operator,
        now_s: now / 1000,
        access_token: token.as_deref(),
    };
    let plan = match (spec.build)(&events, merchant, &context) {
        Ok(plan) => plan,
        Err(err) => {
            for &i in &member_of {
                run.refused(i, &err);
            }
            return;
        }
    };
    for (k, err) in &plan.refused {
        run.refused(member_of[*k], err);
    }

    for planned in &plan.requests {
        let distinct = destinations::distinct_rows(&planned.rows);
        if merchant.dry_run {
            // Record exactly what would be sent (URL without credentials), send nothing.
            for &k in &distinct {
                run.simulated(member_of[k], &planned.request);
            }
            continue;
        }
        let rows = planned.rows.len();
        let sent = send_rows(run.outcomes, spec, &planned.request, rows).await;
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
                    );
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
                    match destinations::build_single(spec.build, &events[k], merchant, &context) {
                        Err(err) => run.refused(i, &err),
                        Ok(request) => {
                            let alone = send_rows(run.outcomes, spec, &request, 1).await;
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
                            );
                        }
                    }
                }
            }
        }
    }
}

/// One request sent and its answer judged per row.
struct Sent {
    /// One outcome per row, or `None` when the rows must be re-sent one by one.
    outcomes: Option<Vec<Outcome>>,
    status: Option<u16>,
    duration_ms: i64,
}

async fn send_rows(
    outcomes: &mut Outcomes,
    spec: &DestinationSpec,
    request: &OutboundRequest,
    rows: usize,
) -> Sent {
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
            return Sent {
                outcomes: Some(vec![retry; rows]),
                status: None,
                duration_ms,
            };
        }
    };
    // A rejected access token is not reused by the retry.
    if answer.status == 401 && spec.auth.is_some() {
        outcomes.drop_tokens.push(spec.name.to_string());
    }
    Sent {
        outcomes: destinations::row_outcomes(
            spec,
            answer.status,
            answer.retry_after.as_deref(),
            &answer.body,
            rows,
        ),
        status: Some(answer.status),
        duration_ms,
    }
}

/// A valid access token for the destination: the cached one, or a fresh one from the
/// OAuth token endpoint (cached sealed until a minute before it expires).
#[allow(clippy::too_many_arguments)]
async fn access_token(
    env: &Env,
    outcomes: &mut Outcomes,
    merchant: &MerchantConfig,
    destination: &str,
    auth: &AuthSpec,
    settings: &OperatorSettings,
    cached: Option<&str>,
    now: i64,
) -> Result<String, Outcome> {
    let context_name = config_context(&merchant.merchant_id, "oauth", destination);
    let keyring = keyring(env);
    if let (Some(sealed), Some(keyring)) = (cached, keyring.as_ref()) {
        if let Ok(token) = keyring.open(sealed, &context_name) {
            if let Ok(token) = String::from_utf8(token) {
                return Ok(token);
            }
        }
    }
    let context = Context {
        endpoints: &settings.endpoints,
        operator: &settings.operator,
        now_s: now / 1000,
        access_token: None,
    };
    let request = (auth.token_request)(merchant, &context).map_err(|err| Outcome::Permanent {
        reason: err.to_string(),
    })?;
    let answer = outbound::send(&request)
        .await
        .map_err(|reason| Outcome::Retry {
            after_seconds: None,
            reason: format!("OAuth token endpoint: {reason}"),
        })?;
    let token = (auth.parse_token)(answer.status, &answer.body)?;
    if let Some(keyring) = keyring.as_ref() {
        let mut nonce = [0u8; crate::secrets::NONCE_LEN];
        if getrandom::getrandom(&mut nonce).is_ok() {
            if let Ok(sealed) = keyring.seal(token.token.as_bytes(), &context_name, nonce) {
                let expires_at = now + (token.expires_in_s - 60).max(0) * 1000;
                outcomes
                    .store_tokens
                    .push((destination.to_string(), sealed, expires_at));
            }
        }
    }
    Ok(token.token)
}

/// Bookkeeping for one group: each member's attempt once, and the step it leads to.
struct Run<'a> {
    settings: &'a OperatorSettings,
    members: &'a [&'a Admitted],
    steps: Vec<Option<Step>>,
    quality: Vec<Option<MatchQuality>>,
    /// How the destination answered each request sent (for parking).
    answers: Vec<delivery::Answer>,
    /// A probe of a parked destination: a transient failure spends no attempt.
    probe: bool,
    outcomes: &'a mut Outcomes,
}

impl Run<'_> {
    fn into_steps(self) -> Vec<Step> {
        // A member without an outcome is a bug; the queue brings it back.
        self.steps
            .into_iter()
            .map(|s| s.unwrap_or(Step::Retry))
            .collect()
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

    fn refused(&mut self, i: usize, err: &BuildError) {
        match delivery::refusal(err) {
            Ok(outcome) => self.finish(i, &outcome, None, None, 0),
            Err(reason) => self.record_final(
                i,
                AttemptOutcome::Skipped,
                Some(&reason),
                None,
                DeliveryStatus::Skipped,
            ),
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
        // Touched, so the pending-job sweeper does not take it for lost.
        self.outcomes
            .touch
            .push((job.event.event_id.clone(), job.destination.clone()));
        self.steps[i] = Some(Step::RetryIn(seconds));
    }

    fn simulated(&mut self, i: usize, request: &OutboundRequest) {
        self.record_final(
            i,
            AttemptOutcome::DryRun,
            Some(&request.body),
            Some(&request.log_url),
            DeliveryStatus::Simulated,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        i: usize,
        attempt: u32,
        outcome: AttemptOutcome,
        http_status: Option<u16>,
        detail: Option<&str>,
        request_url: Option<&str>,
        duration_ms: i64,
        new_status: DeliveryStatus,
    ) {
        let job = &self.members[i].job;
        let quality = self.quality[i].as_ref();
        self.outcomes.attempts.push(AttemptRecord {
            job_id: job.job_id.clone(),
            event_id: job.event.event_id.clone(),
            destination: job.destination.clone(),
            attempt,
            outcome,
            http_status,
            detail: detail.map(str::to_string),
            request_url: request_url.map(str::to_string),
            duration_ms,
            new_status,
            match_score: quality.map(|q| i64::from(q.score)),
            match_keys: quality.map(MatchQuality::keys),
            at_ms: now_ms(),
        });
    }

    fn record_final(
        &mut self,
        i: usize,
        outcome: AttemptOutcome,
        detail: Option<&str>,
        request_url: Option<&str>,
        status: DeliveryStatus,
    ) {
        let attempt = self.members[i].attempt;
        self.record(i, attempt, outcome, None, detail, request_url, 0, status);
        self.steps[i] = Some(Step::Ack);
    }

    fn finish(
        &mut self,
        i: usize,
        outcome: &Outcome,
        http_status: Option<u16>,
        request_url: Option<&str>,
        duration_ms: i64,
    ) {
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
        let label = if probe_failed {
            AttemptOutcome::ProbeFailed
        } else {
            label
        };
        let new_status = delivery::status_after(&decision);
        self.record(
            i,
            attempt,
            label,
            http_status,
            detail,
            request_url,
            duration_ms,
            new_status,
        );
        let step = match decision {
            Decision::Done if label == AttemptOutcome::Delivered => Step::Delivered,
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
                // Recorded with the outcomes, in the merchant's object: replayable there.
                self.outcomes.dead_letters.push(DeadLetter {
                    job: job.clone(),
                    attempts: member.attempt,
                    last_error,
                    reason,
                });
                Step::Ack
            }
        };
        self.steps[i] = Some(step);
    }
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
