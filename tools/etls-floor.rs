//! The floor of `make bench`: a bare Pingora pass-through, same Pingora version and release
//! profile as etls-proxy, with no auth logic at all. Whatever etls-proxy costs above this is
//! ours.

use async_trait::async_trait;
use clap::Parser;
use pingora::proxy::{ProxyHttp, Session, http_proxy_service};
use pingora::server::Server;
use pingora::server::configuration::ServerConf;
use pingora::upstreams::peer::HttpPeer;

#[derive(Parser)]
#[command(
    name = "etls-floor",
    about = "Bare Pingora pass-through proxy (benchmark floor)"
)]
struct Cli {
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: String,
    #[arg(long, default_value = "127.0.0.1:3000")]
    upstream: String,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Pingora's work stealing; off to match etls-proxy's default server settings.
    #[arg(long)]
    work_stealing: bool,
    /// An HTTPS listener (HTTP/2 by ALPN, as etls-proxy's) beside the plain one, for the TLS
    /// scenarios of `make bench`; needs --tls-cert and --tls-key.
    #[arg(long)]
    tls_listen: Option<String>,
    /// PEM certificate chain of --tls-listen.
    #[arg(long)]
    tls_cert: Option<String>,
    /// PEM private key of --tls-listen.
    #[arg(long)]
    tls_key: Option<String>,
}

struct PassThrough {
    peer: HttpPeer,
}

#[async_trait]
impl ProxyHttp for PassThrough {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }
}

fn main() {
    let cli = Cli::parse();
    let conf = ServerConf {
        threads: cli.threads,
        work_stealing: cli.work_stealing,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let upstream: std::net::SocketAddr = cli.upstream.parse().expect("--upstream is IP:port");
    let mut service = http_proxy_service(
        &server.configuration,
        PassThrough {
            peer: HttpPeer::new(upstream, false, String::new()),
        },
    );
    service.add_tcp(&cli.listen);
    if let Some(addr) = &cli.tls_listen {
        let (Some(cert), Some(key)) = (&cli.tls_cert, &cli.tls_key) else {
            eprintln!("etls-floor: --tls-listen needs --tls-cert and --tls-key");
            std::process::exit(2);
        };
        // The same settings as etls-proxy's TLS listeners (src/main.rs).
        let mut tls = match pingora::listeners::tls::TlsSettings::intermediate(cert, key) {
            Ok(tls) => tls,
            Err(e) => {
                eprintln!("etls-floor: --tls-cert / --tls-key: {e}");
                std::process::exit(2);
            }
        };
        tls.enable_h2();
        service.add_tls_with_settings(addr, None, tls);
    }
    server.add_service(service);
    server.run_forever();
}
