//! The AEAD envelope (repo-format/README.md, "Envelope"):
//!
//! ```text
//! nonce[24] || ciphertext[n] || tag[16]      XChaCha20-Poly1305, random nonce
//! ```
//!
//! This is the only file that names `chacha20poly1305`. Random 192-bit
//! nonces make reuse negligible without any counter state, which matters
//! because packs are written by many threads and many processes.

use chacha20poly1305::{AeadInOut, Key, KeyInit, Tag, XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

pub(crate) const NONCE_LEN: usize = 24;
pub(crate) const TAG_LEN: usize = 16;
/// Bytes an envelope adds to its plaintext.
pub(crate) const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// Fill `buf` from the operating system's CSPRNG. A machine that cannot
/// provide randomness cannot encrypt safely, so this is fatal.
pub fn random_bytes(buf: &mut [u8]) {
    if let Err(e) = getrandom::fill(buf) {
        // No fallback is safe: a predictable nonce or key is worse than stopping.
        panic!("the operating system's random number generator failed: {e}");
    }
}

/// Encrypt `plaintext` under `key`, binding `aad`.
pub fn seal(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; plaintext.len() + OVERHEAD];
    out[NONCE_LEN..NONCE_LEN + plaintext.len()].copy_from_slice(plaintext);
    seal_in_place(key, aad, &mut out);
    out
}

/// Seal the envelope `env` in place: `env` is `nonce[24] || plaintext ||
/// tag[16]` with the plaintext already there; the nonce and tag are
/// written and the plaintext is encrypted where it lies, so a caller that
/// builds the plaintext in a reused buffer needs no further copy.
pub(crate) fn seal_in_place(key: &[u8; 32], aad: &[u8], env: &mut [u8]) {
    if env.len() < OVERHEAD {
        // Every caller sizes `env` as plaintext + OVERHEAD.
        panic!("envelope buffer shorter than its overhead");
    }
    let (nonce, rest) = env.split_at_mut(NONCE_LEN);
    let (body, tag_out) = rest.split_at_mut(rest.len() - TAG_LEN);
    random_bytes(nonce);
    let cipher = XChaCha20Poly1305::new(<&Key>::from(key));
    let nonce = XNonce::try_from(&*nonce).unwrap_or_else(|_| unreachable!("split at NONCE_LEN"));
    let tag = cipher
        .encrypt_inout_detached(&nonce, aad, body.into())
        .unwrap_or_else(|_| unreachable_len());
    tag_out.copy_from_slice(&tag);
}

/// XChaCha20-Poly1305 only refuses messages over 256 GiB; every caller is
/// capped far below that.
fn unreachable_len() -> Tag {
    panic!("AEAD message length limit exceeded")
}

/// Why an envelope did not open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// Shorter than nonce + tag.
    Truncated(usize),
    /// Authentication failed: wrong key, wrong place, or altered bytes.
    Authentication,
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Truncated(n) => write!(
                f,
                "{n} bytes is shorter than the {OVERHEAD}-byte encryption envelope (empty or truncated)"
            ),
            OpenError::Authentication => {
                f.write_str("authentication failed (altered, truncated or moved ciphertext)")
            }
        }
    }
}

/// Decrypt and authenticate; no plaintext is released unless the tag checks.
pub fn open(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
    let mut buf = Vec::new();
    open_into(key, aad, sealed, &mut buf)?;
    Ok(buf)
}

/// An envelope's parts: nonce, ciphertext, tag.
struct Parts<'a> {
    nonce: &'a [u8],
    ct: &'a [u8],
    tag: &'a [u8],
}

/// Split an envelope into its parts, or say why it cannot be one.
fn parts(sealed: &[u8]) -> Result<Parts<'_>, OpenError> {
    if sealed.len() < OVERHEAD {
        return Err(OpenError::Truncated(sealed.len()));
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
    Ok(Parts { nonce, ct, tag })
}

/// [`open`] into a reused buffer (cleared first). On failure `out` holds
/// no plaintext: it is cleared.
pub(crate) fn open_into(
    key: &[u8; 32],
    aad: &[u8],
    sealed: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), OpenError> {
    out.clear();
    let Parts { nonce, ct, tag } = parts(sealed)?;
    out.extend_from_slice(ct);
    let cipher = XChaCha20Poly1305::new(<&Key>::from(key));
    let nonce = XNonce::try_from(nonce).unwrap_or_else(|_| unreachable!("split at NONCE_LEN"));
    let tag = Tag::try_from(tag).unwrap_or_else(|_| unreachable!("split at TAG_LEN"));
    cipher
        .decrypt_inout_detached(&nonce, aad, out.as_mut_slice().into(), &tag)
        .map_err(|_| {
            out.clear();
            OpenError::Authentication
        })
}

