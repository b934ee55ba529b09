//! `criu tfork` of process trees, with the shared fixtures `tree` (root,
//! pipe writer and reader, a grandchild, an unreaped zombie; the root
//! checks its children by pid every tick) and `mem` (shared anonymous
//! memory with a child, file mappings), in the host's pid namespace and as
//! pid 1 of their own.
//!
//! Each clone tree has the source tree's shape (pid, parent, group,
//! session, zombie state and thread count of every process, as seen inside
//! its pid namespace), ticks `ok` in its own `--root-snapshot` overlay
//! beside the source, and is isolated (a write in one clone tree is seen
//! by no other, nor by the source); a killed clone tree leaves the others;
//! the `--persist=sync` image set restores with our restore and upstream
//! CRIU 4.2's; the engine killed at each new fault point leaves the source
//! tree as it was and no clone.
//!
//! Needs root, gcc, unshare, setsid and the shared fixtures; otherwise
//! skips with the reason, or fails under CI=true.

mod common;

use common::*;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// One field of /proc/PID/status, as numbers.
fn status_nums(pid: i32, key: &str) -> Vec<i32> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    st.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map(|v| v.split_whitespace().filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_default()
}

fn inner(pid: i32, key: &str) -> i32 {
    status_nums(pid, key).last().copied().unwrap_or(-1)
}

fn state(pid: i32) -> char {
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    st.rsplit_once(") ").and_then(|(_, r)| r.chars().next()).unwrap_or('?')
}

fn pid_ns(pid: i32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap_or_default()
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string()
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc").unwrap().flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect()
}

/// The source tree rooted at `root` (host pids, the root first).
fn tree_of(root: i32) -> Vec<i32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        for t in std::fs::read_dir(format!("/proc/{p}/task")).into_iter().flatten().flatten() {
            let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            out.extend(kids.split_whitespace().filter_map(|k| k.parse::<i32>().ok()));
        }
        i += 1;
    }
    out
}

/// The processes of clone tree `root` (host pids): every process of its
/// pid namespace but the stand-in init (pid 1 there, `criu-tfork-init`).
fn clone_tree(root: i32) -> Vec<i32> {
    let ns = pid_ns(root);
    let mut v: Vec<i32> = all_pids().into_iter().filter(|&p| pid_ns(p) == ns && !is_init(p)).collect();
    v.sort_unstable();
    v
}

fn is_init(pid: i32) -> bool {
    inner(pid, "NSpid") == 1 && comm(pid) == "criu-tfork-init"
}

/// The stand-in init of clone tree `root`, if it has one.
fn init_of(root: i32) -> Option<i32> {
    let ns = pid_ns(root);
    all_pids().into_iter().find(|&p| pid_ns(p) == ns && is_init(p))
}

/// Shape of the tree `pids` as seen inside its pid namespace: per process
/// (pid, parent (0 outside the tree), group, session, zombie, threads),
/// sorted.
fn shape(pids: &[i32]) -> Vec<(i32, i32, i32, i32, bool, usize)> {
    let mut v: Vec<_> = pids
        .iter()
        .map(|&p| {
            let ppid = status_nums(p, "PPid").first().copied().unwrap_or(0);
            let parent = if pids.contains(&ppid) { inner(ppid, "NSpid") } else { 0 };
            let threads = std::fs::read_dir(format!("/proc/{p}/task")).map(|d| d.count()).unwrap_or(0);
            (inner(p, "NSpid"), parent, inner(p, "NSpgid"), inner(p, "NSsid"), state(p) == 'Z', threads)
        })
        .collect();
    v.sort_unstable();
    v
}

/// Run `criu tfork` with `args` (and `-D img -v4 -o tfork.log`); (status,
/// clone roots printed, log).
fn run_tfork(img: &Path, args: &[&str], env: &[(&str, &str)]) -> (std::process::ExitStatus, Vec<i32>, String) {
    let mut cmd = Command::new(CRIU);
    cmd.arg("tfork").args(args).arg("-D").arg(img).args(["-v4", "-o", "tfork.log"]).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run criu");
    let mut log = std::fs::read_to_string(img.join("tfork.log")).unwrap_or_default();
    log.push_str(&String::from_utf8_lossy(&out.stderr));
    let pids = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect();
    (out.status, pids, log)
}

