//! Private memory a child inherited and has not written stays shared
//! copy-on-write through our restore (restore/cow.rs), with real
//! processes: tests/progs/cowtree.c, a root with a 48 MiB private region
//! (and 4 MiB of MADV_HUGEPAGE memory), three children that each write a
//! tenth of it and drop 32 pages of it, a grandchild that writes another
//! tenth of what it inherited; every process checks a checksum of every
//! page of its own view each tick.
//!
//! - After our restore each process sees exactly its own content (the
//!   programs check it), and the tree's memory (the sum of its
//!   processes' PSS from /proc/PID/smaps_rollup) is close to the dumped
//!   tree's, not one copy per process.
//! - A write in a child after the restore does not show in its parent,
//!   its sibling or its own child (they go on checking their own pages).
//! - The same for the images upstream CRIU 4.2 writes of that tree.
//! - Candidates a parent cannot map (half of them, `CRIU_RS_COW=alternate`)
//!   are restored as copies, beside those kept, with the right contents.
//!
//! Needs root, gcc, unshare and setsid (and the upstream binary for the
//! second test).

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const MIB: u64 = 48;

struct Tree {
    bin: PathBuf,
    work: PathBuf,
    root: i32,
}

impl Drop for Tree {
    fn drop(&mut self) {
        for p in live_with_exe(&self.bin) {
            let _ = Command::new("kill").args(["-9", &p.to_string()]).stderr(Stdio::null()).status();
        }
    }
}

fn ns_pid(pid: i32) -> i32 {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    st.lines().find(|l| l.starts_with("NSpid:")).and_then(|l| l.split_whitespace().last()?.parse().ok()).unwrap_or(0)
}

impl Tree {
    fn start(bin: PathBuf, work: PathBuf) -> Tree {
        std::fs::create_dir_all(&work).unwrap();
        let mut cmd = Command::new("unshare");
        only_stdio(&mut cmd).args(["--pid", "--fork", "setsid"]).arg(&bin).args([MIB.to_string(), "3".into()]).current_dir(&work);
        let mut starter = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start the tree");
        std::thread::spawn(move || starter.wait());
        wait_until("ready", Duration::from_secs(20), || work.join("ready").exists());
        let mut t = Tree { bin, work, root: 0 };
        wait_until("first tick", Duration::from_secs(10), || t.tick() >= 1);
        t.refind();
        t
    }

    fn refind(&mut self) {
        let roots: Vec<i32> = live_with_exe(&self.bin).into_iter().filter(|&p| ns_pid(p) == 1).collect();
        assert_eq!(roots.len(), 1, "one root expected: {roots:?}");
        self.root = roots[0];
    }

    fn tick(&self) -> u64 {
        last_tick(&self.work.join("progress.log"))
    }

    fn ticks_on(&self, n: u64, what: &str) {
        let t = self.tick();
        wait_until(&format!("{n} ticks {what}"), Duration::from_secs(20), || self.tick() >= t + n);
    }

    /// The root and its descendants.
    fn members(&self) -> Vec<i32> {
        let mut out = Vec::new();
        let mut stack = vec![self.root];
        while let Some(p) = stack.pop() {
            out.push(p);
            for t in std::fs::read_dir(format!("/proc/{p}/task")).into_iter().flatten().flatten() {
                let c = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                stack.extend(c.split_whitespace().filter_map(|v| v.parse::<i32>().ok()));
            }
        }
        out
    }

    /// Sum over the tree of (Pss, Private_Dirty) in KiB (smaps_rollup).
    fn memory(&self) -> (u64, u64) {
        let mut tot = (0, 0);
        for p in self.members() {
            let s = std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).unwrap_or_default();
            let field = |k: &str| -> u64 { s.lines().find_map(|l| l.strip_prefix(k)).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0) };
            tot.0 += field("Pss:");
            tot.1 += field("Private_Dirty:");
        }
        tot
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Dumper {
    Ours,
    Upstream,
}

