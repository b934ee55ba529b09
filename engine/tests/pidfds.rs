//! pidfds through dump, restore and tfork, with tests/progs/pidfds.c: pid
//! 1 of its own pid namespace holding pidfds of its child (plain and
//! PIDFD_NONBLOCK), of itself (PIDFD_THREAD), of a zombie child and of a
//! reaped one, and a child holding a pidfd of its parent; every tick it
//! checks which process each names (PIDFS_IOC_GET_INFO), signals through
//! one and waits on others (`tick N ok` / `FAIL ...` in progress.log).
//! Ours twice in a row, both ways with upstream CRIU 4.2 (which refuses
//! PIDFD_THREAD at dump), tfork clones holding pidfds of their own
//! processes, what is refused at dump by name (the program running on),
//! and hostile images. Needs root, gcc, unshare, setsid.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::{criu_env, criu_ok, private_criu, require, tfork_ok, why_not_here, why_not_upstream, Find, OwnNsProg};
use images_proto::{image, magic, pb};

/// pidfds started with `words` as pid 1 of a pid namespace of its own.
fn start(tag: &str, words: &[&str]) -> OwnNsProg {
    let words: Vec<String> = words.iter().map(|w| w.to_string()).collect();
    OwnNsProg::launch(&format!("pidfds-{tag}"), "pidfds", Find::NsInit, move |bin| {
        let mut c = Command::new("unshare");
        c.args(["--pid", "--fork", "setsid"]).arg(bin).args(&words);
        c
    })
}

/// The PIDFD entries of an image set's files.img: (nspid, flags), sorted.
fn pidfd_entries(img: &Path) -> Vec<(i32, u32)> {
    let files: Vec<pb::FileEntry> = image::read_all(img, "files.img", &magic::FILES).unwrap();
    let mut v: Vec<(i32, u32)> = files.iter().filter_map(|e| e.pidfd.as_ref()).map(|p| (p.nspid, p.flags)).collect();
    v.sort();
    v
}

/// What the program holds with `dead thread`: fd 16 (reaped), fd 13 (itself,
/// PIDFD_THREAD), fd 11 of B (its parent), fd 10 and 12 (A, NONBLOCK),
/// fd 15 (zombie Z, pid 4).
const EVERY: [(i32, u32); 6] = [(-1, 0), (1, 0), (1, libc::O_EXCL as u32), (2, 0), (2, libc::O_NONBLOCK as u32), (4, 0)];

/// Ours, twice: a dump and restore, then a `--leave-running` dump and a
/// restore of it; the images hold every pidfd as upstream writes them.
#[test]
fn every_pidfd_round_trips_twice() {
    require!(why_not_here());
    let mut p = start("ours", &["dead", "thread"]);
    let criu = private_criu(&p.dir);
    p.two_rounds(&criu, |img| assert_eq!(pidfd_entries(img), EVERY), |img| assert_eq!(pidfd_entries(img), EVERY));
}

/// Both ways with upstream CRIU 4.2 (no PIDFD_THREAD: upstream refuses it
/// at dump): our images restored by upstream, upstream's by ours.
#[test]
fn upstream_both_ways() {
    require!(why_not_upstream());
    let mut p = start("upstream", &["dead"]);
    let criu = private_criu(&p.dir);
    p.upstream_both_ways(&criu, |img| assert_eq!(pidfd_entries(img), [(-1, 0), (1, 0), (2, 0), (2, libc::O_NONBLOCK as u32), (4, 0)]));
}

/// tfork: each clone tree's pidfds name its own processes (a fork's would
/// name the source's: the program's signal through fd 10 would then not
/// reach its own A, and it would say FAIL); source and clones tick on.
#[test]
fn tfork_clones_hold_pidfds_of_their_own_processes() {
    require!(why_not_here());
    let p = start("tfork", &["dead", "thread"]);
    let criu = private_criu(&p.dir);
    p.ticks_on(2, "before the tfork");
    let img = p.images("tfork");
    let (clones, _) = tfork_ok(&criu, p.pid, 2, &[], &img, &[]);
    p.ticks_on(6, "with its clones");
    for c in &clones {
        assert!(common::alive(*c), "clone {c} died");
        // (the clones are pid 1 of their namespaces, with A, B and Z beside)
        let kids = std::fs::read_to_string(format!("/proc/{c}/task/{c}/children")).unwrap_or_default();
        assert_eq!(kids.split_whitespace().count(), 3, "clone {c}'s children: {kids}");
    }
}

