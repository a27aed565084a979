//! A merchant's delivery health, anomaly settings, incidents and destination pauses, in
//! its object beside its other records (tables from `crate::records::SCHEMA` v4). The
//! figures and detectors are `crate::health`; this reads the rows and keeps the state.

use crate::delivery::{DeliveryJob, DeliveryStatus};
use crate::event::CanonicalEvent;
use crate::health::{
    self, AnomalyKind, AnomalySettings, AttemptSample, DeliverySample, DestinationFigures,
};
use crate::records::{row_int as int, row_text as text};
use crate::records::{Param, RecordsError, Result, Sql};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// How far back the figures and the drift detector read.
const DRIFT_HISTORY_MS: i64 = 30 * health::DAY_MS;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: i64,
    pub kind: AnomalyKind,
    pub destination: Option<String>,
    pub opened_at: i64,
    pub summary: String,
    pub figures: Value,
    /// `open` or `resolved`.
    pub status: String,
    /// Whether the destination's jobs were held for it.
    pub paused: bool,
    pub resolved_at: Option<i64>,
    pub resolved_by: Option<String>,
    /// What was done about it: the alert, each campaign pause call.
    pub actions: Option<Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub opened: Vec<Incident>,
    /// Resolved because the figures recovered (merchants with `auto_resume`).
    pub resolved: Vec<Incident>,
    /// The settings judged by: what the caller alerts and pauses with.
    pub settings: AnomalySettings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Paused {
    pub destination: String,
    pub paused_since: i64,
    pub incident: Option<i64>,
    /// Jobs held, pending, for this destination.
    pub held: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthOverview {
    pub destinations: BTreeMap<String, DestinationFigures>,
    pub paused: Vec<Paused>,
    pub incidents: Vec<Incident>,
    pub settings: AnomalySettings,
}

pub struct OpsStore<'a> {
    sql: &'a dyn Sql,
    merchant_id: &'a str,
}

fn of<T: serde::de::DeserializeOwned>(value: Value) -> Result<T> {
    serde_json::from_value(value).map_err(|e| RecordsError(e.to_string()))
}

impl<'a> OpsStore<'a> {
    pub fn new(sql: &'a dyn Sql, merchant_id: &'a str) -> Self {
        OpsStore { sql, merchant_id }
    }

    fn merchant(&self) -> Param {
        Param::from(self.merchant_id)
    }

    pub fn settings(&self) -> Result<AnomalySettings> {
        let rows = self
            .sql
            .query("SELECT settings FROM anomaly_settings WHERE id = 1", vec![])?;
        match rows.first().and_then(|r| text(r, "settings")) {
            Some(settings) => {
                serde_json::from_str(&settings).map_err(|e| RecordsError(e.to_string()))
            }
            None => Ok(AnomalySettings::default()),
        }
    }

    pub fn save_settings(&self, settings: &AnomalySettings, now_ms: i64) -> Result<()> {
        self.sql.execute(
            "INSERT INTO anomaly_settings (id, settings, updated_at) VALUES (1, ?1, ?2) \
             ON CONFLICT (id) DO UPDATE SET settings = excluded.settings, updated_at = excluded.updated_at",
            vec![
                serde_json::to_string(settings)
                    .map_err(|e| RecordsError(e.to_string()))?
                    .into(),
                now_ms.into(),
            ],
        )?;
        Ok(())
    }

