//! `etls-proxy -c FILE` runs the proxy; `-t` checks the file and the environment and exits.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use pingora::apps::HttpServerOptions;
use pingora::listeners::ListenerConfig;
use pingora::listeners::tls::TlsSettings;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::proxy::http_proxy;
use pingora::server::Server;
use pingora::server::configuration::Opt;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use etls_proxy::config::{self, Loaded};
use etls_proxy::ops::admin::AdminApp;
use etls_proxy::ops::redact::{self, Redactor};
use etls_proxy::ops::reload::ReloadOnHangup;
use etls_proxy::proxy::EtlsProxy;
use etls_proxy::proxy::downstream::HeaderDeadlineApp;
use etls_proxy::proxy::upstream::AppUpstream;
use etls_proxy::state::State;

/// See bench/RESULTS.md for the allocators tried.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its start (`_RJEM_MALLOC_CONF` in the environment still wins).
/// Thread caches up to 128 KiB: Pingora gives every proxied answer a 64 KiB body buffer, which
/// beyond the default 32 KiB took a trip through the arena and its lock on every request
/// (bench/RESULTS.md).
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static JEMALLOC_CONF: &[u8] = b"tcache_max:131072\0";

#[derive(Parser, Debug)]
#[command(
    name = "etls-proxy",
    version,
    about = "Edge auth proxy for eTLS JWT cookies, on Pingora"
)]
struct Cli {
    /// The YAML configuration file.
    #[arg(short = 'c', long = "conf", default_value = "conf/etls-proxy.yaml")]
    conf: String,
    /// Check the configuration and the environment, then exit (binds nothing).
    #[arg(short = 't', long)]
    test: bool,
    /// Run in the background.
    #[arg(short = 'd', long)]
    daemon: bool,
    /// Take over the listening sockets of a running instance (Pingora's graceful upgrade).
    #[arg(short = 'u', long)]
    upgrade: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    hangups_are_harmless_from_now();
    let loaded = match config::load_file(&cli.conf, config::Outside::process()) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("etls-proxy: configuration refused: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.test {
        for warning in &loaded.warnings {
            eprintln!("etls-proxy: warning: {warning}");
        }
        println!("etls-proxy: configuration {} is valid", cli.conf);
        return ExitCode::SUCCESS;
    }
    if !cli.upgrade {
        // Pingora panics on a listener it cannot bind; say which one instead. (With -u the old
        // process holds them and hands them over.)
        let listen = loaded.runtime.listen.iter().enumerate();
        let keys = listen.map(|(i, l)| (format!("listen[{i}]"), &l.address));
        let admin = loaded.runtime.admin_listen.iter();
        for (key, addr) in keys.chain(admin.map(|a| ("admin.listen".to_owned(), a))) {
            if let Err(e) = check_bind(addr) {
                eprintln!("etls-proxy: {key}: cannot listen on {addr}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    run(cli, loaded)
}

/// SIGHUP's default action ends the process, and the reload service only listens once Pingora
/// has bootstrapped, which with `-u` means waiting seconds for the old process's sockets: a
/// reload sent then (`systemctl reload`, a config-management run) killed the new process. Tokio's
/// signal handler, once installed, stays for the life of the process; the reload service
/// registers its own listener later.
fn hangups_are_harmless_from_now() {
    use tokio::signal::unix::{SignalKind, signal};
    let installed = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map(|rt| rt.block_on(async { signal(SignalKind::hangup()).is_ok() }));
    if !matches!(installed, Ok(true)) {
        eprintln!(
            "etls-proxy: warning: cannot catch SIGHUP before start; a reload sent now would end the process"
        );
    }
}

/// Whether Pingora will be able to bind `addr`: the same socket Pingora makes (first resolved
/// address, `SO_REUSEADDR`), bound and closed but never listening. A listening probe (as
/// `std::net::TcpListener::bind`) would accept connections for that moment, and reset them
/// when it is closed: a client connecting then would lose its request.
fn check_bind(addr: &str) -> std::io::Result<()> {
    use std::net::{SocketAddr, ToSocketAddrs};
    let sock_addr = addr.to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to bind")
    })?;
    let socket = match sock_addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(sock_addr)
}

fn run(cli: Cli, loaded: Loaded) -> ExitCode {
    let Loaded {
        runtime,
        server: server_conf,
        warnings,
        secrets,
    } = loaded;
    let names = runtime.names.all().map(String::from).to_vec();
    redact::install(Redactor::new(names, secrets));
    for warning in warnings {
        log::warn!("{warning}");
    }
    let opt = Opt {
        upgrade: cli.upgrade,
        daemon: cli.daemon,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf);
    server.bootstrap();
    let listen = runtime.listen.clone();
    let read_buffer = runtime.read_buffer_bytes;
    let admin_listen = runtime.admin_listen.clone();
    // The instances and their health are kept for the life of the process (a reload that
    // changes them says a restart is needed).
    let app = match AppUpstream::new(&runtime.upstream) {
        Ok(app) => Arc::new(app),
        Err(e) => {
            eprintln!("etls-proxy: upstream: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(health_checks) = app.health_checks() {
        log::info!(
            "app: {} instances, round robin, TCP health check every {} s",
            app.instances(),
            runtime.upstream.health_check.as_secs()
        );
        server.add_service(health_checks);
    }
    // HTTP/2 connections idle as long as HTTP/1 ones may (nginx's `keepalive_timeout` governs
    // both since 1.19.7); fixed at start.
    let mut options = HttpServerOptions::default();
    options.h2_idle_timeout = Some(Duration::from_secs(runtime.keepalive_secs.max(1)));
    let state = State::new(cli.conf.clone(), runtime);
    let shared = match state.live.load().shared_store.clone() {
        None => None,
        Some(settings) => {
            match etls_proxy::refresh::shared_store::SharedStore::start(
                settings,
                state.metrics.registry(),
            ) {
                Ok(store) => Some(store),
                Err(e) => {
                    eprintln!("etls-proxy: refresh.redis: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    if let Some(store) = &shared {
        // Unreachable at start is a warning: sharing begins once it answers.
        let probe = etls_proxy::refresh::shared_store::StartProbe(Arc::clone(store));
        server.add_service(background_service("shared store probe", probe));
    }
    let proxy = EtlsProxy::new(&state, app).with_shared_store(shared);
    let mut proxy = http_proxy(&server.configuration, proxy);
    proxy.server_options = Some(options);
    let header_live = state.live.clone();
    let app = HeaderDeadlineApp::new(proxy, move || header_live.load().header_timeout);
    let mut service = Service::new("Pingora HTTP Proxy Service".to_owned(), app);
    for listener in &listen {
        // Under TLS a read buffer saves syscalls (rustls reads 4 KiB at a time); plain HTTP
        // reads straight into Pingora's request buffer, no second copy and no buffer a
        // connection holds (bench/RESULTS.md: the herd's peak RSS).
        let read = if listener.tls.is_some() {
            read_buffer
        } else {
            0
        };
        let buffers = L4BufferSettings::default().read(read);
        let mut endpoint = ListenerConfig::tcp(listener.address.as_str()).l4_buffer(buffers);
        if let Some(tls) = &listener.tls {
            // Checked by the configuration (files read, pair usable); HTTP/2 offered by ALPN.
            let mut settings = match TlsSettings::intermediate(&tls.cert, &tls.key) {
                Ok(settings) => settings,
                Err(e) => {
                    eprintln!("etls-proxy: {}: TLS: {e}", listener.address);
                    return ExitCode::from(2);
                }
            };
            settings.enable_h2();
            endpoint = endpoint.tls(settings);
        }
        service.add_listener(endpoint);
    }
    server.add_service(service);
    let reload = ReloadOnHangup {
        state: state.clone(),
    };
    server.add_service(background_service("reload on SIGHUP", reload));
    if let Some(addr) = &admin_listen {
        let bound = listen.iter().map(|l| l.address.clone()).collect();
        let admin = AdminApp { state, bound };
        let mut service = Service::new("admin".to_owned(), admin);
        service.add_tcp(addr);
        server.add_service(service);
    }
    log::info!(
        "etls-proxy {} listening on {}",
        env!("CARGO_PKG_VERSION"),
        listen
            .iter()
            .map(|l| match l.tls {
                Some(_) => format!("https://{}", l.address),
                None => format!("http://{}", l.address),
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    server.run_forever()
}
