//! `criu tfork` with real processes: `progs/tforkprog.c` (N threads, a
//! touched memory area it checks every tick, a log named by its own pid,
//! a `box` page whose `poke` field it reports when it changes).
//!
//! Clones tick independently of the source and of each other, are
//! siblings of the source, have its threads and its mappings; a write in
//! one is seen by no other; killing one leaves the rest running; processes
//! tfork cannot clone are refused by name; the engine killed at each tfork
//! fault point leaves the source as it was and no clone behind;
//! `--persist=sync` writes an image set of the frozen moment that our
//! restore and upstream CRIU 4.2's bring back.
//!
//! Needs root and gcc; otherwise skips with the reason, or fails under CI=true.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn why_not() -> Option<String> {
    why_not_root().or_else(|| why_not_tools(&["gcc", "unshare"]))
}

/// A running tforkprog; killed (with every clone found) on drop.
struct Src {
    bin: PathBuf,
    work: PathBuf,
    pid: i32,
    child: Option<Child>,
}

fn build_prog(dir: &Path) -> PathBuf {
    let bin = dir.join("tforkprog");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/progs/tforkprog.c");
    let st = Command::new("gcc").args(["-O2", "-Wall", "-pthread", "-o"]).arg(&bin).arg(&src).status().expect("gcc");
    assert!(st.success(), "building tforkprog");
    bin
}

impl Src {
    fn start(dir: &Path, threads: u32, mib: u32) -> Src {
        Src::start_with(dir, threads, mib, &[])
    }

    /// `prefix`: a command that runs the program (e.g. `unshare --pid --fork`).
    fn start_with(dir: &Path, threads: u32, mib: u32, prefix: &[&str]) -> Src {
        Src::start_full(dir, threads, mib, prefix, &[])
    }

    /// `extra`: arguments after NTHREADS MIB (`dontfork`).
    fn start_full(dir: &Path, threads: u32, mib: u32, prefix: &[&str], extra: &[&str]) -> Src {
        let bin = build_prog(dir);
        let work = dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let mut cmd = match prefix.split_first() {
            Some((p, rest)) => {
                let mut c = Command::new(p);
                c.args(rest).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let child = only_stdio(&mut cmd)
            .args([threads.to_string(), mib.to_string()])
            .args(extra)
            .current_dir(&work)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tforkprog");
        wait_until("tforkprog running", Duration::from_secs(10), || live_with_exe(&bin).len() == 1);
        let pid = live_with_exe(&bin)[0];
        let s = Src { bin, work, pid, child: Some(child) };
        wait_until("first ticks", Duration::from_secs(10), || s.tick(pid) >= 2);
        s
    }

    /// The log of `pid`, named by its pid in its own pid namespace.
    fn log(&self, pid: i32) -> PathBuf {
        let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let ns = st.lines().find_map(|l| l.strip_prefix("NSpid:")).and_then(|v| v.split_whitespace().last()?.parse().ok()).unwrap_or(pid);
        self.work.join(format!("tick-{ns}.log"))
    }

    fn log_text(&self, pid: i32) -> String {
        std::fs::read_to_string(self.log(pid)).unwrap_or_default()
    }

    /// Last ok tick of `pid`'s log; panics on a FAIL line.
    fn tick(&self, pid: i32) -> u64 {
        last_tick(&self.log(pid))
    }

    /// Every process in `pids` ticks `n` more times, ok.
    fn all_tick(&self, pids: &[i32], n: u64, what: &str) {
        let t0: Vec<u64> = pids.iter().map(|&p| self.tick(p)).collect();
        for (&p, t) in pids.iter().zip(t0) {
            wait_until(&format!("{n} ticks of {p} {what}"), Duration::from_secs(15), || self.tick(p) >= t + n);
            assert!(alive(p), "{p} died {what}");
        }
    }

    /// Address of the program's `box` page (addr.txt).
    fn box_addr(&self) -> u64 {
        let s = std::fs::read_to_string(self.work.join("addr.txt")).unwrap();
        u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).unwrap()
    }
}

impl Drop for Src {
    fn drop(&mut self) {
        for p in live_with_exe(&self.bin) {
            // SAFETY: kill(2) of a process this test started (or its clone).
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        reap_zombies(&self.bin);
    }
}

/// Reap the exited clones of `bin` among this test process's children
/// (clones are its children: siblings of the source, which it started),
/// by pid, never with -1. Only zombies named as `bin` are taken: a `criu`
/// another test thread started is a zombie for a moment before its
/// `Command` reaps it, and reaping it here would fail that wait (ECHILD).
fn reap_zombies(bin: &Path) {
    let me = std::process::id().to_string();
    let name = bin.file_name().unwrap().to_string_lossy();
    let comm = &name.as_bytes()[..name.len().min(15)];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(st) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((head, rest)) = st.rsplit_once(") ") else { continue };
        let Some((_, c)) = head.split_once(" (") else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 1 && f[0] == "Z" && f[1] == me && c.as_bytes() == comm {
            // SAFETY: waitpid of one exited child of ours, by pid.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        }
    }
}

fn ppid(pid: i32) -> String {
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    st.rsplit_once(") ").and_then(|(_, r)| r.split_whitespace().nth(1).map(str::to_string)).unwrap_or_default()
}

fn threads_of(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0)
}

/// Run `criu tfork`; (status, stdout, log).
fn run_tfork(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (std::process::ExitStatus, String, String) {
    run_tfork_log(dir, &dir.join("tfork.log"), args, env)
}

/// [`run_tfork`] with the log at `log` (not in `dir`).
fn run_tfork_log(dir: &Path, log: &Path, args: &[&str], env: &[(&str, &str)]) -> (std::process::ExitStatus, String, String) {
    let mut cmd = Command::new(CRIU);
    cmd.arg("tfork").args(args).arg("-D").arg(dir).args(["-v4", "-o"]).arg(log).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run criu");
    let mut log = std::fs::read_to_string(log).unwrap_or_default();
    log.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status, String::from_utf8_lossy(&out.stdout).into_owned(), log)
}

/// tfork `src` into `n` clones; their pids.
fn tfork(dir: &Path, src: &Src, n: usize) -> Vec<i32> {
    let (st, out, log) = run_tfork(dir, &["-t", &src.pid.to_string(), "--copies", &n.to_string()], &[]);
    assert!(st.success(), "tfork failed ({st:?}):\n{log}");
    let pids: Vec<i32> = out.lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(pids.len(), n, "{out}\n{log}");
    // --persist=none (the default) writes no image
    let imgs: Vec<String> = std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|f| f.ends_with(".img")).collect();
    assert!(imgs.is_empty(), "images written without --persist: {imgs:?}");
    pids
}

/// The fds of `pid` but its tick log (each process of tforkprog opens its
/// own tick-PID.log for a moment every tick: a comparison at one instant
/// would race it).
fn steady_fds(pid: i32) -> Vec<(i32, String)> {
    fd_links(pid).into_iter().filter(|(_, t)| !t.contains("/tick-")).collect()
}

/// The path part of each maps line, as a multiset in order.
fn maps_shape(pid: i32) -> Vec<String> {
    maps(pid).iter().map(|l| l.split_whitespace().enumerate().filter(|(i, _)| *i != 2 && *i != 4).map(|(_, w)| w).collect::<Vec<_>>().join(" ")).collect()
}

#[test]
fn clones_tick_on_their_own() {
    require!(why_not());
    let dir = test_dir("tfork-single");
    let src = Src::start(&dir, 1, 16);
    let clones = tfork(&dir, &src, 4);
    let mut all = clones.clone();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 4);
    assert!(!clones.contains(&src.pid));
    for &c in &clones {
        assert_eq!(ppid(c), ppid(src.pid), "clone {c} is a sibling of the source");
        assert_eq!(maps_shape(c), maps_shape(src.pid), "clone {c} has the source's mappings (and no gadget or scratch left)");
        assert_eq!(steady_fds(c), steady_fds(src.pid), "clone {c} has the source's fds");
    }
    let mut procs = clones.clone();
    procs.push(src.pid);
    src.all_tick(&procs, 3, "after the tfork");
    // each clone's log starts where the source was at the freeze
    let t_src_log0 = src.log_text(src.pid).lines().count() as u64;
    for &c in &clones {
        let first = src.log_text(c).lines().next().unwrap_or_default().to_string();
        let n: u64 = first.strip_prefix("tick ").and_then(|r| r.split_whitespace().next()).and_then(|v| v.parse().ok()).unwrap_or(0);
        assert!(n >= 3 && n <= t_src_log0, "clone {c} continues the source's count (first line {first:?})");
    }
}

