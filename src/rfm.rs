//! RFM segments and a predicted LTV per subscriber, computed daily from the merchant's
//! own billing events. Pure: the object gathers each subscriber's payments, this scores
//! them within their signup-month cohort and explains every number it predicts.
//!
//! - Recency: days since the last successful payment. Frequency: paid periods (starts,
//!   trial conversions, renewals, reactivations). Monetary: net revenue to date, per
//!   currency, never converted (refunds subtract).
//! - Each is scored 1–5 by quintile within the subscriber's signup-month cohort (the
//!   most recent, most frequent, highest paying get 5); monetary is ranked among the
//!   cohort's subscribers paying in the same currency.
//! - Segments, first rule that matches: `lost` (cancelled, or R = 1 with F ≤ 2),
//!   `champions` (R ≥ 4, F ≥ 4, M ≥ 4), `loyal` (R ≥ 3, F ≥ 4), `at_risk` (R ≤ 2,
//!   F ≥ 3), `hibernating` (R ≤ 2), `new` (F = 1), else `promising`.
//! - Predicted LTV = ARPA × expected lifetime, per currency: ARPA is the cohort's net
//!   revenue per paid period; the monthly churn is the cohort's cancellations over its
//!   subscriber-months observed; the expected lifetime is 1 / churn months, capped at
//!   60 when nobody in the cohort churned yet.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const DAY_S: i64 = 86_400;
const MONTH_S: f64 = 30.4375 * 86_400.0;
pub const MAX_LIFETIME_MONTHS: f64 = 60.0;

/// One subscriber's billing history, as the object gathers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscriber {
    /// `customer:<id>` (or `email:<address>` when the source has no customer id).
    pub key: String,
    pub first_seen_s: i64,
    /// (time, net amount in minor units, currency) of each paid period.
    pub payments: Vec<(i64, i64, String)>,
    /// (time, amount in minor units, currency) of each refund.
    pub refunds: Vec<(i64, i64, String)>,
    pub cancelled: bool,
}

impl Subscriber {
    fn first_paid_s(&self) -> Option<i64> {
        self.payments.iter().map(|(at, _, _)| *at).min()
    }

    fn last_paid_s(&self) -> Option<i64> {
        self.payments.iter().map(|(at, _, _)| *at).max()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LtvModel {
    pub currency: String,
    /// Net revenue per paid period in the cohort, major units.
    pub arpa: f64,
    pub monthly_churn: f64,
    pub expected_lifetime_months: f64,
    pub predicted_ltv: f64,
    pub cohort: String,
    pub cohort_size: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub key: String,
    pub cohort: String,
    pub recency_days: Option<i64>,
    pub frequency: u32,
    /// Currency → net revenue to date, major units.
    pub monetary: BTreeMap<String, f64>,
    pub r: u8,
    pub f: u8,
    pub m: u8,
    pub segment: String,
    pub ltv: Option<LtvModel>,
}

fn month_of(unix_s: i64) -> String {
    crate::time::utc_date(unix_s)
        .get(..7)
        .unwrap_or_default()
        .to_string()
}

/// 1–5 by quintile of `value` among `all` (higher is better).
fn quintile(value: f64, all: &[f64]) -> u8 {
    if all.len() <= 1 {
        return 3;
    }
    let below = all.iter().filter(|v| **v < value).count();
    let equal = all.iter().filter(|v| **v == value).count();
    // The midpoint rank of ties, as a fraction of the cohort.
    let rank = (below as f64 + (equal as f64 - 1.0) / 2.0) / (all.len() as f64 - 1.0);
    ((rank * 5.0).floor() as u8 + 1).min(5)
}

/// The subscriber's main currency: the one it paid most periods in.
fn main_currency(subscriber: &Subscriber) -> Option<String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, _, currency) in &subscriber.payments {
        *counts.entry(currency).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(c, _)| c.to_string())
}

fn net_by_currency(subscriber: &Subscriber) -> BTreeMap<String, i64> {
    let mut net: BTreeMap<String, i64> = BTreeMap::new();
    for (_, amount, currency) in &subscriber.payments {
        *net.entry(currency.clone()).or_default() += amount;
    }
    for (_, amount, currency) in &subscriber.refunds {
        *net.entry(currency.clone()).or_default() -= amount.abs();
    }
    net
}

fn minor_to_major(minor: i64, currency: &str) -> f64 {
    let digits = crate::money::currency_exponent(currency);
    minor as f64 / 10f64.powi(digits as i32)
}

