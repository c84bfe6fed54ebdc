//! `routes`: public paths, the refresh and logout endpoints, the login redirect.

use super::Checker;
use crate::config::file::RoutesFile;
use crate::session::routes::{Routes, is_local_path};

pub(super) fn check_routes(c: &mut Checker, r: RoutesFile) -> Option<Routes> {
    let mut c = c.section();
    for (i, p) in r.public.iter().enumerate() {
        if !p.starts_with('/') {
            c.problem(
                format!("routes.public[{i}]"),
                format!("`{p}` must start with /"),
            );
        }
    }
    for (key, value) in [
        ("routes.refresh_endpoint", &r.refresh_endpoint),
        ("routes.logout_endpoint", &r.logout_endpoint),
    ] {
        if let Some(path) = value
            && (!path.starts_with('/') || path.contains('?'))
        {
            c.problem(
                key,
                format!("`{path}` must be a path starting with / (or null to disable)"),
            );
        }
    }
    if r.refresh_endpoint.is_some() && r.refresh_endpoint == r.logout_endpoint {
        c.problem(
            "routes.logout_endpoint",
            "must differ from routes.refresh_endpoint",
        );
    }
    let routes = Routes {
        public: r.public,
        refresh_endpoint: r.refresh_endpoint,
        logout_endpoint: r.logout_endpoint,
        login_redirect: r.login_redirect,
    };
    // The login page itself is public without being listed (`Routes::classify`).
    if let Some(target) = &routes.login_redirect
        && !is_local_path(target)
    {
        c.problem(
            "routes.login_redirect",
            format!("`{target}` must be a local path (starting with /, no scheme, no //)"),
        );
    }
    c.done(routes)
}

#[cfg(test)]
mod tests {
    use crate::testkit::SECRETS;
    use crate::testkit::config::problems;

    #[test]
    fn login_redirect_is_public_without_being_listed() {
        for yaml in [
            "routes: {login_redirect: /login}",
            "routes: {login_redirect: /login, public: []}",
            "routes: {login_redirect: '/login?x=1', public: [/login]}",
        ] {
            let got = problems(yaml, SECRETS);
            assert!(got.is_empty(), "{yaml}: {got:?}");
        }
    }
}
