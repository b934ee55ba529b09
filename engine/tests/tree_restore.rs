//! Restoring process trees (our restore), beyond the fixtures of
//! fixtures_cr.rs and tree_dump.rs:
//!
//! - sessions and process groups whose leader is gone: an orphan in a
//!   session whose leader exited, an orphan in a group whose leader
//!   exited, each reparented to the namespace's init; restored with the
//!   same pid, parent, group and session (helper processes stand in for
//!   the leaders), by our restore and by upstream 4.2;
//! - hostile pstree images (a parent listed after its child, a child of a
//!   zombie, two processes with one pid, a thread id that is another
//!   process's pid, a session leader in another group, a pid out of
//!   range): refused before anything is created, naming pstree.img and
//!   the entry.
//!
//! Needs root, unshare, setsid, sh, perl and sleep; the hostile-image
//! tests need upstream's `tree` fixture images.

mod common;

use common::*;
use images_proto::magic as mg;
use images_proto::pb;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// (pid, ppid, pgid, sid) of every process under `root`, in its own pid
/// namespace, sorted.
fn shape(root: i32) -> Vec<(i32, i32, i32, i32)> {
    let ns = |p: i32, k: &str| -> i32 {
        let st = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        st.lines().find_map(|l| l.strip_prefix(k)).and_then(|v| v.split_whitespace().last()?.parse().ok()).unwrap_or(-1)
    };
    let mut out = vec![(ns(root, "NSpid:"), 0, ns(root, "NSpgid:"), ns(root, "NSsid:"))];
    for t in std::fs::read_dir(format!("/proc/{root}/task")).into_iter().flatten().flatten() {
        let c = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        for p in c.split_whitespace().filter_map(|v| v.parse::<i32>().ok()) {
            out.push((ns(p, "NSpid:"), 1, ns(p, "NSpgid:"), ns(p, "NSsid:")));
        }
    }
    out.sort_unstable();
    out
}

/// The processes whose command line holds `tag`.
fn tagged(tag: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default().windows(tag.len()).any(|w| w == tag.as_bytes()))
        .collect()
}

/// The pid-1 process of a namespace among `pids`.
fn ns_init(pids: &[i32]) -> Option<i32> {
    pids.iter().copied().find(|p| {
        let st = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        st.lines().any(|l| l.starts_with("NSpid:") && l.split_whitespace().last() == Some("1"))
    })
}

struct KillTagged(String);
impl Drop for KillTagged {
    fn drop(&mut self) {
        for p in tagged(&self.0) {
            let _ = Command::new("kill").args(["-9", &p.to_string()]).stderr(Stdio::null()).status();
        }
    }
}

