//! Minting, once per refresh, with `jsonwebtoken` (which the tests also use to cross-check
//! verification): each kind with its own `typ`, the signing key's `kid`, and for refresh tokens
//! the `sid` binding.

use super::*;

impl TokenKeys {
    pub fn mint_access(&self, claims: &Claims, now: u64) -> Result<String, MintError> {
        self.mint(
            claims,
            now.saturating_add(self.times.access_ttl_secs),
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
        let mut claims = claims.clone();
        claims.insert("sid".into(), Value::from(self.bindings[0].sid(api_cookies)));
        self.mint(
            &claims,
            now.saturating_add(self.times.refresh_ttl_secs),
            self.refresh.signing(),
            TYP_REFRESH,
        )
    }

    /// Seed 002's user token: the auth API's `userData` fields, signed with the access secret and
    /// the access lifetime, typed so it never passes as an access token.
    pub fn mint_user(&self, user: &Claims, now: u64) -> Result<String, MintError> {
        self.mint(
            user,
            now.saturating_add(self.times.access_ttl_secs),
            self.access.signing(),
            TYP_USER,
        )
    }

    fn mint(
        &self,
        claims: &Claims,
        exp: u64,
        key: &HmacKey,
        typ: &str,
    ) -> Result<String, MintError> {
        let mut body = claims.clone();
        body.insert("exp".into(), Value::from(exp));
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(key.kid.clone());
        header.typ = Some(typ.to_owned());
        jsonwebtoken::encode(&header, &body, &key.encoding).map_err(|e| MintError(e.to_string()))
    }
}
