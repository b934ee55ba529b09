//! Cgroup membership (cgroup.img, `--manage-cgroups`): a process in a
//! `pids` and a `cpu` cgroup of its own (v1 hierarchies of this machine),
//! dumped and restored by ours and both ways with upstream 4.2, the
//! cgroups made again with their properties when missing; the modes
//! (ignore, none, props, soft, full, strict), a failed restore removing
//! what it made, hostile images, a thread in a cgroup of its own refused.

mod common;

use common::*;
use std::path::{Path, PathBuf};

/// Why these tests can't run: the v1 `pids` and `cpu` hierarchies are
/// not mounted where this machine kind mounts them.
fn why_not() -> Option<String> {
    why_not_here().or_else(|| {
        ["/sys/fs/cgroup/pids/cgroup.procs", "/sys/fs/cgroup/cpu/cgroup.procs"]
            .iter()
            .find(|p| !Path::new(p).exists())
            .map(|p| format!("{p} missing (cgroup v1 pids and cpu hierarchies)"))
    })
}

/// Test cgroups named `criu-rs-TAG-PID` in the `pids` and `cpu`
/// hierarchies, removed on drop (after the test's processes are killed).
struct TestCg {
    name: String,
}

impl TestCg {
    fn new(tag: &str) -> TestCg {
        let cg = TestCg { name: format!("criu-rs-{tag}-{}", std::process::id()) };
        cg.remove();
        cg
    }

    fn dir(&self, ctl: &str) -> PathBuf {
        PathBuf::from(format!("/sys/fs/cgroup/{ctl}/{}", self.name))
    }

    /// Made with pids.max and cpu.shares.
    fn make(&self, pids_max: &str, shares: &str) {
        for ctl in ["pids", "cpu"] {
            std::fs::create_dir_all(self.dir(ctl)).unwrap();
        }
        std::fs::write(self.dir("pids").join("pids.max"), pids_max).unwrap();
        std::fs::write(self.dir("cpu").join("cpu.shares"), shares).unwrap();
    }

    fn enter(&self, pid: i32) {
        for ctl in ["pids", "cpu"] {
            std::fs::write(self.dir(ctl).join("cgroup.procs"), pid.to_string()).unwrap();
        }
    }

    fn prop(&self, ctl: &str, p: &str) -> String {
        std::fs::read_to_string(self.dir(ctl).join(p)).map(|s| s.trim().to_string()).unwrap_or_else(|e| format!("<{e}>"))
    }

    fn exists(&self) -> bool {
        self.dir("pids").exists() || self.dir("cpu").exists()
    }

