//! `etls-proxy -c FILE` runs the proxy; `-t` checks the file and the environment and exits.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::proxy::http_proxy_service;
use pingora::server::Server;
use pingora::server::configuration::Opt;

use etls_proxy::config::{self, Loaded};
use etls_proxy::proxy::EtlsProxy;
use etls_proxy::redact::{self, Redactor};

/// See bench/RESULTS.md for the allocators tried.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
        for (i, addr) in loaded.runtime.listen.iter().enumerate() {
            if let Err(e) = std::net::TcpListener::bind(addr) {
                eprintln!("etls-proxy: listen[{i}]: cannot listen on {addr}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    run(cli, loaded)
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
    let runtime = Arc::new(runtime);
    let listen = runtime.listen.clone();
    let read_buffer = runtime.read_buffer_bytes;
    let mut service = http_proxy_service(&server.configuration, EtlsProxy::new(runtime));
    for addr in &listen {
        let buffers = L4BufferSettings::default().read(read_buffer);
        service.add_listener(ListenerConfig::tcp(addr.as_str()).l4_buffer(buffers));
    }
    server.add_service(service);
    log::info!(
        "etls-proxy {} listening on {}",
        env!("CARGO_PKG_VERSION"),
        listen.join(", ")
    );
    server.run_forever()
}
