//! `tokens`: the secrets (from the environment only, one or a rotation list per kind), the
//! lifetimes (env vars win over the YAML), leeway, refresh-ahead and unbound refresh tokens.

use std::ffi::OsString;

use super::{Checker, Entry, MAX_WINDOW_SECS, MIN_SECRET_BYTES, one_or_list};
use crate::config::Env;
use crate::config::file::TokensFile;
use crate::session::secret::Secret;
use crate::session::tokens::{TokenKeys, TokenTimes, UnboundRefresh};

/// Ten years: longer lifetimes are typos (and `now + ttl` must not overflow).
const MAX_TTL_SECS: u64 = 315_360_000;

/// The `tokens` section as checked: the keys, and every secret value so the logger can mask it.
pub(super) struct Tokens {
    pub keys: TokenKeys,
    pub secrets: Vec<Secret>,
}

/// What the file says of one token kind: the same keys for access and refresh tokens.
struct Kind<'a> {
    /// `access` or `refresh`, as in `tokens.<kind>_secret_env`.
    name: &'static str,
    /// The variable read when the file names none.
    default_env: &'static str,
    single: &'a Option<String>,
    list: &'a Option<Vec<String>>,
    ttl_env: Option<&'a str>,
    ttl_secs: u64,
}

pub(super) fn check_tokens(c: &mut Checker, t: &TokensFile, env: Env<'_>) -> Option<Tokens> {
    let kinds = [
        Kind {
            name: "access",
            default_env: "ETLS_ACCESS",
            single: &t.access_secret_env,
            list: &t.access_secret_envs,
            ttl_env: t.access_ttl_env.as_deref(),
            ttl_secs: t.access_ttl_secs,
        },
        Kind {
            name: "refresh",
            default_env: "ETLS_REFRESH",
            single: &t.refresh_secret_env,
            list: &t.refresh_secret_envs,
            ttl_env: t.refresh_ttl_env.as_deref(),
            ttl_secs: t.refresh_ttl_secs,
        },
    ];
    // Both kinds' secrets, then both lifetimes: the problems keep that order.
    let [access, refresh] = kinds
        .each_ref()
        .map(|k| secrets(c, k, t.allow_short_secrets, env));
    let [access_ttl, refresh_ttl] = kinds.each_ref().map(|k| {
        let ttl_key = format!("tokens.{}_ttl", k.name);
        ttl(
            c,
            &format!("{ttl_key}_env"),
            k.ttl_env,
            &format!("{ttl_key}_secs"),
            k.ttl_secs,
            env,
        )
    });
    if let (Some(access), Some(refresh)) = (&access, &refresh) {
        for a in access {
            for r in refresh {
                if a.value == r.value {
                    let (a_key, a_var, r_var) = (&a.key, &a.var, &r.var);
                    c.problem(
                        &r.key,
                        format!(
                            "{r_var} holds the same secret as {a_var} ({a_key}): a refresh token would pass as an access token"
                        ),
                    );
                }
            }
        }
    }
    if let Some(ttl) = access_ttl
        && t.refresh_ahead_secs >= ttl
    {
        c.problem(
            "tokens.refresh_ahead_secs",
            format!("must be below the access token lifetime ({ttl} s)"),
        );
    }
    if t.leeway_secs > MAX_WINDOW_SECS {
        c.problem(
            "tokens.leeway_secs",
            format!("must be at most {MAX_WINDOW_SECS} seconds"),
        );
    }
    let unbound_refresh = match t.unbound_refresh.to_ascii_lowercase().as_str() {
        "allow" => Some(UnboundRefresh::Allow),
        "refuse" => Some(UnboundRefresh::Refuse),
        _ => {
            c.problem(
                "tokens.unbound_refresh",
                format!("`{}` must be allow or refuse", t.unbound_refresh),
            );
            None
        }
    };
    let (access, refresh, access_ttl, refresh_ttl) = (access?, refresh?, access_ttl?, refresh_ttl?);
    let unbound_refresh = unbound_refresh?;
    let times = TokenTimes {
        access_ttl_secs: access_ttl,
        refresh_ttl_secs: refresh_ttl,
        leeway_secs: t.leeway_secs,
        refresh_ahead_secs: t.refresh_ahead_secs,
    };
    let mut keys = TokenKeys::rotating(&exposed(&access), &exposed(&refresh), times);
    keys.unbound_refresh = unbound_refresh;
    let secrets = access.into_iter().chain(refresh).map(|s| s.value);
    Some(Tokens {
        keys,
        secrets: secrets.collect(),
    })
}

