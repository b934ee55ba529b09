//! `criu tfork` of programs of managed runtimes, started as a user would
//! in the host's pid namespace, each ticking into ./progress.log (which
//! the source and its clones share, as they share the cwd): a Go program
//! (`progs/gotick.go`: goroutines spinning with no syscall, preempted by
//! the runtime's SIGURG), a node program (`progs/nodetick.js`: V8's heap,
//! libuv's epoll set, eventfds and pipes, a timer) and a Java program
//! (`progs/JavaTick.java`). After `--copies 2`, every tick from then on
//! must be logged by three processes, no FAIL line, every clone alive.
//!
//! What each needed:
//! - Go: its runtime signals each thread by the thread id it keeps
//!   (`m.procid`); a fork-made clone's threads have new ids, so its busy
//!   goroutines were never preempted and its main goroutine never ticked
//!   again. It is cloned by restore (the clones keep the ids in a pid
//!   namespace of their own), and the log says why.
//! - node: V8 marks its heap MADV_DONTFORK, which a fork leaves out (the
//!   clones crashed in `v8::Context::Enter`); libuv's epoll set, eventfds
//!   and pipes are the process's own and are copied into each clone.
//!
//! Needs root and go / node / javac+java; otherwise skips with the
//! reason, or fails under CI=true.

mod common;

use common::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The number of `tick N ok` lines for each N; panics on a FAIL line.
fn tick_counts(log: &Path) -> HashMap<u64, usize> {
    let s = std::fs::read_to_string(log).unwrap_or_default();
    let fails: Vec<&str> = s.lines().filter(|l| l.contains("FAIL")).collect();
    assert!(fails.is_empty(), "FAIL lines in {}:\n{}", log.display(), fails.join("\n"));
    let mut m = HashMap::new();
    for l in s.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if let ["tick", n, "ok"] = w[..] {
            if let Ok(n) = n.parse() {
                *m.entry(n).or_insert(0) += 1;
            }
        }
    }
    m
}

fn last(log: &Path) -> u64 {
    tick_counts(log).keys().copied().max().unwrap_or(0)
}

/// The processes working in `work` (the source, its clones, the helpers
/// of a restore: all killed by [`Run`]'s drop).
fn procs_in(work: &Path) -> Vec<i32> {
    let Ok(d) = std::fs::read_dir("/proc") else { return Vec::new() };
    d.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| std::fs::read_link(format!("/proc/{p}/cwd")).is_ok_and(|c| c == work))
        .collect()
}

struct Run {
    work: PathBuf,
    child: Child,
    clones: Vec<i32>,
}

impl Drop for Run {
    fn drop(&mut self) {
        for p in procs_in(&self.work) {
            // SAFETY: kill(2) of a process working in this test's own directory.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // the fork-made clones are this process's children (CLONE_PARENT)
        for &c in &self.clones {
            // SAFETY: waitpid(2) of one pid; WNOHANG, never another test's child.
            unsafe { libc::waitpid(c, std::ptr::null_mut(), libc::WNOHANG) };
        }
    }
}

/// Start `argv` in `tmp/work`, tfork it with `--copies 2`, and check that
/// every later tick is logged three times; returns the tfork log.
fn clones_tick(tmp: &Path, argv: &[&str]) -> String {
    let work = tmp.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let log = work.join("progress.log");
    let child = only_stdio(&mut Command::new(argv[0]))
        .args(&argv[1..])
        .current_dir(&work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {argv:?}: {e}"));
    let pid = child.id() as i32;
    let mut run = Run { work: work.clone(), child, clones: Vec::new() };
    wait_until("first ticks", Duration::from_secs(60), || last(&log) >= 3);
    let tlog = tmp.join("tfork.log");
    let out = Command::new(CRIU)
        .args(["tfork", "-t", &pid.to_string(), "--copies", "2", "-D"])
        .arg(tmp)
        .args(["-v4", "-o"])
        .arg(&tlog)
        .stdin(Stdio::null())
        .output()
        .expect("run criu tfork");
    let mut text = std::fs::read_to_string(&tlog).unwrap_or_default();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "tfork of {argv:?} failed:\n{text}");
    run.clones = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert_eq!(run.clones.len(), 2, "{text}");
    let t0 = last(&log);
    // past a 20-tick progress check of the Go and Java programs' threads,
    // by all three (a process may lag the others by a few ticks)
    let by_all = || {
        let counts = tick_counts(&log);
        (t0 + 20..t0 + 24).all(|t| counts.get(&t).copied().unwrap_or(0) >= 3)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !by_all() {
        assert!(std::time::Instant::now() < deadline, "ticks {}..{} not logged by the source and both clones:\n{text}", t0 + 20, t0 + 24);
        std::thread::sleep(Duration::from_millis(100));
    }
    for &c in &run.clones {
        assert!(alive(c), "clone {c} of {argv:?} died");
    }
    assert!(alive(pid), "the source {pid} died");
    text
}

#[test]
fn go_program_clones_tick() {
    require!(why_not_root().or_else(|| why_not_tools(&["go"])));
    let tmp = test_dir("tfork-rt-go");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/progs/gotick.go");
    let bin = build_go(&tmp, &src);
    let log = clones_tick(&tmp, &[bin.to_str().unwrap()]);
    assert!(log.contains("is a Go program with"), "the log says why it was cloned by restore:\n{log}");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn node_program_clones_tick() {
    require!(why_not_root().or_else(|| why_not_tools(&["node"])));
    let tmp = test_dir("tfork-rt-node");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/progs/nodetick.js");
    let log = clones_tick(&tmp, &["node", src.to_str().unwrap()]);
    assert!(log.contains("marked MADV_DONTFORK"), "V8's heap is MADV_DONTFORK:\n{log}");
    assert!(log.contains("its own copies of"), "libuv's objects copied into the clones:\n{log}");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn java_program_clones_tick() {
    require!(why_not_root().or_else(|| why_not_tools(&["javac", "java"])));
    let tmp = test_dir("tfork-rt-java");
    let classes = tmp.join("classes");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/progs/JavaTick.java");
    let out = Command::new("javac").arg("-d").arg(&classes).arg(&src).output().expect("javac");
    assert!(out.status.success(), "javac: {}", String::from_utf8_lossy(&out.stderr));
    clones_tick(&tmp, &["java", "-Xmx256m", "-XX:+UseSerialGC", "-cp", classes.to_str().unwrap(), "JavaTick"]);
    let _ = std::fs::remove_dir_all(&tmp);
}
