//! A merchant's intent records, in its object beside its other records: settings, each
//! visitor's rule state and score, their activity, signals, the high-intent alerts and
//! the LinkedIn seed uploads and runs. Tables are created by `crate::records::SCHEMA`.
//!
//! Like `crate::records`, everything is synchronous against [`Sql`], so one call's
//! statements commit together inside the object.

use crate::intent::{self, Activity, IntentSettings, Qualification, Rule, VisitorState};
use crate::records::{row_int as int, row_text as text};
use crate::records::{Param, RecordsError, Result, Sql};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Alerts are retried this many times, backing off, then given up (and shown so).
pub const ALERT_MAX_ATTEMPTS: i64 = 8;
const ALERT_FIRST_RETRY_MS: i64 = 30_000;
/// Visitors whose open forms are expired per wake-up; the rest wait for the next one.
const EXPIRE_BATCH: i64 = 500;
/// LinkedIn takes at most 5,000 users per request; one run uploads at most this many.
pub const SEED_MAX_PER_RUN: i64 = 20_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisitorSummary {
    pub visitor_id: String,
    /// The score now (decayed, if the merchant decays).
    pub score: f64,
    pub first_seen: i64,
    pub last_seen: i64,
    pub page_views: i64,
    pub qualified_at: Option<i64>,
    pub qualified_rule: Option<Rule>,
    /// Emails the visitor is known under (identify, or the merchant's server).
    pub emails: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum TimelineEntry {
    PageView {
        at_ms: i64,
        path: String,
        title: Option<String>,
    },
    FormStart {
        at_ms: i64,
        form: String,
        path: Option<String>,
    },
    FormSubmit {
        at_ms: i64,
        form: String,
        path: Option<String>,
    },
    Signal {
        at_ms: i64,
        rule: Rule,
        label: String,
        points: i64,
        score_after: f64,
        path: Option<String>,
    },
    Qualified {
        at_ms: i64,
        rule: Rule,
        score: f64,
    },
    Identify {
        at_ms: i64,
        identity: String,
    },
    Conversion {
        at_ms: i64,
        name: String,
        source: String,
        event_id: String,
        values: Value,
    },
}

impl TimelineEntry {
    pub fn at_ms(&self) -> i64 {
        match self {
            TimelineEntry::PageView { at_ms, .. }
            | TimelineEntry::FormStart { at_ms, .. }
            | TimelineEntry::FormSubmit { at_ms, .. }
            | TimelineEntry::Signal { at_ms, .. }
            | TimelineEntry::Qualified { at_ms, .. }
            | TimelineEntry::Identify { at_ms, .. }
            | TimelineEntry::Conversion { at_ms, .. } => *at_ms,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    pub visitor: VisitorSummary,
    /// Oldest first.
    pub entries: Vec<TimelineEntry>,
}

/// An alert due to be sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingAlert {
    pub visitor_id: String,
    pub qualification: Qualification,
    pub email: Option<String>,
    pub attempts: i64,
}

/// One visitor to add to the seed segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedCandidate {
    pub visitor_key: String,
    /// SHA-256 of each normalised email the visitor is known under.
    pub email_sha256: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SeedBatch {
    pub candidates: Vec<SeedCandidate>,
    /// Qualified, not uploaded, and no email known (yet).
    pub skipped_without_email: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeedRunStatus {
    Succeeded,
    Failed,
    /// Configured, but the plan no longer includes the sync.
    PlanRequired,
    /// No LinkedIn destination (token) to upload with.
    NotConnected,
}

/// One sync run, as recorded and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedRun {
    pub day: String,
    pub trigger: String,
    pub started_at: i64,
    pub finished_at: i64,
    pub status: SeedRunStatus,
    pub segment: Option<String>,
    pub uploaded: i64,
    pub skipped_without_email: i64,
    /// Visitors LinkedIn refused or that could not be sent; tried again next run.
    pub failed: i64,
    pub error: Option<String>,
    /// Matched members LinkedIn reports for the segment (it serves from 300).
    pub segment_size: Option<i64>,
    pub segment_status: Option<String>,
}

/// What a visitor summary reads.
const VISITOR_COLUMNS: &str =
    "SELECT visitor_key, state, first_seen, last_seen, page_views, qualified_at, \
     qualified_rule FROM intent_visitors";

pub struct IntentStore<'a> {
    sql: &'a dyn Sql,
    merchant_id: &'a str,
}

fn to_json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| RecordsError(e.to_string()))
}