    /// Per-destination figures over the last hour, day and 7 days.
    pub fn figures(&self, now_ms: i64) -> Result<BTreeMap<String, DestinationFigures>> {
        let since = now_ms - health::WEEK_MS;
        let deliveries: Vec<DeliverySample> = self
            .sql
            .query(
                "SELECT d.key AS destination, json_extract(d.value, '$.status') AS status, \
                 json_extract(d.value, '$.created_at') AS created_at, json_extract(d.value, '$.updated_at') AS updated_at, \
                 e.received_at AS received_at, json_extract(d.value, '$.match_score') AS match_score \
                 FROM canonical_events e, json_each(e.deliveries) d WHERE e.received_at >= ?1",
                vec![since.into()],
            )?
            .into_iter()
            .map(|row| of(Value::Object(row)))
            .collect::<Result<_>>()?;
        let attempts: Vec<AttemptSample> = self
            .sql
            .query(
                "SELECT destination, outcome, attempted_at, detail FROM delivery_attempts \
                 WHERE attempted_at >= ?1",
                vec![since.into()],
            )?
            .into_iter()
            .map(|mut row| {
                // Details are JSON or text; the figures keep a short line.
                let detail = row.get("detail").map(|d| match d {
                    Value::String(s) => s.chars().take(200).collect::<String>(),
                    other => other.to_string().chars().take(200).collect(),
                });
                row.insert("detail".into(), json!(detail));
                of(Value::Object(row))
            })
            .collect::<Result<_>>()?;
        let dead_letters: Vec<(String, i64)> = self
            .sql
            .query(
                "SELECT destination, dead_lettered_at FROM dead_letters WHERE dead_lettered_at >= ?1",
                vec![since.into()],
            )?
            .iter()
            .filter_map(|r| Some((text(r, "destination")?, int(r, "dead_lettered_at")?)))
            .collect();
        Ok(health::figures(
            &deliveries,
            &attempts,
            &dead_letters,
            now_ms,
        ))
    }

    /// When billing conversions arrived over the last 30 days.
    fn conversion_arrivals(&self, now_ms: i64) -> Result<Vec<i64>> {
        Ok(self
            .sql
            .query(
                "SELECT received_at FROM canonical_events WHERE received_at >= ?1 \
                 AND name IN ('subscription_started', 'trial_converted', 'subscription_renewed')",
                vec![(now_ms - DRIFT_HISTORY_MS).into()],
            )?
            .iter()
            .filter_map(|r| int(r, "received_at"))
            .collect())
    }

    fn open_incident(&self, kind: AnomalyKind, destination: Option<&str>) -> Result<Option<i64>> {
        let rows = self.sql.query(
            "SELECT id FROM incidents WHERE merchant_id = ?1 AND status = 'open' AND kind = ?2 \
             AND coalesce(destination, '') = ?3",
            vec![
                self.merchant(),
                kind_name(kind).into(),
                destination.unwrap_or("").into(),
            ],
        )?;
        Ok(rows.first().and_then(|r| int(r, "id")))
    }

    /// Runs the detectors: opens an incident for each new anomaly (one per kind and
    /// destination while open) and pauses its destination if the merchant auto-pauses;
    /// with `auto_resume`, resolves open incidents whose detector is quiet again.
    pub fn evaluate(&self, now_ms: i64) -> Result<Evaluation> {
        let settings = self.settings()?;
        let figures = self.figures(now_ms)?;
        let mut found = Vec::new();
        for (destination, figures) in &figures {
            found.extend(health::detect(destination, figures, &settings));
        }
        found.extend(health::detect_drift(
            &self.conversion_arrivals(now_ms)?,
            now_ms,
            &settings,
        ));
        let mut evaluation = Evaluation {
            settings: settings.clone(),
            ..Evaluation::default()
        };
        for anomaly in &found {
            if self
                .open_incident(anomaly.kind, anomaly.destination.as_deref())?
                .is_some()
            {
                continue;
            }
            let pause = settings.auto_pause && anomaly.destination.is_some();
            self.sql.execute(
                "INSERT INTO incidents (merchant_id, kind, destination, opened_at, summary, figures, status, paused) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'open', ?7)",
                vec![
                    self.merchant(),
                    kind_name(anomaly.kind).into(),
                    anomaly.destination.clone().into(),
                    now_ms.into(),
                    anomaly.summary.as_str().into(),
                    anomaly.figures.to_string().into(),
                    i64::from(pause).into(),
                ],
            )?;
            let id = self
                .open_incident(anomaly.kind, anomaly.destination.as_deref())?
                .unwrap_or(0);
            if let (true, Some(destination)) = (pause, &anomaly.destination) {
                self.pause(destination, Some(id), now_ms)?;
            }
            evaluation.opened.extend(self.incident(id)?);
        }
        if settings.auto_resume {
            for incident in self.incidents_open()? {
                let still = found
                    .iter()
                    .any(|a| a.kind == incident.kind && a.destination == incident.destination);
                if !still {
                    self.resolve(incident.id, "auto_resume", now_ms)?;
                    evaluation.resolved.extend(self.incident(incident.id)?);
                }
            }
        }
        Ok(evaluation)
    }

