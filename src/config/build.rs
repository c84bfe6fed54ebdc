//! One validation pass over the whole file: every problem is collected with the key's path, and
//! the runtime configuration is only built when there are none.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::time::Duration;

use cookie::SameSite;
use http::Uri;
use pingora::server::configuration::ServerConf;
use pingora::upstreams::peer::HttpPeer;

use super::file::{AuthApiFile, CookiesFile, FileConfig, RoutesFile, TokensFile, UpstreamFile};
use super::file::{DEFAULT_APP_ADDRESS, ListenFile};
use super::{Env, Listener, Loaded, Outside, Problem, Resolve, RuntimeConfig, TlsFiles, Upstream};
use crate::ops::access_log::AccessLogFormat;
use crate::proxy::forwarded::{Cidr, TrustedProxies};
use crate::refresh::auth_api::{ApiEndpoint, AuthApiSettings, AuthFields};
use crate::session::chunks::{MAX_CHUNKS, MAX_LINE_BYTES};
use crate::session::cookies::{CookieNames, is_cookie_name};
use crate::session::identity::{IdentityHeaders, is_reserved};
use crate::session::routes::{Routes, is_local_path};
use crate::session::secret::Secret;
use crate::session::set_cookie::{CookiePolicy, header_value};
use crate::session::tokens::{TokenKeys, TokenTimes, UnboundRefresh};
use http::HeaderName;

/// RFC 7518 §3.2: an HS256 key must be at least as long as the hash output.
pub const MIN_SECRET_BYTES: usize = 32;
const MAX_TIMEOUT_MS: u64 = 600_000;
/// Ten years: longer lifetimes are typos (and `now + ttl` must not overflow).
const MAX_TTL_SECS: u64 = 315_360_000;
const MAX_WINDOW_SECS: u64 = 86_400;
/// `downstream.*_timeout_secs`: an hour at most (nginx has no upper bound; more only holds sockets).
const MAX_DOWNSTREAM_SECS: u64 = 3_600;
const MAX_HEALTH_CHECK_SECS: u64 = 3600;
const DEFAULT_MAX_CHUNKS: usize = 8;

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
    let read_buffer_bytes = file.downstream.read_buffer_bytes;
    if !(1024..=1024 * 1024).contains(&read_buffer_bytes) {
        c.problem(
            "downstream.read_buffer_bytes",
            "must be between 1024 and 1048576",
        );
    }
    let max_cookie_bytes = file.downstream.max_cookie_bytes;
    if !(1024..=1024 * 1024).contains(&max_cookie_bytes) {
        c.problem(
            "downstream.max_cookie_bytes",
            "must be between 1024 and 1048576",
        );
    }
    let keepalive_secs = file.downstream.keepalive_timeout_secs;
    if keepalive_secs > MAX_DOWNSTREAM_SECS {
        c.problem(
            "downstream.keepalive_timeout_secs",
            format!("must be at most {MAX_DOWNSTREAM_SECS} seconds (0 turns keep-alive off)"),
        );
    }
    let header_secs = file.downstream.header_timeout_secs;
    if !(1..=MAX_DOWNSTREAM_SECS).contains(&header_secs) {
        c.problem(
            "downstream.header_timeout_secs",
            format!("must be between 1 and {MAX_DOWNSTREAM_SECS} seconds"),
        );
    }
    let trusted_proxies = check_trusted_proxies(&mut c, &file.downstream.trusted_proxies);
    let max_chunks = check_max_chunks(&mut c, file.cookies.max_chunks, max_cookie_bytes);
    let admin_listen = check_admin(&mut c, file.admin.listen, &listen);
    let identity = check_identity(&mut c, &file.upstream_headers);
    let format = AccessLogFormat::parse(&file.log.format);
    if format.is_none() {
        c.problem(
            "log.format",
            format!("`{}` is not `text` or `json`", file.log.format),
        );
    }
    let access_log = format.filter(|_| file.log.access);
    if file.refresh.max_entries == 0 {
        c.problem("refresh.max_entries", "must be at least 1");
    }
    if file.refresh.grace_secs > MAX_WINDOW_SECS {
        c.problem(
            "refresh.grace_secs",
            format!("must be at most {MAX_WINDOW_SECS} seconds"),
        );
    }
    let refresh_secret = crate::refresh::shared_store::settings::first_refresh_secret(
        file.tokens.refresh_secret_envs.as_deref(),
        file.tokens.refresh_secret_env.as_deref(),
        outside.env,
    );
    let store = crate::refresh::shared_store::settings::check(
        file.refresh.store,
        &file.refresh.redis,
        outside.env,
        refresh_secret.expose(),
    );
    for (key, message) in store.problems {
        c.problem(key, message);
    }
    let (
        Some(server),
        Some(upstream),
        Some(auth_api),
        Some((keys, mut secrets)),
        Some((names, policy)),
        Some(routes),
    ) = (server, upstream, auth_api, tokens, cookies, routes)
    else {
        return Err(c.problems);
    };
    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    let clear_cookies = names
        .all()
        .iter()
        .map(|name| header_value(policy.clear_line(name)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            vec![Problem {
                key: "cookies".into(),
                message: e.to_string(),
            }]
        })?;
    secrets.extend(store.secret);
    Ok(Loaded {
        runtime: RuntimeConfig {
            listen,
            read_buffer_bytes,
            max_cookie_bytes,
            keepalive_secs,
            header_timeout: Duration::from_secs(header_secs),
            trusted_proxies,
            upstream,
            auth_api,
            keys,
            names,
            cookie_policy: policy,
            max_chunks,
            clear_cookies,
            routes,
            grace: Duration::from_secs(file.refresh.grace_secs),
            max_entries: file.refresh.max_entries,
            admin_listen,
            access_log,
            identity,
            // Alone, one random key for the process's life, so a reload (a secret rotation
            // included) never re-keys a refresh in flight or a session's tombstones; shared, a
            // key every instance derives alike.
            session_keyer: match store.settings {
                Some(_) => {
                    crate::refresh::shared_store::settings::session_keyer(refresh_secret.expose())
                }
                None => crate::refresh::shared_store::settings::process_session_keyer(),
            },
            shared_store: store.settings,
        },
        server,
        warnings: c.warnings,
        secrets,
    })
}

