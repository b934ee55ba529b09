//! More kinds of files, on real processes, with upstream CRIU 4.2 both
//! ways where it supports the object:
//! - `--ghost-limit SIZE`: an unlinked open file of 3 MiB (over the
//!   default 1 MiB limit) is refused without it or under a smaller one,
//!   and dumped and restored with a larger one;
//! - memfds as fds and as mappings (`fdsupport/progs/memfdloop.c`): data,
//!   offsets, flags, seals, names, a MAP_SHARED mapping writing the file, a
//!   MAP_PRIVATE one with a private page, a mapping whose fd was closed,
//!   and a memfd still executable with execveat after restore;
//! - hostile memfd images (pages past the file's size, an fd naming an
//!   inode memfd.img lacks) refused with a clear error.
//!
//! The programs run as `unshare --pid --fork setsid PROG` (the session
//! inside the namespace, so that upstream dumps them too).

mod common;

use common::*;
use images_proto::magic as mg;
use images_proto::pb;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A program of tests/fdsupport/progs, running in `dir/work`; every
/// process running its binary is killed on drop.
struct Prog {
    bin: PathBuf,
    work: PathBuf,
    pid: i32,
}

impl Prog {
    fn start(name: &str, tag: &str, args: &[&str]) -> Prog {
        let dir = test_dir(&format!("files-{name}-{tag}"));
        let work = dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fdsupport/progs").join(format!("{name}.c"));
        let bin = dir.join(format!("fx-{name}"));
        let st = Command::new("gcc")
            .args(["-O2", "-static", "-I"])
            .arg(progs_dir())
            .arg("-o")
            .arg(&bin)
            .arg(&src)
            .args(["-lpthread", "-lrt"])
            .status()
            .expect("gcc");
        assert!(st.success(), "building {}", src.display());
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork", "setsid"]);
        let mut child = only_stdio(&mut cmd)
            .arg(&bin)
            .args(args)
            .current_dir(&work)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start program");
        std::thread::spawn(move || child.wait());
        wait_until("ready", Duration::from_secs(10), || work.join("ready").exists());
        wait_until("first tick", Duration::from_secs(10), || last_tick(&work.join("progress.log")) >= 1);
        let mut p = Prog { bin, work, pid: 0 };
        if name == "sharedtree" {
            p.pid = p.tree_root();
        } else {
            p.refind();
        }
        p
    }

    /// As `start`, for a program that runs itself again from a memfd (its
    /// executable is then no longer `bin`: found by its cwd).
    fn start_exec(name: &str, tag: &str, args: &[&str]) -> Prog {
        let dir = test_dir(&format!("files-{name}-{tag}"));
        let work = dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fdsupport/progs").join(format!("{name}.c"));
        let bin = dir.join(format!("fx-{name}"));
        let st = Command::new("gcc").args(["-O2", "-static", "-I"]).arg(progs_dir()).arg("-o").arg(&bin).arg(&src).status().expect("gcc");
        assert!(st.success(), "building {}", src.display());
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork", "setsid"]);
        let mut child = only_stdio(&mut cmd).arg(&bin).args(args).current_dir(&work).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start");
        std::thread::spawn(move || child.wait());
        wait_until("ready", Duration::from_secs(10), || work.join("ready").exists());
        wait_until("first tick", Duration::from_secs(10), || last_tick(&work.join("progress.log")) >= 1);
        let mut pid = 0;
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(n) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            if std::fs::read_link(format!("/proc/{n}/cwd")).ok().as_deref() == Some(work.as_path()) && alive(n) {
                let exe = std::fs::read_link(format!("/proc/{n}/exe")).unwrap_or_default();
                if exe.to_string_lossy().starts_with("/memfd:") {
                    pid = n;
                }
            }
        }
        assert!(pid > 0, "the program running from a memfd");
        // (Drop kills by `bin`, which this process no longer runs: by pid)
        Prog { bin, work, pid }
    }

    /// The tree's root (pid 1 of its pid namespace) among the processes
    /// running `bin`.
    fn tree_root(&self) -> i32 {
        let pids = live_with_exe(&self.bin);
        let root = pids.iter().copied().find(|p| {
            let st = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
            st.lines().any(|l| l.starts_with("NSpid:") && l.split_whitespace().last() == Some("1"))
        });
        root.unwrap_or_else(|| panic!("no tree root among {pids:?}"))
    }

    fn refind(&mut self) {
        let pids = live_with_exe(&self.bin);
        assert_eq!(pids.len(), 1, "one {} expected, found {pids:?}", self.bin.display());
        self.pid = pids[0];
    }

    fn log(&self) -> PathBuf {
        self.work.join("progress.log")
    }

    fn ticks_on(&self, n: u64, what: &str) {
        let t = last_tick(&self.log());
        wait_until(&format!("{n} ticks {what}"), Duration::from_secs(15), || last_tick(&self.log()) >= t + n);
    }

    /// A fresh images directory `name` beside `work`.
    fn images(&self, name: &str) -> PathBuf {
        let d = self.work.parent().unwrap().join(name);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// `criu dump -t PID` (ours or upstream's) with `extra`; status and log.
    fn dump(&self, criu: &Path, dir: &Path, extra: &[&str]) -> (std::process::ExitStatus, String) {
        let pid = self.pid.to_string();
        let mut args = vec!["dump", "-t", &pid];
        args.extend_from_slice(extra);
        criu_env(criu, &args, dir, "dump.log", &[])
    }

    fn dump_ok(&self, criu: &Path, dir: &Path, extra: &[&str]) {
        let (st, log) = self.dump(criu, dir, extra);
        assert!(st.success(), "dump with {} {extra:?} failed:\n{log}", criu.display());
    }

    /// Restore detached with `criu` and wait for ticks.
    fn restore(&mut self, criu: &Path, dir: &Path) {
        criu_ok(criu, &["restore", "-d"], dir, "restore.log");
        self.refind();
        self.ticks_on(3, &format!("after the restore by {}", criu.display()));
    }
}

