//! `criu tfork` isolation (docs/ARCHITECTURE.md, "tfork", "Isolation"): a
//! clone never shares with the source, nor with another clone, a kernel
//! object the process made for itself (pipe, socketpair, eventfd, timerfd,
//! signalfd, epoll set, MAP_SHARED anonymous memory, memfd), through which
//! one would see another's writes. Eventfds, signalfds, relative
//! timerfds, epoll sets, pipes and socketpairs are copied into fork-made
//! clones by injection; a source holding any other (shared memory, a
//! memfd...) is cloned by restore, and the log names the fd or mapping
//! that decided it.
//!
//! `progs/tforkiso.c` leaves a random token of its own in each object every
//! tick and checks it is still there at the next: a clone sharing one with
//! the source fails within a tick (on main, where such a source was
//! forked, its clones and the source print FAIL at once). The shared
//! fixtures `ipc` and `files` tforked with `--copies 4` tick ok, the source
//! and all four clones. The RPC's TFORK takes the same decision (swrk.rs,
//! `tfork_request_gives_clones_their_own_objects`).
//!
//! Needs root, gcc, setsid and the shared fixtures; otherwise skips with
//! the reason, or fails under CI=true.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Run `criu tfork -t PID --copies N -D dir -v4`; (success, clone pids, log).
fn tfork(dir: &Path, pid: i32, n: usize) -> (bool, Vec<i32>, String) {
    let log = dir.join("tfork.log");
    let out = Command::new(CRIU)
        .args(["tfork", "-t", &pid.to_string(), "--copies", &n.to_string(), "-D"])
        .arg(dir)
        .args(["-v4", "-o"])
        .arg(&log)
        .stdin(Stdio::null())
        .output()
        .expect("run criu tfork");
    let mut text = std::fs::read_to_string(&log).unwrap_or_default();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let pids = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect();
    (out.status.success(), pids, text)
}

/// Ticks per host pid in a tforkiso log (`tick N ok PID`); panics on a FAIL line.
fn ticks_by_pid(log: &Path) -> std::collections::HashMap<i32, u64> {
    let s = std::fs::read_to_string(log).unwrap_or_default();
    assert!(!s.contains("FAIL"), "a process saw another's writes:\n{}", s.lines().filter(|l| l.contains("FAIL")).collect::<Vec<_>>().join("\n"));
    let mut m = std::collections::HashMap::new();
    for l in s.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if let ["tick", _, "ok", pid] = w[..] {
            *m.entry(pid.parse().unwrap_or(0)).or_insert(0) += 1;
        }
    }
    m
}

/// Every pid of `pids` logs `n` more ok ticks (none fails).
fn all_tick(log: &Path, pids: &[i32], n: u64, what: &str) {
    let t0 = ticks_by_pid(log);
    wait_until(&format!("{n} ticks of each of {pids:?} {what}"), Duration::from_secs(30), || {
        let t = ticks_by_pid(log);
        pids.iter().all(|p| t.get(p).copied().unwrap_or(0) >= t0.get(p).copied().unwrap_or(0) + n)
    });
    for &p in pids {
        assert!(alive(p), "{p} died {what}");
    }
}