/// Tick numbers of a fixture log, in order (panics on FAIL).
fn tick_numbers(log: &Path) -> Vec<u64> {
    let s = std::fs::read_to_string(log).unwrap_or_default();
    assert!(!s.contains("FAIL"), "{} reported a failure:\n{s}", log.display());
    s.lines().filter_map(|l| l.strip_prefix("tick ")?.split_whitespace().next()?.parse().ok()).collect()
}

/// Kill `pids` and wait until none exists any more (reaped by whoever is
/// their parent), so their pids are free for a restore.
fn kill_and_wait_gone(pids: &[i32], what: &str) {
    for &p in pids {
        // SAFETY: kill(2) of a process this test started, cloned or restored.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    wait_until(what, Duration::from_secs(10), || pids.iter().all(|&p| !Path::new(&format!("/proc/{p}")).exists()));
}

/// Lowest address of `pid`'s [stack] mapping (below what any of the
/// fixtures' stacks reach).
fn stack_bottom(pid: i32) -> u64 {
    let m = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let l = m.lines().find(|l| l.ends_with("[stack]")).expect("a [stack] mapping");
    u64::from_str_radix(l.split('-').next().unwrap(), 16).unwrap()
}

fn peek(pid: i32, addr: u64) -> u64 {
    let f = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, addr).unwrap();
    u64::from_le_bytes(b)
}

fn poke(pid: i32, addr: u64, v: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(format!("/proc/{pid}/mem")).unwrap();
    f.write_all_at(&v.to_le_bytes(), addr).unwrap();
}

/// The process of tree `pids` whose pid in its namespace is `ns_pid`.
fn by_ns_pid(pids: &[i32], ns_pid: i32) -> i32 {
    *pids.iter().find(|&&p| inner(p, "NSpid") == ns_pid).unwrap_or_else(|| panic!("no process {ns_pid} in {pids:?}"))
}