impl Drop for Prog {
    fn drop(&mut self) {
        if alive(self.pid) && std::fs::read_link(format!("/proc/{}/cwd", self.pid)).ok().as_deref() == Some(self.work.as_path()) {
            let _ = Command::new("kill").args(["-9", &self.pid.to_string()]).stderr(Stdio::null()).status();
        }
        for p in live_with_exe(&self.bin) {
            let _ = Command::new("kill").args(["-9", &p.to_string()]).stderr(Stdio::null()).status();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(self.work.parent().unwrap());
        }
    }
}

fn ours() -> PathBuf {
    PathBuf::from(CRIU)
}

/// A 3 MiB unlinked open file: refused without --ghost-limit and under
/// 2M (the program runs on), dumped with --ghost-limit 4M and restored
/// (the program checks size, offset and every byte each tick); then our
/// images restored by upstream, and upstream's (dumped with the same
/// option) by ours. Before: --ghost-limit was refused as unsupported.
#[test]
fn ghost_limit_lets_a_big_ghost_through() {
    require!(why_not_upstream());
    let mut p = Prog::start("ghostloop", "big", &["big"]);
    for extra in [&[][..], &["--ghost-limit", "2M"][..]] {
        let dir = p.images("refused");
        let (st, log) = p.dump(&ours(), &dir, extra);
        assert!(!st.success(), "dump {extra:?} should be refused:\n{log}");
        assert!(log.contains("big.bin") && log.contains("ghost limit") && log.contains("--ghost-limit"), "{extra:?}:\n{log}");
        p.ticks_on(2, "after the refused dump");
    }
    let dir = p.images("ours");
    p.dump_ok(&ours(), &dir, &["--ghost-limit", "4M"]);
    p.restore(&ours(), &dir);
    let dir = p.images("ours2");
    p.dump_ok(&ours(), &dir, &["--ghost-limit=3145728"]);
    p.restore(&upstream(), &dir);
    let dir = p.images("upstream");
    p.dump_ok(&upstream(), &dir, &["--ghost-limit", "4M"]);
    p.restore(&ours(), &dir);
}

fn exec_check(p: &Prog, round: &str) {
    let before = std::fs::read_to_string(p.log()).unwrap().matches("exec ok").count();
    std::fs::write(p.work.join("exec-now"), b"").unwrap();
    wait_until(&format!("execveat of the memfd ({round})"), Duration::from_secs(10), || {
        last_tick(&p.log());
        std::fs::read_to_string(p.log()).unwrap().matches("exec ok").count() > before
    });
}

