//! Configuration: parse the YAML (`file`), check all of it in one pass and build the immutable
//! runtime configuration (`build`), shared behind an `Arc`.

mod check;
pub mod file;

use std::ffi::OsString;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use http::HeaderValue;
use pingora::server::configuration::ServerConf;
use pingora::upstreams::peer::HttpPeer;

use crate::ops::access_log::AccessLogFormat;
use crate::refresh::auth_api::AuthApiSettings;
use crate::refresh::renew::Minting;
use crate::session::cookies::CookieNames;
use crate::session::decision::SessionPolicy;
use crate::session::identity::IdentityHeaders;
use crate::session::routes::Routes;
use crate::session::secret::Secret;
use crate::session::set_cookie::CookiePolicy;
use crate::session::tokens::TokenKeys;

pub use check::build;

/// Reads one environment variable.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<OsString>;

/// Resolves `host:port` to addresses.
pub type Resolve<'a> = &'a dyn Fn(&str) -> std::io::Result<Vec<SocketAddr>>;

/// What a configuration reads besides its file: environment variables and DNS. Injected, so
/// tests and the fuzzer touch neither the process environment nor the network.
#[derive(Clone, Copy)]
pub struct Outside<'a> {
    pub env: Env<'a>,
    pub resolve: Resolve<'a>,
}

impl Outside<'static> {
    /// The process environment and the system resolver.
    pub fn process() -> Self {
        Outside {
            env: &process_env,
            resolve: &system_resolve,
        }
    }
}

pub fn process_env(name: &str) -> Option<OsString> {
    std::env::var_os(name)
}

pub fn system_resolve(host_port: &str) -> std::io::Result<Vec<SocketAddr>> {
    host_port.to_socket_addrs().map(Iterator::collect)
}

/// A proxy listener as checked: the address, and the certificate files when it is HTTPS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub address: String,
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: String,
    pub key: String,
}

/// The app as checked: one peer per instance (`upstream.address`, or `upstream.addresses` in
/// file order), each carrying the shared TLS, SNI and timeouts.
pub struct Upstream {
    pub peers: Vec<HttpPeer>,
    /// `upstream.health_check_secs`: how often each of several instances is probed.
    pub health_check: Duration,
}

/// Everything the proxy needs at run time, checked and built once.
pub struct RuntimeConfig {
    pub listen: Vec<Listener>,
    pub read_buffer_bytes: usize,
    pub max_cookie_bytes: usize,
    /// `downstream.keepalive_timeout_secs` (`0`: no keep-alive).
    pub keepalive_secs: u64,
    /// `downstream.header_timeout_secs`.
    pub header_timeout: Duration,
    /// `downstream.trusted_proxies`.
    pub trusted_proxies: crate::proxy::forwarded::TrustedProxies,
    pub upstream: Upstream,
    pub auth_api: AuthApiSettings,
    pub keys: TokenKeys,
    pub names: CookieNames,
    pub cookie_policy: CookiePolicy,
    /// `cookies.max_chunks`: the most cookies one value is split into.
    pub max_chunks: usize,
    /// The logout response's Set-Cookie lines, built once.
    pub clear_cookies: Vec<HeaderValue>,
    pub routes: Routes,
    pub grace: Duration,
    pub max_entries: usize,
    /// Applied at start only (a new listener needs a restart or a graceful upgrade).
    pub admin_listen: Option<String>,
    /// `None`: no access log.
    pub access_log: Option<AccessLogFormat>,
    pub identity: IdentityHeaders,
    /// Session keys, derived from the first refresh secret so that every instance agrees.
    pub session_keyer: std::sync::Arc<crate::refresh::flight::SessionKeyer>,
    /// `refresh.store: redis`; `None`: results stay in this process.
    pub shared_store: Option<crate::refresh::shared_store::SharedStoreSettings>,
}