    /// Holds a destination's jobs (pending in the object, off the queue).
    pub fn pause(&self, destination: &str, incident: Option<i64>, now_ms: i64) -> Result<()> {
        self.sql.execute(
            "INSERT INTO destination_health (merchant_id, destination, consecutive_failures, probes, updated_at, \
               paused_since, paused_incident) VALUES (?1, ?2, 0, 0, ?3, ?3, ?4) \
             ON CONFLICT (merchant_id, destination) DO UPDATE SET \
               paused_since = coalesce(destination_health.paused_since, excluded.paused_since), \
               paused_incident = coalesce(destination_health.paused_incident, excluded.paused_incident)",
            vec![
                self.merchant(),
                destination.into(),
                now_ms.into(),
                incident.into(),
            ],
        )?;
        Ok(())
    }

    fn resolve(&self, id: i64, by: &str, now_ms: i64) -> Result<Vec<String>> {
        let destination = self.incident(id)?.and_then(|i| i.destination);
        self.sql.execute(
            "UPDATE incidents SET status = 'resolved', resolved_at = ?2, resolved_by = ?3 \
             WHERE id = ?1 AND status = 'open'",
            vec![id.into(), now_ms.into(), by.into()],
        )?;
        Ok(destination.into_iter().collect())
    }

    /// Releases a destination: resolves its open incidents and returns its held jobs,
    /// oldest event first, for the caller to enqueue (each exactly once: the held jobs
    /// are on no queue while paused).
    pub fn resume(&self, destination: &str, by: &str, now_ms: i64) -> Result<Vec<DeliveryJob>> {
        self.sql.execute(
            "UPDATE incidents SET status = 'resolved', resolved_at = ?3, resolved_by = ?4 \
             WHERE merchant_id = ?1 AND destination = ?2 AND status = 'open'",
            vec![
                self.merchant(),
                destination.into(),
                now_ms.into(),
                by.into(),
            ],
        )?;
        self.sql.execute(
            "UPDATE destination_health SET paused_since = NULL, paused_incident = NULL, \
               consecutive_failures = 0, parked_since = NULL, next_probe_at = NULL, probes = 0, updated_at = ?3 \
             WHERE merchant_id = ?1 AND destination = ?2",
            vec![self.merchant(), destination.into(), now_ms.into()],
        )?;
        let jobs = self.held_jobs(destination)?;
        // Released once: a second resume finds nothing held.
        let ids: Vec<&str> = jobs.iter().map(|j| j.event.event_id.as_str()).collect();
        self.sql.execute(
            "UPDATE canonical_events SET deliveries = json_remove(deliveries, '$.' || ?1 || '.held') \
             WHERE event_id IN (SELECT value FROM json_each(?2))",
            vec![
                destination.into(),
                serde_json::to_string(&ids)
                    .map_err(|e| RecordsError(e.to_string()))?
                    .into(),
            ],
        )?;
        Ok(jobs)
    }