/// Refused at dump by name, the program running on: a pidfd of a process
/// outside the tree, one description held by two processes, a
/// PIDFD_THREAD pidfd of a thread that is not the leader.
#[test]
fn refused_at_dump_by_name() {
    require!(why_not_here());
    // (in the host's pid namespace, so that its parent has a pid for it)
    let outside = OwnNsProg::launch("pidfds-outside", "pidfds", Find::OneTree, |bin| {
        let mut c = Command::new("setsid");
        c.arg(bin).arg("outside");
        c
    });
    let cases: [(OwnNsProg, &str); 3] = [
        (outside, "fd 17 of PID (pidfd): it names process PARENT, which is not in the dumped tree"),
        (start("shared", &["shared"]), "(pidfd): its open file description is held by process"),
        (start("thread", &["otherthread"]), "fd 14 of PID (pidfd): it names thread"),
    ];
    for (p, want) in cases {
        let criu = private_criu(&p.dir);
        p.ticks_on(1, "before the dump");
        let parent = std::fs::read_to_string(format!("/proc/{}/stat", p.pid)).unwrap().rsplit_once(") ").unwrap().1.split_whitespace().nth(1).unwrap().to_string();
        let want = want.replace("PID", &p.pid.to_string()).replace("PARENT", &parent);
        let img = p.images("img");
        let (st, log) = criu_env(&criu, &["dump", "-t", &p.pid.to_string()], &img, "dump.log", &[]);
        assert_eq!(st.code(), Some(1), "the dump must fail:\n{log}");
        assert!(log.contains(&want), "the error must say {want:?}:\n{log}");
        p.ticks_on(3, "after the refused dump");
    }
}

/// Hostile images: a pidfd of a pid the tree does not have, a pid of 0,
/// flags a pidfd does not take. Each refused naming file, fd and field,
/// before any process is made.
#[test]
fn hostile_pidfd_images_are_refused() {
    require!(why_not_here());
    let p = start("hostile", &["dead"]);
    let criu = private_criu(&p.dir);
    p.ticks_on(1, "before the dump");
    let img = p.images("img");
    criu_ok(&criu, &["dump", "-t", &p.pid.to_string()], &img, "dump.log");
    p.gone();
    let first = |e: &mut pb::FileEntry| e.pidfd.as_ref().is_some_and(|x| x.nspid == 2 && x.flags == 0);
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        (
            "a pid not in the tree",
            common::edited_files(&img, "bad-pid", |e| if first(e) { e.pidfd.as_mut().unwrap().nspid = 99 }),
            "(pidfd): it names pid 99, which is no process of the image's tree",
        ),
        ("pid 0", common::edited_files(&img, "zero-pid", |e| if first(e) { e.pidfd.as_mut().unwrap().nspid = 0 }), "(PIDFD): pidfd.nspid: 0: neither a pid nor -1"),
        ("flags", common::edited_files(&img, "bad-flags", |e| if first(e) { e.pidfd.as_mut().unwrap().flags = 0o100 }), "(PIDFD): pidfd.flags: 0o100: flags a pidfd does not take"),
    ];
    common::refused_restores(&criu, &p.bin, cases);
}

/// A zombie's pstree entry as upstream 4.2 writes it: one thread id of no
/// set value (0 or whatever its memory held; its core says TASK_DEAD).
/// Our restore takes it (it refused "its first thread is N" before);
/// with a live process's core the same thread list is still refused.
#[test]
fn a_zombie_with_upstreams_thread_list_restores() {
    require!(why_not_here());
    let mut p = start("zombie", &[]);
    let criu = private_criu(&p.dir);
    p.ticks_on(1, "before the dump");
    let img = p.images("img");
    criu_ok(&criu, &["dump", "-t", &p.pid.to_string()], &img, "dump.log");
    p.gone();
    let odd = |pid: u32| move |v: &mut Vec<pb::PstreeEntry>| v.iter_mut().filter(|e| e.pid == pid).for_each(|e| e.threads = vec![3_780_004_960]);
    // pid 2 (A) is alive: refused
    let live = common::edited_image(&img, "live-odd", "pstree.img", &magic::PSTREE, odd(2));
    common::refused_restores(&criu, &p.bin, vec![("a live process's odd thread list", live, "entry 1 (pid 2): its first thread is 3780004960, not the process itself")]);
    // pid 4 (Z) is the zombie
    let zombie = common::edited_image(&img, "zombie-odd", "pstree.img", &magic::PSTREE, odd(4));
    p.restore_in_work(&criu, &zombie, &[]);
}