fn from_text<T: DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| RecordsError(e.to_string()))
}

fn visitor_id(visitor_key: &str) -> String {
    visitor_key
        .strip_prefix("visitor:")
        .unwrap_or(visitor_key)
        .to_string()
}

impl<'a> IntentStore<'a> {
    pub fn new(sql: &'a dyn Sql, merchant_id: &'a str) -> Self {
        IntentStore { sql, merchant_id }
    }

    fn merchant(&self) -> Param {
        Param::from(self.merchant_id)
    }

    /// The merchant's settings, the product defaults until it saved its own.
    pub fn settings(&self) -> Result<IntentSettings> {
        Ok(self.stored_settings()?.map(|(s, _)| s).unwrap_or_default())
    }

    /// The saved settings and the segment TrackLayer created for them, if any.
    pub fn stored_settings(&self) -> Result<Option<(IntentSettings, Option<String>)>> {
        let rows = self.sql.query(
            "SELECT settings, created_segment FROM intent_settings WHERE id = 1",
            vec![],
        )?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let settings = from_text(&text(row, "settings").unwrap_or_default())?;
        Ok(Some((settings, text(row, "created_segment"))))
    }

    /// Saves validated settings. A changed half-life re-keys every visitor's rank.
    pub fn save_settings(&self, settings: &IntentSettings, now_ms: i64) -> Result<()> {
        let previous = self.stored_settings()?;
        // A created segment belongs to the account it was created in.
        let keep_segment = previous.as_ref().and_then(|(old, created)| {
            let same_account = old.linkedin_seed.as_ref().map(|s| &s.ad_account)
                == settings.linkedin_seed.as_ref().map(|s| &s.ad_account);
            created.clone().filter(|_| same_account)
        });
        self.sql.execute(
            "INSERT INTO intent_settings (id, settings, created_segment, updated_at) VALUES (1, ?1, ?2, ?3) \
             ON CONFLICT (id) DO UPDATE SET settings = excluded.settings, \
             created_segment = excluded.created_segment, updated_at = excluded.updated_at",
            vec![to_json(settings)?.into(), keep_segment.into(), now_ms.into()],
        )?;
        let old_half_life = previous.and_then(|(s, _)| s.decay_half_life_days);
        if old_half_life != settings.decay_half_life_days {
            for row in self.sql.query(
                "SELECT visitor_key, state FROM intent_visitors WHERE merchant_id = ?1",
                vec![self.merchant()],
            )? {
                let state: VisitorState = from_text(&text(&row, "state").unwrap_or_default())?;
                self.sql.execute(
                    "UPDATE intent_visitors SET rank_key = ?3 WHERE merchant_id = ?1 AND visitor_key = ?2",
                    vec![
                        self.merchant(),
                        text(&row, "visitor_key").into(),
                        settings.rank_key(state.score, state.score_at_ms).into(),
                    ],
                )?;
            }
        }
        Ok(())
    }

    pub fn remember_segment(&self, segment: &str) -> Result<()> {
        self.sql.execute(
            "UPDATE intent_settings SET created_segment = ?1 WHERE id = 1",
            vec![segment.into()],
        )?;
        Ok(())
    }

    fn state(&self, visitor_key: &str) -> Result<Option<VisitorState>> {
        let rows = self.sql.query(
            "SELECT state FROM intent_visitors WHERE merchant_id = ?1 AND visitor_key = ?2",
            vec![self.merchant(), visitor_key.into()],
        )?;
        rows.first()
            .map(|row| from_text(&text(row, "state").unwrap_or_default()))
            .transpose()
    }

