//! No test prints its own SKIP and returns: every skip goes through
//! `test_support::skip` (or `require!`), which records it for run-tests.sh's
//! summary and fails under CI=true. This scans the workspace's Rust sources
//! for hand-made SKIP messages (one right after the old recording checks
//! `skip_reason()` or fdsupport's `is_root()` only repeats what they recorded).

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).flatten() {
        let p = e.path();
        let name = e.file_name();
        if p.is_dir() {
            if name != "target" && name != ".git" {
                rust_files(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_skip_goes_through_test_support() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    for d in ["engine", "tools", "compat-tests", "images-proto"] {
        rust_files(&root.join(d), &mut files);
    }
    assert!(files.len() > 20, "only {} sources found under {}", files.len(), root.display());
    // crit-bench is a program, not a test: it says why it compares nothing.
    let exempt = ["tools/src/bin/crit-bench.rs"];
    let mut found = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        if exempt.contains(&rel.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let l = line.trim_start();
            let prints = l.starts_with("eprintln!(") || l.starts_with("println!(") || l.starts_with("eprint!(") || l.starts_with("print!(");
            let says_skip = ["\"SKIP", "\"skip", "\"Skip"].iter().any(|m| l.contains(m));
            // a message on the line after `eprintln!(`
            let continued = l.starts_with("\"SKIP");
            // The old checks `skip_reason()` (engine/tests/common) and
            // `is_root()` (engine/tests/fdsupport) record the skip themselves
            // (and fail under CI=true): a print after them only repeats it.
            let recorded = lines[i.saturating_sub(3)..i].iter().any(|l| {
                (l.contains("skip_reason()") || l.contains("is_root()")) && !l.contains("test_support::")
            });
            if ((prints && says_skip) || continued) && !recorded {
                found.push(format!("{rel}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "tests that print their own skip (use test_support::require!/skip, which counts it and fails under CI=true):\n{}",
        found.join("\n")
    );
}
