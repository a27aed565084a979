//! Delivery health and anomaly detection, per merchant × destination, from what the
//! merchant's object records: deliveries, attempts, dead letters and the billing
//! conversions that arrive. Pure: the object reads the rows, this computes the figures
//! and decides whether an anomaly fires.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 24 * HOUR_MS;
pub const WEEK_MS: i64 = 7 * DAY_MS;

/// One delivery of an event, as the figures need it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliverySample {
    pub destination: String,
    pub status: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// When the webhook that produced the event arrived.
    pub received_at: i64,
    pub match_score: Option<i64>,
}

/// One attempt, as the figures need it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptSample {
    pub destination: String,
    pub outcome: String,
    pub attempted_at: i64,
    #[serde(default)]
    pub detail: Option<String>,
}

fn failed(outcome: &str) -> bool {
    matches!(outcome, "retry" | "permanent")
}

/// Figures over one window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowFigures {
    pub planned: u64,
    pub delivered: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub skipped: u64,
    pub attempts: u64,
    pub failed_attempts: u64,
    /// Webhook to delivery, milliseconds.
    pub latency_p50_ms: Option<i64>,
    pub latency_p95_ms: Option<i64>,
    /// Average match-quality score (0–100) of what was delivered.
    pub match_score: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DestinationFigures {
    pub last_hour: WindowFigures,
    pub last_day: WindowFigures,
    pub last_7_days: WindowFigures,
    pub last_success_at: Option<i64>,
    pub last_error_at: Option<i64>,
    pub last_error: Option<String>,
}

fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    // Nearest rank.
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn window(
    deliveries: &[&DeliverySample],
    attempts: &[&AttemptSample],
    dead_letters: &[i64],
    from: i64,
    to: i64,
) -> WindowFigures {
    let within = |at: i64| at >= from && at < to;
    let delivered: Vec<&&DeliverySample> = deliveries
        .iter()
        .filter(|d| d.status == "delivered" && within(d.updated_at))
        .collect();
    let mut latencies: Vec<i64> = delivered
        .iter()
        .map(|d| (d.updated_at - d.received_at).max(0))
        .collect();
    latencies.sort_unstable();
    let scores: Vec<i64> = delivered.iter().filter_map(|d| d.match_score).collect();
    let attempts_in: Vec<&&AttemptSample> =
        attempts.iter().filter(|a| within(a.attempted_at)).collect();
    WindowFigures {
        planned: deliveries.iter().filter(|d| within(d.created_at)).count() as u64,
        delivered: delivered.len() as u64,
        retried: attempts_in.iter().filter(|a| a.outcome == "retry").count() as u64,
        dead_lettered: dead_letters.iter().filter(|at| within(**at)).count() as u64,
        skipped: deliveries
            .iter()
            .filter(|d| d.status == "skipped" && within(d.updated_at))
            .count() as u64,
        attempts: attempts_in.len() as u64,
        failed_attempts: attempts_in.iter().filter(|a| failed(&a.outcome)).count() as u64,
        latency_p50_ms: percentile(&latencies, 0.5),
        latency_p95_ms: percentile(&latencies, 0.95),
        match_score: (!scores.is_empty())
            .then(|| scores.iter().sum::<i64>() as f64 / scores.len() as f64),
    }
}

