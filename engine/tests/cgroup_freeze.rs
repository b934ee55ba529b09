//! `criu dump --freeze-cgroup PATH` with the cgroup v2 freezer
//! (cgroup.freeze) and the v1 freezer (freezer.state): the threads fixture
//! is moved into a fresh cgroup, dumped with --leave-running (it must tick
//! on, and the cgroup must be thawed again), then dumped for real and
//! restored. A cgroup that does not hold the process is refused, and left
//! thawed with the process running. Needs root, gcc, unshare and the
//! freezer mounts; otherwise `require!`/`skip` skip with the reason, or
//! fail under CI=true.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn thawed(cg: &Path) -> bool {
    if cg.join("cgroup.events").exists() {
        std::fs::read_to_string(cg.join("cgroup.events")).unwrap().lines().any(|l| l.trim() == "frozen 0")
    } else {
        std::fs::read_to_string(cg.join("freezer.state")).unwrap().trim() == "THAWED"
    }
}

struct Cgroup(PathBuf);
impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn scenario(kind: &str, parent: &str) {
    require!(why_not_here());
    let want = if kind == "v2" { "cgroup.freeze" } else { "freezer.state" };
    if !Path::new(parent).is_dir() || (kind == "v1" && !Path::new(parent).join(want).exists() && !Path::new(parent).join("tasks").exists()) {
        skip(format!("freeze-cgroup {kind}: no freezer hierarchy at {parent}"));
        return;
    }
    let cg = Cgroup(Path::new(parent).join(format!("criu-rs-test-{kind}-{}", std::process::id())));
    std::fs::create_dir_all(&cg.0).unwrap();
    if !cg.0.join(want).exists() {
        skip(format!("freeze-cgroup {kind}: {} has no {want}", cg.0.display()));
        return;
    }
    let tmp = test_dir(&format!("freeze-cgroup-{kind}"));
    let criu = private_criu(&tmp);
    let mut fx = Fixture::start("threads", &tmp, Ns::OwnPidNs);
    std::fs::write(cg.0.join("cgroup.procs"), fx.pid.to_string()).unwrap();
    let cgs = cg.0.to_str().unwrap();

    // A cgroup without the process: refused, thawed, the process runs on.
    let other = Cgroup(Path::new(parent).join(format!("criu-rs-test-{kind}-empty-{}", std::process::id())));
    std::fs::create_dir_all(&other.0).unwrap();
    let img0 = tmp.join("img0");
    std::fs::create_dir_all(&img0).unwrap();
    let (st, log) = criu_env(&criu, &["dump", "-t", &fx.pid.to_string(), "--freeze-cgroup", other.0.to_str().unwrap()], &img0, "dump.log", &[]);
    assert_eq!(st.code(), Some(1), "{log}");
    assert!(log.contains("is not in cgroup"), "{log}");
    assert!(thawed(&other.0), "the refused cgroup must be thawed again");
    fx.ticks_on(2, "after the refused dump");

    // --leave-running: runs on, cgroup thawed.
    let img1 = tmp.join("img1");
    std::fs::create_dir_all(&img1).unwrap();
    criu_ok(&criu, &["dump", "-t", &fx.pid.to_string(), "--leave-running", "--freeze-cgroup", cgs], &img1, "dump.log");
    assert!(thawed(&cg.0), "cgroup must be thawed after the dump");
    fx.ticks_on(3, "after dump --leave-running --freeze-cgroup");

    // A real dump, then restore.
    let img2 = tmp.join("img2");
    std::fs::create_dir_all(&img2).unwrap();
    let dumped = fx.pid;
    criu_ok(&criu, &["dump", "-t", &fx.pid.to_string(), "--freeze-cgroup", cgs], &img2, "dump.log");
    assert!(thawed(&cg.0));
    wait_until("dumped process gone", Duration::from_secs(5), || !Path::new(&format!("/proc/{dumped}")).exists());
    criu_ok(&criu, &["restore", "-d"], &img2, "restore.log");
    fx.ticks_on(3, "after restore");
    fx.refind();
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn freeze_cgroup_v2() {
    scenario("v2", "/sys/fs/cgroup/unified");
}

#[test]
fn freeze_cgroup_v1() {
    scenario("v1", "/sys/fs/cgroup/freezer");
}
