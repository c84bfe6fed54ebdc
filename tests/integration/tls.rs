//! HTTPS at the edge: a certificate made in the test, HTTP/2 by ALPN (curl is the HTTP/2
//! client), HTTP/2 cookie crumbs merged into the one Cookie header the app receives, and
//! cookies `Secure` by default on a TLS listener.

use std::process::Command;

use crate::support::*;

/// What curl saw: the protocol version, the status and the response headers.
struct CurlAnswer {
    version: String,
    status: u16,
    headers: Vec<(String, String)>,
}

impl CurlAnswer {
    fn set_cookies(&self) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// One request with curl (run off the async runtime), each of `cookies` as its own header:
/// over HTTP/2 each is a separate `cookie` field, as browsers send crumbs.
async fn curl(http: &str, url: String, cookies: Vec<String>) -> CurlAnswer {
    let http = http.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sk",
            &http,
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-w",
            "version=%{http_version}\n",
        ]);
        for c in &cookies {
            cmd.arg("-H").arg(format!("Cookie: {c}"));
        }
        let out = cmd.arg(&url).output().expect("curl is installed");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = text.lines();
        let status_line = lines.next().unwrap_or_else(|| panic!("no answer: {text}"));
        let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        let mut version = String::new();
        for line in lines {
            if let Some(v) = line.strip_prefix("version=") {
                version = v.to_owned();
            } else if let Some((k, v)) = line.split_once(": ") {
                headers.push((k.to_owned(), v.to_owned()));
            }
        }
        CurlAnswer {
            version,
            status,
            headers,
        }
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn https_with_http2_merges_cookie_crumbs_and_sets_secure_cookies() {
    let cert = Certificate::new();
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start_tls(&app, &auth, &cert).await;
    let url = format!("https://127.0.0.1:{}/page", proxy.addr.port());
    let valid = access_token(600);
    let crumbs = vec![
        "a=1".into(),
        format!("accessTokenEtls={valid}"),
        "b=2".into(),
    ];

    let r = curl("--http2", url.clone(), crumbs).await;
    assert_eq!((r.version.as_str(), r.status), ("2", 200));
    assert!(r.set_cookies().is_empty());
    assert_eq!(
        app.last().all("cookie"),
        vec![format!("a=1; accessTokenEtls={valid}; b=2")],
        "one Cookie header for the app"
    );

    // A refresh over HTTP/2, the session split into crumbs: the new cookies are Secure.
    let crumbs = vec![
        format!("accessTokenEtls={}", access_token(-5)),
        format!("refreshTokenEtls={}", refresh_token(600)),
        "refreshToken=opaque-tls".into(),
    ];
    let r = curl("--http2", url.clone(), crumbs).await;
    assert_eq!((r.version.as_str(), r.status), ("2", 200));
    let lines = r.set_cookies();
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert!(lines.iter().all(|l| l.contains("; Secure")), "{lines:?}");
    let seen = app.last();
    assert_eq!(seen.all("cookie").len(), 1);
    assert_eq!(
        seen.cookie("refreshToken").as_deref(),
        Some("api-refresh-after-opaque-tls")
    );

    // HTTP/1.1 over TLS still works; a logout over HTTPS clears Secure cookies.
    let r = curl("--http1.1", url, vec![]).await;
    assert_eq!((r.version.as_str(), r.status), ("1.1", 401));
    assert!(r.set_cookies().iter().all(|l| l.contains("; Secure")));
}

#[test]
fn a_listener_certificate_that_does_not_load_is_refused_by_the_check() {
    let cert = Certificate::new();
    let other = Certificate::new();
    let cases = [
        (cert.cert(), other.key(), "do not make a usable pair"),
        (cert.key(), cert.key(), "no certificate"),
        (cert.dir().join("missing.pem"), cert.key(), "cannot read"),
    ];
    for (c, k, want) in cases {
        let yaml = format!(
            "listen: [{{address: '127.0.0.1:8443', tls: {{cert: '{}', key: '{}'}}}}]",
            c.display(),
            k.display()
        );
        let conf = TempFile::new("tls.yaml", &yaml);
        let out = Command::new(proxy_bin())
            .args(["-t", "-c"])
            .arg(&conf.0)
            .env("ETLS_ACCESS", ACCESS_SECRET)
            .env("ETLS_REFRESH", REFRESH_SECRET)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(
            text.contains("listen[0].tls") && text.contains(want),
            "{want}: {text}"
        );
    }
}

