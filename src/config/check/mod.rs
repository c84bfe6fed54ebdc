//! One validation pass over the whole file, a module per YAML section: every problem is
//! collected with the key's path, and the runtime configuration is only built when there are
//! none.

mod auth_api;
mod cookies;
mod downstream;
mod listen;
mod refresh;
mod routes;
mod server;
mod tokens;
mod upstream;

use std::net::SocketAddr;
use std::time::Duration;

use super::file::{FileConfig, LogFile};
use super::{Loaded, Outside, Problem, Resolve, RuntimeConfig};
use crate::ops::access_log::AccessLogFormat;
use crate::session::set_cookie::header_value;
use auth_api::check_auth_api;
use cookies::{Cookies, check_cookies, check_max_chunks};
use downstream::check_downstream;
use listen::{check_admin, check_listen};
use refresh::check_refresh;
use routes::check_routes;
use server::check_pingora;
use tokens::{Tokens, check_tokens};
use upstream::{check_identity, check_upstream};

/// RFC 7518 §3.2: an HS256 key must be at least as long as the hash output.
pub const MIN_SECRET_BYTES: usize = 32;
const MAX_TIMEOUT_MS: u64 = 600_000;
const MAX_WINDOW_SECS: u64 = 86_400;

/// What one pass over the file found: problems (the file is refused) and warnings.
#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
    warnings: Vec<String>,
}

impl Checker {
    fn problem(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    /// Opens a section: its problems land here too, and [`Section::done`] gives its value only
    /// when the section raised none (no hand-kept `ok` flag).
    fn section(&mut self) -> Section<'_> {
        let start = self.problems.len();
        Section { c: self, start }
    }
}

/// One section of the check (or a part of one, such as a list entry's secrets), as a
/// [`Checker`] that knows whether it raised problems.
struct Section<'c> {
    c: &'c mut Checker,
    start: usize,
}

impl Section<'_> {
    /// Whether nothing was raised since the section opened.
    fn clean(&self) -> bool {
        self.c.problems.len() == self.start
    }

    /// `value` when the section raised no problem.
    fn done<T>(self, value: T) -> Option<T> {
        self.clean().then_some(value)
    }
}

impl std::ops::Deref for Section<'_> {
    type Target = Checker;

    fn deref(&self) -> &Checker {
        self.c
    }
}

impl std::ops::DerefMut for Section<'_> {
    fn deref_mut(&mut self) -> &mut Checker {
        self.c
    }
}

pub fn build(file: FileConfig, outside: Outside<'_>) -> Result<Loaded, Vec<Problem>> {
    let mut c = Checker::default();
    let listen = check_listen(&mut c, file.listen.into_vec());
    let server = check_pingora(&mut c, file.pingora);
    let upstream = check_upstream(&mut c, &file.upstream, outside.resolve);
    let auth_api = check_auth_api(&mut c, &file.auth_api, outside.resolve);
    let tokens = check_tokens(&mut c, &file.tokens, outside.env);
    let any_tls = listen.iter().any(|l| l.tls.is_some());
    let cookies = check_cookies(&mut c, &file.cookies, any_tls);
    let routes = check_routes(&mut c, file.routes);
    let downstream = check_downstream(&mut c, &file.downstream);
    let max_chunks = check_max_chunks(&mut c, file.cookies.max_chunks, downstream.max_cookie_bytes);
    let admin_listen = check_admin(&mut c, file.admin.listen, &listen);
    let identity = check_identity(&mut c, &file.upstream_headers);
    let access_log = check_log(&mut c, &file.log);
    let refresh = check_refresh(&mut c, &file.refresh, &file.tokens, outside.env);
    let (Some(server), Some(upstream), Some(auth_api), Some(tokens), Some(cookies), Some(routes)) =
        (server, upstream, auth_api, tokens, cookies, routes)
    else {
        return Err(c.problems);
    };
    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    let Cookies { names, policy } = cookies;
    let host_only: Vec<String> = names
        .all()
        .iter()
        .filter_map(|name| policy.host_only_clear_line(name))
        .collect();
    let clear_host_only = host_only
        .iter()
        .map(|line| header_value(line.clone()))
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_default();
    let clear_cookies = names
        .all()
        .iter()
        .map(|name| policy.clear_line(name))
        .chain(host_only)
        .map(header_value)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            vec![Problem {
                key: "cookies".into(),
                message: e.to_string(),
            }]
        })?;
    let Tokens { keys, mut secrets } = tokens;
    secrets.extend(refresh.store.secret);
    Ok(Loaded {
        runtime: RuntimeConfig {
            listen,
            read_buffer_bytes: downstream.read_buffer_bytes,
            max_cookie_bytes: downstream.max_cookie_bytes,
            keepalive_secs: downstream.keepalive_secs,
            header_timeout: downstream.header_timeout,
            trusted_proxies: downstream.trusted_proxies,
            upstream,
            auth_api,
            keys,
            names,
            cookie_policy: policy,
            max_chunks,
            clear_cookies,
            clear_host_only,
            routes,
            grace: refresh.grace,
            max_entries: refresh.max_entries,
            admin_listen,
            access_log,
            identity,
            session_keyer: refresh.session_keyer,
            shared_store: refresh.store.settings,
        },
        server,
        warnings: c.warnings,
        secrets,
    })
}

