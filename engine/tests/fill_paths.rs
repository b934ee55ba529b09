//! The ways restore fills private memory give the same running process:
//! UFFDIO_COPY (the default) from the mapped pages file, from plain reads
//! of it into a small buffer, or from O_DIRECT reads of it
//! (`CRIU_RS_FILL_READ=mmap|pread|direct`; a warm restore reads with
//! pread, cold restores of 128 MiB and more read directly), the target's
//! own preadv, and writes through
//! /proc/PID/mem (`CRIU_RS_FILL=uffd|preadv|mem`). The counter fixture
//! checks all of its 8 MiB every tick. Needs root, gcc, unshare; otherwise
//! skips with the reason, or fails under CI=true.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

/// "Restored N pages (U by userfaultfd, P by the target's preadv)".
fn counts(log: &str) -> (u64, u64, u64) {
    let l = log.lines().find(|l| l.contains("Restored ") && l.contains("by userfaultfd")).unwrap_or_else(|| panic!("no fill line in:\n{log}"));
    let nums: Vec<u64> = l.split(|c: char| !c.is_ascii_digit()).filter_map(|x| x.parse().ok()).collect();
    // the timestamp's two numbers come first
    let n = nums.len();
    (nums[n - 3], nums[n - 2], nums[n - 1])
}

#[test]
fn every_fill_path_restores_a_ticking_process() {
    require!(why_not_here());
    let tmp = test_dir("fill-paths");
    let criu = private_criu(&tmp);
    let mut fx = Fixture::start("counter", &tmp, Ns::OwnPidNs);
    let img = tmp.join("img");
    std::fs::create_dir_all(&img).unwrap();
    let dumped = fx.pid;
    criu_ok(&criu, &["dump", "-t", &fx.pid.to_string()], &img, "dump.log");
    wait_until("dumped process gone", Duration::from_secs(5), || !Path::new(&format!("/proc/{dumped}")).exists());
    for mode in ["uffd", "uffd-pread", "uffd-direct", "preadv", "mem"] {
        let env: &[(&str, &str)] = match mode {
            "uffd" => &[("CRIU_RS_FILL", "uffd"), ("CRIU_RS_FILL_READ", "mmap")],
            "uffd-pread" => &[("CRIU_RS_FILL", "uffd"), ("CRIU_RS_FILL_READ", "pread")],
            "uffd-direct" => &[("CRIU_RS_FILL", "uffd"), ("CRIU_RS_FILL_READ", "direct")],
            m => &[("CRIU_RS_FILL", m)],
        };
        let (st, log) = criu_env(&criu, &["restore", "-d"], &img, &format!("restore-{mode}.log"), env);
        assert!(st.success(), "restore with {mode}:\n{log}");
        let (total, by_uffd, by_preadv) = counts(&log);
        let direct = log.contains("by userfaultfd from O_DIRECT reads");
        let cached = log.contains("by userfaultfd from reads of the cached pages files");
        match mode {
            "uffd" => assert!(by_uffd >= 2048 && !direct && !cached, "{mode}: the 8 MiB buffer must go through userfaultfd from the mapping ({by_uffd} of {total})"),
            "uffd-pread" => assert!(by_uffd >= 2048 && cached, "{mode}: the 8 MiB buffer must go through userfaultfd from reads of the pages file ({by_uffd} of {total}):\n{log}"),
            "uffd-direct" => {
                assert!(by_uffd >= 2048, "{mode}: the 8 MiB buffer must go through userfaultfd ({by_uffd} of {total})");
                // a file system without O_DIRECT makes it fall back, and says so
                assert!(direct || log.contains("no O_DIRECT reads of"), "{mode}: neither read directly nor said why not:\n{log}");
                if !direct {
                    eprintln!("NOTE fill paths: the image directory's file system refuses O_DIRECT; the mapping was used");
                }
            }
            "preadv" => assert!(by_uffd == 0 && by_preadv > 0, "{mode}: {by_uffd}/{by_preadv} of {total}"),
            _ => assert!(by_uffd == 0 && by_preadv == 0, "{mode}: {by_uffd}/{by_preadv} of {total}"),
        }
        fx.ticks_on(3, &format!("after a restore filled by {mode}"));
        fx.refind();
        let p = fx.pid;
        let _ = std::process::Command::new("kill").args(["-9", &p.to_string()]).status();
        wait_until("restored process gone", Duration::from_secs(5), || !Path::new(&format!("/proc/{p}")).exists());
    }
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}