fn exposed(secrets: &[FoundSecret]) -> Vec<&[u8]> {
    secrets.iter().map(|s| s.value.expose()).collect()
}

/// One secret as the configuration found it.
struct FoundSecret {
    /// The key path that names it (`tokens.access_secret_envs[1]`).
    key: String,
    /// Its environment variable.
    var: String,
    value: Secret,
}

/// The secrets of one token kind, newest first, with the key and env var each came from:
/// `tokens.<kind>_secret_env` (one name, default `default`) or `tokens.<kind>_secret_envs` (a
/// list, for rotation), never both.
fn secrets(
    c: &mut Checker,
    kind: &Kind<'_>,
    allow_short: bool,
    env: Env<'_>,
) -> Option<Vec<FoundSecret>> {
    let (single, list, default) = (kind.single, kind.list, kind.default_env);
    let kind = kind.name;
    let list_key = format!("tokens.{kind}_secret_envs");
    let single_key = format!("tokens.{kind}_secret_env");
    let both = format!("give either {single_key} or this list, not both");
    let names = one_or_list(
        c,
        (&single_key, single.as_deref(), default),
        (&list_key, list.as_deref()),
        (&both, "needs at least one environment variable"),
    )?;
    let mut found = Vec::with_capacity(names.len());
    let mut s = c.section();
    for (i, Entry { key, value: var }) in names.iter().enumerate() {
        if names[..i].iter().any(|earlier| earlier.value == *var) {
            s.problem(key, format!("{var} is listed twice"));
            continue;
        }
        if let Some(value) = secret(&mut s, key, var, allow_short, env) {
            found.push(FoundSecret {
                key: key.clone(),
                var: var.to_string(),
                value,
            });
        }
    }
    s.done(found)
}

fn env_bytes(value: OsString) -> Vec<u8> {
    use std::os::unix::ffi::OsStringExt;
    value.into_vec()
}

/// A POSIX-style variable name: `[A-Za-z_][A-Za-z0-9_]*`, 64 bytes at most.
fn is_env_name(var: &str) -> bool {
    let bytes = var.as_bytes();
    bytes.len() <= 64
        && bytes
            .first()
            .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_')
}

fn secret(
    c: &mut Checker,
    key: &str,
    var: &str,
    allow_short: bool,
    env: Env<'_>,
) -> Option<Secret> {
    if var.is_empty() {
        c.problem(key, "must name an environment variable");
        return None;
    }
    // A secret pasted where its variable's name belongs must not reach the log: only a name
    // that looks like one is echoed.
    if !is_env_name(var) {
        c.problem(
            key,
            "must name an environment variable (letters, digits and `_`, at most 64; the value given is not shown: it may be the secret itself)",
        );
        return None;
    }
    let Some(value) = env(var).map(env_bytes) else {
        // Variable names are upper case by convention; a name in lower case (a hex or base64
        // secret pasted there) is not echoed.
        let named = match var.bytes().any(|b| b.is_ascii_lowercase()) {
            false => format!("environment variable {var}"),
            true => "the environment variable named there (not shown: it may be the secret itself)"
                .to_owned(),
        };
        c.problem(
            key,
            format!("{named} is not set (secrets come only from the environment)"),
        );
        return None;
    };
    if value.len() < MIN_SECRET_BYTES {
        if allow_short && !value.is_empty() {
            c.warnings.push(format!(
                "{var} is {} bytes, below the {MIN_SECRET_BYTES}-byte minimum of RFC 7518 §3.2 (allowed by tokens.allow_short_secrets)",
                value.len()
            ));
        } else {
            c.problem(
                key,
                format!(
                    "environment variable {var} is {} bytes; an HS256 secret needs at least {MIN_SECRET_BYTES} bytes (RFC 7518 §3.2; tokens.allow_short_secrets: true accepts it with a warning)",
                    value.len()
                ),
            );
            return None;
        }
    }
    Some(Secret::new(value))
}

