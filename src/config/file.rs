//! The YAML file as written by ops: serde types only, no checks beyond types.
//!
//! Every section has defaults matching the seeds' Next.js routes, so an empty file (plus the
//! secret env vars) runs. Where a runtime type exists (`CookieNames`, `CookiePolicy`,
//! `AuthFields`, `TokenTimes`, `Routes`), its `Default` is the one home of the value and the
//! defaults here are read from it. Unknown keys are refused so a typo never silently falls back to a
//! default.

use serde::Deserialize;

use crate::refresh::auth_api::AuthFields;
use crate::session::cookies::CookieNames;
use crate::session::routes::Routes;
use crate::session::set_cookie::CookiePolicy;
use crate::session::tokens::TokenTimes;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `KEY=VALUE` lines (a Next.js `.env`, a systemd `EnvironmentFile`) read before the process
    /// environment, and read again on every reload: how secrets change without a restart.
    #[serde(default)]
    pub env_file: Option<String>,
    #[serde(default = "default_listen")]
    pub listen: OneOrMany,
    #[serde(default)]
    pub downstream: DownstreamFile,
    /// Pingora's own `ServerConf` keys, checked against the keys Pingora knows.
    #[serde(default)]
    pub pingora: Option<serde_yaml::Value>,
    #[serde(default)]
    pub upstream: UpstreamFile,
    #[serde(default)]
    pub auth_api: AuthApiFile,
    #[serde(default)]
    pub tokens: TokensFile,
    #[serde(default)]
    pub cookies: CookiesFile,
    #[serde(default)]
    pub routes: RoutesFile,
    #[serde(default)]
    pub refresh: RefreshFile,
    /// Claim of the verified access token → request header sent to the app.
    #[serde(default)]
    pub upstream_headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub admin: AdminFile,
    #[serde(default)]
    pub log: LogFile,
}

/// The admin listener: `/metrics`, `/healthz`, `/readyz`. Off when `listen` is unset.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminFile {
    pub listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogFile {
    /// One line per request on stderr.
    pub access: bool,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogFile {
    fn default() -> Self {
        LogFile {
            access: true,
            format: "text".into(),
        }
    }
}

/// `listen: "127.0.0.1:8080"` and `listen: [..]` both read naturally in YAML.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(ListenFile),
    Many(Vec<ListenFile>),
}

/// A listener: an address, or `{address, tls: {cert, key}}` for HTTPS (and HTTP/2 by ALPN).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ListenFile {
    Plain(String),
    Detailed(ListenerFile),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    pub address: String,
    #[serde(default)]
    pub tls: Option<TlsFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// PEM certificate chain.
    pub cert: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
}

impl ListenFile {
    pub fn into_parts(self) -> (String, Option<TlsFile>) {
        match self {
            ListenFile::Plain(address) => (address, None),
            ListenFile::Detailed(l) => (l.address, l.tls),
        }
    }
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<ListenFile> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

fn default_listen() -> OneOrMany {
    OneOrMany::Many(vec![ListenFile::Plain("0.0.0.0:8080".into())])
}

/// Browser-side connections.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DownstreamFile {
    /// Per connection of a TLS listener; Pingora's default is 64 KiB, sized for TLS records.
    /// Plain listeners have none (see `main.rs`).
    pub read_buffer_bytes: usize,
    /// All Cookie headers of a request together; more is answered 431 before any check.
    /// Node.js (so Next.js) refuses request headers over 16 KiB by default.
    pub max_cookie_bytes: usize,
    /// Idle time allowed between two requests on a connection (HTTP/1 keep-alive, HTTP/2 idle);
    /// `0` closes after each answer. nginx's `keepalive_timeout` default.
    pub keepalive_timeout_secs: u64,
    /// Time allowed for a whole request header, from the connection's start or a later
    /// request's first byte. nginx's `client_header_timeout` default.
    pub header_timeout_secs: u64,
    /// CIDR blocks (or addresses) of proxies in front whose X-Forwarded-* and X-Request-Id
    /// are believed; from anyone else they are replaced.
    pub trusted_proxies: Vec<String>,
}

