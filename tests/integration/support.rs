//! Real sockets on loopback: a stand-in app and auth API that record what reached them, the
//! proxy binary started on a generated config, and a raw HTTP/1.1 client that shows exactly
//! which headers came back.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const ACCESS_SECRET: &str = "test-access-secret-0123456789abcdef";
pub const REFRESH_SECRET: &str = "test-refresh-secret-0123456789abcdef";

pub fn now() -> u64 {
    etls_proxy::unix_now()
}

pub fn sign(secret: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

pub fn access_token(exp_from_now: i64) -> String {
    sign(
        ACCESS_SECRET,
        json!({"username": "ann", "exp": now() as i64 + exp_from_now}),
    )
}

pub fn refresh_token(exp_from_now: i64) -> String {
    sign(
        REFRESH_SECRET,
        json!({"username": "ann", "exp": now() as i64 + exp_from_now}),
    )
}

/// The `sid` the proxy must write for the auth API session `api_cookies`, computed here from
/// the documented construction: HMAC-SHA256 under HMAC(refresh secret, "etls-proxy binding
/// v1"), first 16 bytes, base64url.
pub fn expected_sid(api_cookies: &str) -> String {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let mut derive = Hmac::<sha2::Sha256>::new_from_slice(REFRESH_SECRET.as_bytes()).unwrap();
    derive.update(b"etls-proxy binding v1");
    let key = derive.finalize().into_bytes();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(api_cookies.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&mac.finalize().into_bytes()[..16])
}

/// A `refreshTokenEtls` as the proxy mints it: bound (`sid`) to the auth API session
/// `api_cookies`.
pub fn bound_refresh_token(api_cookies: &str, exp_from_now: i64) -> String {
    sign(
        REFRESH_SECRET,
        json!({"username": "ann", "exp": now() as i64 + exp_from_now, "sid": expected_sid(api_cookies)}),
    )
}

/// Decodes a JWT's payload without checking it (the test checks the signature separately).
pub fn payload(token: &str) -> Value {
    use base64::Engine;
    let part = token.split('.').nth(1).expect("three segments");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

pub fn verifies(token: &str, secret: &str) -> bool {
    let mut v = jsonwebtoken::Validation::new(Algorithm::HS256);
    v.required_spec_claims.clear();
    v.validate_aud = false;
    jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
        &v,
    )
    .is_ok()
}

// ---------------------------------------------------------------------------------------------
// Sessions and answers shared by the tests

pub const CLEARED: [&str; 5] = [
    "accessTokenEtls",
    "refreshTokenEtls",
    "accessToken",
    "refreshToken",
    "etlsUser",
];

/// Seed 000's logout response: 401 and the five cookies cleared.
pub fn assert_logout(r: &Response) {
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json(), json!({"error": "Unauthorized"}));
    let lines = r.set_cookies();
    assert_eq!(lines.len(), 5, "{lines:?}");
    for (line, name) in lines.iter().zip(CLEARED) {
        assert!(line.starts_with(&format!("{name}=;")), "{line}");
        assert!(
            line.contains("Max-Age=0") && line.contains("Path=/"),
            "{line}"
        );
    }
}

/// A session whose access token has expired and whose refresh token is good; `rt` is the auth
/// API's refresh token, which the stand-in auth API derives the new tokens from.
pub fn expired_session(rt: &str) -> String {
    format!(
        "theme=dark; accessTokenEtls={}; refreshTokenEtls={}; accessToken=old-api-access; refreshToken={rt}; etlsUser=old-user; lang=uk",
        access_token(-30),
        refresh_token(3600)
    )
}

