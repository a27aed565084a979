//! Exact money arithmetic: integer minor units in, decimal major units out.
//!
//! Floats never touch stored values; they appear only at the edge of a destination
//! payload whose documented type is a JSON number.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// ISO-4217 codes whose minor unit differs from 2 decimals (Stripe's and Paddle's lists).
const ZERO_DECIMAL: &[&str] = &[
    "BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX", "VND", "VUV",
    "XAF", "XOF", "XPF",
];
const THREE_DECIMAL: &[&str] = &["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"];

/// Decimal places of a currency's minor unit. Unknown codes default to 2.
pub fn currency_exponent(code: &str) -> u32 {
    let upper = code.to_ascii_uppercase();
    if ZERO_DECIMAL.contains(&upper.as_str()) {
        0
    } else if THREE_DECIMAL.contains(&upper.as_str()) {
        3
    } else {
        2
    }
}

/// An exact decimal amount: `minor / 10^exponent` major units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Amount {
    pub minor: i64,
    pub exponent: u32,
}

impl Amount {
    pub fn from_minor(minor: i64, currency: &str) -> Self {
        Amount {
            minor,
            exponent: currency_exponent(currency),
        }
    }

    pub fn zero(currency: &str) -> Self {
        Self::from_minor(0, currency)
    }

    pub fn negated(self) -> Self {
        Amount {
            minor: self.minor.saturating_neg(),
            ..self
        }
    }

    pub fn is_zero(self) -> bool {
        self.minor == 0
    }

    /// For destination payloads whose schema is a JSON number. Exact for every amount
    /// below 2^53 minor units, which covers any real subscription price.
    pub fn as_f64(self) -> f64 {
        self.to_string().parse().unwrap_or(0.0)
    }

    /// Parses a major-unit decimal string as sent by Recharge ("42.00") or Pipedrive
    /// (42.5) into the currency's minor units, exactly. More decimals than the currency
    /// has are refused unless they are zeros: no silent rounding of money.
    pub fn from_major_str(text: &str, currency: &str) -> Option<Self> {
        let parsed = Amount::parse_decimal(text.trim())?;
        let exponent = currency_exponent(currency);
        let minor = if parsed.exponent <= exponent {
            parsed
                .minor
                .checked_mul(10i64.checked_pow(exponent - parsed.exponent)?)?
        } else {
            let scale = 10i64.checked_pow(parsed.exponent - exponent)?;
            if parsed.minor % scale != 0 {
                return None;
            }
            parsed.minor / scale
        };
        Some(Amount { minor, exponent })
    }

    /// Parses the canonical decimal form ("49.00", "-1200", "3.250").
    pub fn parse_decimal(text: &str) -> Option<Self> {
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        if whole.is_empty()
            || !whole.bytes().all(|b| b.is_ascii_digit())
            || !fraction.bytes().all(|b| b.is_ascii_digit())
            || fraction.len() > 6
        {
            return None;
        }
        let exponent = fraction.len() as u32;
        let magnitude: i64 = format!("{whole}{fraction}").parse().ok()?;
        Some(Amount {
            minor: if negative { -magnitude } else { magnitude },
            exponent,
        })
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.minor < 0 { "-" } else { "" };
        let magnitude = self.minor.unsigned_abs();
        if self.exponent == 0 {
            return write!(f, "{sign}{magnitude}");
        }
        let scale = 10u64.pow(self.exponent);
        write!(
            f,
            "{sign}{}.{:0width$}",
            magnitude / scale,
            magnitude % scale,
            width = self.exponent as usize
        )
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Amount::parse_decimal(&text).ok_or_else(|| serde::de::Error::custom("not a decimal amount"))
    }
}

/// A recurring billing interval, as billing systems express it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interval {
    Day,
    Week,
    Month,
    Year,
}

impl Interval {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "day" => Some(Interval::Day),
            "week" => Some(Interval::Week),
            "month" => Some(Interval::Month),
            "year" => Some(Interval::Year),
            _ => None,
        }
    }

    /// Billing periods of length one in a year (365-day year, 52-week year).
    fn periods_per_year(self) -> i128 {
        match self {
            Interval::Day => 365,
            Interval::Week => 52,
            Interval::Month => 12,
            Interval::Year => 1,
        }
    }
}

/// Recurring revenue of one price, normalised from its billing period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recurring {
    pub mrr_minor: i64,
    pub arr_minor: i64,
}

