//! How long each kind of data is kept. The daily job deletes what is older, in every
//! region; operators set the windows with `RETENTION_*_DAYS` worker vars.

/// Every regional table holding a merchant's rows, children before parents: what
/// deleting a merchant clears (a test checks this against the migrations).
pub const MERCHANT_REGIONAL_TABLES: [&str; 3] =
    ["merchant_sources", "merchant_destinations", "merchants"];

/// Every global table keyed by merchant, the routing row last.
pub const MERCHANT_GLOBAL_TABLES: [&str; 5] = [
    "api_keys",
    "rejected_requests",
    "pixel_keys",
    "merchant_warnings",
    "merchant_routes",
];

/// Days to keep each kind of data. 0 keeps it forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub events_days: u32,
    pub attempts_days: u32,
    pub dead_letters_days: u32,
    pub ignored_days: u32,
    pub customers_days: u32,
    pub rejected_days: u32,
    /// Click ids and cookies captured at signup, for long-window attribution.
    pub identity_days: u32,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            events_days: 400,
            attempts_days: 90,
            dead_letters_days: 180,
            ignored_days: 30,
            customers_days: 730,
            rejected_days: 30,
            identity_days: 180,
        }
    }
}

/// One regional purge: delete rows of `table` whose `column` (unix ms) is before `cutoff_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purge {
    pub table: &'static str,
    pub column: &'static str,
    pub cutoff_ms: i64,
    /// Further condition a row must meet to go.
    pub only_if: Option<&'static str>,
}

const DAY_MS: i64 = 86_400_000;

impl RetentionPolicy {
    /// Reads `RETENTION_<KIND>_DAYS` through `var`; unset or unparsable keeps the default.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let defaults = RetentionPolicy::default();
        let days = |name: &str, default: u32| {
            var(name)
                .and_then(|v| v.trim().parse::<u32>().ok())
                .unwrap_or(default)
        };
        RetentionPolicy {
            events_days: days("RETENTION_EVENTS_DAYS", defaults.events_days),
            attempts_days: days("RETENTION_ATTEMPTS_DAYS", defaults.attempts_days),
            dead_letters_days: days("RETENTION_DEAD_LETTERS_DAYS", defaults.dead_letters_days),
            ignored_days: days("RETENTION_IGNORED_DAYS", defaults.ignored_days),
            customers_days: days("RETENTION_CUSTOMERS_DAYS", defaults.customers_days),
            rejected_days: days("RETENTION_REJECTED_DAYS", defaults.rejected_days),
            identity_days: days("RETENTION_IDENTITY_DAYS", defaults.identity_days),
        }
    }

    /// The purges due at `now_ms` in a merchant's object. An event's deliveries live in
    /// its row and go with it; an event with a delivery still pending is never purged
    /// (its job is on a queue). Attempts are logs and follow their own window.
    pub fn regional_purges(&self, now_ms: i64) -> Vec<Purge> {
        let rules: [(u32, &'static str, &'static str); 15] = [
            (self.events_days, "canonical_events", "received_at"),
            (self.attempts_days, "attempt_log", "attempted_at"),
            (self.dead_letters_days, "dead_letters", "dead_lettered_at"),
            (self.ignored_days, "ignored_events", "received_at"),
            (self.customers_days, "customers", "updated_at"),
            (self.customers_days, "crm_context", "updated_at"),
            (self.identity_days, "identities", "updated_at"),
            (self.identity_days, "identity_links", "linked_at"),
            (self.identity_days, "intent_activity", "at_ms"),
            (self.identity_days, "intent_signals", "at_ms"),
            (self.identity_days, "intent_visitors", "last_seen"),
            (self.identity_days, "intent_alerts", "created_at"),
            (self.identity_days, "seed_uploads", "uploaded_at"),
            (self.events_days, "seed_runs", "started_at"),
            (self.customers_days, "rfm_scores", "computed_at"),
        ];
        rules
            .into_iter()
            .filter(|(days, _, _)| *days > 0)
            .map(|(days, table, column)| Purge {
                table,
                column,
                cutoff_ms: now_ms.saturating_sub(i64::from(days) * DAY_MS),
                only_if: (table == "canonical_events").then_some("pending = 0"),
            })
            .collect()
    }

    /// Cutoff for the global rejected-request counts, if they expire.
    pub fn rejected_cutoff(&self, now_ms: i64) -> Option<i64> {
        (self.rejected_days > 0)
            .then(|| now_ms.saturating_sub(i64::from(self.rejected_days) * DAY_MS))
    }
}

#[cfg(test)]
mod schema_tests {
    use super::*;
    use std::collections::BTreeMap;

    /// The tables each migration directory leaves, with their columns: every file
    /// applied in order to an empty SQLite, as wrangler applies them.
    fn schema(dir: &str) -> BTreeMap<String, Vec<String>> {
        let path = format!("{}/migrations/{dir}", env!("CARGO_MANIFEST_DIR"));
        let mut files: Vec<_> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "sql"))
            .collect();
        files.sort();
        let db = rusqlite::Connection::open_in_memory().unwrap();
        for file in files {
            let sql = std::fs::read_to_string(&file).unwrap();
            db.execute_batch(&sql)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        }
        let names: Vec<String> = db
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        names
            .into_iter()
            .map(|name| {
                let columns = db
                    .prepare(&format!("SELECT name FROM pragma_table_info('{name}')"))
                    .unwrap()
                    .query_map([], |r| r.get(0))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect();
                (name, columns)
            })
            .collect()
    }

    fn with_merchant_id(dir: &str) -> Vec<String> {
        schema(dir)
            .into_iter()
            .filter(|(_, columns)| columns.iter().any(|c| c == "merchant_id"))
            .map(|(name, _)| name)
            .collect()
    }

    /// A table added by a migration and forgotten here would keep a deleted merchant's
    /// rows for ever.
    #[test]
    fn merchant_deletion_clears_every_table_that_holds_merchant_rows() {
        let mut regional: Vec<String> = MERCHANT_REGIONAL_TABLES
            .iter()
            .map(|t| t.to_string())
            .collect();
        regional.sort();
        assert_eq!(regional, with_merchant_id("regional"));
        let mut global: Vec<String> = MERCHANT_GLOBAL_TABLES
            .iter()
            .map(|t| t.to_string())
            .collect();
        global.sort();
        assert_eq!(global, with_merchant_id("global"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vars_override_defaults_and_zero_keeps_forever() {
        let policy = RetentionPolicy::from_vars(|name| match name {
            "RETENTION_EVENTS_DAYS" => Some("0".into()),
            "RETENTION_ATTEMPTS_DAYS" => Some("7".into()),
            "RETENTION_IGNORED_DAYS" => Some("soon".into()),
            _ => None,
        });
        assert_eq!(policy.attempts_days, 7);
        assert_eq!(policy.ignored_days, 30);
        let now = 100 * DAY_MS;
        let purges = policy.regional_purges(now);
        assert!(purges.iter().all(|p| p.table != "canonical_events"));
        let attempts = purges.iter().find(|p| p.table == "attempt_log").unwrap();
        assert_eq!(attempts.cutoff_ms, 93 * DAY_MS);
        let events = RetentionPolicy::default().regional_purges(now);
        let events = events
            .iter()
            .find(|p| p.table == "canonical_events")
            .unwrap();
        assert_eq!(events.only_if, Some("pending = 0"));
        assert_eq!(policy.rejected_cutoff(now), Some(70 * DAY_MS));
    }
}
