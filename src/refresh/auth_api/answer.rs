//! Reading the auth API's answer: a pure function of status, content type and body, tested
//! without a socket.

use serde_json::Value;

use super::*;
use crate::session::cookies::is_cookie_octets;

/// Seed 000's checks, made strict: only a 2xx `application/json` answer with the configured
/// fields counts; 400/401/403 end the session; everything else is the auth API's failure.
pub fn read_answer(
    status: u16,
    content_type: Option<&[u8]>,
    body: &[u8],
    fields: &AuthFields,
) -> Result<ApiTokens, AuthApiError> {
    if matches!(status, 400 | 401 | 403) {
        return Err(AuthApiError::Rejected(status));
    }
    let bad = |why: String| Err(AuthApiError::BadAnswer(why));
    if !(200..300).contains(&status) {
        return bad(format!("HTTP {status}"));
    }
    if !content_type.is_some_and(is_json_media_type) {
        return bad("content type is not application/json".into());
    }
    let Ok(Value::Object(mut doc)) = serde_json::from_slice::<Value>(body) else {
        return bad("body is not a JSON object".into());
    };
    let mut token = |name: &str| -> Result<String, AuthApiError> {
        match doc.remove(name) {
            Some(Value::String(s)) if !s.is_empty() => check_cookie_value(name, s),
            Some(Value::String(_)) => Err(AuthApiError::BadAnswer(format!("`{name}` is empty"))),
            Some(_) => Err(AuthApiError::BadAnswer(format!("`{name}` is not a string"))),
            None => Err(AuthApiError::BadAnswer(format!("`{name}` is missing"))),
        }
    };
    let access_token = token(&fields.access_token)?;
    let refresh_token = token(&fields.refresh_token)?;
    let user = match &fields.user {
        None => None,
        Some(name) => Some(match doc.remove(name) {
            Some(Value::Object(record)) => UserData::Record(record),
            Some(Value::String(s)) if !s.is_empty() => {
                UserData::Token(check_cookie_value(name, s)?)
            }
            Some(_) => {
                return bad(format!(
                    "`{name}` is neither an object nor a non-empty string"
                ));
            }
            None => return bad(format!("`{name}` is missing")),
        }),
    };
    Ok(ApiTokens {
        access_token,
        refresh_token,
        user,
    })
}

pub(super) fn check_cookie_value(field: &str, value: String) -> Result<String, AuthApiError> {
    if !is_cookie_octets(value.as_bytes()) {
        return Err(AuthApiError::BadAnswer(format!(
            "`{field}` holds characters not allowed in a cookie"
        )));
    }
    Ok(value)
}

/// `application/json`, any case, parameters allowed.
pub(super) fn is_json_media_type(value: &[u8]) -> bool {
    let media = value.split(|b| *b == b';').next().unwrap_or_default();
    media.trim_ascii().eq_ignore_ascii_case(b"application/json")
}
