//! Helpers the benchmark programs (`src/bin/*-bench.rs`) share: option
//! lists, medians, bounded waits, and looking at the workloads they start.
//! Kept free of `unsafe`: signals go through kill(1).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Walk the program's options: each name in `switches` takes no value, every
/// other option takes the next argument (`set(name, value)`); `--bench`
/// (what `cargo bench` adds) is skipped. `set` returns false for a name it
/// does not know: the program then says so and exits with 2.
pub fn each_option(switches: &[&str], mut set: impl FnMut(&str, &str) -> bool) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let name = args[i].as_str();
        if name == "--bench" {
            i += 1;
            continue;
        }
        let takes_value = !switches.contains(&name);
        let value = if takes_value { args.get(i + 1).map(String::as_str).unwrap_or("") } else { "" };
        if !set(name, value) {
            eprintln!("unknown option {name}");
            std::process::exit(2);
        }
        i += if takes_value { 2 } else { 1 };
    }
}

/// `1,4,16` -> `[1, 4, 16]` (what does not parse is left out).
pub fn parse_list(s: &str) -> Vec<usize> {
    s.split(',').filter_map(|x| x.trim().parse().ok()).collect()
}

/// Median of `v` (sorted in place); `v` must not be empty.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Poll `f` every 10 ms until it holds, or fail naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Result<(), String> {
    let t = Instant::now();
    while !f() {
        if t.elapsed() > timeout {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// The host pid of the first child of `unshare --pid --fork` (`unshare_pid`):
/// pid 1 of the new namespace.
pub fn ns_init_pid(unshare_pid: u32) -> Option<i32> {
    let mut found = None;
    let _ = wait_for("the namespace's first process", Duration::from_secs(5), || {
        found = std::fs::read_to_string(format!("/proc/{unshare_pid}/task/{unshare_pid}/children"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()));
        found.is_some()
    });
    found
}

/// SIGKILL `pid` (a process the benchmark started or cloned).
pub fn kill(pid: i32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}

/// The process exists and is neither a zombie nor dead.
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z') || r.starts_with('X')))
}

/// `ok` ticks in a workload's progress log; a FAIL line is an error.
pub fn ok_ticks(log: &Path) -> Result<usize, String> {
    let s = std::fs::read_to_string(log).unwrap_or_default();
    if let Some(l) = s.lines().find(|l| l.starts_with("FAIL") || l.contains(" FAIL")) {
        return Err(format!("workload failed ({}): {l}", log.display()));
    }
    Ok(s.lines().filter(|l| l.ends_with(" ok")).count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_medians() {
        assert_eq!(parse_list("1, 4,x,16"), vec![1, 4, 16]);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert!(wait_for("nothing", Duration::from_millis(30), || false).unwrap_err().contains("nothing"));
    }
}