fn check_listen(c: &mut Checker, listen: Vec<ListenFile>) -> Vec<Listener> {
    if listen.is_empty() {
        c.problem("listen", "needs at least one address");
    }
    let mut seen = HashSet::new();
    let mut checked = Vec::with_capacity(listen.len());
    for (i, entry) in listen.into_iter().enumerate() {
        let key = format!("listen[{i}]");
        let (addr, tls) = entry.into_parts();
        match addr.parse::<SocketAddr>() {
            Err(_) => c.problem(
                &key,
                format!("`{addr}` is not an IP:port address (e.g. 0.0.0.0:8080)"),
            ),
            Ok(sa) if sa.port() == 0 => c.problem(&key, "port 0 is not a fixed address"),
            Ok(sa) if !seen.insert(sa) => c.problem(&key, format!("`{addr}` is listed twice")),
            Ok(_) => {}
        }
        let tls = tls.map(|t| {
            if let Err(message) = check_certificate(&t.cert, &t.key) {
                c.problem(format!("{key}.tls"), message);
            }
            TlsFiles {
                cert: t.cert,
                key: t.key,
            }
        });
        checked.push(Listener { address: addr, tls });
    }
    checked
}

/// The certificate and key load and belong together, as the listener will need them: checked
/// here so a bad pair is refused with its key, not found by Pingora at start.
fn check_certificate(cert: &str, key: &str) -> Result<(), String> {
    use pingora::tls::{ServerConfig, install_default_crypto_provider, load_certs_and_key_files};
    install_default_crypto_provider();
    let (certs, key_der) = match load_certs_and_key_files(cert, key) {
        Ok(Some(pair)) => pair,
        Ok(None) => {
            return Err(format!(
                "no certificate in `{cert}` or no private key in `{key}`"
            ));
        }
        Err(e) => return Err(format!("cannot read `{cert}` / `{key}`: {e}")),
    };
    ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map(|_| ())
        .map_err(|e| format!("`{cert}` and `{key}` do not make a usable pair: {e}"))
}

/// Each claim names one header; a header is named once, and never one that frames the request.
fn check_identity(c: &mut Checker, map: &BTreeMap<String, String>) -> IdentityHeaders {
    let mut seen = HashSet::new();
    let mut identity = IdentityHeaders::default();
    for (claim, header) in map {
        let key = format!("upstream_headers.{claim}");
        match HeaderName::from_bytes(header.as_bytes()) {
            Err(_) => c.problem(key, format!("`{header}` is not a header name")),
            Ok(name) if is_reserved(&name) => {
                c.problem(key, format!("`{header}` cannot carry identity"))
            }
            Ok(name) if !seen.insert(name.clone()) => {
                c.problem(key, format!("`{header}` is mapped from two claims"))
            }
            Ok(name) => identity.map.push((claim.clone(), name)),
        }
    }
    identity
}

/// The admin listener is off unless set, and never shares an address with the proxy.
fn check_admin(c: &mut Checker, admin: Option<String>, listen: &[Listener]) -> Option<String> {
    let addr = admin?;
    match addr.parse::<SocketAddr>() {
        Err(_) => c.problem(
            "admin.listen",
            format!("`{addr}` is not an IP:port address (e.g. 127.0.0.1:9901)"),
        ),
        Ok(sa) if sa.port() == 0 => c.problem("admin.listen", "port 0 is not a fixed address"),
        Ok(sa)
            if listen
                .iter()
                .any(|l| l.address.parse::<SocketAddr>().ok() == Some(sa)) =>
        {
            c.problem("admin.listen", format!("`{addr}` is also in `listen`"))
        }
        Ok(_) => {}
    }
    Some(addr)
}

