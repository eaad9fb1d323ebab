//! Parsing of user-given quantities shared by several commands.

/// `10%` → 0.1; above 0 and at most 100 percent.
pub fn parse_percent(s: &str) -> Option<Result<f64, String>> {
    let p = s.strip_suffix('%')?;
    Some(match p.trim().parse::<f64>() {
        Err(_) => Err(format!("{s:?} is not a percentage")),
        Ok(v) if !(v > 0.0 && v <= 100.0) => Err(format!(
            "{s:?}: the percentage must be above 0 and at most 100"
        )),
        Ok(v) => Ok(v / 100.0),
    })
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

/// `2026-11-30`, `2026-11-30 14:05` or `2026-11-30T14:05:09Z` (UTC, as
/// coffer prints times) → seconds since the epoch.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let bad = || format!("{s:?} is not a date: use YYYY-MM-DD, optionally with HH:MM[:SS] (UTC)");
    let t = s.trim().trim_end_matches('Z');
    let (date, time) = match t.split_once(['T', ' ']) {
        Some((d, t)) => (d, Some(t.trim())),
        None => (t, None),
    };
    let num = |x: &str, lo: i64, hi: i64| -> Result<i64, String> {
        match x.parse::<i64>() {
            Ok(v) if (lo..=hi).contains(&v) && !x.starts_with(['+', '-']) => Ok(v),
            _ => Err(bad()),
        }
    };
    let d: Vec<&str> = date.split('-').collect();
    let [y, m, day] = d.as_slice() else {
        return Err(bad());
    };
    let (y, m, day) = (num(y, 1, 9999)?, num(m, 1, 12)?, num(day, 1, 31)?);
    let mut secs = days_from_civil(y, m, day) * 86_400;
    if let Some(time) = time {
        let parts: Vec<&str> = time.split(':').collect();
        let (h, mi, sec) = match parts.as_slice() {
            [h, mi] => (num(h, 0, 23)?, num(mi, 0, 59)?, 0),
            [h, mi, sec] => (num(h, 0, 23)?, num(mi, 0, 59)?, num(sec, 0, 60)?),
            _ => return Err(bad()),
        };
        secs += h * 3600 + mi * 60 + sec;
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    #[test]
    fn times() {
        use super::parse_time;
        assert_eq!(parse_time("1970-01-01"), Ok(0));
        assert_eq!(parse_time("2000-03-01"), Ok(951_868_800));
        assert_eq!(parse_time("2026-12-01 18:12"), Ok(1_796_148_720));
        assert_eq!(parse_time("2026-12-01T18:12:32Z"), Ok(1_796_148_752));
        assert_eq!(parse_time("1969-12-31 23:59:59"), Ok(-1));
        for bad in [
            "",
            "2026-13-01",
            "2026-1",
            "yesterday",
            "2026-12-01 25:00",
            "2026-12-01 1",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn percents() {
        assert_eq!(super::parse_percent("10%"), Some(Ok(0.1)));
        assert!(super::parse_percent("0%").unwrap().is_err());
        assert!(super::parse_percent("x%").unwrap().is_err());
        assert_eq!(super::parse_percent("10"), None);
    }
}
