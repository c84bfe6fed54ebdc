//! The configuration as the proxy runs it: checked and built once, immutable, shared behind an
//! `Arc` (swapped whole on reload).

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
    /// With `cookies.domain`: the lines clearing the host-only cookies of the five names,
    /// sent beside every renewal (empty otherwise).
    pub clear_host_only: Vec<HeaderValue>,
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
