//! What Redis holds, and under which names: key names made of the session key (a keyed hash,
//! never a token), in one hash tag per session so Cluster keeps them in one slot; values
//! AEAD-sealed (ChaCha20-Poly1305) under a key derived from the session's own old cookies and
//! the server's refresh secret, so a copy of Redis alone yields no token.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use sha2::Sha256;

use crate::refresh::flight::SessionKey;

/// The Redis keys of one session: `<prefix>{<hex key>}:<kind>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionKeys {
    /// The refresh lock (`SET NX PX`, holding the winner's random token).
    pub lock: String,
    /// The sealed result, kept for the grace window.
    pub result: String,
    /// Tombstone: the session was ended (logout, or the auth API refused it).
    pub ended: String,
    /// Hex session key of the cookies this session was renewed into (plain: a keyed hash).
    pub next: String,
    /// Hex session key of the cookies this session was renewed from.
    pub origin: String,
}

impl SessionKeys {
    pub fn new(prefix: &str, key: &SessionKey) -> Self {
        let tag = Self::tag(prefix, key);
        let name = |kind: &str| [tag.as_str(), kind].concat();
        SessionKeys {
            lock: name("lock"),
            result: name("result"),
            ended: name("ended"),
            next: name("next"),
            origin: name("origin"),
        }
    }

    /// Only `key`'s `origin` name: what a refresh writes for the session it renewed into.
    pub fn origin_of(prefix: &str, key: &SessionKey) -> String {
        let mut name = Self::tag(prefix, key);
        name.push_str("origin");
        name
    }

    /// `<prefix>{<hex key>}:`, with room for the longest kind after it.
    fn tag(prefix: &str, key: &SessionKey) -> String {
        let mut tag = String::with_capacity(prefix.len() + 2 * key.as_bytes().len() + 9);
        tag.push_str(prefix);
        tag.push('{');
        crate::hex::push(&mut tag, key.as_bytes());
        tag.push_str("}:");
        tag
    }
}

const FORMAT: u8 = 1;
const NONCE: usize = 12;

/// Why a stored value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsealed {
    /// Not of our format, or too short.
    Garbage,
    /// Does not decrypt under this session's key (tampered, or another session's).
    Forged,
}

/// The AEAD of one session's value.
#[derive(Clone)]
pub struct Seal {
    cipher: ChaCha20Poly1305,
}

impl Seal {
    /// `value_key` comes from the refresh secret; `api_cookies` are the session's old auth API
    /// cookies, which only its browser (and the auth API) hold.
    pub fn new(value_key: &[u8; 32], api_cookies: &[u8]) -> Self {
        let mut key = [0u8; 32];
        Hkdf::<Sha256>::new(Some(value_key), api_cookies)
            .expand(b"etls-proxy shared value v1", &mut key)
            .expect("32 bytes is a valid HKDF-SHA256 length");
        Seal {
            cipher: ChaCha20Poly1305::new(&Key::from(key)),
        }
    }

    /// Seals `lines` (Set-Cookie lines, none holding a newline) bound to the Redis key `aad`.
    pub fn seal<'a>(&self, lines: impl IntoIterator<Item = &'a [u8]>, aad: &str) -> Vec<u8> {
        let mut plain = Vec::new();
        for (i, line) in lines.into_iter().enumerate() {
            if i > 0 {
                plain.push(b'\n');
            }
            plain.extend_from_slice(line);
        }
        let nonce: [u8; NONCE] = rand::random();
        let sealed = self
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &plain,
                    aad: aad.as_bytes(),
                },
            )
            .expect("ChaCha20-Poly1305 seals any message under 256 GiB");
        let mut out = Vec::with_capacity(1 + NONCE + sealed.len());
        out.push(FORMAT);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The lines back, if `value` was sealed by [`Self::seal`] for this session and `aad`.
    pub fn open(&self, value: &[u8], aad: &str) -> Result<Vec<String>, Unsealed> {
        if value.len() < 1 + NONCE + 16 || value[0] != FORMAT {
            return Err(Unsealed::Garbage);
        }
        let (nonce, sealed) = value[1..].split_at(NONCE);
        let nonce: [u8; NONCE] = nonce.try_into().map_err(|_| Unsealed::Garbage)?;
        let plain = self
            .cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: sealed,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| Unsealed::Forged)?;
        let text = String::from_utf8(plain).map_err(|_| Unsealed::Garbage)?;
        if text.is_empty() {
            return Err(Unsealed::Garbage);
        }
        Ok(text.split('\n').map(str::to_owned).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::refresh::flight::SessionKeyer;

    #[test]
    fn key_names_share_one_hash_tag_and_reveal_no_cookie() {
        let key = SessionKeyer::with_salt(b"salt").key(&[b"refreshToken=abc"]);
        let keys = SessionKeys::new("etls:", &key);
        let tag = format!("{{{}}}", crate::hex::encode(key.as_bytes()));
        for name in [
            &keys.lock,
            &keys.result,
            &keys.ended,
            &keys.next,
            &keys.origin,
        ] {
            assert!(name.starts_with("etls:{"), "{name}");
            assert!(name.contains(&tag), "{name}");
            assert!(!name.contains("abc"), "{name}");
            // Exactly one `{...}`: what Redis Cluster hashes.
            assert_eq!(name.matches('{').count(), 1);
        }
        let all = [
            &keys.lock,
            &keys.result,
            &keys.ended,
            &keys.next,
            &keys.origin,
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(keys.lock, format!("etls:{tag}:lock"));
        assert_eq!(SessionKeys::origin_of("etls:", &key), keys.origin);
        let other = SessionKeyer::with_salt(b"salt").key(&[b"refreshToken=abd"]);
        assert_ne!(SessionKeys::new("etls:", &other), keys);
    }

    #[test]
    fn values_round_trip_and_refuse_tampering_other_sessions_and_garbage() {
        let vk = [7u8; 32];
        let seal = Seal::new(&vk, b"refreshToken=old");
        let lines: [&[u8]; 2] = [
            b"accessTokenEtls=a.b.c; Path=/",
            b"refreshToken=new; HttpOnly",
        ];
        let value = seal.seal(lines, "etls:{k}:result");
        assert!(
            !value.windows(3).any(|w| w == b"new"),
            "no token in the clear"
        );
        let opened = seal.open(&value, "etls:{k}:result").unwrap();
        assert_eq!(
            opened,
            [
                "accessTokenEtls=a.b.c; Path=/",
                "refreshToken=new; HttpOnly"
            ]
        );
        // Two seals of one value differ (random nonce).
        assert_ne!(seal.seal(lines, "etls:{k}:result"), value);
        // Every single flipped byte is refused.
        for i in 0..value.len() {
            let mut bad = value.clone();
            bad[i] ^= 1;
            assert!(seal.open(&bad, "etls:{k}:result").is_err(), "byte {i}");
        }
        // Another key name, another session's cookies, another server secret.
        assert_eq!(seal.open(&value, "etls:{j}:result"), Err(Unsealed::Forged));
        let other = Seal::new(&vk, b"refreshToken=other");
        assert_eq!(other.open(&value, "etls:{k}:result"), Err(Unsealed::Forged));
        let other = Seal::new(&[8u8; 32], b"refreshToken=old");
        assert_eq!(other.open(&value, "etls:{k}:result"), Err(Unsealed::Forged));
        for garbage in [
            &b""[..],
            b"1",
            b"hello world, this is not a sealed value",
            &[2u8; 64],
        ] {
            assert!(seal.open(garbage, "etls:{k}:result").is_err());
        }
    }
}
