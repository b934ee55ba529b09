//! Processes that share an fd table (clone with CLONE_FILES) or an fs
//! struct (CLONE_FS) with their parent, without being its threads:
//! `tests/progs/sharedfs.c`, whose children check every tick that a fd
//! the root opened is in their table (and the root that the one they
//! closed is gone from its own), and that the cwd and umask the root set
//! are theirs (and the root that theirs are its own).
//!
//! - ours both ways: dumped and restored twice (and once with
//!   `--leave-running`), the program ticks on with no FAIL and the kernel
//!   (kcmp) says the restored processes share the table and the fs again;
//! - upstream 4.2 restoring our images, and we restoring upstream's, of the
//!   program with a shared fd table only (upstream 4.2 refuses to dump a
//!   shared fs struct: "Can't make FS id", and restores one as two).
//!
//! Needs root, gcc, unshare, setsid.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const KCMP_FILES: i32 = 2;
const KCMP_FS: i32 = 3;

/// Do `a` and `b` share the kernel object `kind` (kcmp)?
fn same(a: i32, b: i32, kind: i32) -> bool {
    // SAFETY: kcmp takes integers only.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, a, b, kind, 0, 0) };
    assert!(r >= 0, "kcmp {a} {b} {kind}: {}", std::io::Error::last_os_error());
    r == 0
}

fn children(pid: i32) -> Vec<i32> {
    let c = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    c.split_whitespace().filter_map(|v| v.parse().ok()).collect()
}

/// The root's two children (F: files, S: fs) as the program made them, by
/// what they share with it.
fn check_sharing(root: i32, mode: &str) {
    let kids = children(root);
    let f: Vec<i32> = kids.iter().copied().filter(|&c| same(root, c, KCMP_FILES)).collect();
    let s: Vec<i32> = kids.iter().copied().filter(|&c| same(root, c, KCMP_FS)).collect();
    let (want_f, want_s) = match mode {
        "files" => (1, 0),
        "fs" => (0, 1),
        _ => (1, 1),
    };
    assert_eq!((f.len(), s.len()), (want_f, want_s), "children {kids:?} of {root}: sharing the fd table {f:?}, the fs {s:?}");
    assert!(f.iter().all(|c| !s.contains(c)), "one child shares both: {f:?} {s:?}");
}

fn start(tmp: &Path, mode: &str, ns: Ns) -> Fixture {
    let work = tmp.join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("mode"), mode).unwrap();
    Fixture::start_ours("sharedfs", tmp, ns)
}

fn restore(criu: &Path, fx: &mut Fixture, img: &Path, who: &str) {
    let t = fx.tick();
    let st = Command::new(criu).args(["restore", "-d", "-v4", "-o", "restore.log", "-D"]).arg(img).current_dir(&fx.work).status().unwrap();
    assert!(st.success(), "{who} restore: {}", std::fs::read_to_string(img.join("restore.log")).unwrap_or_default());
    wait_until(&format!("ticks after the {who} restore"), Duration::from_secs(15), || fx.tick() > t + 3);
    fx.refind();
}

#[test]
fn shared_fd_table_and_fs_restore_with_ours() {
    require!(why_not_here());
    let tmp = test_dir("shared-tables-ours");
    let mut fx = start(&tmp, "both", Ns::OwnPidNs);
    check_sharing(fx.pid, "both");
    for round in 0..3 {
        let img = tmp.join(format!("img{round}"));
        std::fs::create_dir_all(&img).unwrap();
        let p = fx.pid.to_string();
        let leave = round == 0;
        let mut args = vec!["dump", "-t", &p];
        if leave {
            args.push("--leave-running");
        }
        criu_ok(Path::new(CRIU), &args, &img, "dump.log");
        if leave {
            fx.ticks_on(3, "after the --leave-running dump");
            continue;
        }
        restore(Path::new(CRIU), &mut fx, &img, "our");
        check_sharing(fx.pid, "both");
    }
    fx.ticks_on(3, "at the end");
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Our images of a shared fd table restored by upstream 4.2, and upstream's
/// restored by ours.
#[test]
fn shared_fd_table_both_ways_with_upstream() {
    require!(why_not_here().or_else(|| (!upstream().exists()).then(|| format!("{} not found", upstream().display()))));
    let tmp = test_dir("shared-tables-upstream");
    // in the host's pid namespace (upstream refuses to dump a namespace
    // init whose session leader is outside it, as `setsid unshare` makes)
    let mut fx = start(&tmp, "files", Ns::Host);
    check_sharing(fx.pid, "files");
    let steps: [(&Path, &Path, &str); 3] = [(Path::new(CRIU), &upstream(), "ours -> upstream"), (&upstream(), Path::new(CRIU), "upstream -> ours"), (Path::new(CRIU), Path::new(CRIU), "ours -> ours")];
    for (k, (dumper, restorer, what)) in steps.iter().enumerate() {
        let img = tmp.join(format!("img{k}"));
        std::fs::create_dir_all(&img).unwrap();
        criu_ok(dumper, &["dump", "-t", &fx.pid.to_string()], &img, "dump.log");
        restore(restorer, &mut fx, &img, what);
        check_sharing(fx.pid, "files");
    }
    fx.ticks_on(3, "at the end");
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// An image whose two sibling processes share an fd table their parent
/// does not have (which clone can't give them again) is refused by name
/// before anything is forked.
#[test]
fn sharing_off_the_chain_of_parents_is_refused() {
    use images_proto::magic as mg;
    use images_proto::pb;
    require!(why_not_here());
    let tmp = test_dir("shared-tables-hostile");
    let fx = start(&tmp, "both", Ns::OwnPidNs);
    let img = tmp.join("img");
    std::fs::create_dir_all(&img).unwrap();
    criu_ok(Path::new(CRIU), &["dump", "-t", &fx.pid.to_string(), "--leave-running"], &img, "dump.log");
    let ps: Vec<pb::PstreeEntry> = images_proto::image::read_all(&img, "pstree.img", &mg::PSTREE).unwrap();
    assert_eq!(ps.len(), 3);
    // both children get one new fd table (a copy of the second child's)
    let ids = |p: u32| mg::IDS.file_name(p);
    let child_files: Vec<u32> = ps[1..]
        .iter()
        .map(|e| images_proto::image::read_one::<pb::TaskKobjIdsEntry>(&img, &ids(e.pid), &mg::IDS).unwrap().files_id)
        .collect();
    std::fs::copy(img.join(mg::FDINFO.file_name(child_files[1])), img.join(mg::FDINFO.file_name(99u32))).unwrap();
    for e in &ps[1..] {
        let mut k: pb::TaskKobjIdsEntry = images_proto::image::read_one(&img, &ids(e.pid), &mg::IDS).unwrap();
        k.files_id = 99;
        images_proto::image::write_all(&img, &ids(e.pid), &mg::IDS, &[k]).unwrap();
    }
    let (st, log) = criu_env(Path::new(CRIU), &["restore", "-d"], &img, "restore.log", &[]);
    assert_eq!(st.code(), Some(1), "{log}");
    let want = format!("processes {} and {} share an fd table (CLONE_FILES), but {} is not forked sharing it by its parent 1", ps[1].pid, ps[2].pid, ps[2].pid);
    assert!(log.contains(&want), "not refused by name ({want:?}):\n{log}");
    fx.ticks_on(2, "after the refused restore (nothing of it runs)");
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}
