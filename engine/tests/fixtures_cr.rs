//! Real-process checkpoint/restore of the shared fixture programs (single
//! processes and trees: the shape of the tree is checked too): build
//! with gcc, start as `unshare --pid --fork setsid fx-NAME` (as upstream's
//! fixtures were), dump with our `criu`, restore, and check progress.log
//! keeps gaining `ok` ticks and never a FAIL. Needs root, gcc, unshare,
//! setsid and the shared fixtures: otherwise each test skips with the
//! reason, or fails under CI=true.

mod common;

use common::{build, last_tick, require, wait_until, why_not_here, CRIU};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Pid (in our namespace) of the fixture's root: the process running
/// `bin` that is pid 1 of its pid namespace (the child of `unshare`).
fn fixture_pid(bin: &Path) -> i32 {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let ns_one = st.lines().any(|l| l.starts_with("NSpid:") && l.split_whitespace().last() == Some("1"));
        if cmd.split(|b| *b == 0).next() == Some(bin.as_os_str().as_encoded_bytes()) && ns_one {
            found.push(pid);
        }
    }
    assert_eq!(found.len(), 1, "one root of fixture {} expected: {found:?}", bin.display());
    found[0]
}

/// (pid, ppid, pgid, sid, state class) of every process of the tree under
/// `root`, in its own pid namespace, sorted: the shape a restore must keep.
fn tree_shape(root: i32) -> Vec<(i32, i32, i32, i32, bool)> {
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        let st = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        let ns = |k: &str| st.lines().find_map(|l| l.strip_prefix(k)).and_then(|v| v.split_whitespace().last()?.parse::<i32>().ok()).unwrap_or(-1);
        let ppid_host = st.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|v| v.trim().parse::<i32>().ok()).unwrap_or(0);
        let ppid = if p == root { 0 } else { std::fs::read_to_string(format!("/proc/{ppid_host}/status")).unwrap_or_default().lines().find_map(|l| l.strip_prefix("NSpid:")).and_then(|v| v.split_whitespace().last()?.parse().ok()).unwrap_or(-1) };
        let zombie = st.lines().any(|l| l.starts_with("State:") && l.contains('Z'));
        out.push((ns("NSpid:"), ppid, ns("NSpgid:"), ns("NSsid:"), zombie));
        for t in std::fs::read_dir(format!("/proc/{p}/task")).into_iter().flatten().flatten() {
            let c = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            stack.extend(c.split_whitespace().filter_map(|v| v.parse::<i32>().ok()));
        }
    }
    out.sort_unstable();
    out
}

fn criu(args: &[&str], dir: &Path) {
    let st = Command::new(CRIU).args(args).arg("-D").arg(dir).args(["-v4", "-o", "criu.log"]).status().expect("run criu");
    if !st.success() {
        let log = std::fs::read_to_string(dir.join("criu.log")).unwrap_or_default();
        panic!("criu {args:?} failed:\n{log}");
    }
}

struct Killer(i32);
impl Drop for Killer {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-9", &self.0.to_string()]).status();
    }
}

/// Start, dump (optionally --leave-running), restore; `cycles` times.
fn scenario(name: &str, leave_running: bool, cycles: usize) {
    require!(why_not_here());
    let tmp = std::env::temp_dir().join(format!("criu-rs-test-{name}-{leave_running}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let work = tmp.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let bin = build(name, &tmp);
    let mut launcher = common::only_stdio(&mut Command::new("setsid"))
        .args(["unshare", "--pid", "--fork"])
        .arg(&bin)
        .current_dir(&work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start fixture");
    // reap the launcher whenever it exits
    std::thread::spawn(move || launcher.wait());
    wait_until("ready", Duration::from_secs(10), || work.join("ready").exists());
    let log = work.join("progress.log");
    wait_until("first tick", Duration::from_secs(10), || last_tick(&log) >= 1);
    let mut pid = fixture_pid(&bin);
    let shape = tree_shape(pid);
    for c in 0..cycles {
        let mut guard = Killer(pid);
        let dir = tmp.join(format!("img{c}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut args = vec!["dump", "-t"];
        let p = pid.to_string();
        args.push(&p);
        if leave_running {
            args.push("--leave-running");
        }
        criu(&args, &dir);
        if leave_running {
            let t = last_tick(&log);
            wait_until("ticks after --leave-running", Duration::from_secs(10), || last_tick(&log) > t);
            drop(guard);
            std::thread::sleep(Duration::from_millis(200));
        } else {
            guard.0 = 0;
            std::mem::forget(guard);
            assert!(!Path::new(&format!("/proc/{pid}/exe")).exists() || std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.contains(") Z")).unwrap_or(true), "dumped task still alive");
        }
        let t = last_tick(&log);
        let mut cmd = Command::new(CRIU);
        cmd.args(["restore", "-d", "-v4", "-o", "restore.log", "-D"]).arg(&dir).current_dir(&work);
        let st = cmd.status().unwrap();
        assert!(st.success(), "restore failed:\n{}", std::fs::read_to_string(dir.join("restore.log")).unwrap_or_default());
        wait_until("ticks after restore", Duration::from_secs(10), || last_tick(&log) > t + 3);
        pid = fixture_pid(&bin);
        assert_eq!(tree_shape(pid), shape, "round {c}: the restored tree's shape (pid, ppid, pgid, sid, zombie) differs");
    }
    last_tick(&log);
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    let _ = std::fs::remove_dir_all(&tmp);
}

/// `tree`: a writer and a reader joined by a pipe (the reader dies on a
/// lost or repeated number, and the root then FAILs), a grandchild, an
/// unreaped zombie (exit 42), progress.log inherited by all.
#[test]
fn tree_dump_restore_twice() {
    scenario("tree", false, 2);
}

#[test]
fn tree_leave_running() {
    scenario("tree", true, 1);
}

/// `mem`: MAP_SHARED anonymous memory a child writes and its parent
/// checks, besides private and file mappings.
#[test]
fn mem_dump_restore_twice() {
    scenario("mem", false, 2);
}

#[test]
fn mem_leave_running() {
    scenario("mem", true, 1);
}

#[test]
fn counter_dump_restore() {
    scenario("counter", false, 1);
}

#[test]
fn counter_leave_running() {
    scenario("counter", true, 1);
}

#[test]
fn threads_dump_restore_twice() {
    scenario("threads", false, 2);
}

#[test]
fn threads_leave_running() {
    scenario("threads", true, 1);
}

#[test]
fn signals_dump_restore_twice() {
    scenario("signals", false, 2);
}

#[test]
fn signals_leave_running() {
    scenario("signals", true, 1);
}
