//! Browser-side connection timeouts: an idle keep-alive connection, a half-sent second request
//! and a dripped first header are closed by the proxy (`downstream.keepalive_timeout_secs`,
//! `downstream.header_timeout_secs`); an idle HTTP/2 connection too.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Reads one whole answer (head and `Content-Length` body) and returns its status.
async fn read_answer(stream: &mut TcpStream) -> u16 {
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(len)) = resp.parse(&buf) {
            let length: usize = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map_or(0, |h| {
                    std::str::from_utf8(h.value).unwrap().parse().unwrap()
                });
            if buf.len() >= len + length {
                return resp.code.unwrap();
            }
        }
        assert!(Instant::now() < deadline, "no whole answer");
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed before the answer");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Whether the proxy closes the connection (end of file or reset) within `limit`, having sent
/// nothing more.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut chunk = [0u8; 1024];
    match tokio::time::timeout(limit, stream.read(&mut chunk)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(n)) => panic!(
            "unexpected bytes: {:?}",
            String::from_utf8_lossy(&chunk[..n])
        ),
        Err(_) => false,
    }
}

const REQUEST: &[u8] = b"GET /favicon.ico HTTP/1.1\r\nHost: app.test\r\n\r\n";

/// A proxy with the settings `extra` in front of a stub app, and one connection to it; the
/// stubs and the proxy live as long as the caller keeps them.
async fn connected(extra: &str) -> (Stub, Stub, Proxy, TcpStream) {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::builder(&app, &auth).extra(extra).start().await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    (app, auth, proxy, stream)
}

#[tokio::test]
async fn an_idle_keepalive_connection_is_closed_after_keepalive_timeout() {
    let (app, _auth, _proxy, mut stream) =
        connected("downstream: {keepalive_timeout_secs: 1, header_timeout_secs: 30}").await;
    for _ in 0..2 {
        stream.write_all(REQUEST).await.unwrap();
        assert_eq!(read_answer(&mut stream).await, 200);
    }
    // Without the timeout Pingora keeps it open for ever.
    assert!(closed_within(&mut stream, Duration::from_secs(15)).await);
    assert_eq!(app.calls(), 2);
}

/// The stream's timer is lazy (armed at an earlier deadline, moved when it fires): a
/// connection busy for longer than both timeouts is never cut while requests keep coming, and
/// is still closed once it falls idle.
#[tokio::test]
async fn a_busy_connection_outlives_both_timeouts_then_closes_when_idle() {
    let (app, _auth, _proxy, mut stream) =
        connected("downstream: {keepalive_timeout_secs: 2, header_timeout_secs: 1}").await;
    for _ in 0..8 {
        stream.write_all(REQUEST).await.unwrap();
        assert_eq!(read_answer(&mut stream).await, 200);
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    assert_eq!(app.calls(), 8);
    assert!(closed_within(&mut stream, Duration::from_secs(15)).await);
}

#[tokio::test]
async fn keepalive_timeout_zero_closes_after_each_answer() {
    let (_app, _auth, _proxy, mut stream) =
        connected("downstream: {keepalive_timeout_secs: 0}").await;
    stream.write_all(REQUEST).await.unwrap();
    assert_eq!(read_answer(&mut stream).await, 200);
    assert!(closed_within(&mut stream, Duration::from_secs(15)).await);
}

#[tokio::test]
async fn a_half_sent_second_request_is_closed_after_header_timeout() {
    let (app, _auth, _proxy, mut stream) =
        connected("downstream: {keepalive_timeout_secs: 600, header_timeout_secs: 1}").await;
    stream.write_all(REQUEST).await.unwrap();
    assert_eq!(read_answer(&mut stream).await, 200);
    stream
        .write_all(b"GET /favicon.ico HTTP/1.1\r\nHost: app.test\r\n")
        .await
        .unwrap();
    // The keep-alive timeout (10 minutes) is far beyond this wait: the header deadline closes.
    assert!(closed_within(&mut stream, Duration::from_secs(15)).await);
    assert_eq!(app.calls(), 1);
}

#[tokio::test]
async fn a_dripped_first_header_is_cut_at_header_timeout() {
    let (app, _auth, _proxy, stream) = connected("downstream: {header_timeout_secs: 2}").await;
    let (mut read, mut write) = stream.into_split();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(30), read.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return (true, got),
                Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
                Err(_) => return (false, got),
            }
        }
    });
    // A whole header over about 8 s, a piece every 400 ms: each read is quick, the header slow.
    let header = b"GET /favicon.ico HTTP/1.1\r\nHost: app.test\r\nX-Slow: 1\r\n\r\n";
    for piece in header.chunks(header.len().div_ceil(20)) {
        if write.write_all(piece).await.is_err() || reader.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let (closed, got) = reader.await.unwrap();
    assert!(closed, "the connection stayed open");
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert_eq!(app.calls(), 0);
}

#[tokio::test]
async fn a_prompt_header_after_a_slow_request_body_still_passes() {
    // The deadline covers headers only: a request whose body takes longer than the header
    // timeout, then a second request on the same connection, both reach the app.
    let (app, _auth, _proxy, mut stream) = connected("downstream: {header_timeout_secs: 1}").await;
    stream
        .write_all(
            b"POST /_next/static/upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 4\r\n\r\nab",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stream.write_all(b"cd").await.unwrap();
    assert_eq!(read_answer(&mut stream).await, 200);
    stream.write_all(REQUEST).await.unwrap();
    assert_eq!(read_answer(&mut stream).await, 200);
    assert_eq!(app.calls(), 2);
    assert_eq!(app.requests()[0].body, b"abcd");
}

/// An HTTP/2 connection (openssl s_client with ALPN h2, the client preface and an empty
/// SETTINGS frame, then nothing) is closed by the proxy once idle for the keep-alive timeout.
#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_keepalive_timeout() {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};

    let certificate = Certificate::new();
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::builder(&app, &auth)
        .tls(&certificate.cert(), &certificate.key())
        .extra("downstream: {keepalive_timeout_secs: 1}")
        .start()
        .await;
    let addr = proxy.addr.to_string();
    let closed = tokio::task::spawn_blocking(move || {
        let mut client = Command::new("openssl")
            .args(["s_client", "-quiet", "-alpn", "h2", "-connect", &addr])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl runs");
        let mut stdin = client.stdin.take().unwrap();
        stdin
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .unwrap();
        stdin.flush().unwrap();
        // The server's frames, until it closes (or 15 s, then the client is killed).
        let mut stdout = client.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let _ = stdout.read_to_end(&mut got);
            got
        });
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut exited = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = client.try_wait() {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = client.kill();
        let _ = client.wait();
        drop(stdin);
        let got = reader.join().unwrap();
        // The server spoke HTTP/2: its first frame is SETTINGS (type 4).
        assert!(got.len() >= 9 && got[3] == 4, "{got:?}");
        exited
    })
    .await
    .unwrap();
    assert!(closed, "the idle HTTP/2 connection stayed open");
}