/// The VmFlags of `pid`'s VMA that starts at `start`.
fn vm_flags_at(pid: i32, start: u64) -> Vec<String> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let head = format!("{start:x}-");
    let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&head));
    assert!(lines.next().is_some(), "{pid} has no VMA at {start:#x}");
    let flags = lines.find_map(|l| l.strip_prefix("VmFlags:")).unwrap_or_default();
    flags.split_whitespace().map(String::from).collect()
}

/// Memory marked MADV_DONTFORK (V8 marks its heap so: node's clones
/// crashed in `v8::Context::Enter`) is left out of a fork; the clones must
/// have it all the same, and keep the mark, as the source does.
#[test]
fn dontfork_memory_is_in_the_clones_and_keeps_its_mark() {
    require!(why_not());
    let dir = test_dir("tfork-dontfork");
    let src = Src::start_full(&dir, 2, 8, &[], &["dontfork"]);
    let dc = u64::from_str_radix(std::fs::read_to_string(src.work.join("dontfork.txt")).unwrap().trim().trim_start_matches("0x"), 16).unwrap();
    assert!(vm_flags_at(src.pid, dc).iter().any(|f| f == "dc"), "the program marked its area");
    // (run_tfork's -D: the image set goes into `dir`)
    let img = dir.clone();
    let (st, out, log) = run_tfork(&dir, &["-t", &src.pid.to_string(), "--copies", "3", "--persist=sync"], &[]);
    assert!(st.success(), "tfork failed ({st:?}):\n{log}");
    let clones: Vec<i32> = out.lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(clones.len(), 3, "{out}\n{log}");
    let mut procs = clones.clone();
    procs.push(src.pid);
    src.all_tick(&procs, 4, "after the tfork (each checks its MADV_DONTFORK area)");
    assert!(log.contains("marked MADV_DONTFORK"), "the log names the marked mappings:\n{log}");
    // the image set of the frozen moment keeps the mark on that VMA alone
    let mm: images_proto::pb::MmEntry =
        images_proto::image::read_one(&img, &images_proto::magic::MM.file_name(src.pid as u32), &images_proto::magic::MM).unwrap();
    let dc_bit = 1u64 << libc::MADV_DONTFORK;
    let marked: Vec<u64> = mm.vmas.iter().filter(|v| v.madv.unwrap_or(0) & dc_bit != 0).map(|v| v.start).collect();
    assert_eq!(marked, vec![dc], "MADV_DONTFORK in the image's VMAs");
    for &p in &procs {
        assert!(vm_flags_at(p, dc).iter().any(|f| f == "dc"), "{p} keeps MADV_DONTFORK on {dc:#x}");
        assert_eq!(maps_shape(p), maps_shape(src.pid), "{p} has the source's mappings");
    }
}

#[test]
fn clones_have_the_threads() {
    require!(why_not());
    let dir = test_dir("tfork-threads");
    let src = Src::start(&dir, 4, 16);
    let clones = tfork(&dir, &src, 3);
    for &c in &clones {
        assert_eq!(threads_of(c), 4, "clone {c} threads");
    }
    assert_eq!(threads_of(src.pid), 4);
    let mut procs = clones.clone();
    procs.push(src.pid);
    // a tick checks every thread counted and has its own tid cached
    src.all_tick(&procs, 6, "after the tfork");
}

#[test]
fn writes_are_not_shared() {
    require!(why_not());
    let dir = test_dir("tfork-isolation");
    let src = Src::start(&dir, 2, 16);
    let boxp = src.box_addr();
    let (ticks, poke) = (boxp + 8, boxp + 16);
    let clones = tfork(&dir, &src, 2);
    let mut procs = clones.clone();
    procs.push(src.pid);
    src.all_tick(&procs, 2, "after the tfork");
    write_u64(src.pid, poke, 11);
    wait_until("the source sees its poke", Duration::from_secs(5), || src.log_text(src.pid).contains("poke 11"));
    write_u64(clones[0], poke, 22);
    wait_until("clone 0 sees its poke", Duration::from_secs(5), || src.log_text(clones[0]).contains("poke 22"));
    src.all_tick(&procs, 2, "after the pokes");
    assert_eq!(read_u64(src.pid, poke), 11);
    assert_eq!(read_u64(clones[0], poke), 22);
    assert_eq!(read_u64(clones[1], poke), 0);
    for &p in &procs {
        let log = src.log_text(p);
        let pokes: Vec<&str> = log.lines().filter(|l| l.starts_with("poke")).collect();
        let want: &[&str] = if p == src.pid { &["poke 11"] } else if p == clones[0] { &["poke 22"] } else { &[] };
        assert_eq!(pokes, want, "pokes seen by {p}");
    }
    // the tick counters run apart: set one far ahead, the others don't follow
    write_u64(clones[1], ticks, 1_000_000);
    src.all_tick(&procs, 1, "after moving clone 1's counter");
    assert!(read_u64(clones[1], ticks) >= 1_000_000);
    assert!(read_u64(src.pid, ticks) < 1_000_000);
    assert!(read_u64(clones[0], ticks) < 1_000_000);
}

#[test]
fn killing_a_clone_leaves_the_others() {
    require!(why_not());
    let dir = test_dir("tfork-kill");
    let src = Src::start(&dir, 2, 16);
    let clones = tfork(&dir, &src, 3);
    // SAFETY: kill(2) of a clone this test made.
    unsafe { libc::kill(clones[1], libc::SIGKILL) };
    wait_until("the clone gone", Duration::from_secs(5), || !alive(clones[1]));
    reap_zombies(&src.bin);
    src.all_tick(&[src.pid, clones[0], clones[2]], 3, "after a clone was killed");
    // the source too, and its clones without it
    // SAFETY: as above.
    unsafe { libc::kill(src.pid, libc::SIGKILL) };
    src.all_tick(&[clones[0], clones[2]], 2, "after the source was killed");
}

#[test]
fn refused_by_name() {
    require!(why_not());
    let dir = test_dir("tfork-refused");
    // an unknown persist mode
    let src = Src::start(&dir, 1, 4);
    let (st, out, log) = run_tfork(&dir, &["-t", &src.pid.to_string(), "--copies", "1", "--persist=later"], &[]);
    assert!(!st.success() && out.is_empty() && log.contains("unknown --persist mode"), "{log}");
    // --tcp-established: a clone can't carry the source's live connection
    // (--tcp-close: tests/tfork_tcp.rs)
    let (st, out, log) = run_tfork(&dir, &["-t", &src.pid.to_string(), "--copies", "1", "--tcp-established"], &[]);
    assert!(!st.success() && out.is_empty() && log.contains("--tcp-established does not apply to tfork"), "{log}");
    drop(src);
    // (a process with children is cloned as a tree: tests/tfork_tree.rs)
}

/// Size of the dump's scratch mapping (code page + data) without the
/// frame slots.
const SCRATCH_MAPPING: u64 = 17 * 4096;

fn range_len(line: &str) -> u64 {
    let r = line.split_whitespace().next().unwrap_or("");
    let (a, b) = r.split_once('-').unwrap_or(("0", "0"));
    u64::from_str_radix(b, 16).unwrap_or(0) - u64::from_str_radix(a, 16).unwrap_or(0)
}