    /// Stores the visitor's new state, its signals and (once) its alert.
    fn save(
        &self,
        settings: &IntentSettings,
        visitor_key: &str,
        state: &VisitorState,
        outcome: &intent::Outcome,
        seen_at: Option<i64>,
        page_view: bool,
    ) -> Result<()> {
        for signal in &outcome.signals {
            self.sql.execute(
                "INSERT INTO intent_signals (merchant_id, visitor_key, rule, day, at_ms, path, points, score_after) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
                vec![
                    self.merchant(),
                    visitor_key.into(),
                    signal.rule.as_str().into(),
                    intent::day_of(signal.at_ms).into(),
                    signal.at_ms.into(),
                    signal.path.clone().into(),
                    i64::from(signal.points).into(),
                    Param::Real(signal.score_after),
                ],
            )?;
        }
        let qualified = state.qualified.as_ref();
        let seen = seen_at.unwrap_or(state.score_at_ms);
        self.sql.execute(
            "INSERT INTO intent_visitors (merchant_id, visitor_key, state, rank_key, first_seen, last_seen, page_views, \
               qualified_at, qualified_rule, due_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7, ?8, ?9) \
             ON CONFLICT (merchant_id, visitor_key) DO UPDATE SET state = excluded.state, rank_key = excluded.rank_key, \
               last_seen = max(intent_visitors.last_seen, excluded.last_seen), \
               page_views = intent_visitors.page_views + excluded.page_views, \
               qualified_at = excluded.qualified_at, qualified_rule = excluded.qualified_rule, due_at = excluded.due_at",
            vec![
                self.merchant(),
                visitor_key.into(),
                to_json(state)?.into(),
                settings.rank_key(state.score, state.score_at_ms).into(),
                seen.into(),
                i64::from(page_view).into(),
                qualified.map(|q| q.at_ms).into(),
                qualified.map(|q| q.rule.as_str()).into(),
                state.next_due_ms(settings).into(),
            ],
        )?;
        if let (Some(qualification), Some(_)) = (&outcome.qualified, &settings.alert_webhook_url) {
            self.sql.execute(
                "INSERT INTO intent_alerts (merchant_id, visitor_key, qualification, created_at, attempts, next_attempt_at) \
                 VALUES (?1, ?2, ?3, ?4, 0, ?4) ON CONFLICT DO NOTHING",
                vec![
                    self.merchant(),
                    visitor_key.into(),
                    to_json(qualification)?.into(),
                    qualification.at_ms.into(),
                ],
            )?;
        }
        Ok(())
    }

    /// One beacon's activity: stored for the timeline, then scored. Returns the
    /// qualification if this made the visitor high-intent.
    pub fn observe(
        &self,
        settings: &IntentSettings,
        visitor_key: &str,
        at_ms: i64,
        activity: &Activity,
    ) -> Result<Option<Qualification>> {
        let (kind, path, title, detail) = match activity {
            Activity::PageView { path, title } => ("page_view", path.clone(), title.clone(), None),
            Activity::Form { form, step, path } => (
                match step {
                    intent::FormStep::Start => "form_start",
                    intent::FormStep::Submit => "form_submit",
                },
                path.clone().unwrap_or_default(),
                None,
                Some(form.clone()),
            ),
        };
        self.sql.execute(
            "INSERT INTO intent_activity (merchant_id, visitor_key, at_ms, kind, path, title, detail) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
            vec![
                self.merchant(),
                visitor_key.into(),
                at_ms.into(),
                kind.into(),
                path.into(),
                title.into(),
                detail.into(),
            ],
        )?;
        let mut state = self.state(visitor_key)?.unwrap_or_default();
        let outcome = state.observe(settings, at_ms, activity);
        let page_view = matches!(activity, Activity::PageView { .. });
        self.save(
            settings,
            visitor_key,
            &state,
            &outcome,
            Some(at_ms),
            page_view,
        )?;
        Ok(outcome.qualified)
    }