fn segment(r: u8, f: u8, m: u8, cancelled: bool) -> &'static str {
    if cancelled || (r == 1 && f <= 2) {
        "lost"
    } else if r >= 4 && f >= 4 && m >= 4 {
        "champions"
    } else if r >= 3 && f >= 4 {
        "loyal"
    } else if r <= 2 && f >= 3 {
        "at_risk"
    } else if r <= 2 {
        "hibernating"
    } else if f == 1 {
        "new"
    } else {
        "promising"
    }
}

/// Scores every subscriber at `now_s`.
pub fn score(subscribers: &[Subscriber], now_s: i64) -> Vec<Score> {
    let mut cohorts: BTreeMap<String, Vec<&Subscriber>> = BTreeMap::new();
    for subscriber in subscribers {
        let first_paid = subscriber.first_paid_s().unwrap_or(subscriber.first_seen_s);
        cohorts
            .entry(month_of(first_paid.min(subscriber.first_seen_s)))
            .or_default()
            .push(subscriber);
    }
    let mut scores = Vec::new();
    for (cohort, members) in &cohorts {
        let recency = |s: &Subscriber| s.last_paid_s().map(|last| ((now_s - last).max(0)) / DAY_S);
        // Recency: fewer days is better, so rank the negation; never paid ranks last.
        let recencies: Vec<f64> = members
            .iter()
            .map(|s| recency(s).map_or(f64::MIN, |d| -(d as f64)))
            .collect();
        let frequencies: Vec<f64> = members.iter().map(|s| s.payments.len() as f64).collect();
        // Churn and ARPA per currency over the cohort.
        let mut periods: BTreeMap<String, (i64, u64)> = BTreeMap::new();
        let mut months_observed = 0.0;
        let mut cancelled = 0usize;
        for s in members {
            for (_, amount, currency) in &s.payments {
                let entry = periods.entry(currency.clone()).or_default();
                entry.0 += amount;
                entry.1 += 1;
            }
            for (_, amount, currency) in &s.refunds {
                periods.entry(currency.clone()).or_default().0 -= amount.abs();
            }
            let start = s.first_paid_s().unwrap_or(s.first_seen_s);
            let end = if s.cancelled {
                s.last_paid_s().unwrap_or(start)
            } else {
                now_s
            };
            months_observed += ((end - start).max(0) as f64 / MONTH_S).max(1.0);
            cancelled += usize::from(s.cancelled);
        }
        let monthly_churn = if months_observed > 0.0 {
            cancelled as f64 / months_observed
        } else {
            0.0
        };
        let lifetime = if monthly_churn > 0.0 {
            (1.0 / monthly_churn).min(MAX_LIFETIME_MONTHS)
        } else {
            MAX_LIFETIME_MONTHS
        };
        // Each member's net revenue in its main currency, computed once for the cohort.
        let currencies: Vec<Option<String>> = members.iter().map(|s| main_currency(s)).collect();
        let nets: Vec<BTreeMap<String, i64>> = members.iter().map(|s| net_by_currency(s)).collect();
        let net_in_main = |j: usize| -> f64 {
            currencies[j]
                .as_ref()
                .map_or(0.0, |c| *nets[j].get(c).unwrap_or(&0) as f64)
        };
        let mut peers_by_currency: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for (j, currency) in currencies.iter().enumerate() {
            if let Some(currency) = currency {
                peers_by_currency
                    .entry(currency.as_str())
                    .or_default()
                    .push(net_in_main(j));
            }
        }
        for (i, subscriber) in members.iter().enumerate() {
            let net = &nets[i];
            let currency = &currencies[i];
            let m = match currency {
                Some(currency) => peers_by_currency
                    .get(currency.as_str())
                    .map_or(1, |peers| quintile(net_in_main(i), peers)),
                None => 1,
            };
            let r = if recency(subscriber).is_some() {
                quintile(recencies[i], &recencies)
            } else {
                1
            };
            let f = if subscriber.payments.is_empty() {
                1
            } else {
                quintile(frequencies[i], &frequencies)
            };
            let ltv = currency.as_ref().and_then(|currency| {
                let (total, count) = periods.get(currency)?;
                (*count > 0).then(|| {
                    let arpa = minor_to_major(*total, currency) / *count as f64;
                    LtvModel {
                        currency: currency.clone(),
                        arpa: (arpa * 100.0).round() / 100.0,
                        monthly_churn: (monthly_churn * 10_000.0).round() / 10_000.0,
                        expected_lifetime_months: (lifetime * 10.0).round() / 10.0,
                        predicted_ltv: (arpa * lifetime * 100.0).round() / 100.0,
                        cohort: cohort.clone(),
                        cohort_size: members.len(),
                    }
                })
            });
            scores.push(Score {
                key: subscriber.key.clone(),
                cohort: cohort.clone(),
                recency_days: recency(subscriber),
                frequency: subscriber.payments.len() as u32,
                monetary: net
                    .iter()
                    .map(|(c, minor)| (c.clone(), minor_to_major(*minor, c)))
                    .collect(),
                r,
                f,
                m,
                segment: segment(r, f, m, subscriber.cancelled).to_string(),
                ltv: if subscriber.cancelled { None } else { ltv },
            });
        }
    }
    scores
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_796_040_000; // 2026-11-30 12:00 UTC
    const JUNE: i64 = 1_780_272_000; // 2026-06-01

    fn subscriber(
        key: &str,
        months_paid: i64,
        last_paid_days_ago: i64,
        amount: i64,
        cancelled: bool,
    ) -> Subscriber {
        let payments = (0..months_paid)
            .map(|i| {
                let at = NOW - last_paid_days_ago * DAY_S - (months_paid - 1 - i) * 30 * DAY_S;
                (at.max(JUNE), amount, "usd".to_string())
            })
            .collect();
        Subscriber {
            key: key.into(),
            first_seen_s: JUNE,
            payments,
            refunds: vec![],
            cancelled,
        }
    }

    /// A hand-computed June cohort of five:
    ///
    /// | key | paid | last paid | net   | R | F | M | segment   |
    /// |-----|------|-----------|-------|---|---|---|-----------|
    /// | a   | 6    | 2 d       | 294   | 5 | 5 | 5 | champions |
    /// | b   | 5    | 5 d       | 245   | 4 | 4 | 4 | champions |
    /// | c   | 4    | 40 d      | 196   | 3 | 3 | 3 | promising |
    /// | d   | 3    | 70 d      | 147   | 2 | 2 | 2 | hibernating |
    /// | e   | 1    | 150 d     | 49    | 1 | 1 | 1 | lost (cancelled) |
    ///
    /// Quintiles of five distinct values are 1..5. Churn: 1 cancellation over the
    /// subscriber-months observed; ARPA: 931 / 19 periods = 49.00.
    #[test]
    fn a_hand_computed_cohort_scores_and_segments() {
        let cohort = vec![
            subscriber("customer:a", 6, 2, 4900, false),
            subscriber("customer:b", 5, 5, 4900, false),
            subscriber("customer:c", 4, 40, 4900, false),
            subscriber("customer:d", 3, 70, 4900, false),
            subscriber("customer:e", 1, 150, 4900, true),
        ];
        let scores = score(&cohort, NOW);
        let table: Vec<(&str, u8, u8, u8, &str)> = scores
            .iter()
            .map(|s| (s.key.as_str(), s.r, s.f, s.m, s.segment.as_str()))
            .collect();
        assert_eq!(
            table,
            [
                ("customer:a", 5, 5, 5, "champions"),
                ("customer:b", 4, 4, 4, "champions"),
                ("customer:c", 3, 3, 3, "promising"),
                ("customer:d", 2, 2, 2, "hibernating"),
                ("customer:e", 1, 1, 1, "lost"),
            ]
        );
        let a = &scores[0];
        assert_eq!(a.cohort, "2026-06");
        assert_eq!(a.recency_days, Some(2));
        assert_eq!(a.frequency, 6);
        assert_eq!(a.monetary["usd"], 294.0);
        let ltv = a.ltv.as_ref().unwrap();
        assert_eq!(ltv.arpa, 49.0);
        assert_eq!(ltv.cohort_size, 5);
        assert!(ltv.monthly_churn > 0.0);
        // ARPA × lifetime (the lifetime shown is rounded to a tenth of a month).
        assert!(
            (ltv.predicted_ltv / 49.0 - ltv.expected_lifetime_months).abs() < 0.05,
            "{ltv:?}"
        );
        assert!(scores[4].ltv.is_none(), "no LTV for a churned subscriber");
    }

    #[test]
    fn refunds_subtract_and_currencies_are_never_mixed() {
        let mut eur = subscriber("customer:eur", 2, 3, 9900, false);
        for p in &mut eur.payments {
            p.2 = "eur".into();
        }
        let mut refunded = subscriber("customer:usd", 2, 3, 4900, false);
        refunded.refunds.push((NOW - DAY_S, 4900, "usd".into()));
        let scores = score(&[eur, refunded], NOW);
        assert_eq!(
            scores[0].monetary,
            BTreeMap::from([("eur".to_string(), 198.0)])
        );
        assert_eq!(
            scores[1].monetary,
            BTreeMap::from([("usd".to_string(), 49.0)])
        );
        assert_eq!(scores[0].ltv.as_ref().unwrap().currency, "eur");
        // No churn yet: the lifetime is the cap, said so in the model.
        assert_eq!(
            scores[0].ltv.as_ref().unwrap().expected_lifetime_months,
            60.0
        );
    }
}