/// `amount_per_period_minor` billed every `interval_count` × `interval`.
/// ARR is exact for whole-year periods; MRR is ARR / 12, rounded half away from zero
/// to the currency's minor unit, so yearly 1000.00 gives ARR 1000.00 and MRR 83.33.
pub fn recurring_from_period(
    amount_per_period_minor: i64,
    interval: Interval,
    interval_count: u32,
) -> Option<Recurring> {
    if interval_count == 0 {
        return None;
    }
    let numerator = amount_per_period_minor as i128 * interval.periods_per_year();
    let count = interval_count as i128;
    let arr = div_round_half_away(numerator, count);
    let mrr = div_round_half_away(numerator, count * 12);
    Some(Recurring {
        mrr_minor: i64::try_from(mrr).ok()?,
        arr_minor: i64::try_from(arr).ok()?,
    })
}

fn div_round_half_away(numerator: i128, denominator: i128) -> i128 {
    let quotient = numerator / denominator;
    let remainder = numerator % denominator;
    if remainder.abs() * 2 >= denominator.abs() {
        quotient + numerator.signum() * denominator.signum()
    } else {
        quotient
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_unit_strings_become_exact_minor_units() {
        let usd = |t| Amount::from_major_str(t, "USD").map(|a| a.minor);
        assert_eq!(usd("42.00"), Some(4200));
        assert_eq!(usd("42"), Some(4200));
        assert_eq!(usd("42.5"), Some(4250));
        assert_eq!(usd("0.10"), Some(10));
        assert_eq!(usd("42.000"), Some(4200));
        assert_eq!(usd("42.001"), None);
        assert_eq!(usd("abc"), None);
        assert_eq!(
            Amount::from_major_str("1500", "JPY").map(|a| a.minor),
            Some(1500)
        );
        assert_eq!(Amount::from_major_str("1500.50", "JPY"), None);
        assert_eq!(
            Amount::from_major_str("1.5", "KWD").map(|a| a.minor),
            Some(1500)
        );
        assert_eq!(Amount::from_major_str("99999999999999999", "USD"), None);
    }

    #[test]
    fn formats_per_currency_exponent() {
        assert_eq!(Amount::from_minor(4900, "usd").to_string(), "49.00");
        assert_eq!(Amount::from_minor(5, "USD").to_string(), "0.05");
        assert_eq!(Amount::from_minor(-1250, "eur").to_string(), "-12.50");
        assert_eq!(Amount::from_minor(1500, "jpy").to_string(), "1500");
        assert_eq!(Amount::from_minor(12345, "KWD").to_string(), "12.345");
        assert_eq!(Amount::from_minor(-7, "KWD").to_string(), "-0.007");
    }

    #[test]
    fn decimal_round_trip() {
        for (minor, currency) in [(4900, "usd"), (-1, "usd"), (1500, "jpy"), (12345, "kwd")] {
            let amount = Amount::from_minor(minor, currency);
            assert_eq!(Amount::parse_decimal(&amount.to_string()), Some(amount));
        }
        assert_eq!(Amount::parse_decimal("1.2.3"), None);
        assert_eq!(Amount::parse_decimal("abc"), None);
        assert_eq!(Amount::parse_decimal(""), None);
    }

    #[test]
    fn serde_uses_exact_decimal_strings() {
        let json = serde_json::to_string(&Amount::from_minor(8333, "usd")).unwrap();
        assert_eq!(json, "\"83.33\"");
        let back: Amount = serde_json::from_str(&json).unwrap();
        assert_eq!(back.minor, 8333);
    }

    #[test]
    fn recurring_normalisation_table() {
        // (amount per period, interval, count) -> (mrr, arr) in minor units
        let cases = [
            (4900, Interval::Month, 1, 4900, 58800),
            (100000, Interval::Year, 1, 8333, 100000),
            (120000, Interval::Year, 1, 10000, 120000),
            (1000, Interval::Week, 1, 4333, 52000),
            (15000, Interval::Month, 3, 5000, 60000),
            (100, Interval::Day, 1, 3042, 36500),
            (4900 * 5, Interval::Month, 1, 24500, 294000),
            (0, Interval::Month, 1, 0, 0),
        ];
        for (amount, interval, count, mrr, arr) in cases {
            let r = recurring_from_period(amount, interval, count).unwrap();
            assert_eq!(
                (r.mrr_minor, r.arr_minor),
                (mrr, arr),
                "{amount} {interval:?} x{count}"
            );
        }
        assert_eq!(recurring_from_period(100, Interval::Month, 0), None);
    }

    #[test]
    fn zero_decimal_recurring_stays_in_yen() {
        // ¥10,000 per year: MRR ¥833, never ¥8.33.
        let r = recurring_from_period(10000, Interval::Year, 1).unwrap();
        assert_eq!(Amount::from_minor(r.mrr_minor, "jpy").to_string(), "833");
        assert_eq!(Amount::from_minor(r.arr_minor, "jpy").to_string(), "10000");
    }

    #[test]
    fn as_f64_is_exact_for_cents() {
        assert_eq!(Amount::from_minor(8333, "usd").as_f64(), 83.33);
        assert_eq!(Amount::from_minor(-4900, "usd").as_f64(), -49.0);
    }
}
