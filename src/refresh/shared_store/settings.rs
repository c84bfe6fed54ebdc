//! `refresh.store` and `refresh.redis`: the file's shape, the checks `-t` runs on it, and the
//! keys derived from the refresh secret that every instance derives alike.

use std::sync::Arc;
use std::time::Duration;

use hkdf::Hkdf;
use serde::Deserialize;
use sha2::Sha256;

use crate::config::{Env, Problem};
use crate::refresh::flight::SessionKeyer;
use crate::session::secret::Secret;

/// Where refresh results are shared: this process only, or every instance through Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    #[default]
    Memory,
    Redis,
}

/// `refresh.redis` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisFile {
    pub url: Option<String>,
    pub url_env: Option<String>,
    pub key_prefix: String,
    pub timeout_ms: u64,
}

impl Default for RedisFile {
    fn default() -> Self {
        RedisFile {
            url: None,
            url_env: None,
            key_prefix: "etls:".into(),
            timeout_ms: 100,
        }
    }
}

const MAX_TIMEOUT_MS: u64 = 10_000;
const MAX_PREFIX_BYTES: usize = 64;

/// The checked Redis settings. Bound at start: a reload that changes them says a restart is
/// needed.
#[derive(Clone)]
pub struct SharedStoreSettings {
    /// The URL to connect with (from `url_env` it may hold a password): never logged.
    pub(crate) url: String,
    /// `redis://host:port/db`, without credentials: what logs show.
    pub display: String,
    pub key_prefix: String,
    /// One Redis command at most; past it the request goes on without sharing.
    pub timeout: Duration,
    /// Key of the values' encryption, derived from the refresh secret (with the session's own
    /// cookies per value). Follows a reload, as the session keys do.
    pub value_key: [u8; 32],
}

/// Equal when a running client can keep serving: the value key (from the secrets) is not
/// compared, it is taken from the running configuration at each refresh.
impl PartialEq for SharedStoreSettings {
    fn eq(&self, other: &Self) -> bool {
        self.url == other.url
            && self.key_prefix == other.key_prefix
            && self.timeout == other.timeout
    }
}

impl std::fmt::Debug for SharedStoreSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStoreSettings")
            .field("url", &self.display)
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What checking `refresh.store` / `refresh.redis` gives.
#[derive(Default)]
pub struct Checked {
    pub settings: Option<SharedStoreSettings>,
    pub problems: Vec<Problem>,
    /// A password read from `url_env`, so the logger masks it.
    pub secret: Option<Secret>,
}

