//! The auth API's connections: kept alive and reused between refreshes, a connection the auth
//! API closed after answering never fails the next refresh, and an HTTPS auth API verified
//! against the trust store. Against a raw auth API that counts the connections it accepts (the
//! stub servers do not), over TCP or over TLS (rustls, through Pingora's re-export).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use pingora::tls::{ServerConfig, TlsAcceptor};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::*;

/// An auth API answering every refresh with `rotated(<its refresh token>)`; with
/// `close_after_answer` it closes each connection once it has answered, without saying so
/// (`Connection: close` absent), as a server does whose idle timeout is shorter than the pool's;
/// with [`Self::start_with`], it writes `before` (interim answers) ahead of each final one.
struct CountingAuthApi {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
}

impl CountingAuthApi {
    async fn start(close_after_answer: bool, tls: Option<TlsAcceptor>) -> CountingAuthApi {
        CountingAuthApi::start_with(close_after_answer, "", tls).await
    }

    async fn start_with(
        close_after_answer: bool,
        before: &'static str,
        tls: Option<TlsAcceptor>,
    ) -> CountingAuthApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (connections, calls) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (accepted, answered) = (connections.clone(), calls.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let (answered, tls) = (answered.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(stream).await {
                                answer_refreshes(stream, &answered, close_after_answer, before)
                                    .await;
                            }
                        }
                        None => {
                            answer_refreshes(stream, &answered, close_after_answer, before).await
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

/// Answers each request on `stream` (read by the stub servers' own reader).
async fn answer_refreshes<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    answered: &AtomicUsize,
    close_after_answer: bool,
    before: &str,
) {
    let mut buf = Vec::new();
    while let Some(req) = read_request(&mut stream, &mut buf).await {
        let rt = req.cookie("refreshToken").unwrap_or_default();
        let body = rotated(&rt).to_string();
        let answer = format!(
            "{before}HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        answered.fetch_add(1, Ordering::SeqCst);
        if stream.write_all(answer.as_bytes()).await.is_err() || close_after_answer {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

/// A TLS acceptor for `cert`, the certificate the test's trust store holds.
fn tls_acceptor(cert: &Certificate) -> TlsAcceptor {
    pingora::tls::install_default_crypto_provider();
    let (certs, key) = pingora::tls::load_certs_and_key_files(
        cert.cert().to_str().unwrap(),
        cert.key().to_str().unwrap(),
    )
    .unwrap()
    .expect("the test's certificate and key");
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    TlsAcceptor::from(Arc::new(config))
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
    let (app, auth) = (Stub::app().await, CountingAuthApi::start(false, None).await);
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
    let (app, auth) = (Stub::app().await, CountingAuthApi::start(true, None).await);
    let proxy = Proxy::builder_at(app.addr, auth.addr).start().await;
    refresh_three(&proxy).await;
    // One call per refresh (a closed connection is found before the request is sent, so
    // nothing is sent twice) and a new connection for each.
    assert_eq!(auth.calls(), 3);
    assert_eq!(auth.connections(), 3);
}

#[tokio::test]
async fn an_https_auth_api_is_verified_against_the_trust_store_and_its_connection_reused() {
    let cert = Certificate::new();
    let (app, auth) = (
        Stub::app().await,
        CountingAuthApi::start(false, Some(tls_acceptor(&cert))).await,
    );
    let https = format!(
        "auth_api: {{refresh_url: 'https://127.0.0.1:{}/refreshtoken'}}",
        auth.addr.port()
    );
    // The trust store is the platform's, which honours `SSL_CERT_FILE`: here, the one
    // certificate the auth API presents.
    let trusted = Proxy::builder_at(app.addr, auth.addr)
        .extra(https.clone())
        .env("SSL_CERT_FILE", cert.cert().to_str().unwrap())
        .start()
        .await;
    refresh_three(&trusted).await;
    assert_eq!(auth.calls(), 3);
    assert_eq!(
        auth.connections(),
        1,
        "one TLS connection for the three refreshes"
    );
    drop(trusted);

    // A certificate the proxy does not trust: no call, a 502, no cookie.
    let other = Certificate::new();
    let untrusting = Proxy::builder_at(app.addr, auth.addr)
        .extra(https)
        .env("SSL_CERT_FILE", other.cert().to_str().unwrap())
        .start()
        .await;
    let r = untrusting
        .get("/dashboard", &expired_session("rt-untrusted"))
        .await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.set_cookies().is_empty());
    assert_eq!(
        auth.calls(),
        3,
        "no request reached the auth API over an unverified connection"
    );
}

/// Interim answers the auth API sends before its final one, asked for or not (RFC 9110 §15.2),
/// are read past: the refresh succeeds and the connection is still reused. A 101 is final and
/// no answer to a refresh: a 502 saying so, and that connection is never pooled.
#[tokio::test]
async fn interim_answers_before_the_auth_apis_answer_are_read_past() {
    let table: &[(&str, &'static str)] = &[
        ("100 Continue", "HTTP/1.1 100 Continue\r\n\r\n"),
        (
            "103 Early Hints, then 100",
            "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n",
        ),
    ];
    for (what, before) in table {
        let (app, auth) = (
            Stub::app().await,
            CountingAuthApi::start_with(false, before, None).await,
        );
        let proxy = Proxy::builder_at(app.addr, auth.addr).start().await;
        refresh_three(&proxy).await;
        assert_eq!(auth.calls(), 3, "{what}");
        assert_eq!(auth.connections(), 1, "{what}: the connection is reused");
    }

    let (app, auth) = (
        Stub::app().await,
        CountingAuthApi::start_with(
            false,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            None,
        )
        .await,
    );
    let proxy = Proxy::builder_at(app.addr, auth.addr).start().await;
    for n in 1..=2 {
        let r = proxy
            .get("/dashboard", &expired_session(&format!("rt-101-{n}")))
            .await;
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(
            r.json()["reason"],
            "auth API answer unusable: HTTP 101",
            "{}",
            r.text()
        );
        assert!(r.set_cookies().is_empty());
    }
    assert_eq!(
        auth.connections(),
        2,
        "a connection that answered 101 is not reused"
    );
}