    /// A destination's held jobs (taken off the queue while paused) in the order their
    /// events arrived.
    pub fn held_jobs(&self, destination: &str) -> Result<Vec<DeliveryJob>> {
        let rows = self.sql.query(
            "SELECT payload, json_extract(deliveries, '$.' || ?1) AS delivery FROM canonical_events \
             WHERE pending > 0 AND json_extract(deliveries, '$.' || ?1 || '.status') = 'pending' \
             AND json_extract(deliveries, '$.' || ?1 || '.held') = 1 \
             ORDER BY received_at, event_id",
            vec![destination.into()],
        )?;
        let mut jobs = Vec::new();
        for row in rows {
            let (Some(payload), Some(delivery)) = (text(&row, "payload"), text(&row, "delivery"))
            else {
                continue;
            };
            let (Ok(event), Ok(delivery)) = (
                serde_json::from_str::<CanonicalEvent>(&payload),
                serde_json::from_str::<Value>(&delivery),
            ) else {
                continue;
            };
            if delivery["status"] != json!(DeliveryStatus::Pending) {
                continue;
            }
            jobs.push(DeliveryJob {
                job_id: delivery["job_id"].as_str().unwrap_or_default().to_string(),
                destination: destination.to_string(),
                event,
            });
        }
        Ok(jobs)
    }

    pub fn record_actions(&self, id: i64, actions: &Value) -> Result<()> {
        self.sql.execute(
            "UPDATE incidents SET actions = ?2 WHERE id = ?1",
            vec![id.into(), actions.to_string().into()],
        )?;
        Ok(())
    }

    fn incident_rows(&self, condition: &str, params: Vec<Param>) -> Result<Vec<Incident>> {
        self.sql
            .query(
                &format!(
                    "SELECT id, kind, destination, opened_at, summary, figures, status, paused, resolved_at, \
                     resolved_by, actions FROM incidents WHERE {condition}"
                ),
                params,
            )?
            .into_iter()
            .map(|mut row| {
                for field in ["figures", "actions"] {
                    let parsed = text(&row, field)
                        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                        .unwrap_or(Value::Null);
                    row.insert(field.into(), parsed);
                }
                let paused = int(&row, "paused").unwrap_or(0) != 0;
                row.insert("paused".into(), json!(paused));
                of(Value::Object(row))
            })
            .collect()
    }

    pub fn incident(&self, id: i64) -> Result<Option<Incident>> {
        Ok(self
            .incident_rows("id = ?1", vec![id.into()])?
            .into_iter()
            .next())
    }

    fn incidents_open(&self) -> Result<Vec<Incident>> {
        self.incident_rows(
            "merchant_id = ?1 AND status = 'open' ORDER BY id",
            vec![self.merchant()],
        )
    }

    /// Everything the health view shows.
    pub fn overview(&self, now_ms: i64, incident_limit: i64) -> Result<HealthOverview> {
        let mut paused = Vec::new();
        for row in self.sql.query(
            "SELECT destination, paused_since, paused_incident FROM destination_health \
             WHERE merchant_id = ?1 AND paused_since IS NOT NULL ORDER BY destination",
            vec![self.merchant()],
        )? {
            let destination = text(&row, "destination").unwrap_or_default();
            let held = self.held_jobs(&destination)?.len() as i64;
            paused.push(Paused {
                paused_since: int(&row, "paused_since").unwrap_or(0),
                incident: int(&row, "paused_incident"),
                destination,
                held,
            });
        }
        Ok(HealthOverview {
            destinations: self.figures(now_ms)?,
            paused,
            incidents: self.incident_rows(
                "merchant_id = ?1 ORDER BY id DESC LIMIT ?2",
                vec![self.merchant(), incident_limit.into()],
            )?,
            settings: self.settings()?,
        })
    }
}

pub fn kind_name(kind: AnomalyKind) -> &'static str {
    match kind {
        AnomalyKind::FailureSpike => "failure_spike",
        AnomalyKind::MatchQualityDrop => "match_quality_drop",
        AnomalyKind::DeliveryDrift => "delivery_drift",
    }
}
