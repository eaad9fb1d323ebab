//! Times as people give and read them: in the local zone of the C library
//! (so `TZ` is honoured, as by forget's day buckets), or RFC 3339 with `Z`
//! or an offset. One parser for every option that takes a time, one
//! breakdown for every time that is shown.

use crate::error::{Error, Result};

const NS: i64 = 1_000_000_000;

/// The calendar fields of an instant in some zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalTime {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub nanos: u32,
    /// Seconds east of UTC.
    pub offset: i64,
    /// Day of the year, 0-based.
    pub yday: u32,
    /// Day of the week, Monday = 0.
    pub wday: u32,
}

impl LocalTime {
    /// `2026-11-10 07:30:00`, for tables.
    pub fn short(&self) -> String {
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// `2026-11-10T07:30:00.000000000+05:30` (`Z` when the zone is UTC).
    pub fn rfc3339(&self) -> String {
        let zone = if self.offset == 0 {
            "Z".to_string()
        } else {
            let sign = if self.offset < 0 { '-' } else { '+' };
            let o = self.offset.abs();
            format!("{sign}{:02}:{:02}", o / 3600, o % 3600 / 60)
        };
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}{zone}",
            self.year, self.month, self.day, self.hour, self.minute, self.second, self.nanos
        )
    }
}

/// `secs` (and `nanos`) since the epoch in the local zone. An instant the
/// C library cannot convert (a year beyond its range, as a hostile mtime
/// may hold) is shown in UTC instead.
pub fn local(secs: i64, nanos: u32) -> LocalTime {
    let t = secs as libc::time_t;
    // SAFETY: `tm` is a plain C struct the call fills; `t` is a valid
    // time_t; on failure the call returns null and we use UTC.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        (!libc::localtime_r(&t, &mut tm).is_null()).then_some(tm)
    };
    match tm {
        Some(tm) => LocalTime {
            year: tm.tm_year as i64 + 1900,
            month: tm.tm_mon as u32 + 1,
            day: tm.tm_mday as u32,
            hour: tm.tm_hour as u32,
            minute: tm.tm_min as u32,
            second: tm.tm_sec as u32,
            nanos,
            offset: tm.tm_gmtoff,
            yday: tm.tm_yday as u32,
            wday: ((tm.tm_wday + 6) % 7) as u32,
        },
        None => utc(secs, nanos),
    }
}

/// [`local`] of nanoseconds since the epoch.
pub fn local_ns(ns: i64) -> LocalTime {
    local(ns.div_euclid(NS), ns.rem_euclid(NS) as u32)
}

