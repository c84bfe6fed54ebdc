//! WebSocket upgrades through the proxy, with a real WebSocket client and server
//! (tokio-tungstenite): the 101 that follows a refresh carries the new cookies exactly as a 200
//! would, a handshake without a session is refused before the app, a valid one passes untouched.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::HeaderValue;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, client::IntoClientRequest};

use crate::support::*;

const LIMIT: Duration = Duration::from_secs(10);

/// The app's WebSocket endpoint: records each handshake's Cookie header and echoes frames.
struct WsApp {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    cookies: Arc<Mutex<Vec<String>>>,
}

impl WsApp {
    async fn start() -> WsApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let cookies = Arc::new(Mutex::new(Vec::new()));
        let (conns, seen) = (connections.clone(), cookies.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                conns.fetch_add(1, Ordering::SeqCst);
                let seen = seen.clone();
                tokio::spawn(async move {
                    // The callback type is tungstenite's, large error and all.
                    #[allow(clippy::result_large_err)]
                    let record =
                        |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
                            let cookie = req
                                .headers()
                                .get_all("cookie")
                                .iter()
                                .map(|v| v.to_str().unwrap().to_owned())
                                .collect::<Vec<_>>()
                                .join("; ");
                            seen.lock().unwrap().push(cookie);
                            Ok(resp)
                        };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await
                    else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        if msg.is_text() || msg.is_binary() {
                            if ws.send(msg).await.is_err() {
                                return;
                            }
                        } else if msg.is_close() {
                            return;
                        }
                    }
                });
            }
        });
        WsApp {
            addr,
            connections,
            cookies,
        }
    }

    fn seen(&self) -> Vec<String> {
        self.cookies.lock().unwrap().clone()
    }
}

type Client = tokio_tungstenite::WebSocketStream<TcpStream>;
type Handshake = http::Response<Option<Vec<u8>>>;