/// memfds dumped and restored by us, three rounds (the second and third
/// dump restored memfds): the program checks every property each tick,
/// and a memfd is executed after each restore. Before: refused ("a
/// memfd ... is not supported yet").
#[test]
fn memfds_survive_rounds() {
    require!(why_not_here());
    let mut p = Prog::start("memfdloop", "rounds", &[]);
    exec_check(&p, "before");
    for round in 0..3 {
        let dir = p.images(&format!("img{round}"));
        p.dump_ok(&ours(), &dir, &[]);
        // as upstream writes them: one memfd.img entry per inode, the
        // fds' files.img entries of type MEMFD
        let inodes: Vec<pb::MemfdInodeEntry> = images_proto::image::read_all(&dir, "memfd.img", &mg::MEMFD_INODE).unwrap();
        let mut names: Vec<&str> = inodes.iter().map(|i| i.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["mfd-data", "mfd-exec", "mfd-maponly", "mfd-sealed"], "round {round}");
        let sealed = inodes.iter().find(|i| i.name == "mfd-sealed").unwrap();
        assert_eq!(sealed.seals, (libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL) as u32);
        p.restore(&ours(), &dir);
        exec_check(&p, &format!("round {round}"));
        let links: Vec<String> = fd_links(p.pid).into_iter().map(|(_, l)| l).filter(|l| l.starts_with("/memfd:")).collect();
        assert_eq!(links.len(), 4, "round {round}: {links:?}");
    }
}

/// Both directions with upstream 4.2: our images of the memfd program
/// restored by upstream, and upstream's restored by ours (each then
/// checked by the program, executed, and dumped again by the other).
#[test]
fn memfds_with_upstream_both_ways() {
    require!(why_not_upstream());
    let mut p = Prog::start("memfdloop", "upstream", &[]);
    let dir = p.images("ours");
    p.dump_ok(&ours(), &dir, &[]);
    p.restore(&upstream(), &dir);
    exec_check(&p, "after upstream restored ours");
    let dir = p.images("upstream");
    p.dump_ok(&upstream(), &dir, &[]);
    p.restore(&ours(), &dir);
    exec_check(&p, "after we restored upstream's");
    let dir = p.images("ours-again");
    p.dump_ok(&ours(), &dir, &[]);
    p.restore(&ours(), &dir);
    exec_check(&p, "last");
}

/// Rewrite image `$name` of `$dir` (entries of type `$t`) with `$f`
/// applied to its entries.
macro_rules! rewrite {
    ($dir:expr, $name:expr, $m:expr, $t:ty, $f:expr) => {{
        let mut v: Vec<$t> = images_proto::image::read_all($dir, $name, $m).unwrap();
        ($f)(&mut v);
        std::fs::remove_file($dir.join($name)).unwrap();
        images_proto::image::write_all($dir, $name, $m, &v).unwrap();
    }};
}

/// Hostile memfd images are refused before anything runs, naming what is
/// wrong: pages past the memfd's size, and an fd whose memfd inode is
/// not in memfd.img.
#[test]
fn hostile_memfd_images_refused() {
    require!(why_not_here());
    let p = Prog::start("memfdloop", "hostile", &[]);
    let dir = p.images("good");
    let pid = p.pid.to_string();
    criu_ok(&ours(), &["dump", "-t", &pid, "-R"], &dir, "dump.log");
    let copy = |tag: &str| {
        let d = p.images(tag);
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
        }
        d
    };
    let d = copy("short");
    rewrite!(&d, "memfd.img", &mg::MEMFD_INODE, pb::MemfdInodeEntry, |v: &mut Vec<pb::MemfdInodeEntry>| {
        v.iter_mut().find(|i| i.name == "mfd-data").unwrap().size = 100;
    });
    let (st, log) = criu_env(&ours(), &["restore", "-d"], &d, "restore.log", &[]);
    assert!(!st.success(), "pages past the size must be refused:\n{log}");
    assert!(log.contains("past the end of memfd \"mfd-data\" (100 bytes)"), "{log}");
    let d = copy("noinode");
    rewrite!(&d, "files.img", &mg::FILES, pb::FileEntry, |v: &mut Vec<pb::FileEntry>| {
        for e in v.iter_mut() {
            if let Some(m) = e.memfd.as_mut() {
                m.inode_id = 99;
            }
        }
    });
    let (st, log) = criu_env(&ours(), &["restore", "-d"], &d, "restore.log", &[]);
    assert!(!st.success(), "a memfd without its inode must be refused:\n{log}");
    assert!(log.contains("names inode 99, which memfd.img does not have"), "{log}");
    p.ticks_on(2, "the source runs on");
}