/// The fields in UTC (any year).
pub(crate) fn utc(secs: i64, nanos: u32) -> LocalTime {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (year, month, day) = civil(days);
    LocalTime {
        year,
        month,
        day,
        hour: (sod / 3600) as u32,
        minute: (sod % 3600 / 60) as u32,
        second: (sod % 60) as u32,
        nanos,
        offset: 0,
        yday: (days - days_from_civil(year, 1, 1)) as u32,
        // 1970-01-01 was a Thursday.
        wday: (days + 3).rem_euclid(7) as u32,
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Days from 1970-01-01 to a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub(crate) fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A time as given on the command line → nanoseconds since the epoch:
/// `YYYY-MM-DD`, `YYYY-MM-DD HH:MM[:SS]` (also with `T`) in local time, or
/// RFC 3339 with `Z` or an offset (`2026-11-10T02:00:00Z`,
/// `2026-11-10T07:30:00.5+05:30`). Fields out of range are errors, never
/// carried into the next month as `mktime` would.
pub fn parse_time(s: &str) -> Result<i64> {
    let bad = |reason: &str| Error::BadTime {
        input: s.to_string(),
        reason: reason.to_string(),
    };
    let t = s.trim();
    let (date, time) = match t.split_once(['T', 't', ' ']) {
        Some((d, rest)) => (d, Some(rest.trim())),
        None => (t, None),
    };
    let num = |x: &str, what: &str, lo: i64, hi: i64| -> Result<i64> {
        match x.parse::<i64>() {
            Ok(v) if x.bytes().all(|b| b.is_ascii_digit()) && (lo..=hi).contains(&v) => Ok(v),
            _ => Err(bad(&format!("the {what} must be {lo} to {hi}"))),
        }
    };
    let [y, m, d] = date.split('-').collect::<Vec<_>>()[..] else {
        return Err(bad("the date must be YYYY-MM-DD"));
    };
    let (y, m) = (num(y, "year", 1, 9999)?, num(m, "month", 1, 12)?);
    let d = num(d, "day", 1, days_in_month(y, m))?;
    let (mut clock, mut zone) = (time.unwrap_or("00:00:00"), None);
    if let Some(c) = clock.strip_suffix(['Z', 'z']) {
        (clock, zone) = (c, Some(0));
    } else if let Some(i) = clock.rfind(['+', '-']) {
        zone = Some(parse_offset(&clock[i..]).ok_or_else(|| bad("the offset must be ±HH:MM"))?);
        clock = &clock[..i];
    }
    let (clock, frac) = match clock.split_once('.') {
        Some((c, f)) if (1..=9).contains(&f.len()) && f.bytes().all(|b| b.is_ascii_digit()) => (
            c,
            f.parse::<i64>().unwrap_or(0) * 10i64.pow(9 - f.len() as u32),
        ),
        Some(_) => return Err(bad("a fraction of a second takes 1 to 9 digits")),
        None => (clock, 0),
    };
    let (h, mi, sec) = match clock.split(':').collect::<Vec<_>>()[..] {
        [h, mi] => (num(h, "hour", 0, 23)?, num(mi, "minute", 0, 59)?, 0),
        [h, mi, sec] => (
            num(h, "hour", 0, 23)?,
            num(mi, "minute", 0, 59)?,
            num(sec, "second", 0, 59)?,
        ),
        _ => return Err(bad("the time of day must be HH:MM or HH:MM:SS")),
    };
    let secs = match zone {
        Some(offset) => days_from_civil(y, m, d) * 86_400 + h * 3600 + mi * 60 + sec - offset,
        None => {
            from_local(y, m, d, h, mi, sec).ok_or_else(|| bad("not a time in the local zone"))?
        }
    };
    secs.checked_mul(NS)
        .and_then(|n| n.checked_add(frac))
        .ok_or_else(|| bad("it must lie between the years 1678 and 2261"))
}

/// `+05:30`, `-08:00` → seconds east of UTC.
fn parse_offset(s: &str) -> Option<i64> {
    let sign = match s.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (h, m) = s[1..].split_once(':')?;
    let ok = |x: &str| x.len() == 2 && x.bytes().all(|b| b.is_ascii_digit());
    if !ok(h) || !ok(m) {
        return None;
    }
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 23 && m <= 59).then_some(sign * (h * 3600 + m * 60))
}

/// Local calendar fields (already checked) → seconds since the epoch. A
/// time that a daylight-saving change skips is taken as `mktime` does.
fn from_local(y: i64, m: i64, d: i64, h: i64, mi: i64, s: i64) -> Option<i64> {
    // SAFETY: `tm` is a plain C struct; mktime reads and normalises it.
    let (secs, tm) = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        tm.tm_year = (y - 1900) as i32;
        tm.tm_mon = (m - 1) as i32;
        tm.tm_mday = d as i32;
        tm.tm_hour = h as i32;
        tm.tm_min = mi as i32;
        tm.tm_sec = s as i32;
        tm.tm_isdst = -1;
        // Only a successful mktime sets it (POSIX's way to tell its error
        // from 1969-12-31 23:59:59 UTC, which is -1 as well).
        tm.tm_yday = -1;
        (libc::mktime(&mut tm) as i64, tm)
    };
    (secs != -1 || tm.tm_yday != -1).then_some(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc_ns(s: &str) -> i64 {
        parse_time(s).unwrap()
    }

    #[test]
    fn rfc3339_and_zones_are_exact() {
        assert_eq!(utc_ns("1970-01-01T00:00:00Z"), 0);
        assert_eq!(utc_ns("2026-12-01T18:12:32Z"), 1_796_148_752 * NS);
        assert_eq!(utc_ns("2026-12-01T23:42:32+05:30"), 1_796_148_752 * NS);
        assert_eq!(utc_ns("2026-12-01T10:12:32-08:00"), 1_796_148_752 * NS);
        assert_eq!(
            utc_ns("2026-12-01 18:12:32.25z"),
            1_796_148_752 * NS + NS / 4
        );
        assert_eq!(utc_ns("1969-12-31T23:59:59Z"), -NS);
    }

    #[test]
    fn invalid_fields_are_errors() {
        for bad in [
            "",
            "2026-13-45",
            "2026-02-29",
            "2026-04-31",
            "2026-11-10 25:61:61",
            "2026-11-10 23:60",
            "2026-11-10 1",
            "2026-1",
            "yesterday",
            "2026-11-10T02:00:00+5:30",
            "2026-11-10T02:00:00.Z",
            "+2026-11-10",
            "2300-01-01T00:00:00Z",
        ] {
            assert!(
                matches!(parse_time(bad), Err(Error::BadTime { .. })),
                "{bad}"
            );
        }
        assert!(parse_time("2024-02-29").is_ok());
    }

    #[test]
    fn shown_with_the_offset() {
        let t = LocalTime {
            offset: 19_800,
            ..utc(1_794_295_800, 5)
        };
        assert_eq!(t.short(), "2026-11-10 07:30:00");
        assert_eq!(t.rfc3339(), "2026-11-10T07:30:00.000000005+05:30");
        let t = LocalTime {
            offset: -28_800,
            ..utc(0, 0)
        };
        assert_eq!(t.rfc3339(), "1970-01-01T00:00:00.000000000-08:00");
        assert_eq!(utc(0, 0).rfc3339(), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(utc(951_782_400, 0).short(), "2000-02-29 00:00:00");
        // 2026-11-10 was a Tuesday, day 313 of its year.
        let t = utc(1_794_276_000, 0);
        assert_eq!((t.wday, t.yday), (1, 313));
    }
}