/// A WebSocket handshake through the proxy carrying `cookie`.
async fn connect(proxy: &Proxy, cookie: &str) -> Result<(Client, Handshake), WsError> {
    let mut req = format!("ws://{}/_ws", proxy.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("cookie", HeaderValue::from_str(cookie).unwrap());
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    tokio::time::timeout(LIMIT, tokio_tungstenite::client_async(req, stream))
        .await
        .expect("the handshake ends in time")
}

fn set_cookies<T>(r: &http::Response<T>) -> Vec<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

async fn echo(ws: &mut Client, text: &str) -> String {
    ws.send(Message::text(text)).await.unwrap();
    let reply = tokio::time::timeout(LIMIT, ws.next())
        .await
        .expect("the echo comes back in time")
        .expect("a frame")
        .unwrap();
    reply.into_text().unwrap().to_string()
}

#[tokio::test]
async fn an_upgrade_after_a_refresh_carries_the_new_cookies_like_a_200() {
    let (app, auth) = (WsApp::start().await, Stub::auth_api().await);
    let plain = Stub::app().await;
    let proxy = Proxy::builder_at(app.addr, auth.addr).start().await;
    let (mut ws, handshake) = connect(&proxy, &expired_session("rt-ws")).await.unwrap();
    assert_eq!(handshake.status(), 101);
    let lines = set_cookies(&handshake);
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert_eq!(auth.calls(), 1);

    // The same refresh answered with a 200 (same proxy settings, a plain app): same names in the
    // same order, same attributes.
    let proxy_200 = Proxy::builder(&plain, &auth).start().await;
    let r = proxy_200.get("/", &expired_session("rt-plain")).await;
    assert_eq!(r.status, 200);
    let lines_200 = r.set_cookies();
    assert_eq!(lines_200.len(), 5);
    for (line, line_200) in lines.iter().zip(&lines_200) {
        let (pair, attrs) = line.split_once(';').unwrap();
        let (pair_200, attrs_200) = line_200.split_once(';').unwrap();
        assert_eq!(attrs, attrs_200);
        assert_eq!(
            pair.split_once('=').unwrap().0,
            pair_200.split_once('=').unwrap().0
        );
    }
    let value = |name: &str| {
        lines
            .iter()
            .find_map(|l| {
                let (n, v) = l.split(';').next()?.split_once('=')?;
                (n == name).then(|| v.to_owned())
            })
            .unwrap()
    };
    assert_eq!(value("accessToken"), "api-access-for-rt-ws");
    assert_eq!(value("refreshToken"), "api-refresh-after-rt-ws");
    assert!(verifies(&value("accessTokenEtls"), ACCESS_SECRET));

    // The app's upgrade request carried the new tokens, and the old ones nowhere.
    let seen = app.seen();
    assert_eq!(seen.len(), 1);
    let cookie = &seen[0];
    assert!(
        cookie.contains(&format!("accessTokenEtls={}", value("accessTokenEtls"))),
        "{cookie}"
    );
    assert!(
        cookie.contains("accessToken=api-access-for-rt-ws"),
        "{cookie}"
    );
    assert!(
        cookie.contains("refreshToken=api-refresh-after-rt-ws"),
        "{cookie}"
    );
    assert!(!cookie.contains("old-api-access") && !cookie.contains("refreshToken=rt-ws"));
    assert!(cookie.contains("theme=dark") && cookie.contains("lang=uk"));

    // The tunnel works both ways.
    assert_eq!(
        echo(&mut ws, "hello through the proxy").await,
        "hello through the proxy"
    );
    assert_eq!(echo(&mut ws, "twice").await, "twice");
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn an_upgrade_without_a_session_is_the_401_and_never_reaches_the_app() {
    let (app, auth) = (WsApp::start().await, Stub::auth_api().await);
    let proxy = Proxy::builder_at(app.addr, auth.addr).start().await;
    for cookie in ["theme=dark", "accessTokenEtls=garbage"] {
        match connect(&proxy, cookie).await {
            Err(WsError::Http(r)) => {
                assert_eq!(r.status(), 401);
                let lines = set_cookies(&r);
                // Clear lines only for what the request carried.
                let want = if cookie == "theme=dark" { 0 } else { 5 };
                assert_eq!(lines.len(), want, "{lines:?}");
                for (line, name) in lines.iter().zip(CLEARED) {
                    assert!(line.starts_with(&format!("{name}=;")), "{line}");
                }
                let body = r.body().as_deref().unwrap_or_default();
                assert_eq!(body, br#"{"error":"Unauthorized"}"#);
            }
            Ok((_, r)) => panic!("upgraded without a session: {}", r.status()),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(app.connections.load(Ordering::SeqCst), 0);
    assert_eq!(auth.calls(), 0);
}

#[tokio::test]
async fn an_upgrade_with_a_valid_session_passes_untouched() {
    let (app, auth) = (WsApp::start().await, Stub::auth_api().await);
    let proxy = Proxy::builder_at(app.addr, auth.addr).start().await;
    let cookie = format!(
        "accessTokenEtls={}; refreshTokenEtls={}; refreshToken=rt-valid",
        access_token(600),
        refresh_token(3600)
    );
    let (mut ws, handshake) = connect(&proxy, &cookie).await.unwrap();
    assert_eq!(handshake.status(), 101);
    assert!(set_cookies(&handshake).is_empty());
    assert_eq!(app.seen(), vec![cookie]);
    assert_eq!(auth.calls(), 0);
    assert_eq!(echo(&mut ws, "ping").await, "ping");
    ws.close(None).await.unwrap();
}

/// An app that accepts the upgrade and then resets the connection: the 101 still carried the new
/// cookies, the tunnel ends, and nothing is written after the 101 (no error answer inside the
/// upgraded stream; `fail_to_proxy` counts the 101 as final, and Pingora 0.9.1 would also drop
/// a second header by itself).
#[tokio::test]
async fn an_app_failing_after_the_101_gets_no_error_answer_written_into_the_tunnel() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = stream
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = stream.set_zero_linger();
            drop(stream); // a reset
        }
    });
    let auth = Stub::auth_api().await;
    let proxy = Proxy::builder_at(app_addr, auth.addr).start().await;
    let mut conn = TcpStream::connect(proxy.addr).await.unwrap();
    let request = format!(
        "GET /_ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nCookie: {}\r\n\r\n",
        expired_session("rt-reset")
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("the proxy kept the connection open after the app's reset"),
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
    assert_eq!(text.matches("Set-Cookie: ").count(), 5, "{text}");
}

/// Frame bytes a client sends before the 101 (in the handshake's own write, or while the
/// refresh runs) are the tunnel's first bytes, never taken for a pipelined request: the app
/// echoes them after the 101.
#[tokio::test]
async fn frames_sent_before_the_101_reach_the_app() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = WsApp::start().await;
    let auth = Stub::slow_auth_api(Duration::from_millis(300)).await;
    let proxy = Proxy::builder_at(app.addr, auth.addr).start().await;
    let payload = b"early-frame";
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    for (n, gap) in [None, Some(Duration::from_millis(100))]
        .into_iter()
        .enumerate()
    {
        let cookie = expired_session(&format!("opaque-rt-early-{n}"));
        let handshake = format!(
            "GET /_ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Cookie: {cookie}\r\n\r\n",
            proxy.addr
        );
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        match gap {
            None => stream
                .write_all(&[handshake.as_bytes(), &frame].concat())
                .await
                .unwrap(),
            Some(gap) => {
                stream.write_all(handshake.as_bytes()).await.unwrap();
                tokio::time::sleep(gap).await;
                stream.write_all(&frame).await.unwrap();
            }
        }
        let mut got = Vec::new();
        let echoed = tokio::time::timeout(LIMIT, async {
            let mut buf = [0u8; 4096];
            while !got.windows(payload.len()).any(|w| w == payload) {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            true
        })
        .await;
        let text = String::from_utf8_lossy(&got).into_owned();
        assert!(text.starts_with("HTTP/1.1 101"), "gap {gap:?}: {text}");
        assert_eq!(
            echoed,
            Ok(true),
            "gap {gap:?}: the app echoes the early frame: {text}"
        );
    }
    assert_eq!(auth.calls(), 2);
}