// ---------------------------------------------------------------------------------------------
// Stand-in servers

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
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(self.addr).await.is_ok() {
            assert!(Instant::now() < deadline, "{} still accepts", self.addr);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
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
fn serve(
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

async fn serve_connection(
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

async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<StubRequest> {
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

fn owned_headers(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
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
async fn read_body(
    stream: &mut TcpStream,
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

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk).await.ok()?;
    if n == 0 {
        return None;
    }
    buf.extend_from_slice(&chunk[..n]);
    Some(())
}

async fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
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

pub struct Proxy {
    pub addr: SocketAddr,
    child: Child,
    pub log_path: std::path::PathBuf,
    conf: TempFile,
    upstreams: (SocketAddr, SocketAddr),
}

pub struct TempFile(pub std::path::PathBuf);

impl TempFile {
    pub fn new(tag: &str, content: &str) -> TempFile {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "etls-test-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&path, content).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A port for a process the test starts. Taken below Linux's ephemeral range (32768 and up),
/// where the stand-ins' `bind(0)` never lands, so a stand-in cannot grab a port between the
/// moment it is picked and the moment the proxy binds it; and claimed with a file naming this
/// process, so two test runs on one machine (two clones, say) never hand out the same port.
/// Otherwise a proxy that lost the race to bind could be mistaken for the other run's proxy.
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let offset = (std::process::id() as usize % 600) * 20;
    loop {
        let port = (20_000 + (offset + NEXT.fetch_add(1, Ordering::SeqCst)) % 12_000) as u16;
        if claim_port(port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn claim_port(port: u16) -> bool {
    let dir = std::env::temp_dir().join("etls-test-ports");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(port.to_string());
    let create = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
    };
    let mut file = match create() {
        Ok(file) => file,
        Err(_) => {
            let owner = std::fs::read_to_string(&path).unwrap_or_default();
            let alive = owner.trim().parse::<u32>().is_ok_and(|pid| {
                pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists()
            });
            if alive || std::fs::remove_file(&path).is_err() {
                return false;
            }
            match create() {
                Ok(file) => file,
                Err(_) => return false,
            }
        }
    };
    use std::io::Write;
    file.write_all(std::process::id().to_string().as_bytes())
        .is_ok()
}

pub fn proxy_bin() -> &'static str {
    env!("CARGO_BIN_EXE_etls-proxy")
}

/// Merges `over` into `base`, mapping by mapping.
fn merge(base: &mut serde_yaml::Value, over: serde_yaml::Value) {
    match (base, over) {
        (serde_yaml::Value::Mapping(b), serde_yaml::Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) if v.is_mapping() => merge(existing, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

pub fn config_yaml(port: u16, app: SocketAddr, auth: SocketAddr, extra: &str) -> String {
    let mut base: serde_yaml::Value = serde_yaml::from_str(&format!(
        r#"
listen: ["127.0.0.1:{port}"]
pingora: {{threads: 1, grace_period_seconds: 2, pid_file: "/tmp/etls-test-{port}.pid", upgrade_sock: "/tmp/etls-test-{port}.sock"}}
upstream: {{address: "{app}", connect_timeout_ms: 500}}
auth_api: {{refresh_url: "http://{auth}/refreshtoken", timeout_ms: 1500}}
"#
    ))
    .unwrap();
    if !extra.trim().is_empty() {
        merge(&mut base, serde_yaml::from_str(extra).unwrap());
    }
    serde_yaml::to_string(&base).unwrap()
}

pub struct ProxyBuilder<'a> {
    app: SocketAddr,
    auth: SocketAddr,
    extra: String,
    rust_log: &'a str,
    env: Vec<(&'a str, String)>,
    /// `(cert, key)`: the proxy's listener speaks HTTPS (and HTTP/2).
    tls: Option<(String, String)>,
}

impl<'a> ProxyBuilder<'a> {
    pub fn extra(mut self, yaml: impl Into<String>) -> Self {
        self.extra = yaml.into();
        self
    }

    pub fn rust_log(mut self, level: &'a str) -> Self {
        self.rust_log = level;
        self
    }

    pub fn tls(mut self, cert: &std::path::Path, key: &std::path::Path) -> Self {
        self.tls = Some((cert.display().to_string(), key.display().to_string()));
        self
    }

    pub fn env(mut self, name: &'a str, value: &str) -> Self {
        self.env.push((name, value.to_owned()));
        self
    }

    pub async fn start(self) -> Proxy {
        for _ in 0..5 {
            let port = free_port();
            let mut yaml = config_yaml(port, self.app, self.auth, &self.extra);
            if let Some((cert, key)) = &self.tls {
                let listen = format!(
                    "listen: [{{address: '127.0.0.1:{port}', tls: {{cert: '{cert}', key: '{key}'}}}}]"
                );
                let mut base: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
                merge(&mut base, serde_yaml::from_str(&listen).unwrap());
                yaml = serde_yaml::to_string(&base).unwrap();
            }
            let conf = TempFile::new("conf.yaml", &yaml);
            let log_path =
                std::env::temp_dir().join(format!("etls-test-{port}-{}.log", std::process::id()));
            let mut child = spawn_proxy(&conf.0, &log_path, self.rust_log, &self.env, false);
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken meanwhile, or a config problem: try again or report
                }
                if TcpStream::connect(addr).await.is_ok() {
                    return Proxy {
                        addr,
                        child,
                        log_path,
                        conf,
                        upstreams: (self.app, self.auth),
                    };
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
            eprintln!(
                "proxy did not start: {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        panic!("the proxy did not start after 5 tries");
    }
}

/// The proxy binary on `conf`, logging to `log_path`; with `upgrade`, taking over the listening
/// sockets of the running instance (`-u`).
fn spawn_proxy(
    conf: &std::path::Path,
    log_path: &std::path::Path,
    rust_log: &str,
    env: &[(&str, String)],
    upgrade: bool,
) -> Child {
    let log = std::fs::File::create(log_path).unwrap();
    let mut cmd = Command::new(proxy_bin());
    if upgrade {
        cmd.arg("-u");
    }
    cmd.arg("-c")
        .arg(conf)
        .env("ETLS_ACCESS", ACCESS_SECRET)
        .env("ETLS_REFRESH", REFRESH_SECRET)
        .env_remove("ETLS_ACCESS_EXPIRE_TIME")
        .env_remove("ETLS_REFRESH_EXPIRE_TIME")
        .env("RUST_LOG", rust_log)
        .stdout(Stdio::null())
        .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("proxy binary starts")
}

impl Proxy {
    /// A new process on the same configuration, started with `-u`: it waits on the upgrade
    /// socket until this one is sent SIGQUIT and hands its listeners over.
    pub fn successor(&self) -> Proxy {
        let conf = TempFile::new(
            "conf-next.yaml",
            &std::fs::read_to_string(&self.conf.0).unwrap(),
        );
        let log_path = std::env::temp_dir().join(format!(
            "etls-test-{}-{}-next.log",
            self.addr.port(),
            std::process::id()
        ));
        let child = spawn_proxy(&conf.0, &log_path, "trace", &[], true);
        Proxy {
            addr: self.addr,
            child,
            log_path,
            conf,
            upstreams: self.upstreams,
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn builder<'a>(app: &Stub, auth: &Stub) -> ProxyBuilder<'a> {
        Proxy::builder_at(app.addr, auth.addr)
    }

    pub fn builder_at<'a>(app: SocketAddr, auth: SocketAddr) -> ProxyBuilder<'a> {
        ProxyBuilder {
            app,
            auth,
            extra: String::new(),
            // Every test runs the proxy at its most verbose, and `Drop` checks that nothing
            // secret reached the log (`assert_no_secrets`).
            rust_log: "trace",
            env: vec![],
            tls: None,
        }
    }

    pub async fn start(app: &Stub, auth: &Stub) -> Proxy {
        Proxy::builder(app, auth).start().await
    }

    pub async fn get(&self, path: &str, cookie: &str) -> Response {
        let cookie_line = if cookie.is_empty() {
            String::new()
        } else {
            format!("Cookie: {cookie}\r\n")
        };
        self.send(&format!(
            "GET {path} HTTP/1.1\r\nHost: app.test\r\n{cookie_line}\r\n"
        ))
        .await
    }

    pub async fn post(&self, path: &str, cookie: &str, body: &[u8]) -> Response {
        let mut raw = format!(
            "POST {path} HTTP/1.1\r\nHost: app.test\r\nCookie: {cookie}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(body);
        send_raw(self.addr, &raw).await
    }

    pub async fn send(&self, raw: &str) -> Response {
        send_raw(self.addr, raw.as_bytes()).await
    }

    /// Rewrites the configuration file with `extra` over the base, and sends SIGHUP.
    pub fn reload_with(&self, extra: &str) {
        let (app, auth) = self.upstreams;
        std::fs::write(
            &self.conf.0,
            config_yaml(self.addr.port(), app, auth, extra),
        )
        .unwrap();
        self.signal("HUP");
    }

    /// Writes `text` as the configuration file as is, and sends SIGHUP.
    pub fn reload_raw(&self, text: &str) {
        std::fs::write(&self.conf.0, text).unwrap();
        self.signal("HUP");
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit by itself (after SIGTERM), up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Stops the proxy and returns everything it logged.
    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            assert_no_secrets(&self.log());
        }
        let _ = std::fs::remove_file(&self.log_path);
    }
}

/// What must never appear in a log, whatever a test sent: any JWT (their header always
/// encodes to `eyJ`), the secrets, the stand-in auth API's tokens, and values tests mark with
/// `opaque-`. Checked on every proxy a test starts, at `RUST_LOG=trace` unless a test lowers it.
pub fn assert_no_secrets(log: &str) {
    for needle in [
        "eyJ",
        ACCESS_SECRET,
        REFRESH_SECRET,
        "api-access-for-",
        "api-refresh-after-",
        "opaque-",
    ] {
        if let Some(at) = log.find(needle) {
            let line = log[..at].rfind('\n').map_or(0, |n| n + 1);
            let end = log[at..].find('\n').map_or(log.len(), |n| at + n);
            panic!("`{needle}` reached the proxy's log: {}", &log[line..end]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 client

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

/// Runs the binary with `args` and `-c` on a file holding `yaml`, with only `env` for the
/// secret and TTL variables: its output and stdout + stderr, which never tell of a panic.
pub fn run_cli(args: &[&str], yaml: &str, env: &[(&str, &str)]) -> (std::process::Output, String) {
    let conf = TempFile::new("cli.yaml", yaml);
    let mut cmd = Command::new(proxy_bin());
    cmd.args(args)
        .arg("-c")
        .arg(&conf.0)
        .env_remove("ETLS_ACCESS")
        .env_remove("ETLS_REFRESH")
        .env_remove("ETLS_ACCESS_EXPIRE_TIME")
        .env_remove("ETLS_REFRESH_EXPIRE_TIME");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("panicked"), "{text}");
    (out, text)
}

/// `etls-proxy -t` on `yaml` with the test secrets.
pub fn check_config(yaml: &str) -> (std::process::Output, String) {
    run_cli(
        &["-t"],
        yaml,
        &[
            ("ETLS_ACCESS", ACCESS_SECRET),
            ("ETLS_REFRESH", REFRESH_SECRET),
        ],
    )
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

/// A self-signed certificate for 127.0.0.1, made with openssl; removed with the guard.
pub struct Certificate {
    dir: PathBuf,
}

impl Certificate {
    pub fn new() -> Certificate {
        let dir =
            std::env::temp_dir().join(format!("etls-tls-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let status = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
            // An end-entity certificate (webpki refuses a CA as a server's own certificate).
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(dir.join("cert.pem"))
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl is installed");
        assert!(status.success());
        Certificate { dir }
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }
}

impl Drop for Certificate {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
