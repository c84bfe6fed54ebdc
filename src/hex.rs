//! Lowercase hex for what the proxy writes as text: request ids, Redis key names, lease tokens,
//! log tags; and its reading back. One byte table, no formatting machinery: the Redis store
//! names five keys per refresh, and `format!` per byte was 6 % of a `store: redis` storm's CPU.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Writes `bytes` as lowercase hex into `out`, which holds exactly twice as many bytes.
pub fn encode_into(bytes: &[u8], out: &mut [u8]) {
    assert_eq!(out.len(), bytes.len() * 2, "hex output of the wrong length");
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
}

/// Appends `bytes` as lowercase hex to `out`: 32 bytes at a time through a buffer on the stack,
/// one `push_str` each (a `push` per digit checked the capacity 64 times for a session key).
pub fn push(out: &mut String, bytes: &[u8]) {
    let mut buf = [0u8; 64];
    for chunk in bytes.chunks(32) {
        let digits = &mut buf[..chunk.len() * 2];
        encode_into(chunk, digits);
        out.push_str(std::str::from_utf8(digits).expect("hex digits are ASCII"));
    }
}

/// `bytes` as lowercase hex.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push(&mut out, bytes);
    out
}

/// `N` bytes from exactly `2 N` hex digits of either case; `None` for anything else (no sign,
/// no spaces, no odd length).
pub fn decode<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_the_formatter_and_reads_its_own_output_back() {
        let all: Vec<u8> = (0..=255).collect();
        let formatted: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(encode(&all), formatted);
        let mut buf = vec![0u8; 512];
        encode_into(&all, &mut buf);
        assert_eq!(buf, formatted.as_bytes());
        // Past one 32-byte step of `push`, and a part of one.
        assert_eq!(encode(&all[..33]), formatted[..66]);
        let mut pushed = String::from("k:");
        push(&mut pushed, &[0xab, 0x01]);
        assert_eq!(pushed, "k:ab01");
        let bytes: [u8; 32] = std::array::from_fn(|i| (i * 37) as u8);
        assert_eq!(decode::<32>(encode(&bytes).as_bytes()), Some(bytes));
        assert_eq!(encode(&[]), "");
    }

    #[test]
    fn decodes_only_hex_digits_of_the_exact_length() {
        for (text, want) in [
            (&b"00ff"[..], Some([0x00, 0xff])),
            (b"ABcd", Some([0xab, 0xcd])),
            (b"+f0f", None),
            (b"0g00", None),
            (b" 0ff", None),
            (b"00f", None),
            (b"00ff00", None),
            (b"", None),
        ] {
            assert_eq!(
                decode::<2>(text),
                want,
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
    }
}
