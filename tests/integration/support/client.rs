//! A raw HTTP/1.1 client that shows exactly which headers came back, and the admin listener's
//! pages.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::*;

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Headers for Response {
    fn header_list(&self) -> &[(String, String)] {
        &self.headers
    }
}

impl Response {
    pub fn set_cookies(&self) -> Vec<&str> {
        self.all("set-cookie")
    }

    /// The value a Set-Cookie line gives `name`.
    pub fn set_cookie_value(&self, name: &str) -> Option<String> {
        self.set_cookies().iter().find_map(|line| {
            let first = line.split(';').next()?;
            let (n, v) = first.split_once('=')?;
            (n == name).then(|| v.to_owned())
        })
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("JSON body: {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What the browser holds once it has stored the answer's Set-Cookie lines.
pub fn stored(cookie: &str, answer: &Response) -> String {
    let mut pairs: Vec<(String, String)> = cookie
        .split("; ")
        .filter_map(|c| c.split_once('='))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    for line in answer.set_cookies() {
        let Some((name, value)) = line.split(';').next().and_then(|p| p.split_once('=')) else {
            continue;
        };
        match pairs.iter_mut().find(|(n, _)| n == name) {
            Some(pair) => pair.1 = value.to_owned(),
            None => pairs.push((name.to_owned(), value.to_owned())),
        }
    }
    pairs
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// An admin listener on a free port: its address and the YAML that turns it on.
pub fn admin_yaml() -> (SocketAddr, String) {
    let port = free_port();
    (
        format!("127.0.0.1:{port}").parse().unwrap(),
        format!("admin: {{listen: '127.0.0.1:{port}'}}"),
    )
}

/// A GET to the admin listener (`/metrics`, `/healthz`, `/readyz`).
pub async fn admin_get(admin: SocketAddr, path: &str) -> Response {
    // The admin listener is its own service: on a loaded machine it may start listening after
    // the proxy's port already answers.
    super::poll::poll("the admin listener", Duration::from_secs(10), || async {
        TcpStream::connect(admin).await.ok()
    })
    .await;
    send_raw(
        admin,
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes(),
    )
    .await
}

/// The value of one series in the Prometheus text.
pub fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {name} in:\n{text}"))
}

/// `n` concurrent GETs carrying `cookie`, each on its own connection.
pub async fn fan_out(addr: SocketAddr, cookie: &str, n: usize) -> Vec<Response> {
    let raw = format!("GET / HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n");
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let raw = raw.clone();
            tokio::spawn(async move { send_raw(addr, raw.as_bytes()).await })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

pub async fn send_raw(addr: SocketAddr, raw: &[u8]) -> Response {
    let mut conn = Conn::open(addr).await;
    conn.request(raw).await.expect("a response")
}

/// `GET path` with `cookie`, on its own connection in a task of its own: a request left
/// running (at a slow app, or a slow auth API) while the test does something else.
pub fn spawn_get(addr: SocketAddr, path: &str, cookie: &str) -> tokio::task::JoinHandle<Response> {
    let raw = format!("GET {path} HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n");
    tokio::spawn(async move { send_raw(addr, raw.as_bytes()).await })
}

/// One client connection, for keep-alive checks.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Conn {
        Conn {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    /// Sends `raw` and reads nothing (a pipelined request: its answer comes after the one
    /// pending).
    pub async fn send(&mut self, raw: &[u8]) {
        self.stream
            .write_all(raw)
            .await
            .expect("the proxy takes the bytes");
    }

    /// Sends `raw` and reads one response; `None` when the connection was closed first.
    pub async fn request(&mut self, raw: &[u8]) -> Option<Response> {
        self.stream.write_all(raw).await.ok()?;
        tokio::time::timeout(Duration::from_secs(20), self.read_response())
            .await
            .ok()?
    }

    /// Reads the next response without sending anything (after an interim 1xx).
    pub async fn next_response(&mut self) -> Option<Response> {
        tokio::time::timeout(Duration::from_secs(20), self.read_response())
            .await
            .ok()?
    }

    async fn read_response(&mut self) -> Option<Response> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(len)) = resp.parse(&self.buf) {
                let status = resp.code?;
                let headers = owned_headers(resp.headers);
                self.buf.drain(..len);
                let body = if status == 204 || status == 304 || (100..200).contains(&status) {
                    Vec::new()
                } else {
                    read_body(&mut self.stream, &mut self.buf, &headers, None).await?
                };
                return Some(Response {
                    status,
                    headers,
                    body,
                });
            }
            read_more(&mut self.stream, &mut self.buf).await?;
        }
    }
}
