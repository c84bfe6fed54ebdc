//! What the proxy, the reload and the admin listener share: the running configuration, the
//! refresh flights and the metrics. Each takes a [`State`]; none imports another, so there is
//! no cycle between the glue (`proxy`) and operations (`ops`).

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::RuntimeConfig;
use crate::ops::metrics::Metrics;
use crate::refresh::flight::RefreshFlights;
use crate::refresh::renew::{RefreshError, RenewedSession};

/// One flight per session in this process, and the results kept for `refresh.grace_secs`.
pub type Flights = RefreshFlights<Arc<RenewedSession>, RefreshError>;

/// The running configuration: swapped at once by a reload (`ops::reload`); a request keeps
/// the one it started with.
pub struct LiveConfig {
    pub(crate) current: ArcSwap<RuntimeConfig>,
    pub(crate) path: String,
}

impl LiveConfig {
    pub fn new(path: impl Into<String>, runtime: RuntimeConfig) -> Self {
        LiveConfig {
            current: ArcSwap::from_pointee(runtime),
            path: path.into(),
        }
    }

    pub fn load(&self) -> Arc<RuntimeConfig> {
        self.current.load_full()
    }

    /// The file it was loaded from (and is reloaded from).
    pub fn path(&self) -> &str {
        &self.path
    }

    pub(crate) fn swap(&self, runtime: RuntimeConfig) {
        self.current.store(Arc::new(runtime));
    }
}

/// The pieces every long-lived service holds, cheap to clone (three `Arc`s).
#[derive(Clone)]
pub struct State {
    pub live: Arc<LiveConfig>,
    pub flights: Arc<Flights>,
    pub metrics: Arc<Metrics>,
}

impl State {
    /// The state for a freshly loaded configuration read from `path`.
    pub fn new(path: impl Into<String>, runtime: RuntimeConfig) -> Self {
        let flights = Arc::new(Flights::new(runtime.grace, runtime.max_entries));
        State {
            live: Arc::new(LiveConfig::new(path, runtime)),
            flights,
            metrics: Arc::new(Metrics::new()),
        }
    }
}
