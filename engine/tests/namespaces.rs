//! Namespaces, `--root` and process-wide state, with tests/progs/nsstate.c
//! (built here with gcc): a process in namespaces the restore would not
//! give back is refused by name and keeps running; `--root` resolves the
//! image's paths inside the root (a symlink in it to an absolute path
//! stays in it); membarrier registrations, PR_SET_THP_DISABLE and loginuid
//! survive dump + restore. Needs root, gcc, unshare, setsid; otherwise SKIP.
//!
//! `CRIU_RS_TEST_ENGINE=PATH` runs another build of the engine (to show a
//! test fails without a fix).

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn engine(dir: &Path) -> PathBuf {
    engine_under_test(dir)
}

fn build_nsstate(dir: &Path) -> PathBuf {
    build_test_prog("nsstate", dir)
}

/// A running nsstate; killed on drop.
struct Prog {
    bin: PathBuf,
    work: PathBuf,
    pid: i32,
}

impl Prog {
    /// `setsid <launcher...> nsstate <args...>` in `dir/work`.
    fn start(dir: &Path, launcher: &[&str], args: &[&str]) -> Prog {
        let work = dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let bin = build_nsstate(dir);
        let mut cmd = Command::new("setsid");
        let mut child = only_stdio(&mut cmd)
            .args(launcher)
            .arg(&bin)
            .args(args)
            .current_dir(&work)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nsstate");
        std::thread::spawn(move || child.wait());
        let log = work.join("progress.log");
        wait_until("ready", Duration::from_secs(10), || {
            work.join("ready").exists() || std::fs::read_to_string(&log).unwrap_or_default().contains("FAIL")
        });
        wait_until("first tick", Duration::from_secs(10), || last_tick(&log) >= 1);
        let pids = live_with_exe(&bin);
        assert_eq!(pids.len(), 1, "one nsstate expected, found {pids:?}");
        Prog { bin, work, pid: pids[0] }
    }

    fn log(&self) -> PathBuf {
        self.work.join("progress.log")
    }

    fn ticks_on(&self, n: u64, what: &str) {
        let t = last_tick(&self.log());
        wait_until(&format!("{n} ticks {what}"), Duration::from_secs(15), || last_tick(&self.log()) >= t + n);
    }
}

impl Drop for Prog {
    fn drop(&mut self) {
        for p in live_with_exe(&self.bin) {
            let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
        }
    }
}

/// Dump of `launcher nsstate args` must fail naming every one of `names`,
/// write no image set, and leave the program running.
fn refused(tag: &str, launcher: &[&str], args: &[&str], names: &[&str]) {
    test_support::require!(common::why_not_here());
    let tmp = test_dir(&format!("ns-refused-{tag}"));
    let criu = engine(&tmp);
    let prog = Prog::start(&tmp, launcher, args);
    let img = tmp.join("img");
    std::fs::create_dir_all(&img).unwrap();
    let (st, log) = criu_env(&criu, &["dump", "-t", &prog.pid.to_string()], &img, "dump.log", &[]);
    assert_eq!(st.code(), Some(1), "dump of a process in {tag} must fail:\n{log}");
    for n in names {
        assert!(log.contains(n), "the error should name {n:?}:\n{log}");
    }
    assert!(!img.join("inventory.img").exists(), "a refused dump left an image set");
    prog.ticks_on(3, "after the refused dump");
    assert_eq!(live_with_exe(&prog.bin), vec![prog.pid], "the program must run on");
    drop(prog);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// (own uts and ipc namespaces are carried: tests/uts_ipc.rs; a mount
/// namespace too, tests/mount_ns.rs, but a copy of the host's holds
/// mounts of host file systems, each refused naming it and --external)
#[test]
fn host_mounts_of_a_mount_namespace_are_refused() {
    refused("uts-ipc-mnt", &["unshare", "--uts", "--ipc", "--mount"], &["plain"], &["mount ", "--external mnt["]);
}

// (a network namespace of its own is carried: tests/net_ns.rs)

#[test]
fn user_namespace_is_refused() {
    refused("user", &["unshare", "--user", "--map-root-user"], &["plain"], &["user (user:["]);
}

#[test]
fn cgroup_namespace_is_refused() {
    refused("cgroup", &["unshare", "--cgroup"], &["plain"], &["cgroup (cgroup:["]);
}

#[test]
fn pending_time_namespace_is_refused() {
    refused("time-for-children", &[], &["unshare-time"], &["time_for_children"]);
}

#[test]
fn pid_namespace_member_that_is_not_its_init_is_refused() {
    // sh is pid 1 of the new namespace; nsstate is pid 2 in it
    refused("pid-member", &["unshare", "--pid", "--fork", "sh", "-c", "\"$0\" \"$@\"; exit"], &["plain"], &["pid namespace", "NSpid"]);
}

fn inode(p: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap())
}