/// Figures per destination over the last hour, day and 7 days.
pub fn figures(
    deliveries: &[DeliverySample],
    attempts: &[AttemptSample],
    dead_letters: &[(String, i64)],
    now_ms: i64,
) -> BTreeMap<String, DestinationFigures> {
    let mut names: Vec<&str> = deliveries
        .iter()
        .map(|d| d.destination.as_str())
        .chain(attempts.iter().map(|a| a.destination.as_str()))
        .collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let ds: Vec<&DeliverySample> = deliveries
                .iter()
                .filter(|d| d.destination == name)
                .collect();
            let at: Vec<&AttemptSample> =
                attempts.iter().filter(|a| a.destination == name).collect();
            let dl: Vec<i64> = dead_letters
                .iter()
                .filter(|(d, _)| d == name)
                .map(|(_, at)| *at)
                .collect();
            let last_error = at
                .iter()
                .filter(|a| failed(&a.outcome))
                .max_by_key(|a| a.attempted_at);
            let figures = DestinationFigures {
                last_hour: window(&ds, &at, &dl, now_ms - HOUR_MS, now_ms + 1),
                last_day: window(&ds, &at, &dl, now_ms - DAY_MS, now_ms + 1),
                last_7_days: window(&ds, &at, &dl, now_ms - WEEK_MS, now_ms + 1),
                last_success_at: ds
                    .iter()
                    .filter(|d| d.status == "delivered")
                    .map(|d| d.updated_at)
                    .max(),
                last_error_at: last_error.map(|a| a.attempted_at),
                last_error: last_error.and_then(|a| a.detail.clone()),
            };
            (name.to_string(), figures)
        })
        .collect()
}

/// When an anomaly fires, per merchant (the product's defaults; merchants may change
/// them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalySettings {
    /// Failure spike: at least this many attempts in the last hour …
    #[serde(default = "default_min_attempts")]
    pub failure_min_attempts: u64,
    /// … failing at least this share …
    #[serde(default = "default_failure_rate")]
    pub failure_rate: f64,
    /// … and this many times the 7-day baseline rate.
    #[serde(default = "default_failure_factor")]
    pub failure_factor: f64,
    /// Match-quality drop: the last day's average this many points below the 7 days
    /// before, with at least `match_min_deliveries` deliveries in each.
    #[serde(default = "default_match_drop")]
    pub match_drop_points: f64,
    #[serde(default = "default_match_min")]
    pub match_min_deliveries: u64,
    /// Delivery drift: no billing conversion for this many times the usual gap
    /// (median of the last 30 days), with at least `drift_min_history` conversions.
    #[serde(default = "default_drift_factor")]
    pub drift_factor: f64,
    #[serde(default = "default_drift_history")]
    pub drift_min_history: u64,
    /// Hold the destination's jobs when its anomaly fires.
    #[serde(default = "default_true")]
    pub auto_pause: bool,
    /// Release when the figures are back to normal (else only by API or page).
    #[serde(default)]
    pub auto_resume: bool,
    /// Destination (`meta`, `google_ads`) → campaign ids whose spend is paused at the
    /// platform too when an anomaly fires (opt-in; only the campaigns named here).
    #[serde(default)]
    pub pause_campaigns: BTreeMap<String, Vec<String>>,
    /// Slack-compatible JSON on every incident.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_webhook_url: Option<String>,
}

fn default_min_attempts() -> u64 {
    20
}
fn default_failure_rate() -> f64 {
    0.5
}
fn default_failure_factor() -> f64 {
    3.0
}
fn default_match_drop() -> f64 {
    20.0
}
fn default_match_min() -> u64 {
    20
}
fn default_drift_factor() -> f64 {
    4.0
}
fn default_drift_history() -> u64 {
    8
}
fn default_true() -> bool {
    true
}

impl Default for AnomalySettings {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("defaults")
    }
}