/// The locks /proc/locks shows on the files of `work` held by `pid`
/// (POSIX and flock ones show its pid) or by an open file description
/// (OFD ones show -1): "KIND ACCESS FIRST-LAST", sorted.
fn locks_of(pid: i32, work: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let inodes: Vec<u64> = std::fs::read_dir(work).unwrap().flatten().filter_map(|e| e.metadata().ok()).map(|m| m.ino()).collect();
    let text = std::fs::read_to_string("/proc/locks").unwrap();
    let mut v: Vec<String> = text
        .lines()
        .filter(|l| !l.contains("->"))
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let ino: u64 = w.get(5)?.rsplit(':').next()?.parse().ok()?;
            (w.len() >= 8 && (w[4] == pid.to_string() || w[4] == "-1") && inodes.contains(&ino)).then(|| format!("{} {} {}-{}", w[1], w[3], w[6], w[7]))
        })
        .collect();
    v.sort();
    v
}

/// flock, POSIX and OFD locks (`fdsupport/progs/lockloop.c`, which checks
/// from other open file descriptions every tick that each is held and
/// that the bytes around them are free): refused by name without
/// --file-locks (the program runs on), dumped with it and taken again on
/// restore; our images restored by upstream 4.2 and upstream's by ours.
/// Before: -l was refused as unsupported, and a process holding a lock
/// was dumped without it (the restored process held none).
#[test]
fn file_locks_survive() {
    require!(why_not_upstream());
    let mut p = Prog::start("lockloop", "rounds", &[]);
    let want = [
        "FLOCK READ 0-EOF", "FLOCK WRITE 0-EOF", "OFDLCK READ 50-59", "OFDLCK WRITE 0-4", "POSIX READ 100-EOF", "POSIX WRITE 10-29",
    ];
    assert_eq!(locks_of(p.pid, &p.work), want);
    let dir = p.images("refused");
    let (st, log) = p.dump(&ours(), &dir, &[]);
    assert!(!st.success(), "a dump without --file-locks must be refused:\n{log}");
    assert!(log.contains("holds a file lock through fd") && log.contains("POSIX") && log.contains("--file-locks"), "{log}");
    p.ticks_on(2, "after the refused dump");
    for (round, (dumper, restorer)) in
        [(ours(), ours()), (ours(), ours()), (ours(), upstream()), (upstream(), ours())].into_iter().enumerate()
    {
        let dir = p.images(&format!("img{round}"));
        p.dump_ok(&dumper, &dir, &["--file-locks"]);
        let entries: Vec<pb::FileLockEntry> = images_proto::image::read_all(&dir, "filelocks.img", &mg::FILE_LOCKS).unwrap();
        assert_eq!(entries.len(), 6, "round {round}: {entries:?}");
        let pid = if restorer == upstream() { vec!["restore", "-d", "-l"] } else { vec!["restore", "-d"] };
        criu_ok(&restorer, &pid, &dir, "restore.log");
        p.refind();
        p.ticks_on(3, &format!("round {round}"));
        assert_eq!(locks_of(p.pid, &p.work), want, "round {round}");
    }
}

/// A lock someone else holds at restore time (the source left running
/// with -R keeps its locks) fails the restore, naming the lock, and
/// nothing of it is left; a lock naming an fd the process does not have
/// is refused when the images are read.
#[test]
fn file_lock_restore_failures_are_clear() {
    require!(why_not_here());
    let p = Prog::start("lockloop", "fail", &[]);
    let dir = p.images("img");
    p.dump_ok(&ours(), &dir, &["--file-locks", "-R"]);
    let (st, log) = criu_env(&ours(), &["restore", "-d"], &dir, "restore.log", &[]);
    assert!(!st.success(), "the source still holds its locks: the restore must fail:\n{log}");
    assert!(log.contains("lock of fd 4") && log.contains("locked by another process now"), "{log}");
    assert_eq!(live_with_exe(&p.bin), vec![p.pid], "only the source runs");
    rewrite!(&dir, "filelocks.img", &mg::FILE_LOCKS, pb::FileLockEntry, |v: &mut Vec<pb::FileLockEntry>| {
        v[0].fd = 99;
    });
    let (st, log) = criu_env(&ours(), &["restore", "-d"], &dir, "restore2.log", &[]);
    assert!(!st.success(), "{log}");
    assert!(log.contains("held through fd 99, which process 1 does not have"), "{log}");
    p.ticks_on(2, "the source runs on");
}

/// Files named `link_remap.*` in `work`.
fn link_remaps(work: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(work).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with("link_remap.")).collect();
    v.sort();
    v
}

