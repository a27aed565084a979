//! A merchant's authenticated ingest rate, counted by its Durable Object.
//!
//! Every signed webhook and API-keyed product-event request already makes exactly one
//! call to the merchant's object, which runs that merchant's requests one at a time, so
//! the object counts them itself: no rate-limiter call per request, and one count per
//! merchant rather than one per Cloudflare location. The count lives in the object's
//! memory; an evicted object starts a fresh window, which errs toward accepting
//! webhooks (losing them is worse than a late limit).

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The window the limit is stated over (and the `Retry-After` a refusal carries).
pub const PERIOD_SECONDS: u32 = 60;
const PERIOD_MS: i64 = PERIOD_SECONDS as i64 * 1000;

/// Requests per period per merchant and route family unless the operator sets
/// `INGEST_RATE_LIMIT`.
pub const DEFAULT_LIMIT: u32 = 600;

/// The route families with separate budgets: a burst of product events never spends
/// what billing webhooks need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IngestRoute {
    Webhook,
    ProductEvents,
}

/// The operator's limit from `INGEST_RATE_LIMIT`; anything unreadable or zero keeps
/// the default (a typo must not refuse every webhook).
pub fn limit_from(var: Option<&str>) -> u32 {
    var.and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|limit| *limit > 0)
        .unwrap_or(DEFAULT_LIMIT)
}

#[derive(Debug, Clone, Copy)]
struct Window {
    /// Start of the current fixed window (a multiple of the period).
    start_ms: i64,
    current: u32,
    previous: u32,
}

/// Sliding-window counters, as Workers rate limiting counts: the current window's
/// requests plus the previous window's, weighted by the share of it still inside the
/// last period. Refused requests are not counted, so a sender that backs off gets its
/// budget back as the window slides.
#[derive(Debug, Default)]
pub struct IngestRate {
    windows: HashMap<IngestRoute, Window>,
}

impl IngestRate {
    /// Whether one more request on `route` fits `limit` per period at `now_ms`;
    /// counts it if so.
    pub fn admit(&mut self, route: IngestRoute, limit: u32, now_ms: i64) -> bool {
        let start_ms = now_ms - now_ms.rem_euclid(PERIOD_MS);
        let window = self.windows.entry(route).or_insert(Window {
            start_ms,
            current: 0,
            previous: 0,
        });
        if start_ms != window.start_ms {
            let previous = if start_ms - window.start_ms == PERIOD_MS {
                window.current
            } else {
                0
            };
            *window = Window {
                start_ms,
                current: 0,
                previous,
            };
        }
        let still_inside = (PERIOD_MS - (now_ms - start_ms)) as f64 / PERIOD_MS as f64;
        let estimate = f64::from(window.previous) * still_inside + f64::from(window.current);
        if estimate + 1.0 > f64::from(limit) {
            return false;
        }
        window.current += 1;
        true
    }

    /// Forgets every count.
    pub fn clear(&mut self) {
        self.windows.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60_000;

    fn admitted(rate: &mut IngestRate, route: IngestRoute, limit: u32, now: i64, n: u32) -> u32 {
        (0..n).filter(|_| rate.admit(route, limit, now)).count() as u32
    }

    #[test]
    fn admits_up_to_the_limit_then_refuses() {
        let mut rate = IngestRate::default();
        let now = 10 * MINUTE + 5_000;
        assert_eq!(admitted(&mut rate, IngestRoute::Webhook, 5, now, 5), 5);
        assert!(!rate.admit(IngestRoute::Webhook, 5, now));
        assert!(!rate.admit(IngestRoute::Webhook, 5, now + 50_000));
    }

    #[test]
    fn route_families_have_separate_budgets() {
        let mut rate = IngestRate::default();
        let now = 3 * MINUTE;
        assert_eq!(admitted(&mut rate, IngestRoute::Webhook, 3, now, 3), 3);
        assert!(!rate.admit(IngestRoute::Webhook, 3, now));
        assert_eq!(
            admitted(&mut rate, IngestRoute::ProductEvents, 3, now, 3),
            3
        );
    }

    #[test]
    fn the_previous_window_counts_by_the_share_still_inside_the_period() {
        let mut rate = IngestRate::default();
        // 10 requests late in one minute, limit 10.
        assert_eq!(
            admitted(&mut rate, IngestRoute::Webhook, 10, 5 * MINUTE + 59_000, 10),
            10
        );
        // A quarter into the next minute, three quarters of them still count (7.5):
        // two more fit, a third would reach 10.5.
        let quarter = 6 * MINUTE + 15_000;
        assert_eq!(admitted(&mut rate, IngestRoute::Webhook, 10, quarter, 5), 2);
        // At the end of that minute almost nothing of the earlier one is left.
        let late = 6 * MINUTE + 59_000;
        assert_eq!(admitted(&mut rate, IngestRoute::Webhook, 10, late, 10), 7);
    }

    #[test]
    fn refused_requests_do_not_spend_the_budget_and_it_returns() {
        let mut rate = IngestRate::default();
        let now = 20 * MINUTE;
        assert_eq!(admitted(&mut rate, IngestRoute::Webhook, 4, now, 4), 4);
        // A sender hammering while over the limit does not push its recovery further.
        assert_eq!(
            admitted(&mut rate, IngestRoute::Webhook, 4, now + 1_000, 100),
            0
        );
        // Two minutes on, nothing of the first window is inside the period.
        assert_eq!(
            admitted(&mut rate, IngestRoute::Webhook, 4, now + 2 * MINUTE, 4),
            4
        );
    }

    #[test]
    fn clear_forgets_the_counts() {
        let mut rate = IngestRate::default();
        assert_eq!(admitted(&mut rate, IngestRoute::Webhook, 2, MINUTE, 3), 2);
        rate.clear();
        assert!(rate.admit(IngestRoute::Webhook, 2, MINUTE));
    }

    #[test]
    fn the_operator_limit_falls_back_to_the_default_when_unreadable() {
        assert_eq!(limit_from(None), DEFAULT_LIMIT);
        assert_eq!(limit_from(Some("1200")), 1200);
        assert_eq!(limit_from(Some(" 50 ")), 50);
        assert_eq!(limit_from(Some("0")), DEFAULT_LIMIT);
        assert_eq!(limit_from(Some("lots")), DEFAULT_LIMIT);
    }
}
