//! `etls-proxy -t` and start-up refusals: clear messages naming the key, never a panic.

use std::process::Command;

use crate::support::*;

const SECRETS: [(&str, &str); 2] = [
    ("ETLS_ACCESS", ACCESS_SECRET),
    ("ETLS_REFRESH", REFRESH_SECRET),
];

#[test]
fn the_shipped_config_checks_out() {
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/etls-proxy.yaml"))
            .unwrap();
    let (out, text) = run_cli(&["-t"], &shipped, &SECRETS);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("is valid"), "{text}");
}

/// The production starting point of `deploy/`, with its secrets file, and what goes wrong with
/// the file: the key and the line, never a secret.
#[test]
fn the_deploy_config_checks_out_with_its_secrets_file() {
    let deploy = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/etls-proxy.yaml"
    ))
    .unwrap();
    let secrets = TempFile::new(
        "secrets.env",
        &format!(
            "# rotated 2026-11\nETLS_ACCESS={ACCESS_SECRET}\nexport ETLS_REFRESH='{REFRESH_SECRET}'\n"
        ),
    );
    let yaml = deploy.replace("/etc/etls-proxy/secrets.env", secrets.0.to_str().unwrap());
    let (out, text) = run_cli(&["-t"], &yaml, &[]);
    assert!(out.status.success(), "{text}");
    std::fs::write(
        &secrets.0,
        format!("ETLS_ACCESS={ACCESS_SECRET}\nETLS_REFRESH {REFRESH_SECRET}\n"),
    )
    .unwrap();
    let (out, text) = run_cli(&["-t"], &yaml, &[]);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("env_file: line 2: expected KEY=VALUE"),
        "{text}"
    );
    assert!(!text.contains(REFRESH_SECRET), "{text}");
    let (out, text) = run_cli(
        &["-t"],
        &deploy.replace("/etc/etls-proxy/secrets.env", "/nonexistent/x.env"),
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("env_file: cannot read `/nonexistent/x.env`"),
        "{text}"
    );
}

#[test]
fn check_never_binds_the_listen_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (out, text) = run_cli(&["-t"], &format!("listen: ['127.0.0.1:{port}']"), &SECRETS);
    assert!(out.status.success(), "-t must not bind: {text}");
    // Starting for real on a taken port is refused with the key, not a panic.
    let (out, text) = run_cli(&[], &format!("listen: ['127.0.0.1:{port}']"), &SECRETS);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("listen[0]") && text.contains(&port.to_string()),
        "{text}"
    );
}

#[test]
fn refusals_name_the_key_env_var_or_line() {
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: &[Case] = &[
        (
            "auth_api:\n  refresh_url: http://127.0.0.1:1/x\n  timeout: 5\n",
            &SECRETS,
            &["auth_api", "unknown field `timeout`", "line 3"],
        ),
        (
            "tokens:\n  leeway_secs: soon\n",
            &SECRETS,
            &["tokens.leeway_secs", "line 2"],
        ),
        ("listen: [\n", &SECRETS, &["line"]),
        (
            "{}",
            &[],
            &[
                "tokens.access_secret_env",
                "ETLS_ACCESS is not set",
                "ETLS_REFRESH is not set",
            ],
        ),
        (
            "{}",
            &[("ETLS_ACCESS", "short"), ("ETLS_REFRESH", REFRESH_SECRET)],
            &["ETLS_ACCESS", "32 bytes"],
        ),
        (
            "auth_api: {refresh_url: 'not a url'}",
            &SECRETS,
            &["auth_api.refresh_url"],
        ),
        (
            "auth_api: {refresh_url: 'ftp://x/y'}",
            &SECRETS,
            &["auth_api.refresh_url", "http://"],
        ),
        ("listen: ['localhost']", &SECRETS, &["listen[0]"]),
        (
            "upstream: {address: 'no-port'}",
            &SECRETS,
            &["upstream.address"],
        ),
        (
            "pingora: {threads: 1, thread: 2}",
            &SECRETS,
            &["pingora.thread"],
        ),
        (
            "routes: {login_redirect: 'https://evil.example'}",
            &SECRETS,
            &["routes.login_redirect", "local path"],
        ),
        (
            "refresh: {max_entries: 0}",
            &SECRETS,
            &["refresh.max_entries"],
        ),
        (
            "{}",
            &[
                ("ETLS_ACCESS", ACCESS_SECRET),
                ("ETLS_REFRESH", REFRESH_SECRET),
                ("ETLS_ACCESS_EXPIRE_TIME", "15m"),
            ],
            &["ETLS_ACCESS_EXPIRE_TIME", "15m"],
        ),
    ];
    for (yaml, env, needles) in cases {
        for args in [&["-t"][..], &[][..]] {
            let (out, text) = run_cli(args, yaml, env);
            assert_eq!(out.status.code(), Some(2), "{yaml:?} {args:?}: {text}");
            for needle in *needles {
                assert!(
                    text.contains(needle),
                    "{needle:?} missing for {yaml:?}: {text}"
                );
            }
        }
    }
}

#[test]
fn every_problem_is_listed_at_once() {
    let yaml = "listen: ['x']\nauth_api: {timeout_ms: 0}\nrefresh: {max_entries: 0}\n";
    let (out, text) = run_cli(&["-t"], yaml, &[]);
    assert_eq!(out.status.code(), Some(2));
    for key in [
        "listen[0]",
        "auth_api.timeout_ms",
        "refresh.max_entries",
        "tokens.access_secret_env",
        "tokens.refresh_secret_env",
    ] {
        assert!(text.contains(key), "{key} missing: {text}");
    }
}

#[test]
fn short_secrets_pass_only_when_allowed_and_then_warn() {
    let env = [
        ("ETLS_ACCESS", "short-access"),
        ("ETLS_REFRESH", "short-refresh"),
    ];
    let (out, text) = run_cli(&["-t"], "tokens: {allow_short_secrets: true}", &env);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("warning") && text.contains("32-byte"),
        "{text}"
    );
}

#[test]
fn version_is_printed() {
    let out = Command::new(proxy_bin()).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}
