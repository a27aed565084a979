//! How platform API versions age: the rules that date a pinned version's sunset. Each
//! versioned destination declares its own (`DestinationSpec::versioning`, with its
//! version table where the platform publishes one).
//!
//! A default always has at least six months left; a pinned version past its sunset is
//! refused when configured; one within [`WARN_DAYS`] of its sunset is reported by the
//! daily job so the merchant sees it before requests start failing.
//!
//! Sources of the dates (checked 2026-11-30):
//! - Google Ads: developers.google.com/google-ads/api/docs/sunset-dates and the sunset
//!   reminders on the Ads developer blog (v19 2026-02-11, v20 2026-06-10, v21
//!   2026-08-05, v22 2026-10-07). Later versions have no announced date yet; Google
//!   keeps a major version about 12 months, so theirs are projected from the release
//!   date (v23 2026-01, v24 2026-04, v25 2026-07-22, v26 2026-10-14) and marked so.
//! - Meta Graph: developers.facebook.com/docs/graph-api/changelog/versions (v21.0 until
//!   2027-01-21 … v25.0 until 2028-07-29; v26.0 released 2026-07-29, date TBD).
//! - LinkedIn: each monthly `LinkedIn-Version` is supported one year (202511 sunset
//!   2026-11-16): learn.microsoft.com/linkedin/marketing/versioning.
//! - Klaviyo: a revision is retired two years after its date:
//!   developers.klaviyo.com/en/docs/api_versioning_and_deprecation_policy.

use crate::time::utc_date;

/// A version within this many days of its sunset raises a warning.
pub const WARN_DAYS: i64 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownVersion {
    pub version: &'static str,
    /// `YYYY-MM-DD`, the first day requests fail.
    pub sunset: &'static str,
    /// False when the platform has not announced the date and it is projected.
    pub announced: bool,
}

pub const fn v(version: &'static str, sunset: &'static str, announced: bool) -> KnownVersion {
    KnownVersion {
        version,
        sunset,
        announced,
    }
}

/// How a destination names its pinned version in the merchant's config, and the rule
/// that dates it: declared by the destination's spec (`DestinationSpec::versioning`).
#[derive(Debug, Clone, Copy)]
pub struct Versioning {
    pub config_field: &'static str,
    pub default: Option<&'static str>,
    pub rule: Rule,
}

