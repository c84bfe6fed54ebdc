//! Minting, once per refresh: each kind with its own `typ`, the signing key's `kid`, and for
//! refresh tokens the `sid` binding. The token is written here rather than by `jsonwebtoken`
//! (which the tests use to decode and check what is minted): the header segment is encoded once
//! per key and kind, the HMAC state after the key block is cloned as verification does, and the
//! payload is serialized straight from the carried claims, with no copy of them.

use serde::ser::{Serialize, SerializeMap, Serializer};

use super::*;

impl TokenKeys {
    pub fn mint_access(&self, claims: &Claims, now: u64) -> Result<String, MintError> {
        let exp = now.saturating_add(self.times.access_ttl_secs);
        mint(
            &Payload::new(claims, None, exp),
            self.access.signing(),
            TYP_ACCESS,
        )
    }

    /// A refresh token bound to the auth API session `api_cookies` (the string the next refresh
    /// will send the auth API): its `sid` is that string's keyed hash under the first secret's
    /// binding key, never the cookies themselves.
    pub fn mint_refresh(
        &self,
        claims: &Claims,
        api_cookies: &str,
        now: u64,
    ) -> Result<String, MintError> {
        let sid = self.bindings[0].sid(api_cookies);
        let exp = now.saturating_add(self.times.refresh_ttl_secs);
        mint(
            &Payload::new(claims, Some(&sid), exp),
            self.refresh.signing(),
            TYP_REFRESH,
        )
    }

    /// Seed 002's user token: the auth API's `userData` fields, signed with the access secret and
    /// the access lifetime, typed so it never passes as an access token.
    pub fn mint_user(&self, user: &Claims, now: u64) -> Result<String, MintError> {
        let exp = now.saturating_add(self.times.access_ttl_secs);
        mint(
            &Payload::new(user, None, exp),
            self.access.signing(),
            TYP_USER,
        )
    }
}

/// `header.payload.signature`, base64url, signed HS256 with `key`.
fn mint(payload: &Payload<'_>, key: &HmacKey, typ: &str) -> Result<String, MintError> {
    let header = key
        .header_segment(typ)
        .ok_or_else(|| MintError(format!("no header for the token kind {typ}")))?;
    let mut json = Vec::with_capacity(256);
    serde_json::to_writer(&mut json, payload).map_err(|e| MintError(e.to_string()))?;
    // Header, payload and the 43 characters of a SHA-256 signature, with their two dots.
    let mut token = String::with_capacity(header.len() + json.len().div_ceil(3) * 4 + 45);
    token.push_str(header);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(&json, &mut token);
    let mut mac = key.mac.clone();
    mac.update(token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(mac.finalize().into_bytes(), &mut token);
    Ok(token)
}

/// The base64url header segment of a token of kind `typ` signed under `kid`: the header
/// `jsonwebtoken` writes for HS256 with that `typ` and `kid`, encoded once per key.
pub(super) fn header_segment(kid: &str, typ: &str) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.to_owned());
    header.typ = Some(typ.to_owned());
    let json = serde_json::to_vec(&header).expect("a JWT header serializes");
    URL_SAFE_NO_PAD.encode(json)
}

/// A minted token's claims: the ones carried on, then `sid` (refresh tokens only) and `exp`,
/// each replacing a carried claim of the same name, as inserting them into a copy would.
struct Payload<'a> {
    claims: &'a Claims,
    sid: Option<&'a str>,
    exp: u64,
}

impl<'a> Payload<'a> {
    fn new(claims: &'a Claims, sid: Option<&'a str>, exp: u64) -> Self {
        Payload { claims, sid, exp }
    }
}

impl Serialize for Payload<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (name, value) in self.claims {
            let replaced = name == "exp" || (name == "sid" && self.sid.is_some());
            if !replaced {
                map.serialize_entry(name, value)?;
            }
        }
        if let Some(sid) = self.sid {
            map.serialize_entry("sid", sid)?;
        }
        map.serialize_entry("exp", &self.exp)?;
        map.end()
    }
}