/// A fixture tree tforked with `--copies 4 --root-snapshot overlay
/// --persist=sync`: shapes, ticks, isolation, a killed clone tree, the
/// persisted set restored by ours and by upstream.
fn clone_trees(name: &str, ns: Ns) {
    require!(why_not_here());
    let dir = test_dir(&format!("tforktree-{name}-{}", if ns == Ns::Host { "host" } else { "ownns" }));
    let img = dir.join("img");
    std::fs::create_dir_all(&img).unwrap();
    let fx = Fixture::start(name, &dir, ns);
    let src = tree_of(fx.pid);
    assert!(src.len() > 1, "{name}: a tree expected, found {src:?}");
    let src_shape = shape(&src);
    let (st, clones, log) = run_tfork(&img, &["-t", &fx.pid.to_string(), "--copies", "4", "--root-snapshot", "overlay", "--persist=sync"], &[]);
    assert!(st.success(), "{log}");
    assert_eq!(clones.len(), 4, "{log}");
    let at_fork = fx.tick();
    let mut namespaces = vec![pid_ns(fx.pid), pid_ns(std::process::id() as i32)];
    let mut trees = Vec::new();
    for &c in &clones {
        let ns_c = pid_ns(c);
        assert!(!namespaces.contains(&ns_c), "clone {c}: pid namespace {ns_c:?} not its own");
        namespaces.push(ns_c);
        let nsp = status_nums(c, "NSpid");
        assert_eq!(nsp.len(), 2, "clone {c}: one level below ours: NSpid {nsp:?}");
        assert_eq!(nsp[1], inner(fx.pid, "NSpid"), "clone {c}: the source root's pid in its namespace");
        match ns {
            Ns::Host => assert!(init_of(c).is_some(), "clone {c}: a stand-in pid 1"),
            Ns::OwnPidNs => assert!(init_of(c).is_none(), "clone {c}: is pid 1 itself"),
        }
        let t = clone_tree(c);
        assert_eq!(shape(&t), src_shape, "clone tree {c}: the source tree's shape");
        trees.push(t);
    }
    // each clone tree ticks in its own log (its overlay's), the source in its own
    let clone_log = |c: i32| PathBuf::from(format!("/proc/{c}/root{}", fx.log().display()));
    let t0: Vec<u64> = clones.iter().map(|&c| last_tick(&clone_log(c))).collect();
    wait_until("every clone tree ticks 5 times in its own log", Duration::from_secs(30), || {
        clones.iter().zip(&t0).all(|(&c, &t)| last_tick(&clone_log(c)) >= t + 5)
    });
    fx.ticks_on(5, "(the source) beside its clone trees");
    for &c in &clones {
        let own = tick_numbers(&clone_log(c));
        assert_eq!(own, tick_numbers(&img.join(format!("tfork-root/{c}/upper/progress.log"))), "clone {c}: its log is its overlay's");
        let tail = &own[own.len() - 5..];
        assert!(tail.windows(2).all(|w| w[1] == w[0] + 1), "clone {c}'s ticks: {own:?}");
    }
    let src_ticks = tick_numbers(&fx.log());
    assert!(src_ticks.windows(2).all(|w| w[1] == w[0] + 1), "the source's log holds only its own ticks: {src_ticks:?}");
    for t in &trees {
        assert_eq!(shape(t), src_shape, "clone tree {t:?} after ticking");
    }
    assert_eq!(shape(&tree_of(fx.pid)), src_shape, "the source tree after ticking");
    // isolation: a word written into one process of clone tree 0 (the
    // bottom of its stack) is seen in no other tree
    let ns_pid = src_shape.iter().find(|s| s.1 != 0 && !s.4).map(|s| s.0).expect("a live child");
    let addr = stack_bottom(by_ns_pid(&src, ns_pid));
    let marker = 0x7466_6f72_6b74_7265u64;
    let procs: Vec<i32> = trees.iter().map(|t| by_ns_pid(t, ns_pid)).chain([by_ns_pid(&src, ns_pid)]).collect();
    assert!(procs.iter().all(|&p| stack_bottom(p) == addr), "the same stack in every tree");
    poke(procs[0], addr, marker);
    assert_eq!(peek(procs[0], addr), marker);
    for &p in &procs[1..] {
        assert_ne!(peek(p, addr), marker, "process {p} sees clone tree {}'s write", clones[0]);
    }
    // a killed clone tree (its namespace's pid 1) leaves the others ticking
    let gone = match ns {
        Ns::Host => init_of(clones[0]).unwrap(),
        Ns::OwnPidNs => clones[0],
    };
    kill_and_wait_gone(&[gone], "the killed clone tree's pid 1");
    wait_until("the killed clone tree gone", Duration::from_secs(5), || trees[0].iter().all(|&p| !alive(p)));
    let t1: Vec<u64> = clones[1..].iter().map(|&c| last_tick(&clone_log(c))).collect();
    wait_until("the other clone trees tick on", Duration::from_secs(30), || clones[1..].iter().zip(&t1).all(|(&c, &t)| last_tick(&clone_log(c)) >= t + 3));
    fx.ticks_on(3, "(the source) after a clone tree was killed");
    for t in &trees[1..] {
        assert_eq!(shape(t), src_shape, "clone tree {t:?} after another was killed");
    }
    // everything killed: the image set of the frozen moment restores
    let inits: Vec<i32> = clones[1..].iter().filter_map(|&c| init_of(c)).collect();
    kill_and_wait_gone(&inits, "the stand-in inits");
    kill_and_wait_gone(&live_with_exe(&fx.bin), "the fixture's processes");
    assert!(log.contains("image set durable after"), "{log}");
    assert!(img.join("inventory.img").exists());
    let leftover: Vec<String> = std::fs::read_dir("/dev/shm").unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with("criu-rs-tfork-") && n.ends_with(&format!("-{}", fx.pid))).collect();
    assert!(leftover.is_empty(), "tmpfs sets left: {leftover:?}");
    let upstream = test_support::fixture("progs").join("../../upstream-criu/criu-4.2");
    let engines: Vec<(&str, PathBuf)> = vec![("our restore", PathBuf::from(CRIU)), ("upstream CRIU 4.2", upstream.clone())];
    for (who, bin) in engines {
        if !bin.exists() {
            require!(Some(format!("no upstream criu at {}", bin.display())));
        }
        let before = tick_numbers(&fx.log()).len();
        let out = Command::new(&bin).args(["restore", "-d", "-D"]).arg(&img).args(["-o", "restore.log"]).stdin(Stdio::null()).output().unwrap();
        assert!(out.status.success(), "{who}: {}", std::fs::read_to_string(img.join("restore.log")).unwrap_or_default());
        wait_until(&format!("the tree restored by {who} ticks"), Duration::from_secs(15), || tick_numbers(&fx.log()).len() >= before + 4);
        let new = tick_numbers(&fx.log())[before..].to_vec();
        assert!(new[0] <= at_fork + 1 && new.windows(2).all(|w| w[1] == w[0] + 1), "restored by {who}: ticks {new:?} (source at {at_fork} at the tfork)");
        let roots = roots_with_exe(&fx.bin);
        assert_eq!(roots.len(), 1, "{who}: {roots:?}");
        assert_eq!(shape(&tree_of(roots[0])), src_shape, "the tree restored by {who}");
        kill_and_wait_gone(&live_with_exe(&fx.bin), &format!("the tree restored by {who}"));
    }
}

