//! The enforced boundary: nothing under `src/session/` names Pingora or a layer above the pure
//! core (`proxy`, `refresh`, `ops`, `config`, `state`, which all reach Pingora), so the core
//! stays testable and fuzzable without a socket. Runs in `make test` (`cargo test --all-targets`).

use std::path::{Path, PathBuf};

/// The layers above the core, as the crate names them (comments are free to mention them).
const LAYERS: [&str; 5] = ["proxy", "refresh", "ops", "config", "state"];

/// The offending lines of one file's text: `(line number, line)`.
fn offending_lines(text: &str) -> Vec<(usize, &str)> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| {
            let code = line.split("//").next().unwrap_or("");
            // `use crate::{ops::metrics, ...}` names a layer inside the braces.
            let grouped = code.split_once("crate::{").map(|(_, rest)| rest);
            names(code, "pingora")
                || LAYERS.iter().any(|layer| {
                    names(code, &format!("crate::{layer}"))
                        || grouped.is_some_and(|g| names(g, &format!("{layer}::")))
                })
        })
        .map(|(i, line)| (i + 1, line))
        .collect()
}

/// Whether `code` holds `name` as a path segment start (`pingora::`, `pingora_core::`, `use
/// pingora;`), not inside another word (`is_pingora_detail`).
fn names(code: &str, name: &str) -> bool {
    code.match_indices(name).any(|(at, _)| {
        let before = code[..at].chars().next_back();
        let after = code[at + name.len()..].chars().next();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
            && (name.ends_with(':') || matches!(after, None | Some(':' | '_' | ';' | ' ' | ',')))
    })
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_session_core_imports_no_pingora_and_no_layer_above_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/session");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(files.len() >= 7, "src/session/ holds the core's files");
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable source");
        for (n, line) in offending_lines(&text) {
            found.push(format!("{}:{n}: {}", file.display(), line.trim()));
        }
    }
    assert!(
        found.is_empty(),
        "the pure core (src/session/) must not import Pingora or proxy/refresh/ops/config/state:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_sees_imports_and_paths_but_not_comments_or_other_words() {
    let caught = [
        "use pingora::http::RequestHeader;",
        "    let h: pingora::http::ResponseHeader = todo!();",
        "use pingora_core::protocols::Digest;",
        "extern crate pingora;",
        "use crate::proxy::guard;",
        "use crate::{ops::metrics, session::cookies};",
        "    crate::refresh::renew::renew(x)",
        "use crate::config::RuntimeConfig;",
    ];
    for line in caught {
        assert_eq!(offending_lines(line).len(), 1, "{line}");
    }
    let free = [
        "//! Pingora merges neither, so a jar is a view over every Cookie header value.",
        "let n = 1; // pingora::http would be refused in code, not in a comment",
        "fn is_pingora_detail() {}",
        "use crate::session::cookies::CookieJar;",
        "use crate::proxyish::x;",
        "use crate::{session::cookies, fuzzing::check_rewrite};",
    ];
    for line in free {
        assert!(offending_lines(line).is_empty(), "{line}");
    }
}
