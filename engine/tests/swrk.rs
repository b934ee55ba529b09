//! `criu swrk 3` as container runtimes run it: a SOCK_SEQPACKET socketpair,
//! our end kept, the other given to `criu swrk` as its fd 3; one protobuf
//! message a packet (`criu_req` out, `criu_resp` back). The images dir is
//! passed as this test's own fd number (`images_dir_fd`, opened by the
//! service through /proc/PEER/fd/N).
//!
//! VERSION and FEATURE_CHECK; DUMP of a running fixture program with
//! `notify_scripts` (the stage sequence checked, a false answer fails the
//! dump and leaves the program running, `leave_running` ends with
//! network-unlock); RESTORE with `rst_sibling` (the reply's pid is the
//! restored program, a child of this test, ticking on); TFORK (clones
//! that tick); hostile messages (each answered with an error naming the
//! field, never a hang); and the requests runc, crun and podman sent to
//! upstream CRIU (fixtures/rpc), each answered sensibly.
//!
//! Needs root, gcc, unshare, setsid and the shared fixtures; otherwise
//! skips with the reason, or fails under CI=true.

mod common;

use common::*;
use images_proto::rpc::{CriuOpts, CriuReq, CriuReqType as T, CriuResp, CriuTforkOpts};
use prost::Message as _;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A `criu swrk 3` with our end of its socket.
struct Swrk {
    sock: OwnedFd,
    child: Child,
}

impl Swrk {
    fn start() -> Swrk {
        // CLOEXEC: tests run in parallel, and another test's criu must not
        // inherit this pair (the service would never see its client close)
        let (ours, theirs) = engine::sys::sock::socketpair(libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC).expect("socketpair");
        // no reply may take this long: a hang fails the test
        engine::sys::sock::set_timeval(ours.as_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, 120, 0).unwrap();
        let n = theirs.as_raw_fd();
        let mut cmd = Command::new(CRIU);
        cmd.args(["swrk", "3"]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        // SAFETY: dup2 is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                // (dup2 onto itself would keep FD_CLOEXEC)
                let r = if n == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(n, 3) };
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        let child = cmd.spawn().expect("start criu swrk");
        drop(theirs);
        Swrk { sock: ours, child }
    }

    fn send_raw(&self, b: &[u8]) {
        engine::sys::rpc::send_packet(self.sock.as_fd(), b).expect("send a request");
    }

    fn send(&self, r: &CriuReq) {
        self.send_raw(&r.encode_to_vec());
    }

    /// The next reply, or None when the service closed.
    fn recv(&self) -> Option<CriuResp> {
        let mut buf = vec![0u8; 1 << 16];
        let (n, trunc) = engine::sys::rpc::recv_packet(self.sock.as_fd(), &mut buf).expect("a reply within 120 s")?;
        assert!(!trunc, "reply over 64 KiB");
        Some(CriuResp::decode(&buf[..n]).expect("the reply decodes as criu_resp"))
    }

