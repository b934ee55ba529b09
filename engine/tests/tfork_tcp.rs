//! `criu tfork --tcp-close` with real TCP: `progs/tcpclient.c` exchanges
//! numbered lines with an echo server of this test (outside its tree)
//! every 50 ms, checking each echo; the server checks that the lines of
//! each connection come in order from 0 (a line sent by a clone into the
//! source's connection would break it; an echo read by a clone would
//! leave the source without it: FAIL in its log).
//!
//! Fork-made clones (a single process), clone trees and clones of a
//! namespace init: the source's exchange goes on unchanged over its one
//! connection, and each clone sees its connection closed as
//! `criu restore --tcp-close` leaves one (measured with upstream CRIU 4.2:
//! a send fails with EPIPE, a read returns 0, poll reports
//! POLLIN|POLLOUT|POLLHUP|POLLRDHUP, unbound, no peer (ENOTCONN), state
//! CLOSE), and runs on. A listener is shared by fork-made clones with the
//! source (each connection answered by one of them) and refused for a
//! tree. Refused by name: a connection without `--tcp-close`, one with
//! both ends in the process. The engine killed once a clone's connection
//! is closed leaves no clone and the source's exchange untouched.
//!
//! Needs root, gcc, unshare and setsid.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn why_not() -> Option<String> {
    why_not_root().or_else(|| why_not_tools(&["gcc", "unshare", "setsid"]))
}

/// What a program sees of its connection closed by upstream's `criu
/// restore --tcp-close` (measured, tcpclient's probe line): send -1
/// EPIPE, recv 0, poll POLLIN|POLLOUT|POLLHUP|POLLRDHUP, name 0.0.0.0:0,
/// getpeername -1 ENOTCONN, no pending error, TCP_CLOSE.
const CLOSED_AS_UPSTREAM: &str = "closed send=-1/32 recv=0/0 poll=0x2015 name=0.0.0.0:0 peer=-1/107 soerr=0 state=7";

/// An echo server on 127.0.0.1 (a port of the kernel's choosing): every
/// connection echoed line by line, its lines checked to count from 0.
struct Echo {
    port: u16,
    st: Arc<Mutex<EchoState>>,
    stop: Arc<AtomicBool>,
}

#[derive(Default)]
struct EchoState {
    conns: usize,
    /// Lines received, per connection.
    lines: Vec<u64>,
    errors: Vec<String>,
}