/// A file unlinked from the name it was opened by but still linked
/// elsewhere (`ghostloop linked`: the program checks every tick that its
/// fd is still that very file, one inode with other.bin, its writes
/// showing there): refused without --link-remap; with it the dump makes a
/// `link_remap.N` beside the old name, removed again when the process
/// runs on (-R), kept for the restore otherwise and removed by it, as
/// upstream does; our images restored by upstream and upstream's by ours.
/// A link remap outside the old name's directory is refused on read.
/// Before: --link-remap was refused as unsupported.
#[test]
fn link_remap_keeps_the_same_file() {
    require!(why_not_upstream());
    let mut p = Prog::start("ghostloop", "linked", &["linked"]);
    let dir = p.images("refused");
    let (st, log) = p.dump(&ours(), &dir, &[]);
    assert!(!st.success() && log.contains("linked.bin") && log.contains("--link-remap"), "{log}");
    let dir = p.images("running");
    p.dump_ok(&ours(), &dir, &["--link-remap", "-R"]);
    assert_eq!(link_remaps(&p.work), Vec::<String>::new(), "-R: the link remap is removed again");
    p.ticks_on(2, "after the -R dump");
    // a remap that is not beside the old name: refused before anything runs
    rewrite!(&dir, "files.img", &mg::FILES, pb::FileEntry, |v: &mut Vec<pb::FileEntry>| {
        for e in v.iter_mut() {
            if let Some(r) = e.reg.as_mut().filter(|r| r.name.contains("link_remap.")) {
                r.name = "/tmp/link_remap.1".into();
            }
        }
    });
    let (st, log) = criu_env(&ours(), &["restore", "-d"], &dir, "restore.log", &[]);
    assert!(!st.success() && log.contains("is not another name in the same directory"), "{log}");
    for (round, (dumper, restorer)) in [(ours(), ours()), (ours(), ours()), (ours(), upstream()), (upstream(), ours())].into_iter().enumerate() {
        let dir = p.images(&format!("img{round}"));
        p.dump_ok(&dumper, &dir, &["--link-remap"]);
        assert_eq!(link_remaps(&p.work).len(), 1, "round {round}: the link remap waits for the restore");
        p.restore(&restorer, &dir);
        assert_eq!(link_remaps(&p.work), Vec::<String>::new(), "round {round}: the restore removed the link remap");
        assert!(!p.work.join("linked.bin").exists(), "round {round}");
    }
}

/// A writable MAP_SHARED mapping of a memfd sealed F_SEAL_FUTURE_WRITE
/// after it was made is refused by name at dump (restore seals before it
/// maps, and the kernel would refuse the mapping), and the program runs on.
#[test]
fn future_write_sealed_shared_mapping_refused() {
    require!(why_not_here());
    let p = Prog::start("memfdloop", "futureseal", &["futureseal"]);
    let dir = p.images("img");
    let (st, log) = p.dump(&ours(), &dir, &[]);
    assert!(!st.success(), "{log}");
    assert!(log.contains("of a memfd sealed F_SEAL_FUTURE_WRITE since: not supported yet"), "{log}");
    p.ticks_on(2, "after the refused dump");
}

/// A hugetlb memfd (MFD_HUGETLB, empty: no huge page needed) is dumped
/// with its hugetlb_flag and restored as one (tests/hugetlb.rs covers
/// one with data and mapped).
#[test]
fn hugetlb_memfd_restores() {
    require!(why_not_here());
    let mut p = Prog::start("memfdloop", "hugetlb", &["hugetlb"]);
    let dir = p.images("img");
    p.dump_ok(&ours(), &dir, &[]);
    let m: Vec<images_proto::pb::MemfdInodeEntry> = images_proto::image::read_all(&dir, "memfd.img", &images_proto::magic::MEMFD_INODE).unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].hugetlb_flag.map(|h| h & 4), Some(4), "MFD_HUGETLB in {:?}", m[0].hugetlb_flag);
    p.restore(&ours(), &dir);
    let huge = std::fs::read_dir(format!("/proc/{}/fd", p.pid)).unwrap().flatten().any(|e| {
        std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == "/memfd:huge (deleted)")
            && std::fs::File::open(e.path()).is_ok_and(|f| {
                let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
                // SAFETY: a valid fd and a writable statfs buffer for the call.
                unsafe { libc::fstatfs(std::os::fd::AsRawFd::as_raw_fd(&f), st.as_mut_ptr()) == 0 && st.assume_init().f_type == 0x9584_58f6 }
            })
    });
    assert!(huge, "the restored fd is a memfd on hugetlbfs");
}

