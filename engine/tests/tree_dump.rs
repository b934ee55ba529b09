//! Dumping process trees, with real processes: the `tree` fixture of
//! ../shared/fixtures/progs (a root, a writer and a reader joined by a
//! pipe, a grandchild, an unreaped zombie; each checks the others every
//! tick) started as `unshare --pid --fork setsid fx-tree`, and
//! tests/progs/forkloop.c (a tree that forks and reaps without pause).
//!
//! - `--leave-running`: the whole tree runs on, nothing of it changed, and
//!   the images hold every process (zombie included), one description for
//!   an fd inherited by all, one pipe between writer and reader.
//! - Upstream CRIU 4.2 restores the tree we dumped and it ticks on (the
//!   format check), and so does our own restore (each restoring test runs
//!   with both: `Restorer`).
//! - A tree forking all the time is frozen consistently (every parent in
//!   the images, upstream restores it, no child lost).
//! - The engine killed during a tree dump leaves every process running,
//!   unchanged.
//! - With two CPUs the tree is seized, collected and its memory copied by
//!   two tracer threads (one per CPU): a forking tree is dumped whole by
//!   them, and the engine dying, or one thread failing, while both hold
//!   processes leaves every process running, unchanged.
//!
//! Needs root, gcc, unshare, setsid and the upstream binary; otherwise SKIP
//! (a failure under CI=true).

mod common;