impl Echo {
    fn start() -> Echo {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let st = Arc::new(Mutex::new(EchoState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st2, stop2) = (st.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => {
                        let n = {
                            let mut s = st2.lock().unwrap();
                            s.conns += 1;
                            s.lines.push(0);
                            s.conns - 1
                        };
                        let (st3, stop3) = (st2.clone(), stop2.clone());
                        std::thread::spawn(move || serve(c, n, &st3, &stop3));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Echo { port, st, stop }
    }

    fn conns(&self) -> usize {
        self.st.lock().unwrap().conns
    }

    fn lines(&self, conn: usize) -> u64 {
        self.st.lock().unwrap().lines[conn]
    }

    fn errors(&self) -> Vec<String> {
        self.st.lock().unwrap().errors.clone()
    }
}

fn serve(c: TcpStream, n: usize, st: &Mutex<EchoState>, stop: &AtomicBool) {
    c.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        match r.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) if line.ends_with('\n') => {
                let mut s = st.lock().unwrap();
                let want = s.lines[n];
                if line.trim().parse::<u64>().ok() != Some(want) {
                    s.errors.push(format!("connection {n}: line {want} expected, got {line:?}"));
                }
                s.lines[n] += 1;
                drop(s);
                if w.write_all(line.as_bytes()).is_err() {
                    return;
                }
                line.clear();
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A running tcpclient (with `prefix`, e.g. `unshare --pid --fork setsid`);
/// every process running its binary (clones included) killed on drop.
struct Prog {
    bin: PathBuf,
    work: PathBuf,
    pid: i32,
    child: Option<Child>,
    /// Clones that are this test's children (fork-made: siblings of the
    /// source), reaped by pid on drop.
    clones: Vec<i32>,
}

impl Prog {
    fn start(dir: &Path, args: &[&str], prefix: &[&str]) -> Prog {
        let bin = dir.join("tcpclient");
        if !bin.exists() {
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/progs/tcpclient.c");
            let st = Command::new("gcc").args(["-O2", "-Wall", "-o"]).arg(&bin).arg(&src).status().expect("gcc");
            assert!(st.success(), "building tcpclient");
        }
        let work = dir.join("work");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        let mut cmd = match prefix.split_first() {
            Some((p, rest)) => {
                let mut c = Command::new(p);
                c.args(rest).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let child = only_stdio(&mut cmd).args(args).current_dir(&work).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start tcpclient");
        wait_until("tcpclient running", Duration::from_secs(10), || !roots_with_exe(&bin).is_empty());
        let pid = roots_with_exe(&bin)[0];
        Prog { bin, work, pid, child: Some(child), clones: Vec::new() }
    }

    fn log(&self, pid: i32) -> String {
        let s = std::fs::read_to_string(self.work.join(format!("tick-{pid}.log"))).unwrap_or_default();
        assert!(!s.contains("FAIL"), "tcpclient {pid} failed:\n{s}");
        s
    }

    /// Its last `ok N` (exchanges done).
    fn ok(&self, pid: i32) -> u64 {
        self.log(pid).lines().filter_map(|l| l.strip_prefix("ok ")?.parse().ok()).next_back().unwrap_or(0)
    }

    /// Its last `closed N` (ticks since it saw its connection closed).
    fn closed(&self, pid: i32) -> Option<u64> {
        self.log(pid).lines().filter_map(|l| l.strip_prefix("closed ")?.parse().ok()).next_back()
    }

    /// Its probe line: what it saw when its connection closed.
    fn probe(&self, pid: i32) -> Option<String> {
        self.log(pid).lines().find(|l| l.starts_with("closed send=")).map(str::to_string)
    }

    fn lport(&self) -> u16 {
        wait_until("lport.txt", Duration::from_secs(10), || self.work.join("lport.txt").exists());
        std::fs::read_to_string(self.work.join("lport.txt")).unwrap().trim().parse().unwrap()
    }

    /// `n` more exchanges of the source (no FAIL meanwhile).
    fn exchanges_on(&self, n: u64, what: &str) {
        let t = self.ok(self.pid);
        wait_until(&format!("{n} more exchanges of the source {what}"), Duration::from_secs(20), || self.ok(self.pid) >= t + n);
        assert!(alive(self.pid), "the source died {what}");
    }

    /// Clone `c` saw its connection closed as upstream leaves one, and
    /// ticks on.
    fn sees_closed(&self, c: i32) {
        wait_until(&format!("clone {c} sees its connection closed"), Duration::from_secs(15), || self.probe(c).is_some());
        let p = self.probe(c).unwrap();
        assert!(p.starts_with(CLOSED_AS_UPSTREAM), "clone {c}: {p}\n(upstream's: {CLOSED_AS_UPSTREAM})");
        let t = self.closed(c).unwrap_or(0);
        wait_until(&format!("clone {c} ticks on"), Duration::from_secs(15), || self.closed(c).unwrap_or(0) >= t + 5);
        assert!(alive(c), "clone {c} died");
    }
}

impl Drop for Prog {
    fn drop(&mut self) {
        for p in live_with_exe(&self.bin) {
            // SAFETY: kill(2) of a process running this test's binary.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        for &c in &self.clones {
            let _ = engine::sys::ptrace::wait_flags(c, 0);
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Run `criu tfork ARGS -D dir`; (success, pids printed, log).
fn tfork(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, Vec<i32>, String) {
    let log = dir.join("tfork.log");
    let _ = std::fs::remove_file(&log);
    let mut cmd = Command::new(CRIU);
    cmd.arg("tfork").args(args).arg("-D").arg(dir).args(["-v4", "-o"]).arg(&log).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run criu");
    let mut text = std::fs::read_to_string(&log).unwrap_or_default();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let pids = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect();
    (out.status.success(), pids, text)
}

/// The socket inode an fd of `pid` names.
fn sock(pid: i32, fd: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default()
}

/// NSpid of `pid`.
fn nspid(pid: i32) -> Vec<i32> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    st.lines().find_map(|l| l.strip_prefix("NSpid:")).map(|v| v.split_whitespace().filter_map(|w| w.parse().ok()).collect()).unwrap_or_default()
}

/// Without --tcp-close the connection is refused by name, and no clone is left.
fn refused_without_tcp_close(dir: &Path, p: &Prog, echo: &Echo) {
    let before = live_with_exe(&p.bin);
    let (ok, pids, log) = tfork(dir, &["-t", &p.pid.to_string(), "--copies", "1"], &[]);
    assert!(!ok && pids.is_empty(), "{log}");
    assert!(log.contains(&format!("-> 127.0.0.1:{} (ESTABLISHED)", echo.port)) && log.contains("give --tcp-close"), "{log}");
    assert_eq!(live_with_exe(&p.bin), before, "processes made by a refused tfork");
}

/// The source's exchange after the tfork: unchanged, over its one
/// connection, every line in order and echoed back to it.
fn source_unchanged(p: &Prog, echo: &Echo) {
    p.exchanges_on(20, "after the tfork");
    assert_eq!(echo.conns(), 1, "one connection to the server");
    assert!(echo.errors().is_empty(), "the server: {:?}", echo.errors());
    assert!(echo.lines(0) > p.ok(p.pid), "the server's lines {} and the source's exchanges {}", echo.lines(0), p.ok(p.pid));
}

#[test]
fn fork_made_clones_see_their_connection_closed() {
    require!(why_not());
    let dir = test_dir("tfork-tcp-fork");
    let echo = Echo::start();
    let mut p = Prog::start(&dir, &[&echo.port.to_string(), "0"], &[]);
    let lport = p.lport();
    p.exchanges_on(5, "before the tfork");
    refused_without_tcp_close(&dir, &p, &echo);
    let (ok, clones, log) = tfork(&dir, &["-t", &p.pid.to_string(), "--copies", "2", "--tcp-close"], &[]);
    p.clones = clones.clone();
    assert!(ok && clones.len() == 2, "{log}");
    assert!(log.contains(&format!("the clones share the TCP listener on 127.0.0.1:{lport}")), "the shared listener named in a warning:\n{log}");
    for &c in &clones {
        p.sees_closed(c);
        // fd 4 (the connection): a socket of its own; fd 3: the source's listener
        assert_ne!(sock(c, 4), sock(p.pid, 4), "clone {c}'s connection fd");
        assert!(sock(c, 4).starts_with("socket:["), "clone {c}'s fd 4: {}", sock(c, 4));
        assert_eq!(sock(c, 3), sock(p.pid, 3), "clone {c}'s listener fd");
    }
    source_unchanged(&p, &echo);
    assert!(p.probe(p.pid).is_none(), "the source saw its connection closed:\n{}", p.log(p.pid));
    // the listener, shared: each connection answered by the source or a clone
    let mut all = clones.clone();
    all.push(p.pid);
    for _ in 0..6 {
        let mut c = TcpStream::connect(("127.0.0.1", lport)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        let who: i32 = s.trim().parse().unwrap_or_else(|_| panic!("listener answered {s:?}"));
        assert!(all.contains(&who), "answered by {who}, not the source or a clone ({all:?})");
    }
    // a clone killed leaves the source's exchange going
    // SAFETY: kill(2) of a clone this test made.
    unsafe { libc::kill(clones[0], libc::SIGKILL) };
    p.exchanges_on(5, "after a clone was killed");
    assert!(echo.errors().is_empty(), "the server: {:?}", echo.errors());
}

#[test]
fn tree_clones_see_their_connection_closed() {
    require!(why_not());
    let dir = test_dir("tfork-tcp-tree");
    let echo = Echo::start();
    // a tree: the process and a sleeping child
    let p = Prog::start(&dir, &[&echo.port.to_string(), "-", "child"], &[]);
    wait_until("the child", Duration::from_secs(10), || live_with_exe(&p.bin).len() == 2);
    p.exchanges_on(5, "before the tfork");
    refused_without_tcp_close(&dir, &p, &echo);
    let (ok, clones, log) = tfork(&dir, &["-t", &p.pid.to_string(), "--copies", "2", "--tcp-close"], &[]);
    assert!(ok && clones.len() == 2, "{log}");
    for &c in &clones {
        // each clone tree in a pid namespace of its own, the source's pid inside
        assert_eq!(nspid(c).last(), Some(&p.pid), "clone {c}: NSpid {:?}", nspid(c));
        p.sees_closed(c);
    }
    assert_eq!(live_with_exe(&p.bin).len(), 6, "the source tree and two clone trees of two processes each");
    source_unchanged(&p, &echo);
    drop(p);
    // a tree with a listener: a restored clone can't listen on the source's port
    let echo2 = Echo::start();
    let p = Prog::start(&dir, &[&echo2.port.to_string(), "0", "child"], &[]);
    let lport = p.lport();
    wait_until("the child", Duration::from_secs(10), || live_with_exe(&p.bin).len() == 2);
    let (ok, pids, log) = tfork(&dir, &["-t", &p.pid.to_string(), "--copies", "1", "--tcp-close"], &[]);
    assert!(!ok && pids.is_empty(), "{log}");
    assert!(log.contains(&format!("a TCP listener on 127.0.0.1:{lport}")) && log.contains("SO_REUSEPORT"), "{log}");
    assert_eq!(live_with_exe(&p.bin).len(), 2, "processes made by a refused tfork");
    p.exchanges_on(5, "after the refusal");
}

#[test]
fn namespace_init_clones_see_their_connection_closed() {
    require!(why_not());
    let dir = test_dir("tfork-tcp-nsinit");
    let echo = Echo::start();
    let p = Prog::start(&dir, &[&echo.port.to_string()], &["unshare", "--pid", "--fork", "setsid"]);
    assert_eq!(nspid(p.pid).last(), Some(&1), "the source is pid 1 of its namespace");
    p.exchanges_on(5, "before the tfork");
    refused_without_tcp_close(&dir, &p, &echo);
    let (ok, clones, log) = tfork(&dir, &["-t", &p.pid.to_string(), "--copies", "2", "--tcp-close"], &[]);
    assert!(ok && clones.len() == 2, "{log}");
    for &c in &clones {
        assert_eq!(nspid(c).len(), 2, "clone {c}: NSpid {:?}", nspid(c));
        assert_eq!(nspid(c).last(), Some(&1), "clone {c}: NSpid {:?}", nspid(c));
        p.sees_closed(c);
    }
    source_unchanged(&p, &echo);
}

#[test]
fn connection_inside_the_process_is_refused_by_name() {
    require!(why_not());
    let dir = test_dir("tfork-tcp-inside");
    let p = Prog::start(&dir, &["self", "0"], &[]);
    let lport = p.lport();
    wait_until("ticks", Duration::from_secs(10), || p.log(p.pid).lines().count() >= 3);
    let (ok, pids, log) = tfork(&dir, &["-t", &p.pid.to_string(), "--copies", "1", "--tcp-close"], &[]);
    assert!(!ok && pids.is_empty(), "{log}");
    assert!(log.contains("has both ends in the tree") && log.contains(&format!("127.0.0.1:{lport}")), "{log}");
    assert_eq!(live_with_exe(&p.bin), vec![p.pid], "processes made by a refused tfork");
}

#[test]
fn engine_killed_after_a_clone_closed_its_connection() {
    require!(why_not());
    let dir = test_dir("tfork-tcp-fault");
    let echo = Echo::start();
    let p = Prog::start(&dir, &[&echo.port.to_string()], &[]);
    p.exchanges_on(5, "before the tfork");
    let (ok, pids, log) = tfork(&dir, &["-t", &p.pid.to_string(), "--copies", "2", "--tcp-close"], &[("CRIU_RS_FAULT_AT", "tforktcp-closed")]);
    assert!(!ok && pids.is_empty(), "{log}");
    assert!(log.contains("fault point tforktcp-closed"), "{log}");
    wait_until("no clone left", Duration::from_secs(5), || live_with_exe(&p.bin) == vec![p.pid]);
    source_unchanged(&p, &echo);
}
