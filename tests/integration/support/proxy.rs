//! The proxy under test: the binary started on a generated config (and `-t` runs of it), its
//! log, and the TLS certificate its HTTPS listeners use.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::*;

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

pub fn proxy_bin() -> &'static str {
    env!("CARGO_BIN_EXE_etls-proxy")
}

/// Merges `over` into `base`, mapping by mapping.
pub fn merge(base: &mut serde_yaml::Value, over: serde_yaml::Value) {
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
pub fn spawn_proxy(
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

    /// With one TLS listener serving `cert`.
    pub async fn start_tls(app: &Stub, auth: &Stub, cert: &Certificate) -> Proxy {
        Proxy::builder(app, auth)
            .tls(&cert.cert(), &cert.key())
            .start()
            .await
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
