//! Parsing of user-given quantities shared by several commands.

/// `10%` → 0.1; above 0 and at most 100 percent.
pub(crate) fn parse_percent(s: &str) -> Option<Result<f64, String>> {
    let p = s.strip_suffix('%')?;
    Some(match p.trim().parse::<f64>() {
        Err(_) => Err(format!("{s:?} is not a percentage")),
        Ok(v) if !(v > 0.0 && v <= 100.0) => Err(format!(
            "{s:?}: the percentage must be above 0 and at most 100"
        )),
        Ok(v) => Ok(v / 100.0),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn percents() {
        assert_eq!(super::parse_percent("10%"), Some(Ok(0.1)));
        assert!(super::parse_percent("0%").unwrap().is_err());
        assert!(super::parse_percent("x%").unwrap().is_err());
        assert_eq!(super::parse_percent("10"), None);
    }
}