/// A program run from a memfd (fexecve: its executable is
/// `/memfd:self (deleted)`) is refused by name, and runs on.
#[test]
fn program_run_from_a_memfd_refused() {
    require!(why_not_here());
    let p = Prog::start_exec("memfdloop", "selfexec", &["selfexec"]);
    let dir = p.images("img");
    let (st, log) = p.dump(&ours(), &dir, &[]);
    assert!(!st.success(), "{log}");
    assert!(log.contains("runs a program from a memfd (/memfd:self (deleted) is its executable)"), "{log}");
    p.ticks_on(2, "after the refused dump");
}

/// A parent and child sharing a memfd (fd and MAP_SHARED mapping) and a
/// flock-locked open file description (`sharedtree.c`: each checks the
/// other's counter moves through the mapping; the lock is checked held):
/// our dump writes the memfd's inode and the lock once for the tree, and
/// upstream 4.2 and ours restore that tree with the memfd and the lock
/// shared again (ours: the root makes the memfd before it forks).
#[test]
fn tree_sharing_a_memfd_and_a_lock_survives() {
    require!(why_not_upstream());
    let mut p = Prog::start("sharedtree", "tree", &[]);
    p.ticks_on(12, "before the dump");
    let dir = p.images("img");
    p.dump_ok(&ours(), &dir, &["--file-locks"]);
    let inodes: Vec<pb::MemfdInodeEntry> = images_proto::image::read_all(&dir, "memfd.img", &mg::MEMFD_INODE).unwrap();
    assert_eq!(inodes.len(), 1, "{inodes:?}");
    let locks: Vec<pb::FileLockEntry> = images_proto::image::read_all(&dir, "filelocks.img", &mg::FILE_LOCKS).unwrap();
    assert_eq!(locks.len(), 1, "one flock lock of one shared description: {locks:?}");
    criu_ok(&upstream(), &["restore", "-d", "-l"], &dir, "restore.log");
    p.ticks_on(25, "after upstream restored our tree");
    assert_eq!(live_with_exe(&p.bin).len(), 2, "parent and child");
    // and ours, from our dump and from upstream's: one memfd inode again
    // for both processes (the counters go through its mapping)
    for (round, dumper) in [ours(), upstream()].into_iter().enumerate() {
        p.pid = p.tree_root();
        let dir = p.images(&format!("again{round}"));
        p.dump_ok(&dumper, &dir, &["--file-locks"]);
        criu_ok(&ours(), &["restore", "-d"], &dir, "restore.log");
        p.pid = p.tree_root();
        p.ticks_on(25, &format!("round {round}: after our restore"));
        let pids = live_with_exe(&p.bin);
        assert_eq!(pids.len(), 2, "round {round}: parent and child");
        let inode = |pid: i32| {
            maps(pid).into_iter().find(|l| l.contains("/memfd:shared")).and_then(|l| l.split_whitespace().nth(4).map(str::to_string))
        };
        assert!(inode(pids[0]).is_some() && inode(pids[0]) == inode(pids[1]), "round {round}: one memfd inode mapped by both");
    }
}

/// `--link-remap` where the file's directory is read-only now (a
/// read-only bind mount over it): the link can't be made, and the dump
/// fails naming the file and the reason, as upstream 4.2's does ("Can't
/// link remap"), leaving nothing behind; the program runs on. (An
/// unlinked file with no other link on a read-only file system dumps as a
/// ghost; recreating it there at restore fails naming it, as upstream's
/// "Can't create ghost regfile".)
#[test]
fn link_remap_on_a_read_only_directory_fails_clearly() {
    require!(why_not_here().or_else(|| why_not_tool("mount")));
    let p = Prog::start("ghostloop", "linkedro", &["linked"]);
    let w = p.work.to_string_lossy().into_owned();
    let run = |args: &[&str]| Command::new("mount").args(args).status().unwrap().success();
    assert!(run(&["--bind", &w, &w]) && run(&["-o", "remount,ro,bind", &w]), "read-only bind mount");
    struct Umount(String);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Umount(w.clone());
    let dir = p.images("img");
    let (st, log) = p.dump(&ours(), &dir, &["--link-remap"]);
    assert!(!st.success(), "{log}");
    assert!(log.contains("linked.bin (deleted) to") && log.contains("link_remap.1") && log.contains("Read-only file system"), "{log}");
    drop(_u);
    assert_eq!(link_remaps(&p.work), Vec::<String>::new());
    p.ticks_on(2, "after the failed dump");
}

