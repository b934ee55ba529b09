//! Programs of managed runtimes, built and started as a user would: a Go
//! program (goroutines spinning with no syscall, preempted by the
//! runtime's SIGURG; a collected heap) and a Java program (the JVM's own
//! threads, two computing threads of ours, a churning heap). Each checks
//! its own state every tick (`tests/progs/gotick.go`, `JavaTick.java`).
//! Dumped (twice in a row, then once with `--leave-running`) and restored
//! by our `criu`, each must tick on with no FAIL, its thread count kept.
//! Started as pid 1 of a pid namespace of its own (`unshare --pid --fork`),
//! so the restore has its pids free. Needs root, go, javac/java, unshare.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// pid 1 of its namespace working in `work` (this test's program).
fn init_in(work: &Path) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()).find(|&p| {
        let st = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        st.lines().any(|l| l.starts_with("NSpid:") && l.split_whitespace().count() > 2 && l.split_whitespace().last() == Some("1"))
            && std::fs::read_link(format!("/proc/{p}/cwd")).is_ok_and(|c| c == work)
            && !st.lines().any(|l| l.starts_with("State:") && l.contains('Z'))
    })
}

fn threads(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0)
}

/// Run `argv` in `work` as pid 1 of a new pid namespace, then dump and
/// restore it (two rounds, then a `--leave-running` dump), checking it
/// ticks on after each.
fn rounds(tmp: &Path, work: &Path, argv: &[&str]) {
    let mut cmd = Command::new("unshare");
    only_stdio(&mut cmd).args(["--pid", "--fork", "setsid"]).args(argv).current_dir(work);
    let mut starter = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::spawn(move || starter.wait());
    let log = work.join("progress.log");
    wait_until("first ticks", Duration::from_secs(60), || last_tick(&log) >= 3);
    let mut pid = init_in(work).expect("the program as pid 1 of its namespace");
    let n_threads = threads(pid);
    assert!(n_threads >= 3, "a runtime with {n_threads} threads only");
    struct Kill(PathBuf);
    impl Drop for Kill {
        fn drop(&mut self) {
            if let Some(p) = init_in(&self.0) {
                let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
            }
        }
    }
    let _kill = Kill(work.to_path_buf());
    for round in 1..=3 {
        let leave = round == 3;
        let img = tmp.join(format!("img{round}"));
        std::fs::create_dir_all(&img).unwrap();
        let mut args = vec!["dump", "-t"];
        let ps = pid.to_string();
        args.push(&ps);
        if leave {
            args.push("--leave-running");
        }
        criu_ok(Path::new(CRIU), &args, &img, "dump.log");
        if !leave {
            wait_until("the dumped program gone", Duration::from_secs(10), || init_in(work).is_none());
            let st = Command::new(CRIU).args(["restore", "-d", "-v4", "-o", "restore.log", "-D"]).arg(&img).current_dir(work).status().unwrap();
            assert!(st.success(), "round {round}: restore failed:\n{}", std::fs::read_to_string(img.join("restore.log")).unwrap_or_default());
            pid = init_in(work).expect("the restored program");
        }
        // (past a 20-tick progress check of every thread of ours)
        let t = last_tick(&log);
        wait_until(&format!("ticks after round {round}"), Duration::from_secs(30), || last_tick(&log) >= t + 21);
        assert_eq!(threads(pid), n_threads, "round {round}: threads kept");
    }
}

#[test]
fn go_program_goes_on_after_restore() {
    require!(why_not_root().or_else(|| why_not_tools(&["go", "unshare", "setsid"])));
    let tmp = test_dir("go-java-go");
    let work = tmp.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/progs/gotick.go");
    let bin = build_go(&tmp, &src);
    rounds(&tmp, &work, &[bin.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn java_program_goes_on_after_restore() {
    require!(why_not_root().or_else(|| why_not_tools(&["javac", "java", "unshare", "setsid"])));
    let tmp = test_dir("go-java-java");
    let work = tmp.join("work");
    let classes = tmp.join("classes");
    std::fs::create_dir_all(&work).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/progs/JavaTick.java");
    let out = Command::new("javac").arg("-d").arg(&classes).arg(&src).output().expect("javac");
    assert!(out.status.success(), "javac: {}", String::from_utf8_lossy(&out.stderr));
    // the serial collector: fewer threads, the same JVM otherwise
    rounds(&tmp, &work, &["java", "-Xmx256m", "-XX:+UseSerialGC", "-cp", classes.to_str().unwrap(), "JavaTick"]);
    let _ = std::fs::remove_dir_all(&tmp);
}
