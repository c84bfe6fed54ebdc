//! etls-proxy: an edge reverse proxy on Pingora that checks the eTLS JWT cookies of a Next.js
//! app and refreshes them inside the one request that found them expired.
//!
//! Modules by layer: `session` (pure, no Pingora), `refresh` (renewal, flights, the auth API
//! client, the stores), `proxy` (the Pingora glue), `ops` (reload, admin, metrics, logs) and
//! `config`.

pub mod config;
#[cfg(any(test, fuzzing, feature = "testkit"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod hex;
pub mod ops;
pub mod proxy;
pub mod refresh;
pub mod session;
pub mod state;
#[cfg(any(test, fuzzing, feature = "testkit"))]
pub mod testkit;

/// Seconds since the Unix epoch; JWT `exp` and `nbf` are compared against it.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
