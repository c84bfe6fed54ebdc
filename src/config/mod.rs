//! Configuration: parse the YAML (`file`), check all of it in one pass and build the immutable
//! runtime configuration (`check`, by section), shared behind an `Arc` (`runtime`); `env` is
//! what it reads besides the file, `error` why it is refused.

mod check;
mod env;
mod error;
pub mod file;
mod runtime;

use std::ffi::OsString;

pub use check::{MIN_SECRET_BYTES, build};
pub use env::{Env, Outside, Resolve, parse_env_file, process_env, system_resolve};
pub use error::{ConfigError, Problem};
pub use runtime::{Listener, Loaded, RuntimeConfig, TlsFiles, Upstream};

/// A relative path (`-c`, `env_file`) as the directory the process started in has it, also
/// after `-d` has moved the process to `/`: that directory is taken the first time a path is
/// resolved, which is the load at start. (A daemon refused every reload of `-c
/// conf/etls-proxy.yaml` before.)
pub fn resolve_path(path: &str) -> std::path::PathBuf {
    static START_DIR: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    let given = std::path::Path::new(path);
    match START_DIR.get_or_init(|| std::env::current_dir().ok()) {
        Some(dir) if given.is_relative() => dir.join(given),
        _ => given.to_path_buf(),
    }
}

pub fn load_file(path: &str, outside: Outside<'_>) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(resolve_path(path)).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    load_str(&text, path, outside)
}

pub fn load_str(text: &str, path: &str, outside: Outside<'_>) -> Result<Loaded, ConfigError> {
    let invalid = |problems| ConfigError::Invalid {
        path: path.to_owned(),
        problems,
    };
    match file::parse(text) {
        Ok(parsed) => check(parsed, outside).map_err(invalid),
        Err(file::ParseError::Syntax(message)) => Err(ConfigError::Syntax {
            path: path.to_owned(),
            message,
        }),
        // The sections that parsed are checked too, so one wrong value hides nothing else; the
        // checks' problems of a broken section would be about its defaults, not the file.
        Err(file::ParseError::Sections {
            mut problems,
            broken,
            rest,
        }) => {
            if let Err(more) = check(*rest, outside) {
                let of_broken = |key: &str| broken.iter().any(|b| file::is_under(key, b));
                problems.extend(more.into_iter().filter(|p| !of_broken(&p.key)));
            }
            Err(invalid(problems))
        }
    }
}

/// The checks and the build, with `env_file`'s variables read first when there is one.
fn check(parsed: file::FileConfig, outside: Outside<'_>) -> Result<Loaded, Vec<Problem>> {
    let Some(env_path) = parsed.env_file.clone() else {
        return build(parsed, outside);
    };
    let vars = std::fs::read_to_string(resolve_path(&env_path))
        .map_err(|e| format!("cannot read `{env_path}`: {e}"))
        .and_then(|text| parse_env_file(&text))
        .map_err(|message| {
            vec![Problem {
                key: "env_file".into(),
                message,
            }]
        })?;
    let env = |name: &str| {
        vars.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| OsString::from(v))
            .or_else(|| (outside.env)(name))
    };
    let with_file = Outside {
        env: &env,
        resolve: outside.resolve,
    };
    build(parsed, with_file)
}

#[cfg(test)]
mod tests {
    #[test]
    fn relative_paths_are_read_from_the_start_directory() {
        let start = std::env::current_dir().unwrap();
        assert_eq!(
            super::resolve_path("conf/x.yaml"),
            start.join("conf/x.yaml")
        );
        assert_eq!(
            super::resolve_path("/etc/etls-proxy/x.yaml"),
            std::path::Path::new("/etc/etls-proxy/x.yaml")
        );
    }
}
