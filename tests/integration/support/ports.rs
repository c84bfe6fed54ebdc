//! Free ports on loopback, claimed so that parallel tests never pick the same one.

use std::sync::atomic::{AtomicUsize, Ordering};

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

pub fn claim_port(port: u16) -> bool {
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