#[test]
fn engine_killed_at_each_fault_point() {
    require!(why_not());
    let dir = test_dir("tfork-faults");
    let src = Src::start(&dir, 2, 8);
    let points = engine::fault::POINTS.iter().filter(|p| p.starts_with("tfork-"));
    let mut n = 0;
    for point in points {
        n += 1;
        let maps0 = maps(src.pid);
        let fds0 = steady_fds(src.pid);
        let masks0 = sigmasks(src.pid);
        let (st, out, log) = run_tfork(&dir, &["-t", &src.pid.to_string(), "--copies", "2", "--persist=sync"], &[("CRIU_RS_FAULT_AT", point)]);
        assert_killed(st, point, &log);
        assert!(out.is_empty(), "{point}: no clone reported");
        assert!(!dir.join("inventory.img").exists(), "{point}: an image set that looks complete");
        src.all_tick(&[src.pid], 3, &format!("after the engine died at {point}"));
        let left: Vec<i32> = live_with_exe(&src.bin).into_iter().filter(|&p| p != src.pid).collect();
        if *point == "tfork-mid-persist" {
            // the clones were released before the image set is written:
            // whole, and running; the image set's own copy is gone
            assert_eq!(left.len(), 2, "{point}: {left:?}\n{log}");
            for &c in &left {
                assert_eq!(threads_of(c), 2, "{point}: clone {c}");
            }
            src.all_tick(&left, 2, &format!("(clones) after the engine died at {point}"));
            for &c in &left {
                // SAFETY: kill(2) of a clone this test made.
                unsafe { libc::kill(c, libc::SIGKILL) };
            }
            wait_until("clones gone", Duration::from_secs(5), || live_with_exe(&src.bin) == vec![src.pid]);
        } else {
            assert!(left.is_empty(), "{point}: processes left: {left:?}\n{log}");
        }
        reap_zombies(&src.bin);
        assert_eq!(steady_fds(src.pid), fds0, "{point}: fds");
        assert_eq!(sigmasks(src.pid), masks0, "{point}: threads and their masks");
        // maps as before, but for the dump's scratch mapping a death inside
        // the injection session may leave (as a dead dump does)
        let after = maps(src.pid);
        let added: Vec<&String> = after.iter().filter(|l| !maps0.contains(l)).collect();
        let removed: Vec<&String> = maps0.iter().filter(|l| !after.contains(l)).collect();
        let in_session = matches!(*point, "tfork-fork" | "tfork-forked");
        // (the kernel may merge a new leftover with an earlier one)
        let scratch_like = added.iter().chain(&removed).all(|l| l.split_whitespace().nth(1) == Some("rwxp") && l.split_whitespace().count() == 5);
        let grown = added.iter().map(|l| range_len(l)).sum::<u64>().wrapping_sub(removed.iter().map(|l| range_len(l)).sum::<u64>());
        let ok = (added.is_empty() && removed.is_empty())
            || (in_session && scratch_like && grown > SCRATCH_MAPPING && grown <= SCRATCH_MAPPING + 2 * 2 * 4096);
        assert!(ok, "{point}: mappings changed: added {added:?}, removed {removed:?}");
    }
    assert!(n >= 8, "tfork fault points");
    // and the source still tforks fine afterwards
    let clones = tfork(&dir, &src, 2);
    let mut procs = clones.clone();
    procs.push(src.pid);
    src.all_tick(&procs, 3, "after the faults");
}

#[test]
fn engine_killed_mid_fan_out_leaves_only_whole_clones() {
    require!(why_not());
    let dir = test_dir("tfork-fanout-faults");
    let src = Src::start(&dir, 2, 8);
    // --copies 6: the engine dies while it finishes the third clone
    // (`tfork-mid-clone@3`: one thread of it made) or right after the
    // fourth fork (`tfork-clone-forked@4`), with other forks of the
    // fan-out in flight (one forker beside S), two clones released: those
    // run on whole, nothing else is left, the source as it was
    for point in ["tfork-mid-clone@3", "tfork-clone-forked@4"] {
        let fds0 = steady_fds(src.pid);
        let masks0 = sigmasks(src.pid);
        let (st, out, log) = run_tfork(&dir, &["-t", &src.pid.to_string(), "--copies", "6"], &[("CRIU_RS_FAULT_AT", point)]);
        assert_killed(st, point, &log);
        assert!(out.is_empty(), "{point}: no clone reported");
        // (the clone being finished and those whose fork was in flight die
        // with the engine, PTRACE_O_EXITKILL, a moment after it)
        let released = log.matches("released (2 threads)").count();
        assert_eq!(released, 2, "{point}: two clones released before the death\n{log}");
        let others = || -> Vec<i32> { live_with_exe(&src.bin).into_iter().filter(|&p| p != src.pid).collect() };
        wait_until(&format!("{point}: only the released clones left"), Duration::from_secs(5), || others().len() == released);
        let left = others();
        let mut procs = left.clone();
        procs.push(src.pid);
        src.all_tick(&procs, 3, &format!("after the engine died at {point}"));
        for &c in &left {
            assert_eq!(threads_of(c), 2, "{point}: clone {c} is whole");
            // SAFETY: kill(2) of a clone this test made.
            unsafe { libc::kill(c, libc::SIGKILL) };
        }
        wait_until("clones gone", Duration::from_secs(5), || live_with_exe(&src.bin) == vec![src.pid]);
        reap_zombies(&src.bin);
        assert_eq!(steady_fds(src.pid), fds0, "{point}: fds");
        assert_eq!(sigmasks(src.pid), masks0, "{point}: threads and their masks");
    }
}

#[test]
fn a_failing_tfork_leaves_no_clone() {
    require!(why_not());
    let dir = test_dir("tfork-fail");
    let src = Src::start(&dir, 3, 8);
    // a clone fails half-built (the first one; the third, when one was
    // released and another is an unfinished forker): every process the
    // tfork made goes, and the source runs on
    for at in ["tfork-mid-clone:fail", "tfork-mid-clone@2:fail"] {
        let (st, out, log) = run_tfork(&dir, &["-t", &src.pid.to_string(), "--copies", "4"], &[("CRIU_RS_FAULT_AT", at)]);
        assert_eq!(st.code(), Some(1), "{at}: {log}");
        assert!(log.contains("injected failure in clone"), "{at}: {log}");
        // all or nothing: a clone released before the failure goes too
        assert!(out.trim().is_empty(), "{at}: pids reported on a failure: {out}");
        let left: Vec<i32> = live_with_exe(&src.bin).into_iter().filter(|&p| p != src.pid).collect();
        assert!(left.is_empty(), "{at}: left {left:?}\n{log}");
        src.all_tick(&[src.pid], 2, &format!("after the failure at {at}"));
        wait_until("clones gone", Duration::from_secs(5), || live_with_exe(&src.bin) == vec![src.pid]);
        reap_zombies(&src.bin);
    }
}

#[test]
fn persist_sync_writes_a_restorable_image_set() {
    persist_sync_restorable("tfork-persist", &[], "pages by io_uring, files synced by io_uring");
}

/// The same with io_uring off: the plain writes' set restores too.
#[test]
fn persist_sync_with_plain_writes_writes_a_restorable_image_set() {
    persist_sync_restorable("tfork-persist-plain", &[("CRIU_RS_IO_URING", "off")], "pages by plain writes (io_uring off: CRIU_RS_IO_URING=off), files synced by fsync");
}