#[test]
fn tree_fixture_clone_trees_in_the_host_namespace() {
    let _serial = serial();
    clone_trees("tree", Ns::Host);
}

#[test]
fn mem_fixture_clone_trees_in_the_host_namespace() {
    let _serial = serial();
    clone_trees("mem", Ns::Host);
}

#[test]
fn tree_fixture_in_its_own_pid_namespace_clone_trees() {
    let _serial = serial();
    clone_trees("tree", Ns::OwnPidNs);
}

/// Stand-in inits running our criu binary.
/// Held by every test of this file: the fault tests look for stand-in
/// inits left anywhere (`our_inits`), which another test's clone trees,
/// made meanwhile on the other test thread, would be.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn our_inits() -> Vec<i32> {
    all_pids().into_iter().filter(|&p| comm(p) == "criu-tfork-init" && std::fs::read_link(format!("/proc/{p}/exe")).ok().as_deref() == Some(Path::new(CRIU))).collect()
}

/// The engine killed at each fault point of a tree's tfork (or its
/// restoring helper killed, or a point made to fail): the source tree runs
/// on as it was (same processes, shape, ticks), no clone process and no
/// stand-in init is left, and no image set that looks complete; killed
/// after the clones were told to go on (`tfork-mid-persist`) it leaves the
/// whole clone trees running. A tfork afterwards works and removes the
/// tmpfs set a killed engine left.
#[test]
fn engine_killed_at_the_tree_fault_points() {
    let _serial = serial();
    require!(why_not_here());
    let dir = test_dir("tforktree-faults");
    let fx = Fixture::start("tree", &dir, Ns::Host);
    let src = tree_of(fx.pid);
    let src_shape = shape(&src);
    let inits0 = our_inits();
    let cases = [
        ("tforktree-snapshot", true),
        // (the parking fill, the engine's userfaultfd registered)
        ("tforktree-mid-park", true),
        ("tforktree-clone-made", true),
        ("tforktree-clone-made@2", true),
        ("tforktree-before-go", true),
        ("tforktree-ns-made", false),
        ("mid-mm", false),
        ("mid-detach:fail", false),
        ("tfork-mid-persist", true),
    ];
    for (at, engine_dies) in cases {
        let img = dir.join(format!("img-{}", at.replace([':', '@'], "-")));
        std::fs::create_dir_all(&img).unwrap();
        // (`tforktree-snapshot` is on the copy path, taken where snapshot forks can't be)
        let copy = if at == "tforktree-snapshot" { "off" } else { "on" };
        let (st, clones, log) =
            run_tfork(&img, &["-t", &fx.pid.to_string(), "--copies", "2", "--root-snapshot", "overlay", "--persist=sync"], &[("CRIU_RS_FAULT_AT", at), ("CRIU_RS_TFORK_SNAPSHOT", copy)]);
        if engine_dies {
            assert_killed(st, at, &log);
        } else {
            assert_eq!(st.code(), Some(1), "{at}: {log}");
        }
        assert!(clones.is_empty(), "{at}: clones reported: {clones:?}");
        assert!(!img.join("inventory.img").exists(), "{at}: an image set that looks complete");
        fx.ticks_on(3, &format!("(the source) after {at}"));
        // (an engine killed after the snapshot forks leaves them as zombies
        // of exit signal 0 in the source processes: docs/ARCHITECTURE.md,
        // "tfork", "Snapshots")
        assert_eq!(without_snapshot_zombies(tree_of(fx.pid), &src), src, "{at}: the source tree's processes");
        assert_eq!(shape(&src), src_shape, "{at}: the source tree's shape");
        let others = |v: Vec<i32>| -> Vec<i32> { v.into_iter().filter(|p| !src.contains(p)).collect() };
        if at == "tfork-mid-persist" {
            // told to go on before the set is written: two whole clone trees run
            let roots: Vec<i32> = roots_with_exe(&fx.bin).into_iter().filter(|p| !src.contains(p)).collect();
            assert_eq!(roots.len(), 2, "{at}: {roots:?}\n{log}");
            for &r in &roots {
                assert_eq!(shape(&clone_tree(r)), src_shape, "{at}: clone tree {r}");
            }
            let inits: Vec<i32> = roots.iter().filter_map(|&r| init_of(r)).collect();
            kill_and_wait_gone(&inits, "the clone trees");
        }
        wait_until(&format!("{at}: no clone process left"), Duration::from_secs(5), || others(live_with_exe(&fx.bin)).is_empty());
        wait_until(&format!("{at}: no stand-in init left"), Duration::from_secs(5), || our_inits().iter().all(|p| inits0.contains(p)));
        let tops: Vec<String> = std::fs::read_dir(img.join("tfork-root")).into_iter().flatten().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        if at != "tfork-mid-persist" && !engine_dies {
            assert!(tops.is_empty(), "{at}: snapshot directories of a failed tfork left: {tops:?}");
        }
    }
    // a tfork afterwards works, and takes away the sets dead engines left
    let img = dir.join("img-after");
    std::fs::create_dir_all(&img).unwrap();
    let (st, clones, log) = run_tfork(&img, &["-t", &fx.pid.to_string(), "--copies", "2"], &[]);
    assert!(st.success(), "{log}");
    for &c in &clones {
        assert_eq!(shape(&clone_tree(c)), src_shape);
    }
    let stale: Vec<String> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("criu-rs-tfork-") && n.ends_with(&format!("-{}", fx.pid)))
        .collect();
    assert!(stale.is_empty(), "tmpfs sets of dead engines left: {stale:?}");
    let inits: Vec<i32> = clones.iter().filter_map(|&c| init_of(c)).collect();
    kill_and_wait_gone(&inits, "the clone trees");
}

