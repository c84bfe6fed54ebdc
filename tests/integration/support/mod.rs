//! Real sockets on loopback: a stand-in app and auth API that record what reached them, the
//! proxy binary started on a generated config, and a raw HTTP/1.1 client that shows exactly
//! which headers came back.
//!
//! One module per concern: `tokens`, `stub`, `proxy`, `client`, `ports` and `poll` (the one
//! bounded wait every test uses); everything is re-exported here, so a test says
//! `use crate::support::*`.

#![allow(dead_code)]

pub mod client;
pub mod poll;
pub mod ports;
pub mod proxy;
pub mod stub;
pub mod tokens;

pub use client::*;
pub use poll::*;
pub use ports::*;
pub use proxy::*;
pub use stub::*;
pub use tokens::*;
