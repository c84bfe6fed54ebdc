//! Stand-in servers: an app and an auth API on loopback that record what reached them and
//! answer as told.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::poll::until_async;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone)]
pub struct StubRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Header lookups shared by what the stubs received and what the client got back.
pub trait Headers {
    fn header_list(&self) -> &[(String, String)];

    fn header(&self, name: &str) -> Option<&str> {
        self.all(name).into_iter().next()
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.header_list()
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

impl Headers for StubRequest {
    fn header_list(&self) -> &[(String, String)] {
        &self.headers
    }
}

impl StubRequest {
    /// The value of one cookie in the (single) Cookie header.
    pub fn cookie(&self, name: &str) -> Option<String> {
        let header = self.header("cookie")?;
        header.split("; ").find_map(|c| {
            let (n, v) = c.split_once('=')?;
            (n == name).then(|| v.to_owned())
        })
    }
}

pub enum StubReply {
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        delay: Duration,
    },
    /// Close with a TCP reset, answering nothing.
    Reset,
    /// Write this much of an answer, then reset.
    ResetAfter(Vec<u8>),
    /// These bytes, verbatim, keeping the connection (a chunked answer, interim responses).
    Raw(Vec<u8>),
    /// Send the head, then one body byte at a time every `every`.
    Drip {
        head: Vec<u8>,
        body: Vec<u8>,
        every: Duration,
    },
}

impl StubReply {
    pub fn json(status: u16, body: Value) -> Self {
        Self::raw(status, "application/json", body.to_string().into_bytes())
    }

    pub fn raw(status: u16, content_type: &str, body: Vec<u8>) -> Self {
        let mut headers = vec![];
        if !content_type.is_empty() {
            headers.push(("Content-Type".to_owned(), content_type.to_owned()));
        }
        StubReply::Respond {
            status,
            headers,
            body,
            delay: Duration::ZERO,
        }
    }

    /// 200 carrying these Set-Cookie lines: an app logging the user out, or in.
    pub fn setting_cookies<S: AsRef<str>>(lines: &[S]) -> Self {
        StubReply::Respond {
            status: 200,
            headers: lines
                .iter()
                .map(|l| ("Set-Cookie".to_owned(), l.as_ref().to_owned()))
                .collect(),
            body: b"app answer".to_vec(),
            delay: Duration::ZERO,
        }
    }

    pub fn delayed(self, by: Duration) -> Self {
        match self {
            StubReply::Respond {
                status,
                headers,
                body,
                ..
            } => StubReply::Respond {
                status,
                headers,
                body,
                delay: by,
            },
            other => other,
        }
    }
}

type Handler = dyn Fn(&StubRequest) -> StubReply + Send + Sync;

pub struct Stub {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<StubRequest>>>,
    handler: Arc<Mutex<Arc<Handler>>>,
    /// Set by `stop`: the listener and every open connection close.
    stopped: Mutex<tokio::sync::watch::Sender<bool>>,
}

impl Stub {
    pub async fn start(
        handler: impl Fn(&StubRequest) -> StubReply + Send + Sync + 'static,
    ) -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Mutex<Arc<Handler>>> = Arc::new(Mutex::new(Arc::new(handler)));
        let stopped = serve(listener, requests.clone(), handler.clone());
        Stub {
            addr,
            requests,
            handler,
            stopped: Mutex::new(stopped),
        }
    }

    /// Stops serving: open connections are closed and new ones refused (until `restart`), as
    /// when the process behind the port is gone.
    pub async fn stop(&self) {
        let _ = self.stopped.lock().unwrap().send(true);
        let (addr, what) = (self.addr, format!("{} closed", self.addr));
        until_async(&what, Duration::from_secs(5), || async move {
            TcpStream::connect(addr).await.is_err()
        })
        .await;
    }

    /// Waits (at most 5 s) until `n` requests have reached it.
    pub async fn wait_for_calls(&self, n: usize) {
        let what = format!("{n} call(s) at {}", self.addr);
        until_async(&what, Duration::from_secs(5), || async {
            self.calls() >= n
        })
        .await;
    }

    /// Serves again on the same port, with the same handler and the same record of calls.
    pub async fn restart(&self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        let stopped = serve(listener, self.requests.clone(), self.handler.clone());
        *self.stopped.lock().unwrap() = stopped;
    }

    /// The stand-in app: answers 200 with what it received.
    pub async fn app() -> Stub {
        Stub::start(|req| {
            StubReply::json(
                200,
                json!({"path": req.path, "cookie": req.all("cookie"), "body_len": req.body.len()}),
            )
        })
        .await
    }

    /// The stand-in app with one slow page: `path` answered after `delay`, the rest at once.
    pub async fn app_slow_at(path: &'static str, delay: Duration) -> Stub {
        Stub::start(move |req| {
            let reply = StubReply::json(200, json!({"path": req.path}));
            if req.path == path {
                reply.delayed(delay)
            } else {
                reply
            }
        })
        .await
    }

