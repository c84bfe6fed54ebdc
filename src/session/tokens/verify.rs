//! Verification, the hot path of every request: structure, `alg` pinned to HS256, signature
//! (constant time), `typ`, then the time claims, with stack buffers and no heap allocation; the
//! tokens that verified are remembered per thread ([`crate::session::verified`]).

use std::borrow::Cow;
use std::cell::RefCell;

use super::claims::{read_fields, session_claims, time_claims};
use super::*;
use crate::session::verified::{self, Verified};

/// Decoded header and payload must fit these stack buffers (base64 is 4 chars per 3 bytes).
pub(super) const MAX_HEADER_BYTES: usize = 512;

pub(super) const MAX_PAYLOAD_BYTES: usize = MAX_TOKEN_BYTES / 4 * 3;

impl KeySet {
    /// Checks structure, `alg`, `kid`, signature and `typ` (against `typ`, the kind expected), and
    /// decodes the payload into `buf`; also says which key verified it. Only configured keys are
    /// ever tried: a `kid` naming none of them is a bad signature.
    pub(super) fn verify<'b>(
        &self,
        token: &[u8],
        typ: &str,
        buf: &'b mut [u8; MAX_PAYLOAD_BYTES],
    ) -> Result<(usize, &'b [u8]), TokenFault> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenFault::TooLarge);
        }
        let mut parts = token.split(|b| *b == b'.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenFault::Malformed);
        };
        let mut header_buf = [0u8; MAX_HEADER_BYTES];
        let header = decode_segment(header, &mut header_buf)?;
        let JwtHeader {
            alg,
            kid,
            typ: token_typ,
            crit,
        } = serde_json::from_slice(header).map_err(|_| TokenFault::Malformed)?;
        if alg != "HS256" {
            return Err(TokenFault::Signature);
        }
        let mut sig_buf = [0u8; 48];
        let signature =
            decode_segment(signature, &mut sig_buf).map_err(|_| TokenFault::Signature)?;
        let message = &token[..token.len() - signature_len(token)];
        let signed_by = |key: &HmacKey| {
            let mut mac = key.mac.clone();
            mac.update(message);
            mac.verify_slice(signature).is_ok()
        };
        let valid = match kid {
            Some(kid) => self
                .keys
                .iter()
                .position(|k| k.kid == *kid)
                .filter(|i| signed_by(&self.keys[*i])),
            None => self.keys.iter().position(signed_by),
        };
        let Some(index) = valid else {
            return Err(TokenFault::Signature);
        };
        if crit.is_some() {
            return Err(TokenFault::Malformed);
        }
        if !typ_allows(token_typ.as_deref(), typ) {
            return Err(TokenFault::Type);
        }
        Ok((index, decode_segment(payload, buf)?))
    }
}

/// `{"alg": "...", "kid": "...", "typ": "..."}`, and whether it has `crit`; other header fields
/// do not change how HS256 verifies. `kid` and `typ` are borrowed from the decoded header; only one written with JSON
/// escapes (never ours: they are base64url or plain ASCII) is unescaped into a `String`, so it
/// reads as it does for jsonwebtoken.
#[derive(Deserialize)]
pub(super) struct JwtHeader<'a> {
    #[serde(borrow)]
    alg: &'a str,
    #[serde(borrow, default, deserialize_with = "borrowed_kid")]
    kid: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_kid")]
    typ: Option<Cow<'a, str>>,
    /// Extensions the token says must be understood (RFC 7515 §4.1.11): this proxy understands
    /// none, so a token naming any is refused.
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

/// Whether a token whose header says `typ` may be taken as the kind `expected`: untyped tokens
/// (no `typ`, or the generic `JWT` that most libraries write, jsonwebtoken's `Header::new`
/// included) pass, as the old routes' do; a `typ` naming another kind does not. Media type names
/// are case-insensitive and may carry the `application/` prefix (RFC 7515 §4.1.9).
pub(super) fn typ_allows(typ: Option<&str>, expected: &str) -> bool {
    let Some(typ) = typ else {
        return true;
    };
    let typ = match typ.get(..12) {
        Some(prefix) if prefix.eq_ignore_ascii_case("application/") => &typ[12..],
        _ => typ,
    };
    typ.eq_ignore_ascii_case("JWT") || typ.eq_ignore_ascii_case(expected)
}

/// `Option<Cow<str>>` borrowing when it can (serde's own `Cow` impl always allocates).
pub(super) fn borrowed_kid<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Cow<'a, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Kid<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Kid<'a>>::deserialize(deserializer)?.map(|Kid(kid)| kid))
}

/// Length of `.signature` at the end of a three-segment token.
pub(super) fn signature_len(token: &[u8]) -> usize {
    token
        .iter()
        .rev()
        .position(|b| *b == b'.')
        .map_or(0, |p| p + 1)
}

