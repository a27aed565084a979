//! Sending one merchant's (destination) group of a queue batch: Google Ads corrections,
//! OAuth tokens, building as few requests as the platform allows, reading the answers
//! per row, and what each job's outcome means (retry, dead letter, done). Nothing here
//! touches storage: every outcome is collected for the consumer to record in one call.

use super::consumer::Step;
use super::{emit, keyring, now_ms, outbound, OperatorSettings};
use crate::config::MerchantConfig;
use crate::delivery::{self, decide, AttemptOutcome, DeadLetter, Decision, DeliveryStatus};
use crate::destinations::{
    self, AuthSpec, BuildContext, BuildError, Correction, DestinationSpec, OutboundRequest, Outcome,
};
use crate::event::CanonicalEvent;
use crate::identity::{self, MatchQuality};
use crate::log::Log;
use crate::records::{AdmitAnswer, Admitted, AttemptRecord, Outcomes};
use crate::secrets::config_context;
use worker::Env;

/// How long a correction waits before it looks again for the conversion it corrects.
const CORRECTION_WAIT_SECONDS: u32 = 60;

/// Delivers one (merchant, destination) group; records one step per member.
pub(super) async fn deliver_group(
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

    // Corrections of conversions the platform already has (Google Ads adjustments) name
    // them, or wait (no attempt spent), or are skipped with the reason.
    let mut events = Vec::with_capacity(members.len());
    let mut settled = vec![false; members.len()];
    for (i, member) in members.iter().enumerate() {
        let mut event = member.job.event.clone();
        if let Some(corrections) = spec.corrections.filter(|c| (c.applies)(&event)) {
            let stored = admitted
                .corrections
                .get(&member.job.job_id)
                .map(Vec::as_slice)
                .unwrap_or_default();
            match (corrections.resolve)(event.clone(), stored, merchant) {
                Correction::Send(resolved) => event = *resolved,
                Correction::Wait(reason) => {
                    run.wait(i, CORRECTION_WAIT_SECONDS, &reason);
                    settled[i] = true;
                }
                Correction::Skip(reason) => {
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
    let context = BuildContext {
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
    let context = BuildContext {
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
pub(super) struct Run<'a> {
    pub(super) settings: &'a OperatorSettings,
    pub(super) members: &'a [&'a Admitted],
    pub(super) steps: Vec<Option<Step>>,
    pub(super) quality: Vec<Option<MatchQuality>>,
    /// How the destination answered each request sent (for parking).
    pub(super) answers: Vec<delivery::Answer>,
    /// A probe of a parked destination: a transient failure spends no attempt.
    pub(super) probe: bool,
    pub(super) outcomes: &'a mut Outcomes,
}

impl Run<'_> {
    pub(super) fn into_steps(self) -> Vec<Step> {
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
            AttemptOutcome::Simulated,
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
