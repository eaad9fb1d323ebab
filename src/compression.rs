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
    static STREAM_DECODER: RefCell<Option<zstd::stream::raw::Decoder<'static>>> = const { RefCell::new(None) };
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

/// Decompresses a blob handed over in pieces (as [`crate::crypto::envelope::open_each`]
/// decrypts it) into a small window, passing each decoded piece on: checking
/// a blob needs the decoder's window, not a buffer of the blob's size.
pub(crate) struct PieceDecoder<'w> {
    dec: zstd::stream::raw::Decoder<'static>,
    out: &'w mut [u8],
    total: usize,
    limit: usize,
    /// Did the last call end a frame with nothing left to flush?
    frame_done: bool,
    error: Option<String>,
}

impl<'w> PieceDecoder<'w> {
    /// A decoder that fails once the output would pass `limit` bytes.
    /// `out` must not be empty.
    pub fn new(out: &'w mut [u8], limit: usize) -> Result<Self, String> {
        use zstd::stream::raw::Operation;
        let mut dec = STREAM_DECODER
            .with(|d| d.borrow_mut().take())
            .map_or_else(zstd::stream::raw::Decoder::new, Ok)
            .map_err(|e| format!("zstd: {e}"))?;
        dec.reinit().map_err(|e| format!("zstd: {e}"))?;
        Ok(PieceDecoder {
            dec,
            out,
            total: 0,
            limit,
            frame_done: false,
            error: None,
        })
    }

    /// Decode `input`, handing the output to `each`. After an error the
    /// rest is ignored and [`PieceDecoder::finish`] reports it.
    pub fn feed(&mut self, mut input: &[u8], each: &mut impl FnMut(&[u8])) {
        use zstd::stream::raw::Operation;
        if self.error.is_some() {
            return;
        }
        loop {
            let st = match self.dec.run_on_buffers(input, self.out) {
                Ok(st) => st,
                Err(e) => {
                    self.error = Some(format!("zstd: {e}"));
                    return;
                }
            };
            if st.bytes_read == 0 && st.bytes_written == 0 && !input.is_empty() {
                // Never spin on input the decoder will not take.
                self.error = Some("zstd: the decoder stopped taking input".into());
                return;
            }
            input = &input[st.bytes_read..];
            self.total += st.bytes_written;
            if self.total > self.limit {
                self.error = Some(format!(
                    "decompresses to more than the expected {} bytes",
                    self.limit
                ));
                return;
            }
            each(&self.out[..st.bytes_written]);
            // A call that moved nothing (the flush after a frame's end)
            // reports the next frame's header size: it says nothing.
            if st.bytes_read > 0 || st.bytes_written > 0 {
                self.frame_done = st.remaining == 0;
            }
            // An output window filled to the brim may hold back more.
            if input.is_empty() && st.bytes_written < self.out.len() {
                return;
            }
        }
    }

    /// Flush what the decoder holds; the bytes decoded in all, or why not.
    pub fn finish(mut self, each: &mut impl FnMut(&[u8])) -> Result<usize, String> {
        self.feed(&[], each);
        let r = match self.error.take() {
            Some(e) => Err(e),
            None if !self.frame_done => Err("zstd: truncated frame".into()),
            None => Ok(self.total),
        };
        STREAM_DECODER.with(|d| *d.borrow_mut() = Some(self.dec));
        r
    }
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
        assert_eq!(decompress(&out[..n], text.len()).unwrap(), text);
        let mut out = vec![0u8; noise.len() - 1];
        assert!(compress_into(&noise, 3, &mut out).is_none());
    }

    fn decode_pieces(
        c: &[u8],
        piece: usize,
        window: usize,
        limit: usize,
    ) -> Result<Vec<u8>, String> {
        let mut out = vec![0u8; window];
        let mut got = Vec::new();
        let mut each = |p: &[u8]| got.extend_from_slice(p);
        let mut d = PieceDecoder::new(&mut out, limit)?;
        for p in c.chunks(piece) {
            d.feed(p, &mut each);
        }
        let n = d.finish(&mut each)?;
        assert_eq!(n, got.len());
        Ok(got)
    }

    #[test]
    fn piecewise_decoding_agrees_and_fails_alike() {
        let text: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i % 251) as u8 ^ (i / 4096) as u8)
            .collect();
        for level in [1, 3, 19] {
            let c = compress(&text, level).unwrap();
            for (piece, window) in [
                (1 << 16, 1 << 16),
                (7, 1000),
                (c.len(), 1 << 17),
                (100_000, 1),
            ] {
                assert_eq!(decode_pieces(&c, piece, window, text.len()).unwrap(), text);
            }
            // More than declared, truncated, or garbage: an error, never a panic.
            assert!(decode_pieces(&c, 1 << 16, 1 << 16, text.len() - 1).is_err());
            assert!(decode_pieces(&c[..c.len() - 1], 1 << 16, 1 << 16, text.len()).is_err());
            assert!(decode_pieces(&c[..c.len() / 2], 1 << 16, 1 << 16, text.len()).is_err());
            let mut bad = c.clone();
            bad[c.len() / 2] ^= 0xff;
            assert!(decode_pieces(&bad, 1 << 16, 1 << 16, text.len()).map_or(true, |d| d != text));
        }
        assert!(decode_pieces(b"not zstd at all", 4, 64, 100).is_err());
        assert!(decode_pieces(b"", 4, 64, 100).is_err());
    }

    #[test]
    fn bombs_and_wrong_lengths_fail() {
        let zeros = vec![0u8; 1 << 20];
        let c = compress(&zeros, 3).unwrap();
        assert!(decompress(&c, 1000).is_err());
        assert!(decompress(&c, (1 << 20) + 1).is_err());
        assert!(decompress(b"not zstd", 10).is_err());
        // The piecewise decoder refuses a bomb before writing past its limit.
        assert!(decode_pieces(&c, 1 << 16, 4096, 1000).is_err());
        assert_eq!(decode_pieces(&c, 1 << 16, 4096, 1 << 20).unwrap(), zeros);
    }
}