impl AnomalySettings {
    pub fn validated(self) -> Result<Self, String> {
        if !(1..=100_000).contains(&self.failure_min_attempts) {
            return Err("failure_min_attempts: between 1 and 100000".into());
        }
        if !(0.01..=1.0).contains(&self.failure_rate) {
            return Err("failure_rate: between 0.01 and 1".into());
        }
        if !(1.0..=100.0).contains(&self.failure_factor) {
            return Err("failure_factor: between 1 and 100".into());
        }
        if !(1.0..=100.0).contains(&self.match_drop_points) {
            return Err("match_drop_points: between 1 and 100".into());
        }
        if !(1.5..=100.0).contains(&self.drift_factor) {
            return Err("drift_factor: between 1.5 and 100".into());
        }
        let ids_ok = |ids: &[String]| {
            ids.len() <= 50
                && ids.iter().all(|id| {
                    !id.is_empty() && id.len() <= 30 && id.bytes().all(|b| b.is_ascii_digit())
                })
        };
        for (destination, ids) in &self.pause_campaigns {
            if crate::destinations::find(destination)
                .and_then(|spec| spec.pause_campaigns)
                .is_none()
            {
                return Err(format!(
                    "pause_campaigns: {destination} campaigns cannot be paused by TrackLayer (meta, google_ads can)"
                ));
            }
            if !ids_ok(ids) {
                return Err(format!(
                    "pause_campaigns.{destination}: numeric campaign ids, at most 50"
                ));
            }
        }
        if let Some(url) = &self.alert_webhook_url {
            crate::destinations::webhook::check_url(url)
                .map_err(|reason| format!("alert_webhook_url: {reason}"))?;
        }
        Ok(self)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    FailureSpike,
    MatchQualityDrop,
    DeliveryDrift,
}

/// What fired, with the figures that made it fire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    /// The destination it concerns; `None` for drift (the source stopped, not a
    /// destination).
    pub destination: Option<String>,
    pub summary: String,
    pub figures: serde_json::Value,
}

/// A destination's failure spike or match-quality drop, against its own baseline.
pub fn detect(
    destination: &str,
    figures: &DestinationFigures,
    settings: &AnomalySettings,
) -> Vec<Anomaly> {
    let mut found = Vec::new();
    let hour = &figures.last_hour;
    let week = &figures.last_7_days;
    if hour.attempts >= settings.failure_min_attempts {
        let rate = hour.failed_attempts as f64 / hour.attempts as f64;
        // The baseline excludes the hour being judged.
        let base_attempts = week.attempts.saturating_sub(hour.attempts);
        let base_failed = week.failed_attempts.saturating_sub(hour.failed_attempts);
        let baseline = if base_attempts == 0 {
            0.0
        } else {
            base_failed as f64 / base_attempts as f64
        };
        if rate >= settings.failure_rate && rate >= baseline * settings.failure_factor {
            found.push(Anomaly {
                kind: AnomalyKind::FailureSpike,
                destination: Some(destination.to_string()),
                summary: format!(
                    "{destination}: {:.0} % of {} attempts failed in the last hour (7-day baseline {:.1} %)",
                    rate * 100.0,
                    hour.attempts,
                    baseline * 100.0
                ),
                figures: serde_json::json!({
                    "hour_attempts": hour.attempts,
                    "hour_failed": hour.failed_attempts,
                    "hour_rate": rate,
                    "baseline_rate": baseline,
                    "threshold_rate": settings.failure_rate,
                    "threshold_factor": settings.failure_factor,
                }),
            });
        }
    }
    let day = &figures.last_day;
    let base_delivered = week.delivered.saturating_sub(day.delivered);
    if let (Some(day_score), Some(week_score)) = (day.match_score, week.match_score) {
        if day.delivered >= settings.match_min_deliveries
            && base_delivered >= settings.match_min_deliveries
        {
            // The 6 days before today, from the 7-day and 1-day averages.
            let baseline = (week_score * week.delivered as f64 - day_score * day.delivered as f64)
                / base_delivered as f64;
            if baseline - day_score >= settings.match_drop_points {
                found.push(Anomaly {
                    kind: AnomalyKind::MatchQualityDrop,
                    destination: Some(destination.to_string()),
                    summary: format!(
                        "{destination}: match quality {day_score:.0} over the last day, {baseline:.0} before"
                    ),
                    figures: serde_json::json!({
                        "day_match_score": day_score,
                        "baseline_match_score": baseline,
                        "day_delivered": day.delivered,
                        "threshold_points": settings.match_drop_points,
                    }),
                });
            }
        }
    }
    found
}

