//! What a configuration reads besides its file: environment variables (the process's, or a
//! `.env` file's laid over them) and DNS.

use std::ffi::OsString;
use std::net::{SocketAddr, ToSocketAddrs};

/// Reads one environment variable.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<OsString>;

/// Resolves `host:port` to addresses.
pub type Resolve<'a> = &'a dyn Fn(&str) -> std::io::Result<Vec<SocketAddr>>;

/// What a configuration reads besides its file: environment variables and DNS. Injected, so
/// tests and the fuzzer touch neither the process environment nor the network.
#[derive(Clone, Copy)]
pub struct Outside<'a> {
    pub env: Env<'a>,
    pub resolve: Resolve<'a>,
}

impl Outside<'static> {
    /// The process environment and the system resolver.
    pub fn process() -> Self {
        Outside {
            env: &process_env,
            resolve: &system_resolve,
        }
    }
}

pub fn process_env(name: &str) -> Option<OsString> {
    std::env::var_os(name)
}

pub fn system_resolve(host_port: &str) -> std::io::Result<Vec<SocketAddr>> {
    host_port.to_socket_addrs().map(Iterator::collect)
}

/// `KEY=VALUE` per line; `#` comments, blank lines, an `export ` prefix and one pair of matching
/// quotes around the value are allowed, as in `.env` files. Errors name the line, never a value.
pub fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut vars = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: expected KEY=VALUE", i + 1));
        };
        let key = key.trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("line {}: `{key}` is not a variable name", i + 1));
        }
        let value = value.trim();
        let value = ['"', '\'']
            .iter()
            .find_map(|q| value.strip_prefix(*q)?.strip_suffix(*q))
            .unwrap_or(value);
        vars.push((key.to_owned(), value.to_owned()));
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_read_like_dotenv() {
        let text =
            "# secrets\n\nETLS_ACCESS=abc\nexport ETLS_REFRESH = \"d e f\"\nQ='x'\nEMPTY=\nA=1=2\n";
        let vars = parse_env_file(text).unwrap();
        let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("ETLS_ACCESS"), Some("abc"));
        assert_eq!(get("ETLS_REFRESH"), Some("d e f"));
        assert_eq!(get("Q"), Some("x"));
        assert_eq!(get("EMPTY"), Some(""));
        assert_eq!(get("A"), Some("1=2"));
    }

    #[test]
    fn env_file_errors_name_the_line_never_the_value() {
        let e = parse_env_file("A=1\nsecret-value-without-key\n").unwrap_err();
        assert_eq!(e, "line 2: expected KEY=VALUE");
        let e = parse_env_file("BAD KEY=hidden\n").unwrap_err();
        assert!(e.starts_with("line 1:") && !e.contains("hidden"), "{e}");
    }
}
