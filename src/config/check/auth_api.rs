//! `auth_api`: the refresh and logout endpoints, the cookies sent, the answer's fields.

use std::time::Duration;

use http::Uri;
use pingora::upstreams::peer::HttpPeer;

use super::{Checker, check_timeout, resolve};
use crate::config::Resolve;
use crate::config::file::AuthApiFile;
use crate::refresh::auth_api::{ApiEndpoint, AuthApiSettings, AuthFields};
use crate::session::cookies::is_cookie_name;

pub(super) fn check_auth_api(
    c: &mut Checker,
    a: &AuthApiFile,
    resolver: Resolve<'_>,
) -> Option<AuthApiSettings> {
    let timeout = check_timeout(c, "auth_api.timeout_ms", a.timeout_ms);
    if a.send_cookies.is_empty() {
        c.problem(
            "auth_api.send_cookies",
            "needs at least one cookie name (seed 002 sends refreshToken)",
        );
    }
    for (i, name) in a.send_cookies.iter().enumerate() {
        if !is_cookie_name(name) {
            c.problem(
                format!("auth_api.send_cookies[{i}]"),
                format!("`{name}` is not a valid cookie name"),
            );
        }
    }
    for (key, value) in [
        ("auth_api.fields.access_token", Some(&a.fields.access_token)),
        (
            "auth_api.fields.refresh_token",
            Some(&a.fields.refresh_token),
        ),
        ("auth_api.fields.user", a.fields.user.as_ref()),
    ] {
        if value.is_some_and(|v| v.is_empty()) {
            c.problem(
                key,
                "must not be empty (use null for `user` when the auth API sends none)",
            );
        }
    }
    if a.max_in_flight == 0 {
        c.problem("auth_api.max_in_flight", "must be at least 1");
    }
    let logout = a
        .logout_url
        .as_ref()
        .map(|url| check_endpoint(c, resolver, "auth_api.logout_url", url, timeout));
    let refresh = check_endpoint(c, resolver, "auth_api.refresh_url", &a.refresh_url, timeout)?;
    Some(AuthApiSettings {
        peer: refresh.peer,
        authority: refresh.authority,
        path_and_query: refresh.path_and_query,
        timeout,
        send_cookies: a.send_cookies.clone(),
        fields: AuthFields {
            access_token: a.fields.access_token.clone(),
            refresh_token: a.fields.refresh_token.clone(),
            user: a.fields.user.clone(),
        },
        logout: logout.flatten(),
        max_in_flight: a.max_in_flight,
    })
}

/// An auth API URL (`http://` or `https://`, no credentials), resolved once.
pub(super) fn check_endpoint(
    c: &mut Checker,
    resolver: Resolve<'_>,
    key: &str,
    url: &str,
    timeout: Duration,
) -> Option<ApiEndpoint> {
    let uri: Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => {
            c.problem(key, format!("`{url}` is not a valid URL: {e}"));
            return None;
        }
    };
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            c.problem(key, format!("`{url}` must start with http:// or https://"));
            return None;
        }
    };
    let Some(authority) = uri.authority() else {
        c.problem(key, format!("`{url}` has no host"));
        return None;
    };
    if authority.as_str().contains('@') {
        c.problem(key, "must not carry credentials (user@host)");
        return None;
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let addr = resolve(c, resolver, key, &format!("{}:{port}", authority.host()))?;
    let mut peer = HttpPeer::new(addr, tls, host);
    peer.options.connection_timeout = Some(timeout);
    peer.options.total_connection_timeout = Some(timeout);
    peer.options.read_timeout = Some(timeout);
    peer.options.write_timeout = Some(timeout);
    Some(ApiEndpoint {
        peer,
        authority: authority.as_str().to_owned(),
        path_and_query: uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use crate::config::build;
    use crate::config::file::parse;
    use crate::testkit::SECRETS;
    use crate::testkit::config::{env_with, outside, problems};

    #[test]
    fn logout_url_and_max_in_flight_are_checked_and_built() {
        let env = env_with(SECRETS);
        let rt = build(parse("# nothing\n").unwrap(), outside(&env))
            .unwrap_or_else(|p| panic!("{p:?}"))
            .runtime;
        assert_eq!(rt.auth_api.max_in_flight, 256);
        assert!(rt.auth_api.logout.is_none());
        let yaml = "auth_api: {logout_url: 'http://127.0.0.1:3002/logout?all=1', max_in_flight: 3}";
        let rt = build(parse(yaml).unwrap(), outside(&env))
            .unwrap_or_else(|p| panic!("{p:?}"))
            .runtime;
        let logout = rt.auth_api.logout.expect("a backend logout");
        assert_eq!(logout.authority, "127.0.0.1:3002");
        assert_eq!(logout.path_and_query, "/logout?all=1");
        assert_eq!(rt.auth_api.max_in_flight, 3);
        for (yaml, key, says) in [
            (
                "auth_api: {max_in_flight: 0}",
                "auth_api.max_in_flight",
                "at least 1",
            ),
            (
                "auth_api: {logout_url: 'ftp://x/y'}",
                "auth_api.logout_url",
                "http://",
            ),
            (
                "auth_api: {logout_url: 'http://u:p@h/x'}",
                "auth_api.logout_url",
                "credentials",
            ),
            (
                "auth_api: {logout_url: '/logout'}",
                "auth_api.logout_url",
                "must start",
            ),
            (
                "auth_api: {logout_url: 'http://no-such-host.invalid/x'}",
                "auth_api.logout_url",
                "resolve",
            ),
        ] {
            let got = problems(yaml, SECRETS);
            assert!(
                got.iter()
                    .any(|p| p.starts_with(&format!("{key}: ")) && p.contains(says)),
                "{yaml}: {got:#?}"
            );
            assert!(
                !got.iter().any(|p| p.starts_with("auth_api.refresh_url")),
                "{got:#?}"
            );
        }
    }

    #[test]
    fn user_field_null_is_kept_as_none() {
        let env = env_with(SECRETS);
        let rt = build(
            parse("auth_api: {fields: {user: null}}").unwrap(),
            outside(&env),
        )
        .ok()
        .unwrap()
        .runtime;
        assert_eq!(rt.auth_api.fields.user, None);
    }
}
