//! Environment stubs and loaded configurations: no process environment, no real DNS unless
//! asked for.

use std::ffi::OsString;

use super::SECRETS;
use crate::config::{ConfigError, Loaded, Outside, load_str, system_resolve};

/// An environment holding only `vars`.
pub fn env_with<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
    move |name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| OsString::from(v))
    }
}

/// `env` and the system resolver (the tests' names are IP addresses or localhost).
pub fn outside(env: &dyn Fn(&str) -> Option<OsString>) -> Outside<'_> {
    Outside {
        env,
        resolve: &system_resolve,
    }
}

/// The problems `yaml` raises under `vars`, each as `key: message`; empty when it builds.
pub fn problems(yaml: &str, vars: &[(&str, &str)]) -> Vec<String> {
    let env = env_with(vars);
    match load_str(yaml, "test.yaml", outside(&env)) {
        Ok(_) => vec![],
        Err(ConfigError::Invalid { problems, .. }) => {
            problems.iter().map(ToString::to_string).collect()
        }
        Err(e) => panic!("not a file with problems: {e}"),
    }
}

/// `yaml` loaded with the test secrets; panics with the problems when it does not load.
pub fn loaded(yaml: &str) -> Loaded {
    let env = env_with(SECRETS);
    load_str(yaml, "test.yaml", outside(&env)).unwrap_or_else(|e| panic!("{e}"))
}
