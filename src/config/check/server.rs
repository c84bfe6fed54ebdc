//! `pingora:`, Pingora's own `ServerConf` keys, with etls-proxy's defaults where Pingora's
//! do not suit it.

use pingora::server::configuration::ServerConf;

use super::Checker;

/// `pingora:` takes Pingora's own `ServerConf` keys; a typo is refused like anywhere else.
pub(super) fn check_pingora(
    c: &mut Checker,
    section: Option<serde_yaml::Value>,
) -> Option<ServerConf> {
    let mut c = c.section();
    let mut section = match section {
        None | Some(serde_yaml::Value::Null) => serde_yaml::Mapping::new(),
        Some(serde_yaml::Value::Mapping(m)) => m,
        Some(_) => {
            c.problem("pingora", "must be a mapping of Pingora server settings");
            return None;
        }
    };
    let known = match serde_yaml::to_value(ServerConf::default()) {
        Ok(serde_yaml::Value::Mapping(m)) => m,
        _ => serde_yaml::Mapping::new(),
    };
    for key in section.keys() {
        if !known.contains_key(key) {
            let name = key.as_str().unwrap_or("?");
            c.problem(
                format!("pingora.{name}"),
                "not a Pingora server setting (see README: pingora)",
            );
        }
    }
    if !c.clean() {
        return None;
    }
    // Our defaults where Pingora's do not suit this proxy: all cores, one single-threaded
    // runtime per core (measured faster than work stealing, bench/RESULTS.md), and a drain on
    // SIGTERM of 10 s instead of 5 minutes. Pingora waits the whole grace period, then drops
    // whatever is still running: it is the time a request in flight has to finish.
    let defaults: [(&str, serde_yaml::Value); 4] = [
        ("work_stealing", false.into()),
        (
            "threads",
            std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .into(),
        ),
        ("grace_period_seconds", 10u64.into()),
        ("graceful_shutdown_timeout_seconds", 5u64.into()),
    ];
    for (key, value) in defaults {
        let key = serde_yaml::Value::from(key);
        if !section.contains_key(&key) {
            section.insert(key, value);
        }
    }
    let conf: ServerConf = match serde_yaml::from_value(serde_yaml::Value::Mapping(section)) {
        Ok(conf) => conf,
        Err(e) => {
            c.problem("pingora", e.to_string());
            return None;
        }
    };
    match conf.validate() {
        Ok(conf) => Some(conf),
        Err(e) => {
            c.problem("pingora", e.to_string());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::build;
    use crate::config::file::parse;
    use crate::testkit::SECRETS;
    use crate::testkit::config::{env_with, outside};

    #[test]
    fn every_pingora_server_setting_is_accepted() {
        let all = serde_yaml::to_value(ServerConf::default()).unwrap();
        let yaml =
            serde_yaml::to_string(&serde_yaml::Mapping::from_iter([("pingora".into(), all)]))
                .unwrap();
        let env = env_with(SECRETS);
        let loaded =
            build(parse(&yaml).unwrap(), outside(&env)).unwrap_or_else(|p| panic!("{p:?}"));
        // Given explicitly, Pingora's own values are kept over etls-proxy's defaults.
        assert_eq!(loaded.server.threads, ServerConf::default().threads);
        assert_eq!(
            loaded.server.grace_period_seconds,
            ServerConf::default().grace_period_seconds
        );
    }
}
