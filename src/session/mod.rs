//! The pure core: cookies, Set-Cookie lines, chunks, tokens, routes, the decision and the
//! identity headers. Nothing here imports Pingora (checked by `tests/purity.rs`, part of `make test`).

pub mod cache_control;
pub mod chunks;
pub mod cookies;
pub mod decision;
pub mod identity;
pub mod routes;
pub mod secret;
pub mod set_cookie;
pub mod tokens;
pub mod verified;
