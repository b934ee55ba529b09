//! A dynamically linked, multi-threaded interpreter: Debian's python3
//! running three threads and a checker loop (the checker writes `tick N ok`
//! only if every thread made progress since the last tick, within 2 s, and
//! a 1 MiB buffer still has its hash). Dumped and restored plain, with
//! `--leave-running`, and twice in a row. Needs root, unshare, setsid and
//! /usr/bin/python3; otherwise skips with the reason, or fails under CI=true.

mod common;

use common::{last_tick, require, wait_until, why_not_root, why_not_tools, CRIU};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const PYTHON: &str = "/usr/bin/python3";

const SCRIPT: &str = r#"
import hashlib, os, threading, time
counts = [0, 0, 0]
def worker(i):
    while True:
        counts[i] += 1
        time.sleep(0.005)
for i in range(3):
    threading.Thread(target=worker, args=(i,), daemon=True).start()
data = bytearray(os.urandom(1 << 20))
digest = hashlib.sha256(data).hexdigest()
open("ready", "w").close()
tick, last = 0, list(counts)
while True:
    time.sleep(0.1)
    tick += 1
    # Every thread must make progress; give them up to 2 s (right after a
    # restore the main thread's sleep may end at once: its deadline passed
    # while the process was checkpointed).
    deadline = time.monotonic() + 2
    moved = all(c > l for c, l in zip(counts, last))
    while not moved and time.monotonic() < deadline:
        time.sleep(0.01)
        moved = all(c > l for c, l in zip(counts, last))
    same = hashlib.sha256(data).hexdigest() == digest
    with open("progress.log", "a") as f:
        if moved and same:
            f.write("tick %d ok\n" % tick)
        else:
            f.write("FAIL tick %d threads %s -> %s, data %s\n" % (tick, last, counts, "ok" if same else "CHANGED"))
    last = list(counts)
"#;

fn criu(args: &[&str], dir: &Path, log: &str) {
    let st = Command::new(CRIU).args(args).arg("-D").arg(dir).args(["-v4", "-o", log]).status().expect("run criu");
    assert!(st.success(), "criu {args:?} failed:\n{}", std::fs::read_to_string(dir.join(log)).unwrap_or_default());
}

fn kill(pid: i32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}

/// Host pid of the interpreter: the child of `unshare`.
fn child_of(pid: u32) -> i32 {
    let mut found = 0;
    wait_until("python started", Duration::from_secs(10), || {
        let s = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        found = s.split_whitespace().next().and_then(|x| x.parse().ok()).unwrap_or(0);
        found > 0
    });
    found
}

fn threads(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0)
}

fn scenario(name: &str, leave_running: bool, cycles: usize) {
    require!(why_not_root().or_else(|| why_not_tools(&["unshare", "setsid", PYTHON])));
    let tmp = std::env::temp_dir().join(format!("criu-rs-python-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let work = tmp.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let mut launcher = common::only_stdio(&mut Command::new("unshare"))
        .args(["--pid", "--fork", "setsid", PYTHON, "-c", SCRIPT])
        .current_dir(&work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start python");
    let mut pid = child_of(launcher.id());
    std::thread::spawn(move || launcher.wait());
    let log = work.join("progress.log");
    wait_until("first ticks", Duration::from_secs(20), || last_tick(&log) >= 2);
    assert_eq!(threads(pid), 4, "python should run 4 threads");
    for c in 0..cycles {
        let dir = tmp.join(format!("img{c}"));
        std::fs::create_dir_all(&dir).unwrap();
        let p = pid.to_string();
        let mut args = vec!["dump", "-t", &p];
        if leave_running {
            args.push("--leave-running");
        }
        criu(&args, &dir, "dump.log");
        if leave_running {
            // the original goes on after the dump...
            let t = last_tick(&log);
            wait_until("ticks after --leave-running", Duration::from_secs(10), || last_tick(&log) > t + 2);
            // ...and is then replaced by the restored copy
            kill(pid);
        }
        wait_until("dumped process gone", Duration::from_secs(10), || !Path::new(&format!("/proc/{pid}")).exists());
        let t = last_tick(&log);
        let pidfile = dir.join("restored.pid");
        criu(&["restore", "-d", "--pidfile", pidfile.to_str().unwrap()], &dir, "restore.log");
        pid = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        wait_until(&format!("ticks after restore {c}"), Duration::from_secs(20), || last_tick(&log) > t + 3);
        assert_eq!(threads(pid), 4, "restored python should run 4 threads");
    }
    kill(pid);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn python_threads_dump_restore() {
    scenario("plain", false, 1);
}

#[test]
fn python_threads_leave_running() {
    scenario("leave-running", true, 1);
}

#[test]
fn python_threads_two_cycles() {
    scenario("two-cycles", false, 2);
}
