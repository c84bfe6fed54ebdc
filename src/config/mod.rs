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
    let vars = std::fs::read_to_string(&env_path)
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