/// `--persist=sync` (with `env`, the log saying `how` the set was
/// written): the set is complete and durable when the command returns,
/// and our restore and upstream's bring it back from the frozen moment.
fn persist_sync_restorable(name: &str, env: &[(&str, &str)], how: &str) {
    require!(why_not());
    let dir = test_dir(name);
    let img = dir.join("img");
    std::fs::create_dir_all(&img).unwrap();
    let mut src = Src::start(&dir, 2, 16);
    let pid = src.pid;
    let (st, out, log) = run_tfork(&img, &["-t", &pid.to_string(), "--copies", "2", "--persist=sync"], env);
    assert!(st.success(), "{log}");
    assert!(log.contains(how), "the log should say {how:?}:\n{log}");
    let clones: Vec<i32> = out.lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(clones.len(), 2);
    assert!(log.contains("image set durable after"), "{log}");
    assert!(img.join("inventory.img").exists() && img.join(format!("core-{pid}.img")).exists());
    let staged: Vec<_> = std::fs::read_dir(&img).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with(".criu-rs-staging")).collect();
    assert!(staged.is_empty(), "staging left behind");
    let mut procs = clones.clone();
    procs.push(pid);
    src.all_tick(&procs, 2, "after the tfork");
    // the frozen moment: the source's tick count then
    let at_freeze: u64 = src.log_text(clones[0]).lines().next().and_then(|l| l.strip_prefix("tick ")?.split_whitespace().next()?.parse().ok()).unwrap();
    // source and clones gone, the pid free again
    for &c in &clones {
        // SAFETY: kill(2) of a clone this test made.
        unsafe { libc::kill(c, libc::SIGKILL) };
    }
    if let Some(mut c) = src.child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
    wait_until("source and clones gone", Duration::from_secs(5), || {
        reap_zombies(&src.bin);
        live_with_exe(&src.bin).is_empty() && !Path::new(&format!("/proc/{pid}")).exists()
    });
    std::fs::remove_file(src.log(pid)).unwrap();
    let pidfile = img.join("restored.pid");
    let out = Command::new(CRIU)
        .args(["restore", "-d", "-D"])
        .arg(&img)
        .args(["-o", "restore.log", "--pidfile"])
        .arg(&pidfile)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let rlog = std::fs::read_to_string(img.join("restore.log")).unwrap_or_default();
    assert!(out.status.success(), "restore: {rlog}");
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap().trim(), pid.to_string());
    wait_until("the restored program ticks", Duration::from_secs(10), || src.tick(pid) >= at_freeze + 3);
    assert_eq!(threads_of(pid), 2);
    // it goes on from the frozen moment
    let first: u64 = src.log_text(pid).lines().next().and_then(|l| l.strip_prefix("tick ")?.split_whitespace().next()?.parse().ok()).unwrap();
    assert_eq!(first, at_freeze, "the restored program continues from the freeze");
    // and upstream CRIU 4.2 restores the same set
    // SAFETY: kill(2) of the process this test restored.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_until("the restored program gone", Duration::from_secs(10), || !Path::new(&format!("/proc/{pid}")).exists());
    std::fs::remove_file(src.log(pid)).unwrap();
    let upstream = test_support::fixture("progs").join("../../upstream-criu/criu-4.2");
    require!((!upstream.exists()).then(|| format!("no upstream criu at {}", upstream.display())));
    let out = Command::new(&upstream).args(["restore", "-d", "-D"]).arg(&img).args(["-o", "upstream-restore.log"]).stdin(Stdio::null()).output().unwrap();
    let ulog = std::fs::read_to_string(img.join("upstream-restore.log")).unwrap_or_default();
    assert!(out.status.success(), "upstream restore: {ulog}");
    wait_until("the program restored by upstream ticks", Duration::from_secs(10), || src.tick(pid) >= at_freeze + 3);
    assert_eq!(threads_of(pid), 2);
    src.pid = pid;
}

#[test]
fn inside_a_clone_dontneed_and_fork_behave_as_in_any_process() {
    require!(why_not());
    let dir = test_dir("tfork-inside");
    let src = Src::start(&dir, 1, 8);
    let poke = src.box_addr() + 16;
    let clones = tfork(&dir, &src, 1);
    let c = clones[0];
    // MADV_DONTNEED of private anonymous memory in a clone: zeroes, not the
    // snapshot; the source keeps its page
    write_u64(c, poke, 1000);
    wait_until("the clone's dontneed", Duration::from_secs(5), || src.log_text(c).contains("dontneed"));
    assert!(src.log_text(c).contains("dontneed 0\n"), "{}", src.log_text(c));
    // fork() in a clone: an ordinary child of the clone, sharing its pages
    write_u64(c, poke, 1001);
    wait_until("the clone's fork", Duration::from_secs(5), || src.log_text(c).contains("forked "));
    let log = src.log_text(c);
    let forked = log.lines().find_map(|l| l.strip_prefix("forked ")).unwrap().to_string();
    let (child, status) = forked.split_once(": ").unwrap();
    assert_eq!(status, "0", "{log}");
    let clog = std::fs::read_to_string(src.work.join(format!("tick-{child}.log"))).unwrap_or_default();
    assert_eq!(clog, format!("child of {c}: ok\n"));
    src.all_tick(&[src.pid, c], 3, "after dontneed and fork in the clone");
    assert!(!src.log_text(src.pid).contains("dontneed") && !src.log_text(src.pid).contains("forked"));
}

/// `tfork-persist.status` once it no longer says `writing` (or after 20 s).
fn final_status(img: &Path) -> String {
    let f = img.join("tfork-persist.status");
    let mut last = String::new();
    for _ in 0..2000 {
        last = std::fs::read_to_string(&f).unwrap_or_default();
        if !last.starts_with("writing") && !last.is_empty() {
            break;
        }
        if let Some(pid) = last.strip_prefix("writing ").and_then(|p| p.trim().parse::<i32>().ok()) {
            if !alive(pid) {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    last
}

#[test]
fn persist_async_returns_with_the_clones_and_reports_the_write() {
    require!(why_not());
    let dir = test_dir("tfork-async");
    let src = Src::start(&dir, 2, 16);
    let pid = src.pid.to_string();
    // written in the background: the status says done, the set is complete
    let img = dir.join("img-ok");
    std::fs::create_dir_all(&img).unwrap();
    let (st, out, log) = run_tfork(&img, &["-t", &pid, "--copies", "2", "--persist=async"], &[]);
    assert!(st.success(), "{log}");
    let clones: Vec<i32> = out.lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(clones.len(), 2);
    assert_eq!(final_status(&img), "done\n");
    assert!(img.join("inventory.img").exists());
    let mut procs = clones.clone();
    procs.push(src.pid);
    src.all_tick(&procs, 2, "after an async tfork");
    for &c in &clones {
        // SAFETY: kill(2) of a clone this test made.
        unsafe { libc::kill(c, libc::SIGKILL) };
    }
    // a write that fails: reported in the status and the log, no set that looks complete
    let img = dir.join("img-fail");
    std::fs::create_dir_all(&img).unwrap();
    let (st, out, log) = run_tfork(&img, &["-t", &pid, "--copies", "1", "--persist=async"], &[("CRIU_RS_FAULT_AT", "tfork-mid-persist:fail")]);
    assert!(st.success(), "the clones run: {log}");
    let status = final_status(&img);
    assert!(status.starts_with("failed: writing the image set: injected failure"), "{status}");
    assert!(!img.join("inventory.img").exists());
    let log = std::fs::read_to_string(img.join("tfork.log")).unwrap_or_default();
    assert!(log.contains("injected failure"), "{log}");
    let clones: Vec<i32> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert_eq!(clones.len(), 1);
    src.all_tick(&clones, 2, "(the clone) after a failed background write");
    for c in clones {
        // SAFETY: as above.
        unsafe { libc::kill(c, libc::SIGKILL) };
    }
    // a writer killed: the status names a pid that is gone, no inventory
    let img = dir.join("img-killed");
    std::fs::create_dir_all(&img).unwrap();
    let (st, out, log) = run_tfork(&img, &["-t", &pid, "--copies", "1", "--persist=async"], &[("CRIU_RS_FAULT_AT", "tfork-mid-persist")]);
    assert!(st.success(), "{log}");
    let status = final_status(&img);
    let writer: i32 = status.strip_prefix("writing ").and_then(|p| p.trim().parse().ok()).unwrap_or_else(|| panic!("{status}"));
    wait_until("the killed image writer gone", Duration::from_secs(2), || !alive(writer));
    assert!(!img.join("inventory.img").exists());
    for c in out.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        // SAFETY: as above.
        unsafe { libc::kill(c, libc::SIGKILL) };
    }
    wait_until("clones gone", Duration::from_secs(5), || live_with_exe(&src.bin) == vec![src.pid]);
    reap_zombies(&src.bin);
    src.all_tick(&[src.pid], 2, "after the async tforks");
}

/// The shared fixtures `counter` and `threads` (each tick checks the
/// process's own state and appends to ./progress.log, which source and
/// clones share as after fork(): the log must keep growing with `ok` lines
/// from all of them, and none may fail).
fn fixture_clones(name: &str) {
    require!(why_not_here());
    let dir = test_dir(&format!("tfork-fx-{name}"));
    let fx = Fixture::start(name, &dir, Ns::Host);
    let threads = threads_of(fx.pid);
    let (st, out, log) = run_tfork(&dir, &["-t", &fx.pid.to_string(), "--copies", "4"], &[]);
    assert!(st.success(), "{log}");
    let clones: Vec<i32> = out.lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(clones.len(), 4);
    for &c in &clones {
        assert_eq!(threads_of(c), threads, "clone {c} threads");
    }
    // five processes appending: the log grows five times as fast as before
    let t0 = fx.tick();
    std::thread::sleep(Duration::from_millis(300));
    let s0 = std::fs::read_to_string(fx.log()).unwrap().lines().count();
    std::thread::sleep(Duration::from_secs(2));
    let s1 = std::fs::read_to_string(fx.log()).unwrap().lines().count();
    let _ = fx.tick(); // panics on a FAIL line
    for &c in clones.iter().chain([&fx.pid]) {
        assert!(alive(c), "{c} died");
    }
    let one = (fx.tick() - t0).max(1) as usize; // ticks of one process in ~2.3 s (counts run on from the same value)
    assert!(s1 - s0 >= 3 * one / 2, "the log grew by {} lines, one process ticks {one} times", s1 - s0);
    for &c in &clones {
        // SAFETY: kill(2) of a clone this test made.
        unsafe { libc::kill(c, libc::SIGKILL) };
    }
    wait_until("clones gone", Duration::from_secs(5), || live_with_exe(&fx.bin) == vec![fx.pid]);
    reap_zombies(&fx.bin);
}

#[test]
fn fixture_counter_clones_tick() {
    fixture_clones("counter");
}

#[test]
fn fixture_threads_clones_tick() {
    fixture_clones("threads");
}

/// `kernel.io_uring_disabled` set for the guard's life, then put back.
struct UringSysctl(String);

const URING_SYSCTL: &str = "/proc/sys/kernel/io_uring_disabled";

impl UringSysctl {
    /// Why the sysctl can't be set here.
    fn why_not() -> Option<String> {
        match std::fs::read_to_string(URING_SYSCTL) {
            Err(e) => Some(format!("{URING_SYSCTL}: {e}")),
            Ok(v) if v.trim() != "0" => Some(format!("{URING_SYSCTL} is {} already: io_uring itself can't be tested", v.trim())),
            Ok(v) => std::fs::write(URING_SYSCTL, v.trim()).err().map(|e| format!("{URING_SYSCTL} not writable: {e}")),
        }
    }

    fn set(v: &str) -> UringSysctl {
        let old = std::fs::read_to_string(URING_SYSCTL).unwrap().trim().to_string();
        std::fs::write(URING_SYSCTL, v).unwrap();
        UringSysctl(old)
    }
}

impl Drop for UringSysctl {
    fn drop(&mut self) {
        std::fs::write(URING_SYSCTL, &self.0).expect("putting io_uring_disabled back");
    }
}

/// io_uring refused by the kernel (`kernel.io_uring_disabled=2`: EPERM
/// from io_uring_setup): the set is written with plain writes and fsync,
/// complete, and the log says io_uring was refused and why.
#[test]
fn persist_falls_back_to_plain_writes_where_io_uring_is_refused() {
    require!(why_not().or_else(UringSysctl::why_not));
    let dir = test_dir("tfork-uring-off");
    let src = Src::start(&dir, 1, 16);
    let img = dir.join("img");
    std::fs::create_dir_all(&img).unwrap();
    let (st, out, log) = {
        let _off = UringSysctl::set("2");
        run_tfork(&img, &["-t", &src.pid.to_string(), "--copies", "1", "--persist=sync"], &[])
    };
    assert!(st.success(), "{log}");
    assert!(
        log.contains("pages by plain writes (io_uring refused: io_uring_setup: Operation not permitted") && log.contains("files synced by fsync"),
        "{log}"
    );
    assert!(img.join("inventory.img").exists());
    let clones: Vec<i32> = out.lines().map(|l| l.trim().parse().unwrap()).collect();
    src.all_tick(&[clones[0], src.pid], 2, "after a tfork without io_uring");
    // SAFETY: kill(2) of the clone this test made.
    unsafe { libc::kill(clones[0], libc::SIGKILL) };
}

/// Staging directories and inventory.img of `img`.
fn leftovers(img: &Path) -> Vec<String> {
    std::fs::read_dir(img)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with(".criu-rs-staging") || n == "inventory.img").collect())
        .unwrap_or_default()
}