/// Authenticate `sealed`, then decrypt it `window.len()` bytes at a time
/// in `window`, handing each piece to `each` in order. The same check as
/// [`open_into`], but checking a blob this way needs no buffer of the
/// blob's size: the pre-upload verify of a pack held two (decrypted and
/// decompressed) of up to a chunk each, 8 MiB of a backup's peak memory.
/// Nothing is handed on unless the tag is right.
pub(crate) fn open_each(
    key: &[u8; 32],
    aad: &[u8],
    sealed: &[u8],
    window: &mut [u8],
    mut each: impl FnMut(&[u8]),
) -> Result<(), OpenError> {
    use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
    use poly1305::universal_hash::{KeyInit as _, UniversalHash};
    if window.is_empty() {
        panic!("open_each needs a window of at least one byte");
    }
    let Parts { nonce, ct, tag } = parts(sealed)?;
    // XChaCha20-Poly1305 as RFC 8439 composes it (and chacha20poly1305
    // implements it): the MAC key is the first 32 bytes of block 0, the
    // message is encrypted from block 1, and the tag covers the padded
    // AAD, the padded ciphertext and both lengths.
    let nonce =
        chacha20::XNonce::try_from(nonce).unwrap_or_else(|_| unreachable!("split at NONCE_LEN"));
    let mut cipher = chacha20::XChaCha20::new(key.into(), &nonce);
    let mut mac_key = Zeroizing::new([0u8; 32]);
    cipher.apply_keystream(&mut mac_key[..]);
    let mut mac = poly1305::Poly1305::new((&*mac_key).into());
    cipher.seek(64u64);
    mac.update_padded(aad);
    mac.update_padded(ct);
    let mut lengths = poly1305::Block::default();
    lengths[..8].copy_from_slice(&(aad.len() as u64).to_le_bytes());
    lengths[8..].copy_from_slice(&(ct.len() as u64).to_le_bytes());
    mac.update(&[lengths]);
    let tag = poly1305::Tag::try_from(tag).unwrap_or_else(|_| unreachable!("split at TAG_LEN"));
    if mac.verify(&tag).is_err() {
        return Err(OpenError::Authentication);
    }
    for piece in ct.chunks(window.len()) {
        let w = &mut window[..piece.len()];
        // Decrypted from the sealed bytes straight into the window.
        cipher.apply_keystream_b2b(piece, w);
        each(w);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Open `sealed` piecewise into one Vec, as `open` would.
    fn open_pieces(
        key: &[u8; 32],
        aad: &[u8],
        sealed: &[u8],
        w: usize,
    ) -> Result<Vec<u8>, OpenError> {
        let mut window = vec![0u8; w];
        let mut out = Vec::new();
        open_each(key, aad, sealed, &mut window, |p| out.extend_from_slice(p))?;
        Ok(out)
    }

    #[test]
    fn piecewise_open_agrees_with_open() {
        let key = [9u8; 32];
        for len in [0usize, 1, 63, 64, 65, 1000, 4096, 70_000] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let sealed = seal(&key, b"some aad", &plain);
            for w in [1usize, 7, 64, 4096, 1 << 16] {
                assert_eq!(
                    open_pieces(&key, b"some aad", &sealed, w).unwrap(),
                    plain,
                    "len {len} window {w}"
                );
            }
            assert_eq!(
                open_pieces(&key, b"other aad", &sealed, 64),
                Err(OpenError::Authentication)
            );
            assert_eq!(
                open_pieces(&[1u8; 32], b"some aad", &sealed, 64),
                Err(OpenError::Authentication)
            );
            for i in [0, NONCE_LEN, sealed.len() / 2, sealed.len() - 1] {
                let mut bad = sealed.clone();
                bad[i] ^= 0x10;
                let mut handed = 0;
                let mut window = [0u8; 64];
                assert_eq!(
                    open_each(&key, b"some aad", &bad, &mut window, |p| handed += p.len()),
                    Err(OpenError::Authentication),
                    "flip at {i} of {len}"
                );
                assert_eq!(handed, 0, "nothing is handed on before the tag is checked");
            }
        }
        assert_eq!(
            open_pieces(&key, b"", &[0u8; 10], 64),
            Err(OpenError::Truncated(10))
        );
    }

    #[test]
    fn seal_open_and_tamper() {
        let key = [7u8; 32];
        let sealed = seal(&key, b"aad", b"secret");
        assert_eq!(sealed.len(), 6 + OVERHEAD);
        assert_eq!(open(&key, b"aad", &sealed).unwrap(), b"secret");
        assert_eq!(
            open(&key, b"other", &sealed),
            Err(OpenError::Authentication)
        );
        assert_eq!(
            open(&[8u8; 32], b"aad", &sealed),
            Err(OpenError::Authentication)
        );
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(open(&key, b"aad", &bad).is_err(), "flip at {i} undetected");
        }
        assert_eq!(
            open(&key, b"aad", &sealed[..10]),
            Err(OpenError::Truncated(10))
        );
        assert!(open(&key, b"aad", &sealed[..sealed.len() - 1]).is_err());
    }

    /// draft-irtf-cfrg-xchacha-03, appendix A.3.1: this envelope layout
    /// around the published key, nonce, ciphertext and tag opens to the
    /// published plaintext (whichever SIMD backend the CPU selects).
    #[test]
    fn the_published_xchacha20_poly1305_vector_opens() {
        let h = |s: &str| hex::decode(s).unwrap();
        let key: [u8; 32] = h("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
            .try_into()
            .unwrap();
        let aad = h("50515253c0c1c2c3c4c5c6c7");
        let mut sealed = h("404142434445464748494a4b4c4d4e4f5051525354555657");
        sealed.extend(h(concat!(
            "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb",
            "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452",
            "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9",
            "21f9664c97637da9768812f615c68b13b52e"
        )));
        sealed.extend(h("c0875924c1c7987947deafd8780acf49"));
        let plain = open(&key, &aad, &sealed).unwrap();
        assert_eq!(
            plain,
            b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it."
        );
    }

    #[test]
    fn nonces_do_not_repeat() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100_000 {
            let s = seal(&[1u8; 32], b"", b"");
            assert!(seen.insert(s[..NONCE_LEN].to_vec()));
        }
    }
}