    /// The stand-in auth API of seed 002: fresh tokens derived from the refresh token it got.
    pub async fn auth_api() -> Stub {
        Stub::start(|req| {
            let rt = req.cookie("refreshToken").unwrap_or_default();
            StubReply::json(200, rotated(&rt))
        })
        .await
    }

    /// The stand-in auth API, answering after `delay`: long enough for requests to pile up.
    pub async fn slow_auth_api(delay: Duration) -> Stub {
        Stub::start(move |req| {
            let rt = req.cookie("refreshToken").unwrap_or_default();
            StubReply::json(200, rotated(&rt)).delayed(delay)
        })
        .await
    }

    pub fn set_handler(&self, handler: impl Fn(&StubRequest) -> StubReply + Send + Sync + 'static) {
        *self.handler.lock().unwrap() = Arc::new(handler);
    }

    pub fn calls(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub fn requests(&self) -> Vec<StubRequest> {
        self.requests.lock().unwrap().clone()
    }

    pub fn last(&self) -> StubRequest {
        self.requests
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request reached the stub")
    }
}

/// Accepts on `listener` until the returned sender says stop (dropping it changes nothing).
pub fn serve(
    listener: TcpListener,
    requests: Arc<Mutex<Vec<StubRequest>>>,
    handler: Arc<Mutex<Arc<Handler>>>,
) -> tokio::sync::watch::Sender<bool> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    async fn until_stopped(mut stopped: tokio::sync::watch::Receiver<bool>) {
        if stopped.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => return,
                },
                _ = until_stopped(stopped.clone()) => return,
            };
            let (reqs, h, stopped) = (requests.clone(), handler.clone(), stopped.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = serve_connection(stream, reqs, h) => {}
                    _ = until_stopped(stopped) => {}
                }
            });
        }
    });
    stop
}

/// The auth API's answer for refresh token `rt`: distinct per session, so tests can tell whose
/// tokens a request got.
pub fn rotated(rt: &str) -> Value {
    json!({
        "accessToken": format!("api-access-for-{rt}"),
        "refreshToken": format!("api-refresh-after-{rt}"),
        "userData": {"id": 7, "role": "admin"},
    })
}

pub async fn serve_connection(
    mut stream: TcpStream,
    requests: Arc<Mutex<Vec<StubRequest>>>,
    handler: Arc<Mutex<Arc<Handler>>>,
) {
    let mut buf = Vec::new();
    loop {
        let Some(req) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        requests.lock().unwrap().push(req.clone());
        let h = handler.lock().unwrap().clone();
        match h(&req) {
            StubReply::Respond {
                status,
                headers,
                body,
                delay,
            } => {
                tokio::time::sleep(delay).await;
                let mut out = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
                for (k, v) in headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                let mut bytes = out.into_bytes();
                bytes.extend_from_slice(&body);
                if stream.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            StubReply::Raw(bytes) => {
                if stream.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            StubReply::Reset => {
                let _ = stream.set_zero_linger();
                return;
            }
            StubReply::ResetAfter(partial) => {
                let _ = stream.write_all(&partial).await;
                let _ = stream.flush().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = stream.set_zero_linger();
                return;
            }
            StubReply::Drip { head, body, every } => {
                if stream.write_all(&head).await.is_err() {
                    return;
                }
                for b in body {
                    tokio::time::sleep(every).await;
                    if stream.write_all(&[b]).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// One request off `stream` (plain TCP, or TLS in the tests that need it).
pub async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Option<StubRequest> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(len)) = req.parse(buf) {
            let (method, path) = (req.method?.to_owned(), req.path?.to_owned());
            let headers = owned_headers(req.headers);
            buf.drain(..len);
            // A request without framing has no body.
            let body = read_body(stream, buf, &headers, Some(0)).await?;
            return Some(StubRequest {
                method,
                path,
                headers,
                body,
            });
        }
        read_more(stream, buf).await?;
    }
}

pub fn owned_headers(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

/// The body after a header: chunked, `Content-Length`, or else `unframed` bytes (`None`: until
/// the connection closes).
pub async fn read_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    headers: &[(String, String)],
    unframed: Option<usize>,
) -> Option<Vec<u8>> {
    let find = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
    };
    if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        return read_chunked(stream, buf).await;
    }
    match find("content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .or(unframed)
    {
        Some(n) => {
            while buf.len() < n {
                read_more(stream, buf).await?;
            }
            Some(buf.drain(..n).collect())
        }
        None => {
            while read_more(stream, buf).await.is_some() {}
            Some(std::mem::take(buf))
        }
    }
}

pub async fn read_more<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk).await.ok()?;
    if n == 0 {
        return None;
    }
    buf.extend_from_slice(&chunk[..n]);
    Some(())
}

pub async fn read_chunked<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                break p;
            }
            read_more(stream, buf).await?;
        };
        let size_text = String::from_utf8_lossy(&buf[..line_end]).to_string();
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        buf.drain(..line_end + 2);
        while buf.len() < size + 2 {
            read_more(stream, buf).await?;
        }
        body.extend(buf.drain(..size));
        buf.drain(..2);
        if size == 0 {
            return Some(body);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The proxy under test