/// A tmpfs mounted for the guard's life.
struct SmallFs(PathBuf);

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A background write that runs out of space (a 2 MiB tmpfs, a 16 MiB
/// process), through io_uring and through plain writes: `sync` fails the
/// command and leaves no clone; `async` leaves the clones running and says
/// `failed: ... No space left on device` in the status; neither leaves an
/// inventory.img or a staging directory.
#[test]
fn a_full_disk_fails_the_background_write_and_leaves_no_set() {
    require!(why_not().or_else(|| why_not_tools(&["mount", "umount"])));
    let dir = test_dir("tfork-enospc");
    let src = Src::start(&dir, 1, 16);
    let pid = src.pid.to_string();
    let mnt = dir.join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let st = Command::new("mount").args(["-t", "tmpfs", "-o", "size=2m", "tfork-enospc"]).arg(&mnt).status().unwrap();
    assert!(st.success(), "mounting a small tmpfs");
    let _fs = SmallFs(mnt.clone());
    for (label, env, how) in [("uring", vec![], "through io_uring: writing"), ("plain", vec![("CRIU_RS_IO_URING", "off")], "")] {
        let img = mnt.join(format!("sync-{label}"));
        std::fs::create_dir_all(&img).unwrap();
        let logf = dir.join(format!("sync-{label}.log"));
        let (st, _, log) = run_tfork_log(&img, &logf, &["-t", &pid, "--copies", "2", "--persist=sync"], &env);
        assert!(!st.success(), "{label}: a sync tfork whose set can't be written fails:\n{log}");
        assert!(log.contains("No space left on device"), "{label}: {log}");
        assert!(log.contains(how), "{label}: the write through io_uring failed: {log}");
        assert!(leftovers(&img).is_empty(), "{label}: {:?} left", leftovers(&img));
        wait_until("no clone left by the failed sync tfork", Duration::from_secs(5), || live_with_exe(&src.bin) == vec![src.pid]);
        reap_zombies(&src.bin);

        let img = mnt.join(format!("async-{label}"));
        std::fs::create_dir_all(&img).unwrap();
        let logf = dir.join(format!("async-{label}.log"));
        let (st, out, log) = run_tfork_log(&img, &logf, &["-t", &pid, "--copies", "2", "--persist=async"], &env);
        assert!(st.success(), "{label}: {log}");
        let status = final_status(&img);
        assert!(status.starts_with("failed: ") && status.contains("No space left on device"), "{label}: {status}");
        assert!(leftovers(&img).is_empty(), "{label}: {:?} left", leftovers(&img));
        let log = std::fs::read_to_string(&logf).unwrap_or_default();
        assert!(log.contains("No space left on device"), "{label}: {log}");
        let clones: Vec<i32> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
        assert_eq!(clones.len(), 2);
        src.all_tick(&clones, 2, &format!("({label}) after a failed background write"));
        for c in clones {
            // SAFETY: kill(2) of a clone this test made.
            unsafe { libc::kill(c, libc::SIGKILL) };
        }
        wait_until("clones gone", Duration::from_secs(5), || live_with_exe(&src.bin) == vec![src.pid]);
        reap_zombies(&src.bin);
        std::fs::remove_dir_all(mnt.join(format!("sync-{label}"))).unwrap();
        std::fs::remove_dir_all(&img).unwrap();
    }
    src.all_tick(&[src.pid], 2, "after the failed writes");
}

/// Tick numbers of a fixture log, in order.
fn tick_numbers(log: &Path) -> Vec<u64> {
    let s = std::fs::read_to_string(log).unwrap_or_default();
    assert!(!s.contains("FAIL"), "{} reported a failure:\n{s}", log.display());
    s.lines().filter_map(|l| l.strip_prefix("tick ")?.split_whitespace().next()?.parse().ok()).collect()
}

/// A fixture tforked with `--copies 4 --root-snapshot MODE`: the source
/// and every clone tick `ok` on their own, each into its own
/// progress.log: a clone's through its own overlay (seen through
/// /proc/CLONE/root, and in its upper directory), the source's with only
/// its own ticks (one line per tick number); the overlays are in the
/// clones' mount namespaces only; a killed clone leaves the rest ticking.
fn fixture_clones_own_their_files(name: &str, overlay_dir: bool) {
    require!(why_not_here());
    let dir = test_dir(&format!("tfork-snap-{name}"));
    let mode = if overlay_dir { format!("overlay:{}", dir.join("work").display()) } else { "overlay".to_string() };
    clones_own_their_files(name, &mode, &dir, &dir.join("img"), |c| dir.join(format!("img/tfork-root/{c}/upper/progress.log")));
}

/// [`fixture_clones_own_their_files`] with `--root-snapshot mode`, the
/// fixture in `dir/work`, `-D img`; `own_log(CLONE)`: where the clone's
/// snapshot keeps its log.
fn clones_own_their_files(name: &str, mode: &str, dir: &Path, img: &Path, own_log: impl Fn(i32) -> PathBuf) {
    let fx = Fixture::start(name, dir, Ns::Host);
    std::fs::create_dir_all(img).unwrap();
    let (st, out, log) = run_tfork(img, &["-t", &fx.pid.to_string(), "--copies", "4", "--root-snapshot", mode], &[]);
    assert!(st.success(), "{log}");
    let clones: Vec<i32> = out.lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(clones.len(), 4);
    let at_fork = fx.tick();
    let clone_log = |c: i32| PathBuf::from(format!("/proc/{c}/root{}", fx.log().display()));
    // every process ticks on, each in its own file
    let t0: Vec<u64> = clones.iter().map(|&c| last_tick(&clone_log(c))).collect();
    wait_until("every clone ticks 5 times in its own log", Duration::from_secs(20), || {
        clones.iter().zip(&t0).all(|(&c, &t)| last_tick(&clone_log(c)) >= t + 5)
    });
    fx.ticks_on(5, "(the source) beside its clones");
    for &c in &clones {
        assert!(alive(c), "clone {c} died");
        let own = tick_numbers(&clone_log(c));
        assert_eq!(own, tick_numbers(&own_log(c)), "clone {c}: its log is the one in its snapshot");
        // its log: the source's as the clone's overlay copied it up (at its
        // setup, a little after the freeze), then its own ticks, one per number
        let tail = &own[own.len() - 5..];
        assert!(tail.windows(2).all(|w| w[1] == w[0] + 1), "clone {c}'s ticks: {own:?}");
        let mounts = std::fs::read_to_string(format!("/proc/{c}/mountinfo")).unwrap();
        assert!(mounts.lines().any(|l| l.split_whitespace().nth(4) == Some(fx.work.to_str().unwrap())), "clone {c}: no mount on {}:\n{mounts}", fx.work.display());
    }
    let src = tick_numbers(&fx.log());
    assert!(src.windows(2).all(|w| w[1] == w[0] + 1), "the source's log holds only its own ticks: {src:?}");
    assert!(*src.last().unwrap() > at_fork);
    let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!host.lines().any(|l| l.split_whitespace().nth(4) == Some(fx.work.to_str().unwrap())), "a clone's mount shows in the host:\n{host}");
    // a killed clone leaves the others and the source ticking
    // SAFETY: kill(2) of a clone this test made.
    unsafe { libc::kill(clones[0], libc::SIGKILL) };
    wait_until("the killed clone gone", Duration::from_secs(5), || {
        reap_zombies(&fx.bin);
        !alive(clones[0])
    });
    let t1: Vec<u64> = clones[1..].iter().map(|&c| last_tick(&clone_log(c))).collect();
    wait_until("the other clones tick on", Duration::from_secs(20), || clones[1..].iter().zip(&t1).all(|(&c, &t)| last_tick(&clone_log(c)) >= t + 3));
    fx.ticks_on(3, "(the source) after a clone was killed");
    for &c in &clones[1..] {
        // SAFETY: as above.
        unsafe { libc::kill(c, libc::SIGKILL) };
    }
    wait_until("clones gone", Duration::from_secs(5), || live_with_exe(&fx.bin) == vec![fx.pid]);
    reap_zombies(&fx.bin);
}

