//! Integration tests: the real proxy binary on loopback, in front of stand-in servers.

mod auth_api_bound;
mod balance;
mod binding;
mod cache;
mod chunks;
mod cli;
mod concurrency;
mod cross_site;
mod demo;
mod endpoints;
mod flow;
mod forwarding;
mod host;
mod login_page;
mod logs;
mod matrix;
mod ops;
mod redis_support;
mod rotation;
mod session_end;
mod shared_store;
mod support;
mod timeouts;
mod tls;
mod underscores;
mod websocket;
