//! The primitive byte encoding shared by every record (repo-format/README.md,
//! "Primitive encoding"): little-endian fixed-width integers, byte strings as
//! `u32 length || bytes`, lists as `u32 count || items`.
//!
//! The [`Reader`] never panics and never allocates more than the input holds:
//! a declared length or count is checked against the bytes that remain (times
//! the smallest item size) before anything is reserved, so a hostile
//! `count = 2^32-1` costs nothing (doc/reliability.md 4.J).

/// Why a decode failed; the caller adds the object's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Appends encoded values to a byte vector.
#[derive(Default)]
pub(crate) struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn raw(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }
    /// `u32 length || bytes`. Lengths over u32 are a caller bug: every
    /// record is bounded far below 4 GiB by its own cap.
    pub fn bytes(&mut self, b: &[u8]) {
        self.u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
        self.buf.extend_from_slice(b);
    }
    pub fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads encoded values from a byte slice, bounds-checked.
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }
    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }
    pub fn position(&self) -> usize {
        self.pos
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError(format!(
                "truncated at byte {} (wanted {n} more, {} left)",
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    /// A `u32 length || bytes` string of at most `max` bytes.
    pub fn bytes(&mut self, max: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(DecodeError(format!("{what} is {n} bytes, limit {max}")));
        }
        self.take(n)
    }
    /// A UTF-8 `u32 length || bytes` string of at most `max` bytes, borrowed.
    pub fn str(&mut self, max: usize, what: &str) -> Result<&'a str, DecodeError> {
        let b = self.bytes(max, what)?;
        std::str::from_utf8(b).map_err(|_| DecodeError(format!("{what} is not UTF-8")))
    }
    pub fn string(&mut self, max: usize, what: &str) -> Result<String, DecodeError> {
        self.str(max, what).map(str::to_owned)
    }
    /// A `u32` item count, checked against `max` and against what the
    /// remaining bytes could hold at `min_item` bytes per item.
    pub fn count(&mut self, max: usize, min_item: usize, what: &str) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(DecodeError(format!("{what} count {n} exceeds limit {max}")));
        }
        if n.saturating_mul(min_item.max(1)) > self.remaining() {
            return Err(DecodeError(format!(
                "{what} count {n} does not fit in the {} bytes left",
                self.remaining()
            )));
        }
        Ok(n)
    }
    /// Fail unless every byte was consumed: trailing bytes are corruption.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.remaining() != 0 {
            return Err(DecodeError(format!(
                "{} trailing bytes after the record",
                self.remaining()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bounds() {
        let mut w = Writer::new();
        w.u8(7);
        w.u32(0xdead_beef);
        w.u64(1 << 40);
        w.i64(-5);
        w.bytes(b"hello");
        let buf = w.finish();
        let mut r = Reader::new(&buf);
        assert_eq!(r.u8().unwrap(), 7);
        assert_eq!(r.u32().unwrap(), 0xdead_beef);
        assert_eq!(r.u64().unwrap(), 1 << 40);
        assert_eq!(r.i64().unwrap(), -5);
        assert_eq!(r.bytes(10, "s").unwrap(), b"hello");
        r.finish().unwrap();
    }

    #[test]
    fn hostile_lengths_are_refused() {
        let buf = u32::MAX.to_le_bytes();
        assert!(Reader::new(&buf).bytes(usize::MAX, "s").is_err());
        assert!(Reader::new(&buf).count(usize::MAX, 1, "c").is_err());
        let mut r = Reader::new(&[1, 2]);
        assert!(r.u32().is_err());
        assert!(Reader::new(&[1]).finish().is_err());
    }
}