use common::*;
use images_proto::magic as mg;
use images_proto::pb;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Whether `test` cannot run here (then recorded as skipped; under CI=true
/// a missing precondition fails: test-support's `skip`).
fn cannot_run(test: &str, need_upstream: bool) -> bool {
    let reason = why_not_here().or_else(|| (need_upstream && !upstream().exists()).then(|| format!("{} not found", upstream().display())));
    let Some(r) = reason else { return false };
    common::skip(format!("{test}: {r}"));
    true
}

/// A new directory `name` in `tmp`.
fn fresh(tmp: &Path, name: &str) -> PathBuf {
    let d = tmp.join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Source `name` of ../shared/fixtures/progs (found as test_support finds
/// the fixtures: a worktree need not sit beside `shared`).
fn fixture_src(name: &str) -> PathBuf {
    test_support::fixtures_dir().unwrap_or_else(|e| panic!("{e}")).join("progs").join(name)
}

/// gcc -O2 -static `src` (a fixture of ../shared/fixtures/progs, or of tests/progs).
fn build_static(src: &Path, out: &Path) {
    let st = Command::new("gcc").args(["-O2", "-static", "-o"]).arg(out).arg(src).args(["-lpthread", "-lrt"]).status().expect("gcc");
    assert!(st.success(), "building {}", src.display());
}

/// A tree started as `unshare --pid --fork setsid BIN` in `work`; every
/// process running `bin` is killed on drop.
struct TreeFx {
    bin: PathBuf,
    work: PathBuf,
    root: i32,
}

fn ns_pid_is_one(pid: i32) -> bool {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    st.lines().any(|l| l.starts_with("NSpid:") && l.split_whitespace().last() == Some("1"))
}

impl TreeFx {
    fn start(bin: PathBuf, work: PathBuf) -> TreeFx {
        Self::start_in(bin, work, true)
    }

    /// `own_ns`: in a pid namespace of its own (`unshare --pid --fork
    /// setsid`), else in the host's (`setsid`).
    fn start_in(bin: PathBuf, work: PathBuf, own_ns: bool) -> TreeFx {
        std::fs::create_dir_all(&work).unwrap();
        let mut cmd = Command::new(if own_ns { "unshare" } else { "setsid" });
        if own_ns {
            cmd.args(["--pid", "--fork", "setsid"]);
        }
        only_stdio(&mut cmd).arg(&bin).current_dir(&work);
        let mut starter = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start tree");
        std::thread::spawn(move || starter.wait());
        wait_until("ready", Duration::from_secs(10), || work.join("ready").exists());
        let log = work.join("progress.log");
        wait_until("first tick", Duration::from_secs(10), || last_tick(&log) >= 1);
        let mut fx = TreeFx { bin, work, root: 0 };
        fx.refind();
        fx
    }

    /// The root again: the process running `bin` whose parent does not.
    fn refind(&mut self) {
        let live = live_with_exe(&self.bin);
        let ppid = |p: i32| -> i32 {
            let st = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
            st.lines().find_map(|l| l.strip_prefix("PPid:")).unwrap_or("0").trim().parse().unwrap_or(0)
        };
        // pid 1 of its namespace; in the host's, the one whose parent runs something else
        let mut roots: Vec<i32> = live.iter().copied().filter(|&p| ns_pid_is_one(p)).collect();
        if roots.is_empty() {
            roots = live.iter().copied().filter(|&p| !live.contains(&ppid(p))).collect();
        }
        assert_eq!(roots.len(), 1, "one root of {} expected, found {roots:?}", self.bin.display());
        self.root = roots[0];
    }

    fn tick(&self) -> u64 {
        last_tick(&self.work.join("progress.log"))
    }

    fn ticks_on(&self, n: u64, what: &str) {
        let t = self.tick();
        wait_until(&format!("{n} ticks {what}"), Duration::from_secs(15), || self.tick() >= t + n);
    }

    /// Dump the tree with ours into `dir` (`-t ROOT`, killing it) and wait
    /// until every process of it is gone.
    fn dump_gone(&self, dir: &Path) {
        let members = self.members();
        criu_ok(Path::new(CRIU), &["dump", "-t", &self.root.to_string()], dir, "dump.log");
        wait_until("the tree gone after the dump", Duration::from_secs(5), || members.iter().all(|&p| !alive(p)));
    }

    /// Restore `dir` with `r` in the tree's work dir: more than `n` ticks
    /// after it, and the root found again.
    fn restore_ticks(&mut self, r: Restorer, dir: &Path, n: u64) {
        let t = self.tick();
        restore_by(r, dir, &self.work);
        wait_until("ticks after the restore", Duration::from_secs(15), || self.tick() > t + n);
        self.refind();
    }

    /// The root and its descendants, zombies included, depth first.
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

    /// Per process: pid, parent, state letter class (zombie or not), maps,
    /// signal masks, fds, tracer.
    fn snapshot(&self) -> Vec<String> {
        self.snapshot_with(false)
    }

    /// [`TreeFx::snapshot`], leaving out of the maps, with `no_scratch`, an
    /// anonymous rwx mapping: the scratch mapping of an injection session
    /// an engine killed in the middle of it leaves behind (as for one
    /// process: tests/faults.rs).
    fn snapshot_with(&self, no_scratch: bool) -> Vec<String> {
        let scratch = |l: &String| {
            let f: Vec<&str> = l.split_whitespace().collect();
            no_scratch && f.len() == 5 && f[1] == "rwxp" && f[2] == "00000000" && f[4] == "0"
        };
        let mut v: Vec<String> = self
            .members()
            .into_iter()
            .map(|p| {
                let st = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
                let field = |k: &str| st.lines().find_map(|l| l.strip_prefix(k)).unwrap_or("").trim().to_string();
                format!(
                    "{p} ppid {} zombie {} tracer {} maps {:?} masks {:?} fds {:?}",
                    field("PPid:"),
                    !alive(p),
                    field("TracerPid:"),
                    maps(p).into_iter().filter(|l| !scratch(l)).collect::<Vec<_>>(),
                    sigmasks(p),
                    fd_links(p)
                )
            })
            .collect();
        v.sort();
        v
    }
}

impl Drop for TreeFx {
    fn drop(&mut self) {
        for p in live_with_exe(&self.bin) {
            let _ = Command::new("kill").args(["-9", &p.to_string()]).stderr(Stdio::null()).status();
        }
    }
}

/// A fresh dir with the `tree` fixture built in it, and the tree started.
fn start_tree(name: &str) -> (PathBuf, TreeFx) {
    start_fixture(name, "tree")
}

/// [`start_tree`] for fixture `prog` of ../shared/fixtures/progs.
fn start_fixture(name: &str, prog: &str) -> (PathBuf, TreeFx) {
    let tmp = test_dir(&format!("treedump-{name}"));
    let bin = tmp.join(format!("fx-{prog}"));
    build_static(&fixture_src(&format!("{prog}.c")), &bin);
    let fx = TreeFx::start(bin, tmp.join("work"));
    (tmp, fx)
}

fn pstree(dir: &Path) -> Vec<pb::PstreeEntry> {
    images_proto::image::read_all(dir, "pstree.img", &mg::PSTREE).expect("pstree.img")
}

/// Which engine restores a dumped tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restorer {
    Upstream,
    Ours,
}

/// Restore `dir` with `r` (detached, in `work`), as root.
fn restore_by(r: Restorer, dir: &Path, work: &Path) {
    let bin = match r {
        Restorer::Upstream => upstream(),
        Restorer::Ours => PathBuf::from(CRIU),
    };
    let st = Command::new(&bin)
        .args(["restore", "-d", "-v4", "-o", "restore.log", "-D"])
        .arg(dir)
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "{r:?} restore failed:\n{}", std::fs::read_to_string(dir.join("restore.log")).unwrap_or_default());
}

/// Parents before children, each parent in the set, the root first.
fn check_shape(ps: &[pb::PstreeEntry], what: &str) {
    assert!(!ps.is_empty(), "{what}: empty pstree");
    assert_eq!(ps[0].ppid, 0, "{what}: root's ppid in its own pid namespace");
    for (i, e) in ps.iter().enumerate().skip(1) {
        assert!(ps[..i].iter().any(|p| p.pid == e.ppid), "{what}: {} has parent {} not listed before it: {ps:?}", e.pid, e.ppid);
        assert!(!ps[..i].iter().any(|p| p.pid == e.pid), "{what}: pid {} twice: {ps:?}", e.pid);
    }
}

#[test]
fn leave_running_tree_runs_on_unchanged() {
    if cannot_run("leave_running_tree_runs_on_unchanged", false) {
        return;
    }
    let (tmp, fx) = start_tree("leave");
    let dir = fresh(&tmp, "img");
    let before = fx.snapshot();
    assert_eq!(before.len(), 5, "root, writer, reader, grandchild, zombie: {before:#?}");
    criu_ok(Path::new(CRIU), &["dump", "-t", &fx.root.to_string(), "--leave-running"], &dir, "dump.log");
    fx.ticks_on(3, "after the --leave-running dump");
    assert_eq!(fx.snapshot(), before, "the tree changed");
    // the images: every process, the zombie as TASK_DEAD with its status
    let ps = pstree(&dir);
    check_shape(&ps, "tree");
    assert_eq!(ps.len(), 5, "{ps:?}");
    assert!(ps.iter().all(|e| e.pgid == 1 && e.sid == 1), "setsid made pid 1 the session and group leader: {ps:?}");
    let zombies: Vec<&pb::PstreeEntry> = ps.iter().filter(|e| e.threads == [0]).collect();
    assert_eq!(zombies.len(), 1, "{ps:?}");
    let core: Vec<pb::CoreEntry> = images_proto::image::read_all(&dir, &format!("core-{}.img", zombies[0].pid), &mg::CORE).unwrap();
    let tc = core[0].tc.as_ref().expect("zombie's task core");
    assert_eq!((tc.task_state, tc.exit_code), (2, 42 << 8), "zombie: TASK_DEAD, exit(42)");
    assert!(core[0].thread_info.is_none(), "a zombie has no registers");
    // progress.log (fd 3) inherited by all: one description, one id in each fdinfo
    let files: Vec<pb::FileEntry> = images_proto::image::read_all(&dir, "files.img", &mg::FILES).unwrap();
    let log_ids: Vec<u32> = files.iter().filter(|f| f.reg.as_ref().is_some_and(|r| r.name.ends_with("/progress.log"))).map(|f| f.id).collect();
    assert_eq!(log_ids.len(), 1, "progress.log: one files.img entry expected: {files:?}");
    let pipes: Vec<&pb::PipeEntry> = files.iter().filter_map(|f| f.pipe.as_ref()).collect();
    let mut live = 0;
    for e in ps.iter().filter(|e| e.threads != [0]) {
        let ids: Vec<pb::TaskKobjIdsEntry> = images_proto::image::read_all(&dir, &format!("ids-{}.img", e.pid), &mg::IDS).unwrap();
        let fdinfo: Vec<pb::FdinfoEntry> = images_proto::image::read_all(&dir, &format!("fdinfo-{}.img", ids[0].files_id), &mg::FDINFO).unwrap();
        let fd3 = fdinfo.iter().find(|f| f.fd == 3).expect("fd 3");
        assert_eq!(fd3.id, log_ids[0], "pid {}: fd 3 is progress.log's one description", e.pid);
        live += 1;
    }
    assert_eq!(live, 4);
    // the writer-reader pipe: its write end once, its read end once (the
    // reader's and the grandchild's fd share it), its bytes once
    let mut inodes: Vec<u32> = pipes.iter().map(|p| p.pipe_id).collect();
    inodes.sort_unstable();
    let both: Vec<u32> = inodes.windows(2).filter(|w| w[0] == w[1]).map(|w| w[0]).collect();
    assert_eq!(both.len(), 1, "one pipe with both ends in the tree: {pipes:?}");
    assert_eq!(pipes.iter().filter(|p| p.pipe_id == both[0]).count(), 2, "{pipes:?}");
    let data: Vec<pb::PipeDataEntry> = images_proto::image::read_all(&dir, "pipes-data.img", &mg::PIPES_DATA).unwrap();
    assert_eq!(data.iter().filter(|d| d.pipe_id == both[0]).count(), 1, "{data:?}");
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}

fn upstream_restores_our_tree_dump_by(r: Restorer) {
    if cannot_run("upstream_restores_our_tree_dump", r == Restorer::Upstream) {
        return;
    }
    let (tmp, mut fx) = start_tree(&format!("upstream-{r:?}"));
    let dir = fresh(&tmp, "img");
    fx.dump_gone(&dir);
    fx.restore_ticks(r, &dir, 5);
    let live = fx.members().into_iter().filter(|&p| alive(p)).count();
    assert_eq!((live, fx.members().len()), (4, 5), "4 live processes and the zombie restored");
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn upstream_restores_our_tree_dump() {
    upstream_restores_our_tree_dump_by(Restorer::Upstream);
}

#[test]
fn our_restore_brings_back_our_tree_dump() {
    upstream_restores_our_tree_dump_by(Restorer::Ours);
}

/// The `mem` fixture: a child writes MAP_SHARED anonymous memory its
/// parent checks every tick. The object is written once (one
/// pagemap-shmem, the same shmid in both mm images); upstream restores it
/// shared (the parent keeps seeing the child's writes: no FAIL).
fn upstream_restores_shared_anonymous_memory_of_a_tree_by(r: Restorer) {
    if cannot_run("upstream_restores_shared_anonymous_memory_of_a_tree", r == Restorer::Upstream) {
        return;
    }
    let (tmp, mut fx) = start_fixture(&format!("mem-{r:?}"), "mem");
    let dir = fresh(&tmp, "img");
    let members = fx.members();
    assert_eq!(members.len(), 2);
    criu_ok(Path::new(CRIU), &["dump", "-t", &fx.root.to_string()], &dir, "dump.log");
    let shm: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("pagemap-shmem-"))
        .collect();
    assert_eq!(shm.len(), 1, "one shared object, written once: {shm:?}");
    let shmid: u64 = shm[0].trim_start_matches("pagemap-shmem-").trim_end_matches(".img").parse().unwrap();
    for e in pstree(&dir) {
        let mm: Vec<pb::MmEntry> = images_proto::image::read_all(&dir, &format!("mm-{}.img", e.pid), &mg::MM).unwrap();
        assert!(mm[0].vmas.iter().any(|v| v.shmid == shmid), "pid {}: no VMA of shmem {shmid}", e.pid);
    }
    wait_until("the tree gone after the dump", Duration::from_secs(5), || members.iter().all(|&p| !alive(p)));
    fx.restore_ticks(r, &dir, 5);
    assert_eq!(fx.members().len(), 2);
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn upstream_restores_shared_anonymous_memory_of_a_tree() {
    upstream_restores_shared_anonymous_memory_of_a_tree_by(Restorer::Upstream);
}

#[test]
fn our_restore_keeps_anonymous_memory_shared_in_a_tree() {
    upstream_restores_shared_anonymous_memory_of_a_tree_by(Restorer::Ours);
}

/// A child mapping a part of a MAP_SHARED anonymous object its parent no
/// longer maps: refused, naming the child, and both run on.
#[test]
fn shared_memory_mapped_differently_is_refused_by_name() {
    if cannot_run("shared_memory_mapped_differently_is_refused_by_name", false) {
        return;
    }
    let tmp = test_dir("treedump-shmsplit");
    let bin = tmp.join("shmsplit");
    build_static(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/progs/shmsplit.c"), &bin);
    let fx = TreeFx::start(bin, tmp.join("work"));
    let members = fx.members();
    assert_eq!(members.len(), 2);
    let before = fx.snapshot();
    let dir = fresh(&tmp, "img");
    let (st, log) = criu_env(Path::new(CRIU), &["dump", "-t", &fx.root.to_string()], &dir, "dump.log", &[]);
    assert_eq!(st.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!("process {}: it maps bytes 0x1000..0x2000 of MAP_SHARED anonymous memory", members[1]))
            && log.contains("shared memory mapped differently across processes is not supported yet"),
        "not refused by name:\n{log}"
    );
    assert_eq!(fx.snapshot(), before, "the refused dump changed the tree");
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}

fn state_letter(pid: i32) -> char {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    s.rsplit_once(") ").and_then(|(_, r)| r.chars().next()).unwrap_or('?')
}

/// A process of the tree in group-stop (the grandchild, SIGSTOP'ed): dumped
/// as TASK_STOPPED with its signal, and stopped again after a
/// `--leave-running` dump while the others run on.
#[test]
fn stopped_process_of_a_tree_stays_stopped() {
    if cannot_run("stopped_process_of_a_tree_stays_stopped", false) {
        return;
    }
    let (tmp, fx) = start_tree("stopped");
    let members = fx.members();
    // the grandchild: the child of a child of the root
    let gc = *members
        .iter()
        .find(|&&p| {
            let st = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
            let ppid: i32 = st.lines().find_map(|l| l.strip_prefix("PPid:")).unwrap_or("0").trim().parse().unwrap_or(0);
            ppid != fx.root && members.contains(&ppid)
        })
        .expect("grandchild");
    assert_eq!(send_signal(gc, libc::SIGSTOP), 0);
    wait_until("grandchild stopped", Duration::from_secs(5), || state_letter(gc) == 'T');
    let before = fx.snapshot();
    let dir = fresh(&tmp, "img");
    criu_ok(Path::new(CRIU), &["dump", "-t", &fx.root.to_string(), "--leave-running"], &dir, "dump.log");
    fx.ticks_on(3, "after the dump");
    wait_until("grandchild stopped again", Duration::from_secs(5), || state_letter(gc) == 'T');
    assert_eq!(fx.snapshot(), before, "the tree changed");
    for &p in &members {
        if p != gc && alive(p) {
            assert_ne!(state_letter(p), 'T', "{p} was left stopped");
        }
    }
    let ps = pstree(&dir);
    let stopped: Vec<(u32, Option<u32>)> = ps
        .iter()
        .filter(|e| e.threads != [0])
        .filter_map(|e| {
            let core: Vec<pb::CoreEntry> = images_proto::image::read_all(&dir, &format!("core-{}.img", e.pid), &mg::CORE).unwrap();
            let tc = core[0].tc.clone()?;
            (tc.task_state == 3).then_some((e.pid, tc.stop_signo))
        })
        .collect();
    assert_eq!(stopped.len(), 1, "one TASK_STOPPED process: {stopped:?}");
    assert_eq!(stopped[0].1, Some(libc::SIGSTOP as u32));
    assert_eq!(send_signal(gc, libc::SIGCONT), 0);
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}

fn send_signal(pid: i32, sig: i32) -> i32 {
    let st = Command::new("kill").args([format!("-{sig}"), pid.to_string()]).stderr(Stdio::null()).status().unwrap();
    if st.success() { 0 } else { -1 }
}

/// `unshare --pid --fork setsid sh -c SCRIPT` in `work`: the root (pid 1 of
/// its namespace, running sh) and its children once there are `n`.
fn start_sh_tree(script: &str, work: &Path, n: usize) -> (i32, Vec<i32>) {
    std::fs::create_dir_all(work).unwrap();
    let mut cmd = Command::new("unshare");
    only_stdio(&mut cmd).args(["--pid", "--fork", "setsid", "sh", "-c", script]).current_dir(work);
    let mut starter = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start sh tree");
    let unshare = starter.id() as i32;
    std::thread::spawn(move || starter.wait());
    let children = |p: i32| -> Vec<i32> {
        std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default().split_whitespace().filter_map(|v| v.parse().ok()).collect()
    };
    let mut root = 0;
    wait_until("the sh tree", Duration::from_secs(10), || {
        root = children(unshare).first().copied().unwrap_or(0);
        root > 0 && children(root).len() >= n
    });
    (root, children(root))
}

fn kill_all(pids: &[i32]) {
    for p in pids {
        let _ = send_signal(*p, libc::SIGKILL);
    }
}

/// Kills its processes when dropped (a failing test leaves nothing).
struct KillOnDrop(Vec<i32>);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        kill_all(&self.0);
    }
}

