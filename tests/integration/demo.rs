//! `make run`'s pieces: the demo app and auth API, and the three curl lines it prints.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::support::*;

struct Demo(Child);

impl Demo {
    /// `etls-demo serve` on these ports, once both accept connections.
    async fn serve(app_port: u16, auth_port: u16) -> (Demo, SocketAddr, SocketAddr) {
        let app: SocketAddr = format!("127.0.0.1:{app_port}").parse().unwrap();
        let auth: SocketAddr = format!("127.0.0.1:{auth_port}").parse().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_etls-demo"))
            .args([
                "serve",
                "--app",
                &app.to_string(),
                "--auth",
                &auth.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let demo = Demo(child);
        wait_for(app).await;
        wait_for(auth).await;
        (demo, app, auth)
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_for(addr: SocketAddr) {
    let what = format!("{addr} open");
    until_async(&what, Duration::from_secs(15), || async move {
        TcpStream::connect(addr).await.is_ok()
    })
    .await
}

/// The Cookie header of each printed curl line.
fn cookies_of(lines: &str) -> Vec<String> {
    lines
        .lines()
        .filter(|l| l.starts_with("curl "))
        .map(|l| {
            l.split("'Cookie: ")
                .nth(1)
                .unwrap()
                .split('\'')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn the_three_curl_lines_show_pass_refresh_and_refusal() {
    let (demo, app, auth) = Demo::serve(free_port(), free_port()).await;
    let proxy = Proxy::builder_at(app, auth).start().await;
    let out = Command::new(env!("CARGO_BIN_EXE_etls-demo"))
        .args(["curl-lines", "--proxy", &proxy.addr.to_string()])
        .env("ETLS_ACCESS", ACCESS_SECRET)
        .env("ETLS_REFRESH", REFRESH_SECRET)
        .output()
        .unwrap();
    assert!(out.status.success());
    let cookies = cookies_of(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(cookies.len(), 3);

    let valid = proxy.get("/dashboard", &cookies[0]).await;
    assert_eq!(valid.status, 200);
    assert_eq!(
        valid.json()["cookie"],
        cookies[0].as_str(),
        "the demo app echoes the Cookie header untouched"
    );
    assert!(valid.set_cookies().is_empty());

    let refreshed = proxy.get("/dashboard", &cookies[1]).await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.text());
    assert_eq!(refreshed.set_cookies().len(), 5);
    let echoed = refreshed.json()["cookie"].as_str().unwrap().to_owned();
    let new_rt = refreshed.set_cookie_value("refreshToken").unwrap();
    assert!(new_rt.starts_with("demo-rt-") && echoed.contains(&format!("refreshToken={new_rt}")));
    // Again within the grace window: the same tokens, the rotated one not replayed.
    let again = proxy.get("/dashboard", &cookies[1]).await;
    assert_eq!(again.set_cookies(), refreshed.set_cookies());

    let tampered = proxy.get("/dashboard", &cookies[2]).await;
    assert_eq!(tampered.status, 401);
    assert_eq!(tampered.set_cookies().len(), 5);
    drop(demo);
}

#[tokio::test]
async fn the_demo_auth_api_rotates_and_refuses_reuse() {
    let (_demo, _, auth) = Demo::serve(free_port(), free_port()).await;
    let call = |cookie: &str| {
        format!(
            "POST /refreshtoken HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{cookie}Content-Length: 2\r\n\r\n{{}}"
        )
    };
    assert_eq!(send_raw(auth, call("").as_bytes()).await.status, 401);
    let first = send_raw(
        auth,
        call("Cookie: refreshToken=demo-rt-once\r\n").as_bytes(),
    )
    .await;
    assert_eq!(first.status, 200);
    let body = first.json();
    assert!(body["accessToken"].is_string() && body["userData"].is_object());
    assert_ne!(body["refreshToken"], "demo-rt-once");
    assert_eq!(
        send_raw(
            auth,
            call("Cookie: refreshToken=demo-rt-once\r\n").as_bytes()
        )
        .await
        .status,
        403
    );
}
