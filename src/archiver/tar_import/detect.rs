//! Which container an archive stream is in, from its first bytes, and the
//! decoder that turns it into a plain tar stream.
//!
//! Detection is by magic bytes, never by file name: nightly jobs name
//! their archives inconsistently (`x.tar` that is gzipped, `x.tgz` that is
//! not), and standard input has no name at all. The peeked bytes are put
//! back in front of the stream, so nothing has to be seekable.

use std::io::{self, Read};

/// Bytes looked at: a whole tar header block, for the `ustar` magic at 257
/// and the header checksum of old (v7) archives without magic.
pub(crate) const PEEK: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Container {
    Tar,
    Gzip,
    Zstd,
}

/// Why the first bytes are not something we can import.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Unrecognised(pub String);

/// Classify the first bytes of a stream (fewer than [`PEEK`] only when the
/// stream is that short).
pub(crate) fn detect(head: &[u8]) -> Result<Container, Unrecognised> {
    let other = |what: &str, tool: &str| {
        Unrecognised(format!(
            "it is {what}, which coffer does not read: decompress it first, e.g. `{tool} -dc FILE | coffer import-tar --name NAME -`"
        ))
    };
    match head {
        [] => Err(Unrecognised("it is empty".into())),
        [0x1f, 0x8b, ..] => Ok(Container::Gzip),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Ok(Container::Zstd),
        // A zstd skippable frame (pzstd and seekable zstd start with one).
        [b, 0x2a, 0x4d, 0x18, ..] if b & 0xf0 == 0x50 => Ok(Container::Zstd),
        [b'B', b'Z', b'h', ..] => Err(other("bzip2-compressed", "bzip2")),
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Err(other("xz-compressed", "xz")),
        [0x04, 0x22, 0x4d, 0x18, ..] => Err(other("lz4-compressed", "lz4")),
        _ if looks_like_tar(head) => Ok(Container::Tar),
        _ => Err(Unrecognised(
            "it is not a tar archive (nor gzip- or zstd-compressed tar)".into(),
        )),
    }
}

/// A tar stream starts with a header block that carries the `ustar` magic
/// (POSIX and GNU), or at least a valid header checksum (v7), or is the
/// all-zero end-of-archive block of an empty archive.
fn looks_like_tar(head: &[u8]) -> bool {
    if head.len() < PEEK {
        return false;
    }
    if &head[257..262] == b"ustar" || head.iter().all(|&b| b == 0) {
        return true;
    }
    let field = &head[148..156];
    let digits: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|b| (b'0'..=b'7').contains(b))
        .collect();
    let Some(recorded) = std::str::from_utf8(&digits)
        .ok()
        .and_then(|s| u32::from_str_radix(s, 8).ok())
    else {
        return false;
    };
    // The checksum counts its own field as eight spaces.
    let sum: u32 = head[..148]
        .iter()
        .chain(&head[156..PEEK])
        .map(|&b| u32::from(b))
        .sum::<u32>()
        + 8 * u32::from(b' ');
    sum == recorded
}

/// Read up to [`PEEK`] bytes (fewer only at the end of the stream).
pub fn peek(r: &mut dyn Read) -> io::Result<Vec<u8>> {
    let mut head = vec![0u8; PEEK];
    let mut n = 0;
    while n < PEEK {
        match r.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    head.truncate(n);
    Ok(head)
}

/// The plain tar stream inside `inner`, whose first bytes `head` were
/// already taken by [`peek`].
pub fn decoder<'a, R: Read + Send + 'a>(
    container: Container,
    head: Vec<u8>,
    inner: R,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    let whole = io::Cursor::new(head).chain(inner);
    Ok(match container {
        Container::Tar => Box::new(whole),
        // Multi-member: `cat a.gz b.gz` and pigz's output are one stream.
        Container::Gzip => Box::new(flate2::read::MultiGzDecoder::new(io::BufReader::new(whole))),
        Container::Zstd => crate::compression::stream_decoder(whole)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(name: &str) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, name, &b"abc"[..]).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn magic_bytes_decide_not_names() {
        let plain = tar_with("a.txt");
        assert_eq!(detect(&plain[..PEEK]), Ok(Container::Tar));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &plain).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(detect(&gz[..gz.len().min(PEEK)]), Ok(Container::Gzip));
        let zst = zstd::encode_all(&plain[..], 1).unwrap();
        assert_eq!(detect(&zst[..zst.len().min(PEEK)]), Ok(Container::Zstd));
        // An empty archive is two zero blocks.
        assert_eq!(detect(&[0u8; PEEK]), Ok(Container::Tar));
    }

    #[test]
    fn old_tar_without_magic_is_recognised_by_its_checksum() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_old();
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, "v7.txt", &b"x"[..]).unwrap();
        let v7 = b.into_inner().unwrap();
        assert_ne!(&v7[257..262], b"ustar");
        assert_eq!(detect(&v7[..PEEK]), Ok(Container::Tar));
        let mut bad = v7.clone();
        bad[0] ^= 1;
        assert!(detect(&bad[..PEEK]).is_err(), "a wrong checksum is not tar");
    }

    #[test]
    fn other_formats_are_named_with_a_way_out() {
        assert!(detect(b"").unwrap_err().0.contains("empty"));
        assert!(detect(b"BZh91AY&SY").unwrap_err().0.contains("bzip2"));
        assert!(
            detect(&[0xfd, b'7', b'z', b'X', b'Z', 0, 0])
                .unwrap_err()
                .0
                .contains("xz -dc")
        );
        assert!(
            detect(b"hello, this is text")
                .unwrap_err()
                .0
                .contains("not a tar")
        );
        assert!(detect(&[7u8; PEEK]).is_err());
    }

    #[test]
    fn the_peeked_bytes_are_put_back() {
        let plain = tar_with("b.txt");
        let mut zst: &[u8] = &zstd::encode_all(&plain[..], 1).unwrap();
        let head = peek(&mut zst).unwrap();
        let c = detect(&head).unwrap();
        let mut out = Vec::new();
        decoder(c, head, zst)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, plain);
    }
}
