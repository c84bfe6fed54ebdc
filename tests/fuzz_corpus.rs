//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`, seeds plus what `make fuzz`
//! found worth keeping) through the same properties the fuzz targets check, so every input that
//! ever mattered stays a regression test without libFuzzer.

use std::path::Path;

fn replay(target: &str, property: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        if let Err(panic) = std::panic::catch_unwind(|| property(&data)) {
            panic!("{} fails: {panic:?}", path.display());
        }
        count += 1;
    }
    assert!(count >= 5, "{target}: only {count} corpus entries");
}

#[test]
fn cookie_header_corpus() {
    replay("cookie_header", etls_proxy::fuzzing::cookie_header);
}

#[test]
fn auth_answer_corpus() {
    replay("auth_answer", etls_proxy::fuzzing::auth_answer);
}

#[test]
fn decision_corpus() {
    replay("decision", etls_proxy::fuzzing::decision);
}

#[test]
fn config_corpus() {
    replay("config", etls_proxy::fuzzing::config);
}
