//! Calendar helpers without a date library (the wasm bundle stays small).

/// `YYYY-MM-DD` of a unix timestamp in UTC (Howard Hinnant's civil-from-days).
pub fn utc_date(unix_seconds: i64) -> String {
    let days = unix_seconds.div_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a unix timestamp (RFC 3339, UTC).
pub fn utc_rfc3339(unix_seconds: i64) -> String {
    let seconds_of_day = unix_seconds.rem_euclid(86_400);
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        utc_date(unix_seconds),
        seconds_of_day / 3600,
        seconds_of_day % 3600 / 60,
        seconds_of_day % 60
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Hinnant's days-from-civil).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Like [`parse_rfc3339`], but a timestamp without an offset (`2021-05-04T10:11:12`, as
/// older Recharge API versions send) is read as UTC.
pub fn parse_timestamp_utc(text: &str) -> Option<i64> {
    parse_rfc3339(text).or_else(|| {
        let has_offset = text.len() > 19 && text[19..].contains(['Z', 'z', '+', '-']);
        (!has_offset)
            .then(|| parse_rfc3339(&format!("{text}Z")))
            .flatten()
    })
}

/// Unix seconds of an RFC 3339 timestamp (`2026-01-15T10:18:49.621022Z`, `…+02:00`).
/// Fractions are dropped.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() < 20
        || bytes[4] != b'-'
        || bytes[7] != b'-'
        || !matches!(bytes[10], b'T' | b't' | b' ')
        || bytes[13] != b':'
        || bytes[16] != b':'
    {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        part.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &fraction[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.as_bytes()[3] != b':' {
                return None;
            }
            let hours: i64 = rest[1..3].parse().ok()?;
            let minutes: i64 = rest[4..6].parse().ok()?;
            sign * (hours * 3600 + minutes * 60)
        }
    };
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_and_round_trips() {
        assert_eq!(utc_rfc3339(1_767_225_600), "2026-01-01T00:00:00Z");
        assert_eq!(utc_rfc3339(1_795_168_861), "2026-11-20T10:01:01Z");
        for t in [0, 951_782_400, 1_795_168_861] {
            assert_eq!(parse_rfc3339(&utc_rfc3339(t)), Some(t));
        }
    }

    #[test]
    fn naive_timestamps_are_utc() {
        assert_eq!(
            parse_timestamp_utc("2026-01-01T00:00:00"),
            Some(1_767_225_600)
        );
        assert_eq!(
            parse_timestamp_utc("2026-01-01T01:00:00+01:00"),
            Some(1_767_225_600)
        );
        assert_eq!(parse_timestamp_utc("2026-01-01"), None);
    }

    #[test]
    fn rfc3339_timestamps() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2026-01-01T00:00:00Z"), Some(1_767_225_600));
        assert_eq!(
            parse_rfc3339("2026-01-15T10:18:49.621022Z"),
            Some(1_768_472_329)
        );
        assert_eq!(
            parse_rfc3339("2026-01-15T12:18:49+02:00"),
            Some(1_768_472_329)
        );
        assert_eq!(
            parse_rfc3339("2000-02-29T23:59:59-00:30"),
            Some(951_870_599)
        );
        for bad in [
            "",
            "2026-01-15",
            "2026-13-01T00:00:00Z",
            "2026-01-15T10:18:49",
            "2026-01-15T10:18:49.Z",
            "yyyy-01-15T10:18:49Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn known_dates() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(1_767_225_600), "2026-01-01");
        assert_eq!(utc_date(1_795_305_599), "2026-11-21");
        assert_eq!(utc_date(-1), "1969-12-31");
    }
}