#[test]
fn fixture_counter_clones_own_their_files() {
    fixture_clones_own_their_files("counter", false);
}

/// `threads`: the mount namespace is made while the clone has one thread
/// (unshare(CLONE_NEWNS) is refused once threads share their fs_struct).
#[test]
fn fixture_threads_clones_own_their_files() {
    fixture_clones_own_their_files("threads", false);
}

/// `signals`: handlers, masks, itimers and queued signals, in clones with their own files.
#[test]
fn fixture_signals_clones_own_their_files() {
    fixture_clones_own_their_files("signals", false);
}

/// `files`: a file at an offset, an O_APPEND file, a directory fd, an
/// unlinked file (each clone gets an unlinked copy), the cwd in a
/// subdirectory (so the directory is given: overlay:WORK).
#[test]
fn fixture_files_clones_own_their_files() {
    fixture_clones_own_their_files("files", true);
}

/// `--root-snapshot btrfs`: `counter` in a subvolume of a loop-mounted
/// btrfs, 4 clones each with a snapshot of the subvolume bind-mounted
/// over its directory.
#[test]
fn fixture_counter_clones_own_btrfs_snapshots() {
    require!(why_not_here().or_else(|| why_not_tools(&["mkfs.btrfs", "btrfs", "mount", "umount"])));
    let fs = LoopBtrfs::new(&test_dir("tfork-snap-btrfs"));
    let vol = fs.subvolume("vol");
    let img = fs.mnt.join("img");
    clones_own_their_files("counter", "btrfs", &vol, &img, |c| img.join(format!("tfork-root/{c}/snap/work/progress.log")));
}

/// What `--root-snapshot` can't do is refused by name, before anything is
/// touched: a mode it doesn't know, a relative directory, the clones'
/// directories inside the snapshotted one.
#[test]
fn root_snapshot_refusals() {
    require!(why_not());
    let dir = test_dir("tfork-snap-refused");
    let src = Src::start(&dir, 1, 4);
    let pid = src.pid.to_string();
    for (mode, img, want) in [
        ("btrfs", dir.join("img"), "is not on btrfs"),
        ("zfs", dir.join("img"), "unknown --root-snapshot mode"),
        ("overlay:work", dir.join("img"), "must be an absolute path"),
        ("overlay", src.work.join("img"), "inside the snapshotted"),
    ] {
        std::fs::create_dir_all(&img).unwrap();
        let (st, out, log) = run_tfork(&img, &["-t", &pid, "--copies", "1", "--root-snapshot", mode], &[]);
        assert!(!st.success() && out.is_empty(), "{mode}: {log}");
        assert!(log.contains(want), "{mode}: want {want:?} in {log}");
    }
    assert_eq!(live_with_exe(&src.bin), vec![src.pid], "no clone made");
    assert!(!src.work.join("img/tfork-root").exists(), "nothing made inside the source's directory");
    src.all_tick(&[src.pid], 2, "after refused tforks");
    drop(src);
    // a source without CAP_SYS_ADMIN (root with an empty bounding set)
    require!(why_not_tool("setpriv"));
    let dir = test_dir("tfork-snap-nocaps");
    let src = Src::start_with(&dir, 1, 4, &["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--"]);
    let img = dir.join("img");
    std::fs::create_dir_all(&img).unwrap();
    let (st, out, log) = run_tfork(&img, &["-t", &src.pid.to_string(), "--copies", "1", "--root-snapshot", "overlay"], &[]);
    assert!(!st.success() && out.is_empty(), "{log}");
    assert!(log.contains("lacks CAP_SYS_ADMIN"), "{log}");
    assert_eq!(live_with_exe(&src.bin), vec![src.pid], "no clone made");
    src.all_tick(&[src.pid], 2, "after a refused tfork");
}

/// The engine killed while it sets up clones with `--root-snapshot
/// overlay` (after a clone's overlay is mounted and its files reopened,
/// or just before its release): no clone is left, no mount shows in the
/// host, and the source goes on writing only its own ticks into its own
/// log.
#[test]
fn engine_killed_during_a_root_snapshot_leaves_no_clone() {
    require!(why_not_here());
    let dir = test_dir("tfork-snap-faults");
    let fx = Fixture::start("counter", &dir, Ns::Host);
    let img = dir.join("img");
    std::fs::create_dir_all(&img).unwrap();
    for point in ["snapshot-mounted", "tfork-before-release"] {
        let (st, out, log) = run_tfork(&img, &["-t", &fx.pid.to_string(), "--copies", "2", "--root-snapshot", "overlay"], &[("CRIU_RS_FAULT_AT", point)]);
        assert_killed(st, point, &log);
        assert!(out.is_empty(), "{point}: no clone reported");
        wait_until(&format!("{point}: no clone left"), Duration::from_secs(5), || {
            reap_zombies(&fx.bin);
            live_with_exe(&fx.bin) == vec![fx.pid]
        });
        let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!host.lines().any(|l| l.split_whitespace().nth(4) == Some(fx.work.to_str().unwrap())), "{point}: a mount in the host:\n{host}");
        fx.ticks_on(3, &format!("after the engine died at {point}"));
        let ticks = tick_numbers(&fx.log());
        assert!(ticks.windows(2).all(|w| w[1] == w[0] + 1), "{point}: the source's log holds only its own ticks: {ticks:?}");
    }
}

