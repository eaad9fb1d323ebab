//! Keep policies, as restic defines them: for each of `--keep-last`,
//! `-hourly`, `-daily`, `-weekly`, `-monthly`, `-yearly N`, walk the group's
//! snapshots newest first and keep a snapshot whenever its time bucket
//! (hour, day, ISO week, month, year, in local time) differs from the last
//! kept one's, until N snapshots were kept for that rule. `--keep-within D`
//! keeps everything within D of the group's newest snapshot; `--keep-tag`
//! keeps snapshots with a tag. A snapshot is kept if any rule keeps it, and
//! every decision carries the rules that made it. Pure: no I/O.

use crate::id::SnapshotId;
use crate::localtime::is_leap;
use crate::snapshot::Snapshot;

/// Counts are "how many to keep"; `-1` means unlimited, `0` means unused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    pub last: i64,
    pub hourly: i64,
    pub daily: i64,
    pub weekly: i64,
    pub monthly: i64,
    pub yearly: i64,
    /// Keep everything this many nanoseconds older than the newest snapshot.
    pub within_ns: Option<i64>,
    pub tags: Vec<String>,
}

impl KeepPolicy {
    pub fn is_empty(&self) -> bool {
        self.last == 0
            && self.hourly == 0
            && self.daily == 0
            && self.weekly == 0
            && self.monthly == 0
            && self.yearly == 0
            && self.within_ns.is_none()
            && self.tags.is_empty()
    }
}

/// The verdict on one snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub id: SnapshotId,
    pub keep: bool,
    /// The rules that kept it (empty when removed).
    pub reasons: Vec<String>,
}

/// Local calendar fields of a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Calendar {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    /// ISO 8601 week-numbering year and week.
    pub iso_year: i64,
    pub iso_week: u32,
}

/// The local calendar (the C library's zone, so `TZ` is honoured).
pub(crate) fn local_calendar(ns: i64) -> Calendar {
    let t = crate::localtime::local_ns(ns);
    let (year, yday, wday) = (t.year, t.yday as i64, t.wday as i64);
    // ISO week: the week with the year's first Thursday is week 1.
    let mut iso_year = year;
    let mut week = (yday - wday + 10) / 7;
    if week < 1 {
        iso_year -= 1;
        let prev_len = if is_leap(iso_year) { 366 } else { 365 };
        week = (yday + prev_len - wday + 10) / 7;
    } else {
        let len = if is_leap(year) { 366 } else { 365 };
        if week == 53 && (yday - wday + 3) >= len {
            iso_year += 1;
            week = 1;
        }
    }
    Calendar {
        year,
        month: t.month,
        day: t.day,
        hour: t.hour,
        iso_year,
        iso_week: week as u32,
    }
}

/// Apply `policy` to one group's snapshots. Returns decisions newest first.
pub fn apply(group: &[(SnapshotId, Snapshot)], policy: &KeepPolicy) -> Vec<Decision> {
    let mut snaps: Vec<&(SnapshotId, Snapshot)> = group.iter().collect();
    snaps.sort_by(|a, b| b.1.time_ns.cmp(&a.1.time_ns).then(b.0.cmp(&a.0)));
    let newest = snaps.first().map(|s| s.1.time_ns).unwrap_or(0);
    type Bucket = (&'static str, i64, fn(&Calendar, usize) -> i64);
    let mut rules: Vec<(Bucket, Option<i64>)> = vec![
        (("last", policy.last, |_, i| i as i64), None),
        (
            ("hourly", policy.hourly, |c, _| {
                ((c.year * 100 + c.month as i64) * 100 + c.day as i64) * 100 + c.hour as i64
            }),
            None,
        ),
        (
            ("daily", policy.daily, |c, _| {
                (c.year * 100 + c.month as i64) * 100 + c.day as i64
            }),
            None,
        ),
        (
            ("weekly", policy.weekly, |c, _| {
                c.iso_year * 100 + c.iso_week as i64
            }),
            None,
        ),
        (
            ("monthly", policy.monthly, |c, _| {
                c.year * 100 + c.month as i64
            }),
            None,
        ),
        (("yearly", policy.yearly, |c, _| c.year), None),
    ];
    let mut left: Vec<i64> = rules.iter().map(|((_, n, _), _)| *n).collect();
    let mut out = Vec::with_capacity(snaps.len());
    for (i, (id, s)) in snaps.iter().enumerate() {
        let cal = local_calendar(s.time_ns);
        let mut reasons = Vec::new();
        if let Some(t) = policy.tags.iter().find(|t| s.tags.contains(t)) {
            reasons.push(format!("tag {t}"));
        }
        if let Some(w) = policy.within_ns
            && s.time_ns >= newest.saturating_sub(w)
        {
            reasons.push("within".to_string());
        }
        for (r, ((name, _, bucket), last)) in rules.iter_mut().enumerate() {
            if left[r] == 0 {
                continue;
            }
            let v = bucket(&cal, i);
            if *last != Some(v) {
                *last = Some(v);
                reasons.push(format!("{name} snapshot"));
                if left[r] > 0 {
                    left[r] -= 1;
                }
            }
        }
        out.push(Decision {
            id: *id,
            keep: !reasons.is_empty(),
            reasons,
        });
    }
    out
}

/// The group a snapshot belongs to, by the chosen fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupBy {
    pub host: bool,
    pub paths: bool,
    pub tags: bool,
}

