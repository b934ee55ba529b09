//! podman (4.3, runtime runc) pointed at our binary, unchanged: podman
//! finds criu through runc and runc through PATH, so our `criu` is put
//! first in PATH. `podman container checkpoint` and `restore` of a
//! busybox container: conmon holds the container's stdio pipes (runc's
//! RESTORE asks for them with `inherit_fd` {pipe:[INO], 1 and 2}) and
//! podman keeps its network namespace (DUMP `external`
//! `net[INO]:extRootNetNS`, RESTORE `inherit_fd` {extRootNetNS, N}).
//! After each restore the container's output goes on in `podman logs`,
//! numbered on, and it is in the same network namespace.
//!
//! The container's loop forks a `sleep` a tick: a child that exits
//! between the thaw of the `--freeze-cgroup` dump and its stop is no
//! member any more (this failed the dump before: "thread N exited while
//! being frozen").
//!
//! Needs root, podman, runc, busybox (podman needs `--ulimit` for nofile
//! and nproc here: no CAP_SYS_RESOURCE); otherwise skips with the reason,
//! or fails under CI=true.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn why_not() -> Option<String> {
    why_not_root().or_else(|| why_not_tools(&["podman", "runc", "busybox"]))
}

/// `podman ARGS` with our criu first in PATH: success and output.
fn podman(bin: &Path, args: &[&str]) -> (bool, String) {
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("podman").args(args).env("PATH", path).stdin(Stdio::null()).output().expect("run podman");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The `tick N` lines of `podman logs`.
fn ticks(bin: &Path, name: &str) -> Vec<u64> {
    podman(bin, &["logs", name]).1.lines().filter_map(|l| l.strip_prefix("tick ")?.trim().parse().ok()).collect()
}

fn init_pid(bin: &Path, name: &str) -> i32 {
    let (ok, out) = podman(bin, &["inspect", "-f", "{{.State.Pid}}", name]);
    assert!(ok, "podman inspect: {out}");
    out.trim().parse().unwrap_or_else(|_| panic!("no pid in {out:?}"))
}

fn netns(pid: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/net")).map(|l| l.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The container and image, removed on drop.
struct Cleanup {
    bin: PathBuf,
    name: String,
    image: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = podman(&self.bin, &["rm", "-f", &self.name]);
        let _ = podman(&self.bin, &["rmi", "-f", &self.image]);
    }
}

/// `podman container checkpoint --keep` then `restore --keep` of
/// `name` (runtime runc), the checkpoint with the criu of `dump` first in
/// PATH and the restore with `restore`'s: its log's ticks go on, numbered
/// on, at least 5 past the checkpoint's; the restored init's host pid.
fn checkpoint_and_restore(dump: &Path, restore: &Path, name: &str, round: usize) -> i32 {
    let (ok, out) = podman(dump, &["--runtime", "runc", "container", "checkpoint", "--keep", name]);
    assert!(ok, "round {round}: podman container checkpoint: {out}");
    let before = *ticks(dump, name).last().unwrap();
    let (ok, out) = podman(restore, &["--runtime", "runc", "container", "restore", "--keep", name]);
    assert!(ok, "round {round}: podman container restore: {out}");
    wait_until(&format!("round {round}: ticks after the restore"), Duration::from_secs(20), || ticks(restore, name).last().is_some_and(|&t| t >= before + 5));
    let t = ticks(restore, name);
    assert!(t.windows(2).all(|w| w[1] == w[0] + 1), "round {round}: the ticks go on, numbered on: {t:?}");
    init_pid(restore, name)
}

/// A directory holding `criu` as the binary at `criu`, for PATH.
fn criu_dir(tmp: &Path, name: &str, criu: &Path) -> PathBuf {
    let bin = tmp.join(name);
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(criu, bin.join("criu")).unwrap();
    bin
}

#[test]
fn podman_checkpoint_and_restore_with_our_criu() {
    require!(why_not());
    let tmp = test_dir("podman");
    // our criu as `criu`, first in PATH
    let bin = criu_dir(&tmp, "bin", Path::new(CRIU));
    let pid = std::process::id();
    let c = Cleanup { bin: bin.clone(), name: format!("criu-rs-podman-{pid}"), image: format!("localhost/criu-rs-bb-{pid}") };
    busybox_image(&tmp, &bin, &c.image);
    let lp = "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done";
    let run = ["--runtime", "runc", "run", "-d", "--name", &c.name, "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768", &c.image, "sh", "-c", lp];
    let (ok, out) = podman(&bin, &run);
    assert!(ok, "podman run: {out}");
    wait_until("ticks in podman logs", Duration::from_secs(20), || ticks(&bin, &c.name).len() >= 3);
    let ns0 = netns(init_pid(&bin, &c.name));
    for round in 0..2 {
        let p = checkpoint_and_restore(&bin, &bin, &c.name, round);
        // (podman may make the namespace anew for a restore: the one it names now)
        let (ok, key) = podman(&bin, &["inspect", "-f", "{{.NetworkSettings.SandboxKey}}", &c.name]);
        assert!(ok && key.trim().starts_with('/'), "podman inspect: {key}");
        let want = format!("net:[{}]", std::fs::metadata(key.trim()).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap_or(0));
        assert_eq!(netns(p), want, "round {round}: the restored container is in podman's network namespace {} (before the checkpoints: {ns0})", key.trim());
        let fd1 = std::fs::read_link(format!("/proc/{p}/fd/1")).unwrap();
        assert!(fd1.to_string_lossy().starts_with("pipe:["), "round {round}: its stdout is conmon's pipe: {fd1:?}");
    }
    drop(c);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// A busybox image (`podman import` of a root file system with `sh`),
/// named `image`.
fn busybox_image(tmp: &Path, bin: &Path, image: &str) {
    let rootfs = tmp.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy(std::fs::canonicalize("/usr/bin/busybox").unwrap(), rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
    let tar = tmp.join("rootfs.tar");
    assert!(Command::new("tar").arg("-C").arg(&rootfs).arg("-cf").arg(&tar).arg(".").status().unwrap().success());
    let (ok, out) = podman(bin, &["import", tar.to_str().unwrap(), image]);
    assert!(ok, "podman import: {out}");
}

/// Type `line` into container `name`'s terminal (`podman attach` with
/// its stdin a pipe) and wait for its `got LINE` in `podman logs`.
fn type_line(bin: &Path, name: &str, line: &str) {
    use std::io::Write as _;
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut a = Command::new("podman").args(["attach", "--sig-proxy=false", name]).env("PATH", path).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("podman attach");
    a.stdin.as_mut().unwrap().write_all(format!("{line}\n").as_bytes()).unwrap();
    let want = format!("got {line}");
    wait_until(&format!("{want:?} in podman logs"), Duration::from_secs(20), || podman(bin, &["logs", name]).1.lines().any(|l| l.trim_end_matches('\r') == want));
    let _ = a.kill();
    let _ = a.wait();
}

/// A container with a terminal (`podman run -dit`): conmon holds the pty
/// master, the container's processes its slave (runc's console socket),
/// so the tree holds a slave whose master is outside it: runc sends
/// `orphan_pts_master`, our criu dumps the slave and at restore makes a
/// new pair whose master it hands to runc (notify `orphan-pts-master`),
/// which passes it to conmon. After each restore `podman logs` goes on,
/// numbered on, a line typed through `podman attach` reaches the
/// container's shell, and the container's init has the new slave on
/// fds 0-2 as its controlling terminal.
#[test]
fn podman_terminal_container_with_our_criu() {
    require!(why_not());
    let tmp = test_dir("podman-tty");
    let bin = criu_dir(&tmp, "bin", Path::new(CRIU));
    let pid = std::process::id();
    let c = Cleanup { bin: bin.clone(), name: format!("criu-rs-podman-tty-{pid}"), image: format!("localhost/criu-rs-bb-tty-{pid}") };
    busybox_image(&tmp, &bin, &c.image);
    let lp = "i=0; while true; do i=$((i+1)); echo tick $i; if read -t 0.2 l; then echo got $l; fi; done";
    let run = ["--runtime", "runc", "run", "-dit", "--name", &c.name, "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768", &c.image, "sh", "-c", lp];
    let (ok, out) = podman(&bin, &run);
    assert!(ok, "podman run -dit: {out}");
    wait_until("ticks in podman logs", Duration::from_secs(20), || ticks(&bin, &c.name).len() >= 3);
    type_line(&bin, &c.name, "before");
    for round in 0..2 {
        let p = checkpoint_and_restore(&bin, &bin, &c.name, round);
        use std::os::unix::fs::MetadataExt;
        let rdev = std::fs::metadata(format!("/proc/{p}/fd/0")).unwrap().rdev();
        assert!((136..=143).contains(&libc::major(rdev)), "round {round}: fd 0 of the restored init is a pty slave ({rdev:#x})");
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap();
        let tty: u64 = stat.rsplit_once(')').unwrap().1.split_whitespace().nth(4).unwrap().parse().unwrap();
        assert_eq!(tty, rdev, "round {round}: the slave is its controlling terminal");
        type_line(&bin, &c.name, &format!("after{round}"));
    }
    drop(c);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Both ways with upstream CRIU 4.2 under podman: the container
/// checkpointed with our criu first in PATH and restored with upstream's,
/// then checkpointed with upstream's and restored with ours. Upstream's
/// restore of ours failed before on the container's root directory
/// (busybox's 0555: "File . has bad mode 040555 (expect 040755)").
#[test]
fn podman_checkpoints_cross_engines_with_upstream() {
    require!(why_not().or_else(why_not_upstream));
    let tmp = test_dir("podman-x");
    let ours = criu_dir(&tmp, "bin", Path::new(CRIU));
    let theirs = criu_dir(&tmp, "bin-upstream", &upstream());
    let pid = std::process::id();
    let c = Cleanup { bin: ours.clone(), name: format!("criu-rs-podman-x-{pid}"), image: format!("localhost/criu-rs-bb-x-{pid}") };
    busybox_image(&tmp, &ours, &c.image);
    let lp = "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done";
    let run = ["--runtime", "runc", "run", "-d", "--name", &c.name, "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768", &c.image, "sh", "-c", lp];
    let (ok, out) = podman(&ours, &run);
    assert!(ok, "podman run: {out}");
    wait_until("ticks in podman logs", Duration::from_secs(20), || ticks(&ours, &c.name).len() >= 3);
    checkpoint_and_restore(&ours, &theirs, &c.name, 0);
    checkpoint_and_restore(&theirs, &ours, &c.name, 1);
    drop(c);
    let _ = std::fs::remove_dir_all(&tmp);
}
