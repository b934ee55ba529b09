//! A restore right after a dump, in the host pid namespace, gets the
//! dumped pid: the killed source must not still hold it as a zombie. The
//! test process is the program's parent (and, as a child subreaper, the
//! restored program's) and reaps it only every 100 ms, as a busy parent
//! would: a dump that returns before the pid is free makes the next
//! restore fail with "pid N of the image is in use". 20 rounds, each
//! restore started the moment the dump returns. Needs root, gcc, setsid;
//! otherwise SKIP.
//!
//! `CRIU_RS_TEST_ENGINE=PATH` runs another build of the engine (to show
//! the test fails without the fix).

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[test]
fn restore_right_after_dump_gets_the_pid_20_rounds() {
    rounds("nsstate", |dir| (build_test_prog("nsstate", dir), vec!["plain"]));
}

/// The same with the threads fixture: every thread's tid must be free too.
#[test]
fn restore_right_after_dump_gets_the_tids_20_rounds() {
    rounds("threads", |dir| (build("threads", dir), vec![]));
}

fn rounds(tag: &str, make: impl FnOnce(&Path) -> (std::path::PathBuf, Vec<&'static str>)) {
    test_support::require!(common::why_not_here());
    let tmp = test_dir(&format!("ns-pid-reuse-{tag}"));
    let criu = engine_under_test(&tmp);
    let work = tmp.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let (bin, args) = make(&tmp);
    // SAFETY: an integer-only prctl on this test process: restored programs
    // (orphaned when `criu restore -d` exits) become our children.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }, 0);
    // setsid runs the program itself (the child is no group leader)
    let child = only_stdio(&mut Command::new("setsid"))
        .arg(&bin)
        .args(&args)
        .current_dir(&work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    std::mem::forget(child); // reaped below, by pid
    let stop = Arc::new(AtomicBool::new(false));
    let reaper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut st = 0;
                // SAFETY: waitpid with a valid out-pointer; only this pid is reaped.
                unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let log = work.join("progress.log");
    wait_until("first tick", Duration::from_secs(10), || last_tick(&log) >= 1);
    assert_eq!(live_with_exe(&bin), vec![pid]);
    let mut failure = None;
    for round in 0..20 {
        let img = tmp.join(format!("img-{round}"));
        std::fs::create_dir_all(&img).unwrap();
        let (st, dlog) = criu_env(&criu, &["dump", "-t", &pid.to_string()], &img, "dump.log", &[]);
        if !st.success() {
            failure = Some(format!("round {round}: dump failed:\n{dlog}"));
            break;
        }
        let (st, rlog) = criu_env(&criu, &["restore", "-d"], &img, "restore.log", &[]);
        if !st.success() || rlog.contains("in use") {
            failure = Some(format!("round {round}: restore failed:\n{rlog}"));
            break;
        }
        let t = last_tick(&log);
        wait_until("a tick after restore", Duration::from_secs(10), || last_tick(&log) > t);
        assert_eq!(live_with_exe(&bin), vec![pid], "round {round}: restored with another pid");
    }
    stop.store(true, Ordering::Relaxed);
    reaper.join().unwrap();
    for p in live_with_exe(&bin) {
        let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
    }
    if let Some(f) = failure {
        panic!("{f}");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
