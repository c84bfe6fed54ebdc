//! The admin listener (`admin.listen`): Prometheus text at `/metrics`, liveness at `/healthz`,
//! readiness at `/readyz`. Kept off the proxy's own listeners so it can stay private.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use async_trait::async_trait;
use http::{Response, StatusCode, header};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::state::State;

pub struct AdminApp {
    pub state: State,
    /// The proxy's listeners as bound at start: a reload changing `listen` applies only after
    /// a restart, so readiness probes what is listening, not what the file now says.
    pub bound: Vec<String>,
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let (status, content_type, body) = match session.req_header().uri.path() {
            "/metrics" => (
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.state
                    .metrics
                    .render(self.state.flights.len())
                    .into_bytes(),
            ),
            "/healthz" => (StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                if self.listening().await {
                    (StatusCode::OK, "text/plain", b"ready\n".to_vec())
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        b"not listening\n".to_vec(),
                    )
                }
            }
            _ => (StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
        };
        let length = body.len();
        let mut response = Response::new(body);
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(content_type),
        );
        headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(length));
        response
    }
}

impl AdminApp {
    /// Ready: a configuration is loaded (always, once running) and every proxy listener bound
    /// at start accepts a connection.
    async fn listening(&self) -> bool {
        for listen in &self.bound {
            let Some(addr) = probe_address(listen) else {
                return false;
            };
            let connect = tokio::net::TcpStream::connect(addr);
            if !matches!(
                tokio::time::timeout(Duration::from_millis(500), connect).await,
                Ok(Ok(_))
            ) {
                return false;
            }
        }
        true
    }
}

/// Where to reach a listener from this host: a wildcard address through loopback.
pub fn probe_address(listen: &str) -> Option<SocketAddr> {
    let mut addr: SocketAddr = listen.parse().ok()?;
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => addr.set_ip(Ipv4Addr::LOCALHOST.into()),
        IpAddr::V6(ip) if ip.is_unspecified() => addr.set_ip(Ipv6Addr::LOCALHOST.into()),
        _ => {}
    }
    Some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listeners_are_probed_on_loopback() {
        let cases = [
            ("0.0.0.0:8080", Some("127.0.0.1:8080")),
            ("[::]:8080", Some("[::1]:8080")),
            ("10.0.0.5:80", Some("10.0.0.5:80")),
            ("nonsense", None),
        ];
        for (listen, want) in cases {
            assert_eq!(
                probe_address(listen),
                want.map(|w| w.parse().unwrap()),
                "{listen}"
            );
        }
    }
}
