//! PIDs with real processes in the host pid namespace (the root was not
//! pid 1 of its own namespace): restore gives the dumped pid back through
//! clone3's set_tid, and refuses cleanly when that pid is taken.
//! Needs root, gcc, setsid; otherwise skips with the reason, or fails under
//! CI=true.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

fn reaped(pid: i32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// `NSpid` of a process as seen from here: one entry = our pid namespace.
fn nspid(pid: i32) -> Vec<i32> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    st.lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|v| v.split_whitespace().filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_default()
}

fn tids(pid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    v.sort_unstable();
    v
}

fn same_pid(name: &str) {
    require!(why_not_here());
    let tmp = test_dir(&format!("pids-same-{name}"));
    let criu = private_criu(&tmp);
    let mut fx = Fixture::start(name, &tmp, Ns::Host);
    let pid = fx.pid;
    assert_eq!(nspid(pid), vec![pid], "fixture must run in our pid namespace");
    let tids0 = tids(pid);
    let img = tmp.join("img");
    std::fs::create_dir_all(&img).unwrap();
    let p = pid.to_string();
    criu_ok(&criu, &["dump", "-t", &p], &img, "dump.log");
    wait_until("the dumped process reaped", Duration::from_secs(5), || reaped(pid));
    let t = fx.tick();
    let mut cmd = std::process::Command::new(&criu);
    cmd.args(["restore", "-d", "-v4", "-o", "restore.log", "-D"]).arg(&img).current_dir(&fx.work);
    assert!(cmd.status().unwrap().success(), "restore failed:\n{}", std::fs::read_to_string(img.join("restore.log")).unwrap_or_default());
    wait_until("ticks after restore", Duration::from_secs(15), || fx.tick() > t + 3);
    fx.refind();
    assert_eq!(fx.pid, pid, "restored with another pid");
    assert_eq!(nspid(pid), vec![pid], "restored into another pid namespace");
    assert_eq!(tids(pid), tids0, "threads restored with other tids");
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn host_pidns_restore_gets_the_same_pid() {
    same_pid("counter");
}

#[test]
fn host_pidns_restore_gets_the_same_tids() {
    same_pid("threads");
}

#[test]
fn restore_refused_while_the_pid_is_in_use() {
    require!(why_not_here());
    let tmp = test_dir("pids-in-use");
    let criu = private_criu(&tmp);
    let fx = Fixture::start("counter", &tmp, Ns::Host);
    let img = tmp.join("img");
    std::fs::create_dir_all(&img).unwrap();
    let p = fx.pid.to_string();
    criu_ok(&criu, &["dump", "-t", &p, "--leave-running"], &img, "dump.log");
    let (st, log) = criu_env(&criu, &["restore", "-d"], &img, "restore.log", &[]);
    assert_eq!(st.code(), Some(1), "restore over a live pid must fail with 1:\n{log}");
    let want = format!("pid {} of the image is in use by fx-counter", fx.pid);
    assert!(log.contains(&want), "error should say {want:?}:\n{log}");
    // nothing half-restored; the original untouched
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(live_with_exe(&fx.bin), vec![fx.pid], "only the original may run");
    assert!(live_with_exe(&criu).is_empty(), "a restore child is left");
    fx.ticks_on(3, "after the refused restore");
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// `dump -t TID` with the id of a thread that is not the process's main
/// thread is refused naming the process, and the program runs on (before:
/// /proc/TID answered, so the thread was taken for a process of its own,
/// dumped as one, and the whole process killed).
#[test]
fn thread_id_is_not_taken_for_a_process() {
    require!(why_not_here());
    let tmp = test_dir("pids-thread-id");
    let criu = private_criu(&tmp);
    let fx = Fixture::start("threads", &tmp, Ns::Host);
    let tid = *tids(fx.pid).iter().find(|&&t| t != fx.pid).expect("the fixture has threads");
    let img = tmp.join("img");
    std::fs::create_dir_all(&img).unwrap();
    let (st, log) = criu_env(&criu, &["dump", "-t", &tid.to_string()], &img, "dump.log", &[]);
    assert_eq!(st.code(), Some(1), "a dump of a thread id must fail with 1:\n{log}");
    let want = format!("{tid} is a thread of process {}, not a process", fx.pid);
    assert!(log.contains(&want), "error should say {want:?}:\n{log}");
    fx.ticks_on(3, "after the refused dump");
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}
