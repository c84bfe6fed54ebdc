//! The bundled demo for `make run`: a stand-in Next.js app that echoes the Cookie header it
//! received, a stand-in auth API with seed 002's contract (and refresh-token rotation), and the
//! curl lines that show the proxy at work.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use clap::{Parser, Subcommand};
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::server::Server;
use pingora::services::listening::Service;
use serde_json::json;

use etls_proxy::session::cookies::CookieJar;
use etls_proxy::session::tokens::{Claims, TokenKeys, TokenTimes};

/// Refresh tokens the demo auth API accepts once each (then rotates): any value with this
/// prefix it has not seen before, as if the session had logged in elsewhere.
const DEMO_PREFIX: &str = "demo-rt-";
/// Sessions whose user record is too large for one cookie (400 permissions, about 7 KB of
/// JSON): the proxy splits `etlsUser` into chunks. Rotation keeps the prefix.
const BIG_USER_PREFIX: &str = "demo-rt-big-";

#[derive(Parser)]
#[command(
    name = "etls-demo",
    about = "Demo app, demo auth API and curl lines for etls-proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the demo app and the demo auth API.
    Serve {
        #[arg(long, default_value = "127.0.0.1:3000")]
        app: String,
        #[arg(long, default_value = "127.0.0.1:3001")]
        auth: String,
        /// Make the auth API answer this much later (for load tests of the single flight).
        #[arg(long, default_value_t = 0)]
        auth_delay_ms: u64,
    },
    /// Print a valid access token, an expired one and a refresh token as JSON (for load tests).
    Tokens,
    /// Print curl lines for a valid, an expired and a tampered session (needs ETLS_ACCESS and
    /// ETLS_REFRESH, as the proxy does).
    CurlLines {
        #[arg(long, default_value = "127.0.0.1:8080")]
        proxy: String,
    },
}

fn main() {
    match Cli::parse().command {
        Command::Serve {
            app,
            auth,
            auth_delay_ms,
        } => serve(&app, &auth, Duration::from_millis(auth_delay_ms)),
        Command::Tokens => match demo_tokens(&format!("{DEMO_PREFIX}{}", random_hex())) {
            Ok(t) => println!(
                "{}",
                json!({"valid": t.valid, "expired": t.expired, "refresh": t.refresh, "refresh_api": t.refresh_api, "tampered": t.tampered})
            ),
            Err(e) => {
                eprintln!("etls-demo: {e}");
                std::process::exit(2);
            }
        },
        Command::CurlLines { proxy } => {
            if let Err(e) = curl_lines(&proxy) {
                eprintln!("etls-demo: {e}");
                std::process::exit(2);
            }
        }
    }
}

fn serve(app_addr: &str, auth_addr: &str, auth_delay: Duration) {
    let mut server = Server::new(None).expect("default server configuration");
    server.bootstrap();
    let mut app = Service::new("demo app".into(), DemoApp);
    app.add_tcp(app_addr);
    let auth_api = DemoAuthApi {
        delay: auth_delay,
        ..DemoAuthApi::default()
    };
    let mut auth = Service::new("demo auth API".into(), auth_api);
    auth.add_tcp(auth_addr);
    server.add_service(app);
    server.add_service(auth);
    println!("etls-demo: app on http://{app_addr}, auth API on http://{auth_addr}/refreshtoken");
    server.run_forever();
}

fn json_response(status: u16, body: serde_json::Value) -> Response<Vec<u8>> {
    let body = body.to_string().into_bytes();
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .header("Content-Length", body.len())
        .body(body)
        .expect("static response parts")
}

async fn read_body(session: &mut ServerSession) -> usize {
    let mut n = 0;
    while let Ok(Some(chunk)) = session.read_request_body().await {
        n += chunk.len();
    }
    n
}

/// Shows what the app behind the proxy received.
struct DemoApp;

#[async_trait]
impl ServeHttp for DemoApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let body_bytes = read_body(session).await;
        let req = session.req_header();
        let cookies: Vec<&str> = req
            .headers
            .get_all("cookie")
            .iter()
            .map(|v| v.to_str().unwrap_or("<not text>"))
            .collect();
        json_response(
            200,
            json!({
                "app": "demo",
                "method": req.method.as_str(),
                "path": req.uri.path(),
                "cookie": cookies.join(" | "),
                "body_bytes": body_bytes,
            }),
        )
    }
}

/// Seed 002's Express API: 401 without a refresh token, 403 for an unknown or reused one, else
/// new tokens (the old refresh token is revoked: rotation).
#[derive(Default)]
struct DemoAuthApi {
    used: Mutex<HashSet<String>>,
    serial: AtomicU64,
    delay: Duration,
}

