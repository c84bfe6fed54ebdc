//! Integration tests: the real proxy binary on loopback, in front of stand-in servers.

mod auth_api_bound;
mod balance;
mod cli;
mod concurrency;
mod demo;
mod endpoints;
mod flow;
mod logs;
mod matrix;
mod ops;
mod redis_support;
mod rotation;
mod session_end;
mod shared_store;
mod support;
mod tls;
