//! `refresh`: the grace window and table size of the in-process flights, and the store shared
//! across instances (`refresh.store`, `refresh.redis`).

use std::sync::Arc;
use std::time::Duration;

use super::{Checker, MAX_WINDOW_SECS};
use crate::config::Env;
use crate::config::file::{RefreshFile, TokensFile};
use crate::refresh::flight::SessionKeyer;
use crate::refresh::shared_store::settings::{
    self, Checked, first_refresh_secret, process_session_keyer, session_keyer,
};

/// The `refresh` section as checked.
pub(super) struct Refresh {
    pub grace: Duration,
    pub max_entries: usize,
    pub store: Checked,
    pub session_keyer: Arc<SessionKeyer>,
}

/// `tokens` is read for the first refresh secret, which keys what the instances share.
pub(super) fn check_refresh(
    c: &mut Checker,
    r: &RefreshFile,
    tokens: &TokensFile,
    env: Env<'_>,
) -> Refresh {
    if r.max_entries == 0 {
        c.problem("refresh.max_entries", "must be at least 1");
    }
    if r.grace_secs > MAX_WINDOW_SECS {
        c.problem(
            "refresh.grace_secs",
            format!("must be at most {MAX_WINDOW_SECS} seconds"),
        );
    }
    let refresh_secret = first_refresh_secret(
        tokens.refresh_secret_envs.as_deref(),
        tokens.refresh_secret_env.as_deref(),
        env,
    );
    let mut store = settings::check(r.store, &r.redis, env, refresh_secret.expose());
    c.problems.append(&mut store.problems);
    // Alone, one random key for the process's life, so a reload (a secret rotation included)
    // never re-keys a refresh in flight or a session's tombstones; shared, a key every instance
    // derives alike.
    let session_keyer = match store.settings {
        Some(_) => session_keyer(refresh_secret.expose()),
        None => process_session_keyer(),
    };
    Refresh {
        grace: Duration::from_secs(r.grace_secs),
        max_entries: r.max_entries,
        store,
        session_keyer,
    }
}
