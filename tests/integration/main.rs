//! Integration tests: the real proxy binary on loopback, in front of stand-in servers.

mod balance;
mod cli;
mod concurrency;
mod demo;
mod endpoints;
mod flow;
mod forwarding;
mod login_page;
mod logs;
mod matrix;
mod ops;
mod rotation;
mod support;
mod tls;
mod websocket;