fn kill(pid: i32) {
    // SAFETY: kill(2) of a process this test started or made by tfork.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// `progs/tforkiso.c` (a pipe, a socketpair, an eventfd, MAP_SHARED
/// anonymous memory, a memfd mapping, each holding the process's own token)
/// tforked with `--copies 4`: the log names the fd that sent it down the
/// restore path; the source and the four clones tick ok for seconds (none
/// finds another's token); a word written into the source's shared pages
/// is seen by no clone, one written into a clone's by no other process; a
/// killed clone leaves the rest ticking.
#[test]
fn clones_get_their_own_pipes_sockets_eventfds_and_shared_memory() {
    require!(why_not_here());
    let dir = test_dir("tforkiso-objects");
    let fx = Fixture::start_ours("tforkiso", &dir, Ns::Host);
    let log = fx.log();
    all_tick(&log, &[fx.pid], 3, "before the tfork");
    let (ok, clones, text) = tfork(&dir, fx.pid, 4);
    assert!(ok, "{text}");
    assert_eq!(clones.len(), 4, "{text}");
    let mut all = clones.clone();
    all.push(fx.pid);
    // ~2.5 s of ticks of everyone: a shared object fails within one
    all_tick(&log, &all, 50, "beside each other");
    // the shared pages: the source's and each clone's their own
    let addrs = std::fs::read_to_string(fx.work.join("addr.txt")).unwrap();
    for a in addrs.split_whitespace() {
        let at = u64::from_str_radix(a.trim_start_matches("0x"), 16).unwrap() + 64;
        write_u64(fx.pid, at, 0x5eed_0000_0001);
        for &c in &clones {
            assert_ne!(read_u64(c, at), 0x5eed_0000_0001, "clone {c} sees the source's write at {at:#x}");
        }
        write_u64(clones[0], at, 0x5eed_0000_0002);
        for &p in clones[1..].iter().chain([&fx.pid]) {
            assert_ne!(read_u64(p, at), 0x5eed_0000_0002, "{p} sees clone {}'s write at {at:#x}", clones[0]);
        }
    }
    // a clone killed: the others and the source tick on
    kill(clones[0]);
    wait_until("the killed clone gone", Duration::from_secs(5), || !alive(clones[0]));
    all_tick(&log, &all[1..], 10, "after a clone was killed");
    for &c in &clones[1..] {
        kill(c);
    }
    assert!(text.contains(&format!("process {} is cloned by restore, not by fork: fd ", fx.pid)), "the log names the fd that decided:\n{text}");
}

/// A shared fixture tforked with `--copies 4`: for seconds the source and
/// all four clones tick ok (no FAIL in the progress.log they share as after
/// fork()), the log growing five times as fast as one process's; the log
/// of the tfork says `how` the clones got their own objects.
fn fixture_clones_tick(name: &str, how: &str) {
    require!(why_not_here());
    let dir = test_dir(&format!("tforkiso-fx-{name}"));
    let fx = Fixture::start(name, &dir, Ns::Host);
    fx.ticks_on(2, "before the tfork");
    let (ok, clones, text) = tfork(&dir, fx.pid, 4);
    assert!(ok, "{text}");
    assert_eq!(clones.len(), 4, "{text}");
    let lines = || std::fs::read_to_string(fx.log()).unwrap().lines().count();
    let (t0, s0) = (fx.tick(), lines());
    std::thread::sleep(Duration::from_secs(3));
    let (t1, s1) = (fx.tick(), lines()); // (panics on a FAIL line)
    for &c in clones.iter().chain([&fx.pid]) {
        assert!(alive(c), "{c} died");
    }
    let one = (t1 - t0).max(1) as usize;
    assert!(s1 - s0 >= 4 * one, "the log grew by {} lines in 3 s, one process ticked {one} times", s1 - s0);
    let _ = fx.tick();
    for &c in &clones {
        kill(c);
    }
    assert!(text.contains(how), "{text}");
}

/// `ipc`: a stream and a datagram socketpair with queued data, an eventfd,
/// a timerfd, a signalfd and an epoll set (on main both clones failed at
/// once: "FAIL tick 20 epoll events"): cloned by fork, each clone with
/// its own copies of the six objects.
#[test]
fn fixture_ipc_clones_tick() {
    fixture_clones_tick("ipc", "its own copies of 6 objects of the source");
}

/// `files`: a pipe holding bytes beside its regular files: cloned by
/// fork, each clone with its own copy of the pipe.
#[test]
fn fixture_files_clones_tick() {
    fixture_clones_tick("files", "its own copies of 1 objects of the source");
}

/// `progs/tforkiso.c events` (a pipe with both ends in the process, a
/// socketpair, an eventfd, a signalfd, an epoll set watching the pipe and the eventfd,
/// the pipe's watch carrying the process's token, changed by
/// EPOLL_CTL_MOD every tick): cloned by fork, each clone given its own
/// copies by injection; the clones are siblings of the source in its pid
/// namespace; the source and four clones tick ok for seconds (on main
/// they failed at once, finding each other's tokens). With
/// `CRIU_RS_TFORK_COPY=off` (measurements) the same source is cloned by
/// restore instead, the log naming the pipe, and ticks as well.
#[test]
fn fork_made_clones_get_their_own_eventfd_signalfd_epoll_and_pipe() {
    require!(why_not_here());
    let dir = test_dir("tforkiso-events");
    let (pid, log, _killer) = start_tforkiso(&dir, &["events"]);
    let (ok, clones, text) = tfork(&dir, pid, 4);
    assert!(ok && clones.len() == 4, "{text}");
    let ppid = |p: i32| std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap().rsplit_once(") ").unwrap().1.split_whitespace().nth(1).unwrap().to_string();
    for &c in &clones {
        let st = std::fs::read_to_string(format!("/proc/{c}/status")).unwrap();
        let nspid = st.lines().find_map(|l| l.strip_prefix("NSpid:")).unwrap().trim().to_string();
        assert_eq!(nspid, c.to_string(), "clone {c}: made by fork, in the source's pid namespace");
        assert_eq!(ppid(c), ppid(pid), "clone {c}: a sibling of the source");
    }
    let mut all = clones.clone();
    all.push(pid);
    all_tick(&log, &all, 50, "beside each other");
    for &c in &clones {
        kill(c);
        assert!(text.contains(&format!("clone {c}: its own copies of 5 objects of the source")), "{text}");
    }
    assert!(!text.contains("cloned by restore"), "{text}");
    // the restore path for the same source, on request
    let out = Command::new(CRIU)
        .args(["tfork", "-t", &pid.to_string(), "--copies", "1", "-v4", "-o"])
        .arg(dir.join("tfork-restore.log"))
        .arg("-D")
        .arg(&dir)
        .env("CRIU_RS_TFORK_COPY", "off")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = std::fs::read_to_string(dir.join("tfork-restore.log")).unwrap_or_default();
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&format!("process {pid} is cloned by restore, not by fork: fd ")), "{text}");
    let c: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    all_tick(&log, &[c, pid], 20, "(restored clone)");
    kill(c);
}