    /// Send, then answer each NOTIFY with `answer(script)` until the final
    /// reply: the notifications seen (script, pid) and that reply.
    fn call(&self, r: &CriuReq, answer: &mut dyn FnMut(&str) -> bool) -> (Vec<(String, Option<i32>)>, CriuResp) {
        self.send(r);
        let mut seen = Vec::new();
        loop {
            let resp = self.recv().expect("a reply before the service closed");
            if resp.r#type != T::Notify as i32 {
                return (seen, resp);
            }
            let n = resp.notify.clone().expect("NOTIFY carries criu_notify");
            let script = n.script.clone().unwrap_or_default();
            let ok = answer(&script);
            seen.push((script, n.pid));
            self.send(&CriuReq { r#type: T::Notify as i32, notify_success: Some(ok), ..CriuReq::default() });
        }
    }

    /// The service's exit status (after it closed) and its stderr.
    fn finish(mut self) -> (ExitStatus, String) {
        drop(self.sock);
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                return (st, err);
            }
            assert!(t.elapsed() < Duration::from_secs(60), "criu swrk did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// One request, answered `yes` to every notification: the reply and the exit status.
fn one(r: &CriuReq) -> (CriuResp, ExitStatus, String) {
    let s = Swrk::start();
    let (_, resp) = s.call(r, &mut |_| true);
    let (st, err) = s.finish();
    (resp, st, err)
}

fn req(t: T, opts: Option<CriuOpts>) -> CriuReq {
    CriuReq { r#type: t as i32, opts, ..CriuReq::default() }
}

/// criu_opts with images_dir_fd = our fd of `dir` (kept open in `held`).
fn opts_dir(dir: &Path, held: &mut Vec<std::fs::File>) -> CriuOpts {
    let f = std::fs::File::open(dir).expect("open the images dir");
    let fd = f.as_raw_fd();
    held.push(f);
    CriuOpts { images_dir_fd: fd, log_file: Some("rpc.log".into()), log_level: Some(4), ..CriuOpts::default() }
}

fn errmsg(r: &CriuResp) -> &str {
    r.cr_errmsg.as_deref().unwrap_or("")
}

#[test]
fn version_and_feature_check() {
    require!(why_not_root());
    let (r, st, _) = one(&req(T::Version, None));
    assert!(r.success && r.r#type == T::Version as i32, "{r:?}");
    let v = r.version.expect("version");
    // runc wants >= 3.0, crun 3.15, podman 3.11 (major*10000 + minor*100)
    assert!(v.major_number * 10000 + v.minor_number * 100 >= 31500, "{v:?}");
    assert!(st.success());
    // crun's VERSION carries options (images_dir_fd 0): answered alike
    let (r, _, _) = one(&req(T::Version, Some(CriuOpts { images_dir_fd: 0, ..CriuOpts::default() })));
    assert!(r.success && r.version.is_some(), "{r:?}");
    let fc = CriuReq { features: Some(images_proto::rpc::CriuFeatures { mem_track: Some(true), lazy_pages: Some(true), pidfd_store: Some(true) }), ..req(T::FeatureCheck, None) };
    let (r, st, _) = one(&fc);
    assert!(r.success, "{r:?}");
    let f = r.features.expect("features");
    assert_eq!((f.mem_track, f.lazy_pages, f.pidfd_store), (Some(false), Some(false), Some(false)), "none of the three is supported");
    assert!(st.success());
}

const DUMP_STAGES: &[&str] = &["pre-dump", "network-lock", "query-ext-files", "post-dump"];
const RESTORE_STAGES: &[&str] = &["pre-restore", "setup-namespaces", "post-setup-namespaces", "post-restore", "network-unlock", "pre-resume", "post-resume"];

fn names(seen: &[(String, Option<i32>)]) -> Vec<&str> {
    seen.iter().map(|(s, _)| s.as_str()).collect()
}

/// DUMP with notify_scripts: refused at network-lock (program runs on),
/// with leave_running (runs on, network-unlock last), then for real; then
/// RESTORE with rst_sibling: a child of ours, ticking.
#[test]
fn dump_notify_and_restore_sibling() {
    require!(why_not_here());
    let tmp = test_dir("swrk-dump");
    let fx = Fixture::start("counter", &tmp, Ns::Host);
    let pid = fx.pid;
    let mut held = Vec::new();

    // a false answer at network-lock: the dump fails there, the program runs on
    let imgs = tmp.join("imgs-refused");
    std::fs::create_dir_all(&imgs).unwrap();
    let o = CriuOpts { pid: Some(pid), notify_scripts: Some(true), ..opts_dir(&imgs, &mut held) };
    let s = Swrk::start();
    let (seen, r) = s.call(&req(T::Dump, Some(o)), &mut |n| n != "network-lock");
    let (st, _) = s.finish();
    assert_eq!(names(&seen), ["pre-dump", "network-lock"]);
    assert!(!r.success && errmsg(&r).contains("network-lock") && errmsg(&r).contains("notify_success=false"), "{r:?}");
    assert!(!st.success());
    assert!(!imgs.join("inventory.img").exists(), "no image set after a refused dump");
    fx.ticks_on(3, "after the dump refused at network-lock");

    // leave_running: the whole sequence, network-unlock last
    let imgs = tmp.join("imgs-lr");
    std::fs::create_dir_all(&imgs).unwrap();
    let o = CriuOpts { pid: Some(pid), notify_scripts: Some(true), leave_running: Some(true), ..opts_dir(&imgs, &mut held) };
    let s = Swrk::start();
    let (seen, r) = s.call(&req(T::Dump, Some(o)), &mut |_| true);
    let (st, err) = s.finish();
    let mut want = DUMP_STAGES.to_vec();
    want.push("network-unlock");
    assert_eq!(names(&seen), want);
    assert!(r.success && r.dump.as_ref().and_then(|d| d.restored) == Some(false), "{r:?}\n{err}");
    assert!(st.success());
    assert!(imgs.join("inventory.img").exists());
    assert!(imgs.join("rpc.log").exists(), "log_file is written in the images dir (no work_dir_fd)");
    fx.ticks_on(3, "after the leave-running dump");

    // the dump for real: the program ends
    let imgs = tmp.join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    let work = tmp.join("wd");
    std::fs::create_dir_all(&work).unwrap();
    let wf = std::fs::File::open(&work).unwrap();
    let o = CriuOpts { pid: Some(pid), notify_scripts: Some(true), work_dir_fd: Some(wf.as_raw_fd()), ..opts_dir(&imgs, &mut held) };
    let s = Swrk::start();
    let (seen, r) = s.call(&req(T::Dump, Some(o)), &mut |_| true);
    let (st, err) = s.finish();
    assert_eq!(names(&seen), DUMP_STAGES);
    assert!(r.success && r.dump.as_ref().and_then(|d| d.restored) == Some(false), "{r:?}\n{err}");
    assert!(st.success());
    assert!(work.join("rpc.log").exists(), "log_file is relative to work_dir_fd");
    wait_until("the dumped program gone", Duration::from_secs(10), || !alive(pid) || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z")));
    let t_dump = fx.tick();

    // RESTORE as a sibling: the root is our child, the reply its pid
    let o = CriuOpts { rst_sibling: Some(true), notify_scripts: Some(true), log_file: Some("restore.log".into()), ..opts_dir(&imgs, &mut held) };
    let s = Swrk::start();
    let (seen, r) = s.call(&req(T::Restore, Some(o)), &mut |_| true);
    let (st, err) = s.finish();
    let restore_log = std::fs::read_to_string(imgs.join("restore.log")).unwrap_or_default();
    assert!(r.success, "{r:?}\n{err}\n{restore_log}");
    assert_eq!(names(&seen), RESTORE_STAGES);
    let rpid = r.restore.expect("restore{pid}").pid;
    assert_eq!(rpid, pid, "the pid is kept");
    for (s, p) in &seen {
        if s == "setup-namespaces" || s == "post-restore" {
            assert_eq!(*p, Some(rpid), "{s} carries the root's pid");
        }
    }
    assert!(st.success());
    let ppid = std::fs::read_to_string(format!("/proc/{rpid}/stat")).unwrap_or_default().rsplit_once(") ").and_then(|(_, r)| r.split_whitespace().nth(1).map(str::to_string));
    assert_eq!(ppid, Some(std::process::id().to_string()), "rst_sibling: the restored root is the client's child");
    wait_until("ticks after the restore", Duration::from_secs(15), || fx.tick() >= t_dump + 3);
    // SAFETY: kill(2) of the restored program, our child.
    unsafe { libc::kill(rpid, libc::SIGKILL) };
    let _ = engine::sys::ptrace::wait_flags(rpid, 0);
}

/// A false answer before anything is frozen (pre-dump), external files in
/// the answer to query-ext-files (refused: the program runs on), and a
/// false answer at pre-resume: the restore fails and leaves nothing behind.
#[test]
fn restore_refused_at_pre_resume_leaves_nothing() {
    require!(why_not_here());
    let tmp = test_dir("swrk-rst-refused");
    let fx = Fixture::start("counter", &tmp, Ns::Host);
    let pid = fx.pid;
    let mut held = Vec::new();
    let imgs = tmp.join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    let o = CriuOpts { pid: Some(pid), notify_scripts: Some(true), ..opts_dir(&imgs, &mut held) };
    let s = Swrk::start();
    let (seen, r) = s.call(&req(T::Dump, Some(o.clone())), &mut |n| n != "pre-dump");
    s.finish();
    assert_eq!(names(&seen), ["pre-dump"]);
    assert!(!r.success && errmsg(&r).contains("pre-dump"), "{r:?}");
    fx.ticks_on(2, "after the dump refused at pre-dump");
    // an answer to query-ext-files naming external files: refused, not ignored
    let s = Swrk::start();
    s.send(&req(T::Dump, Some(o.clone())));
    let r = loop {
        let r = s.recv().expect("a reply");
        let Some(n) = r.notify.clone().filter(|_| r.r#type == T::Notify as i32) else { break r };
        let mut a = CriuReq { r#type: T::Notify as i32, notify_success: Some(true), ..CriuReq::default() };
        if n.script.as_deref() == Some("query-ext-files") {
            a.opts = Some(CriuOpts { images_dir_fd: -1, external: vec!["file[1:2]".into()], ..CriuOpts::default() });
        }
        s.send(&a);
    };
    s.finish();
    assert!(!r.success && errmsg(&r).contains("query-ext-files") && errmsg(&r).contains("external"), "{r:?}");
    fx.ticks_on(2, "after the dump refused at query-ext-files");
    let (r, _, err) = one(&req(T::Dump, Some(CriuOpts { notify_scripts: None, ..o })));
    assert!(r.success, "{r:?}\n{err}");
    wait_until("the dumped program gone", Duration::from_secs(10), || !alive(pid));
    let o = CriuOpts { rst_sibling: Some(true), notify_scripts: Some(true), log_file: Some("restore.log".into()), ..opts_dir(&imgs, &mut held) };
    let s = Swrk::start();
    let (seen, r) = s.call(&req(T::Restore, Some(o)), &mut |n| n != "pre-resume");
    s.finish();
    assert_eq!(names(&seen), &RESTORE_STAGES[..6]);
    assert!(!r.success && errmsg(&r).contains("pre-resume"), "{r:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(live_with_exe(&fx.bin).is_empty(), "a restore refused at pre-resume leaves nothing running");
    reap_children();
}

/// Reap exited children of this test that are fixture programs (restored
/// siblings, `fx-*`), by pid: never another test's child (its criu, its
/// client), which that test waits for itself (tests run in parallel).
fn reap_children() {
    let me = std::process::id().to_string();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(st) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((head, rest)) = st.rsplit_once(") ") else { continue };
        let fixture = head.split_once(" (").is_some_and(|(_, comm)| comm.starts_with("fx-"));
        let f: Vec<&str> = rest.split_whitespace().collect();
        if fixture && f.len() > 1 && f[0] == "Z" && f[1] == me {
            let _ = engine::sys::ptrace::wait_flags(pid, libc::WNOHANG);
        }
    }
}

/// TFORK (ours, type 4096): the reply carries the clones' pids; they tick.
#[test]
fn tfork_request() {
    require!(why_not_root().or_else(|| why_not_tools(&["gcc"])));
    let tmp = test_dir("swrk-tfork");
    let bin = tmp.join("tforkprog");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/progs/tforkprog.c");
    assert!(Command::new("gcc").args(["-O2", "-Wall", "-pthread", "-o"]).arg(&bin).arg(&src).status().unwrap().success());
    let work = tmp.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let child = only_stdio(&mut Command::new(&bin)).args(["2", "4"]).current_dir(&work).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let pid = child.id() as i32;
    // the source and every clone reported are killed however the test ends
    let mut procs = Procs { clones: Vec::new(), source: Some(child) };
    let log = |p: i32| work.join(format!("tick-{p}.log"));
    wait_until("first ticks", Duration::from_secs(10), || last_tick(&log(pid)) >= 2);
    let mut held = Vec::new();
    let imgs = tmp.join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    let o = CriuOpts {
        pid: Some(pid),
        tfork: Some(CriuTforkOpts { copies: Some(2), persist: Some("sync".into()), ..CriuTforkOpts::default() }),
        ..opts_dir(&imgs, &mut held)
    };
    let (r, st, err) = one(&req(T::Tfork, Some(o)));
    let clones = r.tfork.as_ref().map(|t| t.pids.clone()).unwrap_or_default();
    procs.clones = clones.clone();
    assert!(r.success, "TFORK failed: {r:?}\n{err}");
    assert!(st.success());
    assert_eq!(clones.len(), 2, "{r:?}");
    assert!(imgs.join("inventory.img").exists(), "persist=sync wrote the image set");
    for &c in &clones {
        assert_ne!(c, pid);
        let t0 = last_tick(&log(c));
        wait_until(&format!("clone {c} ticks"), Duration::from_secs(15), || last_tick(&log(c)) >= t0 + 3);
    }
    let t0 = last_tick(&log(pid));
    wait_until("the source ticks on", Duration::from_secs(15), || last_tick(&log(pid)) >= t0 + 2);
    drop(procs);
    // a TFORK without its options, or with copies 0 / too many, is refused by field
    for (tf, field) in [(None, "criu_opts.tfork"), (Some(CriuTforkOpts { copies: Some(0), ..CriuTforkOpts::default() }), "tfork.copies"), (Some(CriuTforkOpts { copies: Some(u32::MAX), ..CriuTforkOpts::default() }), "tfork.copies"), (Some(CriuTforkOpts { copies: Some(1), persist: Some("later".into()), ..CriuTforkOpts::default() }), "tfork.persist")] {
        let (r, st, _) = one(&req(T::Tfork, Some(CriuOpts { images_dir_fd: -1, pid: Some(pid), tfork: tf, ..CriuOpts::default() })));
        assert!(!r.success && errmsg(&r).contains(field), "{field}: {r:?}");
        assert!(!st.success());
    }
    // tcp_established does not apply to a tfork (tcp_close: tfork_tcp_close_request)
    let tf = Some(CriuTforkOpts { copies: Some(1), ..CriuTforkOpts::default() });
    let (r, st, _) = one(&req(T::Tfork, Some(CriuOpts { images_dir_fd: -1, pid: Some(pid), tfork: tf, tcp_established: Some(true), ..CriuOpts::default() })));
    assert!(!r.success && errmsg(&r).contains("tcp_established"), "{r:?}");
    assert!(!st.success());
}

/// TFORK of a process holding kernel objects of its own
/// (`tests/progs/tforkiso.c`: a pipe, a socketpair, an eventfd, shared
/// anonymous memory, a memfd mapping, each holding the process's token):
/// the same decision as `criu tfork` (tfork_isolation.rs), the clones
/// restored (each in a pid namespace of its own) with objects of their
/// own: the source and both clones tick ok, none finding another's token.
#[test]
fn tfork_request_gives_clones_their_own_objects() {
    require!(why_not_root().or_else(|| why_not_tools(&["gcc"])));
    let tmp = test_dir("swrk-tfork-iso");
    let bin = tmp.join("tforkiso");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/progs/tforkiso.c");
    assert!(Command::new("gcc").args(["-O2", "-Wall", "-o"]).arg(&bin).arg(&src).status().unwrap().success());
    let work = tmp.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let child = only_stdio(&mut Command::new(&bin)).current_dir(&work).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let pid = child.id() as i32;
    let mut procs = Procs { clones: Vec::new(), source: Some(child) };
    // ok ticks by host pid (`tick N ok PID`), no FAIL line
    let ticks = |p: i32| {
        let t = std::fs::read_to_string(work.join("progress.log")).unwrap_or_default();
        assert!(!t.contains("FAIL"), "a process saw another's writes:\n{t}");
        t.lines().filter(|l| l.starts_with("tick ") && l.ends_with(&format!(" ok {p}"))).count()
    };
    wait_until("first ticks", Duration::from_secs(10), || ticks(pid) >= 3);
    let imgs = tmp.join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    let mut held = Vec::new();
    let o = CriuOpts { pid: Some(pid), tfork: Some(CriuTforkOpts { copies: Some(2), ..CriuTforkOpts::default() }), ..opts_dir(&imgs, &mut held) };
    let (r, st, err) = one(&req(T::Tfork, Some(o)));
    let clones = r.tfork.as_ref().map(|t| t.pids.clone()).unwrap_or_default();
    procs.clones = clones.clone();
    assert!(r.success && st.success() && clones.len() == 2, "TFORK failed: {r:?}\n{err}");
    for &c in &clones {
        let st = std::fs::read_to_string(format!("/proc/{c}/status")).unwrap();
        let nspid: Vec<&str> = st.lines().find_map(|l| l.strip_prefix("NSpid:")).unwrap().split_whitespace().collect();
        assert_eq!(nspid, vec![c.to_string(), pid.to_string()], "clone {c}: restored with the source's pid in a pid namespace of its own");
    }
    for p in clones.iter().copied().chain([pid]) {
        let t0 = ticks(p);
        wait_until(&format!("{p} ticks beside the others"), Duration::from_secs(20), || ticks(p) >= t0 + 20);
    }
    drop(procs);
}

/// TFORK with tcp_close (ours, `criu_opts.tfork.tcp_close`, and upstream's
/// `criu_opts.tcp_close`, field 52): the clones of a process holding a TCP
/// connection to an outside echo server see it closed (tests/tfork_tcp.rs
/// has the details), the source's exchange goes on; without it the
/// request is refused naming the connection and --tcp-close.
#[test]
fn tfork_tcp_close_request() {
    require!(why_not_root().or_else(|| why_not_tools(&["gcc"])));
    let tmp = test_dir("swrk-tfork-tcp");
    let bin = tmp.join("tcpclient");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/progs/tcpclient.c");
    assert!(Command::new("gcc").args(["-O2", "-Wall", "-o"]).arg(&bin).arg(&src).status().unwrap().success());
    // the echo server, outside the tree (lives as long as this test process)
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut w = c.try_clone().unwrap();
                let mut r = c;
                let _ = std::io::copy(&mut r, &mut w);
            });
        }
    });
    let work = tmp.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let child = only_stdio(&mut Command::new(&bin)).arg(port.to_string()).current_dir(&work).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let pid = child.id() as i32;
    let mut procs = Procs { clones: Vec::new(), source: Some(child) };
    let text = |p: i32| {
        let t = std::fs::read_to_string(work.join(format!("tick-{p}.log"))).unwrap_or_default();
        assert!(!t.contains("FAIL"), "tcpclient {p}:\n{t}");
        t
    };
    let oks = |p: i32| text(p).lines().filter_map(|l| l.strip_prefix("ok ")?.parse::<u64>().ok()).next_back().unwrap_or(0);
    wait_until("first exchanges", Duration::from_secs(10), || oks(pid) >= 3);
    let imgs = tmp.join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    let mut held = Vec::new();
    let tf = |close: Option<bool>| Some(CriuTforkOpts { copies: Some(1), tcp_close: close, ..CriuTforkOpts::default() });
    let (r, st, _) = one(&req(T::Tfork, Some(CriuOpts { pid: Some(pid), tfork: tf(None), ..opts_dir(&imgs, &mut held) })));
    assert!(!r.success && !st.success() && errmsg(&r).contains(&format!("-> 127.0.0.1:{port}")) && errmsg(&r).contains("--tcp-close"), "{r:?}");
    for (what, o) in [
        ("criu_opts.tfork.tcp_close", CriuOpts { pid: Some(pid), tfork: tf(Some(true)), ..opts_dir(&imgs, &mut held) }),
        ("criu_opts.tcp_close", CriuOpts { pid: Some(pid), tfork: tf(None), tcp_close: Some(true), ..opts_dir(&imgs, &mut held) }),
    ] {
        let (r, st, err) = one(&req(T::Tfork, Some(o)));
        let clones = r.tfork.as_ref().map(|t| t.pids.clone()).unwrap_or_default();
        procs.clones.extend(&clones);
        assert!(r.success && st.success() && clones.len() == 1, "{what}: {r:?}\n{err}");
        let c = clones[0];
        wait_until(&format!("{what}: clone {c} sees its connection closed"), Duration::from_secs(15), || text(c).contains("closed send=-1/32 recv=0/0"));
        let t0 = oks(pid);
        wait_until(&format!("{what}: the source's exchange goes on"), Duration::from_secs(15), || oks(pid) >= t0 + 5);
        assert!(!text(pid).contains("closed"), "{what}: the source saw its connection closed");
    }
    drop(procs);
}

/// A tfork source (our child) and its clones (our children too: siblings
/// of the source), killed and reaped on drop.
struct Procs {
    clones: Vec<i32>,
    source: Option<Child>,
}

impl Drop for Procs {
    fn drop(&mut self) {
        for &p in &self.clones {
            // SAFETY: kill(2) of a clone this test asked for.
            unsafe { libc::kill(p, libc::SIGKILL) };
            let _ = engine::sys::ptrace::wait_flags(p, 0);
        }
        if let Some(mut c) = self.source.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Hostile or malformed messages: each gets a reply naming what is wrong
/// (or, for no message at all, a clean exit), never a hang or a panic.
#[test]
fn hostile_messages() {
    require!(why_not_root());
    let dump = std::fs::read(find_fixture("DUMP")).unwrap();
    let huge_path = "/x".repeat(3000);
    // a pid nobody has (a reaped child's): should a case get past its check,
    // it fails on the pid and never freezes a live process (pid 1 here is
    // the machine's own control process)
    let gone = {
        let mut c = Command::new("true").spawn().unwrap();
        c.wait().unwrap();
        c.id() as i32
    };
    let o = |f: &dyn Fn(&mut CriuOpts)| {
        let mut c = CriuOpts { images_dir_fd: -1, images_dir: Some("/tmp".into()), pid: Some(gone), ..CriuOpts::default() };
        f(&mut c);
        req(T::Dump, Some(c)).encode_to_vec()
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("garbage", vec![0xff; 40], "malformed criu_req"),
        ("truncated runc DUMP", dump[..dump.len() / 2].to_vec(), "malformed criu_req"),
        ("no type", vec![0x12, 0x02, 0x08, 0x03], "type"),
        ("opts without images_dir_fd", vec![0x08, 0x01, 0x12, 0x02, 0x10, 0x05], "images_dir_fd"),
        ("unknown type", req_type(77), "field type: value 77"),
        ("negative type", req_type(-1), "field type: value -1"),
        ("oversize", { let mut v = o(&|_| {}); v.extend(std::iter::repeat_n(0u8, 70_000)); v }, "over the limit"),
        ("bad images_dir_fd", o(&|c| c.images_dir_fd = 99_999), "images_dir_fd"),
        ("negative images_dir_fd", o(&|c| c.images_dir_fd = -7), "images_dir_fd"),
        ("work_dir_fd not a dir", o(&|c| c.work_dir_fd = Some(0)), "work_dir_fd"),
        ("huge images_dir", o(&|c| c.images_dir = Some(huge_path.clone())), "images_dir"),
        ("log_file escaping", o(&|c| c.log_file = Some("../../etc/x".into())), "log_file"),
        ("negative log_level", o(&|c| c.log_level = Some(-5)), "log_level"),
        ("negative pid", o(&|c| c.pid = Some(-3)), "criu_opts.pid"),
        ("timeout 0", o(&|c| c.timeout = Some(0)), "criu_opts.timeout"),
        ("unknown network_lock", o(&|c| c.network_lock = Some(99)), "network_lock"),
        ("track_mem", o(&|c| c.track_mem = Some(true)), "criu_opts.track_mem"),
        ("tfork opts on DUMP", o(&|c| c.tfork = Some(CriuTforkOpts::default())), "criu_opts.tfork"),
        ("NOTIFY first", req(T::Notify, None).encode_to_vec(), "NOTIFY"),
        ("EMPTY", req(T::Empty, None).encode_to_vec(), "EMPTY"),
        ("PRE_DUMP", req(T::PreDump, None).encode_to_vec(), "PRE_DUMP"),
        ("SINGLE_PRE_DUMP", req(T::SinglePreDump, None).encode_to_vec(), "SINGLE_PRE_DUMP"),
        ("PAGE_SERVER", req(T::PageServer, None).encode_to_vec(), "PAGE_SERVER"),
        ("WAIT_PID", req(T::WaitPid, None).encode_to_vec(), "WAIT_PID"),
        ("DUMP without images", req(T::Dump, Some(CriuOpts { images_dir_fd: -1, pid: Some(gone), ..CriuOpts::default() })).encode_to_vec(), "images_dir"),
    ];
    for (what, bytes, want) in cases {
        let s = Swrk::start();
        s.send_raw(&bytes);
        let r = s.recv().unwrap_or_else(|| panic!("{what}: no reply"));
        let (st, err) = s.finish();
        assert!(!r.success, "{what}: {r:?}");
        assert!(errmsg(&r).contains(want), "{what}: want {want:?} in {r:?}");
        assert_eq!(st.code(), Some(1), "{what}: exit status {st:?}\n{err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
    }
    // a connection closed without a request: exit 1, nothing sent
    let s = Swrk::start();
    let (st, err) = s.finish();
    assert_eq!(st.code(), Some(1), "{err}");
    // an fd that is not a SEQPACKET socket: refused by number
    let out = Command::new(CRIU).args(["swrk", "0"]).stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fd 0"), "{out:?}");
    let out = Command::new(CRIU).args(["swrk", "nine"]).stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
}

fn req_type(t: i32) -> Vec<u8> {
    CriuReq { r#type: t, ..CriuReq::default() }.encode_to_vec()
}

fn rpc_fixtures() -> PathBuf {
    test_support::fixture("rpc")
}

/// The first captured client message of kind `ty`.
fn find_fixture(ty: &str) -> PathBuf {
    let idx = std::fs::read_to_string(rpc_fixtures().join("index.tsv")).expect("fixtures/rpc/index.tsv");
    let line = idx.lines().find(|l| l.split('\t').nth(1) == Some("client->criu") && l.split('\t').nth(2) == Some(ty)).expect("a captured message");
    rpc_fixtures().join(line.split('\t').next().unwrap().trim_start_matches("fixtures/"))
}

/// Every request runc, crun and podman sent (fixtures/rpc), with its fds
/// and pid rewritten to this test's: VERSION and FEATURE_CHECK answered,
/// the rest either refused naming the field or request we do not do, or
/// (when nothing asked is refused) attempted on our own running fixture.
#[test]
fn replay_captured_clients() {
    require!(why_not_here().or_else(|| why_not_fixture("rpc")));
    let tmp = test_dir("swrk-replay");
    let fx = Fixture::start("counter", &tmp, Ns::Host);
    let idx = std::fs::read_to_string(rpc_fixtures().join("index.tsv")).unwrap();
    let mut held = Vec::new();
    let mut seen_kinds = std::collections::BTreeMap::<String, usize>::new();
    let mut tried = Vec::new();
    for (i, l) in idx.lines().skip(1).enumerate() {
        let f: Vec<&str> = l.split('\t').collect();
        if f.get(1) != Some(&"client->criu") || f.get(2) == Some(&"NOTIFY") {
            continue;
        }
        let path = rpc_fixtures().join(f[0].trim_start_matches("fixtures/"));
        let bytes = std::fs::read(&path).unwrap();
        let mut r = CriuReq::decode(bytes.as_slice()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let dir = tmp.join(format!("img-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(o) = r.opts.as_mut() {
            let fd = std::fs::File::open(&dir).unwrap();
            if o.images_dir_fd != -1 {
                o.images_dir_fd = fd.as_raw_fd();
            }
            if o.work_dir_fd.is_some() {
                o.work_dir_fd = Some(fd.as_raw_fd());
            }
            held.push(fd);
            if o.pid.is_some() {
                o.pid = Some(fx.pid);
            }
            // our fixture outlives a dump that goes through
            if r.r#type == T::Dump as i32 {
                o.leave_running = Some(true);
            }
            // paths of the capture's machine: the bundle root is ours
            if o.root.is_some() {
                o.root = Some(tmp.to_string_lossy().into_owned());
            }
        }
        let kind = f[2].to_string();
        *seen_kinds.entry(kind.clone()).or_default() += 1;
        let (resp, _st, err) = one(&r);
        let msg = errmsg(&resp).to_string();
        match kind.as_str() {
            "VERSION" => assert!(resp.success && resp.version.is_some(), "{}: {resp:?}", path.display()),
            "FEATURE_CHECK" => assert!(resp.success && resp.features.is_some(), "{}: {resp:?}", path.display()),
            "PRE_DUMP" | "SINGLE_PRE_DUMP" => assert!(!resp.success && msg.contains(&kind), "{}: {resp:?}", path.display()),
            _ => {
                // a container's request: refused naming the field (cgroups,
                // inherited fds, pre-dump parents...) before anything is
                // touched, or tried and answered (crun's cgroup-ignore dump:
                // its freeze cgroup is not on this machine)
                assert!(resp.success || msg.contains("criu_opts.") || msg.starts_with("Error ("), "{}: {resp:?}\n{err}", path.display());
                assert!(resp.success || !msg.is_empty());
                if !msg.contains("criu_opts.") {
                    tried.push((path.display().to_string(), resp.success, msg.clone()));
                }
            }
        }
        fx.ticks_on(1, &format!("after the replay of {}", path.display()));
    }
    eprintln!("requests not refused by option, tried: {tried:#?}");
    for k in ["VERSION", "FEATURE_CHECK", "DUMP", "RESTORE", "SINGLE_PRE_DUMP"] {
        assert!(seen_kinds.get(k).is_some_and(|&n| n > 0), "no {k} among the captures: {seen_kinds:?}");
    }
}

/// `keep_open`: several requests on one connection (VERSION, CHECK,
/// FEATURE_CHECK); the last without it ends the service (exit 0). A
/// request naming its images dir by path (images_dir_fd -1) is served too.
#[test]
fn keep_open_serves_several_requests() {
    require!(why_not_root());
    let s = Swrk::start();
    let keep = |t: T| CriuReq { keep_open: Some(true), ..req(t, None) };
    let (_, r) = s.call(&keep(T::Version), &mut |_| true);
    assert!(r.success && r.version.is_some(), "{r:?}");
    let (_, r) = s.call(&keep(T::Check), &mut |_| true);
    assert!(r.success && r.r#type == T::Check as i32, "CHECK: {r:?}");
    let (_, r) = s.call(&req(T::FeatureCheck, None), &mut |_| true);
    assert!(r.success && r.features.is_some(), "{r:?}");
    assert!(s.recv().is_none(), "the service closes after a request without keep_open");
    let (st, err) = s.finish();
    assert!(st.success(), "{err}");
    // CPUINFO_DUMP into a dir given by path
    let d = test_dir("swrk-cpuinfo");
    let (r, st, err) = one(&req(T::CpuinfoDump, Some(CriuOpts { images_dir_fd: -1, images_dir: Some(d.to_string_lossy().into_owned()), ..CriuOpts::default() })));
    assert!(r.success && st.success(), "{r:?}\n{err}");
    assert!(d.join("cpuinfo.img").exists());
    let (r, _, err) = one(&req(T::CpuinfoCheck, Some(CriuOpts { images_dir_fd: -1, images_dir: Some(d.to_string_lossy().into_owned()), ..CriuOpts::default() })));
    assert!(r.success, "{r:?}\n{err}");
    let _ = std::fs::remove_dir_all(&d);
}

/// Why the libcriu client cannot be built here.
fn why_not_libcriu() -> Option<String> {
    for f in ["/usr/include/criu/criu.h", "/usr/include/protobuf-c/protobuf-c.h"] {
        if !Path::new(f).exists() {
            return Some(format!("no {f} (Debian's criu and libprotobuf-c-dev: libcriu, crun's RPC client)"));
        }
    }
    None
}

/// A real client: Debian's libcriu (what crun links) drives `criu swrk`:
/// criu_get_version, criu_dump with a notify callback, criu_restore_child
/// (rst_sibling: the restored program is the client's child), ticking.
#[test]
fn libcriu_client_dumps_and_restores() {
    require!(why_not_here().or_else(why_not_libcriu));
    let tmp = test_dir("swrk-libcriu");
    let client = tmp.join("libcriu_client");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/progs/libcriu_client.c");
    let st = Command::new("gcc").args(["-O2", "-o"]).arg(&client).arg(&src).arg("-lcriu").status().unwrap();
    assert!(st.success(), "building the libcriu client");
    let fx = Fixture::start("counter", &tmp, Ns::Host);
    let pid = fx.pid;
    let imgs = tmp.join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    let out = Command::new(&client).arg(CRIU).arg(&imgs).args(["dump", &pid.to_string()]).stdin(Stdio::null()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let log = std::fs::read_to_string(imgs.join("dump.log")).unwrap_or_default();
    assert!(text.contains("version 40200"), "{text}");
    assert!(text.lines().any(|l| l == "dump 0"), "{text}\n{}\n{log}", String::from_utf8_lossy(&out.stderr));
    let notes: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("notify ")?.split_whitespace().next()).collect();
    assert_eq!(notes, DUMP_STAGES, "{text}");
    wait_until("the dumped program gone", Duration::from_secs(10), || !alive(pid));
    let t_dump = fx.tick();
    // restore: the client stays (pause) as the restored program's parent
    let mut c = Command::new(&client).arg(CRIU).arg(&imgs).arg("restore").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(c.stdout.take().unwrap()));
    let mut text = String::new();
    let rpid = loop {
        let Some(Ok(l)) = lines.next() else {
            let _ = c.kill();
            let _ = c.wait();
            panic!("the client ended without a restore line:\n{text}\n{}", std::fs::read_to_string(imgs.join("restore.log")).unwrap_or_default());
        };
        text.push_str(&l);
        text.push('\n');
        if let Some(v) = l.strip_prefix("restore ") {
            break v.parse::<i32>().unwrap();
        }
    };
    let ok = rpid == pid;
    if ok {
        wait_until("ticks after the libcriu restore", Duration::from_secs(15), || fx.tick() >= t_dump + 3);
    }
    let ppid = std::fs::read_to_string(format!("/proc/{rpid}/stat")).unwrap_or_default().rsplit_once(") ").and_then(|(_, r)| r.split_whitespace().nth(1).map(str::to_string));
    let _ = c.kill();
    let _ = c.wait();
    assert!(ok, "criu_restore_child gave {rpid}, want {pid}:\n{text}");
    assert_eq!(ppid, Some(c.id().to_string()), "the restored program is the libcriu client's child");
    let notes: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("notify ")?.split_whitespace().next()).collect();
    assert_eq!(notes, RESTORE_STAGES, "{text}");
}

/// A process tree, pid 1 of its own pid namespace (a container's shape):
/// DUMP and RESTORE with rst_sibling over RPC; the reply's pid is the new
/// namespace's init, a child of the client, and the tree ticks on.
#[test]
fn tree_in_its_pid_namespace_over_rpc() {
    require!(why_not_here());
    let tmp = test_dir("swrk-tree");
    let mut fx = Fixture::start("tree", &tmp, Ns::OwnPidNs);
    let mut held = Vec::new();
    let imgs = tmp.join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    let (r, _, err) = one(&req(T::Dump, Some(CriuOpts { pid: Some(fx.pid), notify_scripts: Some(true), ..opts_dir(&imgs, &mut held) })));
    assert!(r.success, "{r:?}\n{err}");
    wait_until("the dumped tree gone", Duration::from_secs(10), || live_with_exe(&fx.bin).is_empty());
    let t = fx.tick();
    let o = CriuOpts { rst_sibling: Some(true), notify_scripts: Some(true), log_file: Some("restore.log".into()), ..opts_dir(&imgs, &mut held) };
    let s = Swrk::start();
    let (seen, r) = s.call(&req(T::Restore, Some(o)), &mut |_| true);
    let (st, err) = s.finish();
    assert!(r.success && st.success(), "{r:?}\n{err}\n{}", std::fs::read_to_string(imgs.join("restore.log")).unwrap_or_default());
    assert_eq!(names(&seen), RESTORE_STAGES);
    wait_until("ticks after the restore", Duration::from_secs(15), || fx.tick() > t + 3);
    fx.refind();
    assert_eq!(r.restore.map(|x| x.pid), Some(fx.pid), "restore{{pid}} is the restored init's host pid");
    let status = std::fs::read_to_string(format!("/proc/{}/status", fx.pid)).unwrap();
    let ppid: u32 = status.lines().find_map(|l| l.strip_prefix("PPid:")).unwrap().trim().parse().unwrap();
    assert_eq!(ppid, std::process::id(), "the restored init is the client's child");
    let nspid = status.lines().find_map(|l| l.strip_prefix("NSpid:")).unwrap().split_whitespace().last().unwrap().to_string();
    assert_eq!(nspid, "1", "pid 1 of its new namespace");
    drop(fx);
    reap_children();
}

/// Another real client: Debian's pycriu (`pycriu.criu`, which closes
/// criu's fds 0-2 before it execs `criu swrk`): dump, then restore with
/// rst_sibling; the restored program ticks.
#[test]
fn pycriu_client_dumps_and_restores() {
    let why = why_not_here().or_else(|| {
        let ok = Command::new("/usr/bin/python3").args(["-c", "import pycriu"]).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
        (!ok).then(|| "no pycriu for /usr/bin/python3 (Debian's criu package)".to_string())
    });
    require!(why);
    let tmp = test_dir("swrk-pycriu");
    let fx = Fixture::start("counter", &tmp, Ns::Host);
    let imgs = tmp.join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    let script = r#"
import os, sys, time, pycriu
criu_bin, imgs, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
fd = os.open(imgs, os.O_DIRECTORY)
c = pycriu.criu(); c.use_binary(criu_bin)
c.opts.images_dir_fd = fd; c.opts.pid = pid; c.opts.log_file = "dump.log"; c.opts.log_level = 4
print("dump restored=%s" % c.dump().restored, flush=True)
# the pid must be free before the restore: the test reaps the program
while os.path.exists("/proc/%d" % pid): time.sleep(0.01)
c = pycriu.criu(); c.use_binary(criu_bin)
c.opts.images_dir_fd = fd; c.opts.log_file = "restore.log"; c.opts.log_level = 4; c.opts.rst_sibling = True
r = c.restore()
print("restore %d" % r.pid, flush=True)
sys.stdin.read()
os.kill(r.pid, 9); os.waitpid(r.pid, 0)
"#;
    let mut c = Command::new("/usr/bin/python3")
        .args(["-c", script, CRIU])
        .arg(&imgs)
        .arg(fx.pid.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(c.stdout.take().unwrap()));
    let mut text = String::new();
    let rpid = loop {
        let Some(Ok(l)) = lines.next() else {
            drop(c.stdin.take());
            let out = c.wait_with_output().unwrap();
            panic!("pycriu ended early:\n{text}\n{}\n{}\n{}", String::from_utf8_lossy(&out.stderr), std::fs::read_to_string(imgs.join("dump.log")).unwrap_or_default(), std::fs::read_to_string(imgs.join("restore.log")).unwrap_or_default());
        };
        text.push_str(&l);
        text.push('\n');
        if let Some(v) = l.strip_prefix("restore ") {
            break v.parse::<i32>().unwrap();
        }
    };
    assert!(text.contains("dump restored=False"), "{text}");
    let t = fx.tick();
    let ticking = rpid == fx.pid && {
        let e = Instant::now() + Duration::from_secs(15);
        while fx.tick() < t + 3 && Instant::now() < e {
            std::thread::sleep(Duration::from_millis(20));
        }
        fx.tick() >= t + 3
    };
    drop(c.stdin.take());
    let _ = c.wait();
    assert!(ticking, "restored pid {rpid} (want {}) ticks on:\n{text}", fx.pid);
}