fn gone_leaders(restorer: &Path, who: &str) {
    require!(why_not_here().or_else(|| why_not_tools(&["perl", "sh", "sleep"])).or_else(|| (!restorer.exists()).then(|| format!("{} not found", restorer.display()))));
    let tmp = test_dir(&format!("tree-restore-leaders-{who}"));
    let work = tmp.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let tag = format!("{}", 2_000_000 + std::process::id() % 1_000_000 + if who == "ours" { 100 } else { 0 });
    // init (sh, then exec sleep) of its own pid namespace and session;
    // `setsid sh -c "sleep & exit"`: an orphan in session S (gone leader);
    // perl setpgrp + fork + exit: an orphan in group G (gone leader) of
    // init's session
    let script = format!(
        "setsid sh -c 'sleep {tag}1 & exit'; perl -e 'setpgrp(0,0); if (fork()) {{ exit 0 }} exec q(sleep), q({tag}2)'; sleep 0.3; exec sleep {tag}3"
    );
    let _kill = KillTagged(tag.clone());
    let mut cmd = Command::new("unshare");
    only_stdio(&mut cmd).args(["--pid", "--fork", "setsid", "sh", "-c", &script]).current_dir(&work);
    let mut starter = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::spawn(move || starter.wait());
    let mut root = 0;
    wait_until("init and its two orphans", Duration::from_secs(10), || {
        root = ns_init(&tagged(&format!("{tag}3"))).unwrap_or(0);
        let orphans = [1, 2].iter().all(|k| tagged(&format!("{tag}{k}")).iter().any(|&p| comm(p) == "sleep"));
        root > 0 && orphans && shape(root).len() == 3
    });
    let before = shape(root);
    // the orphans: neither session nor group is init's, nor their own
    assert!(before.iter().filter(|s| s.0 != 1).all(|s| s.2 != s.0 && (s.3 != 1 || s.2 != 1)), "{before:?}");
    assert!(before.iter().any(|s| s.0 != 1 && s.3 != 1), "an orphan in another session: {before:?}");
    assert!(before.iter().any(|s| s.0 != 1 && s.3 == 1 && s.2 != 1), "an orphan in another group of init's session: {before:?}");
    let dir = tmp.join("img");
    std::fs::create_dir_all(&dir).unwrap();
    criu_ok(Path::new(CRIU), &["dump", "-t", &root.to_string()], &dir, "dump.log");
    wait_until("the tree gone", Duration::from_secs(5), || tagged(&tag).is_empty());
    let st = Command::new(restorer).args(["restore", "-d", "-v4", "-o", "restore.log", "-D"]).arg(&dir).current_dir(&work).status().unwrap();
    let log = std::fs::read_to_string(dir.join("restore.log")).unwrap_or_default();
    assert!(st.success(), "{who} restore failed:\n{log}");
    let root = ns_init(&tagged(&format!("{tag}3"))).expect("the restored init");
    assert_eq!(shape(root), before, "{who}: the restored tree's (pid, parent, group, session)");
    // the helpers are gone: only the three processes are left
    assert_eq!(tagged(&tag).len(), 3, "{who}: {:?}", tagged(&tag));
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn gone_session_and_group_leaders_restore_with_ours() {
    gone_leaders(Path::new(CRIU), "ours");
}

#[test]
fn gone_session_and_group_leaders_restore_with_upstream() {
    gone_leaders(&upstream(), "upstream");
}

// ---- hostile pstree images ----

/// A copy of upstream's `tree` image set with pstree.img rewritten by
/// `edit`; our restore must refuse it, naming `want`, creating nothing.
fn refuse_pstree(name: &str, edit: impl FnOnce(&mut Vec<pb::PstreeEntry>), want: &str) {
    require!(why_not_root().or_else(|| why_not_fixture("upstream/tree")));
    let up = test_support::fixture("upstream/tree/images");
    let dir = test_dir(&format!("tree-restore-hostile-{name}"));
    for e in std::fs::read_dir(&up).unwrap().flatten() {
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    let mut ps: Vec<pb::PstreeEntry> = images_proto::image::read_all(&dir, "pstree.img", &mg::PSTREE).unwrap();
    edit(&mut ps);
    images_proto::image::write_all(&dir, "pstree.img", &mg::PSTREE, &ps).unwrap();
    let before: Vec<i32> = live_with_exe(Path::new("/srv/criu-fixtures/bin/fx-tree"));
    let (st, log) = criu_env(Path::new(CRIU), &["restore", "-d"], &dir, "restore.log", &[]);
    assert_eq!(st.code(), Some(1), "{name}: {log}");
    assert!(log.contains("pstree.img") && log.contains(want), "{name}: not refused by name ({want:?}):\n{log}");
    assert!(!log.contains("panicked"), "{name}: {log}");
    assert_eq!(live_with_exe(Path::new("/srv/criu-fixtures/bin/fx-tree")), before, "{name}: the refused restore created processes");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hostile_pstree_images_are_refused() {
    // entries: 1 root, 2 writer, 3 reader, 4 grandchild (of 3), 5 zombie
    refuse_pstree("parent-after-child", |ps| ps.swap(2, 3), "its parent 3 is not an earlier entry");
    refuse_pstree("child-of-zombie", |ps| { ps.swap(3, 4); ps[4].ppid = 5 }, "its parent 5 (entry 3) is a zombie");
    refuse_pstree("pid-twice", |ps| ps[2].pid = 2, "pid 2 is also entry 1's");
    refuse_pstree("thread-is-a-pid", |ps| ps[1].threads.push(3), "thread id 3");
    refuse_pstree("leader-elsewhere", |ps| ps[1].sid = 2, "a session leader in group 1");
    refuse_pstree("pid-range", |ps| ps[4].pid = 1 << 30, "out of range");
    refuse_pstree("no-entries", |ps| ps.clear(), "no processes");
    refuse_pstree("first-thread", |ps| ps[1].threads = vec![7], "its first thread is 7");
}

/// `--restore-sibling` (what runc asks for): the restored root is a child
/// of criu's parent (here the test itself), criu returns without waiting
/// for it, and the tree runs on; criu killed during such a restore leaves
/// nothing.
#[test]
fn restore_sibling_makes_the_root_a_child_of_criu_s_parent() {
    require!(why_not_here());
    let tmp = test_dir("tree-restore-sibling");
    let mut fx = Fixture::start("tree", &tmp, Ns::OwnPidNs);
    let img = tmp.join("img");
    std::fs::create_dir_all(&img).unwrap();
    criu_ok(Path::new(CRIU), &["dump", "-t", &fx.pid.to_string()], &img, "dump.log");
    // the engine killed before it has seized the root: the root is not
    // its child (no parent-death signal) but watches it, and goes
    for point in ["after-clone", "after-reports", "mid-mm"] {
        let (st, log) = criu_env(Path::new(CRIU), &["restore", "--restore-sibling"], &img, "restore.log", &[("CRIU_RS_FAULT_AT", point)]);
        assert_killed(st, point, &log);
        wait_until(&format!("nothing left after the engine died at {point}"), Duration::from_secs(5), || live_with_exe(&fx.bin).is_empty());
    }
    let t = fx.tick();
    let started = std::time::Instant::now();
    let st = Command::new(CRIU).args(["restore", "--restore-sibling", "-v4", "-o", "restore.log", "-D"]).arg(&img).current_dir(&fx.work).status().unwrap();
    assert!(st.success(), "{}", std::fs::read_to_string(img.join("restore.log")).unwrap_or_default());
    assert!(started.elapsed() < Duration::from_secs(10), "criu waited for the sibling it restored");
    wait_until("ticks after the restore", Duration::from_secs(15), || fx.tick() > t + 3);
    fx.refind();
    let st = std::fs::read_to_string(format!("/proc/{}/status", fx.pid)).unwrap();
    let ppid: u32 = st.lines().find_map(|l| l.strip_prefix("PPid:")).unwrap().trim().parse().unwrap();
    assert_eq!(ppid, std::process::id(), "the restored root's parent is criu's parent");
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// An eventfd and an epoll set made by the root and inherited by its child
/// (one description each, held by both processes): the child keeps adding
/// to the eventfd, the root keeps waiting on its epoll set and reading;
/// dumped and restored twice (and once with `--leave-running`), it ticks on
/// with no FAIL.
#[test]
fn event_objects_shared_by_a_tree() {
    require!(why_not_here());
    let tmp = test_dir("tree-restore-events");
    let mut fx = Fixture::start_ours("treeev", &tmp, Ns::OwnPidNs);
    for round in 0..3 {
        let img = tmp.join(format!("img{round}"));
        std::fs::create_dir_all(&img).unwrap();
        let leave = round == 0;
        let mut args = vec!["dump", "-t"];
        let p = fx.pid.to_string();
        args.push(&p);
        if leave {
            args.push("--leave-running");
        }
        criu_ok(Path::new(CRIU), &args, &img, "dump.log");
        if leave {
            fx.ticks_on(3, "after the --leave-running dump");
            continue;
        }
        let t = fx.tick();
        let st = Command::new(CRIU).args(["restore", "-d", "-v4", "-o", "restore.log", "-D"]).arg(&img).current_dir(&fx.work).status().unwrap();
        assert!(st.success(), "round {round}: {}", std::fs::read_to_string(img.join("restore.log")).unwrap_or_default());
        wait_until("ticks after the restore", Duration::from_secs(15), || fx.tick() > t + 3);
        fx.refind();
    }
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// `restore --root R` of a tree: every process resolves the image's paths
/// inside R (the children too, which report their pids before their
/// chroot), and the whole tree ticks on there.
#[test]
fn tree_restores_inside_a_root() {
    require!(why_not_here().or_else(|| why_not_tools(&["mknod"])));
    let tmp = test_dir("tree-restore-root");
    let fx = Fixture::start("tree", &tmp, Ns::OwnPidNs);
    let img = tmp.join("img");
    std::fs::create_dir_all(&img).unwrap();
    criu_ok(Path::new(CRIU), &["dump", "-t", &fx.pid.to_string()], &img, "dump.log");
    wait_until("the dumped tree gone", Duration::from_secs(5), || live_with_exe(&fx.bin).is_empty());
    let root = tmp.join("root");
    let inr = |p: &Path| root.join(p.strip_prefix("/").unwrap());
    std::fs::create_dir_all(inr(&fx.work)).unwrap();
    std::fs::copy(&fx.bin, inr(&fx.bin)).unwrap();
    std::fs::copy(fx.log(), inr(&fx.log())).unwrap();
    std::fs::create_dir_all(root.join("dev")).unwrap();
    assert!(Command::new("mknod").args(["-m", "666"]).arg(root.join("dev/null")).args(["c", "1", "3"]).status().unwrap().success());
    let t = last_tick(&inr(&fx.log()));
    let (st, log) = criu_env(Path::new(CRIU), &["restore", "-d", "--root", root.to_str().unwrap()], &img, "restore.log", &[]);
    let rbin = inr(&fx.bin);
    struct Kill(PathBuf);
    impl Drop for Kill {
        fn drop(&mut self) {
            for p in live_with_exe(&self.0) {
                let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
            }
        }
    }
    let kill = Kill(rbin.clone());
    assert!(st.success(), "restore --root of a tree failed:\n{log}");
    wait_until("ticks inside the root", Duration::from_secs(15), || last_tick(&inr(&fx.log())) > t + 3);
    assert_eq!(live_with_exe(&rbin).len(), 4, "the tree's 4 live processes, inside the root");
    assert_eq!(fx.tick(), t, "the host's log was written: a path resolved outside the root");
    // (killed while their executable still has its name: found by it)
    drop(kill);
    wait_until("the restored tree gone", Duration::from_secs(5), || live_with_exe(&rbin).is_empty());
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}