/// Clone trees after the first are restored two at once (one helper per
/// CPU): the engine killed when the second is made, the third still being
/// restored by its helper, leaves no clone process and no stand-in init,
/// the source tree as it was.
#[test]
fn clone_trees_restored_at_once_leave_nothing_when_the_engine_dies() {
    let _serial = serial();
    require!(why_not_here());
    let dir = test_dir("tforktree-parallel-faults");
    let fx = Fixture::start("tree", &dir, Ns::Host);
    let src = tree_of(fx.pid);
    let src_shape = shape(&src);
    let inits0 = our_inits();
    let at = "tforktree-clone-made@2";
    let img = dir.join("img-clone-made-2");
    std::fs::create_dir_all(&img).unwrap();
    let (st, clones, log) = run_tfork(&img, &["-t", &fx.pid.to_string(), "--copies", "3"], &[("CRIU_RS_FAULT_AT", at), ("CRIU_RS_TFORK_RESTORERS", "2")]);
    assert_killed(st, at, &log);
    assert!(clones.is_empty(), "{at}: clones reported: {clones:?}");
    fx.ticks_on(3, &format!("(the source) after {at}"));
    assert_eq!(without_snapshot_zombies(tree_of(fx.pid), &src), src, "{at}: the source tree's processes");
    assert_eq!(shape(&src), src_shape, "{at}: the source tree's shape");
    let others = |v: Vec<i32>| -> Vec<i32> { v.into_iter().filter(|p| !src.contains(p)).collect() };
    wait_until(&format!("{at}: no clone process left"), Duration::from_secs(5), || others(live_with_exe(&fx.bin)).is_empty());
    wait_until(&format!("{at}: no stand-in init left"), Duration::from_secs(5), || our_inits().iter().all(|p| inits0.contains(p)));
}

