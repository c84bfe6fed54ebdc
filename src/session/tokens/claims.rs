//! Reading claims: the time claims (and `sid`) of a payload without storing the others, and the
//! session claims a refresh carries into the new tokens.

use super::*;

/// JWT claims defined by RFC 7519 §4.1; everything else is the session's own and is carried over
/// on refresh.
pub(super) const REGISTERED_CLAIMS: [&str; 7] = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"];

/// Claims of the proxy's own that describe one token, never carried into the next one.
pub(super) const PER_TOKEN_CLAIMS: [&str; 2] = ["sid", "typ"];

/// `exp` and `nbf` read loosely, so a wrongly typed claim is reported as such, and, for refresh
/// tokens (`SID`), `sid` borrowed from the payload. Only a JSON object is accepted (a derived
/// struct would also take an array), and the other claims are skipped without being stored.
pub(super) struct TimeFields<'a> {
    pub(super) exp: Option<Value>,
    pub(super) nbf: Option<Value>,
    pub(super) sid: Option<&'a str>,
}

/// Reads [`TimeFields`] from a payload; `sid` only when `SID`, so an access token's claims are
/// read exactly as before.
pub(super) fn read_fields<const SID: bool>(payload: &[u8]) -> Result<TimeFields<'_>, TokenFault> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_slice(payload);
    let fields = FieldsSeed::<SID>
        .deserialize(&mut de)
        .map_err(|_| TokenFault::Claims)?;
    de.end().map_err(|_| TokenFault::Claims)?;
    Ok(fields)
}

pub(super) struct FieldsSeed<const SID: bool>;

impl<'de, const SID: bool> serde::de::DeserializeSeed<'de> for FieldsSeed<SID> {
    type Value = TimeFields<'de>;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "lowercase")]
        enum Field {
            Exp,
            Nbf,
            Sid,
            #[serde(other)]
            Other,
        }

        struct ClaimsVisitor<const SID: bool>;

        impl<'de, const SID: bool> serde::de::Visitor<'de> for ClaimsVisitor<SID> {
            type Value = TimeFields<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object of claims")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<TimeFields<'de>, A::Error> {
                let mut fields = TimeFields {
                    exp: None,
                    nbf: None,
                    sid: None,
                };
                while let Some(field) = map.next_key::<Field>()? {
                    match field {
                        // A claim given twice is ambiguous: refused, as jsonwebtoken does.
                        Field::Exp if fields.exp.is_some() => {
                            return Err(serde::de::Error::duplicate_field("exp"));
                        }
                        Field::Nbf if fields.nbf.is_some() => {
                            return Err(serde::de::Error::duplicate_field("nbf"));
                        }
                        Field::Sid if SID && fields.sid.is_some() => {
                            return Err(serde::de::Error::duplicate_field("sid"));
                        }
                        Field::Exp => fields.exp = Some(map.next_value()?),
                        Field::Nbf => fields.nbf = Some(map.next_value()?),
                        // Borrowed: ours is base64url, never escaped; an escaped one is refused.
                        Field::Sid if SID => fields.sid = Some(map.next_value()?),
                        Field::Sid | Field::Other => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(fields)
            }
        }

        deserializer.deserialize_map(ClaimsVisitor::<SID>)
    }
}

/// `exp` must be a positive integer; `nbf`, when present, too.
pub(super) fn time_claims(
    exp: Option<&Value>,
    nbf: Option<&Value>,
) -> Result<(u64, Option<u64>), TokenFault> {
    let exp = exp
        .and_then(Value::as_u64)
        .filter(|e| *e > 0)
        .ok_or(TokenFault::Claims)?;
    let nbf = match nbf {
        None => None,
        Some(v) => Some(v.as_u64().ok_or(TokenFault::Claims)?),
    };
    Ok((exp, nbf))
}

/// The claims a refreshed token carries over: all but the registered ones, which are re-issued,
/// and the per-token ones (`sid`, `typ`), which describe the old token only.
pub(super) fn session_claims(mut claims: Claims) -> Claims {
    claims.retain(|k, _| {
        !REGISTERED_CLAIMS.contains(&k.as_str()) && !PER_TOKEN_CLAIMS.contains(&k.as_str())
    });
    claims
}
