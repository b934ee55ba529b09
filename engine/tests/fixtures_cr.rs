//! Real-process checkpoint/restore of the shared fixture programs: build
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

/// Pid (in our namespace) of the fixture: the child of `unshare`.
fn fixture_pid(bin: &Path) -> i32 {
    let mut found = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmd.split(|b| *b == 0).next() == Some(bin.as_os_str().as_encoded_bytes()) {
            found = found.max(pid);
        }
    }
    assert!(found > 0, "fixture {} not running", bin.display());
    found
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
    }
    last_tick(&log);
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    let _ = std::fs::remove_dir_all(&tmp);
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