impl Default for GroupBy {
    fn default() -> Self {
        GroupBy {
            host: true,
            paths: true,
            tags: false,
        }
    }
}

pub(crate) fn group_key(s: &Snapshot, by: GroupBy) -> String {
    let mut k = Vec::new();
    if by.host {
        k.push(format!("host {}", s.hostname));
    }
    if by.paths {
        let mut p: Vec<String> = s
            .paths
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        p.sort();
        k.push(format!("paths [{}]", p.join(", ")));
    }
    if by.tags {
        let mut t = s.tags.clone();
        t.sort();
        k.push(format!("tags [{}]", t.join(", ")));
    }
    k.join(", ")
}

/// Split snapshots into groups (in a stable order).
pub fn group(
    snaps: Vec<(SnapshotId, Snapshot)>,
    by: GroupBy,
) -> Vec<(String, Vec<(SnapshotId, Snapshot)>)> {
    let mut groups: std::collections::BTreeMap<String, Vec<(SnapshotId, Snapshot)>> =
        Default::default();
    for s in snaps {
        groups.entry(group_key(&s.1, by)).or_default().push(s);
    }
    groups.into_iter().collect()
}

/// Parse `1y2m3w4d5h` (years of 365 days, months of 30) into nanoseconds.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let mut total: i64 = 0;
    let mut num = String::new();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: i64 = num
            .parse()
            .map_err(|_| format!("duration {s:?}: a number must come before {c:?}"))?;
        num.clear();
        let unit: i64 = match c {
            'y' => 365 * 86_400,
            'm' => 30 * 86_400,
            'w' => 7 * 86_400,
            'd' => 86_400,
            'h' => 3600,
            _ => {
                return Err(format!(
                    "duration {s:?}: unknown unit {c:?} (use y, m, w, d, h)"
                ));
            }
        };
        total = total
            .checked_add(
                n.checked_mul(unit * 1_000_000_000)
                    .ok_or("duration too large")?,
            )
            .ok_or("duration too large")?;
    }
    if !num.is_empty() {
        return Err(format!(
            "duration {s:?}: the last number has no unit (use y, m, w, d, h)"
        ));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::BlobId;
    use proptest::prelude::*;

    fn snap(day: i64, hour: i64, tags: &[&str]) -> (SnapshotId, Snapshot) {
        let t = (1_699_920_000 + day * 86_400 + hour * 3600) * 1_000_000_000; // 2023-11-14T00:00Z
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&t.to_le_bytes());
        (
            SnapshotId(id),
            Snapshot {
                time_ns: t,
                tree: BlobId([0; 32]),
                parent: None,
                hostname: "h".into(),
                username: "u".into(),
                uid: 0,
                gid: 0,
                paths: vec![b"/data".to_vec()],
                tags: tags.iter().map(|s| s.to_string()).collect(),
                program_version: String::new(),
                summary: Default::default(),
            },
        )
    }

    fn kept(d: &[Decision]) -> usize {
        d.iter().filter(|d| d.keep).count()
    }

    #[test]
    fn thirty_nightlies_with_daily_7_weekly_4() {
        // SAFETY: tests set TZ before any localtime call in this process
        // would matter; UTC makes buckets deterministic.
        unsafe { std::env::set_var("TZ", "UTC") };
        let group: Vec<_> = (0..30).map(|d| snap(d, 2, &[])).collect();
        let p = KeepPolicy {
            daily: 7,
            weekly: 4,
            ..Default::default()
        };
        let d = apply(&group, &p);
        // 7 newest days, plus the newest snapshot of each of 4 ISO weeks
        // (the first weeks overlap the dailies).
        assert!(kept(&d) >= 7 && kept(&d) <= 11, "kept {}", kept(&d));
        assert!(d[0].keep && d[0].reasons.contains(&"daily snapshot".to_string()));
        assert!(!d[29].keep || d[29].reasons.iter().any(|r| r.contains("weekly")));
    }

    #[test]
    fn last_hourly_within_tags() {
        unsafe { std::env::set_var("TZ", "UTC") };
        let group: Vec<_> = (0..10)
            .map(|h| snap(0, h, if h == 0 { &["keep"] } else { &[] }))
            .collect();
        assert_eq!(
            kept(&apply(
                &group,
                &KeepPolicy {
                    last: 3,
                    ..Default::default()
                }
            )),
            3
        );
        assert_eq!(
            kept(&apply(
                &group,
                &KeepPolicy {
                    hourly: -1,
                    ..Default::default()
                }
            )),
            10
        );
        assert_eq!(
            kept(&apply(
                &group,
                &KeepPolicy {
                    daily: 5,
                    ..Default::default()
                }
            )),
            1
        );
        let w = KeepPolicy {
            within_ns: Some(3 * 3600 * 1_000_000_000),
            ..Default::default()
        };
        assert_eq!(kept(&apply(&group, &w)), 4);
        let t = KeepPolicy {
            tags: vec!["keep".into()],
            ..Default::default()
        };
        let d = apply(&group, &t);
        assert_eq!(kept(&d), 1);
        assert_eq!(d[9].reasons, vec!["tag keep".to_string()]);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30d").unwrap(), 30 * 86_400 * 1_000_000_000);
        assert_eq!(
            parse_duration("1y2m").unwrap(),
            (365 + 60) * 86_400 * 1_000_000_000
        );
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn iso_weeks() {
        unsafe { std::env::set_var("TZ", "UTC") };
        // 2021-01-03 (Sunday) is in ISO week 2020-53; 2021-01-04 in 2021-01.
        let c = local_calendar(1_609_632_000 * 1_000_000_000);
        assert_eq!((c.iso_year, c.iso_week), (2020, 53));
        let c = local_calendar(1_609_718_400 * 1_000_000_000);
        assert_eq!((c.iso_year, c.iso_week), (2021, 1));
        // 2024-12-30 (Monday) is ISO week 2025-01.
        let c = local_calendar(1_735_516_800 * 1_000_000_000);
        assert_eq!((c.iso_year, c.iso_week), (2025, 1));
    }

    proptest! {
        #[test]
        fn policy_properties(hours in proptest::collection::vec(0i64..2000, 1..40), last in 0i64..5, daily in 0i64..5, weekly in 0i64..3) {
            unsafe { std::env::set_var("TZ", "UTC") };
            let mut seen = std::collections::HashSet::new();
            let group: Vec<_> = hours.into_iter().filter(|h| seen.insert(*h)).map(|h| snap(h / 24, h % 24, &[])).collect();
            let p = KeepPolicy { last, daily, weekly, ..Default::default() };
            prop_assume!(!p.is_empty());
            let d = apply(&group, &p);
            // The newest snapshot is always kept by any count rule.
            prop_assert!(d[0].keep);
            // Applying the policy again to what it kept removes nothing.
            let kept_snaps: Vec<_> = group.iter().filter(|(id, _)| d.iter().any(|x| x.keep && &x.id == id)).cloned().collect();
            let again = apply(&kept_snaps, &p);
            prop_assert!(again.iter().all(|x| x.keep));
        }
    }
}
