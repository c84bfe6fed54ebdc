//! Integration tests: the real proxy binary on loopback, in front of stand-in servers.

mod balance;
mod chunks;
mod cli;
mod concurrency;
mod demo;
mod endpoints;
mod flow;
mod logs;
mod matrix;
mod ops;
mod rotation;
mod support;
mod tls;
