//! Which app instance a request goes to.
//!
//! One instance (`upstream.address`) gets every request, with no health check, as nginx does
//! with a single server: there is nowhere else to send it, and a check could only turn a slow
//! start into refusals. Several (`upstream.addresses`) go through Pingora's own load balancer:
//! round robin, and a TCP health check run as a Pingora background service every
//! `upstream.health_check_secs`, which takes an instance that refuses connections out of
//! rotation until it accepts them again.
//!
//! `AppUpstream` lives outside the reloadable `RuntimeConfig` and is built once, at start: the
//! health of each instance is state, kept by the balancer and its background service, that a
//! configuration swap must not reset. So the instances themselves (and how often they are
//! probed) need a restart, while their TLS, SNI and timeouts follow a reload: the peer is
//! cloned from the request's own configuration whenever it still lists that instance.

use std::io;
use std::sync::Arc;

use pingora::lb::LoadBalancer;
use pingora::lb::health_check::TcpHealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::services::background::GenBackgroundService;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::config::Upstream;

pub struct AppUpstream {
    /// The instances as configured at start, one peer each.
    peers: Vec<HttpPeer>,
    /// `None` with a single instance.
    balancer: Option<Arc<LoadBalancer<RoundRobin>>>,
    /// Bound on the candidates one selection looks at before giving up (every instance down).
    steps: usize,
}

impl AppUpstream {
    pub fn new(upstream: &Upstream) -> io::Result<Self> {
        let peers = upstream.peers.clone();
        let steps = 16 * peers.len();
        if peers.len() < 2 {
            return Ok(AppUpstream {
                peers,
                balancer: None,
                steps,
            });
        }
        // Addresses already resolved by the configuration: no DNS here.
        let mut balancer =
            LoadBalancer::<RoundRobin>::try_from_iter(peers.iter().map(|p| p._address.clone()))?;
        let mut check = TcpHealthCheck::default();
        check.peer_template.options.connection_timeout = peers[0].options.connection_timeout;
        balancer.set_health_check(Box::new(check));
        balancer.health_check_frequency = Some(upstream.health_check);
        // One instance that answers slowly does not delay the verdict on the others.
        balancer.parallel_health_check = true;
        Ok(AppUpstream {
            peers,
            balancer: Some(Arc::new(balancer)),
            steps,
        })
    }

    /// How many instances requests are spread over.
    pub fn instances(&self) -> usize {
        self.peers.len()
    }

    /// The background service running the health checks; `None` with a single instance.
    pub fn health_checks(&self) -> Option<GenBackgroundService<LoadBalancer<RoundRobin>>> {
        let balancer = Arc::clone(self.balancer.as_ref()?);
        Some(GenBackgroundService::new(
            "app health checks".to_owned(),
            balancer,
        ))
    }

    /// The peer for one request. `current` is the request's configuration: its settings win
    /// for an instance it still lists.
    ///
    /// With every instance down, an upstream error: `fail_to_proxy` answers it as it answers an
    /// app that refuses connections (502, renewed Set-Cookie headers kept).
    pub fn peer(&self, current: &Upstream) -> Result<Box<HttpPeer>> {
        let Some(chosen) = self.choose() else {
            return Err(Error::create(
                ErrorType::ConnectNoRoute,
                ErrorSource::Upstream,
                Some("no healthy app instance".into()),
                None,
            ));
        };
        let peer = current
            .peers
            .iter()
            .find(|p| p._address == chosen._address)
            .unwrap_or(chosen);
        Ok(Box::new(peer.clone()))
    }

    fn choose(&self) -> Option<&HttpPeer> {
        match &self.balancer {
            None => self.peers.first(),
            Some(balancer) => {
                let backend = balancer.select(b"", self.steps)?;
                self.peers.iter().find(|p| p._address == backend.addr)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn upstream(ports: &[u16]) -> Upstream {
        Upstream {
            peers: ports
                .iter()
                .map(|port| HttpPeer::new(("127.0.0.1", *port), false, String::new()))
                .collect(),
            health_check: Duration::from_secs(5),
        }
    }

    fn port(peer: &HttpPeer) -> u16 {
        peer._address.as_inet().unwrap().port()
    }

    #[test]
    fn one_instance_gets_every_request_with_no_health_check() {
        let app = AppUpstream::new(&upstream(&[3000])).unwrap();
        assert!(app.health_checks().is_none());
        for _ in 0..3 {
            assert_eq!(port(&app.peer(&upstream(&[3000])).unwrap()), 3000);
        }
    }

    #[test]
    fn several_instances_take_turns() {
        let config = upstream(&[3001, 3002, 3003]);
        let app = AppUpstream::new(&config).unwrap();
        assert!(app.health_checks().is_some());
        let ports: Vec<u16> = (0..6).map(|_| port(&app.peer(&config).unwrap())).collect();
        for window in ports.windows(3) {
            let mut sorted = window.to_vec();
            sorted.sort_unstable();
            assert_eq!(sorted, [3001, 3002, 3003], "{ports:?}");
        }
    }

    #[test]
    fn settings_follow_the_requests_configuration_for_the_same_instance() {
        let app = AppUpstream::new(&upstream(&[3000])).unwrap();
        let mut reloaded = upstream(&[3000]);
        reloaded.peers[0].options.read_timeout = Some(Duration::from_secs(7));
        let peer = app.peer(&reloaded).unwrap();
        assert_eq!(peer.options.read_timeout, Some(Duration::from_secs(7)));
        // An instance the reloaded file no longer lists keeps its start settings.
        let peer = app.peer(&upstream(&[4000])).unwrap();
        assert_eq!(port(&peer), 3000);
    }
}
