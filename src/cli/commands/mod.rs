//! One module per command; each is a thin call into the library.

pub mod backup;
pub mod cat;
pub mod check;
pub mod drill;
pub mod dump;
pub mod export_tar;
pub mod forget;
pub mod import_tar;
pub mod init;
pub mod key;
pub mod ls;
pub mod prune;
pub mod repair;
pub mod restore;
pub mod snapshots;
pub mod unlock;

use anyhow::{Result, bail};

/// `512`, `64K`, `1M`, `2G` (binary units) → bytes.
pub fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                'B' => 1,
                _ => bail!("size {s:?}: unknown unit (use K, M, G or T)"),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("size {s:?} is not a number"))?;
    n.checked_mul(mult)
        .ok_or_else(|| anyhow::anyhow!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::parse_size("512").unwrap(), 512);
        assert_eq!(super::parse_size("4M").unwrap(), 4 << 20);
        assert_eq!(super::parse_size("256k").unwrap(), 256 << 10);
        assert!(super::parse_size("x").is_err());
        assert!(super::parse_size("5Q").is_err());
    }
}