/// Checks the store settings; `refresh_secret` is the first refresh secret (None when the
/// tokens section has problems of its own, reported there).
pub fn check(store: StoreKind, file: &RedisFile, env: Env<'_>, refresh_secret: &[u8]) -> Checked {
    let mut out = Checked::default();
    let mut problem = |key: &str, message: String| {
        out.problems.push(Problem {
            key: key.to_owned(),
            message,
        })
    };
    if file.timeout_ms == 0 || file.timeout_ms > MAX_TIMEOUT_MS {
        problem(
            "refresh.redis.timeout_ms",
            format!("must be between 1 and {MAX_TIMEOUT_MS} ms"),
        );
    }
    if file.key_prefix.len() > MAX_PREFIX_BYTES
        || file
            .key_prefix
            .bytes()
            .any(|b| !b.is_ascii_graphic() || b == b'{' || b == b'}')
    {
        problem(
            "refresh.redis.key_prefix",
            format!(
                "at most {MAX_PREFIX_BYTES} printable ASCII characters, without spaces, `{{` or `}}` (hash tags are added by the proxy)"
            ),
        );
    }
    let mut url: Option<(String, &'static str)> = None;
    if let Some(written) = &file.url {
        url = Some((written.clone(), "refresh.redis.url"));
    }
    if let Some(var) = &file.url_env {
        if file.url.is_some() {
            problem(
                "refresh.redis.url_env",
                "give either refresh.redis.url or refresh.redis.url_env, not both".into(),
            );
        } else if var.is_empty() {
            problem(
                "refresh.redis.url_env",
                "must name an environment variable".into(),
            );
        } else {
            match env(var).map(|v| v.into_string()) {
                Some(Ok(value)) if !value.is_empty() => {
                    url = Some((value, "refresh.redis.url_env"));
                }
                Some(Ok(_)) | None => problem(
                    "refresh.redis.url_env",
                    format!("environment variable {var} is not set"),
                ),
                Some(Err(_)) => problem(
                    "refresh.redis.url_env",
                    format!("environment variable {var} is not UTF-8"),
                ),
            }
        }
    }
    let parsed = url.and_then(|(url, key)| match parse_url(&url) {
        Ok(parsed) => {
            if parsed.password.is_some() && key == "refresh.redis.url" {
                problem(
                    key,
                    "holds a password: credentials belong in the environment (refresh.redis.url_env), never in the file".into(),
                );
            }
            Some((url, parsed))
        }
        Err(message) => {
            // The URL from the environment may hold a password: never repeat it.
            problem(key, message);
            None
        }
    });
    if store == StoreKind::Redis && file.url.is_none() && file.url_env.is_none() {
        problem(
            "refresh.redis.url",
            "refresh.store is `redis`: give refresh.redis.url (or refresh.redis.url_env)".into(),
        );
    }
    if store == StoreKind::Memory || !out.problems.is_empty() {
        return out;
    }
    let Some((url, parsed)) = parsed else {
        return out;
    };
    out.secret = parsed.password.map(|p| Secret::new(p.into_bytes()));
    out.settings = Some(SharedStoreSettings {
        url,
        display: parsed.display,
        key_prefix: file.key_prefix.clone(),
        timeout: Duration::from_millis(file.timeout_ms),
        value_key: derive(refresh_secret, b"etls-proxy shared value key v1"),
    });
    out
}

pub(crate) struct ParsedUrl {
    pub display: String,
    pub password: Option<String>,
}

/// `redis://[user[:password]@]host[:port][/db]` or `rediss://...` (TLS), as the client reads
/// it; errors never repeat the URL (it may hold a password).
pub(crate) fn parse_url(url: &str) -> Result<ParsedUrl, String> {
    let scheme_ok = url.starts_with("redis://") || url.starts_with("rediss://");
    if !scheme_ok {
        return Err("must start with redis:// or rediss:// (TLS)".into());
    }
    let info = redis::Client::open(url)
        .map_err(|e| format!("not a Redis URL the client accepts ({})", e.kind_str()))?;
    let info = info.get_connection_info();
    let tls = url.starts_with("rediss://");
    let host = match info.addr() {
        redis::ConnectionAddr::Tcp(host, port)
        | redis::ConnectionAddr::TcpTls { host, port, .. } => {
            format!("{host}:{port}")
        }
        _ => return Err("must be a TCP address (redis:// or rediss://)".into()),
    };
    if host.starts_with(':') {
        return Err("names no host".into());
    }
    let settings = info.redis_settings();
    Ok(ParsedUrl {
        display: format!(
            "{}://{host}/{}",
            if tls { "rediss" } else { "redis" },
            settings.db()
        ),
        password: settings.password().map(str::to_owned),
    })
}

trait KindStr {
    fn kind_str(&self) -> String;
}

impl KindStr for redis::RedisError {
    fn kind_str(&self) -> String {
        format!("{:?}", self.kind())
    }
}

/// HKDF-SHA256 of the refresh secret under a fixed label.
pub(crate) fn derive(secret: &[u8], label: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    Hkdf::<Sha256>::new(Some(b"etls-proxy"), secret)
        .expand(label, &mut out)
        .expect("32 bytes is a valid HKDF-SHA256 length");
    out
}

/// The session keyer every instance with the same first refresh secret derives alike, so their
/// keys agree (a keyed hash: no token can be read back from a key).
pub fn session_keyer(refresh_secret: &[u8]) -> Arc<SessionKeyer> {
    Arc::new(SessionKeyer::with_salt(&derive(
        refresh_secret,
        b"etls-proxy session key v1",
    )))
}

/// The keyer of an instance that shares nothing: random, the same for the whole process.
pub fn process_session_keyer() -> Arc<SessionKeyer> {
    static KEYER: std::sync::OnceLock<Arc<SessionKeyer>> = std::sync::OnceLock::new();
    Arc::clone(KEYER.get_or_init(|| Arc::new(SessionKeyer::default())))
}

/// The value of the first refresh secret's env var (the one tokens are minted with), as the
/// tokens section names it; empty when unset (the tokens check reports that).
pub fn first_refresh_secret(list: Option<&[String]>, single: Option<&str>, env: Env<'_>) -> Secret {
    let name = list
        .and_then(|l| l.first().map(String::as_str))
        .or(single)
        .unwrap_or("ETLS_REFRESH");
    Secret::new(
        env(name)
            .map(|v| v.into_encoded_bytes())
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn env(name: &str) -> Option<OsString> {
        match name {
            "REDIS_URL" => Some("redis://:hunter2-secret@10.0.0.5:6380/2".into()),
            "BAD_URL" => Some("redis://:hunter2-secret@[::1/0".into()),
            "EMPTY" => Some("".into()),
            _ => None,
        }
    }

    fn checked(yaml: &str) -> Checked {
        #[derive(Deserialize)]
        struct Probe {
            #[serde(default)]
            store: StoreKind,
            #[serde(default)]
            redis: RedisFile,
        }
        let p: Probe = serde_yaml::from_str(yaml).unwrap();
        check(p.store, &p.redis, &env, b"refresh-secret")
    }

    #[test]
    fn store_settings_are_checked_key_by_key() {
        let cases: &[(&str, &[&str])] = &[
            ("{}", &[]),
            ("{store: memory}", &[]),
            (
                "{store: redis, redis: {url: 'redis://127.0.0.1:6379/0'}}",
                &[],
            ),
            (
                "{store: redis, redis: {url: 'rediss://cache.internal:6380'}}",
                &[],
            ),
            ("{store: redis, redis: {url_env: REDIS_URL}}", &[]),
            (
                "{store: redis}",
                &["refresh.redis.url: refresh.store is `redis`: give refresh.redis.url"],
            ),
            (
                "{store: redis, redis: {url: 'http://127.0.0.1:6379'}}",
                &["refresh.redis.url: must start with redis:// or rediss://"],
            ),
            (
                "{store: redis, redis: {url: 'redis://127.0.0.1:notaport'}}",
                &["refresh.redis.url: not a Redis URL"],
            ),
            (
                "{store: redis, redis: {url: 'redis://user:pw-in-file@127.0.0.1:6379'}}",
                &["refresh.redis.url: holds a password"],
            ),
            (
                "{store: redis, redis: {url_env: MISSING}}",
                &["refresh.redis.url_env: environment variable MISSING is not set"],
            ),
            (
                "{store: redis, redis: {url_env: EMPTY}}",
                &["refresh.redis.url_env: environment variable EMPTY is not set"],
            ),
            (
                "{store: redis, redis: {url_env: BAD_URL}}",
                &["refresh.redis.url_env: not a Redis URL"],
            ),
            (
                "{store: redis, redis: {url: 'redis://127.0.0.1', url_env: REDIS_URL}}",
                &["refresh.redis.url_env: give either"],
            ),
            (
                "{store: redis, redis: {url: 'redis://127.0.0.1', timeout_ms: 0}}",
                &["refresh.redis.timeout_ms: must be between 1 and 10000 ms"],
            ),
            (
                "{store: redis, redis: {url: 'redis://127.0.0.1', key_prefix: 'a b{'}}",
                &["refresh.redis.key_prefix: at most 64"],
            ),
            // Checked under `memory` too, so switching to `redis` later holds no surprise.
            (
                "{store: memory, redis: {url: 'ftp://x'}}",
                &["refresh.redis.url: must start with"],
            ),
        ];
        for (yaml, expected) in cases {
            let out = checked(yaml);
            let got: Vec<String> = out.problems.iter().map(|p| p.to_string()).collect();
            assert_eq!(got.len(), expected.len(), "{yaml}: {got:?}");
            for (g, e) in got.iter().zip(expected.iter()) {
                assert!(g.starts_with(e), "{yaml}: {g:?} does not start with {e:?}");
                assert!(!g.contains("hunter2") && !g.contains("pw-in-file"), "{g}");
            }
            let redis = yaml.contains("store: redis");
            assert_eq!(
                out.settings.is_some(),
                redis && expected.is_empty(),
                "{yaml}"
            );
        }
    }

    #[test]
    fn the_displayed_url_never_holds_the_password() {
        let out = checked("{store: redis, redis: {url_env: REDIS_URL}}");
        let settings = out.settings.unwrap();
        assert_eq!(settings.display, "redis://10.0.0.5:6380/2");
        assert!(!format!("{settings:?}").contains("hunter2"));
        assert_eq!(
            out.secret.as_ref().map(Secret::expose),
            Some(&b"hunter2-secret"[..])
        );
    }

    #[test]
    fn derived_keys_agree_for_one_secret_and_differ_across_secrets() {
        let a = session_keyer(b"secret-one").key(&[b"refreshToken=x"]);
        let b = session_keyer(b"secret-one").key(&[b"refreshToken=x"]);
        let c = session_keyer(b"secret-two").key(&[b"refreshToken=x"]);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(
            derive(b"s", b"etls-proxy session key v1"),
            derive(b"s", b"etls-proxy shared value key v1")
        );
    }
}