/// Without `--root-snapshot` the first clone tree is restored by the
/// engine itself (no restoring helper): the engine killed while it
/// restores it (the clone root forked, `after-clone`; half its VMAs
/// mapped, `mid-mm`; its threads being released, `mid-detach`), or that
/// restore failing (`mid-detach:fail`), leaves no clone process and no
/// stand-in init, the source tree as it was; in the host's pid namespace
/// and in its own. Then a tfork of 2 works, the first tree restored so
/// (the log says it), the second by a helper, both of the source's shape.
#[test]
fn engine_killed_while_it_restores_the_first_clone_tree() {
    let _serial = serial();
    require!(why_not_here());
    for ns in [Ns::Host, Ns::OwnPidNs] {
        let dir = test_dir(&format!("tforktree-here-{}", if ns == Ns::Host { "host" } else { "ownns" }));
        let fx = Fixture::start("tree", &dir, ns);
        let src = tree_of(fx.pid);
        let src_shape = shape(&src);
        let inits0 = our_inits();
        let others = |v: Vec<i32>| -> Vec<i32> { v.into_iter().filter(|p| !src.contains(p)).collect() };
        for (at, engine_dies) in [("after-clone", true), ("mid-mm", true), ("mid-detach", true), ("mid-detach:fail", false)] {
            let img = dir.join(format!("img-{}", at.replace([':', '@'], "-")));
            std::fs::create_dir_all(&img).unwrap();
            let (st, clones, log) = run_tfork(&img, &["-t", &fx.pid.to_string(), "--copies", "2"], &[("CRIU_RS_FAULT_AT", at)]);
            if engine_dies {
                assert_killed(st, at, &log);
            } else {
                assert_eq!(st.code(), Some(1), "{at}: {log}");
            }
            assert!(clones.is_empty(), "{at}: clones reported: {clones:?}");
            fx.ticks_on(3, &format!("(the source) after {at}"));
            assert_eq!(without_snapshot_zombies(tree_of(fx.pid), &src), src, "{at}: the source tree's processes");
            assert_eq!(shape(&src), src_shape, "{at}: the source tree's shape");
            wait_until(&format!("{at}: no clone process left"), Duration::from_secs(5), || others(live_with_exe(&fx.bin)).is_empty());
            wait_until(&format!("{at}: no stand-in init left"), Duration::from_secs(5), || our_inits().iter().all(|p| inits0.contains(p)));
        }
        let img = dir.join("img-after");
        std::fs::create_dir_all(&img).unwrap();
        let (st, clones, log) = run_tfork(&img, &["-t", &fx.pid.to_string(), "--copies", "2"], &[]);
        assert!(st.success(), "{log}");
        assert_eq!(clones.len(), 2, "{log}");
        assert!(log.contains(&format!("clone tree {} of {} restored by the engine itself", clones[0], fx.pid)), "the first clone tree not restored by the engine: {log}");
        for &c in &clones {
            assert_eq!(shape(&clone_tree(c)), src_shape, "clone tree {c}");
        }
        let gone: Vec<i32> = clones.iter().map(|&c| init_of(c).unwrap_or(c)).collect();
        kill_and_wait_gone(&gone, "the clone trees");
    }
}