/// io_uring refused by a seccomp filter (ENOSYS) at each of the steps
/// tfork's image writer checks before writing (io_uring_setup, the opcode
/// probe through io_uring_register, a NOP through io_uring_enter): the
/// engine's probe names the refused step and says the writes will be
/// plain. (A seccomp'd engine can't tfork: PTRACE_O_SUSPEND_SECCOMP is
/// refused to a tracer under seccomp; `criu check` runs the same probe,
/// `sys::uring::open_ring`, that the writer does.)
#[test]
fn io_uring_refused_by_seccomp_is_named_at_each_step() {
    let py = "/usr/bin/python3";
    require!(why_not_tool(py).or_else(|| {
        let ok = Command::new(py).args(["-c", "import seccomp"]).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
        (!ok).then(|| "python3-seccomp (libseccomp's python bindings) not installed".to_string())
    }));
    let filtered = "import seccomp, errno, os, sys\n\
        f = seccomp.SyscallFilter(seccomp.ALLOW)\n\
        if sys.argv[1] != 'none':\n    f.add_rule(seccomp.ERRNO(errno.ENOSYS), sys.argv[1])\n\
        f.load()\n\
        os.execv(sys.argv[2], sys.argv[2:])\n";
    for (call, want) in [
        ("none", "io_uring is supported"),
        ("io_uring_setup", "io_uring: io_uring_setup: Function not implemented"),
        ("io_uring_register", "io_uring: io_uring_register(PROBE): Function not implemented"),
        ("io_uring_enter", "io_uring: io_uring_enter: Function not implemented"),
    ] {
        let out = Command::new(py).args(["-c", filtered, call, CRIU, "check", "-v4"]).stdin(Stdio::null()).output().unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(log.contains(want), "{call} filtered: want {want:?} in\n{log}");
        if call != "none" {
            assert!(log.contains("(tfork's image set is written with plain writes)"), "{log}");
        }
    }
}

/// NSpid of `pid` (host pid first, innermost last).
fn nspid(pid: i32) -> Vec<i32> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    st.lines().find_map(|l| l.strip_prefix("NSpid:")).map(|v| v.split_whitespace().filter_map(|x| x.parse().ok()).collect()).unwrap_or_default()
}

/// The tids of `pid`'s threads in its own pid namespace, sorted.
fn inner_tids(pid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let st = std::fs::read_to_string(e.path().join("status")).ok()?;
            st.lines().find_map(|l| l.strip_prefix("NSpid:"))?.split_whitespace().last()?.parse().ok()
        })
        .collect();
    v.sort_unstable();
    v
}

/// The restored fixture (pid 1 of its own pid namespace, not `except`)
/// ticks on from the frozen moment: the first tick it adds to the log is
/// at most `at_fork + 1`, then 3 more, with the source's threads.
fn restored_ticks_on(fx: &Fixture, at_fork: u64, tids: &[i32], who: &str) -> i32 {
    let before = tick_numbers(&fx.log()).len();
    wait_until(&format!("the program restored by {who} ticks"), Duration::from_secs(15), || tick_numbers(&fx.log()).len() >= before + 4);
    let new = tick_numbers(&fx.log())[before..].to_vec();
    assert!(new[0] <= at_fork + 1 && new.windows(2).all(|w| w[1] == w[0] + 1), "restored by {who}: ticks {new:?} (source at {at_fork} at the tfork)");
    let roots = roots_with_exe(&fx.bin);
    assert_eq!(roots.len(), 1, "{roots:?}");
    assert_eq!(nspid(roots[0]).last(), Some(&1), "restored by {who}: pid 1 of its pid namespace");
    assert_eq!(inner_tids(roots[0]), tids, "restored by {who}: the source's tids");
    roots[0]
}

/// A namespace init (`setsid unshare --pid --fork fx-NAME`: pid 1 of its
/// own pid namespace) tforked with `--copies 4 --root-snapshot overlay
/// --persist=sync`: every clone is pid 1 of a pid namespace of its own,
/// one level below ours (not nested in the source's), its threads with the
/// source's tids in it; the source and every clone tick `ok`, each in its
/// own progress.log; a killed clone leaves the rest ticking; killing the
/// source leaves the clones ticking; the image set of the frozen moment
/// restores with our restore and with upstream CRIU 4.2.
fn ns_init_clones(name: &str) {
    require!(why_not_here());
    let dir = test_dir(&format!("tfork-nsinit-{name}"));
    let img = dir.join("img");
    std::fs::create_dir_all(&img).unwrap();
    let fx = Fixture::start(name, &dir, Ns::OwnPidNs);
    let tids = inner_tids(fx.pid);
    assert_eq!(tids[0], 1);
    let src_ns = std::fs::read_link(format!("/proc/{}/ns/pid", fx.pid)).unwrap();
    let (st, out, log) = run_tfork(&img, &["-t", &fx.pid.to_string(), "--copies", "4", "--root-snapshot", "overlay", "--persist=sync"], &[]);
    assert!(st.success(), "{log}");
    let clones: Vec<i32> = out.lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(clones.len(), 4, "{out}");
    let at_fork = fx.tick();
    let mut namespaces = vec![src_ns, std::fs::read_link("/proc/self/ns/pid").unwrap()];
    for &c in &clones {
        assert_eq!(nspid(c), vec![c, 1], "clone {c}: pid 1 of a new pid namespace, a child of ours");
        assert_eq!(inner_tids(c), tids, "clone {c}: its threads have the source's tids in its namespace");
        let ns = std::fs::read_link(format!("/proc/{c}/ns/pid")).unwrap();
        assert!(!namespaces.contains(&ns), "clone {c}: pid namespace {ns:?} not its own");
        namespaces.push(ns);
    }
    // each ticks in its own log: the clone's in its overlay
    let clone_log = |c: i32| PathBuf::from(format!("/proc/{c}/root{}", fx.log().display()));
    let t0: Vec<u64> = clones.iter().map(|&c| last_tick(&clone_log(c))).collect();
    wait_until("every clone ticks 5 times in its own log", Duration::from_secs(20), || {
        clones.iter().zip(&t0).all(|(&c, &t)| last_tick(&clone_log(c)) >= t + 5)
    });
    fx.ticks_on(5, "(the source) beside its clones");
    for &c in &clones {
        assert!(alive(c), "clone {c} died");
        let own = tick_numbers(&clone_log(c));
        assert_eq!(own, tick_numbers(&img.join(format!("tfork-root/{c}/upper/progress.log"))), "clone {c}: its log is its overlay's");
        let tail = &own[own.len() - 5..];
        assert!(tail.windows(2).all(|w| w[1] == w[0] + 1), "clone {c}'s ticks: {own:?}");
    }
    let src = tick_numbers(&fx.log());
    assert!(src.windows(2).all(|w| w[1] == w[0] + 1), "the source's log holds only its own ticks: {src:?}");
    // a killed clone leaves the others and the source ticking
    // SAFETY: kill(2) of a clone this test made.
    unsafe { libc::kill(clones[0], libc::SIGKILL) };
    wait_until("the killed clone gone", Duration::from_secs(5), || !alive(clones[0]));
    fx.ticks_on(3, "(the source) after a clone was killed");
    // the source killed (its pid namespace with it): the clones tick on
    // SAFETY: kill(2) of the fixture this test started.
    unsafe { libc::kill(fx.pid, libc::SIGKILL) };
    wait_until("the source gone", Duration::from_secs(5), || !alive(fx.pid));
    let t1: Vec<u64> = clones[1..].iter().map(|&c| last_tick(&clone_log(c))).collect();
    wait_until("the other clones tick on without the source", Duration::from_secs(20), || {
        clones[1..].iter().zip(&t1).all(|(&c, &t)| last_tick(&clone_log(c)) >= t + 3)
    });
    for &c in &clones[1..] {
        // SAFETY: as above.
        unsafe { libc::kill(c, libc::SIGKILL) };
    }
    wait_until("clones gone", Duration::from_secs(5), || live_with_exe(&fx.bin).is_empty());
    reap_zombies(&fx.bin);
    // the image set of the frozen moment, durable when the command returned
    assert!(log.contains("image set durable after"), "{log}");
    assert!(img.join("inventory.img").exists() && img.join("core-1.img").exists());
    let out = Command::new(CRIU).args(["restore", "-d", "-D"]).arg(&img).args(["-o", "restore.log"]).stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "restore: {}", std::fs::read_to_string(img.join("restore.log")).unwrap_or_default());
    let r = restored_ticks_on(&fx, at_fork, &tids, "our restore");
    // SAFETY: kill(2) of the process this test restored.
    unsafe { libc::kill(r, libc::SIGKILL) };
    wait_until("the restored program gone", Duration::from_secs(10), || !alive(r));
    let upstream = test_support::fixture("progs").join("../../upstream-criu/criu-4.2");
    require!((!upstream.exists()).then(|| format!("no upstream criu at {}", upstream.display())));
    let out = Command::new(&upstream).args(["restore", "-d", "-D"]).arg(&img).args(["-o", "upstream-restore.log"]).stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "upstream restore: {}", std::fs::read_to_string(img.join("upstream-restore.log")).unwrap_or_default());
    let r = restored_ticks_on(&fx, at_fork, &tids, "upstream CRIU 4.2");
    // SAFETY: as above.
    unsafe { libc::kill(r, libc::SIGKILL) };
}

