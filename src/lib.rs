//! etls-proxy: an edge reverse proxy on Pingora that checks the eTLS JWT cookies of a Next.js
//! app and refreshes them inside the one request that found them expired.
//!
//! Modules by concern; everything but `proxy` is plain code testable without a socket.

pub mod access_log;
pub mod admin;
pub mod answer;
pub mod auth_api;
pub mod cache_control;
pub mod chunks;
pub mod config;
pub mod cookies;
pub mod decision;
pub mod downstream;
pub mod flight;
pub mod forwarded;
#[doc(hidden)]
pub mod fuzzing;
pub mod guard;
pub mod identity;
pub mod metrics;
pub mod proxy;
pub mod redact;
pub mod reload;
pub mod renewal;
pub mod routes;
pub mod set_cookie;
pub mod shared_store;
pub mod status;
pub mod throttle;
pub mod tokens;
pub mod upstream;
pub mod verified;

/// Seconds since the Unix epoch; JWT `exp` and `nbf` are compared against it.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