    /// (only once no process is in them)
    fn remove(&self) {
        for ctl in ["pids", "cpu"] {
            let d = self.dir(ctl);
            for _ in 0..50 {
                if !d.exists() || std::fs::remove_dir(&d).is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }

    /// `pid` is in both, per /proc/PID/cgroup.
    fn assert_member(&self, pid: i32) {
        let m = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        for ctl in ["pids", "cpu"] {
            assert!(m.lines().any(|l| l.ends_with(&format!(":{ctl}:/{}", self.name))), "{pid} not in {ctl}:/{}:\n{m}", self.name);
        }
    }
}

impl Drop for TestCg {
    fn drop(&mut self) {
        self.remove();
    }
}

fn restore(criu: &Path, img: &Path, extra: &[&str], log: &str) -> (std::process::ExitStatus, String) {
    let mut args = vec!["restore", "-d"];
    args.extend_from_slice(extra);
    criu_env(criu, &args, img, log, &[])
}

/// Ours: dump writes cgroup.img (crit reads it), the cgroups removed,
/// restore makes them again with their properties and puts the process
/// in them; then upstream restores ours and we restore upstream's, each
/// time with the cgroups gone first.
#[test]
fn membership_and_properties_survive_ours_and_upstream() {
    require!(why_not_upstream().or_else(why_not));
    // (its session inside its pid namespace: upstream dumps it too)
    let mut fx = OwnNsProg::start("cg-both", "nsstate", &["plain"]);
    let tmp = fx.dir.clone();
    let criu = private_criu(&tmp);
    let cg = TestCg::new("cgboth");
    cg.make("77", "512");
    cg.enter(fx.pid);
    let check = |fx: &mut OwnNsProg, what: &str| {
        fx.refind();
        cg.assert_member(fx.pid);
        assert_eq!(cg.prop("pids", "pids.max"), "77", "{what}");
        assert_eq!(cg.prop("cpu", "cpu.shares"), "512", "{what}");
        fx.ticks_on(3, what);
    };
    // ours -> ours
    let img = fx.images("img");
    criu_ok(&criu, &["dump", "-t", &fx.pid.to_string()], &img, "dump.log");
    fx.gone();
    assert!(img.join("cgroup.img").exists(), "no cgroup.img for a process in cgroups of its own");
    if why_not_tool("crit").is_none() {
        let out = std::process::Command::new("crit").args(["decode", "-i"]).arg(img.join("cgroup.img")).output().unwrap();
        let json = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && json.contains(&cg.name) && json.contains("pids.max"), "crit: {json}");
    }
    cg.remove();
    assert!(!cg.exists());
    let (st, log) = restore(&criu, &img, &[], "restore.log");
    assert!(st.success(), "{log}");
    check(&mut fx, "after our restore");
    // upstream's dump -> ours
    let up = fx.images("up");
    upstream_ok(&["dump", "-t", &fx.pid.to_string()], &up, "dump.log");
    fx.gone();
    cg.remove();
    let (st, log) = restore(&criu, &up, &[], "restore.log");
    assert!(st.success(), "{log}");
    check(&mut fx, "after our restore of upstream's images");
    // ours -> upstream's restore
    let img2 = fx.images("img2");
    criu_ok(&criu, &["dump", "-t", &fx.pid.to_string()], &img2, "dump.log");
    fx.gone();
    cg.remove();
    upstream_ok(&["restore", "-d"], &img2, "restore.log");
    check(&mut fx, "after upstream's restore of ours");
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// The modes: ignore writes no cgroup.img; none and props want the
/// cgroups to exist, strict wants them not to (each refusal leaves no
/// process and makes nothing); soft leaves an existing cgroup's
/// properties alone, full writes them; a restore failing after the
/// cgroups were made removes them; hostile cgroup.img and cg_set refused.
#[test]
fn modes_failures_and_hostile_images() {
    require!(why_not());
    let tmp = test_dir("cg-modes");
    let criu = private_criu(&tmp);
    let cg = TestCg::new("cgmodes");
    cg.make("61", "700");
    let mut fx = Fixture::start("counter", &tmp, Ns::OwnPidNs);
    cg.enter(fx.pid);
    let ign = tmp.join("ign");
    std::fs::create_dir_all(&ign).unwrap();
    criu_ok(&criu, &["dump", "-R", "--manage-cgroups=ignore", "-t", &fx.pid.to_string()], &ign, "dump.log");
    assert!(!ign.join("cgroup.img").exists(), "--manage-cgroups ignore wrote cgroup.img");
    let img = tmp.join("img");
    std::fs::create_dir_all(&img).unwrap();
    criu_ok(&criu, &["dump", "-t", &fx.pid.to_string()], &img, "dump.log");
    cg.remove();
    let none_left = |what: &str| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(live_with_exe(&fx.bin).is_empty(), "{what}: a process was left: {:?}", live_with_exe(&fx.bin));
    };
    for mode in ["none", "props"] {
        let (st, log) = restore(&criu, &img, &[&format!("--manage-cgroups={mode}")], &format!("restore-{mode}.log"));
        assert!(!st.success() && log.contains(&cg.name) && log.contains("does not exist"), "{mode}: {log}");
        none_left(mode);
        assert!(!cg.exists(), "--manage-cgroups {mode} made a cgroup");
    }
    // existing, with other properties
    cg.make("max", "1024");
    let (st, log) = restore(&criu, &img, &["--manage-cgroups=strict"], "restore-strict.log");
    assert!(!st.success() && log.contains(&cg.name) && log.contains("exists"), "strict: {log}");
    none_left("strict");
    let (st, log) = restore(&criu, &img, &[], "restore-soft.log");
    assert!(st.success(), "{log}");
    fx.refind();
    cg.assert_member(fx.pid);
    assert_eq!(cg.prop("pids", "pids.max"), "max", "soft changed an existing cgroup's pids.max");
    fx.ticks_on(2, "after the soft restore");
    let img2 = tmp.join("img2");
    std::fs::create_dir_all(&img2).unwrap();
    criu_ok(&criu, &["dump", "--manage-cgroups=full", "-t", &fx.pid.to_string()], &img2, "dump.log");
    // (img: pids.max 61, cpu.shares 700)
    let (st, log) = restore(&criu, &img, &["--manage-cgroups=full"], "restore-full.log");
    assert!(st.success(), "{log}");
    fx.refind();
    assert_eq!((cg.prop("pids", "pids.max"), cg.prop("cpu", "cpu.shares")), ("61".into(), "700".into()), "full did not write the properties");
    // a restore failing after the process was moved: the pidfile exists
    drop(fx);
    std::thread::sleep(std::time::Duration::from_millis(100));
    cg.remove();
    let pidfile = tmp.join("pidfile");
    std::fs::write(&pidfile, "x").unwrap();
    let (st, log) = restore(&criu, &img, &["--pidfile", pidfile.to_str().unwrap()], "restore-fail.log");
    assert!(!st.success(), "{log}");
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(!cg.exists(), "the failed restore left the cgroups it made:\n{log}");
    // hostile images: each refused naming the image and field, nothing made
    let bin = tmp.join("fx-counter");
    let hostile = |name: &str, edit: &dyn Fn(&mut images_proto::pb::CgroupEntry), want: &[&str]| {
        let bad = edited_image::<images_proto::pb::CgroupEntry>(&img, name, "cgroup.img", &images_proto::magic::CGROUP, |v| edit(&mut v[0]));
        let (st, log) = restore(&criu, &bad, &[], "restore.log");
        assert!(!st.success(), "{name}: restored:\n{log}");
        for w in want {
            assert!(log.contains(w), "{name}: the error should name {w:?}:\n{log}");
        }
        assert!(live_with_exe(&bin).is_empty(), "{name}: a process was left");
        assert!(!cg.exists(), "{name}: a cgroup was made");
    };
    let pids_dir = |e: &mut images_proto::pb::CgroupEntry| -> usize { e.controllers.iter().position(|c| c.cnames == ["pids"]).unwrap() };
    hostile(
        "dotdot",
        &|e| {
            let k = pids_dir(e);
            e.controllers[k].dirs[0].dir_name = "../../../tmp/x".into();
        },
        &["cgroup.img", "dir_name"],
    );
    hostile(
        "agent",
        &|e| {
            let k = pids_dir(e);
            e.controllers[k].dirs[0].properties.push(images_proto::pb::CgroupPropEntry { name: "release_agent".into(), value: "/tmp/x".into(), perms: None });
        },
        &["cgroup.img", "release_agent"],
    );
    hostile(
        "setpath",
        &|e| {
            let m = e.sets[0].ctls.iter_mut().find(|m| m.name == "pids").unwrap();
            m.path = "/a/../../b".into();
        },
        &["cgroup.img", "field path"],
    );
    hostile("dupset", &|e| e.sets.push(e.sets[0].clone()), &["cgroup.img", "field id"]);
    let nosets = edited_image::<images_proto::pb::CgroupEntry>(&img, "nosets", "cgroup.img", &images_proto::magic::CGROUP, |v| v[0].sets.clear());
    let (st, log) = restore(&criu, &nosets, &[], "restore.log");
    assert!(!st.success() && log.contains("cg_set") && log.contains("core-"), "{log}");
    assert!(live_with_exe(&bin).is_empty());
    let _ = std::fs::remove_dir_all(&tmp);
}

/// A thread moved into a cgroup of its own (v1 `tasks`): the dump is
/// refused naming the thread, and the program runs on.
#[test]
fn thread_in_its_own_cgroup_is_refused() {
    require!(why_not());
    let tmp = test_dir("cg-thread");
    let criu = private_criu(&tmp);
    let cg = TestCg::new("cgthread");
    cg.make("max", "1024");
    let fx = Fixture::start("threads", &tmp, Ns::Host);
    let tid: i32 = std::fs::read_dir(format!("/proc/{}/task", fx.pid))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .find(|&t| t != fx.pid)
        .expect("a second thread");
    std::fs::write(cg.dir("pids").join("tasks"), tid.to_string()).unwrap();
    let img = tmp.join("img");
    std::fs::create_dir_all(&img).unwrap();
    let (st, log) = criu_env(&criu, &["dump", "-t", &fx.pid.to_string()], &img, "dump.log", &[]);
    assert!(!st.success() && log.contains(&format!("thread {tid}")) && log.contains("cgroups of their own"), "{log}");
    assert!(!img.join("inventory.img").exists());
    fx.ticks_on(3, "after the refused dump");
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}
