//! A real `redis-server` per test: on a free loopback port, no persistence, stopped on drop.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{free_port, until};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    /// `(cert, key)` in PEM: TLS only (`rediss://`), the certificate for 127.0.0.1.
    tls: Option<(String, String)>,
    /// `requirepass`: clients must give it (not in [`Self::url`]).
    password: Option<String>,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        let port = free_port();
        let mut server = RedisServer {
            port,
            child: None,
            tls: None,
            password: None,
        };
        server.restart().await;
        server
    }

    /// Refusing clients that do not give `password` (`requirepass`).
    pub async fn start_with_password(password: &str) -> RedisServer {
        let port = free_port();
        let mut server = RedisServer {
            port,
            child: None,
            tls: None,
            password: Some(password.to_owned()),
        };
        server.restart().await;
        server
    }

    /// Speaking TLS only, with this certificate and key.
    pub async fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> RedisServer {
        let port = free_port();
        let mut server = RedisServer {
            port,
            child: None,
            tls: Some((cert.display().to_string(), key.display().to_string())),
            password: None,
        };
        server.restart().await;
        server
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    /// `refresh:` settings of a proxy sharing through this server. A generous command timeout:
    /// debug builds on a loaded machine must not fall back where the test expects sharing
    /// (a server that is down refuses at once, whatever the timeout).
    pub fn yaml(&self) -> String {
        self.yaml_with("")
    }

    /// [`Self::yaml`] with more keys of the `refresh` section (`grace_secs: 0`).
    pub fn yaml_with(&self, refresh: &str) -> String {
        let more = if refresh.is_empty() {
            String::new()
        } else {
            format!(", {refresh}")
        };
        format!(
            "refresh: {{store: redis, redis: {{url: '{}', timeout_ms: 1000}}{more}}}",
            self.url()
        )
    }

    /// Starts it (again, on the same port) and waits until it answers.
    pub async fn restart(&mut self) {
        self.stop();
        let mut cmd = Command::new("redis-server");
        match &self.tls {
            None => cmd.args(["--port", &self.port.to_string()]),
            Some((cert, key)) => cmd
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .args(["--tls-cert-file", cert, "--tls-key-file", key])
                .args(["--tls-ca-cert-file", cert, "--tls-auth-clients", "no"]),
        };
        if let Some(password) = &self.password {
            cmd.args(["--requirepass", password]);
        }
        let child = cmd
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/deps.sh installs it)");
        self.child = Some(child);
        let what = format!("redis-server on port {}", self.port);
        until(&what, Duration::from_secs(10), || {
            self.cli(&["PING"]).trim() == "PONG"
        })
        .await;
    }

    /// Kills it at once (SIGKILL: no goodbye to the clients).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes it for `d` (SIGSTOP, then SIGCONT from a thread of its own): connections stay
    /// open, commands wait unanswered, as behind a stalled network or a long fork.
    pub fn pause(&self, d: Duration) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let signal = |sig: &str| {
            let ok = Command::new("kill")
                .args([sig, &pid])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill {sig} {pid}");
        };
        signal("-STOP");
        std::thread::spawn(move || {
            std::thread::sleep(d);
            let _ = Command::new("kill").args(["-CONT", &pid]).status();
        });
    }

    /// `redis-cli` against it; its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some((cert, _)) = &self.tls {
            cmd.args(["--tls", "--cacert", cert]);
        }
        if let Some(password) = &self.password {
            cmd.args(["--no-auth-warning", "-a", password]);
        }
        let out = cmd
            .args(args)
            .stderr(Stdio::null())
            .output()
            .expect("redis-cli is installed with redis-server");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Keys matching `pattern`, one per line.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        self.cli(&["--scan", "--pattern", pattern])
            .lines()
            .map(str::to_owned)
            .filter(|l| !l.is_empty())
            .collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