#[test]
fn namespace_init_counter_clones_in_new_pid_namespaces() {
    ns_init_clones("counter");
}

#[test]
fn namespace_init_threads_clones_in_new_pid_namespaces() {
    ns_init_clones("threads");
}

/// A namespace init's clone whose restore dies (the second clone's
/// helper killed at the restore's `mid-mm`: the first clone is restored
/// by the engine itself, whose `mid-mm` was the first) or fails
/// (`mid-threads:fail`, in the engine's restore of the first): the tfork
/// fails, no clone is left, the source ticks on and tforks fine
/// afterwards.
#[test]
fn namespace_init_failed_clone_leaves_none() {
    require!(why_not_here());
    let dir = test_dir("tfork-nsinit-fail");
    let fx = Fixture::start("threads", &dir, Ns::OwnPidNs);
    for at in ["mid-mm@2", "mid-threads:fail"] {
        let (st, out, log) = run_tfork(&dir, &["-t", &fx.pid.to_string(), "--copies", "2"], &[("CRIU_RS_FAULT_AT", at)]);
        assert_eq!(st.code(), Some(1), "{at}: {log}");
        assert!(out.trim().is_empty(), "{at}: pids reported on a failure: {out}");
        wait_until(&format!("{at}: no clone left"), Duration::from_secs(5), || live_with_exe(&fx.bin) == vec![fx.pid]);
        fx.ticks_on(3, &format!("(the source) after the failure at {at}"));
    }
    let (st, out, log) = run_tfork(&dir, &["-t", &fx.pid.to_string(), "--copies", "2"], &[]);
    assert!(st.success(), "{log}");
    let clones: Vec<i32> = out.lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(clones.len(), 2);
    for &c in &clones {
        assert_eq!(nspid(c), vec![c, 1]);
        // SAFETY: kill(2) of a clone this test made.
        unsafe { libc::kill(c, libc::SIGKILL) };
    }
}

/// The pause of a namespace init of 256 MiB (`unshare --pid --fork
/// tforkprog 1 256`) is the state collection and one snapshot fork, no
/// longer a copy of its memory: measured against the copy path
/// (`CRIU_RS_TFORK_SNAPSHOT=off`) in the same test, interleaved, the best
/// of two pauses each, the snapshot's under half the copy's (about 30
/// against 200 ms here); the clones run, and no snapshot is left (the
/// source has no child after each tfork).
#[test]
fn namespace_init_pause_does_not_copy_its_memory() {
    require!(why_not());
    let dir = test_dir("tfork-nsinit-pause");
    let src = Src::start_with(&dir, 1, 256, &["unshare", "--pid", "--fork"]);
    let kids = |p: i32| -> String {
        std::fs::read_dir(format!("/proc/{p}/task")).into_iter().flatten().flatten().map(|t| std::fs::read_to_string(t.path().join("children")).unwrap_or_default()).collect()
    };
    let pause = |log: &str| -> f64 {
        let l = log.lines().rfind(|l| l.contains("source paused")).unwrap_or_else(|| panic!("no pause line: {log}"));
        l.split("source paused ").nth(1).and_then(|r| r.split(' ').next()).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{l}"))
    };
    let (mut snap, mut copy) = (f64::MAX, f64::MAX);
    for round in 0..2 {
        for mode in if round == 0 { ["on", "off"] } else { ["off", "on"] } {
            let img = dir.join(format!("img-{mode}-{round}"));
            std::fs::create_dir_all(&img).unwrap();
            let (st, out, log) = run_tfork(&img, &["-t", &src.pid.to_string(), "--copies", "2"], &[("CRIU_RS_TFORK_SNAPSHOT", mode)]);
            assert!(st.success(), "{log}");
            assert_eq!(log.contains("snapshot forks taken"), mode == "on", "{mode}: {log}");
            let clones: Vec<i32> = out.lines().map(|l| l.trim().parse().unwrap()).collect();
            assert_eq!(clones.len(), 2, "{log}");
            assert!(clones.iter().all(|&c| alive(c)), "{log}");
            assert_eq!(kids(src.pid).trim(), "", "{mode}: a child of the source left:\n{log}");
            let p = pause(&log);
            if mode == "on" {
                snap = snap.min(p);
            } else {
                copy = copy.min(p);
            }
            for c in clones {
                // SAFETY: kill(2) of a clone this test made.
                unsafe { libc::kill(c, libc::SIGKILL) };
            }
            reap_zombies(&src.bin);
        }
    }
    src.all_tick(&[src.pid], 2, "after the tforks");
    assert!(snap < copy / 2.0, "the pause with snapshot forks ({snap:.1} ms) is not under half the copy's ({copy:.1} ms)");
}

/// A namespace init with memory a fork leaves out (`tforkprog 1 8
/// dontfork`: a MADV_DONTFORK area it checks every tick): the area is
/// marked MADV_DOFORK for a second snapshot fork and marked again (the log
/// says so), the source keeps the mark, the clones have the area (they
/// check it every tick) with the mark, and no child of the source is left.
#[test]
fn namespace_init_with_dontfork_memory_gets_its_snapshot() {
    require!(why_not());
    let dir = test_dir("tfork-nsinit-dontfork");
    let src = Src::start_full(&dir, 1, 8, &["unshare", "--pid", "--fork"], &["dontfork"]);
    let dc = u64::from_str_radix(std::fs::read_to_string(src.work.join("dontfork.txt")).unwrap().trim().trim_start_matches("0x"), 16).unwrap();
    let (st, out, log) = run_tfork(&dir, &["-t", &src.pid.to_string(), "--copies", "2"], &[]);
    assert!(st.success(), "{log}");
    assert!(log.contains("snapshot forked again") && log.contains("snapshot forks taken"), "{log}");
    let clones: Vec<i32> = out.lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(clones.len(), 2, "{log}");
    // (the clones are pid 1 too: they tick in the same tick-1.log, and a
    // clone that finds its MADV_DONTFORK area wrong writes FAIL there)
    src.all_tick(&[src.pid], 4, "after the tfork (the clones check their MADV_DONTFORK area)");
    assert!(clones.iter().all(|&c| alive(c)), "a clone died:\n{log}");
    for p in clones.iter().copied().chain([src.pid]) {
        assert!(vm_flags_at(p, dc).iter().any(|f| f == "dc"), "{p} keeps MADV_DONTFORK on {dc:#x}");
    }
    let kids: String = std::fs::read_dir(format!("/proc/{}/task", src.pid))
        .into_iter()
        .flatten()
        .flatten()
        .map(|t| std::fs::read_to_string(t.path().join("children")).unwrap_or_default())
        .collect();
    assert_eq!(kids.trim(), "", "a child of the source left:\n{log}");
    for c in clones {
        // SAFETY: kill(2) of a clone this test made.
        unsafe { libc::kill(c, libc::SIGKILL) };
    }
    reap_zombies(&src.bin);
}