/// `pingora:` takes Pingora's own `ServerConf` keys; a typo is refused like anywhere else.
fn check_pingora(c: &mut Checker, section: Option<serde_yaml::Value>) -> Option<ServerConf> {
    let mut section = match section {
        None | Some(serde_yaml::Value::Null) => serde_yaml::Mapping::new(),
        Some(serde_yaml::Value::Mapping(m)) => m,
        Some(_) => {
            c.problem("pingora", "must be a mapping of Pingora server settings");
            return None;
        }
    };
    let known = match serde_yaml::to_value(ServerConf::default()) {
        Ok(serde_yaml::Value::Mapping(m)) => m,
        _ => serde_yaml::Mapping::new(),
    };
    let mut ok = true;
    for key in section.keys() {
        if !known.contains_key(key) {
            let name = key.as_str().unwrap_or("?");
            c.problem(
                format!("pingora.{name}"),
                "not a Pingora server setting (see README: pingora)",
            );
            ok = false;
        }
    }
    if !ok {
        return None;
    }
    // Our defaults where Pingora's do not suit this proxy: all cores, one single-threaded
    // runtime per core (measured faster than work stealing, bench/RESULTS.md), and a drain on
    // SIGTERM of 10 s instead of 5 minutes. Pingora waits the whole grace period, then drops
    // whatever is still running: it is the time a request in flight has to finish.
    let defaults: [(&str, serde_yaml::Value); 4] = [
        ("work_stealing", false.into()),
        (
            "threads",
            std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .into(),
        ),
        ("grace_period_seconds", 10u64.into()),
        ("graceful_shutdown_timeout_seconds", 5u64.into()),
    ];
    for (key, value) in defaults {
        let key = serde_yaml::Value::from(key);
        if !section.contains_key(&key) {
            section.insert(key, value);
        }
    }
    let conf: ServerConf = match serde_yaml::from_value(serde_yaml::Value::Mapping(section)) {
        Ok(conf) => conf,
        Err(e) => {
            c.problem("pingora", e.to_string());
            return None;
        }
    };
    match conf.validate() {
        Ok(conf) => Some(conf),
        Err(e) => {
            c.problem("pingora", e.to_string());
            None
        }
    }
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

/// The app's instances: `upstream.address` or `upstream.addresses` (never both), each resolved
/// once and given the shared TLS, SNI and timeouts.
fn check_upstream(c: &mut Checker, u: &UpstreamFile, resolver: Resolve<'_>) -> Option<Upstream> {
    let connect = check_timeout(c, "upstream.connect_timeout_ms", u.connect_timeout_ms);
    let read = check_timeout(c, "upstream.read_timeout_ms", u.read_timeout_ms);
    let write = check_timeout(c, "upstream.write_timeout_ms", u.write_timeout_ms);
    if !(1..=MAX_HEALTH_CHECK_SECS).contains(&u.health_check_secs) {
        c.problem(
            "upstream.health_check_secs",
            format!("must be between 1 and {MAX_HEALTH_CHECK_SECS} seconds"),
        );
    }
    let entries: Vec<(String, &str)> = match (&u.address, &u.addresses) {
        (Some(_), Some(_)) => {
            c.problem(
                "upstream.addresses",
                "upstream.address is also set: give one address or a list, not both",
            );
            return None;
        }
        (None, Some(list)) if list.is_empty() => {
            c.problem("upstream.addresses", "needs at least one host:port");
            return None;
        }
        (None, Some(list)) => list
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("upstream.addresses[{i}]"), a.as_str()))
            .collect(),
        (address, None) => vec![(
            "upstream.address".to_owned(),
            address.as_deref().unwrap_or(DEFAULT_APP_ADDRESS),
        )],
    };
    let mut peers: Vec<HttpPeer> = Vec::with_capacity(entries.len());
    // The key each peer came from, to name the first of two entries reaching one instance.
    let mut from: Vec<&str> = Vec::with_capacity(entries.len());
    let mut ok = true;
    for (key, address) in &entries {
        let Some(mut peer) = check_instance(c, key, address, u, resolver) else {
            ok = false;
            continue;
        };
        if let Some(i) = peers.iter().position(|p| p._address == peer._address) {
            c.problem(
                key,
                format!("`{address}` is the same instance as {}", from[i]),
            );
            ok = false;
            continue;
        }
        from.push(key);
        peer.options.connection_timeout = Some(connect);
        peer.options.total_connection_timeout = Some(connect);
        peer.options.read_timeout = Some(read);
        peer.options.write_timeout = Some(write);
        peer.options.idle_timeout = Some(Duration::from_secs(u.idle_timeout_secs));
        peers.push(peer);
    }
    ok.then(|| Upstream {
        peers,
        health_check: Duration::from_secs(u.health_check_secs),
    })
}

/// One instance: `host:port`, resolved; SNI defaults to its host.
fn check_instance(
    c: &mut Checker,
    key: &str,
    address: &str,
    u: &UpstreamFile,
    resolver: Resolve<'_>,
) -> Option<HttpPeer> {
    let host = match split_host_port(address) {
        Some((host, _)) if !address.contains("://") => host,
        _ => {
            c.problem(key, format!("`{address}` must be host:port (no scheme)"));
            return None;
        }
    };
    let addr = resolve(c, resolver, key, address)?;
    let sni = if u.sni.is_empty() {
        host
    } else {
        u.sni.clone()
    };
    Some(HttpPeer::new(addr, u.tls, sni))
}

fn split_host_port(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_owned(), port.parse().ok()?))
}