/// `cow_env`: `CRIU_RS_COW` for the restore (`alternate`: every second
/// candidate a parent would map for its children falls back to the
/// ordinary path; then only the contents are checked).
fn inherited_memory_stays_shared(by: Dumper, cow_env: Option<&str>) {
    require!(why_not_root()
        .or_else(|| why_not_tools(&["gcc", "unshare", "setsid"]))
        .or_else(|| (by == Dumper::Upstream && !upstream().exists()).then(|| format!("{} not found", upstream().display()))));
    // (a directory and a binary per test: tests run in parallel, and the
    // tree is found by its binary)
    let tmp = test_dir(&format!("cow-tree-{by:?}-{}", cow_env.unwrap_or("on")));
    let bin = tmp.join("cowtree");
    let st = Command::new("gcc")
        .args(["-O2", "-static", "-o"])
        .arg(&bin)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/progs/cowtree.c"))
        .status()
        .expect("gcc");
    assert!(st.success(), "building cowtree");
    let mut t = Tree::start(bin, tmp.join("work"));
    let members = t.members();
    assert_eq!(members.len(), 5, "root, three children, a grandchild: {members:?}");
    let (pss0, dirty0) = t.memory();
    let dir = tmp.join("img");
    std::fs::create_dir_all(&dir).unwrap();
    let dumper = match by {
        Dumper::Ours => PathBuf::from(CRIU),
        Dumper::Upstream => upstream(),
    };
    criu_ok(&dumper, &["dump", "-t", &t.root.to_string()], &dir, "dump.log");
    wait_until("the tree gone after the dump", Duration::from_secs(5), || members.iter().all(|&p| !alive(p)));
    let tick = t.tick();
    let mut restore = Command::new(CRIU);
    if let Some(v) = cow_env {
        restore.env("CRIU_RS_COW", v);
    }
    let st = restore
        .args(["restore", "-d", "-v4", "-o", "restore.log", "-D"])
        .arg(&dir)
        .current_dir(&t.work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    let log = std::fs::read_to_string(dir.join("restore.log")).unwrap_or_default();
    assert!(st.success(), "restore failed:\n{log}");
    // two full checks of every page in every process
    wait_until("ticks after the restore", Duration::from_secs(20), || t.tick() > tick + 2);
    t.refind();
    assert_eq!(t.members().len(), 5, "the restored tree");
    let (pss1, dirty1) = t.memory();
    eprintln!("tree memory, KiB: dumped Pss {pss0} Private_Dirty {dirty0}; restored Pss {pss1} Private_Dirty {dirty1}");
    // one copy of the region per process would be ~5 x 48 MiB; the tree
    // holds ~48 MiB + 4 x ~6 MiB written + 4 MiB
    let slack = |kib: u64| kib + kib / 5 + 4096;
    if cow_env.is_some() {
        assert!(log.contains("copy-on-write candidates of process") && log.contains("not kept"), "no candidate fell back:\n{log}");
    } else {
        assert!(log.contains("kept as the restore child made them"), "nothing kept:\n{log}");
        assert!(pss1 <= slack(pss0), "restored tree's PSS {pss1} KiB, dumped {pss0} KiB: inherited memory not shared\n{log}");
        assert!(dirty1 <= slack(dirty0), "restored tree's private dirty memory {dirty1} KiB, dumped {dirty0} KiB");
    }
    // a write in the first child after the restore: its parent, sibling
    // and child keep their own page 1 (they check it each tick)
    let nsp = |p: i32| ns_pid(p);
    let mut kids: Vec<i32> = t.members().into_iter().filter(|&p| p != t.root).collect();
    kids.sort_by_key(|&p| nsp(p));
    let writer = kids[0];
    let _ = Command::new("kill").args(["-USR1", &writer.to_string()]).status();
    let flag = t.work.join(format!("wrote-{}", nsp(writer)));
    wait_until("the child's write", Duration::from_secs(10), || flag.exists());
    t.ticks_on(3, "after a child's write");
    assert_eq!(t.members().len(), 5, "a process found a page it did not write changed");
    drop(t);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn inherited_memory_stays_shared_after_restore() {
    inherited_memory_stays_shared(Dumper::Ours, None);
}

/// Half the candidates left to the ordinary path (as when the engine
/// copy's own memory is where one goes), beside kept ones: every process
/// still sees exactly its own contents.
#[test]
fn candidates_that_cannot_be_premapped_are_restored_as_copies() {
    inherited_memory_stays_shared(Dumper::Ours, Some("alternate"));
}

#[test]
fn inherited_memory_stays_shared_restoring_upstream_images() {
    inherited_memory_stays_shared(Dumper::Upstream, None);
}