/// Strict base64url without padding (non-canonical trailing bits are refused, so a signature has
/// exactly one encoding).
pub(super) fn decode_segment<'b>(
    segment: &[u8],
    buf: &'b mut [u8],
) -> Result<&'b [u8], TokenFault> {
    if segment.is_empty() || segment.len() / 4 * 3 > buf.len() {
        return Err(TokenFault::Malformed);
    }
    let n = URL_SAFE_NO_PAD
        .decode_slice(segment, buf)
        .map_err(|_| TokenFault::Malformed)?;
    Ok(&buf[..n])
}

/// `sid` as we write it: exactly [`SID_BYTES`] in base64url; anything else is not ours.
pub(super) fn decode_sid(sid: &str) -> Result<[u8; SID_BYTES], TokenFault> {
    let mut buf = [0u8; 24];
    match decode_segment(sid.as_bytes(), &mut buf) {
        Ok(bytes) if bytes.len() == SID_BYTES && sid.len() == 22 => {
            let mut out = [0u8; SID_BYTES];
            out.copy_from_slice(bytes);
            Ok(out)
        }
        _ => Err(TokenFault::Claims),
    }
}

/// What a verified token says that does not change with the clock, as this thread remembers it.
#[derive(Clone, Copy)]
pub(super) struct Checked {
    /// Index of the key that verified it.
    key: usize,
    exp: u64,
    nbf: Option<u64>,
    sid: Sid,
}

/// A refresh token's `sid` claim, decoded (an access token's is never read).
#[derive(Clone, Copy)]
pub(super) enum Sid {
    Absent,
    Valid([u8; SID_BYTES]),
    Invalid(TokenFault),
}

thread_local! {
    static VERIFIED: RefCell<Verified<Checked>> = RefCell::new(Verified::default());
}

impl TokenKeys {
    pub fn check_access(&self, token: &[u8], now: u64) -> AccessState {
        let checked = verified::with(&VERIFIED, |memory| {
            self.checked::<false>(memory, &self.access, TYP_ACCESS, token)
        });
        match checked.and_then(|c| self.remaining(&c, now)) {
            Err(fault) => AccessState::Invalid(fault),
            Ok(0) => AccessState::Expired,
            Ok(left) if left <= self.times.refresh_ahead_secs => AccessState::Due,
            Ok(_) => AccessState::Fresh,
        }
    }

    pub fn check_refresh(&self, token: &[u8], now: u64) -> RefreshState {
        let checked = verified::with(&VERIFIED, |memory| {
            self.checked::<true>(memory, &self.refresh, TYP_REFRESH, token)
        });
        let checked = match checked {
            Ok(c) => c,
            Err(fault) => return RefreshState::Invalid(fault),
        };
        match self.remaining(&checked, now) {
            Err(fault) => RefreshState::Invalid(fault),
            Ok(0) => RefreshState::Expired,
            Ok(_) => match checked.sid {
                Sid::Absent => RefreshState::Valid(Binding::Unbound),
                Sid::Valid(sid) => RefreshState::Valid(Binding::Bound {
                    key: checked.key,
                    sid,
                }),
                Sid::Invalid(fault) => RefreshState::Invalid(fault),
            },
        }
    }

    /// The session claims of a refresh token `check_refresh` found valid, to carry into the new
    /// tokens.
    pub fn refresh_claims(&self, token: &[u8]) -> Result<Claims, TokenFault> {
        let mut buf = [0u8; MAX_PAYLOAD_BYTES];
        let (_, payload) = self.refresh.verify(token, TYP_REFRESH, &mut buf)?;
        serde_json::from_slice::<Claims>(payload)
            .map(session_claims)
            .map_err(|_| TokenFault::Claims)
    }

    /// Verifies `token` with `set` as a token of kind `typ` and reads what does not change with
    /// the clock: the index of the key that verified it, its time claims and (`SID`) its `sid`.
    /// This thread remembers tokens that verified, so the same token again costs a comparison.
    fn checked<const SID: bool>(
        &self,
        memory: &mut Verified<Checked>,
        set: &KeySet,
        typ: &str,
        token: &[u8],
    ) -> Result<Checked, TokenFault> {
        if let Some(known) = memory.get(set.id, token) {
            return Ok(known);
        }
        let mut buf = [0u8; MAX_PAYLOAD_BYTES];
        let (key, payload) = set.verify(token, typ, &mut buf)?;
        let fields = read_fields::<SID>(payload)?;
        let (exp, nbf) = time_claims(fields.exp.as_ref(), fields.nbf.as_ref())?;
        let sid = match fields.sid.map(decode_sid) {
            None => Sid::Absent,
            Some(Ok(sid)) => Sid::Valid(sid),
            Some(Err(fault)) => Sid::Invalid(fault),
        };
        let checked = Checked { key, exp, nbf, sid };
        memory.put(set.id, token, checked);
        Ok(checked)
    }

    /// Seconds of validity left (0: expired), leeway included.
    fn remaining(&self, checked: &Checked, now: u64) -> Result<u64, TokenFault> {
        let leeway = self.times.leeway_secs;
        if checked
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(leeway))
        {
            return Err(TokenFault::Claims);
        }
        Ok(checked.exp.saturating_add(leeway).saturating_sub(now))
    }
}
