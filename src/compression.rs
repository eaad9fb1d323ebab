//! zstd with a hard cap on decompressed size (a zstd frame that claims or
//! expands to more than the declared raw length is corrupt, never a reason
//! to allocate: doc/reliability.md 4.J).
//!
//! Every blob is offered to zstd whole. A sampling probe that skipped
//! "incompressible" chunks used to sit in front of it; it was removed
//! because zstd 1.5 already gives up on incompressible input at about
//! 3 GB/s (`zstd -b1 -e3 -B1M` on random data), while one sample misjudged
//! mixed chunks (database pages, disk images): dropping it made a 1 GiB
//! mixed corpus's repository 3% smaller at the same backup time.

use std::cell::RefCell;

thread_local! {
    // One zstd context per thread and level: creating a context costs more
    // than compressing a small blob.
    static COMPRESSORS: RefCell<Vec<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(Vec::new()) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

fn with_compressor<R>(
    level: i32,
    f: impl FnOnce(&mut zstd::bulk::Compressor<'static>) -> std::io::Result<R>,
) -> Option<R> {
    COMPRESSORS.with(|c| {
        let mut c = c.borrow_mut();
        if !c.iter().any(|(l, _)| *l == level) {
            c.push((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        let (_, comp) = c.iter_mut().find(|(l, _)| *l == level)?;
        f(comp).ok()
    })
}

/// Compress `data` at `level`; `None` when the result would not be smaller.
pub fn compress(data: &[u8], level: i32) -> Option<Vec<u8>> {
    if data.len() < 64 {
        return None;
    }
    let out = with_compressor(level, |c| c.compress(data))?;
    (out.len() < data.len()).then_some(out)
}

/// Compress `data` at `level` into `out`, returning the compressed length;
/// `None` when it would not be smaller than `data` or does not fit in
/// `out`. An `out` of `data.len() - 1` bytes is enough: zstd stops with an
/// error when the output would not be smaller, so sealing needs no
/// separate compress-bound buffer.
pub(crate) fn compress_into(data: &[u8], level: i32, out: &mut [u8]) -> Option<usize> {
    if data.len() < 64 {
        return None;
    }
    let n = with_compressor(level, |c| c.compress_to_buffer(data, out))?;
    (n < data.len()).then_some(n)
}

fn with_decompressor<R>(
    f: impl FnOnce(&mut zstd::bulk::Decompressor<'static>) -> std::io::Result<R>,
) -> Result<R, String> {
    DECOMPRESSOR
        .with(|d| {
            let mut d = d.borrow_mut();
            if d.is_none() {
                *d = Some(zstd::bulk::Decompressor::new()?);
            }
            match d.as_mut() {
                Some(dec) => f(dec),
                None => Err(std::io::Error::other("no zstd decompressor")),
            }
        })
        .map_err(|e| format!("zstd: {e}"))
}

/// Decompress into exactly `raw_len` bytes, or fail.
pub fn decompress(data: &[u8], raw_len: usize) -> Result<Vec<u8>, String> {
    let out = with_decompressor(|d| d.decompress(data, raw_len))?;
    if out.len() != raw_len {
        return Err(format!(
            "decompressed to {} bytes, expected {raw_len}",
            out.len()
        ));
    }
    Ok(out)
}

/// Decompress into exactly all of `out`, or fail (a frame that expands
/// past `out` is refused by zstd without writing beyond it).
pub(crate) fn decompress_into(data: &[u8], out: &mut [u8]) -> Result<(), String> {
    let want = out.len();
    let n = with_decompressor(|d| d.decompress_to_buffer(data, out))?;
    if n != want {
        return Err(format!("decompressed to {n} bytes, expected {want}"));
    }
    Ok(())
}

/// A streaming zstd decoder over user input (a `.tar.zst` being imported),
/// so zstd keeps one home. It decodes concatenated frames and fails on a
/// truncated or corrupt one; memory is the decoder's window, never the
/// stream's length.
pub(crate) fn stream_decoder<'a, R: std::io::Read + Send + 'a>(
    r: R,
) -> std::io::Result<Box<dyn std::io::Read + Send + 'a>> {
    Ok(Box::new(zstd::stream::read::Decoder::new(r)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_skip() {
        let text = b"hello world ".repeat(10_000);
        let c = compress(&text, 3).unwrap();
        assert!(c.len() < text.len() / 10);
        assert_eq!(decompress(&c, text.len()).unwrap(), text);
        // Random bytes do not shrink.
        let mut x = 12345u64;
        let noise: Vec<u8> = (0..200_000)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect();
        assert!(compress(&noise, 3).is_none());
        // The buffered forms agree, with an output one byte short of the input.
        let mut out = vec![0u8; text.len() - 1];
        let n = compress_into(&text, 3, &mut out).unwrap();
        assert_eq!(&out[..n], &c[..]);
        let mut back = vec![0u8; text.len()];
        decompress_into(&out[..n], &mut back).unwrap();
        assert_eq!(back, text);
        let mut out = vec![0u8; noise.len() - 1];
        assert!(compress_into(&noise, 3, &mut out).is_none());
    }

    #[test]
    fn bombs_and_wrong_lengths_fail() {
        let zeros = vec![0u8; 1 << 20];
        let c = compress(&zeros, 3).unwrap();
        assert!(decompress(&c, 1000).is_err());
        assert!(decompress(&c, (1 << 20) + 1).is_err());
        assert!(decompress(b"not zstd", 10).is_err());
        let mut small = vec![0u8; 1000];
        assert!(decompress_into(&c, &mut small).is_err());
        let mut big = vec![0u8; (1 << 20) + 1];
        assert!(decompress_into(&c, &mut big).is_err());
    }
}
