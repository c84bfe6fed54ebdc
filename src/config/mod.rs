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

pub fn load_file(path: &str, outside: Outside<'_>) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    load_str(&text, path, outside)
}

pub fn load_str(text: &str, path: &str, outside: Outside<'_>) -> Result<Loaded, ConfigError> {
    let parsed = file::parse(text).map_err(|message| ConfigError::Syntax {
        path: path.to_owned(),
        message,
    })?;
    let invalid = |problems| ConfigError::Invalid {
        path: path.to_owned(),
        problems,
    };
    let Some(env_path) = parsed.env_file.clone() else {
        return build(parsed, outside).map_err(invalid);
    };
    let vars = std::fs::read_to_string(&env_path)
        .map_err(|e| format!("cannot read `{env_path}`: {e}"))
        .and_then(|text| parse_env_file(&text))
        .map_err(|message| {
            invalid(vec![Problem {
                key: "env_file".into(),
                message,
            }])
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
    build(parsed, with_file).map_err(invalid)
}
