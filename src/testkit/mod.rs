//! The one test kit: test secrets, token signing, env stubs and loaded configurations, used by
//! the unit tests, the integration tests, the benches and the fuzz targets (instead of a copy
//! in each). Compiled for tests, `cfg(fuzzing)` and the `testkit` feature only, never into the
//! product.

pub mod config;
pub mod tokens;

/// The access secret the tests run with (32 bytes, the HS256 minimum).
pub const ACCESS_SECRET: &str = "access-secret-access-secret-0123";
/// The refresh secret the tests run with.
pub const REFRESH_SECRET: &str = "refresh-secret-refresh-secret-01";
/// A fixed clock for tests that need one (2027-01-15).
pub const NOW: u64 = 1_800_000_000;
/// The two secret variables every configuration needs, holding the test secrets.
pub const SECRETS: &[(&str, &str)] = &[
    ("ETLS_ACCESS", ACCESS_SECRET),
    ("ETLS_REFRESH", REFRESH_SECRET),
];