/// The env var wins when set (the seeds' `.env`), else the YAML value.
fn ttl(
    c: &mut Checker,
    env_key: &str,
    var: Option<&str>,
    secs_key: &str,
    secs: u64,
    env: Env<'_>,
) -> Option<u64> {
    let from_env = var
        .filter(|v| !v.is_empty())
        .and_then(|v| env(v).map(|value| (v, value)));
    let (key, value) = match from_env {
        Some((var, raw)) => {
            let text = raw.to_string_lossy();
            match text.trim().parse::<u64>() {
                Ok(n) => (format!("{env_key} ({var})"), n),
                Err(_) => {
                    c.problem(env_key, format!("environment variable {var} must be a whole number of seconds, got `{text}`"));
                    return None;
                }
            }
        }
        None => (secs_key.to_owned(), secs),
    };
    if value == 0 || value > MAX_TTL_SECS {
        c.problem(
            key,
            format!("must be between 1 and {MAX_TTL_SECS} seconds (ten years), got {value}"),
        );
        return None;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::build;
    use crate::config::file::parse;
    use crate::testkit::config::{env_with, outside, problems};
    use crate::testkit::{ACCESS_SECRET, REFRESH_SECRET, SECRETS};

    #[test]
    fn ttl_env_vars_win_over_yaml() {
        let env = env_with(&[
            ("ETLS_ACCESS", ACCESS_SECRET),
            ("ETLS_REFRESH", REFRESH_SECRET),
            ("ETLS_ACCESS_EXPIRE_TIME", "60"),
            ("ETLS_REFRESH_EXPIRE_TIME", " 120 "),
        ]);
        let rt = build(
            parse("tokens: {access_ttl_secs: 5}").unwrap(),
            outside(&env),
        )
        .ok()
        .unwrap()
        .runtime;
        assert_eq!(rt.keys.times.access_ttl_secs, 60);
        assert_eq!(rt.keys.times.refresh_ttl_secs, 120);
    }

    #[test]
    fn secret_lists_for_rotation_are_checked_entry_by_entry() {
        const ROTATION: &[(&str, &str)] = &[
            ("ETLS_ACCESS", ACCESS_SECRET),
            (
                "ETLS_ACCESS_PREVIOUS",
                "previous-access-secret-previous-acc",
            ),
            ("ETLS_REFRESH", REFRESH_SECRET),
            (
                "ETLS_REFRESH_PREVIOUS",
                "previous-refresh-secret-previous-r",
            ),
            ("SHORT", "short"),
            ("COPY_OF_ACCESS", ACCESS_SECRET),
        ];
        for fine in [
            "tokens: {access_secret_envs: [ETLS_ACCESS, ETLS_ACCESS_PREVIOUS]}",
            "tokens: {access_secret_envs: [ETLS_ACCESS], refresh_secret_env: ETLS_REFRESH}",
            "tokens: {access_secret_env: ETLS_ACCESS, refresh_secret_envs: [ETLS_REFRESH, ETLS_REFRESH_PREVIOUS]}",
        ] {
            assert_eq!(problems(fine, ROTATION), Vec::<String>::new(), "{fine}");
        }
        // Every problem of the file at once, each named by its key path and index.
        let cases: [(&str, &[&str]); 8] = [
            (
                "tokens: {access_secret_env: ETLS_ACCESS, access_secret_envs: [ETLS_ACCESS]}",
                &["tokens.access_secret_envs: give either tokens.access_secret_env or"],
            ),
            (
                "tokens: {refresh_secret_env: ETLS_REFRESH, refresh_secret_envs: [ETLS_REFRESH]}",
                &["tokens.refresh_secret_envs: give either tokens.refresh_secret_env or"],
            ),
            (
                "tokens: {refresh_secret_envs: []}",
                &["tokens.refresh_secret_envs: needs at least one"],
            ),
            (
                "tokens: {access_secret_envs: [ETLS_ACCESS, MISSING, SHORT, ''], refresh_secret_envs: []}",
                &[
                    "tokens.access_secret_envs[1]: environment variable MISSING is not set",
                    "tokens.access_secret_envs[2]: environment variable SHORT is 5 bytes",
                    "tokens.access_secret_envs[3]: must name an environment variable",
                    "tokens.refresh_secret_envs: needs at least one",
                ],
            ),
            (
                "tokens: {refresh_secret_envs: [ETLS_REFRESH, MISSING]}",
                &["tokens.refresh_secret_envs[1]: environment variable MISSING is not set"],
            ),
            (
                "tokens: {access_secret_envs: [ETLS_ACCESS, ETLS_ACCESS]}",
                &["tokens.access_secret_envs[1]: ETLS_ACCESS is listed twice"],
            ),
            (
                "tokens: {access_secret_envs: [ETLS_ACCESS, ETLS_REFRESH]}",
                &[
                    "tokens.refresh_secret_env: ETLS_REFRESH holds the same secret as ETLS_REFRESH (tokens.access_secret_envs[1])",
                ],
            ),
            (
                "tokens: {refresh_secret_envs: [ETLS_REFRESH, COPY_OF_ACCESS]}",
                &[
                    "tokens.refresh_secret_envs[1]: COPY_OF_ACCESS holds the same secret as ETLS_ACCESS (tokens.access_secret_env)",
                ],
            ),
        ];
        for (yaml, wants) in cases {
            let got = problems(yaml, ROTATION);
            assert_eq!(got.len(), wants.len(), "{yaml}: {got:?}");
            for want in wants {
                assert!(got.iter().any(|p| p.starts_with(want)), "{yaml}: {got:?}");
            }
        }
    }

    /// The keys built from lists sign with the first secret under its kid and verify with every
    /// one; all the secrets are handed to the log redactor.
    #[test]
    fn secret_lists_build_keys_that_sign_with_the_first() {
        const PREVIOUS: &str = "previous-access-secret-previous-acc";
        const PREVIOUS_R: &str = "previous-refresh-secret-previous-r";
        let env = env_with(&[
            ("ETLS_ACCESS", ACCESS_SECRET),
            ("ETLS_ACCESS_PREVIOUS", PREVIOUS),
            ("ETLS_REFRESH", REFRESH_SECRET),
            ("ETLS_REFRESH_PREVIOUS", PREVIOUS_R),
        ]);
        let yaml = "tokens: {access_secret_envs: [ETLS_ACCESS, ETLS_ACCESS_PREVIOUS], refresh_secret_envs: [ETLS_REFRESH, ETLS_REFRESH_PREVIOUS]}";
        let loaded = build(parse(yaml).unwrap(), outside(&env)).unwrap_or_else(|p| panic!("{p:?}"));
        let mut secrets: Vec<Vec<u8>> =
            loaded.secrets.iter().map(|s| s.expose().to_vec()).collect();
        secrets.sort();
        let mut want: Vec<Vec<u8>> = [ACCESS_SECRET, PREVIOUS, REFRESH_SECRET, PREVIOUS_R]
            .map(Into::into)
            .to_vec();
        want.sort();
        assert_eq!(secrets, want, "every secret reaches the redactor");

        let keys = &loaded.runtime.keys;
        let now = crate::unix_now();
        let claims = serde_json::from_str(r#"{"username": "ann"}"#).unwrap();
        let kid = |t: &str| jsonwebtoken::decode_header(t).unwrap().kid;
        let access = keys.mint_access(&claims, now).unwrap();
        let refresh = keys.mint_refresh(&claims, "refreshToken=rt", now).unwrap();
        assert_eq!(
            kid(&access),
            Some(crate::session::tokens::key_id(ACCESS_SECRET.as_bytes()))
        );
        assert_eq!(
            kid(&refresh),
            Some(crate::session::tokens::key_id(REFRESH_SECRET.as_bytes()))
        );
        let previous = |secret: &str| {
            jsonwebtoken::encode(
                &jsonwebtoken::Header::default(),
                &serde_json::json!({"exp": now + 60}),
                &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
            )
            .unwrap()
        };
        assert_eq!(
            keys.check_access(previous(PREVIOUS).as_bytes(), now),
            crate::session::tokens::AccessState::Fresh
        );
        assert_eq!(
            keys.check_refresh(previous(PREVIOUS_R).as_bytes(), now),
            crate::session::tokens::RefreshState::Valid(crate::session::tokens::Binding::Unbound)
        );
        // Bound with the first secret's binding key, checked with the key of the secret that
        // verified the token.
        let crate::session::tokens::RefreshState::Valid(binding) =
            keys.check_refresh(refresh.as_bytes(), now)
        else {
            panic!("the minted refresh token verifies");
        };
        assert!(keys.bound_to(binding, "refreshToken=rt"));
        assert!(!keys.bound_to(binding, "refreshToken=other"));
        assert_eq!(keys.unbound_refresh, UnboundRefresh::Allow, "the default");
    }

    #[test]
    fn unbound_refresh_is_allow_or_refuse() {
        let env = env_with(SECRETS);
        for (yaml, want) in [
            ("tokens: {unbound_refresh: allow}", UnboundRefresh::Allow),
            ("tokens: {unbound_refresh: refuse}", UnboundRefresh::Refuse),
            ("tokens: {unbound_refresh: Refuse}", UnboundRefresh::Refuse),
        ] {
            let rt = build(parse(yaml).unwrap(), outside(&env))
                .unwrap_or_else(|p| panic!("{yaml}: {p:?}"))
                .runtime;
            assert_eq!(rt.keys.unbound_refresh, want, "{yaml}");
        }
        let got = problems("tokens: {unbound_refresh: maybe}", SECRETS);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("tokens.unbound_refresh") && got[0].contains("allow or refuse"),
            "{got:?}"
        );
    }

    #[test]
    fn a_secret_pasted_as_its_variables_name_is_never_echoed() {
        let pasted = "s3cr3t-v4lue/with+base64=chars-0123456789";
        let got = problems(
            &format!("tokens: {{access_secret_env: '{pasted}'}}"),
            SECRETS,
        );
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].starts_with("tokens.access_secret_env"), "{got:?}");
        assert!(!got[0].contains("s3cr3t"), "{got:?}");
        // A hex secret is a valid name: looked up, never echoed.
        let hex = "afa1b2c3d4a1b2c3d4a1b2c3d4a1b2c3d4a1b2c3d4a1b2c3d4a1b2c3d49e0d4c";
        let got = problems(&format!("tokens: {{access_secret_env: {hex}}}"), SECRETS);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].contains("not shown") && !got[0].contains("afa1"),
            "{got:?}"
        );
        for (name, ok) in [
            ("ETLS_ACCESS", true),
            ("_x1", true),
            ("1X", false),
            ("A-B", false),
        ] {
            assert_eq!(is_env_name(name), ok, "{name}");
        }
        assert!(!is_env_name(&"A".repeat(65)));
    }

    #[test]
    fn missing_and_equal_secrets_are_refused() {
        let got = problems("{}", &[]);
        assert!(
            got.iter().any(|p| p.contains("ETLS_ACCESS is not set")),
            "{got:?}"
        );
        assert!(
            got.iter().any(|p| p.contains("ETLS_REFRESH is not set")),
            "{got:?}"
        );
        let got = problems(
            "{}",
            &[
                ("ETLS_ACCESS", ACCESS_SECRET),
                ("ETLS_REFRESH", ACCESS_SECRET),
            ],
        );
        assert!(got.iter().any(|p| p.contains("same secret")), "{got:?}");
        let got = problems(
            "{}",
            &[
                ("ETLS_ACCESS", ACCESS_SECRET),
                ("ETLS_REFRESH", REFRESH_SECRET),
                ("ETLS_ACCESS_EXPIRE_TIME", "15m"),
            ],
        );
        assert!(
            got.iter()
                .any(|p| p.contains("ETLS_ACCESS_EXPIRE_TIME") && p.contains("`15m`")),
            "{got:?}"
        );
    }

    #[test]
    fn short_secrets_need_the_explicit_switch_and_warn() {
        let env = env_with(&[("ETLS_ACCESS", "short-a"), ("ETLS_REFRESH", "short-r")]);
        let loaded = build(
            parse("tokens: {allow_short_secrets: true}").unwrap(),
            outside(&env),
        )
        .ok()
        .unwrap();
        assert_eq!(loaded.warnings.len(), 2);
        assert!(loaded.warnings[0].contains("ETLS_ACCESS"));
    }
}