#[derive(Debug, Clone, Copy)]
pub enum Rule {
    /// Listed versions; an unlisted older one (lower number) is past its sunset.
    Table(&'static [KnownVersion]),
    /// `YYYYMM`, supported one year: sunset on the 15th of the same month a year on.
    MonthlyOneYear,
    /// `YYYY-MM-DD`, retired two years after that date.
    DatedTwoYears,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lifecycle {
    Supported {
        sunset: String,
        announced: bool,
    },
    /// Within [`WARN_DAYS`] of the sunset.
    NearSunset {
        sunset: String,
        days_left: i64,
        announced: bool,
    },
    Sunset {
        sunset: String,
    },
    /// Newer than anything listed, or not a version this platform uses.
    Unknown,
}

/// The version a merchant's config pins (the default if unset).
pub fn pinned(spec: &Versioning, config: &serde_json::Value) -> Option<String> {
    config
        .get(spec.config_field)
        .and_then(serde_json::Value::as_str)
        .map(str::to_string)
        .or_else(|| spec.default.map(str::to_string))
}

pub fn lifecycle(rule: Rule, version: &str, now_s: i64) -> Lifecycle {
    let Some((sunset, announced)) = sunset_of(rule, version) else {
        return Lifecycle::Unknown;
    };
    let today = utc_date(now_s);
    if today >= sunset {
        return Lifecycle::Sunset { sunset };
    }
    let days_left = crate::time::parse_timestamp_utc(&format!("{sunset}T00:00:00Z"))
        .map(|at| (at - now_s).div_euclid(86_400) + 1)
        .unwrap_or(i64::MAX);
    if days_left <= WARN_DAYS {
        Lifecycle::NearSunset {
            sunset,
            days_left,
            announced,
        }
    } else {
        Lifecycle::Supported { sunset, announced }
    }
}

fn sunset_of(rule: Rule, version: &str) -> Option<(String, bool)> {
    match rule {
        Rule::Table(table) => {
            if let Some(known) = table.iter().find(|k| k.version == version) {
                return Some((known.sunset.to_string(), known.announced));
            }
            // Older than the oldest listed version: long gone.
            let number = version_number(version)?;
            let oldest = table
                .iter()
                .filter_map(|k| version_number(k.version))
                .min()?;
            (number < oldest).then(|| (table[0].sunset.to_string(), true))
        }
        Rule::MonthlyOneYear => {
            if version.len() != 6 || !version.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let year: i64 = version[..4].parse().ok()?;
            let month = &version[4..];
            (1..=12)
                .contains(&month.parse::<u8>().ok()?)
                .then(|| (format!("{}-{month}-15", year + 1), true))
        }
        Rule::DatedTwoYears => {
            crate::time::parse_timestamp_utc(&format!("{version}T00:00:00Z"))?;
            let year: i64 = version.get(..4)?.parse().ok()?;
            Some((format!("{}{}", year + 2, &version[4..]), true))
        }
    }
}

/// `v22` → 22, `v25.0` → 25: the major number.
fn version_number(version: &str) -> Option<u32> {
    let rest = version.strip_prefix('v')?;
    let major = rest.split_once('.').map_or(rest, |(major, _)| major);
    major.parse().ok()
}

/// Why a config pinning a sunset version is refused, if it does.
pub fn refuse_sunset(
    spec: &Versioning,
    config: &serde_json::Value,
    now_s: i64,
) -> Result<(), String> {
    let Some(version) = pinned(spec, config) else {
        return Ok(());
    };
    match lifecycle(spec.rule, &version, now_s) {
        Lifecycle::Sunset { sunset } => Err(format!(
            "{} {version} was sunset on {sunset}; pin a supported version or leave it unset for the default",
            spec.config_field
        )),
        _ => Ok(()),
    }
}

/// A warning the merchant sees for a pinned version near or past its sunset.
pub fn warning(
    destination: &str,
    spec: &Versioning,
    config: &serde_json::Value,
    now_s: i64,
) -> Option<serde_json::Value> {
    let version = pinned(spec, config)?;
    let (level, sunset, days_left) = match lifecycle(spec.rule, &version, now_s) {
        Lifecycle::NearSunset {
            sunset, days_left, ..
        } => ("warning", sunset, days_left),
        Lifecycle::Sunset { sunset } => ("error", sunset, 0),
        Lifecycle::Supported { .. } | Lifecycle::Unknown => return None,
    };
    Some(serde_json::json!({
        "destination": destination,
        "level": level,
        "field": spec.config_field,
        "version": version,
        "sunset": sunset,
        "days_left": days_left,
        "message": format!(
            "{destination} {} {version} is sunset on {sunset}: requests will fail from that day; update the pinned version",
            spec.config_field
        ),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(destination: &str) -> Versioning {
        crate::destinations::find(destination)
            .and_then(|d| d.versioning)
            .unwrap_or(Versioning {
                config_field: "api_version",
                default: None,
                rule: Rule::MonthlyOneYear,
            })
    }

    fn refuse_sunset(
        destination: &str,
        config: &serde_json::Value,
        now_s: i64,
    ) -> Result<(), String> {
        super::refuse_sunset(&spec(destination), config, now_s)
    }

    fn warning(
        destination: &str,
        config: &serde_json::Value,
        now_s: i64,
    ) -> Option<serde_json::Value> {
        super::warning(destination, &spec(destination), config, now_s)
    }

    /// 2026-11-30 12:00 UTC, the day Google's v22 had been dead for seven weeks.
    const NOW: i64 = 1_796_040_000;
    const SIX_MONTHS: i64 = 182 * 86_400;

    #[test]
    fn every_default_has_six_months_left() {
        let versioned: Vec<_> = crate::destinations::REGISTRY
            .iter()
            .filter_map(|d| d.versioning.map(|v| (d.name, v)))
            .collect();
        assert_eq!(
            versioned.len(),
            4,
            "Google Ads, Meta, LinkedIn, Klaviyo pin versions"
        );
        for (name, spec) in versioned {
            let Some(default) = spec.default else {
                continue;
            };
            match lifecycle(spec.rule, default, NOW + SIX_MONTHS) {
                Lifecycle::Supported { .. } => {}
                other => panic!("{name} default {default}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_sunset_version_is_refused_and_the_default_is_not() {
        let err = refuse_sunset("google_ads", &json!({ "api_version": "v22" }), NOW).unwrap_err();
        assert!(err.contains("2026-10-07"), "{err}");
        assert!(refuse_sunset("google_ads", &json!({ "api_version": "v18" }), NOW).is_err());
        assert!(refuse_sunset("google_ads", &json!({}), NOW).is_ok());
        assert!(refuse_sunset("meta", &json!({ "api_version": "v20.0" }), NOW).is_err());
        assert!(refuse_sunset("linkedin", &json!({ "linkedin_version": "202511" }), NOW).is_err());
        assert!(refuse_sunset("linkedin", &json!({ "linkedin_version": "202608" }), NOW).is_ok());
        assert!(refuse_sunset("klaviyo", &json!({ "revision": "2024-10-15" }), NOW).is_err());
        assert!(refuse_sunset("klaviyo", &json!({}), NOW).is_ok());
        assert!(refuse_sunset("tiktok", &json!({}), NOW).is_ok());
    }

    #[test]
    fn within_thirty_days_of_sunset_warns() {
        // Meta v21.0 is available until 2027-01-21.
        let at = NOW + 40 * 86_400; // 2027-01-09
        let near = warning("meta", &json!({ "api_version": "v21.0" }), at).unwrap();
        assert_eq!(near["level"], "warning");
        assert_eq!(near["sunset"], "2027-01-21");
        assert_eq!(near["days_left"], 12);
        assert!(warning("meta", &json!({ "api_version": "v21.0" }), NOW).is_none());
        assert!(warning("meta", &json!({}), NOW).is_none());
        assert_eq!(
            warning("google_ads", &json!({ "api_version": "v22" }), NOW).unwrap()["level"],
            "error"
        );
    }

    #[test]
    fn unknown_newer_versions_are_not_refused() {
        assert_eq!(
            lifecycle(
                Rule::Table(crate::destinations::google_ads::VERSIONS),
                "v27",
                NOW
            ),
            Lifecycle::Unknown
        );
        assert!(refuse_sunset("google_ads", &json!({ "api_version": "v27" }), NOW).is_ok());
    }
}