    /// Turns forms left open past their window into abandons; returns how many
    /// visitors it looked at.
    pub fn expire_due(&self, settings: &IntentSettings, now_ms: i64) -> Result<usize> {
        let rows = self.sql.query(
            "SELECT visitor_key, state FROM intent_visitors WHERE due_at IS NOT NULL AND due_at <= ?1 \
             AND merchant_id = ?2 ORDER BY due_at LIMIT ?3",
            vec![now_ms.into(), self.merchant(), EXPIRE_BATCH.into()],
        )?;
        for row in &rows {
            let visitor_key = text(row, "visitor_key").unwrap_or_default();
            let mut state: VisitorState = from_text(&text(row, "state").unwrap_or_default())?;
            let outcome = state.expire(settings, now_ms);
            self.save(settings, &visitor_key, &state, &outcome, None, false)?;
        }
        Ok(rows.len())
    }

    /// When the object should wake next: an open form's deadline or an alert's retry.
    pub fn next_wakeup(&self) -> Result<Option<i64>> {
        let rows = self.sql.query(
            "SELECT min(t) AS at FROM (\
               SELECT min(due_at) AS t FROM intent_visitors WHERE due_at IS NOT NULL AND merchant_id = ?1 \
               UNION ALL SELECT min(next_attempt_at) FROM intent_alerts \
                 WHERE merchant_id = ?1 AND sent_at IS NULL AND next_attempt_at IS NOT NULL)",
            vec![self.merchant()],
        )?;
        Ok(rows.first().and_then(|r| int(r, "at")))
    }

    /// Alerts due now, with the email the visitor is known under (read at send time,
    /// so an identify after the crossing still names the person).
    pub fn due_alerts(&self, now_ms: i64, limit: i64) -> Result<Vec<PendingAlert>> {
        let rows = self.sql.query(
            "SELECT visitor_key, qualification, attempts FROM intent_alerts WHERE merchant_id = ?1 \
             AND sent_at IS NULL AND next_attempt_at IS NOT NULL AND next_attempt_at <= ?2 \
             ORDER BY next_attempt_at LIMIT ?3",
            vec![self.merchant(), now_ms.into(), limit.into()],
        )?;
        rows.iter()
            .map(|row| {
                let visitor_key = text(row, "visitor_key").unwrap_or_default();
                Ok(PendingAlert {
                    email: self.emails(&visitor_key)?.into_iter().next(),
                    visitor_id: visitor_id(&visitor_key),
                    qualification: from_text(&text(row, "qualification").unwrap_or_default())?,
                    attempts: int(row, "attempts").unwrap_or(0),
                })
            })
            .collect()
    }

    /// The outcome of one alert call: sent, retried later (doubling), or given up.
    pub fn alert_result(&self, visitor_id: &str, error: Option<&str>, now_ms: i64) -> Result<()> {
        let key = crate::pixel::visitor_key(visitor_id);
        match error {
            None => self.sql.execute(
                "UPDATE intent_alerts SET sent_at = ?3, attempts = attempts + 1, next_attempt_at = NULL, last_error = NULL \
                 WHERE merchant_id = ?1 AND visitor_key = ?2",
                vec![self.merchant(), key.into(), now_ms.into()],
            )?,
            Some(error) => self.sql.execute(
                "UPDATE intent_alerts SET attempts = attempts + 1, last_error = ?3, \
                   next_attempt_at = CASE WHEN attempts + 1 >= ?4 THEN NULL \
                     ELSE ?5 + (?6 << min(attempts, 12)) END \
                 WHERE merchant_id = ?1 AND visitor_key = ?2",
                vec![
                    self.merchant(),
                    key.into(),
                    error.chars().take(300).collect::<String>().into(),
                    ALERT_MAX_ATTEMPTS.into(),
                    now_ms.into(),
                    ALERT_FIRST_RETRY_MS.into(),
                ],
            )?,
        };
        Ok(())
    }