/// One entry of a key that takes one value or a list, with the path that names it
/// (`upstream.address`, `upstream.addresses[1]`).
struct Entry<'a> {
    key: String,
    value: &'a str,
}

/// A pair of keys that take one value (`single`, `default` when neither is given) or a list
/// (`list`), never both, and never an empty list: the entries with their paths, or `None` with
/// the problem raised on the list's key. `messages` say what is wrong: (both given, list empty).
fn one_or_list<'a>(
    c: &mut Checker,
    (single_key, single, default): (&str, Option<&'a str>, &'a str),
    (list_key, list): (&str, Option<&'a [String]>),
    (both, empty): (&str, &str),
) -> Option<Vec<Entry<'a>>> {
    match (single, list) {
        (Some(_), Some(_)) => {
            c.problem(list_key, both);
            None
        }
        (_, Some([])) => {
            c.problem(list_key, empty);
            None
        }
        (_, Some(list)) => Some(
            list.iter()
                .enumerate()
                .map(|(i, value)| Entry {
                    key: format!("{list_key}[{i}]"),
                    value,
                })
                .collect(),
        ),
        (single, None) => Some(vec![Entry {
            key: single_key.to_owned(),
            value: single.unwrap_or(default),
        }]),
    }
}

/// `log`: the access log's format, and whether there is one.
fn check_log(c: &mut Checker, log: &LogFile) -> Option<AccessLogFormat> {
    let format = AccessLogFormat::parse(&log.format);
    if format.is_none() {
        c.problem(
            "log.format",
            format!("`{}` is not `text` or `json`", log.format),
        );
    }
    format.filter(|_| log.access)
}

fn check_timeout(c: &mut Checker, key: &str, ms: u64) -> Duration {
    if ms == 0 || ms > MAX_TIMEOUT_MS {
        c.problem(key, format!("must be between 1 and {MAX_TIMEOUT_MS} ms"));
    }
    Duration::from_millis(ms)
}

