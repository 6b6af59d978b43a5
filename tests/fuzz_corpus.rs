//! Replays the fuzz targets' committed seed corpus (`fuzz/corpus/<target>/`)
//! and every past crash input (`fuzz/regressions/<target>/`) through the
//! same property checks the fuzz targets run, on the stable toolchain, so
//! `cargo test` guards them too. See `fuzz/README.md`.

use std::fs;
use std::panic;
use std::path::{Path, PathBuf};

use sidecar_init::props;

/// The input files of `dir`, sorted; dot files (`.gitkeep`) and README
/// files are not inputs.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("read a directory entry").path())
        .filter(|p| p.is_file())
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            !name.starts_with('.') && !name.starts_with("README")
        })
        .collect();
    files.sort();
    files
}

/// Runs `check` on every corpus and regression input of `target`; fails,
/// naming every failing file, if any check panics or the corpus is empty.
fn replay(target: &str, check: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let corpus = inputs(&fuzz.join("corpus").join(target));
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{target}/ is missing or empty: the replay would pass without checking anything"
    );
    let regressions = inputs(&fuzz.join("regressions").join(target));
    let mut failed = Vec::new();
    for path in corpus.iter().chain(&regressions) {
        let data = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        if panic::catch_unwind(|| check(&data)).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: property failed for {failed:?} (messages above)"
    );
    eprintln!(
        "{target}: {} corpus and {} regression inputs replayed",
        corpus.len(),
        regressions.len()
    );
}

#[test]
fn lines_corpus() {
    replay("lines", props::check_lines);
}

#[test]
fn framing_corpus() {
    replay("framing", props::check_framing);
}

#[test]
fn json_corpus() {
    replay("json", props::check_json);
}

#[test]
fn procfile_corpus() {
    replay("procfile", props::check_procfile);
}

#[test]
fn options_corpus() {
    replay("options", props::check_options);
}