/// What a tree tfork still refuses, by name: a process of the tree in a
/// pid namespace nested below its root's.
#[test]
fn a_tree_with_a_nested_pid_namespace_is_refused_by_name() {
    let _serial = serial();
    require!(why_not_here());
    let dir = test_dir("tforktree-refused");
    let mut sh = Command::new("setsid").args(["sh", "-c", "unshare --pid --fork sleep 100 & wait"]).stdin(Stdio::null()).spawn().unwrap();
    let shpid = sh.id() as i32;
    wait_until("the nested child", Duration::from_secs(5), || tree_of(shpid).len() >= 3);
    let (st, clones, log) = run_tfork(&dir, &["-t", &shpid.to_string(), "--copies", "2"], &[]);
    let tree = tree_of(shpid);
    let _ = sh.kill();
    let _ = sh.wait();
    kill_and_wait_gone(&tree, "the shell's tree");
    assert!(!st.success() && clones.is_empty() && log.contains("pid namespace") && log.contains("not supported"), "{log}");
}

/// A tmpfs too small for the frozen tree's set (ENOSPC halfway through
/// the `mem` fixture's pages): the tfork goes on from the still frozen
/// source (the log says so), the clone trees have the source's shape and
/// tick, the source ticks on, no set is left in the small tmpfs.
#[test]
fn a_full_tmpfs_falls_back_to_the_frozen_source() {
    let _serial = serial();
    require!(why_not_here());
    let dir = test_dir("tforktree-fulltmpfs");
    let small = dir.join("small");
    std::fs::create_dir_all(&small).unwrap();
    let st = Command::new("mount").args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"]).arg(&small).status().unwrap();
    assert!(st.success(), "mounting a small tmpfs");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(small.clone());
    let fx = Fixture::start("mem", &dir, Ns::Host);
    let src = tree_of(fx.pid);
    let src_shape = shape(&src);
    let img = dir.join("img");
    std::fs::create_dir_all(&img).unwrap();
    let (st, clones, log) =
        run_tfork(&img, &["-t", &fx.pid.to_string(), "--copies", "2"], &[("CRIU_RS_TFORK_SNAPSHOT_DIR", small.to_str().unwrap()), ("CRIU_RS_TFORK_SNAPSHOT", "off")]);
    assert!(st.success(), "{log}");
    assert!(log.contains("could not be copied into tmpfs"), "{log}");
    assert_eq!(clones.len(), 2);
    for &c in &clones {
        assert_eq!(shape(&clone_tree(c)), src_shape, "clone tree {c}");
    }
    fx.ticks_on(3, "(the source and its clone trees, sharing the log)");
    for &c in &clones {
        assert_eq!(shape(&clone_tree(c)), src_shape, "clone tree {c} after ticking");
    }
    assert_eq!(shape(&tree_of(fx.pid)), src_shape);
    assert!(std::fs::read_dir(&small).unwrap().next().is_none(), "a partial set left in the tmpfs");
    let inits: Vec<i32> = clones.iter().filter_map(|&c| init_of(c)).collect();
    kill_and_wait_gone(&inits, "the clone trees");
}

/// Exit signal of `pid` (/proc/PID/stat field 38): 0 for a tfork snapshot.
fn exit_signal(pid: i32) -> Option<i32> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    st.rsplit_once(')')?.1.split_whitespace().nth(35)?.parse().ok()
}

