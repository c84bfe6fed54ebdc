//! The refresh: the renewal against the auth API, one flight per session in the process, the
//! auth API client, and the store shared across instances.

pub mod auth_api;
pub mod flight;
pub mod renew;
pub mod shared_store;