#[async_trait]
impl ServeHttp for DemoAuthApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        read_body(session).await;
        let req = session.req_header();
        if req.method == http::Method::GET && req.uri.path() == "/calls" {
            let calls = self.serial.load(Ordering::Relaxed);
            return json_response(200, json!({ "calls": calls }));
        }
        if req.method != http::Method::POST || req.uri.path() != "/refreshtoken" {
            return json_response(404, json!({"error": "Not found"}));
        }
        let jar =
            CookieJar::from_headers(req.headers.get_all("cookie").iter().map(|v| v.as_bytes()));
        let Some(token) = jar
            .get("refreshToken")
            .map(|t| String::from_utf8_lossy(t).into_owned())
        else {
            return json_response(401, json!({"error": "No refresh token provided"}));
        };
        let big = token.starts_with(BIG_USER_PREFIX);
        let fresh = token.starts_with(DEMO_PREFIX) && {
            let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
            if used.len() > 100_000 {
                used.clear();
            }
            used.insert(token)
        };
        if !fresh {
            println!("etls-demo auth API: refused a reused or unknown refresh token (403)");
            return json_response(403, json!({"error": "Invalid refresh token"}));
        }
        let n = self.serial.fetch_add(1, Ordering::Relaxed) + 1;
        if n <= 10 || n.is_power_of_two() {
            println!("etls-demo auth API: refresh #{n}, refresh token rotated");
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let (prefix, user) = if big {
            let perms: Vec<String> = (0..400).map(|i| format!("perm:read:{i:05}")).collect();
            (
                BIG_USER_PREFIX,
                json!({"id": 1, "role": "admin", "username": "demo", "perms": perms}),
            )
        } else {
            (
                DEMO_PREFIX,
                json!({"id": 1, "role": "admin", "username": "demo"}),
            )
        };
        json_response(
            200,
            json!({
                "accessToken": format!("demo-at-{}", random_hex()),
                "refreshToken": format!("{prefix}{}", random_hex()),
                "userData": user,
            }),
        )
    }
}

fn random_hex() -> String {
    rand::random::<[u8; 8]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn secret(name: &str) -> Result<Vec<u8>, String> {
    std::env::var_os(name)
        .map(|v| v.into_encoded_bytes())
        .ok_or_else(|| format!("{name} is not set"))
}

/// Tokens signed with the secrets in the environment, as the proxy will see them.
struct DemoTokens {
    valid: String,
    expired: String,
    /// Bound to the auth API session `refreshToken=<refresh_api>`.
    refresh: String,
    refresh_api: String,
    /// The valid token with an admin payload under its old signature.
    tampered: String,
}

fn demo_tokens(refresh_api: &str) -> Result<DemoTokens, String> {
    let times = TokenTimes {
        access_ttl_secs: 900,
        refresh_ttl_secs: 43_200,
        leeway_secs: 0,
        refresh_ahead_secs: 0,
    };
    let keys = TokenKeys::new(&secret("ETLS_ACCESS")?, &secret("ETLS_REFRESH")?, times);
    let claims = |name: &str| -> Result<Claims, String> {
        serde_json::from_value(json!({ "username": name })).map_err(|e| e.to_string())
    };
    let now = etls_proxy::unix_now();
    let mint =
        |r: Result<String, etls_proxy::session::tokens::MintError>| r.map_err(|e| e.to_string());
    let valid = mint(keys.mint_access(&claims("demo")?, now))?;
    let forged = mint(keys.mint_access(&claims("admin")?, now))?;
    let mut parts: Vec<&str> = valid.split('.').collect();
    parts[1] = forged.split('.').nth(1).unwrap_or_default();
    Ok(DemoTokens {
        tampered: parts.join("."),
        expired: mint(keys.mint_access(&claims("demo")?, now - times.access_ttl_secs - 60))?,
        refresh: mint(keys.mint_refresh(
            &claims("demo")?,
            &format!("refreshToken={refresh_api}"),
            now,
        ))?,
        refresh_api: refresh_api.to_owned(),
        valid,
    })
}

fn curl_lines(proxy: &str) -> Result<(), String> {
    let api = format!("{DEMO_PREFIX}{}", random_hex());
    let DemoTokens {
        valid,
        expired,
        refresh,
        tampered,
        ..
    } = demo_tokens(&api)?;
    let url = format!("http://{proxy}/dashboard");
    println!("# 1. a valid access token passes; the app gets the Cookie header untouched:");
    println!("curl -i -H 'Cookie: accessTokenEtls={valid}; refreshTokenEtls={refresh}' {url}");
    println!();
    println!(
        "# 2. an expired one is refreshed inside the same request: the app already gets the new"
    );
    println!(
        "#    tokens and the answer carries five Set-Cookie headers (run it again within 30 s: the"
    );
    println!(
        "#    same tokens, no second auth API call; later the rotated refresh token is refused):"
    );
    println!(
        "curl -i -H 'Cookie: accessTokenEtls={expired}; refreshTokenEtls={refresh}; refreshToken={api}' {url}"
    );
    println!();
    println!(
        "# 3. a tampered one (payload changed, old signature) is refused with 401 and cleared cookies:"
    );
    println!("curl -i -H 'Cookie: accessTokenEtls={tampered}; refreshTokenEtls={refresh}' {url}");
    Ok(())
}