fn check_auth_api(
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
fn check_endpoint(
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

fn check_tokens(c: &mut Checker, t: &TokensFile, env: Env<'_>) -> Option<(TokenKeys, Vec<Secret>)> {
    let access = secrets(
        c,
        "access",
        (&t.access_secret_env, &t.access_secret_envs),
        "ETLS_ACCESS",
        t.allow_short_secrets,
        env,
    );
    let refresh = secrets(
        c,
        "refresh",
        (&t.refresh_secret_env, &t.refresh_secret_envs),
        "ETLS_REFRESH",
        t.allow_short_secrets,
        env,
    );
    let access_ttl = ttl(
        c,
        "tokens.access_ttl_env",
        t.access_ttl_env.as_deref(),
        "tokens.access_ttl_secs",
        t.access_ttl_secs,
        env,
    );
    let refresh_ttl = ttl(
        c,
        "tokens.refresh_ttl_env",
        t.refresh_ttl_env.as_deref(),
        "tokens.refresh_ttl_secs",
        t.refresh_ttl_secs,
        env,
    );
    if let (Some(access), Some(refresh)) = (&access, &refresh) {
        for a in access {
            for r in refresh {
                if a.value == r.value {
                    let (a_key, a_var, r_var) = (&a.key, &a.var, &r.var);
                    c.problem(
                        &r.key,
                        format!(
                            "{r_var} holds the same secret as {a_var} ({a_key}): a refresh token would pass as an access token"
                        ),
                    );
                }
            }
        }
    }
    if let Some(ttl) = access_ttl
        && t.refresh_ahead_secs >= ttl
    {
        c.problem(
            "tokens.refresh_ahead_secs",
            format!("must be below the access token lifetime ({ttl} s)"),
        );
    }
    if t.leeway_secs > MAX_WINDOW_SECS {
        c.problem(
            "tokens.leeway_secs",
            format!("must be at most {MAX_WINDOW_SECS} seconds"),
        );
    }
    let unbound_refresh = match t.unbound_refresh.to_ascii_lowercase().as_str() {
        "allow" => Some(UnboundRefresh::Allow),
        "refuse" => Some(UnboundRefresh::Refuse),
        _ => {
            c.problem(
                "tokens.unbound_refresh",
                format!("`{}` must be allow or refuse", t.unbound_refresh),
            );
            None
        }
    };
    let (access, refresh, access_ttl, refresh_ttl) = (access?, refresh?, access_ttl?, refresh_ttl?);
    let unbound_refresh = unbound_refresh?;
    let times = TokenTimes {
        access_ttl_secs: access_ttl,
        refresh_ttl_secs: refresh_ttl,
        leeway_secs: t.leeway_secs,
        refresh_ahead_secs: t.refresh_ahead_secs,
    };
    let mut keys = TokenKeys::rotating(&exposed(&access), &exposed(&refresh), times);
    keys.unbound_refresh = unbound_refresh;
    let values = access.into_iter().chain(refresh).map(|s| s.value);
    Some((keys, values.collect()))
}

fn exposed(secrets: &[FoundSecret]) -> Vec<&[u8]> {
    secrets.iter().map(|s| s.value.expose()).collect()
}

/// One secret as the configuration found it.
struct FoundSecret {
    /// The key path that names it (`tokens.access_secret_envs[1]`).
    key: String,
    /// Its environment variable.
    var: String,
    value: Secret,
}

/// The secrets of one token kind, newest first, with the key and env var each came from:
/// `tokens.<kind>_secret_env` (one name, default `default`) or `tokens.<kind>_secret_envs` (a
/// list, for rotation), never both.
fn secrets(
    c: &mut Checker,
    kind: &str,
    (single, list): (&Option<String>, &Option<Vec<String>>),
    default: &str,
    allow_short: bool,
    env: Env<'_>,
) -> Option<Vec<FoundSecret>> {
    let list_key = format!("tokens.{kind}_secret_envs");
    let names: Vec<(String, &str)> = match (single, list) {
        (Some(_), Some(_)) => {
            c.problem(
                list_key,
                format!("give either tokens.{kind}_secret_env or this list, not both"),
            );
            return None;
        }
        (_, Some(list)) if list.is_empty() => {
            c.problem(list_key, "needs at least one environment variable");
            return None;
        }
        (_, Some(list)) => list
            .iter()
            .enumerate()
            .map(|(i, var)| (format!("{list_key}[{i}]"), var.as_str()))
            .collect(),
        (single, None) => vec![(
            format!("tokens.{kind}_secret_env"),
            single.as_deref().unwrap_or(default),
        )],
    };
    let mut found = Vec::with_capacity(names.len());
    let mut ok = true;
    for (i, (key, var)) in names.iter().enumerate() {
        if names[..i].iter().any(|(_, earlier)| earlier == var) {
            c.problem(key, format!("{var} is listed twice"));
            ok = false;
            continue;
        }
        match secret(c, key, var, allow_short, env) {
            Some(value) => found.push(FoundSecret {
                key: key.clone(),
                var: var.to_string(),
                value,
            }),
            None => ok = false,
        }
    }
    ok.then_some(found)
}

fn env_bytes(value: OsString) -> Vec<u8> {
    use std::os::unix::ffi::OsStringExt;
    value.into_vec()
}

fn secret(
    c: &mut Checker,
    key: &str,
    var: &str,
    allow_short: bool,
    env: Env<'_>,
) -> Option<Secret> {
    if var.is_empty() {
        c.problem(key, "must name an environment variable");
        return None;
    }
    let Some(value) = env(var).map(env_bytes) else {
        c.problem(
            key,
            format!(
                "environment variable {var} is not set (secrets come only from the environment)"
            ),
        );
        return None;
    };
    if value.len() < MIN_SECRET_BYTES {
        if allow_short && !value.is_empty() {
            c.warnings.push(format!(
                "{var} is {} bytes, below the {MIN_SECRET_BYTES}-byte minimum of RFC 7518 §3.2 (allowed by tokens.allow_short_secrets)",
                value.len()
            ));
        } else {
            c.problem(
                key,
                format!(
                    "environment variable {var} is {} bytes; an HS256 secret needs at least {MIN_SECRET_BYTES} bytes (RFC 7518 §3.2; tokens.allow_short_secrets: true accepts it with a warning)",
                    value.len()
                ),
            );
            return None;
        }
    }
    Some(Secret::new(value))
}

/// The env var wins when set (the seeds' `.env`), else the YAML value.
fn ttl(
    c: &mut Checker,
    env_key: &str,
    var: Option<&str>,
    secs_key: &str,
    secs: u64,
    env: Env<'_>,
) -> Option<u64> {
    let from_env = var
        .filter(|v| !v.is_empty())
        .and_then(|v| env(v).map(|value| (v, value)));
    let (key, value) = match from_env {
        Some((var, raw)) => {
            let text = raw.to_string_lossy();
            match text.trim().parse::<u64>() {
                Ok(n) => (format!("{env_key} ({var})"), n),
                Err(_) => {
                    c.problem(env_key, format!("environment variable {var} must be a whole number of seconds, got `{text}`"));
                    return None;
                }
            }
        }
        None => (secs_key.to_owned(), secs),
    };
    if value == 0 || value > MAX_TTL_SECS {
        c.problem(
            key,
            format!("must be between 1 and {MAX_TTL_SECS} seconds (ten years), got {value}"),
        );
        return None;
    }
    Some(value)
}

fn check_cookies(
    c: &mut Checker,
    k: &CookiesFile,
    any_tls: bool,
) -> Option<(CookieNames, CookiePolicy)> {
    let secure = k.secure.unwrap_or(any_tls);
    let n = &k.names;
    let names = CookieNames {
        access_etls: n.access_etls.clone(),
        refresh_etls: n.refresh_etls.clone(),
        access_api: n.access_api.clone(),
        refresh_api: n.refresh_api.clone(),
        user: n.user.clone(),
    };
    let keys = [
        "access_etls",
        "refresh_etls",
        "access_api",
        "refresh_api",
        "user",
    ];
    let mut seen = HashSet::new();
    let mut ok = true;
    for (key, name) in keys.iter().zip(names.all()) {
        if !is_cookie_name(name) {
            c.problem(
                format!("cookies.names.{key}"),
                format!("`{name}` is not a valid cookie name"),
            );
            ok = false;
        } else if !seen.insert(name) {
            c.problem(
                format!("cookies.names.{key}"),
                format!("`{name}` is used for two cookies"),
            );
            ok = false;
        }
    }
    let same_site = match k.same_site.to_ascii_lowercase().as_str() {
        "strict" => Some(SameSite::Strict),
        "lax" => Some(SameSite::Lax),
        "none" => Some(SameSite::None),
        _ => {
            c.problem(
                "cookies.same_site",
                format!("`{}` must be Strict, Lax or None", k.same_site),
            );
            None
        }
    };
    if same_site == Some(SameSite::None) && !secure {
        c.problem(
            "cookies.same_site",
            "None needs cookies.secure: true (browsers drop it otherwise)",
        );
    }
    if !k.path.starts_with('/') || !is_attribute_value(&k.path) {
        c.problem(
            "cookies.path",
            format!(
                "`{}` must start with / and hold no ; or control characters",
                k.path
            ),
        );
        ok = false;
    }
    if let Some(domain) = &k.domain {
        let valid = !domain.is_empty()
            && domain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        if !valid {
            c.problem("cookies.domain", format!("`{domain}` is not a domain name"));
            ok = false;
        }
    }
    let policy = CookiePolicy {
        max_age_secs: k.max_age_secs,
        path: k.path.clone(),
        domain: k.domain.clone(),
        secure,
        same_site: same_site?,
    };
    ok.then_some((names, policy))
}

/// `cookies.max_chunks`: 1 (no value is ever split) to 64. Chunks of up to 4096 bytes can add
/// up to more than `downstream.max_cookie_bytes`; each refresh checks the total (a 502 naming
/// it rather than a browser locked out by 431), and a bound set that high gets a warning.
fn check_max_chunks(c: &mut Checker, max_chunks: Option<usize>, max_cookie_bytes: usize) -> usize {
    let Some(max) = max_chunks else {
        return DEFAULT_MAX_CHUNKS;
    };
    if !(1..=MAX_CHUNKS).contains(&max) {
        c.problem(
            "cookies.max_chunks",
            format!("must be between 1 and {MAX_CHUNKS}, got {max}"),
        );
    } else if max * MAX_LINE_BYTES > max_cookie_bytes {
        c.warnings.push(format!(
            "cookies.max_chunks: {max} cookies of up to {MAX_LINE_BYTES} bytes ({}) exceed downstream.max_cookie_bytes ({max_cookie_bytes}); a refresh whose cookies would take more is answered 502",
            max * MAX_LINE_BYTES
        ));
    }
    max
}

fn is_attribute_value(v: &str) -> bool {
    v.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b';')
}

fn check_trusted_proxies(c: &mut Checker, entries: &[String]) -> TrustedProxies {
    let mut cidrs = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        match Cidr::parse(entry) {
            Ok(cidr) => cidrs.push(cidr),
            Err(e) => c.problem(format!("downstream.trusted_proxies[{i}]"), e),
        }
    }
    TrustedProxies(cidrs)
}

