//! The pipelined tree restore (restore/workers.rs, `Pool::start_fed`):
//! with the pages files in the page cache and two CPUs, the engine's
//! worker threads set each process up as soon as it has reported, while
//! the root still forks the others. Real processes: tools/bench/treehog.c,
//! a root and 16 children of 1 MiB each, every process checking its
//! memory every tick.
//!
//! - Every restore child keeping its end of the report pipe after its
//!   report (`report-pipe-held:fail`, as a process seized between its
//!   report and its close would): the restore still ends, the tree ticks
//!   on with its memory as it was, and no restored process holds an fd it
//!   did not have when dumped (the pipe was closed by injection).
//! - The first process is set up before the last one has reported (the
//!   log's order), and with `CRIU_RS_RESTORE_PIPELINE=off` not.
//!
//! Needs root, gcc, unshare, setsid and two CPUs.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const CHILDREN: usize = 16;

fn why_not_two_cpus() -> Option<String> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (n < 2).then(|| format!("needs 2 CPUs for the restore's worker threads ({n} here)"))
}

/// Each process of `h` and its fd numbers, by its pid in the tree's
/// namespace.
fn fds(h: &TreeHog) -> BTreeMap<i32, Vec<i32>> {
    live_with_exe(&h.bin)
        .into_iter()
        .map(|p| {
            let mut v: Vec<i32> = std::fs::read_dir(format!("/proc/{p}/fd")).map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect()).unwrap_or_default();
            v.sort_unstable();
            (ns_pid(p).unwrap_or(0), v)
        })
        .collect()
}

/// Read the image set's pages files, so they are in the page cache.
fn warm(img: &Path) {
    for e in std::fs::read_dir(img).unwrap().flatten() {
        if e.file_name().to_str().is_some_and(|n| n.starts_with("pages-")) {
            let _ = std::fs::read(e.path()).unwrap();
        }
    }
}

/// A -v4 restore of `img` with `env`: its log.
fn restore(h: &TreeHog, img: &Path, env: &[(&str, &str)]) -> String {
    warm(img);
    let mut cmd = Command::new(CRIU);
    cmd.args(["restore", "-d", "-v4", "-o", "restore.log", "-D"]).arg(img).current_dir(&h.work);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let st = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status().expect("criu restore");
    let log = std::fs::read_to_string(img.join("restore.log")).unwrap_or_default();
    assert!(st.success(), "restore failed:\n{log}");
    log
}

/// Whether the log shows a process set up ("restore gadget at") before
/// every process had reported.
fn overlapped(log: &str) -> bool {
    let first_setup = log.find("restore gadget at");
    let all_reported = log.find("processes prepared their fds and process state");
    matches!((first_setup, all_reported), (Some(a), Some(b)) if a < b)
}

#[test]
fn tree_is_set_up_as_its_processes_report() {
    require!(why_not_here());
    require!(why_not_two_cpus());
    let tmp = test_dir("restore-pipeline");
    let h = TreeHog::start(&tmp, CHILDREN, 1, false);
    let img = tmp.join("img");
    std::fs::create_dir_all(&img).unwrap();
    let root = live_with_exe(&h.bin).into_iter().find(|&p| ns_pid(p) == Some(1)).expect("treehog's root");
    let before = fds(&h);
    assert_eq!(before.len(), CHILDREN + 1, "the tree's processes: {before:?}");
    criu_ok(Path::new(CRIU), &["dump", "-t", &root.to_string()], &img, "dump.log");
    h.gone();

    // the restore children keep the report pipe: closed by injection
    let log = restore(&h, &img, &[("CRIU_RS_FAULT_AT", "report-pipe-held:fail")]);
    assert!(log.contains("engine threads as they report"), "the tree was not set up as its processes reported:\n{log}");
    let t = h.ticks();
    wait_until("ticks after the restore", Duration::from_secs(15), || h.ticks() >= t + 3);
    assert!(h.fails().is_empty(), "the restored tree found wrong memory: {:?}", h.fails());
    assert_eq!(fds(&h), before, "the restored processes' fds differ from the dumped ones (the report pipe left open?)");
    h.kill_all();

    // set up while the root still forks (timing: the first of three tries)
    let mut seen = false;
    for _ in 0..3 {
        let t = h.ticks();
        let log = restore(&h, &img, &[]);
        assert!(log.contains("engine threads as they report"), "not pipelined:\n{log}");
        wait_until("a tick after the restore", Duration::from_secs(15), || h.ticks() > t);
        h.kill_all();
        if overlapped(&log) {
            seen = true;
            break;
        }
    }
    assert!(seen, "in three restores no process was set up before every process had reported");
    let log = restore(&h, &img, &[("CRIU_RS_RESTORE_PIPELINE", "off")]);
    assert!(!log.contains("as they report") && !overlapped(&log), "CRIU_RS_RESTORE_PIPELINE=off still pipelined:\n{log}");
    let t = h.ticks();
    wait_until("ticks after the restore", Duration::from_secs(15), || h.ticks() >= t + 2);
    assert!(h.fails().is_empty(), "the restored tree found wrong memory: {:?}", h.fails());
    drop(h);
    let _ = std::fs::remove_dir_all(&tmp);
}