/// A parent and child sharing an open file description that holds a flock
/// lock (and MAP_SHARED anonymous memory for their counters): dumped with
/// --file-locks by ours and by upstream 4.2, each restored by ours with the
/// lock taken once on the shared description (the parent checks it is
/// held every tick, /proc/locks shows it once).
#[test]
fn a_lock_shared_by_a_tree_survives() {
    require!(why_not_upstream());
    let mut p = Prog::start("sharedtree", "anon", &["anon"]);
    p.ticks_on(12, "before the dump");
    let flocks = |w: &Path| {
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(w.join("lock.bin")).unwrap().ino();
        std::fs::read_to_string("/proc/locks").unwrap().lines().filter(|l| l.contains("FLOCK") && l.contains(&format!(":{ino} "))).count()
    };
    assert_eq!(flocks(&p.work), 1);
    for (round, dumper) in [ours(), upstream()].into_iter().enumerate() {
        let dir = p.images(&format!("img{round}"));
        p.dump_ok(&dumper, &dir, &["--file-locks"]);
        criu_ok(&ours(), &["restore", "-d"], &dir, "restore.log");
        p.pid = p.tree_root();
        p.ticks_on(25, &format!("round {round}: after our restore"));
        assert_eq!(live_with_exe(&p.bin).len(), 2, "round {round}: parent and child");
        assert_eq!(flocks(&p.work), 1, "round {round}");
    }
}

/// Upstream 4.2 writes MAP_SHARED anonymous memory as a memfd named
/// `/dev/zero` (its image of the `mem` fixture: a parent and child
/// sharing such memory): read back as shared anonymous memory, the tree
/// restores with ours and ticks (the fixture checks the sharing). Before:
/// the mapping's MEMFD file entry was refused ("no regular file with id").
/// Those images were dumped on a CPU with AVX-512 (see upstream_restore.rs):
/// on one without, the restore is refused naming it.
#[test]
fn upstream_mem_fixture_with_its_dev_zero_memfd_restores() {
    require!(why_not_here()
        .or_else(|| why_not_tools(&["tar"]))
        .or_else(|| why_not_fixture("upstream/mem")));
    let up = test_support::fixture("upstream/mem");
    let srv = Path::new("/srv/criu-fixtures");
    std::fs::create_dir_all(srv.join("bin")).unwrap();
    let bin = srv.join("bin/fx-mem");
    assert!(live_with_exe(&bin).is_empty(), "an fx-mem of another test runs");
    std::fs::copy(up.join("fx-mem"), &bin).unwrap();
    let _ = std::fs::remove_dir_all(srv.join("mem"));
    assert!(Command::new("tar").arg("-C").arg(srv).arg("-xf").arg(up.join("workdir.tar")).status().unwrap().success());
    let img = test_dir("files-upstream-mem");
    for e in std::fs::read_dir(up.join("images")).unwrap().flatten() {
        std::fs::copy(e.path(), img.join(e.file_name())).unwrap();
    }
    struct Kill(PathBuf);
    impl Drop for Kill {
        fn drop(&mut self) {
            for p in live_with_exe(&self.0) {
                let _ = Command::new("kill").args(["-9", &p.to_string()]).stderr(Stdio::null()).status();
            }
        }
    }
    let _k = Kill(bin.clone());
    let log = srv.join("mem/progress.log");
    let before = last_tick(&log);
    if !test_support::cpu_has("avx512f") {
        // (its threads have AVX-512 state in use: refused by name here)
        let (st, text) = common::criu_env(&ours(), &["restore", "-d"], &img, "restore.log", &[]);
        assert_eq!(st.code(), Some(1), "this CPU lacks avx512f: the restore must be refused:\n{text}");
        assert!(text.contains("AVX-512"), "the refusal must name AVX-512:\n{text}");
        assert!(live_with_exe(&bin).is_empty(), "a refused restore starts nothing");
        return;
    }
    criu_ok(&ours(), &["restore", "-d"], &img, "restore.log");
    wait_until("ticks after the restore", Duration::from_secs(15), || last_tick(&log) > before + 5);
    assert_eq!(live_with_exe(&bin).len(), 2, "parent and child");
    let _ = std::fs::remove_dir_all(&img);
}

/// The live processes whose executable is `bin`, unlinked (`BIN (deleted)`).
fn with_deleted_exe(bin: &Path) -> Vec<i32> {
    let want = PathBuf::from(format!("{} (deleted)", bin.display()));
    let mut v: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).ok().as_deref() == Some(want.as_path()))
        .filter(|pid| !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z"))
        .collect();
    v.sort_unstable();
    v
}

/// Kills what runs the deleted executable on drop.
struct DeletedExe(PathBuf);

