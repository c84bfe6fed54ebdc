//! The auth API's connections: kept alive and reused between refreshes, and a connection the
//! auth API closed after answering never fails the next refresh. Against a raw TCP auth API that
//! counts the connections it accepts (the stub servers do not).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::support::*;

/// An auth API answering every refresh with `rotated(<its refresh token>)`; with
/// `close_after_answer` it closes each connection once it has answered, without saying so
/// (`Connection: close` absent), as a server does whose idle timeout is shorter than the pool's.
struct CountingAuthApi {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
}

impl CountingAuthApi {
    async fn start(close_after_answer: bool) -> CountingAuthApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (connections, calls) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (accepted, answered) = (connections.clone(), calls.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let answered = answered.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while let Some(req) = read_request(&mut stream, &mut buf).await {
                        let rt = req.cookie("refreshToken").unwrap_or_default();
                        let body = rotated(&rt).to_string();
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        answered.fetch_add(1, Ordering::SeqCst);
                        if stream.write_all(answer.as_bytes()).await.is_err() || close_after_answer
                        {
                            return;
                        }
                    }
                });
            }
        });
        CountingAuthApi {
            addr,
            connections,
            calls,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// Three sessions refreshed one after the other; each answer must carry its own new tokens.
async fn refresh_three(proxy: &Proxy) {
    for n in 1..=3 {
        let rt = format!("rt-pool-{n}");
        let r = proxy.get("/dashboard", &expired_session(&rt)).await;
        assert_eq!(r.status, 200, "refresh {n}: {}", r.text());
        assert_eq!(
            r.set_cookie_value("refreshToken").as_deref(),
            Some(format!("api-refresh-after-{rt}").as_str()),
            "refresh {n}"
        );
    }
}

#[tokio::test]
async fn refreshes_reuse_one_kept_alive_connection_to_the_auth_api() {
    let (app, auth) = (Stub::app().await, CountingAuthApi::start(false).await);
    let proxy = Proxy::builder_at(app.addr, auth.addr).start().await;
    refresh_three(&proxy).await;
    assert_eq!(auth.calls(), 3);
    assert_eq!(
        auth.connections(),
        1,
        "the second and third refresh reuse the first connection"
    );
}

#[tokio::test]
async fn an_auth_api_closing_its_connection_after_answering_never_fails_the_next_refresh() {
    let (app, auth) = (Stub::app().await, CountingAuthApi::start(true).await);
    let proxy = Proxy::builder_at(app.addr, auth.addr).start().await;
    refresh_three(&proxy).await;
    // One call per refresh (a closed connection is found before the request is sent, so
    // nothing is sent twice) and a new connection for each.
    assert_eq!(auth.calls(), 3);
    assert_eq!(auth.connections(), 3);
}