/// The snapshot forks a tree tfork injects into the frozen source
/// processes (docs/ARCHITECTURE.md, "tfork", "Snapshots") are gone after
/// a tfork that succeeds (killed and reaped by their source processes:
/// the source tree is exactly its processes again, no zombie) and one
/// that fails (a restore failing in its helper); with the engine killed
/// between the snapshot forks and the release (`tforktree-snapshot-forked`)
/// the source tree runs on as it was, no snapshot is left running, and
/// what is left of them is one zombie per source process with exit
/// signal 0 (which the source's wait() without __WALL never sees), which
/// the next tfork of the tree has its processes reap.
#[test]
fn snapshot_forks_are_gone_after_success_failure_and_a_killed_engine() {
    let _serial = serial();
    require!(why_not_here());
    let dir = test_dir("tforktree-snapgone");
    let fx = Fixture::start("tree", &dir, Ns::Host);
    let src = tree_of(fx.pid);
    let src_shape = shape(&src);
    let img = dir.join("img-ok");
    std::fs::create_dir_all(&img).unwrap();
    let (st, clones, log) = run_tfork(&img, &["-t", &fx.pid.to_string(), "--copies", "2"], &[]);
    assert!(st.success(), "{log}");
    assert!(log.contains("snapshot forks taken"), "no snapshot forks: {log}");
    assert_eq!(tree_of(fx.pid), src, "the source tree after a tfork:\n{log}");
    for &c in &clones {
        assert_eq!(shape(&clone_tree(c)), src_shape, "clone tree {c}");
    }
    fx.ticks_on(3, "(the source and its clone trees)");
    let inits: Vec<i32> = clones.iter().filter_map(|&c| init_of(c)).collect();
    kill_and_wait_gone(&inits, "the clone trees");
    let img = dir.join("img-fail");
    std::fs::create_dir_all(&img).unwrap();
    let (st, clones, log) = run_tfork(&img, &["-t", &fx.pid.to_string(), "--copies", "2"], &[("CRIU_RS_FAULT_AT", "mid-detach:fail")]);
    assert_eq!(st.code(), Some(1), "{log}");
    assert!(clones.is_empty() && log.contains("snapshot forks taken"), "{log}");
    assert_eq!(tree_of(fx.pid), src, "the source tree after a failed tfork:\n{log}");
    fx.ticks_on(3, "(the source) after a failed tfork");
    let img = dir.join("img-killed");
    std::fs::create_dir_all(&img).unwrap();
    let at = "tforktree-snapshot-forked";
    let (st, clones, log) = run_tfork(&img, &["-t", &fx.pid.to_string(), "--copies", "2"], &[("CRIU_RS_FAULT_AT", at)]);
    assert_killed(st, at, &log);
    assert!(clones.is_empty());
    fx.ticks_on(3, &format!("(the source) after {at}"));
    wait_until("the killed engine's snapshots dead", Duration::from_secs(5), || tree_of(fx.pid).iter().all(|p| src.contains(p) || state(*p) == 'Z'));
    let left: Vec<i32> = tree_of(fx.pid).into_iter().filter(|p| !src.contains(p)).collect();
    assert!(left.len() <= src.len() && left.iter().all(|&p| state(p) == 'Z' && exit_signal(p) == Some(0)), "{at}: left {left:?}\n{log}");
    let live: Vec<i32> = tree_of(fx.pid).into_iter().filter(|p| state(*p) != 'Z').collect();
    let src_live: Vec<i32> = src.iter().copied().filter(|p| state(*p) != 'Z').collect();
    assert_eq!(live, src_live, "{at}: the source tree's live processes");
    assert_eq!(shape(&src), src_shape, "{at}: the source tree's shape");
    // the next tfork has the source processes reap them (named by comm
    // `criu-rs-snap`) before it looks at the tree
    let img = dir.join("img-after");
    std::fs::create_dir_all(&img).unwrap();
    let (st, clones, log) = run_tfork(&img, &["-t", &fx.pid.to_string(), "--copies", "1"], &[]);
    assert!(st.success(), "{log}");
    assert!(left.is_empty() || log.contains("a snapshot fork left by a killed engine"), "{log}");
    assert_eq!(tree_of(fx.pid), src, "the source tree after the next tfork:\n{log}");
    assert_eq!(shape(&clone_tree(clones[0])), src_shape, "the next tfork's clone tree");
    let inits: Vec<i32> = clones.iter().filter_map(|&c| init_of(c)).collect();
    kill_and_wait_gone(&inits, "the clone trees");
}

/// `pids` without the zombies of exit signal 0 not in `src` (snapshot
/// forks left by a killed engine).
fn without_snapshot_zombies(pids: Vec<i32>, src: &[i32]) -> Vec<i32> {
    pids.into_iter().filter(|p| src.contains(p) || !(state(*p) == 'Z' && exit_signal(*p) == Some(0))).collect()
}