/// Billing conversions that stopped arriving: the gap since the last one against the
/// usual gap between them (`arrivals` in unix ms, any order, the last 30 days).
pub fn detect_drift(arrivals: &[i64], now_ms: i64, settings: &AnomalySettings) -> Option<Anomaly> {
    let mut times = arrivals.to_vec();
    times.sort_unstable();
    if (times.len() as u64) < settings.drift_min_history {
        return None;
    }
    let mut gaps: Vec<i64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort_unstable();
    let usual = percentile(&gaps, 0.5)?.max(60_000);
    let silent = now_ms - *times.last()?;
    (silent as f64 >= usual as f64 * settings.drift_factor).then(|| Anomaly {
        kind: AnomalyKind::DeliveryDrift,
        destination: None,
        summary: format!(
            "no billing conversion for {} min; they usually arrive every {} min",
            silent / 60_000,
            usual / 60_000
        ),
        figures: serde_json::json!({
            "silent_ms": silent,
            "usual_gap_ms": usual,
            "conversions_in_history": times.len(),
            "threshold_factor": settings.drift_factor,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_780_000_000_000;
    const MIN: i64 = 60_000;

    fn delivery(at: i64, latency: i64, score: i64) -> DeliverySample {
        DeliverySample {
            destination: "meta".into(),
            status: "delivered".into(),
            created_at: at - latency,
            updated_at: at,
            received_at: at - latency,
            match_score: Some(score),
        }
    }

    fn attempt(at: i64, outcome: &str) -> AttemptSample {
        AttemptSample {
            destination: "meta".into(),
            outcome: outcome.into(),
            attempted_at: at,
            detail: (outcome != "delivered").then(|| "HTTP 500".into()),
        }
    }

    /// A steady week: one delivery every 20 minutes, 2 % failures, score 80.
    fn steady_week() -> (Vec<DeliverySample>, Vec<AttemptSample>) {
        let mut deliveries = Vec::new();
        let mut attempts = Vec::new();
        let mut at = NOW - WEEK_MS + MIN;
        let mut i = 0;
        while at < NOW {
            deliveries.push(delivery(at, 2_000 + (i % 10) * 100, 80));
            attempts.push(attempt(at, if i % 50 == 0 { "retry" } else { "delivered" }));
            at += 20 * MIN;
            i += 1;
        }
        (deliveries, attempts)
    }

    #[test]
    fn figures_count_windows_percentiles_and_last_error() {
        let deliveries = vec![
            delivery(NOW - 10 * MIN, 1_000, 90),
            delivery(NOW - 20 * MIN, 3_000, 70),
            delivery(NOW - 2 * HOUR_MS, 2_000, 80),
            delivery(NOW - 3 * DAY_MS, 9_000, 20),
        ];
        let attempts = vec![
            attempt(NOW - 10 * MIN, "delivered"),
            attempt(NOW - 15 * MIN, "retry"),
            attempt(NOW - 3 * DAY_MS, "permanent"),
        ];
        let dead = vec![("meta".to_string(), NOW - 3 * DAY_MS)];
        let all = figures(&deliveries, &attempts, &dead, NOW);
        let meta = &all["meta"];
        assert_eq!(meta.last_hour.delivered, 2);
        assert_eq!(meta.last_hour.retried, 1);
        assert_eq!(meta.last_hour.latency_p50_ms, Some(1_000));
        assert_eq!(meta.last_hour.latency_p95_ms, Some(3_000));
        assert_eq!(meta.last_hour.match_score, Some(80.0));
        assert_eq!(meta.last_day.delivered, 3);
        assert_eq!(meta.last_7_days.delivered, 4);
        assert_eq!(meta.last_7_days.dead_lettered, 1);
        assert_eq!(meta.last_7_days.match_score, Some(65.0));
        assert_eq!(meta.last_success_at, Some(NOW - 10 * MIN));
        assert_eq!(meta.last_error_at, Some(NOW - 15 * MIN));
        assert_eq!(meta.last_error.as_deref(), Some("HTTP 500"));
    }

    #[test]
    fn a_quiet_steady_merchant_does_not_alarm() {
        let (deliveries, attempts) = steady_week();
        let all = figures(&deliveries, &attempts, &[], NOW);
        assert!(detect("meta", &all["meta"], &AnomalySettings::default()).is_empty());
        let arrivals: Vec<i64> = deliveries.iter().map(|d| d.received_at).collect();
        assert!(detect_drift(&arrivals, NOW, &AnomalySettings::default()).is_none());
        // A small merchant with three conversions a month never alarms on drift.
        assert!(detect_drift(
            &[NOW - 20 * DAY_MS, NOW - 10 * DAY_MS, NOW - 9 * DAY_MS],
            NOW,
            &AnomalySettings::default()
        )
        .is_none());
    }

    #[test]
    fn a_failure_spike_fires_against_the_baseline() {
        let (deliveries, mut attempts) = steady_week();
        for i in 0..30 {
            attempts.push(attempt(NOW - i * MIN, "retry"));
        }
        let all = figures(&deliveries, &attempts, &[], NOW);
        let found = detect("meta", &all["meta"], &AnomalySettings::default());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].kind, AnomalyKind::FailureSpike);
        assert!(found[0].figures["hour_rate"].as_f64().unwrap() > 0.9);
        // Too few attempts to judge: no alarm.
        let settings = AnomalySettings {
            failure_min_attempts: 100,
            ..AnomalySettings::default()
        };
        assert!(detect("meta", &all["meta"], &settings).is_empty());
    }

    #[test]
    fn a_match_quality_drop_fires() {
        let (mut deliveries, attempts) = steady_week();
        for d in deliveries
            .iter_mut()
            .filter(|d| d.updated_at > NOW - DAY_MS)
        {
            d.match_score = Some(40);
        }
        let all = figures(&deliveries, &attempts, &[], NOW);
        let found = detect("meta", &all["meta"], &AnomalySettings::default());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].kind, AnomalyKind::MatchQualityDrop);
        assert_eq!(found[0].figures["baseline_match_score"], 80.0);
    }

    #[test]
    fn drift_fires_when_conversions_stop_for_several_usual_gaps() {
        // Every 30 minutes for two days, then nothing for 3 hours.
        let arrivals: Vec<i64> = (0..96).map(|i| NOW - 3 * HOUR_MS - i * 30 * MIN).collect();
        let found = detect_drift(&arrivals, NOW, &AnomalySettings::default()).unwrap();
        assert_eq!(found.kind, AnomalyKind::DeliveryDrift);
        assert_eq!(found.figures["usual_gap_ms"], 30 * MIN);
        assert!(detect_drift(&arrivals, NOW - 2 * HOUR_MS, &AnomalySettings::default()).is_none());
    }

    #[test]
    fn settings_default_and_validate() {
        let settings = AnomalySettings::default();
        assert!(settings.auto_pause && !settings.auto_resume);
        assert_eq!(settings.failure_min_attempts, 20);
        let bad: AnomalySettings = serde_json::from_value(serde_json::json!({
            "pause_campaigns": { "meta": ["not-a-number"] }
        }))
        .unwrap();
        assert!(bad
            .validated()
            .unwrap_err()
            .starts_with("pause_campaigns.meta"));
        let tiktok: AnomalySettings = serde_json::from_value(serde_json::json!({
            "pause_campaigns": { "tiktok": ["123"] }
        }))
        .unwrap();
        assert!(tiktok.validated().is_err());
        let good: AnomalySettings = serde_json::from_value(serde_json::json!({
            "pause_campaigns": { "meta": ["120210000000001"], "google_ads": ["987"] }
        }))
        .unwrap();
        assert!(good.validated().is_ok());
    }
}
