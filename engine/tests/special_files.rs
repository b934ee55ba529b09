//! fds of special files (`tests/progs/specialfd.c` holds one on fd 10 and
//! checks every tick that it is still that file):
//!
//! - an O_PATH|O_NOFOLLOW fd of a symlink that is still there: dumped and
//!   restored by ours (the restored fd is the symlink itself: readlinkat
//!   of it gives its target), and both ways with upstream 4.2;
//! - fds of a FIFO that was unlinked, a directory that was removed, a
//!   device node that was unlinked, a symlink that was unlinked (upstream
//!   4.2 writes these as ghost files carrying mode, rdev or the link's
//!   target; not done here yet): our dump refuses each by name, naming
//!   the fd, the process and the path, and the program runs on.
//!
//! Needs root, gcc, setsid.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn upstream() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/upstream-criu/criu-4.2")
}

fn start(tmp: &Path, mode: &str) -> Fixture {
    let work = tmp.join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("mode"), mode).unwrap();
    Fixture::start_ours("specialfd", tmp, Ns::Host)
}

#[test]
fn o_path_symlink_fd_restores_both_ways() {
    require!(why_not_here().or_else(|| (!upstream().exists()).then(|| format!("{} not found", upstream().display()))));
    let tmp = test_dir("special-files-symlink");
    let mut fx = start(&tmp, "sym");
    let steps: [(&Path, &Path, &str); 3] = [(Path::new(CRIU), Path::new(CRIU), "ours"), (Path::new(CRIU), &upstream(), "ours -> upstream"), (&upstream(), Path::new(CRIU), "upstream -> ours")];
    for (k, (dumper, restorer, what)) in steps.iter().enumerate() {
        let img = tmp.join(format!("img{k}"));
        std::fs::create_dir_all(&img).unwrap();
        criu_ok(dumper, &["dump", "-t", &fx.pid.to_string()], &img, "dump.log");
        let t = fx.tick();
        let st = Command::new(restorer).args(["restore", "-d", "-v4", "-o", "restore.log", "-D"]).arg(&img).current_dir(&fx.work).status().unwrap();
        assert!(st.success(), "{what}: {}", std::fs::read_to_string(img.join("restore.log")).unwrap_or_default());
        wait_until(&format!("ticks after {what}"), Duration::from_secs(15), || fx.tick() > t + 3);
        fx.refind();
    }
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn deleted_special_files_are_refused_by_name() {
    require!(why_not_here());
    for (mode, name, kind) in [("fifo", "fifo", "a deleted FIFO"), ("dir", "dir", "a deleted directory"), ("cdev", "cdev", "a deleted character device"), ("symdel", "sym", "a deleted symlink")] {
        let tmp = test_dir(&format!("special-files-{mode}"));
        let fx = start(&tmp, mode);
        let img = tmp.join("img");
        std::fs::create_dir_all(&img).unwrap();
        let (st, log) = criu_env(Path::new(CRIU), &["dump", "-t", &fx.pid.to_string()], &img, "dump.log", &[]);
        assert_eq!(st.code(), Some(1), "{mode}: {log}");
        let path = fx.work.join(name);
        let want = format!("fd 10 of {} is {} (deleted), {kind}", fx.pid, path.display());
        assert!(log.contains(&want), "{mode}: not refused by name ({want:?}):\n{log}");
        fx.ticks_on(2, &format!("after the refused dump of {mode}"));
        drop(fx);
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