fn check_routes(c: &mut Checker, r: RoutesFile) -> Option<Routes> {
    let mut ok = true;
    for (i, p) in r.public.iter().enumerate() {
        if !p.starts_with('/') {
            c.problem(
                format!("routes.public[{i}]"),
                format!("`{p}` must start with /"),
            );
            ok = false;
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
            ok = false;
        }
    }
    if r.refresh_endpoint.is_some() && r.refresh_endpoint == r.logout_endpoint {
        c.problem(
            "routes.logout_endpoint",
            "must differ from routes.refresh_endpoint",
        );
        ok = false;
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
        ok = false;
    }
    ok.then_some(routes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::file::parse;

    const A: &str = "access-secret-access-secret-0123";
    const R: &str = "refresh-secret-refresh-secret-01";

    fn env_with(
        vars: &'static [(&'static str, &'static str)],
    ) -> impl Fn(&str) -> Option<OsString> {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    fn outside(env: &dyn Fn(&str) -> Option<OsString>) -> Outside<'_> {
        Outside {
            env,
            resolve: &crate::config::system_resolve,
        }
    }

    fn problems(yaml: &str, vars: &'static [(&'static str, &'static str)]) -> Vec<String> {
        let env = env_with(vars);
        match build(parse(yaml).expect("parses"), outside(&env)) {
            Ok(_) => vec![],
            Err(p) => p.iter().map(|p| p.to_string()).collect(),
        }
    }

    const SECRETS: &[(&str, &str)] = &[("ETLS_ACCESS", A), ("ETLS_REFRESH", R)];

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
    fn ttl_env_vars_win_over_yaml() {
        let env = env_with(&[
            ("ETLS_ACCESS", A),
            ("ETLS_REFRESH", R),
            ("ETLS_ACCESS_EXPIRE_TIME", "60"),
            ("ETLS_REFRESH_EXPIRE_TIME", " 120 "),
        ]);
        let rt = build(
            parse("tokens: {access_ttl_secs: 5}").unwrap(),
            outside(&env),
        )
        .ok()
        .unwrap()
        .runtime;
        assert_eq!(rt.keys.times.access_ttl_secs, 60);
        assert_eq!(rt.keys.times.refresh_ttl_secs, 120);
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

    #[test]
    fn secret_lists_for_rotation_are_checked_entry_by_entry() {
        const ROTATION: &[(&str, &str)] = &[
            ("ETLS_ACCESS", A),
            (
                "ETLS_ACCESS_PREVIOUS",
                "previous-access-secret-previous-acc",
            ),
            ("ETLS_REFRESH", R),
            (
                "ETLS_REFRESH_PREVIOUS",
                "previous-refresh-secret-previous-r",
            ),
            ("SHORT", "short"),
            ("COPY_OF_ACCESS", A),
        ];
        for fine in [
            "tokens: {access_secret_envs: [ETLS_ACCESS, ETLS_ACCESS_PREVIOUS]}",
            "tokens: {access_secret_envs: [ETLS_ACCESS], refresh_secret_env: ETLS_REFRESH}",
            "tokens: {access_secret_env: ETLS_ACCESS, refresh_secret_envs: [ETLS_REFRESH, ETLS_REFRESH_PREVIOUS]}",
        ] {
            assert_eq!(problems(fine, ROTATION), Vec::<String>::new(), "{fine}");
        }
        // Every problem of the file at once, each named by its key path and index.
        let cases: [(&str, &[&str]); 8] = [
            (
                "tokens: {access_secret_env: ETLS_ACCESS, access_secret_envs: [ETLS_ACCESS]}",
                &["tokens.access_secret_envs: give either tokens.access_secret_env or"],
            ),
            (
                "tokens: {refresh_secret_env: ETLS_REFRESH, refresh_secret_envs: [ETLS_REFRESH]}",
                &["tokens.refresh_secret_envs: give either tokens.refresh_secret_env or"],
            ),
            (
                "tokens: {refresh_secret_envs: []}",
                &["tokens.refresh_secret_envs: needs at least one"],
            ),
            (
                "tokens: {access_secret_envs: [ETLS_ACCESS, MISSING, SHORT, ''], refresh_secret_envs: []}",
                &[
                    "tokens.access_secret_envs[1]: environment variable MISSING is not set",
                    "tokens.access_secret_envs[2]: environment variable SHORT is 5 bytes",
                    "tokens.access_secret_envs[3]: must name an environment variable",
                    "tokens.refresh_secret_envs: needs at least one",
                ],
            ),
            (
                "tokens: {refresh_secret_envs: [ETLS_REFRESH, MISSING]}",
                &["tokens.refresh_secret_envs[1]: environment variable MISSING is not set"],
            ),
            (
                "tokens: {access_secret_envs: [ETLS_ACCESS, ETLS_ACCESS]}",
                &["tokens.access_secret_envs[1]: ETLS_ACCESS is listed twice"],
            ),
            (
                "tokens: {access_secret_envs: [ETLS_ACCESS, ETLS_REFRESH]}",
                &[
                    "tokens.refresh_secret_env: ETLS_REFRESH holds the same secret as ETLS_REFRESH (tokens.access_secret_envs[1])",
                ],
            ),
            (
                "tokens: {refresh_secret_envs: [ETLS_REFRESH, COPY_OF_ACCESS]}",
                &[
                    "tokens.refresh_secret_envs[1]: COPY_OF_ACCESS holds the same secret as ETLS_ACCESS (tokens.access_secret_env)",
                ],
            ),
        ];
        for (yaml, wants) in cases {
            let got = problems(yaml, ROTATION);
            assert_eq!(got.len(), wants.len(), "{yaml}: {got:?}");
            for want in wants {
                assert!(got.iter().any(|p| p.starts_with(want)), "{yaml}: {got:?}");
            }
        }
    }

    /// The keys built from lists sign with the first secret under its kid and verify with every
    /// one; all the secrets are handed to the log redactor.
    #[test]
    fn secret_lists_build_keys_that_sign_with_the_first() {
        const PREVIOUS: &str = "previous-access-secret-previous-acc";
        const PREVIOUS_R: &str = "previous-refresh-secret-previous-r";
        let env = env_with(&[
            ("ETLS_ACCESS", A),
            ("ETLS_ACCESS_PREVIOUS", PREVIOUS),
            ("ETLS_REFRESH", R),
            ("ETLS_REFRESH_PREVIOUS", PREVIOUS_R),
        ]);
        let yaml = "tokens: {access_secret_envs: [ETLS_ACCESS, ETLS_ACCESS_PREVIOUS], refresh_secret_envs: [ETLS_REFRESH, ETLS_REFRESH_PREVIOUS]}";
        let loaded = build(parse(yaml).unwrap(), outside(&env)).unwrap_or_else(|p| panic!("{p:?}"));
        let mut secrets: Vec<Vec<u8>> =
            loaded.secrets.iter().map(|s| s.expose().to_vec()).collect();
        secrets.sort();
        let mut want: Vec<Vec<u8>> = [A, PREVIOUS, R, PREVIOUS_R].map(Into::into).to_vec();
        want.sort();
        assert_eq!(secrets, want, "every secret reaches the redactor");

        let keys = &loaded.runtime.keys;
        let now = crate::unix_now();
        let claims = serde_json::from_str(r#"{"username": "ann"}"#).unwrap();
        let kid = |t: &str| jsonwebtoken::decode_header(t).unwrap().kid;
        let access = keys.mint_access(&claims, now).unwrap();
        let refresh = keys.mint_refresh(&claims, "refreshToken=rt", now).unwrap();
        assert_eq!(
            kid(&access),
            Some(crate::session::tokens::key_id(A.as_bytes()))
        );
        assert_eq!(
            kid(&refresh),
            Some(crate::session::tokens::key_id(R.as_bytes()))
        );
        let previous = |secret: &str| {
            jsonwebtoken::encode(
                &jsonwebtoken::Header::default(),
                &serde_json::json!({"exp": now + 60}),
                &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
            )
            .unwrap()
        };
        assert_eq!(
            keys.check_access(previous(PREVIOUS).as_bytes(), now),
            crate::session::tokens::AccessState::Fresh
        );
        assert_eq!(
            keys.check_refresh(previous(PREVIOUS_R).as_bytes(), now),
            crate::session::tokens::RefreshState::Valid(crate::session::tokens::Binding::Unbound)
        );
        // Bound with the first secret's binding key, checked with the key of the secret that
        // verified the token.
        let crate::session::tokens::RefreshState::Valid(binding) =
            keys.check_refresh(refresh.as_bytes(), now)
        else {
            panic!("the minted refresh token verifies");
        };
        assert!(keys.bound_to(binding, "refreshToken=rt"));
        assert!(!keys.bound_to(binding, "refreshToken=other"));
        assert_eq!(keys.unbound_refresh, UnboundRefresh::Allow, "the default");
    }

    #[test]
    fn unbound_refresh_is_allow_or_refuse() {
        let env = env_with(SECRETS);
        for (yaml, want) in [
            ("tokens: {unbound_refresh: allow}", UnboundRefresh::Allow),
            ("tokens: {unbound_refresh: refuse}", UnboundRefresh::Refuse),
            ("tokens: {unbound_refresh: Refuse}", UnboundRefresh::Refuse),
        ] {
            let rt = build(parse(yaml).unwrap(), outside(&env))
                .unwrap_or_else(|p| panic!("{yaml}: {p:?}"))
                .runtime;
            assert_eq!(rt.keys.unbound_refresh, want, "{yaml}");
        }
        let got = problems("tokens: {unbound_refresh: maybe}", SECRETS);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("tokens.unbound_refresh") && got[0].contains("allow or refuse"),
            "{got:?}"
        );
    }

    #[test]
    fn downstream_timeouts_are_checked_with_their_paths() {
        let cases: [(&str, &[&str]); 5] = [
            ("", &[]),
            (
                "downstream: {keepalive_timeout_secs: 0, header_timeout_secs: 1}",
                &[],
            ),
            (
                "downstream: {keepalive_timeout_secs: 3601}",
                &["downstream.keepalive_timeout_secs"],
            ),
            (
                "downstream: {header_timeout_secs: 0}",
                &["downstream.header_timeout_secs"],
            ),
            (
                "downstream: {header_timeout_secs: 86400}",
                &["downstream.header_timeout_secs"],
            ),
        ];
        for (yaml, want) in cases {
            let got = problems(&format!("listen: ['127.0.0.1:8080']\n{yaml}"), SECRETS);
            let keys: Vec<&str> = got.iter().map(|p| p.split(':').next().unwrap()).collect();
            assert_eq!(keys, want, "{yaml}: {got:?}");
        }
        let env = env_with(SECRETS);
        let rt = build(parse("{}").unwrap(), outside(&env)).unwrap().runtime;
        assert_eq!(
            (rt.keepalive_secs, rt.header_timeout),
            (75, Duration::from_secs(60))
        );
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
        assert_eq!(rt.access_log, None);
        assert_eq!(rt.identity.map.len(), 1);
    }

    #[test]
    fn max_chunks_is_checked_with_its_path() {
        let env = env_with(SECRETS);
        let load = |yaml: &str| build(parse(yaml).unwrap(), outside(&env));
        let loaded = load("").unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(loaded.runtime.max_chunks, 8);
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        for (yaml, want) in [
            (
                "cookies: {max_chunks: 0}",
                "cookies.max_chunks: must be between 1 and 64, got 0",
            ),
            (
                "cookies: {max_chunks: 65}",
                "cookies.max_chunks: must be between 1 and 64, got 65",
            ),
        ] {
            assert_eq!(problems(yaml, SECRETS), [want], "{yaml}");
        }
        let loaded = load("cookies: {max_chunks: 3}").unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(loaded.runtime.max_chunks, 3);
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let loaded = load("cookies: {max_chunks: 8}\ndownstream: {max_cookie_bytes: 20000}")
            .unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(loaded.runtime.max_chunks, 8);
        assert_eq!(
            loaded.warnings,
            [
                "cookies.max_chunks: 8 cookies of up to 4096 bytes (32768) exceed downstream.max_cookie_bytes (20000); a refresh whose cookies would take more is answered 502"
            ]
        );
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
        let got = problems(yaml, &[("ETLS_ACCESS", "short"), ("ETLS_REFRESH", R)]);
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

    /// `appN.internal` resolves to 10.0.0.N, IP addresses to themselves; anything else fails.
    fn fake_resolve(host_port: &str) -> std::io::Result<Vec<SocketAddr>> {
        if let Ok(addr) = host_port.parse() {
            return Ok(vec![addr]);
        }
        let (host, port) = host_port.rsplit_once(':').unwrap_or((host_port, "0"));
        match host
            .strip_prefix("app")
            .and_then(|h| h.strip_suffix(".internal"))
        {
            Some(n) => Ok(vec![format!("10.0.0.{n}:{port}").parse().unwrap()]),
            None => Err(std::io::Error::other("no such host")),
        }
    }

    fn build_upstream(yaml: &str) -> Result<Upstream, Vec<String>> {
        let env = env_with(SECRETS);
        let outside = Outside {
            env: &env,
            resolve: &fake_resolve,
        };
        build(parse(yaml).expect("parses"), outside)
            .map(|loaded| loaded.runtime.upstream)
            .map_err(|p| p.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn one_app_address_or_a_list_share_tls_sni_and_timeouts() {
        let one = build_upstream("upstream: {address: 'app1.internal:3000'}").unwrap();
        assert_eq!(one.peers.len(), 1);
        assert_eq!(one.peers[0]._address.to_string(), "10.0.0.1:3000");
        assert_eq!(one.peers[0].sni, "app1.internal");
        assert_eq!(one.health_check, Duration::from_secs(5));

        let yaml = "upstream: {addresses: ['app1.internal:3000', 'app2.internal:3001'], tls: true, read_timeout_ms: 700, health_check_secs: 2}";
        let many = build_upstream(yaml).unwrap();
        let addresses: Vec<String> = many.peers.iter().map(|p| p._address.to_string()).collect();
        assert_eq!(addresses, ["10.0.0.1:3000", "10.0.0.2:3001"]);
        let snis: Vec<&str> = many.peers.iter().map(|p| p.sni.as_str()).collect();
        assert_eq!(snis, ["app1.internal", "app2.internal"]);
        for peer in &many.peers {
            assert!(peer.is_tls());
            assert_eq!(peer.options.read_timeout, Some(Duration::from_millis(700)));
            assert_eq!(
                peer.options.connection_timeout,
                Some(Duration::from_millis(2000))
            );
        }
        assert_eq!(many.health_check, Duration::from_secs(2));

        let yaml =
            "upstream: {addresses: ['app1.internal:3000', 'app2.internal:3000'], sni: app.example}";
        let named = build_upstream(yaml).unwrap();
        assert!(named.peers.iter().all(|p| p.sni == "app.example"));
    }

    #[test]
    fn app_address_defaults_to_the_seeds_next_server() {
        let env = env_with(SECRETS);
        let rt = build(parse("{}").unwrap(), outside(&env))
            .unwrap_or_else(|p| panic!("{p:?}"))
            .runtime;
        assert_eq!(rt.upstream.peers.len(), 1);
        assert_eq!(rt.upstream.peers[0]._address.to_string(), "127.0.0.1:3000");
    }

    #[test]
    fn app_address_problems_name_the_key_and_the_entry() {
        let keys = |yaml: &str| -> Vec<String> {
            build_upstream(yaml)
                .err()
                .unwrap_or_default()
                .iter()
                .map(|p| p.split(": ").next().unwrap().to_owned())
                .collect()
        };
        assert_eq!(
            keys("upstream: {address: 'app1.internal:1', addresses: ['app2.internal:1']}"),
            ["upstream.addresses"]
        );
        assert_eq!(keys("upstream: {addresses: []}"), ["upstream.addresses"]);
        let yaml = "upstream: {addresses: ['app1.internal:1', 'http://app2.internal:1', 'nowhere:80', 'app1.internal:1', 'app3.internal']}";
        let got = build_upstream(yaml).err().expect("refused");
        assert_eq!(
            keys(yaml),
            [
                "upstream.addresses[1]",
                "upstream.addresses[2]",
                "upstream.addresses[3]",
                "upstream.addresses[4]"
            ],
            "{got:?}"
        );
        assert!(got[1].contains("cannot resolve `nowhere:80`"), "{got:?}");
        assert!(
            got[2].contains("same instance as upstream.addresses[0]"),
            "{got:?}"
        );
        assert_eq!(keys("upstream: {address: nowhere:1}"), ["upstream.address"]);
        for secs in [0, 3601] {
            assert_eq!(
                keys(&format!(
                    "upstream: {{address: 'app1.internal:1', health_check_secs: {secs}}}"
                )),
                ["upstream.health_check_secs"]
            );
        }
    }

    #[test]
    fn missing_and_equal_secrets_are_refused() {
        let got = problems("{}", &[]);
        assert!(
            got.iter().any(|p| p.contains("ETLS_ACCESS is not set")),
            "{got:?}"
        );
        assert!(
            got.iter().any(|p| p.contains("ETLS_REFRESH is not set")),
            "{got:?}"
        );
        let got = problems("{}", &[("ETLS_ACCESS", A), ("ETLS_REFRESH", A)]);
        assert!(got.iter().any(|p| p.contains("same secret")), "{got:?}");
        let got = problems(
            "{}",
            &[
                ("ETLS_ACCESS", A),
                ("ETLS_REFRESH", R),
                ("ETLS_ACCESS_EXPIRE_TIME", "15m"),
            ],
        );
        assert!(
            got.iter()
                .any(|p| p.contains("ETLS_ACCESS_EXPIRE_TIME") && p.contains("`15m`")),
            "{got:?}"
        );
    }

    #[test]
    fn short_secrets_need_the_explicit_switch_and_warn() {
        let env = env_with(&[("ETLS_ACCESS", "short-a"), ("ETLS_REFRESH", "short-r")]);
        let loaded = build(
            parse("tokens: {allow_short_secrets: true}").unwrap(),
            outside(&env),
        )
        .ok()
        .unwrap();
        assert_eq!(loaded.warnings.len(), 2);
        assert!(loaded.warnings[0].contains("ETLS_ACCESS"));
    }

    #[test]
    fn trusted_proxies_are_checked_entry_by_entry() {
        let got = problems(
            "downstream: {trusted_proxies: ['10.0.0.0/8', '10.0.0.1/8', '::1', 'proxy.local', '::/129']}",
            SECRETS,
        );
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(
            got[0].starts_with("downstream.trusted_proxies[1]") && got[0].contains("10.0.0.0/8"),
            "{got:?}"
        );
        assert!(
            got[1].starts_with("downstream.trusted_proxies[3]"),
            "{got:?}"
        );
        assert!(
            got[2].starts_with("downstream.trusted_proxies[4]"),
            "{got:?}"
        );
        let env = env_with(SECRETS);
        let loaded = build(
            parse("downstream: {trusted_proxies: ['127.0.0.1/32', 'fd00::/8']}").unwrap(),
            outside(&env),
        )
        .ok()
        .unwrap();
        let trusted = &loaded.runtime.trusted_proxies;
        assert!(trusted.contains("127.0.0.1".parse().unwrap()));
        assert!(trusted.contains("fd00::5".parse().unwrap()));
        assert!(!trusted.contains("127.0.0.2".parse().unwrap()));
    }

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

    #[test]
    fn every_pingora_server_setting_is_accepted() {
        let all = serde_yaml::to_value(ServerConf::default()).unwrap();
        let yaml =
            serde_yaml::to_string(&serde_yaml::Mapping::from_iter([("pingora".into(), all)]))
                .unwrap();
        let env = env_with(SECRETS);
        let loaded =
            build(parse(&yaml).unwrap(), outside(&env)).unwrap_or_else(|p| panic!("{p:?}"));
        // Given explicitly, Pingora's own values are kept over etls-proxy's defaults.
        assert_eq!(loaded.server.threads, ServerConf::default().threads);
        assert_eq!(
            loaded.server.grace_period_seconds,
            ServerConf::default().grace_period_seconds
        );
    }

    #[test]
    fn same_site_none_needs_secure() {
        let got = problems("cookies: {same_site: None}", SECRETS);
        assert!(
            got.iter().any(|p| p.starts_with("cookies.same_site")),
            "{got:?}"
        );
        assert!(problems("cookies: {same_site: none, secure: true}", SECRETS).is_empty());
    }

    #[test]
    fn syntax_errors_name_the_key_and_line() {
        let e = parse("auth_api:\n  refresh_url: http://x\n  timeout: 5\n").unwrap_err();
        assert!(
            e.contains("auth_api") && e.contains("timeout") && e.contains("line 3"),
            "{e}"
        );
        let e = parse("tokens:\n  leeway_secs: soon\n").unwrap_err();
        assert!(
            e.contains("tokens.leeway_secs") && e.contains("line 2"),
            "{e}"
        );
        let e = parse("listen: [\n").unwrap_err();
        assert!(e.contains("line"), "{e}");
    }
}
