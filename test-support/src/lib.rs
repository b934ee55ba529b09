//! What a test needs from the machine, and what happens when it is missing.
//!
//! A test that cannot run here (not root, no gcc, no Debian `crit`, no
//! fixtures, no kernel feature) must not pass silently:
//!
//! - under `CI=true` (as `.ci/run` runs) a missing precondition is a failure:
//!   [`skip`] panics with the reason, so the machine kind must provide what
//!   the tests need (run-tests.sh installs it);
//! - elsewhere [`skip`] prints `SKIP <binary>::<test>: <reason>` and appends
//!   the same line to the file named by `CRIU_RS_SKIP_LOG` (run-tests.sh
//!   sets it and prints the count and the lines at the end of the run).
//!
//! Tests check with the `why_not_*` functions (each gives `Some(reason)` when
//! the precondition is missing) and the [`require!`] macro:
//!
//! ```text
//! test_support::require!(test_support::why_not_root());
//! ```
#![forbid(unsafe_code)]

use std::fmt::Display;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Environment variable naming the file skips are appended to.
pub const SKIP_LOG_ENV: &str = "CRIU_RS_SKIP_LOG";

/// Whether this run is CI's (`CI=true`, also `CI=1`): missing
/// preconditions fail instead of skipping.
pub fn under_ci() -> bool {
    matches!(std::env::var("CI").as_deref().map(str::trim), Ok("true" | "TRUE" | "True" | "1" | "yes"))
}

/// `binary::test` of the running test: libtest names each test's thread
/// after the test; the binary is argv[0] without cargo's `-<hash>` suffix.
pub fn test_name() -> String {
    let bin = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let bin = match bin.rsplit_once('-') {
        Some((b, hash)) if hash.len() == 16 && hash.bytes().all(|c| c.is_ascii_hexdigit()) => b.to_string(),
        _ => bin,
    };
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("?");
    format!("{bin}::{test}")
}

/// The test cannot run here because of `reason`. Under CI this panics
/// (the test fails, naming the reason); otherwise it prints and records
/// the skip, and the caller returns without checking anything.
#[track_caller]
pub fn skip(reason: impl Display) {
    let name = test_name();
    let ci = under_ci();
    let line = if ci { format!("FAILED (CI=true) {name}: {reason}") } else { format!("SKIP {name}: {reason}") };
    record(&line);
    if ci {
        panic!("{name} cannot run: {reason}; under CI=true every precondition must hold (run-tests.sh installs what the tests need)");
    }
    eprintln!("{line}");
}

/// The test's subject does not exist on this CPU: it checks how the engine
/// treats a feature this CPU *lacks* (an image from a bigger CPU), and this
/// one has it. Not a missing precondition the machine kind should provide,
/// so it never fails under CI; it is printed and counted with the skips
/// (`N/A binary::test: reason`) so that a run says what it did not check.
pub fn not_on_this_cpu(reason: impl Display) {
    let line = format!("N/A {}: {reason}", test_name());
    record(&line);
    eprintln!("{line}");
}

fn record(line: &str) {
    let Some(path) = std::env::var_os(SKIP_LOG_ENV) else { return };
    // One write(2) of one short line with O_APPEND: lines of tests running in
    // parallel (threads and binaries) do not interleave.
    let res = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    if let Err(e) = res {
        eprintln!("test-support: cannot append to {} ({SKIP_LOG_ENV}): {e}", Path::new(&path).display());
    }
}

/// Return from the test (with `Default::default()`, so `()` or `None`)
/// after [`skip`] when `$why_not` (an `Option` of a reason) is `Some`.
#[macro_export]
macro_rules! require {
    ($why_not:expr) => {
        if let Some(why) = $why_not {
            $crate::skip(why);
            return Default::default();
        }
    };
}

/// `Some` reason when this process is not root (uid 0).
pub fn why_not_root() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2).map(str::to_string)));
    if uid.as_deref() == Some("0") {
        None
    } else {
        Some("needs root (ptrace of other processes, clone3 set_tid, PR_SET_MM_MAP)".into())
    }
}

/// Whether root.
pub fn is_root() -> bool {
    why_not_root().is_none()
}

/// `Some` reason when `tool` is not on PATH (or, given as an absolute
/// path, does not exist).
pub fn why_not_tool(tool: &str) -> Option<String> {
    if tool.starts_with('/') {
        return if Path::new(tool).exists() { None } else { Some(format!("{tool} not found")) };
    }
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if found {
        None
    } else {
        Some(format!("{tool} not found on PATH"))
    }
}

/// The first missing one of `tools`.
pub fn why_not_tools(tools: &[&str]) -> Option<String> {
    tools.iter().find_map(|t| why_not_tool(t))
}

/// The shared fixtures directory (`fixtures/` of the project's `shared/`):
/// `$CRIU_RS_FIXTURES` if set, else the first `shared/fixtures` found
/// beside the workspace or one of its ancestors (CI clones the repository
/// with `shared/` beside it; helpers' worktrees sit one level deeper).
pub fn fixtures_dir() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("CRIU_RS_FIXTURES") {
        let p = PathBuf::from(p);
        return if p.is_dir() { Ok(p) } else { Err(format!("CRIU_RS_FIXTURES={} is not a directory", p.display())) };
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new("/"));
    for dir in workspace.ancestors() {
        let p = dir.join("shared/fixtures");
        if p.join("progs").is_dir() || p.join("upstream").is_dir() {
            return Ok(p);
        }
    }
    Err(format!("no shared/fixtures beside {} or above it (set CRIU_RS_FIXTURES)", workspace.display()))
}

/// `Some` reason when the fixtures' `sub` directory (e.g. `progs`,
/// `upstream/counter`) is missing.
pub fn why_not_fixture(sub: &str) -> Option<String> {
    match fixtures_dir() {
        Ok(d) if d.join(sub).exists() => None,
        Ok(d) => Some(format!("{} not found", d.join(sub).display())),
        Err(e) => Some(e),
    }
}

/// The fixtures' `sub` path; panics if there is none (call after a
/// [`why_not_fixture`] check).
pub fn fixture(sub: &str) -> PathBuf {
    fixtures_dir().unwrap_or_else(|e| panic!("{e}")).join(sub)
}

/// `Some` reason when this CPU lacks `flag` (as /proc/cpuinfo spells it,
/// e.g. `avx512f`).
pub fn why_not_cpu_flag(flag: &str) -> Option<String> {
    if cpu_has(flag) {
        None
    } else {
        Some(format!("this CPU lacks {flag} (/proc/cpuinfo flags)"))
    }
}

/// Whether /proc/cpuinfo lists `flag` for the first CPU.
pub fn cpu_has(flag: &str) -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("flags")).map(|l| l.split_whitespace().any(|f| f == flag)))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_test_by_its_thread() {
        assert!(test_name().ends_with("::tests::names_the_test_by_its_thread"), "{}", test_name());
    }

    #[test]
    fn finds_a_present_tool_and_names_a_missing_one() {
        assert_eq!(why_not_tool("sh"), None);
        assert!(why_not_tool("no-such-tool-criu-rs").unwrap().contains("no-such-tool-criu-rs"));
        assert!(why_not_tool("/no/such/file").is_some());
    }
}
