//! The app's answer as the browser gets it: its `X-Request-Id`, and on a refreshed or grace
//! answer the Set-Cookie lines and `Cache-Control`.
//!
//! Pingora's `insert_header` and `append_header` parse each name again and write a second,
//! case-keeping map, growing both (the app's answer arrives with full maps): even the one
//! `X-Request-Id` cost about 4,000 instructions per request that way (callgrind), five Set-Cookie
//! lines more than the rest of the answer's handling. [`edit`] takes the header map out of
//! the answer, reserves once, and lets the caller work on the map itself; the answer then has no
//! case map, so its names go out in lower case (the standard ones such as `Set-Cookie` titled),
//! as over HTTP/2.

use http::HeaderMap;
use http::response::Parts;
use pingora::http::ResponseHeader;

/// What Pingora sets on every HTTP/1 answer after the filters (`Date`, `Connection`): reserved
/// too, or its own insert would grow the map again.
const PINGORA_ADDS: usize = 2;

/// Runs `change` on `response`'s own header map (with room for `additional` more entries);
/// status, version, reason phrase and extensions are kept.
pub fn edit(
    response: &mut ResponseHeader,
    additional: usize,
    change: impl FnOnce(&mut HeaderMap),
) -> pingora::Result<()> {
    let reason = custom_reason(response);
    let empty = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts: Parts = std::mem::replace(response, empty).into();
    parts.headers.reserve(additional + PINGORA_ADDS);
    change(&mut parts.headers);
    *response = ResponseHeader::from(parts);
    response.set_reason_phrase(reason.as_deref())
}

/// The app's own reason phrase, when it is not the standard one for its status.
fn custom_reason(response: &ResponseHeader) -> Option<String> {
    response
        .get_reason_phrase()
        .filter(|reason| Some(*reason) != response.status.canonical_reason())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use http::header::SET_COOKIE;

    #[test]
    fn the_answer_keeps_everything_but_the_case_of_its_names() {
        let mut response = ResponseHeader::build(404, None).unwrap();
        response.set_reason_phrase(Some("Nothing Here")).unwrap();
        for (name, value) in [
            ("Content-Type", "text/html"),
            ("Set-Cookie", "theme=dark"),
            ("X-App", "1"),
        ] {
            response.append_header(name, value).unwrap();
        }
        edit(&mut response, 1, |headers| {
            headers.append(SET_COOKIE, HeaderValue::from_static("a=1"));
        })
        .unwrap();
        assert_eq!(response.status, 404);
        assert_eq!(response.get_reason_phrase(), Some("Nothing Here"));
        let cookies: Vec<&str> = response
            .headers
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(cookies, ["theme=dark", "a=1"]);
        let mut wire = Vec::new();
        response.header_to_h1_wire(&mut wire);
        assert_eq!(
            String::from_utf8(wire).unwrap(),
            "Content-Type: text/html\r\nSet-Cookie: theme=dark\r\nSet-Cookie: a=1\r\nx-app: 1\r\n"
        );
    }

    #[test]
    fn a_standard_reason_stays_the_default() {
        let mut response = ResponseHeader::build(200, None).unwrap();
        edit(&mut response, 0, |_| {}).unwrap();
        assert_eq!(response.get_reason_phrase(), Some("OK"));
    }
}