/// A tree whose processes have different uids (a root shell, a child of
/// uid 65534): dumped, and upstream 4.2 restores it with the uids as they
/// were (as root on this machine).
fn tree_with_another_uid_dumps_by(r: Restorer) {
    if cannot_run("tree_with_another_uid_dumps", r == Restorer::Upstream) {
        return;
    }
    let tmp = test_dir(&format!("treedump-uid-{r:?}"));
    let tag = format!("{}", 1_000_000 + std::process::id() % 1_000_000 + if r == Restorer::Ours { 100 } else { 0 });
    let script = format!("setpriv --reuid=65534 --regid=65534 --clear-groups sleep {tag} & sleep {tag}");
    let (root, kids) = start_sh_tree(&script, &tmp.join("work"), 2);
    let _guard = KillOnDrop([&kids[..], &[root]].concat());
    let uids = |pids: &[i32]| -> Vec<String> {
        let mut v: Vec<String> = pids
            .iter()
            .map(|p| {
                let st = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
                st.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap_or("").split_whitespace().collect::<Vec<_>>().join(" ")
            })
            .collect();
        v.sort();
        v
    };
    // (the children exist before they have exec'd sleep and changed uid)
    wait_until("the children running sleep, one as 65534", Duration::from_secs(10), || {
        kids.iter().all(|&p| comm(p) == "sleep") && uids(&kids).iter().any(|u| u.starts_with("65534"))
    });
    let before = uids(&kids);
    let dir = fresh(&tmp, "img");
    criu_ok(Path::new(CRIU), &["dump", "-t", &root.to_string()], &dir, "dump.log");
    assert_eq!(pstree(&dir).len(), 3);
    // the restored processes: their cmdline carries the tag
    let tagged = || -> Vec<i32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|p| std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default().windows(tag.len()).any(|w| w == tag.as_bytes()))
            .collect()
    };
    struct KillTagged<F: Fn() -> Vec<i32>>(F);
    impl<F: Fn() -> Vec<i32>> Drop for KillTagged<F> {
        fn drop(&mut self) {
            kill_all(&(self.0)());
        }
    }
    let _restored_guard = KillTagged(tagged);
    restore_by(r, &dir, &tmp.join("work"));
    let mut restored = Vec::new();
    wait_until("restored processes", Duration::from_secs(10), || {
        restored = tagged();
        restored.len() >= 3
    });
    let sleeps: Vec<i32> = restored.iter().copied().filter(|p| comm(*p) == "sleep").collect();
    let after = uids(&sleeps);
    assert_eq!(after, before, "uids after the restore");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn tree_with_another_uid_dumps() {
    tree_with_another_uid_dumps_by(Restorer::Upstream);
}

