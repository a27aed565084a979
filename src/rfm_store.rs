//! A merchant's daily RFM scores and LTV models, in its object: gathered from its own
//! canonical billing events, scored by `crate::rfm`, replaced each day.

use crate::event::{CanonicalEvent, EventName};
use crate::records::{Param, RecordsError, Result, Sql};
use crate::rfm::{self, Score, Subscriber};
use serde_json::Value;
use std::collections::BTreeMap;

/// A paid period: what a subscriber pays for.
const PAID: [EventName; 4] = [
    EventName::SubscriptionStarted,
    EventName::TrialConverted,
    EventName::SubscriptionRenewed,
    EventName::SubscriptionReactivated,
];

pub struct RfmStore<'a> {
    sql: &'a dyn Sql,
    merchant_id: &'a str,
}

fn err(e: impl std::fmt::Display) -> RecordsError {
    RecordsError(e.to_string())
}

impl<'a> RfmStore<'a> {
    pub fn new(sql: &'a dyn Sql, merchant_id: &'a str) -> Self {
        RfmStore { sql, merchant_id }
    }

    fn merchant(&self) -> Param {
        Param::from(self.merchant_id)
    }

    /// Each subscriber's payments, refunds and whether it is cancelled now, from the
    /// billing events still held (the events retention window).
    pub fn subscribers(&self) -> Result<Vec<Subscriber>> {
        let rows = self.sql.query(
            "SELECT payload FROM canonical_events WHERE merchant_id = ?1 AND name IN \
             ('subscription_started', 'trial_converted', 'subscription_renewed', 'subscription_reactivated', \
              'subscription_cancelled', 'refund', 'trial_started') ORDER BY occurred_at_s, event_id",
            vec![self.merchant()],
        )?;
        let mut by_key: BTreeMap<String, Subscriber> = BTreeMap::new();
        for row in rows {
            let Some(event) = row
                .get("payload")
                .and_then(Value::as_str)
                .and_then(|p| serde_json::from_str::<CanonicalEvent>(p).ok())
            else {
                continue;
            };
            let Some(key) = crate::identity::keys(&event).into_iter().next() else {
                continue;
            };
            let subscriber = by_key.entry(key.clone()).or_insert_with(|| Subscriber {
                key,
                first_seen_s: event.occurred_at,
                payments: Vec::new(),
                refunds: Vec::new(),
                cancelled: false,
            });
            let values = &event.values;
            let currency = values.currency.clone().unwrap_or_default().to_lowercase();
            let amount = values
                .net_value
                .or(values.gross_value)
                .or(values.mrr)
                .map(|a| a.minor);
            match event.name {
                name if PAID.contains(&name) => {
                    if let Some(amount) = amount {
                        subscriber
                            .payments
                            .push((event.occurred_at, amount, currency));
                    }
                    subscriber.cancelled = false;
                }
                EventName::Refund => {
                    if let Some(amount) = values.gross_value.or(values.net_value).map(|a| a.minor) {
                        subscriber
                            .refunds
                            .push((event.occurred_at, amount.abs(), currency));
                    }
                }
                EventName::SubscriptionCancelled => subscriber.cancelled = true,
                _ => {}
            }
        }
        Ok(by_key.into_values().collect())
    }

    /// Scores every subscriber now and replaces yesterday's scores. Returns the count per
    /// segment.
    pub fn compute(&self, now_ms: i64) -> Result<BTreeMap<String, usize>> {
        let scores = rfm::score(&self.subscribers()?, now_ms / 1000);
        self.sql.execute(
            "DELETE FROM rfm_scores WHERE merchant_id = ?1",
            vec![self.merchant()],
        )?;
        let mut segments: BTreeMap<String, usize> = BTreeMap::new();
        for score in &scores {
            *segments.entry(score.segment.clone()).or_default() += 1;
            self.sql.execute(
                "INSERT INTO rfm_scores (merchant_id, customer_key, cohort, r, f, m, segment, recency_days, frequency, \
                   monetary, ltv, computed_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                vec![
                    self.merchant(),
                    score.key.as_str().into(),
                    score.cohort.as_str().into(),
                    i64::from(score.r).into(),
                    i64::from(score.f).into(),
                    i64::from(score.m).into(),
                    score.segment.as_str().into(),
                    score.recency_days.into(),
                    i64::from(score.frequency).into(),
                    serde_json::to_string(&score.monetary).map_err(err)?.into(),
                    score
                        .ltv
                        .as_ref()
                        .map(serde_json::to_string)
                        .transpose()
                        .map_err(err)?
                        .into(),
                    now_ms.into(),
                ],
            )?;
        }
        Ok(segments)
    }

    /// Scores, best first within each segment; `segment` filters.
    pub fn scores(&self, segment: Option<&str>, limit: i64, offset: i64) -> Result<Vec<Score>> {
        let rows = self.sql.query(
            "SELECT customer_key AS key, cohort, r, f, m, segment, recency_days, frequency, monetary, ltv \
             FROM rfm_scores WHERE merchant_id = ?1 AND (?2 IS NULL OR segment = ?2) \
             ORDER BY r + f + m DESC, customer_key LIMIT ?3 OFFSET ?4",
            vec![
                self.merchant(),
                segment.into(),
                limit.into(),
                offset.into(),
            ],
        )?;
        rows.into_iter()
            .map(|mut row| {
                for field in ["monetary", "ltv"] {
                    let parsed = row
                        .get(field)
                        .and_then(Value::as_str)
                        .and_then(|t| serde_json::from_str::<Value>(t).ok())
                        .unwrap_or(Value::Null);
                    row.insert(field.into(), parsed);
                }
                serde_json::from_value(Value::Object(row)).map_err(err)
            })
            .collect()
    }

    /// Subscribers per segment, and when they were computed.
    pub fn segments(&self) -> Result<(BTreeMap<String, i64>, Option<i64>)> {
        let rows = self.sql.query(
            "SELECT segment, count(*) AS n, max(computed_at) AS at FROM rfm_scores WHERE merchant_id = ?1 \
             GROUP BY segment",
            vec![self.merchant()],
        )?;
        let mut at = None;
        let mut counts = BTreeMap::new();
        for row in rows {
            if let (Some(segment), Some(n)) = (
                row.get("segment").and_then(Value::as_str),
                row.get("n").and_then(Value::as_i64),
            ) {
                counts.insert(segment.to_string(), n);
            }
            at = at.max(row.get("at").and_then(Value::as_i64));
        }
        Ok((counts, at))
    }

    pub fn carry_on_events(&self) -> Result<bool> {
        crate::records::rfm_carried_on_events(self.sql)
    }

    pub fn set_carry_on_events(&self, on: bool, now_ms: i64) -> Result<()> {
        self.sql.execute(
            "INSERT INTO rfm_settings (id, carry_on_events, updated_at) VALUES (1, ?1, ?2) \
             ON CONFLICT (id) DO UPDATE SET carry_on_events = excluded.carry_on_events, updated_at = excluded.updated_at",
            vec![i64::from(on).into(), now_ms.into()],
        )?;
        Ok(())
    }
}