    /// Emails the visitor is known under: linked directly (identify, the merchant's
    /// server) or through a billing customer it is linked to.
    fn emails(&self, visitor_key: &str) -> Result<Vec<String>> {
        let rows = self.sql.query(
            "SELECT substr(identity_key, 7) AS email FROM identity_links \
               WHERE merchant_id = ?1 AND visitor_key = ?2 AND identity_key LIKE 'email:%' \
             UNION SELECT lower(c.email) FROM identity_links l JOIN customers c \
               ON c.merchant_id = l.merchant_id AND l.identity_key = 'customer:' || c.customer_id \
               WHERE l.merchant_id = ?1 AND l.visitor_key = ?2 AND c.email IS NOT NULL \
             ORDER BY 1",
            vec![self.merchant(), visitor_key.into()],
        )?;
        Ok(rows.iter().filter_map(|r| text(r, "email")).collect())
    }

    fn summary(
        &self,
        settings: &IntentSettings,
        now_ms: i64,
        row: &Map<String, Value>,
    ) -> Result<VisitorSummary> {
        let visitor_key = text(row, "visitor_key").unwrap_or_default();
        let state: VisitorState = from_text(&text(row, "state").unwrap_or_default())?;
        Ok(VisitorSummary {
            visitor_id: visitor_id(&visitor_key),
            score: (state.score_at(settings, now_ms) * 100.0).round() / 100.0,
            first_seen: int(row, "first_seen").unwrap_or(0),
            last_seen: int(row, "last_seen").unwrap_or(0),
            page_views: int(row, "page_views").unwrap_or(0),
            qualified_at: int(row, "qualified_at"),
            qualified_rule: text(row, "qualified_rule").as_deref().and_then(Rule::parse),
            emails: self.emails(&visitor_key)?,
        })
    }

