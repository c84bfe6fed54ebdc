//! Operations: reload, the admin listener, metrics, the access log, log redaction and the
//! rate-limited warnings.

pub mod access_log;
pub mod admin;
pub mod metrics;
pub mod redact;
pub mod reload;
pub mod throttle;