#[test]
fn tree_with_another_uid_restores_with_ours() {
    tree_with_another_uid_dumps_by(Restorer::Ours);
}

/// A process of the tree that made a pid namespace of its own below the
/// root: refused by name, and the tree runs on.
#[test]
fn nested_pid_namespace_is_refused_by_name() {
    if cannot_run("nested_pid_namespace_is_refused_by_name", false) {
        return;
    }
    let tmp = test_dir("treedump-nestedns");
    let (root, kids) = start_sh_tree("unshare --pid --fork sleep 1000 & sleep 1000", &tmp.join("work"), 2);
    let _guard = KillOnDrop([&kids[..], &[root]].concat());
    // (until `unshare` has made its namespace and forked into it)
    wait_until("a process in the nested pid namespace", Duration::from_secs(10), || {
        kids.iter().any(|p| !std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default().trim().is_empty())
    });
    let dir = fresh(&tmp, "img");
    let (st, log) = criu_env(Path::new(CRIU), &["dump", "-t", &root.to_string()], &dir, "dump.log", &[]);
    let ok = kids.iter().all(|&p| alive(p)) && alive(root);
    let mut all = kids.clone();
    all.push(root);
    kill_all(&all);
    assert_eq!(st.code(), Some(1), "{log}");
    assert!(log.contains("pid namespace") && log.contains("not supported"), "not refused by name:\n{log}");
    assert!(ok, "the refused dump did not leave the tree running");
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Threads in every process of a tree (tests/progs/treethreads.c: 3 in
/// the root, 4 in its child, all counting in shared memory the root
/// checks): every thread is in the images (pstree threads, a core each),
/// `--leave-running` leaves all running, and upstream restores the tree
/// with all its threads counting.
fn threads_in_every_process_of_a_tree_by(r: Restorer) {
    if cannot_run("threads_in_every_process_of_a_tree", r == Restorer::Upstream) {
        return;
    }
    let tmp = test_dir(&format!("treedump-threads-{r:?}"));
    let bin = tmp.join("treethreads");
    build_static(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/progs/treethreads.c"), &bin);
    let mut fx = TreeFx::start(bin, tmp.join("work"));
    let dir = fresh(&tmp, "img0");
    let before = fx.snapshot();
    criu_ok(Path::new(CRIU), &["dump", "-t", &fx.root.to_string(), "--leave-running"], &dir, "dump.log");
    fx.ticks_on(3, "after the --leave-running dump");
    assert_eq!(fx.snapshot(), before, "the tree changed");
    let ps = pstree(&dir);
    let threads: Vec<usize> = ps.iter().map(|e| e.threads.len()).collect();
    assert_eq!(threads, [3, 4], "{ps:?}");
    for t in ps.iter().flat_map(|e| &e.threads) {
        assert!(dir.join(format!("core-{t}.img")).exists(), "no core of thread {t}");
    }
    let dir = fresh(&tmp, "img1");
    fx.dump_gone(&dir);
    fx.restore_ticks(r, &dir, 5);
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn threads_in_every_process_of_a_tree() {
    threads_in_every_process_of_a_tree_by(Restorer::Upstream);
}

#[test]
fn threads_in_every_process_of_a_tree_restore_with_ours() {
    threads_in_every_process_of_a_tree_by(Restorer::Ours);
}

/// A tree in the host pid namespace (`setsid fx-tree`): dumped, its pids
/// free again when the dump returns (the orphans' reaper here takes up to
/// ~2 s: the pids are waited for together), and upstream restores it with
/// the same pids, session and group.
fn host_pid_namespace_tree_restores_with_upstream_by(r: Restorer) {
    if cannot_run("host_pid_namespace_tree_restores_with_upstream", r == Restorer::Upstream) {
        return;
    }
    let tmp = test_dir(&format!("treedump-hostns-{r:?}"));
    let bin = tmp.join("fx-tree");
    build_static(&fixture_src("tree.c"), &bin);
    let mut fx = TreeFx::start_in(bin, tmp.join("work"), false);
    let members = fx.members();
    assert_eq!(members.len(), 5);
    let dir = fresh(&tmp, "img");
    let t0 = std::time::Instant::now();
    criu_ok(Path::new(CRIU), &["dump", "-t", &fx.root.to_string()], &dir, "dump.log");
    let took = t0.elapsed();
    let ps = pstree(&dir);
    assert_eq!(ps[0].ppid, 0, "the root's ppid, as upstream writes it: {ps:?}");
    let mut pids: Vec<i32> = ps.iter().map(|e| e.pid as i32).collect();
    pids.sort_unstable();
    let mut want = members.clone();
    want.sort_unstable();
    assert_eq!(pids, want, "host pids in the images");
    assert!(members.iter().all(|p| !Path::new(&format!("/proc/{p}")).exists()), "pids still taken when the dump returned");
    assert!(took < Duration::from_secs(5), "the dump took {took:?}");
    fx.restore_ticks(r, &dir, 5);
    let mut now = fx.members();
    now.sort_unstable();
    assert_eq!(now, want, "restored with the same pids");
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn host_pid_namespace_tree_restores_with_upstream() {
    host_pid_namespace_tree_restores_with_upstream_by(Restorer::Upstream);
}

#[test]
fn host_pid_namespace_tree_restores_with_ours() {
    host_pid_namespace_tree_restores_with_upstream_by(Restorer::Ours);
}

fn forking_tree_is_frozen_consistently_by(r: Restorer) {
    if cannot_run("forking_tree_is_frozen_consistently", r == Restorer::Upstream) {
        return;
    }
    let tmp = test_dir(&format!("treedump-forkloop-{r:?}"));
    let bin = tmp.join("forkloop");
    build_static(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/progs/forkloop.c"), &bin);
    let mut fx = TreeFx::start(bin, tmp.join("work"));
    let mut sizes = Vec::new();
    for round in 0..5 {
        let dir = fresh(&tmp, &format!("img{round}"));
        let log = criu_ok(Path::new(CRIU), &["dump", "-t", &fx.root.to_string(), "--leave-running"], &dir, "dump.log");
        if why_not_two_cpus().is_none() {
            assert!(log.contains("by 2 tracer threads"), "round {round}: the tree was not dumped by the tracer threads:\n{log}");
        }
        let ps = pstree(&dir);
        check_shape(&ps, &format!("round {round}"));
        for e in &ps {
            let core: Vec<pb::CoreEntry> = images_proto::image::read_all(&dir, &format!("core-{}.img", e.pid), &mg::CORE).unwrap();
            let dead = core[0].tc.as_ref().is_some_and(|tc| tc.task_state == 2);
            assert_eq!(dead, e.threads == [0], "round {round}: pid {}: core and pstree disagree on being a zombie", e.pid);
        }
        sizes.push(ps.len());
        fx.ticks_on(2, &format!("after dump round {round}"));
    }
    eprintln!("forkloop: trees of {sizes:?} processes dumped");
    assert!(sizes.iter().any(|&n| n > 2), "never caught a child with its grandchild: {sizes:?}");
    // the last one for real: upstream restores it and no child goes missing
    let dir = fresh(&tmp, "last");
    let root = fx.root;
    criu_ok(Path::new(CRIU), &["dump", "-t", &root.to_string()], &dir, "dump.log");
    wait_until("the tree gone after the dump", Duration::from_secs(5), || !alive(root));
    fx.restore_ticks(r, &dir, 3);
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn forking_tree_is_frozen_consistently() {
    forking_tree_is_frozen_consistently_by(Restorer::Upstream);
}

#[test]
fn forking_tree_restores_with_ours() {
    forking_tree_is_frozen_consistently_by(Restorer::Ours);
}

#[test]
fn engine_killed_during_a_tree_dump_leaves_the_tree_running() {
    if cannot_run("engine_killed_during_a_tree_dump_leaves_the_tree_running", false) {
        return;
    }
    let (tmp, fx) = start_tree("faults");
    let criu = private_criu(&tmp);
    for (i, point) in ["mid-freeze", "mid-freeze@3", "after-freeze", "mid-inject@30", "after-parasite@2", "after-parasite@4", "mid-memory", "mid-pump", "mid-pump@3", "before-inventory"]
        .iter()
        .enumerate()
    {
        let dir = fresh(&tmp, &format!("img{i}"));
        // as for one process (tests/faults.rs): an injection session cut
        // short, the page pump's included, may leave its scratch mapping;
        // with tracer threads (two CPUs) also the other thread's session,
        // at any point once the collection has begun
        let collecting = !point.starts_with("mid-freeze") && *point != "after-freeze";
        let tolerate = point.starts_with("mid-inject")
            || point.starts_with("mid-pump")
            || *point == "mid-memory"
            || *point == "before-inventory"
            || (collecting && why_not_two_cpus().is_none());
        let before = fx.snapshot_with(tolerate);
        let (st, log) = criu_env(&criu, &["dump", "-t", &fx.root.to_string()], &dir, "dump.log", &[("CRIU_RS_FAULT_AT", point)]);
        assert_killed(st, point, &log);
        fx.ticks_on(3, &format!("after the engine died at {point}"));
        let after = fx.snapshot_with(tolerate);
        assert_eq!(after, before, "{point}: the tree changed");
        assert!(!dir.join("inventory.img").exists(), "{point}: a killed dump left inventory.img");
        eprintln!("engine killed at {point}: every process of the tree runs on unchanged");
    }
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// `Some` reason when the engine would dump a tree on one thread (no
/// tracer threads: one CPU).
fn why_not_two_cpus() -> Option<String> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (n < 2).then(|| format!("needs 2 CPUs for the dump's tracer threads ({n} here)"))
}

/// The tree dumped by two tracer threads (one per CPU, each seizing,
/// injecting into and releasing its own processes): the engine killed
/// once the second process is collected, while the other thread still
/// injects, or in one thread's injection or page pump; or the job of one
/// thread failing (`:fail`) while the other holds its processes mid-way:
/// every process of the tree runs on unchanged, nothing published.
#[test]
fn tracer_threads_stopped_midway_leave_the_tree_running() {
    if cannot_run("tracer_threads_stopped_midway_leave_the_tree_running", false) {
        return;
    }
    require!(why_not_two_cpus());
    let (tmp, fx) = start_tree("tracers-faults");
    let criu = private_criu(&tmp);
    for (i, point) in ["mid-tracers", "mid-tracers:fail", "mid-inject@12", "mid-pump@3", "mid-memory@2"].iter().enumerate() {
        let dir = fresh(&tmp, &format!("img{i}"));
        // (as for one process, tests/faults.rs: an injection session cut
        // short may leave its scratch mapping: here the other thread's too;
        // a failure leaves nothing)
        let tolerate = !point.ends_with(":fail");
        let before = fx.snapshot_with(tolerate);
        let (st, log) = criu_env(&criu, &["dump", "-t", &fx.root.to_string()], &dir, "dump.log", &[("CRIU_RS_FAULT_AT", point)]);
        assert!(log.contains("by 2 tracer threads"), "{point}: the tree was not dumped by the tracer threads:\n{log}");
        if point.ends_with(":fail") {
            assert_eq!(st.code(), Some(1), "{point}: {log}");
            assert!(log.contains("injected failure in a dump tracer thread"), "{point}: {log}");
            // (a failed dump into a fresh directory removes what it wrote)
            let left: Vec<String> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            assert!(left.iter().all(|n| !n.ends_with(".img") && !n.starts_with(".criu-rs-staging")), "{point}: a failed dump left {left:?}");
        } else {
            assert_killed(st, point, &log);
        }
        fx.ticks_on(3, &format!("after the dump stopped at {point}"));
        let after = fx.snapshot_with(tolerate);
        assert_eq!(after, before, "{point}: the tree changed");
        assert!(!dir.join("inventory.img").exists(), "{point}: a stopped dump left inventory.img");
        eprintln!("dump stopped at {point} with tracer threads: every process of the tree runs on unchanged");
    }
    // the directory a killed dump left its pages files in (written
    // straight into it, fresh) is not fresh any more: the next dump stages
    // its set there and publishes it whole
    let dir = tmp.join("img4");
    assert!(std::fs::read_dir(&dir).unwrap().flatten().any(|e| e.file_name().to_string_lossy().starts_with("pages-")), "mid-memory@2 left no pages file");
    let log = criu_ok(&criu, &["dump", "-t", &fx.root.to_string(), "--leave-running"], &dir, "dump2.log");
    assert!(log.contains("by 2 tracer threads"), "{log}");
    assert!(dir.join("inventory.img").exists());
    check_shape(&pstree(&dir), "a dump over a killed dump's files");
    fx.ticks_on(3, "after the dump over a killed dump's files");
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// `--freeze-cgroup` (the v2 freezer) with a tree: every process is seized
/// while the cgroup is frozen, the tree runs on unchanged after
/// `--leave-running` and the cgroup is thawed; a tree with a process
/// outside the cgroup is refused, naming it, and runs on.
#[test]
fn freeze_cgroup_seizes_the_whole_tree() {
    if cannot_run("freeze_cgroup_seizes_the_whole_tree", false) {
        return;
    }
    let parent = Path::new("/sys/fs/cgroup/unified");
    if !parent.join("cgroup.procs").exists() {
        test_support::skip(format!("no cgroup v2 hierarchy at {}", parent.display()));
        return;
    }
    struct Cg(PathBuf);
    impl Drop for Cg {
        fn drop(&mut self) {
            // (the processes were killed: empty again)
            for _ in 0..50 {
                if std::fs::remove_dir(&self.0).is_ok() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    let (tmp, fx) = start_tree("cgroup");
    let cg = Cg(parent.join(format!("criu-rs-treedump-{}", std::process::id())));
    std::fs::create_dir_all(&cg.0).unwrap();
    let live: Vec<i32> = fx.members().into_iter().filter(|&p| alive(p)).collect();
    // the root alone first: its children are outside the cgroup
    std::fs::write(cg.0.join("cgroup.procs"), fx.root.to_string()).unwrap();
    let dir = fresh(&tmp, "img0");
    let before = fx.snapshot();
    let (st, log) = criu_env(Path::new(CRIU), &["dump", "-t", &fx.root.to_string(), "--freeze-cgroup", cg.0.to_str().unwrap()], &dir, "dump.log", &[]);
    assert_eq!(st.code(), Some(1), "{log}");
    assert!(live[1..].iter().any(|p| log.contains(&format!("process {p} is not in cgroup"))), "a child outside the cgroup named:\n{log}");
    fx.ticks_on(2, "after the refused dump");
    assert_eq!(fx.snapshot(), before, "the refused dump changed the tree");
    // all of it in the cgroup
    for p in &live[1..] {
        std::fs::write(cg.0.join("cgroup.procs"), p.to_string()).unwrap();
    }
    let dir = fresh(&tmp, "img1");
    let log = criu_ok(Path::new(CRIU), &["dump", "-t", &fx.root.to_string(), "--leave-running", "--freeze-cgroup", cg.0.to_str().unwrap()], &dir, "dump.log");
    for p in &live {
        assert!(log.contains(&format!("Seized task {p}")), "{p} not seized:\n{log}");
    }
    assert!(std::fs::read_to_string(cg.0.join("cgroup.events")).unwrap().lines().any(|l| l.trim() == "frozen 0"), "cgroup left frozen");
    fx.ticks_on(3, "after the --freeze-cgroup dump");
    assert_eq!(fx.snapshot(), before, "the tree changed");
    assert_eq!(pstree(&dir).len(), 5);
    drop(fx);
    drop(cg);
    let _ = std::fs::remove_dir_all(&tmp);
}
