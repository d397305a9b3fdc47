//! Unix seconds to and from RFC 3339 UTC timestamps (`2026-12-03T21:15:00Z`), for the
//! comments `suggest` writes and its `--since`. Proleptic Gregorian calendar.

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

pub fn format(secs: u64) -> String {
    let secs = i64::try_from(secs).unwrap_or(i64::MAX / 2);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// `YYYY-MM-DDTHH:MM:SSZ` (or with a space for `T`, or a date alone, meaning its midnight).
pub fn parse(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a UTC time like 2026-12-03T21:15:00Z");
    let num = |t: &str| t.parse::<u32>().map_err(|_| bad());
    let (date, time) = match s.split_once(['T', ' ']) {
        Some((d, t)) => (d, Some(t.strip_suffix('Z').ok_or_else(bad)?)),
        None => (s, None),
    };
    let mut ymd = date.splitn(3, '-');
    let (Some(y), Some(m), Some(d)) = (ymd.next(), ymd.next(), ymd.next()) else {
        return Err(bad());
    };
    let (y, m, d) = (num(y)?, num(m)?, num(d)?);
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    let (mut hh, mut mm, mut ss) = (0, 0, 0);
    if let Some(t) = time {
        let mut hms = t.splitn(3, ':');
        let (Some(h), Some(mi), Some(se)) = (hms.next(), hms.next(), hms.next()) else {
            return Err(bad());
        };
        (hh, mm, ss) = (num(h)?, num(mi)?, num(se)?);
        if hh > 23 || mm > 59 || ss > 60 {
            return Err(bad());
        }
    }
    let days = days_from_civil(i64::from(y), m, d);
    if civil_from_days(days) != (i64::from(y), m, d) {
        return Err(bad());
    }
    let secs = days * 86_400 + i64::from(hh * 3600 + mm * 60 + ss);
    u64::try_from(secs).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_known_dates() {
        assert_eq!(format(0), "1970-01-01T00:00:00Z");
        assert_eq!(format(1_796_332_500), "2026-12-03T21:15:00Z");
        assert_eq!(format(951_782_400), "2000-02-29T00:00:00Z");
        for t in [0, 59, 951_782_399, 1_796_332_500, 4_102_444_800] {
            assert_eq!(parse(&format(t)), Ok(t));
        }
        assert_eq!(parse("2026-12-03"), Ok(1_796_256_000));
        assert_eq!(parse("2026-12-03 21:15:00Z"), Ok(1_796_332_500));
        for bad in [
            "2026-02-30",
            "2026-12-03T21:15:00",
            "yesterday",
            "2026-13-01",
            "1969-12-31",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
