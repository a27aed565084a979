//! Refused requests, counted in memory per isolate and written as one batch of
//! per-minute counters: a flood of refused requests must not become a flood of writes
//! to the global database. Memory is bounded; what does not fit is counted in one
//! overflow bucket, never dropped silently.

use std::collections::BTreeMap;

/// Keys kept per isolate between flushes.
pub const MAX_KEYS: usize = 512;
/// The bucket for requests naming no merchant we know, and for overflow: rows are never
/// keyed by an id a caller made up.
pub const NO_MERCHANT: &str = "";
pub const OVERFLOW_CODE: &str = "overflow";
/// How long counts wait in memory before they are written.
pub const FLUSH_AFTER_MS: i64 = 5_000;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RejectionKey {
    pub merchant_id: String,
    pub route: String,
    pub code: String,
    /// Start of the minute, unix ms.
    pub minute: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectionCount {
    pub status: u16,
    pub count: i64,
    pub last_message: String,
    pub last_at: i64,
}

#[derive(Debug, Default)]
pub struct RejectionBuffer {
    counts: BTreeMap<RejectionKey, RejectionCount>,
    first_at: Option<i64>,
}

impl RejectionBuffer {
    /// Counts one refusal. `merchant_id` is [`NO_MERCHANT`] when the request named no
    /// merchant we know: callers never pass an id a caller made up. Returns true when
    /// this is the first count since the last flush (the caller schedules one).
    pub fn record(
        &mut self,
        merchant_id: &str,
        route: &str,
        status: u16,
        code: &str,
        message: &str,
        now_ms: i64,
    ) -> bool {
        let mut key = RejectionKey {
            merchant_id: merchant_id.chars().take(64).collect(),
            route: route.chars().take(64).collect(),
            code: code.to_string(),
            minute: now_ms / 60_000 * 60_000,
        };
        if !self.counts.contains_key(&key) && self.counts.len() >= MAX_KEYS {
            key = RejectionKey {
                merchant_id: NO_MERCHANT.to_string(),
                route: "*".into(),
                code: OVERFLOW_CODE.into(),
                minute: key.minute,
            };
        }
        let entry = self.counts.entry(key).or_insert(RejectionCount {
            status,
            count: 0,
            last_message: String::new(),
            last_at: now_ms,
        });
        entry.count += 1;
        entry.status = status;
        entry.last_message = message.chars().take(300).collect();
        entry.last_at = now_ms;
        let first = self.first_at.is_none();
        self.first_at.get_or_insert(now_ms);
        first
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Everything counted so far, leaving the buffer empty.
    pub fn drain(&mut self) -> Vec<(RejectionKey, RejectionCount)> {
        self.first_at = None;
        std::mem::take(&mut self.counts).into_iter().collect()
    }

    /// Puts counts back after a failed write, so they are not lost.
    pub fn restore(&mut self, rows: Vec<(RejectionKey, RejectionCount)>, now_ms: i64) {
        for (key, count) in rows {
            let entry = self.counts.entry(key).or_insert(RejectionCount {
                count: 0,
                ..count.clone()
            });
            entry.count += count.count;
        }
        self.first_at.get_or_insert(now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_naming_no_known_merchant_is_one_counter_row() {
        let mut buffer = RejectionBuffer::default();
        let mut first_flags = 0;
        // The edge counts a request naming no merchant it knows under NO_MERCHANT.
        for i in 0..2_699 {
            if buffer.record(
                NO_MERCHANT,
                "webhook:stripe",
                401,
                "unauthenticated",
                "x",
                1_000 + i,
            ) {
                first_flags += 1;
            }
        }
        let rows = buffer.drain();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].0.merchant_id, NO_MERCHANT);
        assert_eq!(rows[0].1.count, 2_699);
        assert_eq!(first_flags, 1);
        assert!(buffer.is_empty());
    }

    #[test]
    fn memory_is_bounded_and_overflow_is_counted() {
        let mut buffer = RejectionBuffer::default();
        for i in 0..(MAX_KEYS as i64 + 100) {
            buffer.record("m1", &format!("route{i}"), 400, "bad", "", 0);
        }
        let rows = buffer.drain();
        assert_eq!(rows.len(), MAX_KEYS + 1);
        let overflow = rows.iter().find(|(k, _)| k.code == OVERFLOW_CODE).unwrap();
        assert_eq!(overflow.1.count, 100);
        let total: i64 = rows.iter().map(|(_, c)| c.count).sum();
        assert_eq!(total, MAX_KEYS as i64 + 100);
    }

    #[test]
    fn a_failed_write_keeps_the_counts() {
        let mut buffer = RejectionBuffer::default();
        buffer.record("m1", "r", 401, "c", "", 0);
        let rows = buffer.drain();
        buffer.record("m1", "r", 401, "c", "", 1);
        buffer.restore(rows, 2);
        assert_eq!(buffer.drain()[0].1.count, 2);
    }
}