/// An app served over HTTPS (openssl's `s_server -www`), reached with SNI and verified against
/// the CA Pingora is given (`pingora.ca_file`): the right name passes, a wrong one is a 502.
#[tokio::test]
async fn an_https_app_is_reached_with_sni_and_a_verified_certificate() {
    let cert = Certificate::new();
    let app_port = free_port();
    let mut server = Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(app_port.to_string())
        .arg("-cert")
        .arg(cert.cert())
        .arg("-key")
        .arg(cert.key())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl is installed");
    let app_addr: std::net::SocketAddr = format!("127.0.0.1:{app_port}").parse().unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(app_addr).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let auth = Stub::auth_api().await;
    let cookie = format!("accessTokenEtls={}", access_token(600));
    for (sni, status) in [("localhost", 200), ("other.example", 502)] {
        let proxy = Proxy::builder_at(app_addr, auth.addr)
            .extra(format!(
                "{{upstream: {{tls: true, sni: {sni}}}, pingora: {{ca_file: '{}'}}}}",
                cert.cert().display()
            ))
            .start()
            .await;
        let r = proxy.get("/", &cookie).await;
        assert_eq!(r.status, status, "{sni}: {} {}", r.text(), proxy.log());
        if status == 200 {
            assert!(r.text().contains("s_server"), "{}", r.text());
        }
    }
    let _ = server.kill();
    let _ = server.wait();
}

/// What clients do all day is not an ERROR: a TCP health check that connects to the TLS
/// listener and closes (found with `/readyz`, which does just that), and an HTTP/2 client that
/// gives up on a slow answer. Pingora writes both at ERROR; the proxy writes neither so.
#[tokio::test]
async fn probes_and_clients_giving_up_are_no_error_lines() {
    let cert = Certificate::new();
    let app = Stub::app().await;
    app.set_handler(|_| {
        StubReply::json(200, serde_json::json!({})).delayed(std::time::Duration::from_millis(1500))
    });
    let auth = Stub::auth_api().await;
    let proxy = Proxy::builder(&app, &auth)
        .tls(&cert.cert(), &cert.key())
        .rust_log("info")
        .start()
        .await;
    for _ in 0..3 {
        drop(tokio::net::TcpStream::connect(proxy.addr).await.unwrap());
    }
    let url = format!("https://127.0.0.1:{}/slow", proxy.addr.port());
    let cookie = format!("accessTokenEtls={}", access_token(600));
    let gave_up = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sk", "--http2", "-m", "0.5", "-o", "/dev/null", "-H"])
            .arg(format!("Cookie: {cookie}"))
            .arg(&url)
            .status()
            .expect("curl is installed")
    })
    .await
    .unwrap();
    assert_eq!(gave_up.code(), Some(28), "curl timed out");
    app.wait_for_calls(1).await;
    // The handshake failures are still told, at INFO.
    let handshakes = "three failed handshakes logged";
    until(handshakes, std::time::Duration::from_secs(5), || {
        proxy.log().matches("Downstream handshake error").count() >= 3
    })
    .await;
    // The stream curl reset is seen once the app answers.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let log = proxy.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

/// A reload checks the certificate files again but the listener keeps the ones loaded at start
/// (found renewing a certificate in place, as certbot does, then `kill -HUP`): the reload line
/// says so instead of a bare "reloaded".
#[tokio::test]
async fn a_reload_says_certificates_are_read_at_start() {
    let cert = Certificate::new();
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start_tls(&app, &auth, &cert).await;
    proxy.signal("HUP");
    until("the reload line", std::time::Duration::from_secs(5), || {
        proxy.log().lines().any(|l| {
            l.contains("configuration reloaded") && l.contains("TLS certificates are read at start")
        })
    })
    .await;
}