impl RuntimeConfig {
    pub fn session_policy(&self) -> SessionPolicy<'_> {
        SessionPolicy {
            names: &self.names,
            keys: &self.keys,
            send_cookies: &self.auth_api.send_cookies,
        }
    }

    pub fn minting(&self) -> Minting<'_> {
        Minting {
            keys: &self.keys,
            names: &self.names,
            policy: &self.cookie_policy,
            send_cookies: &self.auth_api.send_cookies,
            max_chunks: self.max_chunks,
            max_cookie_bytes: self.max_cookie_bytes,
            other_cookie_bytes: 0,
        }
    }
}

/// A loaded configuration: the proxy's, Pingora's, and what deserves a warning.
pub struct Loaded {
    pub runtime: RuntimeConfig,
    pub server: ServerConf,
    pub warnings: Vec<String>,
    /// Secret values, so the logger can make sure none is ever printed.
    pub secrets: Vec<Secret>,
}

/// One problem, named by the key's path (`auth_api.refresh_url`) or the env var.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
    #[error("{path}: {} problem(s):\n{}", problems.len(), list(problems))]
    Invalid {
        path: String,
        problems: Vec<Problem>,
    },
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn load_file(path: &str, outside: Outside<'_>) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    load_str(&text, path, outside)
}

pub fn load_str(text: &str, path: &str, outside: Outside<'_>) -> Result<Loaded, ConfigError> {
    let parsed = file::parse(text).map_err(|message| ConfigError::Syntax {
        path: path.to_owned(),
        message,
    })?;
    let invalid = |problems| ConfigError::Invalid {
        path: path.to_owned(),
        problems,
    };
    let Some(env_path) = parsed.env_file.clone() else {
        return build(parsed, outside).map_err(invalid);
    };
    let vars = std::fs::read_to_string(&env_path)
        .map_err(|e| format!("cannot read `{env_path}`: {e}"))
        .and_then(|text| parse_env_file(&text))
        .map_err(|message| {
            invalid(vec![Problem {
                key: "env_file".into(),
                message,
            }])
        })?;
    let env = |name: &str| {
        vars.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| OsString::from(v))
            .or_else(|| (outside.env)(name))
    };
    let with_file = Outside {
        env: &env,
        resolve: outside.resolve,
    };
    build(parsed, with_file).map_err(invalid)
}

/// `KEY=VALUE` per line; `#` comments, blank lines, an `export ` prefix and one pair of matching
/// quotes around the value are allowed, as in `.env` files. Errors name the line, never a value.
pub fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut vars = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: expected KEY=VALUE", i + 1));
        };
        let key = key.trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("line {}: `{key}` is not a variable name", i + 1));
        }
        let value = value.trim();
        let value = ['"', '\'']
            .iter()
            .find_map(|q| value.strip_prefix(*q)?.strip_suffix(*q))
            .unwrap_or(value);
        vars.push((key.to_owned(), value.to_owned()));
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_read_like_dotenv() {
        let text =
            "# secrets\n\nETLS_ACCESS=abc\nexport ETLS_REFRESH = \"d e f\"\nQ='x'\nEMPTY=\nA=1=2\n";
        let vars = parse_env_file(text).unwrap();
        let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("ETLS_ACCESS"), Some("abc"));
        assert_eq!(get("ETLS_REFRESH"), Some("d e f"));
        assert_eq!(get("Q"), Some("x"));
        assert_eq!(get("EMPTY"), Some(""));
        assert_eq!(get("A"), Some("1=2"));
    }

    #[test]
    fn env_file_errors_name_the_line_never_the_value() {
        let e = parse_env_file("A=1\nsecret-value-without-key\n").unwrap_err();
        assert_eq!(e, "line 2: expected KEY=VALUE");
        let e = parse_env_file("BAD KEY=hidden\n").unwrap_err();
        assert!(e.starts_with("line 1:") && !e.contains("hidden"), "{e}");
    }
}