    /// Visitors with a score, highest first; `offset` pages.
    pub fn ranked(
        &self,
        settings: &IntentSettings,
        now_ms: i64,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<VisitorSummary>> {
        self.summaries(
            settings,
            now_ms,
            "merchant_id = ?1 AND rank_key > 0 ORDER BY rank_key DESC, visitor_key LIMIT ?2 OFFSET ?3",
            vec![self.merchant(), limit.into(), offset.into()],
        )
    }

    /// The high-intent queue: visitors in the order they qualified, newest first.
    pub fn queue(
        &self,
        settings: &IntentSettings,
        now_ms: i64,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<VisitorSummary>> {
        self.summaries(
            settings,
            now_ms,
            "merchant_id = ?1 AND qualified_at IS NOT NULL ORDER BY qualified_at DESC, visitor_key \
             LIMIT ?2 OFFSET ?3",
            vec![self.merchant(), limit.into(), offset.into()],
        )
    }

    /// Visitor summaries of the rows `condition` (WHERE … ORDER BY … LIMIT) selects.
    fn summaries(
        &self,
        settings: &IntentSettings,
        now_ms: i64,
        condition: &str,
        params: Vec<Param>,
    ) -> Result<Vec<VisitorSummary>> {
        self.sql
            .query(&format!("{VISITOR_COLUMNS} WHERE {condition}"), params)?
            .iter()
            .map(|row| self.summary(settings, now_ms, row))
            .collect()
    }

    /// Everything about one visitor, oldest first: pages, forms, signals, the moment it
    /// qualified, who it turned out to be, and the billing conversions that followed.
    pub fn timeline(
        &self,
        settings: &IntentSettings,
        now_ms: i64,
        visitor_id: &str,
        limit: i64,
    ) -> Result<Option<Timeline>> {
        let key = crate::pixel::visitor_key(visitor_id);
        let rows = self.sql.query(
            &format!("{VISITOR_COLUMNS} WHERE merchant_id = ?1 AND visitor_key = ?2"),
            vec![self.merchant(), key.as_str().into()],
        )?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let visitor = self.summary(settings, now_ms, row)?;
        let state: VisitorState = from_text(&text(row, "state").unwrap_or_default())?;
        let mut entries = Vec::new();
        for row in self.sql.query(
            "SELECT at_ms, kind, path, title, detail FROM intent_activity \
             WHERE merchant_id = ?1 AND visitor_key = ?2 ORDER BY at_ms DESC LIMIT ?3",
            vec![self.merchant(), key.as_str().into(), limit.into()],
        )? {
            let at_ms = int(&row, "at_ms").unwrap_or(0);
            let path = text(&row, "path").filter(|p| !p.is_empty());
            let form = text(&row, "detail").unwrap_or_default();
            entries.push(match text(&row, "kind").as_deref() {
                Some("form_start") => TimelineEntry::FormStart { at_ms, form, path },
                Some("form_submit") => TimelineEntry::FormSubmit { at_ms, form, path },
                _ => TimelineEntry::PageView {
                    at_ms,
                    path: path.unwrap_or_default(),
                    title: text(&row, "title"),
                },
            });
        }
        for row in self.sql.query(
            "SELECT rule, at_ms, path, points, score_after FROM intent_signals \
             WHERE merchant_id = ?1 AND visitor_key = ?2 ORDER BY at_ms DESC LIMIT ?3",
            vec![self.merchant(), key.as_str().into(), limit.into()],
        )? {
            let Some(rule) = text(&row, "rule").as_deref().and_then(Rule::parse) else {
                continue;
            };
            entries.push(TimelineEntry::Signal {
                at_ms: int(&row, "at_ms").unwrap_or(0),
                rule,
                label: rule.label().to_string(),
                points: int(&row, "points").unwrap_or(0),
                score_after: row
                    .get("score_after")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0),
                path: text(&row, "path"),
            });
        }
        if let Some(q) = &state.qualified {
            entries.push(TimelineEntry::Qualified {
                at_ms: q.at_ms,
                rule: q.rule,
                score: q.score,
            });
        }
        let links = self.sql.query(
            "SELECT identity_key, linked_at FROM identity_links WHERE merchant_id = ?1 AND visitor_key = ?2",
            vec![self.merchant(), key.as_str().into()],
        )?;
        let mut customer_ids = Vec::new();
        for row in &links {
            let identity = text(row, "identity_key").unwrap_or_default();
            if let Some(id) = identity.strip_prefix("customer:") {
                customer_ids.push(id.to_string());
            }
            entries.push(TimelineEntry::Identify {
                at_ms: int(row, "linked_at").unwrap_or(0),
                identity,
            });
        }
        // Billing customers known under the visitor's emails.
        for row in self.sql.query(
            "SELECT customer_id FROM customers WHERE merchant_id = ?1 \
             AND lower(email) IN (SELECT value FROM json_each(?2))",
            vec![self.merchant(), to_json(&visitor.emails)?.into()],
        )? {
            if let Some(id) = text(&row, "customer_id") {
                customer_ids.push(id);
            }
        }
        // The person's billing events since the visitor was first seen.
        let conversions = self.sql.query(
            "SELECT event_id, name, source, occurred_at_s, json_extract(payload, '$.values') AS event_values \
             FROM canonical_events WHERE merchant_id = ?1 AND received_at >= ?2 AND (\
               lower(json_extract(payload, '$.customer.email')) IN (SELECT value FROM json_each(?3)) OR \
               json_extract(payload, '$.customer.customer_id') IN (SELECT value FROM json_each(?4))) \
             ORDER BY occurred_at_s LIMIT ?5",
            vec![
                self.merchant(),
                visitor.first_seen.into(),
                to_json(&visitor.emails)?.into(),
                to_json(&customer_ids)?.into(),
                limit.into(),
            ],
        )?;
        for row in conversions {
            let values = text(&row, "event_values")
                .and_then(|v| serde_json::from_str(&v).ok())
                .unwrap_or(Value::Null);
            entries.push(TimelineEntry::Conversion {
                at_ms: int(&row, "occurred_at_s").unwrap_or(0) * 1000,
                name: text(&row, "name").unwrap_or_default(),
                source: text(&row, "source").unwrap_or_default(),
                event_id: text(&row, "event_id").unwrap_or_default(),
                values,
            });
        }
        entries.sort_by_key(TimelineEntry::at_ms);
        Ok(Some(Timeline { visitor, entries }))
    }

    /// Qualified visitors not yet in `segment`: those with an email, hashed as
    /// LinkedIn matches them, and how many have none yet.
    pub fn seed_batch(&self, segment: &str, limit: i64) -> Result<SeedBatch> {
        let rows = self.sql.query(
            "SELECT visitor_key FROM intent_visitors v WHERE merchant_id = ?1 AND qualified_at IS NOT NULL \
             AND NOT EXISTS (SELECT 1 FROM seed_uploads s WHERE s.merchant_id = ?1 AND s.segment = ?2 \
               AND s.visitor_key = v.visitor_key) ORDER BY qualified_at, visitor_key",
            vec![self.merchant(), segment.into()],
        )?;
        let mut batch = SeedBatch::default();
        for row in rows {
            let visitor_key = text(&row, "visitor_key").unwrap_or_default();
            let mut hashes: Vec<String> = self
                .emails(&visitor_key)?
                .iter()
                .filter_map(|e| crate::hashing::hash_email(e))
                .collect();
            hashes.sort();
            hashes.dedup();
            if hashes.is_empty() {
                batch.skipped_without_email += 1;
            } else if (batch.candidates.len() as i64) < limit {
                batch.candidates.push(SeedCandidate {
                    visitor_key,
                    email_sha256: hashes,
                });
            }
        }
        Ok(batch)
    }

    /// Records a run; the uploaded visitors are never uploaded to `segment` again.
    pub fn record_seed_run(&self, run: &SeedRun, uploaded: &[SeedCandidate]) -> Result<()> {
        if let Some(segment) = &run.segment {
            for candidate in uploaded {
                for hash in &candidate.email_sha256 {
                    self.sql.execute(
                        "INSERT INTO seed_uploads (merchant_id, segment, visitor_key, email_sha256, uploaded_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                        vec![
                            self.merchant(),
                            segment.into(),
                            candidate.visitor_key.as_str().into(),
                            hash.into(),
                            run.finished_at.into(),
                        ],
                    )?;
                }
            }
        }
        self.sql.execute(
            "INSERT INTO seed_runs (merchant_id, day, trigger, started_at, finished_at, status, segment, uploaded, \
               skipped_without_email, failed, error, segment_size, segment_status) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            vec![
                self.merchant(),
                run.day.as_str().into(),
                run.trigger.as_str().into(),
                run.started_at.into(),
                run.finished_at.into(),
                to_json(&run.status)?.trim_matches('"').into(),
                run.segment.clone().into(),
                run.uploaded.into(),
                run.skipped_without_email.into(),
                run.failed.into(),
                run.error.clone().into(),
                run.segment_size.into(),
                run.segment_status.clone().into(),
            ],
        )?;
        Ok(())
    }

    /// Runs, newest first.
    pub fn seed_runs(&self, limit: i64) -> Result<Vec<SeedRun>> {
        let rows = self.sql.query(
            "SELECT day, trigger, started_at, finished_at, status, segment, uploaded, skipped_without_email, \
               failed, error, segment_size, segment_status FROM seed_runs WHERE merchant_id = ?1 \
             ORDER BY started_at DESC, id DESC LIMIT ?2",
            vec![self.merchant(), limit.into()],
        )?;
        rows.into_iter()
            .map(|row| {
                serde_json::from_value(Value::Object(row)).map_err(|e| RecordsError(e.to_string()))
            })
            .collect()
    }

    /// How many visitors are in the segment from TrackLayer (what it uploaded).
    pub fn seed_uploaded(&self, segment: &str) -> Result<i64> {
        let rows = self.sql.query(
            "SELECT count(DISTINCT visitor_key) AS n FROM seed_uploads WHERE merchant_id = ?1 AND segment = ?2",
            vec![self.merchant(), segment.into()],
        )?;
        Ok(rows.first().and_then(|r| int(r, "n")).unwrap_or(0))
    }
}
