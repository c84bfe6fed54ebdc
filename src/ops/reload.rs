//! The running configuration and its reload: SIGHUP re-reads the YAML and the secret env vars,
//! checks all of it, and swaps it in at once. A request keeps the configuration it started
//! with; a refused file leaves the running one in place.

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::{ConfigError, Loaded, Outside, load_file};
use crate::ops::redact::{self, Redactor};
use crate::state::{LiveConfig, State};

/// What a reload changed that only a restart (or a graceful upgrade) applies.
#[derive(Debug, PartialEq, Eq)]
pub struct Applied {
    pub needs_restart: Vec<&'static str>,
    pub warnings: Vec<String>,
}

/// The reload half of the running configuration ([`LiveConfig`] lives in `state`).
impl LiveConfig {
    /// Loads the file again and, when it checks out, makes it the running configuration.
    pub fn reload(&self, outside: Outside<'_>) -> Result<(Applied, Loaded), ConfigError> {
        let loaded = load_file(&self.path, outside)?;
        Ok((self.apply(&loaded), loaded))
    }

    fn apply(&self, loaded: &Loaded) -> Applied {
        let (old, new) = (self.current.load(), &loaded.runtime);
        let mut needs_restart = Vec::new();
        if old.listen != new.listen {
            needs_restart.push("listen");
        }
        if old.read_buffer_bytes != new.read_buffer_bytes {
            needs_restart.push("downstream.read_buffer_bytes");
        }
        if old.keepalive_secs != new.keepalive_secs {
            // HTTP/1 takes the new value at once; the HTTP/2 idle timeout is set at start.
            needs_restart.push("downstream.keepalive_timeout_secs (HTTP/2)");
        }
        if old.admin_listen != new.admin_listen {
            needs_restart.push("admin.listen");
        }
        if old.shared_store != new.shared_store {
            needs_restart.push("refresh.store/refresh.redis");
        }
        // The app's instances feed the balancer built at start (`AppUpstream`).
        let instances = |u: &crate::config::Upstream| {
            u.peers
                .iter()
                .map(|p| p._address.clone())
                .collect::<Vec<_>>()
        };
        if instances(&old.upstream) != instances(&new.upstream) {
            let single = old.upstream.peers.len() == 1 && new.upstream.peers.len() == 1;
            needs_restart.push(if single {
                "upstream.address"
            } else {
                "upstream.addresses"
            });
        }
        // Only a running balancer has health checks to reschedule.
        let checked = old.upstream.peers.len() > 1;
        if checked && old.upstream.health_check != new.upstream.health_check {
            needs_restart.push("upstream.health_check_secs");
        }
        Applied {
            needs_restart,
            warnings: loaded.warnings.clone(),
        }
    }
}

/// Waits for SIGHUP and reloads; one log line per reload says what happened.
pub struct ReloadOnHangup {
    pub state: State,
}

impl ReloadOnHangup {
    pub fn reload_now(&self) -> bool {
        match self.state.live.reload(Outside::process()) {
            Ok((applied, loaded)) => {
                let Loaded {
                    runtime, secrets, ..
                } = loaded;
                redact::extend(&Redactor::new(
                    runtime.names.all().map(String::from).to_vec(),
                    secrets,
                ));
                self.state
                    .flights
                    .set_limits(runtime.grace, runtime.max_entries);
                self.state.live.swap(runtime);
                for warning in &applied.warnings {
                    log::warn!("{warning}");
                }
                let restart = if applied.needs_restart.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; {} changed and take(s) effect only after a restart or graceful upgrade",
                        applied.needs_restart.join(", ")
                    )
                };
                // The certificate files are checked again but served as loaded at start (a
                // renewal in place, as certbot does, is not picked up): said on every reload.
                let tls = if self
                    .state
                    .live
                    .load()
                    .listen
                    .iter()
                    .any(|l| l.tls.is_some())
                {
                    "; TLS certificates are read at start: a renewed one is served after a restart or graceful upgrade"
                } else {
                    ""
                };
                log::info!(
                    "configuration reloaded from {}{restart}{tls}",
                    self.state.live.path
                );
                self.state.metrics.reload(true);
                true
            }
            Err(e) => {
                let one_line = e.to_string().replace('\n', " ");
                log::error!("configuration reload refused, the running one stays: {one_line}");
                self.state.metrics.reload(false);
                false
            }
        }
    }
}

#[async_trait]
impl BackgroundService for ReloadOnHangup {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot listen for SIGHUP, reload is off: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hangups.recv() => {
                    self.reload_now();
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::config::loaded;

    #[test]
    fn changing_the_app_instances_needs_a_restart_but_their_timeouts_do_not() {
        let one = "upstream: {address: '127.0.0.1:3000'}";
        let live = LiveConfig::new("test.yaml", loaded(one).runtime);
        let restart = |yaml: &str| live.apply(&loaded(yaml)).needs_restart;
        let none: [&str; 0] = [];
        assert_eq!(restart(one), none);
        assert_eq!(restart("upstream: {addresses: ['127.0.0.1:3000']}"), none);
        assert_eq!(
            restart("upstream: {address: '127.0.0.1:3000', read_timeout_ms: 5}"),
            none
        );
        assert_eq!(
            restart("upstream: {address: '127.0.0.1:3001'}"),
            ["upstream.address"]
        );
        assert_eq!(
            restart("upstream: {addresses: ['127.0.0.1:3000', '127.0.0.1:3001']}"),
            ["upstream.addresses"]
        );
        // A single instance has no health check to reschedule.
        assert_eq!(
            restart("upstream: {address: '127.0.0.1:3000', health_check_secs: 9}"),
            none
        );
        let two = "upstream: {addresses: ['127.0.0.1:3000', '127.0.0.1:3001']}";
        let live = LiveConfig::new("test.yaml", loaded(two).runtime);
        let restart = |yaml: &str| live.apply(&loaded(yaml)).needs_restart;
        assert_eq!(
            restart(
                "upstream: {addresses: ['127.0.0.1:3000', '127.0.0.1:3001'], health_check_secs: 9}"
            ),
            ["upstream.health_check_secs"]
        );
        assert_eq!(
            restart("upstream: {address: '127.0.0.1:3000'}"),
            ["upstream.addresses"]
        );
    }
}
