//! fds of special files (`tests/progs/specialfd.c` holds one on fd 10 and
//! checks every tick that it is still that file: its type, a device's
//! number, a symlink's target through readlinkat of the fd itself):
//!
//! - fds of a directory that was removed, of a memory device node (1:3)
//!   that was unlinked, an O_PATH|O_NOFOLLOW fd of a symlink that was
//!   unlinked, of one still there, and two fds (O_RDWR, O_RDONLY) of a
//!   FIFO that was unlinked with bytes queued in it (the program checks
//!   every tick that exactly those are queued and that its fds read and
//!   write the FIFO; a child holds both fds too, and must share the FIFO
//!   with it after restore): dumped and restored by ours (twice, the fd shows
//!   `PATH (deleted)` again, nothing is left in the directory), and both
//!   ways with upstream 4.2 (ghost files carrying the mode, rdev or the
//!   link's target, as it writes them; a FIFO's ghost beside its FIFO
//!   entry and fifo-data); the FIFO with `--root` too (made, opened and
//!   unlinked inside the root);
//! - hostile ghost images (a FIFO ghost behind a regular file's entry, a
//!   FIFO's ghost of another mode or with contents, a device that is not a
//!   memory device, a symlink without a target, a directory with
//!   contents): refused naming the image.
//!
//! Needs root, gcc, setsid.

mod common;

use common::*;
use images_proto::magic as mg;
use images_proto::pb;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn start(tmp: &Path, mode: &str) -> Fixture {
    let work = tmp.join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("mode"), mode).unwrap();
    Fixture::start_ours("specialfd", tmp, Ns::Host)
}

fn fd10(pid: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/10")).map(|l| l.to_string_lossy().into_owned()).unwrap_or_default()
}