impl Default for DownstreamFile {
    fn default() -> Self {
        DownstreamFile {
            read_buffer_bytes: 16 * 1024,
            max_cookie_bytes: 16 * 1024,
            keepalive_timeout_secs: 75,
            header_timeout_secs: 60,
            trusted_proxies: Vec::new(),
        }
    }
}

/// The app when `upstream` names none (the seeds' `next start`).
pub const DEFAULT_APP_ADDRESS: &str = "127.0.0.1:3000";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamFile {
    /// One app instance; [`DEFAULT_APP_ADDRESS`] when neither this nor `addresses` is given.
    pub address: Option<String>,
    /// Several instances, balanced round robin with a TCP health check.
    pub addresses: Option<Vec<String>>,
    /// How often each of several instances is probed.
    pub health_check_secs: u64,
    pub tls: bool,
    pub sni: String,
    pub connect_timeout_ms: u64,
    pub read_timeout_ms: u64,
    pub write_timeout_ms: u64,
    pub idle_timeout_secs: u64,
}

impl Default for UpstreamFile {
    fn default() -> Self {
        UpstreamFile {
            address: None,
            addresses: None,
            health_check_secs: 5,
            tls: false,
            sni: String::new(),
            connect_timeout_ms: 2000,
            read_timeout_ms: 60_000,
            write_timeout_ms: 60_000,
            idle_timeout_secs: 60,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthApiFile {
    pub refresh_url: String,
    pub timeout_ms: u64,
    pub send_cookies: Vec<String>,
    pub fields: FieldsFile,
    /// Backend logout, called on logout with the refresh's cookies; `None`: not called.
    pub logout_url: Option<String>,
    /// Auth API calls in flight at most; a refresh beyond it is a 503.
    pub max_in_flight: usize,
}

impl Default for AuthApiFile {
    fn default() -> Self {
        AuthApiFile {
            refresh_url: "http://127.0.0.1:3001/refreshtoken".into(),
            timeout_ms: 2000,
            send_cookies: vec!["refreshToken".into()],
            fields: FieldsFile::default(),
            logout_url: None,
            max_in_flight: 256,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldsFile {
    #[serde(default = "default_access_field")]
    pub access_token: String,
    #[serde(default = "default_refresh_field")]
    pub refresh_token: String,
    /// Absent: `userData`. Explicit `null`: the auth API sends no user, `etlsUser` is left alone.
    #[serde(default = "default_user_field")]
    pub user: Option<String>,
}

impl Default for FieldsFile {
    fn default() -> Self {
        let AuthFields {
            access_token,
            refresh_token,
            user,
        } = AuthFields::default();
        FieldsFile {
            access_token,
            refresh_token,
            user,
        }
    }
}

fn default_access_field() -> String {
    AuthFields::default().access_token
}
fn default_refresh_field() -> String {
    AuthFields::default().refresh_token
}
fn default_user_field() -> Option<String> {
    AuthFields::default().user
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensFile {
    /// One env var (default `ETLS_ACCESS`), or, for rotation, a list newest first.
    #[serde(default)]
    pub access_secret_env: Option<String>,
    #[serde(default)]
    pub access_secret_envs: Option<Vec<String>>,
    #[serde(default)]
    pub refresh_secret_env: Option<String>,
    #[serde(default)]
    pub refresh_secret_envs: Option<Vec<String>>,
    #[serde(default = "default_access_ttl_env")]
    pub access_ttl_env: Option<String>,
    #[serde(default = "default_refresh_ttl_env")]
    pub refresh_ttl_env: Option<String>,
    #[serde(default = "default_access_ttl")]
    pub access_ttl_secs: u64,
    #[serde(default = "default_refresh_ttl")]
    pub refresh_ttl_secs: u64,
    #[serde(default)]
    pub leeway_secs: u64,
    #[serde(default)]
    pub refresh_ahead_secs: u64,
    #[serde(default)]
    pub allow_short_secrets: bool,
    /// `allow` or `refuse`: a refresh token without the `sid` binding (minted by the old
    /// Next.js routes).
    #[serde(default = "default_unbound_refresh")]
    pub unbound_refresh: String,
}

impl Default for TokensFile {
    fn default() -> Self {
        TokensFile {
            access_secret_env: None,
            access_secret_envs: None,
            refresh_secret_env: None,
            refresh_secret_envs: None,
            access_ttl_env: default_access_ttl_env(),
            refresh_ttl_env: default_refresh_ttl_env(),
            access_ttl_secs: default_access_ttl(),
            refresh_ttl_secs: default_refresh_ttl(),
            leeway_secs: TokenTimes::default().leeway_secs,
            refresh_ahead_secs: TokenTimes::default().refresh_ahead_secs,
            allow_short_secrets: false,
            unbound_refresh: default_unbound_refresh(),
        }
    }
}

fn default_unbound_refresh() -> String {
    "allow".into()
}

fn default_access_ttl_env() -> Option<String> {
    Some("ETLS_ACCESS_EXPIRE_TIME".into())
}
fn default_refresh_ttl_env() -> Option<String> {
    Some("ETLS_REFRESH_EXPIRE_TIME".into())
}
fn default_access_ttl() -> u64 {
    TokenTimes::default().access_ttl_secs
}
fn default_refresh_ttl() -> u64 {
    TokenTimes::default().refresh_ttl_secs
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CookiesFile {
    #[serde(default)]
    pub names: CookieNamesFile,
    #[serde(default = "default_max_age")]
    pub max_age_secs: u64,
    #[serde(default = "default_path")]
    pub path: String,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    /// Default: true when any listener has TLS.
    pub secure: Option<bool>,
    #[serde(default = "default_same_site")]
    pub same_site: String,
    /// The most cookies one value is split into; default 8 (`chunks`).
    #[serde(default)]
    pub max_chunks: Option<usize>,
}

impl Default for CookiesFile {
    fn default() -> Self {
        CookiesFile {
            names: CookieNamesFile::default(),
            max_age_secs: default_max_age(),
            path: default_path(),
            domain: None,
            secure: None,
            same_site: default_same_site(),
            max_chunks: None,
        }
    }
}

fn default_max_age() -> u64 {
    CookiePolicy::default().max_age_secs
}
fn default_path() -> String {
    CookiePolicy::default().path
}
fn default_same_site() -> String {
    CookiePolicy::default().same_site.to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CookieNamesFile {
    pub access_etls: String,
    pub refresh_etls: String,
    pub access_api: String,
    pub refresh_api: String,
    pub user: String,
}

impl Default for CookieNamesFile {
    fn default() -> Self {
        let CookieNames {
            access_etls,
            refresh_etls,
            access_api,
            refresh_api,
            user,
        } = CookieNames::default();
        CookieNamesFile {
            access_etls,
            refresh_etls,
            access_api,
            refresh_api,
            user,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesFile {
    #[serde(default = "default_public")]
    pub public: Vec<String>,
    #[serde(default = "default_refresh_endpoint")]
    pub refresh_endpoint: Option<String>,
    #[serde(default = "default_logout_endpoint")]
    pub logout_endpoint: Option<String>,
    #[serde(default)]
    pub login_redirect: Option<String>,
}

impl Default for RoutesFile {
    fn default() -> Self {
        RoutesFile {
            public: default_public(),
            refresh_endpoint: default_refresh_endpoint(),
            logout_endpoint: default_logout_endpoint(),
            login_redirect: Routes::default().login_redirect,
        }
    }
}

fn default_public() -> Vec<String> {
    Routes::default().public
}
fn default_refresh_endpoint() -> Option<String> {
    Routes::default().refresh_endpoint
}
fn default_logout_endpoint() -> Option<String> {
    Routes::default().logout_endpoint
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RefreshFile {
    pub grace_secs: u64,
    pub max_entries: usize,
    /// `memory` (one process) or `redis` (shared by every instance): `crate::refresh::shared_store`.
    pub store: crate::refresh::shared_store::StoreKind,
    pub redis: crate::refresh::shared_store::settings::RedisFile,
}

impl Default for RefreshFile {
    fn default() -> Self {
        RefreshFile {
            grace_secs: 30,
            max_entries: 100_000,
            store: Default::default(),
            redis: Default::default(),
        }
    }
}

/// Why the file did not parse.
#[derive(Debug)]
pub enum ParseError {
    /// Not YAML, or not a mapping at the top: nothing else can be read.
    Syntax(String),
    /// Values of the wrong type (or unknown keys) in some sections, one problem each, named by
    /// the key's path; `rest` holds the other sections, parsed, so their problems can be
    /// reported beside these.
    Sections {
        problems: Vec<super::Problem>,
        broken: Vec<String>,
        rest: Box<FileConfig>,
    },
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::Syntax(message) => f.write_str(message),
            ParseError::Sections { problems, .. } => {
                let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
                f.write_str(&list.join("; "))
            }
        }
    }
}

/// Parses the file; an empty file (or one holding only comments) is all defaults. Errors name
/// the key's path and the line, as serde_yaml reports them. serde stops at the first wrong
/// value, so on a failure each top-level section is read again on its own: a problem per
/// broken section (the first with its line), and the others parsed for the checks.
pub fn parse(text: &str) -> Result<FileConfig, ParseError> {
    let syntax = |e: serde_yaml::Error| ParseError::Syntax(e.to_string());
    let probe: serde_yaml::Value = serde_yaml::from_str(text).map_err(syntax)?;
    if probe.is_null() {
        return serde_yaml::from_str("{}").map_err(syntax);
    }
    let first = match serde_yaml::from_str::<FileConfig>(text) {
        Ok(config) => return Ok(config),
        Err(first) => first,
    };
    let Some(sections) = probe.as_mapping() else {
        return Err(syntax(first));
    };
    let (mut problems, mut broken) = (Vec::new(), Vec::new());
    let mut rest = serde_yaml::Mapping::new();
    for (key, value) in sections {
        let one = serde_yaml::Mapping::from_iter([(key.clone(), value.clone())]);
        let alone = serde_yaml::to_string(&one)
            .map_err(|e| e.to_string())
            .and_then(|fragment| {
                serde_yaml::from_str::<FileConfig>(&fragment).map_err(|e| e.to_string())
            });
        let name = match key {
            serde_yaml::Value::String(name) => name.clone(),
            other => format!("{other:?}"),
        };
        match alone {
            Ok(_) => {
                rest.insert(key.clone(), value.clone());
            }
            Err(message) => {
                // The fragment's lines are not the file's: the position is dropped, except for
                // the error the whole file gave, which keeps its own.
                let problem = section_problem(&name, &message);
                let whole = section_problem(&name, &first.to_string());
                problems.push(if whole == problem {
                    whole_with_line(whole, &first)
                } else {
                    problem
                });
                broken.push(name);
            }
        }
    }
    let rest: FileConfig = match serde_yaml::from_value(serde_yaml::Value::Mapping(rest)) {
        Ok(rest) if !problems.is_empty() => rest,
        // No section fails alone (nothing more to say than the whole file's error).
        _ => return Err(syntax(first)),
    };
    Err(ParseError::Sections {
        problems,
        broken,
        rest: Box::new(rest),
    })
}

/// `path: message` of a serde_yaml error, read back into a problem of section `section`, its
/// ` at line L column C` dropped; an error without a path of that section is the section's.
fn section_problem(section: &str, message: &str) -> super::Problem {
    let message = match message.rfind(" at line ") {
        Some(at) if message[at + 9..].split(" column ").count() == 2 => &message[..at],
        _ => message,
    };
    match message.split_once(": ") {
        Some((path, rest)) if !path.contains(' ') && is_under(path, section) => super::Problem {
            key: path.to_owned(),
            message: rest.to_owned(),
        },
        _ => super::Problem {
            key: section.to_owned(),
            message: message.to_owned(),
        },
    }
}

/// Whether the key `path` (`upstream.tls.sni`, `listen[0]`) is `section` or inside it.
pub fn is_under(path: &str, section: &str) -> bool {
    path.strip_prefix(section)
        .is_some_and(|tail| tail.is_empty() || tail.starts_with(['.', '[']))
}

/// `problem` with the line and column of `error`, the whole file's error.
fn whole_with_line(mut problem: super::Problem, error: &serde_yaml::Error) -> super::Problem {
    if let Some(at) = error.location() {
        problem.message = format!(
            "{} (line {} column {})",
            problem.message,
            at.line(),
            at.column()
        );
    }
    problem
}