/// `progs/tforkiso.c ARGS` built in `dir` and started (setsid) in
/// `dir/work`, ticking: its pid, its log, and the killer of every process
/// running it.
fn start_tforkiso(dir: &Path, args: &[&str]) -> (i32, std::path::PathBuf, Killer) {
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let bin = dir.join("tforkiso");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/progs/tforkiso.c");
    assert!(Command::new("gcc").args(["-O2", "-Wall", "-o"]).arg(&bin).arg(&src).status().unwrap().success());
    let mut child = only_stdio(&mut Command::new("setsid")).arg(&bin).args(args).current_dir(&work).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::spawn(move || child.wait());
    wait_until("ready", Duration::from_secs(10), || work.join("ready").exists());
    let pid = roots_with_exe(&bin)[0];
    let killer = Killer(bin);
    let log = work.join("progress.log");
    all_tick(&log, &[pid], 3, "before the tfork");
    (pid, log, killer)
}

/// Kills every process running `.0` on drop.
struct Killer(std::path::PathBuf);

impl Drop for Killer {
    fn drop(&mut self) {
        for p in live_with_exe(&self.0) {
            kill(p);
        }
    }
}

/// `progs/tforkiso.c events opts`: as above, but the socketpair has
/// SO_RCVBUF set, which the copies do not carry: the look before the
/// freeze finds nothing against a fork, the collection does (a socketpair
/// with options set), and the source, released, is frozen again by the
/// restore path; the log names the socket; the clones (each in a pid
/// namespace of its own) and the source tick ok.
#[test]
fn a_socketpair_with_options_set_takes_the_restore_path_after_the_freeze() {
    require!(why_not_here());
    let dir = test_dir("tforkiso-opts");
    let (pid, log, _killer) = start_tforkiso(&dir, &["events", "opts"]);
    let (ok, clones, text) = tfork(&dir, pid, 2);
    assert!(ok && clones.len() == 2, "{text}");
    let mut all = clones.clone();
    all.push(pid);
    all_tick(&log, &all, 30, "beside each other");
    for &c in &clones {
        let st = std::fs::read_to_string(format!("/proc/{c}/status")).unwrap();
        let nspid: Vec<String> = st.lines().find_map(|l| l.strip_prefix("NSpid:")).unwrap().split_whitespace().map(str::to_string).collect();
        assert_eq!(nspid, vec![c.to_string(), pid.to_string()], "clone {c}: restored");
        kill(c);
    }
    assert!(text.contains(&format!("process {pid} is cloned by restore, not by fork: fd ")) && text.contains("a unix socket of a pair with socket options set"), "{text}");
}

/// The engine killed after a fork-made clone got its copies, before its
/// release (`tfork-before-release`), and once a clone runs and the next
/// is being made (`tfork-clone-forked`): no clone is left, the source's
/// fds are as they were and it ticks on with its own objects (no FAIL).
#[test]
fn engine_killed_after_the_copies_leaves_no_clone_and_the_source_whole() {
    require!(why_not_here());
    let dir = test_dir("tforkiso-fault");
    let (pid, log, _killer) = start_tforkiso(&dir, &["events"]);
    let bin = dir.join("tforkiso");
    for point in ["tfork-before-release", "tfork-clone-forked"] {
        let fds0 = fd_links(pid);
        let out = Command::new(CRIU)
            .args(["tfork", "-t", &pid.to_string(), "--copies", "3", "-v4", "-o"])
            .arg(dir.join(format!("{point}.log")))
            .arg("-D")
            .arg(&dir)
            .env("CRIU_RS_FAULT_AT", point)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = std::fs::read_to_string(dir.join(format!("{point}.log"))).unwrap_or_default();
        assert_killed(out.status, point, &text);
        assert!(out.stdout.is_empty(), "{point}: no clone reported");
        wait_until(&format!("{point}: no clone left"), Duration::from_secs(5), || live_with_exe(&bin) == vec![pid]);
        assert_eq!(fd_links(pid), fds0, "{point}: the source's fds");
        all_tick(&log, &[pid], 10, &format!("after the engine died at {point}"));
    }
}