impl Drop for DeletedExe {
    fn drop(&mut self) {
        for p in with_deleted_exe(&self.0) {
            let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
        }
    }
}

/// A program whose executable was deleted while it ran (as a package
/// upgrade replaces one): the exe file is the ghost of its mapping, one
/// file entry as upstream writes it, and the restored process runs the
/// recreated file (unlinked again once restored). Before: the exe entry
/// was the path "NAME (deleted)", which the restore could not open; then,
/// with the ghost, PR_SET_MM_MAP failed with EACCES (the recreated file
/// was held open for writing); upstream's images of it failed our
/// build-id check of a path that no longer exists.
#[test]
fn deleted_executable_round_trip() {
    require!(why_not_here());
    let s = OwnNsProg::start("delexe", "stackpat", &[]);
    let criu = private_criu(&s.dir);
    std::fs::remove_file(&s.bin).unwrap();
    let _guard = DeletedExe(s.bin.clone());
    let pid = || {
        let v = with_deleted_exe(&s.bin);
        assert_eq!(v.len(), 1, "one process running the deleted {}: {v:?}", s.bin.display());
        v[0]
    };
    s.ticks_on(2, "before the dump");
    for round in 0..2 {
        let img = s.images(&format!("img{round}"));
        criu_ok(&criu, &["dump", "-t", &pid().to_string()], &img, "dump.log");
        let files: Vec<pb::FileEntry> = images_proto::image::read_all(&img, "files.img", &mg::FILES).unwrap();
        let exe_like = files.iter().filter_map(|f| f.reg.as_ref()).filter(|r| r.name.starts_with(&*s.bin.to_string_lossy())).count();
        assert_eq!(exe_like, 1, "round {round}: one file entry for the exe and its mapping: {files:?}");
        wait_until("the dumped program gone", Duration::from_secs(5), || with_deleted_exe(&s.bin).is_empty());
        criu_ok(&criu, &["restore", "-d"], &img, "restore.log");
        s.ticks_on(3, &format!("after restore {round}"));
        let p = pid();
        assert!(!s.bin.exists(), "round {round}: the recreated executable must be unlinked again");
        let maps = std::fs::read_to_string(format!("/proc/{p}/maps")).unwrap();
        assert!(maps.contains(&format!("{} (deleted)", s.bin.display())), "round {round}: the code is mapped from the recreated file:\n{maps}");
    }
}

/// The same program both ways with upstream CRIU 4.2.
#[test]
fn deleted_executable_with_upstream() {
    require!(why_not_upstream());
    let s = OwnNsProg::start("delexe-up", "stackpat", &[]);
    let criu = private_criu(&s.dir);
    std::fs::remove_file(&s.bin).unwrap();
    let _guard = DeletedExe(s.bin.clone());
    let pid = || {
        let v = with_deleted_exe(&s.bin);
        assert_eq!(v.len(), 1, "one process running the deleted {}: {v:?}", s.bin.display());
        v[0]
    };
    let gone = || wait_until("the dumped program gone", Duration::from_secs(5), || with_deleted_exe(&s.bin).is_empty());
    s.ticks_on(2, "before the dump");
    let img = s.images("ours");
    criu_ok(&criu, &["dump", "-t", &pid().to_string()], &img, "dump.log");
    gone();
    upstream_ok(&["restore", "-d"], &img, "restore-upstream.log");
    s.ticks_on(3, "after upstream's restore of our images");
    let img = s.images("theirs");
    upstream_ok(&["dump", "-t", &pid().to_string()], &img, "dump-upstream.log");
    gone();
    criu_ok(&criu, &["restore", "-d"], &img, "restore.log");
    s.ticks_on(3, "after our restore of upstream's images");
    assert!(!s.bin.exists(), "the recreated executable must be unlinked again");
}

/// A process whose cwd is a directory of mode 0555 (a container image's
/// read-only-looking root, as podman's busybox has it): the image set
/// records the cwd's and root's real modes, which upstream 4.2's restore
/// checks ("File . has bad mode 040555 (expect 040755)" when we wrote
/// 040755 for every cwd and root); both ways with upstream.
#[test]
fn cwd_of_mode_0555_both_ways_with_upstream() {
    require!(why_not_upstream());
    let mut s = OwnNsProg::start("cwd0555", "stackpat", &[]);
    let criu = private_criu(&s.dir);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&s.work, std::fs::Permissions::from_mode(0o555)).unwrap();
    s.upstream_both_ways(&criu, |_| {});
    std::fs::set_permissions(&s.work, std::fs::Permissions::from_mode(0o755)).unwrap();
}