fn rounds(mode: &str, name: &str, deleted: bool) {
    let tmp = test_dir(&format!("special-files-{mode}"));
    let mut fx = start(&tmp, mode);
    let want = format!("{}{}", fx.work.join(name).display(), if deleted { " (deleted)" } else { "" });
    assert_eq!(fd10(fx.pid), want);
    let ours = Path::new(CRIU);
    let up = upstream();
    let steps: [(&Path, &Path, &str); 4] = [(ours, ours, "ours"), (ours, ours, "ours again"), (ours, &up, "ours -> upstream"), (&up, ours, "upstream -> ours")];
    for (k, (dumper, restorer, what)) in steps.iter().enumerate() {
        let img = tmp.join(format!("img{k}"));
        std::fs::create_dir_all(&img).unwrap();
        criu_ok(dumper, &["dump", "-t", &fx.pid.to_string()], &img, "dump.log");
        let t = fx.tick();
        let st = Command::new(restorer).args(["restore", "-d", "-v4", "-o", "restore.log", "-D"]).arg(&img).current_dir(&fx.work).status().unwrap();
        assert!(st.success(), "{mode}, {what}: {}", std::fs::read_to_string(img.join("restore.log")).unwrap_or_default());
        wait_until(&format!("ticks after {what}"), Duration::from_secs(15), || fx.tick() > t + 3);
        fx.refind();
        assert_eq!(fd10(fx.pid), want, "{mode}, {what}: fd 10");
        if mode == "fifo" {
            fifo_child_shares(fx.pid, &want, what);
        }
        let mut left: Vec<String> = std::fs::read_dir(&fx.work).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        let mut expect = vec!["mode".to_string(), "progress.log".into(), "ready".into()];
        if !deleted {
            expect.push(name.to_string());
            expect.sort();
        }
        assert_eq!(left, expect, "{mode}, {what}: what the restore left in the directory");
    }
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// The fifo mode's child holds the parent's FIFO on fds 10 and 11 (the
/// same inode), each shown as `want`.
fn fifo_child_shares(pid: i32, want: &str, what: &str) {
    use std::os::unix::fs::MetadataExt;
    let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let kids: Vec<&str> = kids.split_whitespace().collect();
    assert_eq!(kids.len(), 1, "{what}: the fixture's children: {kids:?}");
    let ino = |p: &str, fd: i32| std::fs::metadata(format!("/proc/{p}/fd/{fd}")).map(|m| m.ino()).unwrap_or(0);
    let parent = ino(&pid.to_string(), 10);
    assert_ne!(parent, 0, "{what}: fd 10 of {pid}");
    for fd in [10, 11] {
        let link = std::fs::read_link(format!("/proc/{}/fd/{fd}", kids[0])).map(|l| l.to_string_lossy().into_owned()).unwrap_or_default();
        assert_eq!(link, want, "{what}: fd {fd} of the child {}", kids[0]);
        assert_eq!(ino(kids[0], fd), parent, "{what}: fd {fd} of the child {} is not the parent's FIFO", kids[0]);
    }
    assert_eq!(ino(&pid.to_string(), 11), parent, "{what}: fd 11 of {pid} is not fd 10's FIFO");
}

#[test]
fn deleted_directory_fd_restores() {
    require!(why_not_here().or_else(|| (!upstream().exists()).then(|| format!("{} not found", upstream().display()))));
    rounds("dir", "dir", true);
}

#[test]
fn deleted_device_node_fd_restores() {
    require!(why_not_here().or_else(|| (!upstream().exists()).then(|| format!("{} not found", upstream().display()))));
    rounds("cdev", "cdev", true);
}

#[test]
fn deleted_symlink_o_path_fd_restores() {
    require!(why_not_here().or_else(|| (!upstream().exists()).then(|| format!("{} not found", upstream().display()))));
    rounds("symdel", "sym", true);
}

#[test]
fn symlink_o_path_fd_restores() {
    require!(why_not_here().or_else(|| (!upstream().exists()).then(|| format!("{} not found", upstream().display()))));
    rounds("sym", "sym", false);
}

#[test]
fn deleted_fifo_fd_restores() {
    require!(why_not_here().or_else(|| (!upstream().exists()).then(|| format!("{} not found", upstream().display()))));
    rounds("fifo", "fifo", true);
}

#[test]
fn hostile_special_ghosts_are_refused() {
    require!(why_not_here());
    let tmp = test_dir("special-files-hostile");
    for (mode, edits) in [
        (
            "cdev",
            vec![
                ("fifo-mode", libc::S_IFIFO | 0o640, None, None, None, "a FIFO ghost behind"),
                ("tty", libc::S_IFCHR | 0o640, Some(libc::makedev(4, 1) as u32), None, None, "only memory devices (major 1)"),
                ("rdev-garbage", libc::S_IFCHR | 0o640, Some(u32::MAX), None, None, "only memory devices"),
                ("dir-contents", libc::S_IFDIR | 0o750, None, None, Some(4096), "ghost of mode 40750 with contents"),
            ],
        ),
        ("symdel", vec![("no-target", libc::S_IFLNK | 0o777, None, Some(None), None, "a symlink ghost without symlnk_target")]),
        (
            "fifo",
            vec![
                ("fifo-contents", libc::S_IFIFO | 0o640, None, None, Some(4096), "ghost of mode 10640 with contents"),
                ("fifo-as-dir", libc::S_IFDIR | 0o750, None, None, None, "has a ghost of mode 40750, not a FIFO's"),
                ("fifo-sock", libc::S_IFSOCK | 0o640, None, None, None, "ghost of mode 140640: not supported"),
            ],
        ),
    ] {
        let fx = start(&tmp.join(mode), mode);
        let img = tmp.join(format!("img-{mode}"));
        std::fs::create_dir_all(&img).unwrap();
        criu_ok(Path::new(CRIU), &["dump", "-t", &fx.pid.to_string(), "--leave-running"], &img, "dump.log");
        for (name, m, rdev, target, size, want) in edits {
            let dir = tmp.join(format!("hostile-{name}"));
            std::fs::create_dir_all(&dir).unwrap();
            for e in std::fs::read_dir(&img).unwrap().flatten() {
                std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
            }
            let gname = mg::GHOST_FILE.file_name(1u32);
            let mut g: Vec<pb::GhostFileEntry> = images_proto::image::read_all(&dir, &gname, &mg::GHOST_FILE).unwrap();
            g[0].mode = m;
            if let Some(r) = rdev {
                g[0].rdev = Some(r);
            }
            if let Some(t) = target {
                g[0].symlnk_target = t;
            }
            if let Some(n) = size {
                (g[0].size, g[0].chunks) = (Some(n), Some(true));
            }
            images_proto::image::write_all(&dir, &gname, &mg::GHOST_FILE, &g).unwrap();
            let (st, log) = criu_env(Path::new(CRIU), &["restore", "-d"], &dir, "restore.log", &[]);
            assert_eq!(st.code(), Some(1), "{name}: {log}");
            assert!(log.contains(&gname) && log.contains(want), "{name}: not refused by name ({want:?}):\n{log}");
            assert!(!log.contains("panicked"), "{name}: {log}");
        }
        drop(fx);
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

/// `restore --root R` of the deleted FIFO (the program in its own pid
/// namespace): the node is made, opened through its old name and unlinked
/// inside R; the program's FIFO checks go on there, R's directory is left
/// clean.
#[test]
fn deleted_fifo_restores_inside_root() {
    require!(why_not_here());
    let tmp = test_dir("special-files-fifo-root");
    let work = tmp.join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("mode"), "fifo").unwrap();
    let fx = Fixture::start_ours("specialfd", &tmp, Ns::OwnPidNs);
    let img = tmp.join("img");
    std::fs::create_dir_all(&img).unwrap();
    criu_ok(Path::new(CRIU), &["dump", "-t", &fx.pid.to_string()], &img, "dump.log");
    wait_until("the dumped program gone", Duration::from_secs(5), || live_with_exe(&fx.bin).is_empty());
    let root = tmp.join("root");
    let inr = |p: &Path| root.join(p.strip_prefix("/").unwrap());
    std::fs::create_dir_all(inr(&fx.work)).unwrap();
    std::fs::copy(&fx.bin, inr(&fx.bin)).unwrap();
    std::fs::copy(fx.log(), inr(&fx.log())).unwrap();
    std::fs::create_dir_all(root.join("dev")).unwrap();
    assert!(Command::new("mknod").args(["-m", "666"]).arg(root.join("dev/null")).args(["c", "1", "3"]).status().unwrap().success());
    // the host's directory of the FIFO is gone: only the root's exists
    std::fs::remove_dir_all(&fx.work).unwrap();
    let t = last_tick(&inr(&fx.log()));
    let (st, log) = criu_env(Path::new(CRIU), &["restore", "-d", "--root", root.to_str().unwrap()], &img, "restore.log", &[]);
    let rbin = inr(&fx.bin);
    let ok = std::panic::catch_unwind(|| {
        assert!(st.success(), "restore --root failed:\n{log}");
        wait_until("ticks in the root", Duration::from_secs(15), || last_tick(&inr(&fx.log())) > t + 3);
        let left: Vec<_> = std::fs::read_dir(inr(&fx.work)).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("progress.log")], "the FIFO must be unlinked again");
    });
    for p in live_with_exe(&rbin) {
        // (the namespace's init first: its child may be gone by its turn)
        let _ = Command::new("kill").args(["-9", &p.to_string()]).stderr(std::process::Stdio::null()).status();
    }
    drop(fx);
    if let Err(e) = ok {
        std::panic::resume_unwind(e);
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
