//! Which answers are interim. A `101 Switching Protocols` is informational by its code but is
//! the final answer to an upgrade (a WebSocket handshake): it carries the Set-Cookie lines, and
//! browsers store them. Only 100, 102 and 103 (and unassigned 1xx) are interim.

use http::StatusCode;

pub fn is_interim(status: StatusCode) -> bool {
    status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_non_upgrade_1xx_are_interim() {
        for (code, interim) in [
            (100, true),
            (101, false),
            (102, true),
            (103, true),
            (199, true),
            (200, false),
            (204, false),
            (302, false),
            (401, false),
            (502, false),
        ] {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(is_interim(status), interim, "{code}");
        }
    }
}