/// `restore --root R`: the image's paths are resolved inside R. The held
/// file's path is, inside R, a symlink to an absolute path: the restore
/// must open R + that path, not the host's file of that name (which the
/// string prefix R + path reached, and whose contents the program sees
/// change: FAIL).
#[test]
fn root_symlink_to_an_absolute_path_resolves_inside_the_root() {
    test_support::require!(common::why_not_here());
    let tmp = test_dir("ns-root");
    let criu = engine(&tmp);
    let work = tmp.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let data = work.join("data");
    std::fs::write(&data, "inside-the-root!").unwrap();
    let prog = Prog::start(&tmp, &["unshare", "--pid", "--fork"], &["hold", data.to_str().unwrap()]);
    let img = tmp.join("img");
    std::fs::create_dir_all(&img).unwrap();
    criu_ok(&criu, &["dump", "-t", &prog.pid.to_string()], &img, "dump.log");
    wait_until("the dumped program gone", Duration::from_secs(5), || live_with_exe(&prog.bin).is_empty());
    // the root: the program, its working directory and log, and the held
    // file's path as a symlink to an absolute path
    let root = tmp.join("root");
    let inr = |p: &Path| root.join(p.strip_prefix("/").unwrap());
    std::fs::create_dir_all(inr(&work)).unwrap();
    std::fs::copy(&prog.bin, inr(&prog.bin)).unwrap();
    std::fs::write(inr(&prog.log()), "").unwrap();
    std::fs::create_dir_all(root.join("dev")).unwrap();
    assert!(Command::new("mknod").args(["-m", "666"]).arg(root.join("dev/null")).args(["c", "1", "3"]).status().unwrap().success());
    let target = tmp.join("outside");
    std::os::unix::fs::symlink(&target, inr(&data)).unwrap();
    std::fs::write(inr(&target), "inside-the-root!").unwrap();
    // the same absolute path on the host: same size and mode, other bytes
    std::fs::write(&target, "host-file-bytes!").unwrap();
    let (st, log) = criu_env(&criu, &["restore", "-d", "--root", root.to_str().unwrap()], &img, "restore.log", &[]);
    assert!(st.success(), "restore --root failed:\n{log}");
    let rbin = inr(&prog.bin);
    let rlog = inr(&prog.log());
    let kill = || {
        for p in live_with_exe(&rbin) {
            let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
        }
    };
    let ok = std::panic::catch_unwind(|| {
        wait_until("ticks in the root", Duration::from_secs(10), || last_tick(&rlog) >= 3);
        let pids = live_with_exe(&rbin);
        assert_eq!(pids.len(), 1, "one restored program expected: {pids:?}");
        let fds: Vec<u64> = std::fs::read_dir(format!("/proc/{}/fd", pids[0]))
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::metadata(e.path()).ok())
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .collect();
        assert!(fds.contains(&inode(&inr(&target))), "the held file is not the one inside the root");
        assert!(!fds.contains(&inode(&target)), "the restore opened the host's file outside the root");
    });
    kill();
    drop(prog);
    if let Err(e) = ok {
        std::panic::resume_unwind(e);
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Dump + restore of `launcher nsstate args`; the program must tick on
/// with no FAIL (it checks its own state every tick).
fn roundtrip(tag: &str, launcher: &[&str], args: &[&str]) {
    test_support::require!(common::why_not_here());
    let tmp = test_dir(&format!("ns-rt-{tag}"));
    let criu = engine(&tmp);
    let mut prog = Prog::start(&tmp, launcher, args);
    // twice: what a restore made must dump and restore again
    for round in 0..2 {
        let img = tmp.join(format!("img-{round}"));
        std::fs::create_dir_all(&img).unwrap();
        criu_ok(&criu, &["dump", "-t", &prog.pid.to_string()], &img, "dump.log");
        wait_until("the dumped program gone", Duration::from_secs(5), || live_with_exe(&prog.bin).is_empty());
        let mut cmd = Command::new(&criu);
        cmd.args(["restore", "-d", "-v4", "-o", "restore.log", "-D"]).arg(&img).current_dir(&prog.work);
        assert!(cmd.status().unwrap().success(), "restore failed:\n{}", std::fs::read_to_string(img.join("restore.log")).unwrap_or_default());
        prog.ticks_on(5, "after restore");
        let pids = live_with_exe(&prog.bin);
        assert_eq!(pids.len(), 1, "the restored program must run");
        prog.pid = pids[0];
    }
    drop(prog);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn membarrier_registrations_survive() {
    roundtrip("membarrier", &["unshare", "--pid", "--fork"], &["membarrier"]);
}

#[test]
fn thp_disable_survives() {
    roundtrip("thp", &["unshare", "--pid", "--fork"], &["thp"]);
}

#[test]
fn loginuid_survives() {
    roundtrip("loginuid", &["unshare", "--pid", "--fork"], &["loginuid", "4321"]);
}

/// A time namespace of its own (clocks 100000 s ahead of the host's) is
/// made again on restore, with the dumped clocks continuing: restored into
/// the host's, CLOCK_MONOTONIC and CLOCK_BOOTTIME jump back (FAIL).
#[test]
fn own_time_namespace_clocks_continue() {
    roundtrip(
        "timens",
        &["unshare", "--pid", "--time", "--fork", "--monotonic", "100000", "--boottime", "100000"],
        &["monotonic"],
    );
}

/// The same in the host pid namespace (the restore child is forked with
/// the dumped pid, and enters the new time namespace itself).
#[test]
fn own_time_namespace_in_the_host_pid_namespace() {
    roundtrip("timens-hostpid", &["unshare", "--time", "--fork", "--monotonic", "-50", "--boottime", "7"], &["monotonic"]);
}

/// `restore --root R` of a file unlinked while open: the ghost is
/// recreated (and unlinked again) inside R, through the root fd.
#[test]
fn root_ghost_file_is_made_inside_the_root() {
    test_support::require!(common::why_not_here());
    let tmp = test_dir("ns-root-ghost");
    let criu = engine(&tmp);
    let work = tmp.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let data = work.join("data");
    std::fs::write(&data, "a ghost's bytes.").unwrap();
    let prog = Prog::start(&tmp, &["unshare", "--pid", "--fork"], &["hold", data.to_str().unwrap()]);
    std::fs::remove_file(&data).unwrap();
    let img = tmp.join("img");
    std::fs::create_dir_all(&img).unwrap();
    criu_ok(&criu, &["dump", "-t", &prog.pid.to_string()], &img, "dump.log");
    wait_until("the dumped program gone", Duration::from_secs(5), || live_with_exe(&prog.bin).is_empty());
    let root = tmp.join("root");
    let inr = |p: &Path| root.join(p.strip_prefix("/").unwrap());
    std::fs::create_dir_all(inr(&work)).unwrap();
    std::fs::copy(&prog.bin, inr(&prog.bin)).unwrap();
    std::fs::write(inr(&prog.log()), "").unwrap();
    std::fs::create_dir_all(root.join("dev")).unwrap();
    assert!(Command::new("mknod").args(["-m", "666"]).arg(root.join("dev/null")).args(["c", "1", "3"]).status().unwrap().success());
    // the host's directory of the ghost is gone: only the root's exists
    std::fs::remove_dir_all(&work).unwrap();
    let (st, log) = criu_env(&criu, &["restore", "-d", "--root", root.to_str().unwrap()], &img, "restore.log", &[]);
    let rbin = inr(&prog.bin);
    let ok = std::panic::catch_unwind(|| {
        assert!(st.success(), "restore --root failed:\n{log}");
        wait_until("ticks in the root", Duration::from_secs(10), || last_tick(&inr(&prog.log())) >= 3);
        let left: Vec<_> = std::fs::read_dir(inr(&work)).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("progress.log")], "the ghost must be unlinked again");
    });
    for p in live_with_exe(&rbin) {
        let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
    }
    drop(prog);
    if let Err(e) = ok {
        std::panic::resume_unwind(e);
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Upstream CRIU 4.2 names the image of a time namespace of the task's own
/// `timens-<its id>.img` (criu's own is timens-0.img): its dump of such a
/// process restores here with the clocks continuing. Needs
/// ../shared/upstream-criu/criu-4.2, otherwise SKIP.
#[test]
fn upstream_image_of_an_own_time_namespace_restores() {
    test_support::require!(common::why_not_here());
    let upstream = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/upstream-criu/criu-4.2");
    if !upstream.exists() {
        test_support::skip(format!("no upstream criu at {}", upstream.display()));
        return;
    }
    let tmp = test_dir("ns-upstream-timens");
    let criu = engine(&tmp);
    // upstream wants the session leader inside the pid namespace
    let launcher = ["unshare", "--pid", "--time", "--fork", "--monotonic", "100000", "--boottime", "100000", "setsid"];
    let prog = Prog::start(&tmp, &launcher, &["monotonic"]);
    let img = tmp.join("img");
    std::fs::create_dir_all(&img).unwrap();
    criu_ok(&upstream, &["dump", "-t", &prog.pid.to_string()], &img, "dump.log");
    let names: Vec<String> = std::fs::read_dir(&img).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().any(|n| n.starts_with("timens-") && n != "timens-0.img"), "upstream wrote no timens-<id>.img: {names:?}");
    wait_until("the dumped program gone", Duration::from_secs(5), || live_with_exe(&prog.bin).is_empty());
    let mut cmd = Command::new(&criu);
    cmd.args(["restore", "-d", "-v4", "-o", "restore.log", "-D"]).arg(&img).current_dir(&prog.work);
    assert!(cmd.status().unwrap().success(), "restore failed:\n{}", std::fs::read_to_string(img.join("restore.log")).unwrap_or_default());
    prog.ticks_on(5, "after restore");
    drop(prog);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// An image (from elsewhere) whose task was in a mount namespace other than
/// the dumping criu's, without that namespace's image, is refused by
/// restore, naming it: the restore would put it in the host's. (uts and ipc ones are made again:
/// tests/uts_ipc.rs.) The ids image is edited with Debian's crit
/// (otherwise SKIP).
#[test]
fn restore_refuses_an_image_with_a_namespace_of_its_own() {
    test_support::require!(common::why_not_here());
    test_support::require!(test_support::why_not_tool("crit"));
    let tmp = test_dir("ns-restore-check");
    let criu = engine(&tmp);
    let prog = Prog::start(&tmp, &["unshare", "--pid", "--fork"], &["plain"]);
    let img = tmp.join("img");
    std::fs::create_dir_all(&img).unwrap();
    criu_ok(&criu, &["dump", "--leave-running", "-t", &prog.pid.to_string()], &img, "dump.log");
    let ids = img.join("ids-1.img");
    let json = tmp.join("ids.json");
    assert!(Command::new("/usr/bin/crit").args(["decode", "-i"]).arg(&ids).arg("-o").arg(&json).status().unwrap().success());
    let text = std::fs::read_to_string(&json).unwrap();
    let key = "\"mnt_ns_id\": ";
    let at = text.find(key).expect("mnt_ns_id in ids") + key.len();
    let end = at + text[at..].find(|c: char| !c.is_ascii_digit()).unwrap();
    std::fs::write(&json, format!("{}{}{}", &text[..at], 999, &text[end..])).unwrap();
    assert!(Command::new("/usr/bin/crit").args(["encode", "-i"]).arg(&json).arg("-o").arg(&ids).status().unwrap().success());
    let (st, log) = criu_env(&criu, &["restore", "-d"], &img, "restore.log", &[]);
    assert_eq!(st.code(), Some(1), "restore of a task in its own mount namespace must fail:\n{log}");
    assert!(log.contains("mountpoints-999.img") && log.contains("mnt_ns_id"), "the error should name the mount namespace's image:\n{log}");
    prog.ticks_on(2, "after the refused restore");
    assert_eq!(live_with_exe(&prog.bin), vec![prog.pid], "only the original may run");
    drop(prog);
    let _ = std::fs::remove_dir_all(&tmp);
}