/// DNS is resolved once, at start (Pingora's `HttpPeer::new` would panic on failure).
fn resolve(
    c: &mut Checker,
    resolver: Resolve<'_>,
    key: &str,
    host_port: &str,
) -> Option<SocketAddr> {
    match resolver(host_port) {
        Ok(addrs) => match addrs.first().copied() {
            Some(a) => Some(a),
            None => {
                c.problem(key, format!("`{host_port}` resolves to no address"));
                None
            }
        },
        Err(e) => {
            c.problem(key, format!("cannot resolve `{host_port}`: {e}"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::file::parse;
    use crate::session::cookies::CookieNames;
    use crate::session::set_cookie::CookiePolicy;
    use crate::testkit::config::{env_with, outside, problems};
    use crate::testkit::{REFRESH_SECRET, SECRETS};

    #[test]
    fn a_section_gives_its_value_only_when_it_raised_no_problem() {
        let mut c = Checker::default();
        c.problem("before", "raised before the section opened");
        let s = c.section();
        assert!(s.clean(), "earlier problems are not the section's");
        assert_eq!(s.done(1), Some(1));
        let mut s = c.section();
        s.warnings.push("a warning is no problem".into());
        assert_eq!(s.done(2), Some(2));
        let mut s = c.section();
        s.problem("inside", "raised in the section");
        assert!(!s.clean());
        assert_eq!(s.done(3), None);
        let keys: Vec<&str> = c.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["before", "inside"],
            "every problem stays in the checker"
        );
        assert_eq!(c.warnings.len(), 1);
    }

    #[test]
    fn one_value_or_a_list_never_both_never_empty() {
        let mut c = Checker::default();
        let keys = |entries: Option<Vec<Entry<'_>>>| {
            entries.map(|e| {
                e.iter()
                    .map(|e| format!("{}={}", e.key, e.value))
                    .collect::<Vec<_>>()
            })
        };
        let list = ["a".to_owned(), "b".to_owned()];
        let msgs = ("both", "empty");
        let got = one_or_list(&mut c, ("k", None, "d"), ("ks", Some(&list[..])), msgs);
        assert_eq!(keys(got), Some(vec!["ks[0]=a".into(), "ks[1]=b".into()]));
        let got = one_or_list(&mut c, ("k", Some("x"), "d"), ("ks", None), msgs);
        assert_eq!(keys(got), Some(vec!["k=x".into()]));
        let got = one_or_list(&mut c, ("k", None, "d"), ("ks", None), msgs);
        assert_eq!(keys(got), Some(vec!["k=d".into()]));
        assert!(c.problems.is_empty());
        assert!(
            one_or_list(&mut c, ("k", Some("x"), "d"), ("ks", Some(&list[..])), msgs).is_none()
        );
        assert!(one_or_list(&mut c, ("k", None, "d"), ("ks", Some(&[][..])), msgs).is_none());
        let raised: Vec<String> = c.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(raised, ["ks: both", "ks: empty"]);
    }

    #[test]
    fn an_empty_file_gives_the_runtime_types_own_defaults() {
        let rt = crate::testkit::config::loaded("{}").runtime;
        assert_eq!(rt.routes, crate::session::routes::Routes::default());
        assert_eq!(
            rt.auth_api.fields,
            crate::refresh::auth_api::AuthFields::default()
        );
        assert_eq!(rt.keys.times, crate::session::tokens::TokenTimes::default());
        assert_eq!(rt.names, CookieNames::default());
        assert_eq!(rt.cookie_policy, CookiePolicy::default());
        assert_eq!(rt.max_chunks, crate::session::chunks::DEFAULT_MAX_CHUNKS);
    }

    #[test]
    fn empty_file_with_secrets_builds_with_seed_defaults() {
        let env = env_with(SECRETS);
        let loaded =
            build(parse("# nothing\n").unwrap(), outside(&env)).unwrap_or_else(|p| panic!("{p:?}"));
        let rt = loaded.runtime;
        assert_eq!(rt.listen[0].address, "0.0.0.0:8080");
        assert_eq!(rt.listen[0].tls, None);
        assert_eq!(rt.names, CookieNames::default());
        assert_eq!(rt.cookie_policy, CookiePolicy::default());
        assert_eq!(rt.keys.times.access_ttl_secs, 900);
        assert_eq!(rt.keys.times.refresh_ttl_secs, 43_200);
        assert_eq!(rt.auth_api.path_and_query, "/refreshtoken");
        assert_eq!(rt.auth_api.authority, "127.0.0.1:3001");
        assert_eq!(rt.auth_api.send_cookies, vec!["refreshToken"]);
        assert_eq!(rt.auth_api.fields.user.as_deref(), Some("userData"));
        assert_eq!(rt.grace, Duration::from_secs(30));
        assert_eq!(rt.clear_cookies.len(), 5);
        assert_eq!(loaded.server.grace_period_seconds, Some(10));
        assert!(loaded.warnings.is_empty());
    }

    #[test]
    fn operations_keys_are_checked_with_their_paths() {
        let yaml = r#"
listen: ["127.0.0.1:8080"]
admin: {listen: "127.0.0.1:8080"}
log: {format: xml}
downstream: {max_cookie_bytes: 10}
upstream_headers: {username: Cookie, role: "bad name", id: X-User, sub: x-user}
"#;
        let got = problems(yaml, SECRETS);
        let keys: Vec<&str> = got.iter().map(|p| p.split(':').next().unwrap()).collect();
        assert_eq!(
            keys,
            [
                "downstream.max_cookie_bytes",
                "admin.listen",
                "upstream_headers.role",
                "upstream_headers.sub",
                "upstream_headers.username",
                "log.format",
            ],
            "{got:?}"
        );
        let env = env_with(SECRETS);
        let ok = "admin: {listen: '127.0.0.1:9901'}\nlog: {access: false, format: json}\nupstream_headers: {username: X-Etls-User}";
        let rt = build(parse(ok).unwrap(), outside(&env))
            .unwrap_or_else(|p| panic!("{p:?}"))
            .runtime;
        assert_eq!(rt.admin_listen.as_deref(), Some("127.0.0.1:9901"));
        // A wildcard overlaps every IP on its port, either way round.
        for (listen, admin, overlaps) in [
            ("127.0.0.1:8080", "0.0.0.0:8080", true),
            ("0.0.0.0:8080", "127.0.0.1:8080", true),
            ("[::]:8080", "127.0.0.1:8080", true),
            ("127.0.0.1:8080", "127.0.0.2:8080", false),
            ("0.0.0.0:8080", "127.0.0.1:8081", false),
        ] {
            let yaml = format!("listen: ['{listen}']\nadmin: {{listen: '{admin}'}}");
            let got = problems(&yaml, SECRETS);
            let refused = got.iter().any(|p| p.starts_with("admin.listen: "));
            assert_eq!(refused, overlaps, "{listen} / {admin}: {got:?}");
        }
        assert_eq!(rt.access_log, None);
        assert_eq!(rt.identity.map.len(), 1);
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let yaml = r#"
listen: ["nonsense", "127.0.0.1:0"]
upstream: {address: "http://x:1"}
auth_api: {refresh_url: "ftp://x/y", timeout_ms: 0, send_cookies: ["bad name"]}
tokens: {refresh_ahead_secs: 5000}
cookies: {same_site: Sideways, path: "nope", names: {user: accessToken}}
routes: {public: ["x"], login_redirect: "//evil.com"}
refresh: {max_entries: 0}
pingora: {threads: 2, no_such_key: 1}
"#;
        let got = problems(
            yaml,
            &[("ETLS_ACCESS", "short"), ("ETLS_REFRESH", REFRESH_SECRET)],
        );
        let want_keys = [
            "listen[0]",
            "listen[1]",
            "upstream.address",
            "auth_api.timeout_ms",
            "auth_api.send_cookies[0]",
            "auth_api.refresh_url",
            "tokens.access_secret_env",
            "tokens.refresh_ahead_secs",
            "cookies.names.user",
            "cookies.same_site",
            "cookies.path",
            "routes.public[0]",
            "routes.login_redirect",
            "refresh.max_entries",
            "pingora.no_such_key",
        ];
        for key in want_keys {
            assert!(
                got.iter().any(|p| p.starts_with(&format!("{key}: "))),
                "{key} not reported in {got:#?}"
            );
        }
        let short = got
            .iter()
            .find(|p| p.starts_with("tokens.access_secret_env"))
            .unwrap();
        assert!(
            short.contains("ETLS_ACCESS") && short.contains("32 bytes"),
            "{short}"
        );
    }

    #[test]
    fn syntax_errors_name_the_key_and_line() {
        let e = parse("auth_api:\n  refresh_url: http://x\n  timeout: 5\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("auth_api") && e.contains("timeout") && e.contains("line 3"),
            "{e}"
        );
        let e = parse("tokens:\n  leeway_secs: soon\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tokens.leeway_secs") && e.contains("line 2"),
            "{e}"
        );
        let e = parse("listen: [\n").unwrap_err();
        assert!(
            matches!(e, crate::config::file::ParseError::Syntax(_)),
            "{e}"
        );
        assert!(e.to_string().contains("line"), "{e}");
    }

    /// serde stops at the first wrong value; the file is read again section by section, so a
    /// wrong type hides no other problem, and the sections it breaks raise nothing about their
    /// defaults.
    #[test]
    fn a_wrong_type_hides_no_other_problem() {
        let yaml = "upstream: {connect_timeout_ms: -1, address: 'no-port'}\n\
                    tokens:\n  leeway_secs: soon\n\
                    auth_api: {refresh_url: 'ftp://x/y'}\n\
                    refresh: {grace_secs: 999999}\n\
                    bogus: 1\n\
                    listen: ['localhost']\n";
        let got = problems(yaml, SECRETS);
        let table = [
            ("upstream.connect_timeout_ms", "line 1"),
            ("tokens.leeway_secs", "invalid type"),
            ("auth_api.refresh_url", "http"),
            ("refresh.grace_secs", ""),
            ("bogus", "unknown field `bogus`"),
            ("listen[0]", ""),
        ];
        for (key, says) in table {
            assert!(
                got.iter()
                    .any(|p| p.starts_with(&format!("{key}: ")) && p.contains(says)),
                "{key} ({says}) not reported in {got:#?}"
            );
        }
        assert_eq!(got.len(), table.len(), "{got:#?}");
        assert!(!got.iter().any(|p| p.contains(" at line ")), "{got:#?}");
    }
}
