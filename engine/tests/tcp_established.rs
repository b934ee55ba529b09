//! Established TCP connections through dump and restore with
//! `--tcp-established`, with tests/progs/tcppair.c: each end sends an
//! endless stream whose byte i is a function of i, in writes of varying
//! sizes, and checks every byte it receives at its position (a byte lost,
//! repeated or changed, end of file or an error is `FAIL` in its
//! progress-ROLE.log; the client end's TCP_NODELAY and keepalive settings are
//! checked every tick too). Both ends in the tree (two processes; one process
//! with both, IPv6), the client outside the tree (it keeps its socket and
//! keeps sending while the server is dumped and restored), `--leave-running`,
//! rounds in a row, images both ways with upstream CRIU 4.2, refusals and
//! hostile images; the network lock's rules checked present while dumped
//! and gone after. Needs root, gcc, unshare, setsid, iptables.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;

use images_proto::{image, magic, pb};
use std::os::unix::process::ExitStatusExt;

use common::{criu_env, criu_ok, live_with_exe, only_stdio, private_criu, require, test_dir, upstream, wait_until, why_not_here};

fn why_not() -> Option<String> {
    why_not_here().or_else(|| common::why_not_tools(&["iptables", "iptables-restore", "ip6tables-restore"]))
}

/// A port for this test run: distinct per test process and `n` (< 40).
fn port(n: u16) -> u16 {
    20000 + (std::process::id() % 1000) as u16 * 40 + n
}

/// A running tcppair, `unshare --pid --fork setsid tcppair WORDS...` (pid 1
/// of its own pid namespace, so that the restore has its pids free and
/// upstream CRIU dumps it too); killed on drop with any outside client.
struct Pair {
    dir: PathBuf,
    bin: PathBuf,
    work: PathBuf,
    pid: i32,
    outside: Option<std::process::Child>,
}

fn build(dir: &Path) -> PathBuf {
    let bin = dir.join("tcppair");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/progs/tcppair.c");
    let st = Command::new("gcc").args(["-O2", "-static", "-Wall", "-o"]).arg(&bin).arg(&src).status().expect("gcc");
    assert!(st.success(), "building tcppair");
    bin
}

impl Pair {
    fn start(name: &str, words: &[&str], roles: &[&str]) -> Pair {
        let dir = test_dir(&format!("tcp-{name}"));
        let bin = build(&dir);
        let work = dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let mut child = only_stdio(Command::new("unshare").args(["--pid", "--fork", "setsid"]))
            .arg(&bin)
            .args(words)
            .current_dir(&work)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tcppair");
        std::thread::spawn(move || child.wait());
        let mut p = Pair { dir, bin, work, pid: 0, outside: None };
        if words.contains(&"server") {
            wait_until("the listener", Duration::from_secs(10), || p.tree_pids().len() == 1);
            std::thread::sleep(Duration::from_millis(100));
            let port = words.last().unwrap().to_string();
            let v6 = words.contains(&"-6");
            let mut c = Command::new(&p.bin);
            if v6 {
                c.arg("-6");
            }
            p.outside = Some(c.args(["client", &port]).current_dir(&p.work).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start the client"));
        }
        for r in roles {
            wait_until(&format!("{r} under way"), Duration::from_secs(10), || p.progress(r).1 > 100_000);
        }
        p.refind();
        p
    }

    /// The processes of the tree (in a pid namespace: NSpid has two numbers).
    fn tree_pids(&self) -> Vec<i32> {
        live_with_exe(&self.bin)
            .into_iter()
            .filter(|p| {
                let st = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
                st.lines().any(|l| l.starts_with("NSpid:") && l.split_whitespace().count() == 3)
            })
            .collect()
    }

    fn refind(&mut self) {
        let roots: Vec<i32> = self
            .tree_pids()
            .into_iter()
            .filter(|p| {
                let st = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
                st.lines().any(|l| l.starts_with("NSpid:") && l.split_whitespace().last() == Some("1"))
            })
            .collect();
        assert_eq!(roots.len(), 1, "one tcppair root expected, found {roots:?}");
        self.pid = roots[0];
    }

    /// (last tick, bytes received) of a role; panics on a FAIL line.
    fn progress(&self, role: &str) -> (u64, u64) {
        let s = std::fs::read_to_string(self.work.join(format!("progress-{role}.log"))).unwrap_or_default();
        assert!(!s.contains("FAIL"), "{role} reported a failure:\n{}", s.lines().filter(|l| l.contains("FAIL")).collect::<Vec<_>>().join("\n"));
        let last = s.lines().rfind(|l| l.starts_with("tick ")).unwrap_or("");
        let w: Vec<&str> = last.split_whitespace().collect();
        let num = |i: usize| w.get(i).and_then(|v| v.parse().ok()).unwrap_or(0);
        (num(1), num(4))
    }

    /// Each role receives `bytes` more (its stream checked all along).
    fn flows(&self, roles: &[&str], bytes: u64, what: &str) {
        for r in roles {
            let (_, rx) = self.progress(r);
            wait_until(&format!("{r}: {bytes} more bytes {what}"), Duration::from_secs(30), || self.progress(r).1 >= rx + bytes);
        }
    }

    fn images(&self, name: &str) -> PathBuf {
        let d = self.dir.join(name);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn gone(&self) {
        wait_until("the tree gone", Duration::from_secs(5), || self.tree_pids().is_empty());
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for p in live_with_exe(&self.bin) {
            let _ = Command::new("kill").args(["-9", &p.to_string()]).stderr(Stdio::null()).status();
        }
        if let Some(c) = &mut self.outside {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The network lock's DROP rules naming `port` (both families).
fn lock_rules(port: u16) -> Vec<String> {
    let mut v = Vec::new();
    for cmd in ["iptables", "ip6tables"] {
        let out = Command::new(cmd).args(["-w", "-S"]).output().expect("iptables -S");
        v.extend(String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("0xc114") && l.contains(&format!("port {port} "))).map(str::to_string));
    }
    v
}

/// A round: dump (the tree killed, its connections left locked), check
/// the lock, restore, check the lock is lifted and the streams flow.
fn round(p: &mut Pair, criu: &Path, name: &str, port: u16, roles: &[&str], rules: usize) {
    let img = p.images(name);
    criu_ok(criu, &["dump", "-t", &p.pid.to_string(), "--tcp-established"], &img, "dump.log");
    p.gone();
    assert_eq!(lock_rules(port).len(), rules, "{name}: the lock's rules while dumped: {:?}", lock_rules(port));
    // (the tree is away a moment: an outside peer keeps sending into the lock)
    std::thread::sleep(Duration::from_millis(300));
    let mut c = Command::new(criu);
    let out = c.args(["restore", "-d", "--tcp-established", "-D"]).arg(&img).args(["-v4", "-o", "restore.log"]).current_dir(&p.work).output().expect("restore");
    let log = std::fs::read_to_string(img.join("restore.log")).unwrap_or_default();
    assert!(out.status.success(), "{name}: restore failed:\n{log}{}", String::from_utf8_lossy(&out.stderr));
    assert!(lock_rules(port).is_empty(), "{name}: the lock's rules left after the restore: {:?}", lock_rules(port));
    p.refind();
    p.flows(roles, 4 << 20, &format!("after {name}"));
}

/// The engine killed once every connection is locked and in repair mode
/// (fault point `tcp-repaired`): its guard takes the sockets out of
/// repair mode and lifts the lock, and the pair streams on, no byte lost
/// (before the guard, both stayed in repair mode and locked: the stream
/// stopped for good).
#[test]
fn engine_killed_while_repaired_leaves_the_connections_working() {
    require!(why_not());
    let pt = port(11);
    let p = Pair::start("killed", &["pair", &pt.to_string()], &["server", "client"]);
    let criu = private_criu(&p.dir);
    p.flows(&["server", "client"], 1 << 20, "before the dump");
    let img = p.images("img");
    let (st, log) = criu_env(&criu, &["dump", "-t", &p.pid.to_string(), "--tcp-established"], &img, "dump.log", &[("CRIU_RS_FAULT_AT", "tcp-repaired")]);
    assert_eq!(st.signal(), Some(libc::SIGKILL), "the engine killed itself at tcp-repaired:\n{log}");
    assert!(log.contains("Locked 127.0.0.1:"), "killed after the lock:\n{log}");
    wait_until("the guard lifted the lock", Duration::from_secs(10), || lock_rules(pt).is_empty());
    assert!(!p.tree_pids().is_empty(), "the tree runs on");
    p.flows(&["server", "client"], 4 << 20, "after the engine died");
    assert!(!img.join("inventory.img").exists(), "no image set that looks complete");
}

/// Client and server in the tree (two processes, IPv4): two rounds in a
/// row, no byte lost or repeated.
#[test]
fn pair_in_the_tree_two_rounds() {
    require!(why_not());
    let pt = port(1);
    let mut p = Pair::start("pair", &["pair", &pt.to_string()], &["server", "client"]);
    let criu = private_criu(&p.dir);
    round(&mut p, &criu, "img1", pt, &["server", "client"], 4);
    round(&mut p, &criu, "img2", pt, &["server", "client"], 4);
    // the stream image as upstream names and shapes it
    let files: Vec<pb::FileEntry> = image::read_all(&p.dir.join("img2"), "files.img", &magic::FILES).unwrap();
    let est: Vec<&pb::InetSkEntry> = files.iter().filter_map(|f| f.isk.as_ref()).filter(|i| i.state == 1).collect();
    assert_eq!(est.len(), 2, "two established INETSK entries");
    for i in est {
        let name = format!("tcp-stream-{:x}.img", i.ino);
        let e: pb::TcpStreamEntry = image::read_one(&p.dir.join("img2"), &name, &magic::TCP_STREAM).unwrap();
        assert!(e.mss_clamp > 0 && e.snd_wl1.is_some() && e.cork.is_none(), "{name}: {e:?}");
    }
}

/// One process holding both ends of an IPv6 connection.
#[test]
fn one_process_both_ends_v6() {
    require!(why_not());
    let pt = port(2);
    let mut p = Pair::start("one6", &["-6", "one", &pt.to_string()], &["a", "b"]);
    let criu = private_criu(&p.dir);
    round(&mut p, &criu, "img1", pt, &["a", "b"], 4);
}

/// Full queues: one end stops reading until its receive queue and the
/// other's send queue are full (megabytes, past the default buffer
/// sizes), then both are dumped and restored with them, and the stream
/// goes on intact once it reads again.
#[test]
fn full_queues() {
    require!(why_not());
    let pt = port(0);
    let mut p = Pair::start("full", &["one", &pt.to_string()], &["a", "b"]);
    let criu = private_criu(&p.dir);
    std::fs::write(p.work.join("pause-b"), "").unwrap();
    // a's tx stops growing: the queues are full
    let tx = |p: &Pair| {
        let s = std::fs::read_to_string(p.work.join("progress-a.log")).unwrap_or_default();
        s.lines().rfind(|l| l.starts_with("tick ")).and_then(|l| l.split_whitespace().nth(6)).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
    };
    let mut last = 0;
    wait_until("a's send queue full", Duration::from_secs(20), || {
        std::thread::sleep(Duration::from_millis(300));
        let t = tx(&p);
        let full = t == last;
        last = t;
        full
    });
    let img = p.images("img");
    criu_ok(&criu, &["dump", "-t", &p.pid.to_string(), "--tcp-established"], &img, "dump.log");
    p.gone();
    let total: u64 = std::fs::read_dir(&img).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with("tcp-stream-")).map(|e| e.metadata().unwrap().len()).sum();
    assert!(total > 1 << 20, "the stream images hold the full queues: {total} bytes");
    let out = Command::new(&criu).args(["restore", "-d", "--tcp-established", "-D"]).arg(&img).args(["-v4", "-o", "restore.log"]).current_dir(&p.work).output().expect("restore");
    assert!(out.status.success(), "{}", std::fs::read_to_string(img.join("restore.log")).unwrap_or_default());
    p.refind();
    std::fs::remove_file(p.work.join("pause-b")).unwrap();
    p.flows(&["a", "b"], 8 << 20, "after the restore with full queues");
}

/// The server in the tree, the client outside it: the client keeps its
/// socket (and keeps sending into the lock) while the server is dumped
/// and restored.
#[test]
fn client_outside_the_tree() {
    require!(why_not());
    let pt = port(3);
    let mut p = Pair::start("outside", &["server", &pt.to_string()], &["server", "client"]);
    let criu = private_criu(&p.dir);
    round(&mut p, &criu, "img1", pt, &["server", "client"], 2);
    round(&mut p, &criu, "img2", pt, &["server", "client"], 2);
}

/// `--leave-running`: the connections come out of repair mode and the lock
/// is lifted; the streams go on, twice.
#[test]
fn leave_running() {
    require!(why_not());
    let pt = port(4);
    let p = Pair::start("leave", &["pair", &pt.to_string()], &["server", "client"]);
    let criu = private_criu(&p.dir);
    for n in ["img1", "img2"] {
        let img = p.images(n);
        criu_ok(&criu, &["dump", "-R", "-t", &p.pid.to_string(), "--tcp-established"], &img, "dump.log");
        assert!(lock_rules(pt).is_empty(), "{n}: rules left by a --leave-running dump: {:?}", lock_rules(pt));
        assert_eq!(p.tree_pids().len(), 2);
        p.flows(&["server", "client"], 4 << 20, &format!("after the --leave-running dump {n}"));
        assert!(std::fs::read_dir(&img).unwrap().flatten().any(|e| e.file_name().to_string_lossy().starts_with("tcp-stream-")));
    }
}

/// Upstream CRIU 4.2 restores our images of an established connection,
/// and we restore its.
#[test]
fn upstream_both_ways() {
    require!(why_not().or_else(|| (!upstream().exists()).then(|| format!("{} not found", upstream().display()))));
    let pt = port(5);
    let roles = ["a", "b"];
    let mut p = Pair::start("upstream", &["one", &pt.to_string()], &roles);
    let criu = private_criu(&p.dir);
    for (n, dumper, restorer) in [("ours-to-up", criu.clone(), upstream()), ("up-to-ours", upstream(), criu.clone())] {
        let img = p.images(n);
        criu_ok(&dumper, &["dump", "-t", &p.pid.to_string(), "--tcp-established"], &img, "dump.log");
        p.gone();
        assert_eq!(lock_rules(pt).len(), 4, "{n}: the lock's rules while dumped");
        let out = Command::new(&restorer).args(["restore", "-d", "--tcp-established", "-D"]).arg(&img).args(["-v4", "-o", "restore.log"]).current_dir(&p.work).output().expect("restore");
        let log = std::fs::read_to_string(img.join("restore.log")).unwrap_or_default();
        assert!(out.status.success(), "{n}: restore failed:\n{log}");
        assert!(lock_rules(pt).is_empty(), "{n}: the lock's rules left after the restore: {:?}", lock_rules(pt));
        p.refind();
        p.flows(&roles, 4 << 20, &format!("after {n}"));
    }
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Without `--tcp-established` an established connection is refused by
/// name at dump (the program runs on) and its image at restore; hostile
/// stream images are refused naming the file and field before anything
/// is made.
#[test]
fn refusals_and_hostile_images() {
    require!(why_not());
    let pt = port(6);
    let p = Pair::start("hostile", &["one", &pt.to_string()], &["a", "b"]);
    let criu = private_criu(&p.dir);
    let img = p.images("refused");
    let (st, log) = criu_env(&criu, &["dump", "-t", &p.pid.to_string()], &img, "dump.log", &[]);
    assert_eq!(st.code(), Some(1), "{log}");
    assert!(log.contains("an established TCP connection 127.0.0.1:") && log.contains("--tcp-established"), "{log}");
    p.flows(&["a", "b"], 1 << 20, "after the refused dump");
    let img = p.images("img");
    criu_ok(&criu, &["dump", "-t", &p.pid.to_string(), "--tcp-established"], &img, "dump.log");
    p.gone();
    // the images of a dumped connection need --tcp-established (or --tcp-close)
    let (st, log) = criu_env(&criu, &["restore", "-d"], &img, "r0.log", &[]);
    assert_eq!(st.code(), Some(1), "{log}");
    assert!(log.contains("isk.state: a TCP connection (ESTABLISHED): restored only with --tcp-established"), "{log}");
    let files: Vec<pb::FileEntry> = image::read_all(&img, "files.img", &magic::FILES).unwrap();
    let ino = files.iter().filter_map(|f| f.isk.as_ref()).find(|i| i.state == 1).unwrap().ino;
    let stream = format!("tcp-stream-{ino:x}.img");
    let edit_stream = |name: &str, f: &dyn Fn(&mut pb::TcpStreamEntry, &mut Vec<u8>)| {
        let out = img.with_file_name(name);
        copy_dir(&img, &out);
        let mut r = image::ImageReader::open(&out, &stream, &magic::TCP_STREAM).unwrap();
        let mut e: pb::TcpStreamEntry = r.next_entry().unwrap().unwrap();
        let mut rest = r.read_rest().unwrap();
        f(&mut e, &mut rest);
        let mut w = image::ImageWriter::create(&out, &stream, &magic::TCP_STREAM).unwrap();
        w.write_entry(&e).unwrap();
        w.write_payload(&rest).unwrap();
        w.finish().unwrap();
        out
    };
    let edit_isk = |name: &str, f: &dyn Fn(&mut pb::InetSkEntry)| {
        let out = img.with_file_name(name);
        copy_dir(&img, &out);
        let mut files: Vec<pb::FileEntry> = image::read_all(&out, "files.img", &magic::FILES).unwrap();
        f(files.iter_mut().filter_map(|e| e.isk.as_mut()).find(|i| i.ino == ino).unwrap());
        image::write_all(&out, "files.img", &magic::FILES, &files).unwrap();
        out
    };
    let no_stream = {
        let out = img.with_file_name("no-stream");
        copy_dir(&img, &out);
        std::fs::remove_file(out.join(&stream)).unwrap();
        out
    };
    let cases: Vec<(&str, PathBuf, String)> = vec![
        ("queue past the file", edit_stream("past", &|e, _| e.inq_len = e.inq_len.saturating_add(1 << 30)), stream.clone()),
        ("outq past the file", edit_stream("outq-past", &|e, _| e.outq_len = u32::MAX), stream.clone()),
        ("unsent past the queue", edit_stream("unsq", &|e, _| e.unsq_len = Some(e.outq_len + 1)), "unsq_len".into()),
        ("window scale", edit_stream("wscale", &|e, _| e.snd_wscale = 15), "snd_wscale: 15 is past 14".into()),
        ("mss", edit_stream("mss", &|e, _| e.mss_clamp = 0), "mss_clamp: 0 is not an MSS".into()),
        ("half a window", edit_stream("window", &|e, _| e.rcv_wup = None), "some given, not all".into()),
        ("stream image missing", no_stream, format!("{stream}: missing")),
        ("v6 address in a v4 connection", edit_isk("family", &|i| i.dst_addr = vec![0, 0, 0, 1]), "isk.dst_addr: 4 words for AF_INET (want 1)".into()),
        ("no peer port", edit_isk("port", &|i| i.dst_port = 0), "0 for an established TCP connection".into()),
    ];
    for (what, dir, want) in cases {
        let (st, log) = criu_env(&criu, &["restore", "-d", "--tcp-established"], &dir, "restore.log", &[]);
        assert_eq!(st.code(), Some(1), "{what}: the restore must fail:\n{log}");
        assert!(log.contains(&want), "{what}: the error must say {want:?}:\n{log}");
        assert!(p.tree_pids().is_empty(), "{what}: a refused image must not start anything");
    }
    // the good images still restore (and lift the lock)
    let out = Command::new(&criu).args(["restore", "-d", "--tcp-established", "-D"]).arg(&img).args(["-v4", "-o", "restore.log"]).current_dir(&p.work).output().expect("restore");
    assert!(out.status.success(), "{}", std::fs::read_to_string(img.join("restore.log")).unwrap_or_default());
    assert!(lock_rules(pt).is_empty());
}

/// A program nobody here wrote, started as a user would under
/// `unshare --pid --fork setsid` in a work directory of its own; its root
/// is found by that directory (pid 1 of its namespace). Killed on drop.
struct Program {
    dir: PathBuf,
    work: PathBuf,
}

impl Program {
    fn start(name: &str, argv: &[&str]) -> Program {
        let dir = test_dir(&format!("tcp-{name}"));
        let work = dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let mut child = only_stdio(Command::new("unshare").args(["--pid", "--fork", "setsid"]))
            .args(argv)
            .current_dir(&work)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the program");
        std::thread::spawn(move || child.wait());
        let p = Program { dir, work };
        wait_until(&format!("{name} started"), Duration::from_secs(10), || p.root().is_some());
        p
    }

    /// The pids whose working directory is ours, and the one that is pid 1
    /// of its namespace.
    fn pids(&self) -> (Vec<i32>, Option<i32>) {
        let mut all = Vec::new();
        let mut root = None;
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            if std::fs::read_link(format!("/proc/{pid}/cwd")).ok().as_deref() != Some(self.work.as_path()) {
                continue;
            }
            let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            if st.lines().any(|l| l.starts_with("State:") && l.contains("zombie")) {
                continue;
            }
            let ns: Vec<&str> = st.lines().find(|l| l.starts_with("NSpid:")).map(|l| l.split_whitespace().collect()).unwrap_or_default();
            if ns.len() != 3 {
                continue; // the unshare process itself
            }
            all.push(pid);
            if ns[2] == "1" {
                root = Some(pid);
            }
        }
        (all, root)
    }

    fn root(&self) -> Option<i32> {
        self.pids().1
    }

    /// Dump with --tcp-established (killed), then restore in the work dir.
    fn round(&self, criu: &Path, name: &str, between: impl FnOnce()) {
        self.round_by(criu, criu, name, between)
    }

    /// [`Program::round`], dumped by `dumper` and restored by `restorer`.
    fn round_by(&self, dumper: &Path, restorer: &Path, name: &str, between: impl FnOnce()) {
        let img = self.dir.join(name);
        let _ = std::fs::remove_dir_all(&img);
        std::fs::create_dir_all(&img).unwrap();
        criu_ok(dumper, &["dump", "-t", &self.root().unwrap().to_string(), "--tcp-established"], &img, "dump.log");
        wait_until("the program gone", Duration::from_secs(5), || self.pids().0.is_empty());
        between();
        let out = Command::new(restorer).args(["restore", "-d", "--tcp-established", "-D"]).arg(&img).args(["-v4", "-o", "restore.log"]).current_dir(&self.work).output().expect("restore");
        assert!(out.status.success(), "{name}: restore failed:\n{}", std::fs::read_to_string(img.join("restore.log")).unwrap_or_default());
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        for p in self.pids().0 {
            let _ = Command::new("kill").args(["-9", &p.to_string()]).stderr(Stdio::null()).status();
        }
    }
}

/// Connect to 127.0.0.1:port, retrying while the program starts.
fn connect(port: u16) -> std::net::TcpStream {
    let mut last = None;
    for _ in 0..200 {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                return s;
            }
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("connecting to port {port}: {last:?}");
}

/// Read one HTTP/1.1 response (headers, then Content-Length bytes).
fn http_response(s: &mut std::net::TcpStream) -> (String, Vec<u8>) {
    use std::io::Read;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        // (a receive with SO_RCVTIMEO set answers EINTR, not a restart, to
        // any signal: seen once under load)
        let n = match s.read(&mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => r.expect("reading the response head"),
        };
        assert_eq!(n, 1, "end of file in the response head: {}", String::from_utf8_lossy(&head));
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let len: usize = head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())).expect("Content-Length");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("reading the body");
    (head, body)
}

/// `python3 -m http.server` (HTTP/1.1, keep-alive) answers a client whose
/// connection is held across the restore; the second request is sent
/// while the server is dumped (into the network lock) and answered after.
#[test]
fn python_http_server_keep_alive() {
    use std::io::Write;
    require!(why_not().or_else(|| common::why_not_tool("python3")));
    let pt = port(7);
    let p = Program::start("http", &["python3", "-m", "http.server", "--protocol", "HTTP/1.1", "--bind", "127.0.0.1", &pt.to_string()]);
    let body: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    std::fs::write(p.work.join("data.bin"), &body).unwrap();
    let criu = private_criu(&p.dir);
    let mut c = connect(pt);
    let req = format!("GET /data.bin HTTP/1.1\r\nHost: 127.0.0.1:{pt}\r\nConnection: keep-alive\r\n\r\n");
    c.write_all(req.as_bytes()).unwrap();
    let (head, got) = http_response(&mut c);
    assert!(head.starts_with("HTTP/1.") && head.contains(" 200 "), "{head}");
    assert!(got == body, "the body before the dump differs");
    let mut c2 = c.try_clone().unwrap();
    p.round(&criu, "img1", || c2.write_all(req.as_bytes()).unwrap());
    let (head, got) = http_response(&mut c);
    assert!(head.contains(" 200 ") && got == body, "the request sent while dumped: {head}");
    p.round(&criu, "img2", || {});
    c.write_all(req.as_bytes()).unwrap();
    let (head, got) = http_response(&mut c);
    assert!(head.contains(" 200 ") && got == body, "a request after two rounds: {head}");
    assert!(lock_rules(pt).is_empty(), "the lock's rules left: {:?}", lock_rules(pt));
}

/// memcached with a client connection held open across the restore: the
/// value set before is still there, through the same connection, and a
/// command sent while it is dumped is answered after.
#[test]
fn memcached_client_held_across_restore() {
    use std::io::{Read, Write};
    require!(why_not().or_else(|| common::why_not_tool("memcached")));
    let pt = port(8);
    let ps = pt.to_string();
    let p = Program::start("memcached", &["memcached", "-u", "root", "-l", "127.0.0.1", "-p", &ps, "-U", "0", "-t", "2"]);
    let criu = private_criu(&p.dir);
    let mut c = connect(pt);
    let read_until = |c: &mut std::net::TcpStream, end: &[u8]| {
        let mut got = Vec::new();
        let mut b = [0u8; 4096];
        while !got.ends_with(end) {
            let n = match c.read(&mut b) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => r.expect("reading memcached's answer"),
            };
            assert!(n > 0, "end of file from memcached after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&b[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    };
    let value: String = (0..5000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    c.write_all(format!("set held 7 0 {}\r\n{value}\r\n", value.len()).as_bytes()).unwrap();
    assert_eq!(read_until(&mut c, b"\r\n"), "STORED\r\n");
    let mut c2 = c.try_clone().unwrap();
    p.round(&criu, "img1", || c2.write_all(b"get held\r\n").unwrap());
    let want = format!("VALUE held 7 {}\r\n{value}\r\nEND\r\n", value.len());
    assert_eq!(read_until(&mut c, b"END\r\n"), want, "the value through the held connection");
    c.write_all(b"incr missing 1\r\nset n 0 0 1\r\n5\r\nincr n 3\r\n").unwrap();
    assert_eq!(read_until(&mut c, b"8\r\n"), "NOT_FOUND\r\nSTORED\r\n8\r\n");
    assert!(lock_rules(pt).is_empty(), "the lock's rules left: {:?}", lock_rules(pt));
}

/// A dump that fails after the connections were locked and put in
/// repair mode (its images directory can't be written) gives them back
/// out of repair mode and unlocked, and the program goes on; a connection
/// still connecting (SYN_SENT: its SYN dropped by a rule of the test's)
/// is refused by name with its state, the program going on.
#[test]
fn failed_dumps_release_connections_and_transitional_states_are_refused() {
    require!(why_not().or_else(|| common::why_not_tool("python3")));
    let pt = port(9);
    let pt2 = port(22);
    let prog = format!(
        "import socket,time,os\n\
         l=socket.socket(); l.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); l.bind(('127.0.0.1',{pt})); l.listen()\n\
         a=socket.create_connection(('127.0.0.1',{pt})); b,_=l.accept(); half=None\n\
         log=open('progress.log','w',buffering=1); n=0\n\
         while True:\n\
         \x20 if half is None and os.path.exists('half'):\n\
         \x20   c=socket.socket(); c.setblocking(False); c.connect_ex(('127.0.0.1',{pt2})); half=c\n\
         \x20 n+=1; m=b'ping %d' % n; a.sendall(m); got=b.recv(100)\n\
         \x20 log.write('tick %d ok\\n' % n if got==m else 'FAIL got %r\\n' % got); time.sleep(0.05)\n"
    );
    let p = Program::start("transitional", &["python3", "-c", &prog]);
    let ticks = || common::last_tick(&p.work.join("progress.log"));
    wait_until("ticks", Duration::from_secs(10), || ticks() >= 2);
    let criu = private_criu(&p.dir);
    let pid = p.root().unwrap().to_string();
    // the images directory is one nothing can be created in
    let log = p.dir.join("failed.log");
    let out = Command::new(&criu).args(["dump", "--tcp-established", "-t", &pid, "-D", "/proc/sys", "-v4", "-o"]).arg(&log).output().expect("dump");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.matches("Locked 127.0.0.1:").count() == 2, "both ends locked before the failure:\n{text}");
    assert!(lock_rules(pt).is_empty(), "the lock's rules left by a failed dump: {:?}", lock_rules(pt));
    let t = ticks();
    wait_until("ticks after the failed dump", Duration::from_secs(10), || ticks() >= t + 5);
    let _syn = DropRule::add(false, None, pt2);
    std::fs::write(p.work.join("half"), "").unwrap();
    let t = ticks();
    wait_until("ticks with the connection in SYN_SENT", Duration::from_secs(10), || ticks() >= t + 3);
    let img = p.dir.join("img");
    std::fs::create_dir_all(&img).unwrap();
    let (st, log) = criu_env(&criu, &["dump", "-t", &pid, "--tcp-established"], &img, "dump.log", &[]);
    assert_eq!(st.code(), Some(1), "{log}");
    // (half-closed ones, either way, are carried now)
    assert!(log.contains("in state SYN_SENT (2): --tcp-established carries ESTABLISHED, FIN_WAIT1/2, CLOSE_WAIT, LAST_ACK and CLOSING connections, not one still connecting"), "{log}");
    assert!(lock_rules(pt).is_empty(), "the lock's rules left by a refused dump: {:?}", lock_rules(pt));
    let t = ticks();
    wait_until("ticks after the refused dump", Duration::from_secs(10), || ticks() >= t + 5);
}

/// `--network-lock skip`: no rule is set (both ends are in the tree here,
/// so nothing reaches them meanwhile) and the connection still goes on;
/// `--network-lock nftables` is refused by name, the program running on.
#[test]
fn network_lock_options() {
    require!(why_not());
    let pt = port(10);
    let mut p = Pair::start("nolock", &["one", &pt.to_string()], &["a", "b"]);
    let criu = private_criu(&p.dir);
    let img = p.images("refused");
    let (st, log) = criu_env(&criu, &["dump", "-t", &p.pid.to_string(), "--tcp-established", "--network-lock", "nftables"], &img, "dump.log", &[]);
    assert_eq!(st.code(), Some(1), "{log}");
    assert!(log.contains("--network-lock nftables is not supported yet"), "{log}");
    p.flows(&["a", "b"], 1 << 20, "after the refused dump");
    let img = p.images("img");
    criu_ok(&criu, &["dump", "-t", &p.pid.to_string(), "--tcp-established", "--network-lock", "skip"], &img, "dump.log");
    p.gone();
    assert!(lock_rules(pt).is_empty(), "rules set with --network-lock skip: {:?}", lock_rules(pt));
    let out = Command::new(&criu).args(["restore", "-d", "--tcp-established", "--network-lock", "skip", "-D"]).arg(&img).args(["-v4", "-o", "restore.log"]).current_dir(&p.work).output().expect("restore");
    assert!(out.status.success(), "{}", std::fs::read_to_string(img.join("restore.log")).unwrap_or_default());
    p.refind();
    p.flows(&["a", "b"], 4 << 20, "after a restore without the lock");
}

/// The state of the socket of 127.0.0.1:`port` whose peer is port `peer`
/// (the /proc/net/tcp code, e.g. "05" for FIN_WAIT2), if one has an inode
/// (a process holds it).
fn held_state(port: u16, peer: u16) -> Option<String> {
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    tcp.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let p = |a: &str| a.split(':').nth(1).and_then(|v| u16::from_str_radix(v, 16).ok());
        (p(f.get(1)?)? == port && p(f.get(2)?)? == peer && *f.get(9)? != "0").then(|| f[3].to_string())
    })
}

/// A server in the tree that sent its answer and shut its writing side
/// (its socket in FIN_WAIT2, the client outside the tree having read the
/// answer and its end of file) is carried with --tcp-established, twice:
/// after each restore the socket is in FIN_WAIT2 again, writes fail with
/// EPIPE, and what the client sends (some into the lock while dumped) and
/// its end of file reach the server whole. Before, such a dump was
/// refused (upstream 4.2 carries it, forging the peer's ACK of the FIN
/// with a raw packet; here the FIN is retransmitted and the peer's
/// answer acknowledges it).
#[test]
fn half_closed_by_the_tree_two_rounds() {
    require!(why_not().or_else(|| common::why_not_tool("python3")));
    let criu = PathBuf::from(common::CRIU);
    half_closed(14, [(&criu, &criu), (&criu, &criu)]);
}

/// The same, ours dumping and upstream 4.2 restoring, then upstream
/// dumping and ours restoring (its FIN_WAIT2 image: the same shape).
#[test]
fn half_closed_upstream_both_ways() {
    require!(why_not().or_else(|| common::why_not_tool("python3")).or_else(common::why_not_upstream));
    let (criu, up) = (PathBuf::from(common::CRIU), upstream());
    half_closed(13, [(&criu, &up), (&up, &criu)]);
}

/// [`half_closed_by_the_tree_two_rounds`] on port `n` of this run, each
/// round dumped and restored by the given pair.
fn half_closed(n: u16, rounds: [(&Path, &Path); 2]) {
    use std::io::{Read, Write};
    let pt = port(n);
    let prog = format!(
        "import socket,time,select\n\
         l=socket.socket(); l.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); l.bind(('127.0.0.1',{pt})); l.listen()\n\
         log=open('progress.log','w',buffering=1)\n\
         c,_=l.accept(); c.sendall(bytes(i*7%251 for i in range(200000))); c.shutdown(socket.SHUT_WR)\n\
         got=b''; n=0; done=False\n\
         while True:\n\
         \x20 n+=1\n\
         \x20 if not done and select.select([c],[],[],0.05)[0]:\n\
         \x20   d=c.recv(65536)\n\
         \x20   if d: got+=d\n\
         \x20   else:\n\
         \x20     try: c.send(b'x'); log.write('FAIL a write after shutdown went through\\n')\n\
         \x20     except BrokenPipeError: pass\n\
         \x20     open('got.bin','wb').write(got); log.write('eof %d\\n' % len(got)); done=True\n\
         \x20 else: time.sleep(0.05)\n\
         \x20 log.write('tick %d ok\\n' % n)\n"
    );
    let p = Program::start(&format!("halfclosed-{n}"), &["python3", "-c", &prog]);
    let private = private_criu(&p.dir);
    let ours = |c: &Path| if c == Path::new(common::CRIU) { private.clone() } else { c.to_path_buf() };
    let mut c = connect(pt);
    let mut answer = Vec::new();
    c.read_to_end(&mut answer).expect("the server's answer and its end of file");
    assert!(answer == (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>(), "the answer ({} bytes)", answer.len());
    let me = c.local_addr().unwrap().port();
    wait_until("the server's end in FIN_WAIT2", Duration::from_secs(10), || held_state(pt, me).as_deref() == Some("05"));
    let log = p.work.join("progress.log");
    let ticks = || common::last_tick(&log);
    let sent: Vec<u8> = (0..30_000u32).map(|i| (i * 13 % 241) as u8).collect();
    let mut c2 = c.try_clone().unwrap();
    let first = sent[..10_000].to_vec();
    p.round_by(&ours(rounds[0].0), &ours(rounds[0].1), "img1", || c2.write_all(&first).unwrap());
    wait_until("FIN_WAIT2 again after the restore", Duration::from_secs(20), || held_state(pt, me).as_deref() == Some("05"));
    let t = ticks();
    wait_until("ticks after the restore", Duration::from_secs(10), || ticks() >= t + 3);
    c.write_all(&sent[10_000..20_000]).unwrap();
    p.round_by(&ours(rounds[1].0), &ours(rounds[1].1), "img2", || {});
    wait_until("FIN_WAIT2 after the second restore", Duration::from_secs(20), || held_state(pt, me).as_deref() == Some("05"));
    c.write_all(&sent[20_000..]).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    wait_until("the server reading all and the end of file", Duration::from_secs(20), || std::fs::read_to_string(&log).unwrap_or_default().lines().any(|l| l.starts_with("eof ")));
    let got = std::fs::read(p.work.join("got.bin")).unwrap_or_default();
    assert!(got == sent, "the server got {} bytes, not the {} sent", got.len(), sent.len());
    let _ = ticks(); // no FAIL
    assert!(lock_rules(pt).is_empty(), "the lock's rules left: {:?}", lock_rules(pt));
}

/// The same with the FIN not even sent: the server filled the client's
/// window and its own send buffer (the client reads nothing yet), then
/// shut its writing side: FIN_WAIT1 with data unsent and the FIN behind
/// it. Dumped and restored, the client then reads every byte the server
/// had queued, in order, and the end of file after it.
#[test]
fn fin_behind_unsent_data() {
    use std::io::Read;
    require!(why_not().or_else(|| common::why_not_tool("python3")));
    let pt = port(12);
    let prog = format!(
        "import socket,time\n\
         l=socket.socket(); l.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); l.bind(('127.0.0.1',{pt})); l.listen()\n\
         log=open('progress.log','w',buffering=1)\n\
         c,_=l.accept(); c.setblocking(False); n=0; stuck=0\n\
         while stuck<20:\n\
         \x20 try: n+=c.send(bytes((n+i)*7%251 for i in range(65536)))\n\
         \x20 except BlockingIOError: stuck+=1; time.sleep(0.02)\n\
         c.shutdown(socket.SHUT_WR); log.write('sent %d\\n' % n); k=0\n\
         while True:\n\
         \x20 k+=1; log.write('tick %d ok\\n' % k); time.sleep(0.05)\n"
    );
    let p = Program::start("finwait1", &["python3", "-c", &prog]);
    let criu = private_criu(&p.dir);
    let mut c = connect(pt);
    let log = p.work.join("progress.log");
    wait_until("the server's queue full and shut", Duration::from_secs(20), || common::last_tick(&log) >= 2);
    let sent: usize = std::fs::read_to_string(&log).unwrap().lines().find_map(|l| l.strip_prefix("sent ")?.parse().ok()).expect("sent N");
    let me = c.local_addr().unwrap().port();
    assert_eq!(held_state(pt, me).as_deref(), Some("04"), "the server's end in FIN_WAIT1");
    p.round(&criu, "img1", || {});
    let t = common::last_tick(&log);
    wait_until("ticks after the restore", Duration::from_secs(10), || common::last_tick(&log) >= t + 3);
    let mut got = Vec::new();
    c.read_to_end(&mut got).expect("the server's bytes and its end of file");
    assert_eq!(got.len(), sent, "bytes the server had queued");
    let want: Vec<u8> = (0..sent).map(|j| (j * 7 % 251) as u8).collect();
    assert!(got == want, "the bytes differ");
    wait_until("the server's end in FIN_WAIT2", Duration::from_secs(10), || held_state(pt, me).as_deref() == Some("05"));
}

/// A DROP rule of the test's own in OUTPUT (`ip6tables` for IPv6) for the
/// TCP packets from `sport` to `dport` on the loopback address, lifted on
/// drop: it holds a FIN unacknowledged (LAST_ACK, CLOSING) while the
/// connection is dumped and restored.
struct DropRule {
    cmd: &'static str,
    spec: Vec<String>,
    on: bool,
}

impl DropRule {
    fn add(v6: bool, sport: Option<u16>, dport: u16) -> DropRule {
        let (cmd, host) = if v6 { ("ip6tables", "::1") } else { ("iptables", "127.0.0.1") };
        let mut spec: Vec<String> = ["OUTPUT", "-p", "tcp", "-s", host, "-d", host].iter().map(|s| s.to_string()).collect();
        if let Some(sp) = sport {
            spec.extend(["--sport".to_string(), sp.to_string()]);
        }
        spec.extend(["--dport".to_string(), dport.to_string(), "-j".into(), "DROP".into()]);
        let st = Command::new(cmd).args(["-w", "-I"]).args(&spec).status().expect("iptables");
        assert!(st.success(), "{cmd} -I {spec:?}");
        DropRule { cmd, spec, on: true }
    }

    fn lift(&mut self) {
        if std::mem::take(&mut self.on) {
            let _ = Command::new(self.cmd).args(["-w", "-D"]).args(&self.spec).status();
        }
    }
}

impl Drop for DropRule {
    fn drop(&mut self) {
        self.lift();
    }
}

/// On drop (a test that failed midway, e.g. a restore refused), the
/// network lock's rules naming the port are deleted, so that they do not
/// outlive the test.
struct LockRulesGone(u16);

impl Drop for LockRulesGone {
    fn drop(&mut self) {
        for r in lock_rules(self.0) {
            let cmd = if r.contains(':') { "ip6tables" } else { "iptables" };
            let args: Vec<&str> = r.split_whitespace().skip(1).collect();
            let _ = Command::new(cmd).args(["-w", "-D"]).args(&args).status();
        }
    }
}

/// The /proc/net/tcp state codes of the sockets between `port` and
/// `peer` on the loopback address (either way round; those a process
/// holds, with `held`, else all, orphans and TIME_WAIT included).
fn conn_states(v6: bool, port: u16, peer: u16, held: bool) -> Vec<(u16, String)> {
    let tcp = std::fs::read_to_string(if v6 { "/proc/net/tcp6" } else { "/proc/net/tcp" }).unwrap_or_default();
    tcp.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let p = |a: &str| a.rsplit(':').next().and_then(|v| u16::from_str_radix(v, 16).ok());
            let (a, b) = (p(f.get(1)?)?, p(f.get(2)?)?);
            ((a, b) == (port, peer) || (a, b) == (peer, port)).then_some(())?;
            (!held || *f.get(9)? != "0").then(|| (a, f[3].to_string()))
        })
        .collect()
}

/// The state code of the held socket of `port` whose peer is `peer`.
fn end_state(v6: bool, port: u16, peer: u16) -> Option<String> {
    conn_states(v6, port, peer, true).into_iter().find(|(a, _)| *a == port).map(|(_, s)| s)
}

/// The program of [`fin_received`]: a listener on PT, its accepted end
/// `b` the one under test; with INNER the peer `a` is its own connection
/// to it (else a client outside the tree). `b` sends B1 at once; the peer
/// sends A and its FIN (MODE cw, la: at once; cl: after `b` shut). With
/// `shut`, `b` sends B2 (unacknowledged: the test drops `b`'s packets)
/// and shuts its writing side: LAST_ACK after the peer's FIN (la), or
/// FIN_WAIT1 and CLOSING once the peer's FIN comes (cl). It ticks until
/// `go`, then reads: A and the end of file (twice), writes B3 (cw) or
/// fails to write (EPIPE), closes; with INNER the peer reads what `b`
/// sent and the end of file.
const FIN_PROG: &str = r#"
import socket,time,os
mode='@MODE@'; inner=@INNER@; pt=@PT@; host='@HOST@'
fam=socket.AF_INET6 if ':' in host else socket.AF_INET
def pat(k,n): return bytes(i*k%251 for i in range(n))
A=pat(7,60000); B1=pat(11,40000); B2=pat(13,8000); B3=pat(17,20000)
log=open('progress.log','w',buffering=1)
def wait(f):
    while not os.path.exists(f): time.sleep(0.02)
l=socket.socket(fam); l.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); l.bind((host,pt)); l.listen()
if inner: a=socket.create_connection((host,pt))
b,_=l.accept(); b.sendall(B1)
open('ready1.tmp','w').write(str(a.getsockname()[1] if inner else 0)); os.rename('ready1.tmp','ready1')
def peer_fin():
    if inner: a.sendall(A); a.shutdown(socket.SHUT_WR)
if mode in ('cw','la'): peer_fin()
if mode in ('la','cl'):
    wait('shut'); b.sendall(B2); b.shutdown(socket.SHUT_WR)
    if mode=='cl': peer_fin()
n=0
while not os.path.exists('go'):
    n+=1; log.write('tick %d ok\n'%n); time.sleep(0.05)
got=b''
while True:
    d=b.recv(65536)
    if not d: break
    got+=d
log.write(('eof %d ok\n' if got==A else 'FAIL b got %d bytes, not the peer\'s\n') % len(got))
if b.recv(10)!=b'': log.write('FAIL data after the end of file\n')
if mode=='cw': b.sendall(B3)
else:
    try: b.send(b'x'); log.write('FAIL a write after shutdown went through\n')
    except BrokenPipeError: pass
b.close()
if inner:
    a.settimeout(60); got=b''
    while True:
        d=a.recv(65536)
        if not d: break
        got+=d
    want=B1+(B3 if mode=='cw' else B2)
    log.write(('peer %d ok\n' if got==want else 'FAIL the peer got %d bytes\n') % len(got))
    a.close()
log.write('done\n')
while True:
    n+=1; log.write('tick %d ok\n'%n); time.sleep(0.05)
"#;

/// The address family of a [`fin_received`] connection: IPv4, IPv6, or
/// IPv4-mapped IPv6 (AF_INET6 sockets, IPv4 packets).
#[derive(Clone, Copy, PartialEq)]
enum Fam {
    V4,
    V6,
    Mapped,
}

impl Fam {
    fn host(self) -> &'static str {
        match self {
            Fam::V4 => "127.0.0.1",
            Fam::V6 => "::1",
            Fam::Mapped => "::ffff:127.0.0.1",
        }
    }
}

fn pat(k: u32, n: u32) -> Vec<u8> {
    (0..n).map(|i| (i * k % 251) as u8).collect()
}

/// A connection whose end `b` in the tree received its peer's FIN with
/// data queued before it: CLOSE_WAIT (`cw`), LAST_ACK (`la`: `b` shut
/// after it, its FIN unacknowledged) or CLOSING (`cl`: `b` shut first,
/// the peer's FIN crossing it), IPv4 or IPv6, the peer in the tree
/// (`inner`) or the test itself. Two rounds, each dumped and restored by
/// the given pair (the test's DROP rule, which holds `b`'s FIN
/// unacknowledged, is lifted before upstream restores: upstream 4.2 fails
/// to send its forged FIN with it); after a restore of ours `b` is in the
/// same state. Then `b` reads the peer's bytes and the end of file, a
/// write fails with EPIPE (or, in CLOSE_WAIT, goes through), its close
/// completes the connection: the peer reads what `b` sent and the end of
/// file, and both ends are gone or in TIME_WAIT. Returns the test's
/// directory (images `img1`, `img2`).
fn fin_received(n: u16, mode: &str, fam: Fam, inner: bool, rounds: [(&Path, &Path); 2]) -> PathBuf {
    use std::io::{Read, Write};
    let pt = port(n);
    let host = fam.host();
    // (/proc/net/tcp6 lists the IPv4-mapped sockets; their packets are IPv4's)
    let (v6, rule_v6) = (fam != Fam::V4, fam == Fam::V6);
    let prog = FIN_PROG.replace("@MODE@", mode).replace("@INNER@", if inner { "True" } else { "False" }).replace("@PT@", &pt.to_string()).replace("@HOST@", host);
    let _rules = LockRulesGone(pt);
    let p = Program::start(&format!("fin-{mode}-{n}"), &["python3", "-c", &prog]);
    let private = private_criu(&p.dir);
    let ours = |c: &Path| if c == Path::new(common::CRIU) { private.clone() } else { c.to_path_buf() };
    let mut c = None;
    if !inner {
        let mut last = None;
        for _ in 0..200 {
            match std::net::TcpStream::connect((host, pt)) {
                Ok(s) => {
                    c = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(c.is_some(), "connecting to [{host}]:{pt}: {last:?}");
    }
    let ready = p.work.join("ready1");
    wait_until("the connection", Duration::from_secs(10), || ready.exists());
    let pp: u16 = match &c {
        Some(c) => c.local_addr().unwrap().port(),
        None => std::fs::read_to_string(&ready).unwrap().trim().parse().unwrap(),
    };
    let (a, b1, b2, b3) = (pat(7, 60000), pat(11, 40000), pat(13, 8000), pat(17, 20000));
    let peer_fin = |c: &mut Option<std::net::TcpStream>| {
        if let Some(c) = c {
            c.write_all(&a).unwrap();
            c.shutdown(std::net::Shutdown::Write).unwrap();
        }
    };
    let code = |s: &str| wait_until(&format!("b in state {s}: {:?}", conn_states(v6, pt, pp, false)), Duration::from_secs(10), || end_state(v6, pt, pp).as_deref() == Some(s));
    let mut rule = None;
    let want = match mode {
        "cw" => {
            peer_fin(&mut c);
            "08"
        }
        "la" => {
            peer_fin(&mut c);
            code("08");
            rule = Some(DropRule::add(rule_v6, Some(pt), pp));
            std::fs::write(p.work.join("shut"), "").unwrap();
            "09"
        }
        _ => {
            rule = Some(DropRule::add(rule_v6, Some(pt), pp));
            std::fs::write(p.work.join("shut"), "").unwrap();
            if !inner {
                code("04");
            }
            peer_fin(&mut c);
            "0B"
        }
    };
    code(want);
    let log = p.work.join("progress.log");
    for (i, (dumper, restorer)) in rounds.iter().enumerate() {
        let up_restores = *restorer != Path::new(common::CRIU);
        p.round_by(&ours(dumper), &ours(restorer), &format!("img{}", i + 1), || {
            if up_restores {
                if let Some(r) = &mut rule {
                    r.lift();
                }
            }
        });
        if !up_restores && rule.as_ref().is_none_or(|r| r.on) {
            code(want);
        }
        let t = common::last_tick(&log);
        wait_until("ticks after the restore", Duration::from_secs(10), || common::last_tick(&log) >= t + 3);
        assert!(lock_rules(pt).is_empty(), "the lock's rules left: {:?}", lock_rules(pt));
    }
    drop(rule);
    std::fs::write(p.work.join("go"), "").unwrap();
    wait_until("the program done", Duration::from_secs(60), || std::fs::read_to_string(&log).unwrap_or_default().contains("done\n"));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("FAIL") && text.contains(&format!("eof {} ok", a.len())), "{text}");
    if let Some(c) = &mut c {
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).expect("the peer reads what b sent and its end of file");
        let want = [b1, if mode == "cw" { b3 } else { b2 }].concat();
        assert!(got == want, "the peer got {} bytes, not the {} b sent", got.len(), want.len());
    } else {
        assert!(text.contains("peer "), "{text}");
    }
    wait_until(&format!("the connection closed: {:?}", conn_states(v6, pt, pp, false)), Duration::from_secs(60), || conn_states(v6, pt, pp, false).iter().all(|(_, s)| s == "06"));
    let _ = common::last_tick(&log); // no FAIL
    p.dir.clone()
}

/// CLOSE_WAIT, the peer in the tree (IPv4): ours twice. Refused by name
/// before (`--tcp-established carries ... not one that received its
/// peer's FIN`). Then its images made hostile are refused naming the
/// image and field before anything is made: a state no TCP socket has,
/// one still connecting, and window sequence numbers past what was
/// received (the peer's FIN counted).
#[test]
fn close_wait_two_rounds_peer_in_tree() {
    require!(why_not().or_else(|| common::why_not_tool("python3")));
    let criu = PathBuf::from(common::CRIU);
    let dir = fin_received(15, "cw", Fam::V4, true, [(&criu, &criu), (&criu, &criu)]);
    let img = dir.join("img2");
    let files: Vec<pb::FileEntry> = image::read_all(&img, "files.img", &magic::FILES).unwrap();
    let ino = files.iter().filter_map(|f| f.isk.as_ref()).find(|i| i.state == 8).expect("a CLOSE_WAIT entry").ino;
    let stream = format!("tcp-stream-{ino:x}.img");
    let e: pb::TcpStreamEntry = image::read_one(&img, &stream, &magic::TCP_STREAM).unwrap();
    assert!(e.inq_len == 60000 && e.rcv_wup == Some(e.inq_seq), "the peer's bytes queued, its FIN counted in inq_seq only: {e:?}");
    let edit_stream = |name: &str, f: &dyn Fn(&mut pb::TcpStreamEntry)| {
        let out = dir.join(name);
        copy_dir(&img, &out);
        let mut r = image::ImageReader::open(&out, &stream, &magic::TCP_STREAM).unwrap();
        let mut e: pb::TcpStreamEntry = r.next_entry().unwrap().unwrap();
        let rest = r.read_rest().unwrap();
        f(&mut e);
        let mut w = image::ImageWriter::create(&out, &stream, &magic::TCP_STREAM).unwrap();
        w.write_entry(&e).unwrap();
        w.write_payload(&rest).unwrap();
        w.finish().unwrap();
        out
    };
    let edit_isk = |name: &str, f: &dyn Fn(&mut pb::InetSkEntry)| {
        let out = dir.join(name);
        copy_dir(&img, &out);
        let mut files: Vec<pb::FileEntry> = image::read_all(&out, "files.img", &magic::FILES).unwrap();
        f(files.iter_mut().filter_map(|e| e.isk.as_mut()).find(|i| i.ino == ino).unwrap());
        image::write_all(&out, "files.img", &magic::FILES, &files).unwrap();
        out
    };
    let cases: Vec<(&str, PathBuf, String)> = vec![
        ("no such state", edit_isk("state99", &|i| i.state = 99), "isk.state: 99 (unknown) is not a state of a TCP socket we restore".into()),
        ("still connecting", edit_isk("synsent", &|i| i.state = 2), "isk.state: a TCP connection (SYN_SENT): restored only with --tcp-established (ESTABLISHED, FIN_WAIT1/2, CLOSE_WAIT".into()),
        ("window past the FIN", edit_stream("wup", &|e| e.rcv_wup = Some(e.inq_seq.wrapping_add(1))), format!("{stream}: entry 0: rcv_wup: {} is past inq_seq {}", e.inq_seq.wrapping_add(1), e.inq_seq)),
        ("the FIN not counted", edit_stream("seq", &|e| e.inq_seq = e.inq_seq.wrapping_sub(1)), format!("{stream}: entry 0: rcv_wup: {} is past inq_seq {}", e.inq_seq, e.inq_seq.wrapping_sub(1))),
        ("window update past the window", edit_stream("wl1", &|e| e.snd_wl1 = Some(e.inq_seq.wrapping_add(e.rcv_wnd.unwrap()).wrapping_add(1))), format!("{stream}: entry 0: snd_wl1:")),
    ];
    for (what, out, want) in cases {
        let (st, log) = criu_env(&criu, &["restore", "-d", "--tcp-established"], &out, "restore.log", &[]);
        assert_eq!(st.code(), Some(1), "{what}: the restore must fail:\n{log}");
        assert!(log.contains(&want), "{what}: the error must say {want:?}:\n{log}");
        assert!(!log.contains("forged"), "{what}: refused before anything is made:\n{log}");
    }
}

/// CLOSE_WAIT, the peer outside the tree, IPv6 (the forged FIN an IPv6
/// packet): ours twice.
#[test]
fn close_wait_two_rounds_peer_outside_v6() {
    require!(why_not().or_else(|| common::why_not_tool("python3")));
    let criu = PathBuf::from(common::CRIU);
    fin_received(16, "cw", Fam::V6, false, [(&criu, &criu), (&criu, &criu)]);
}

/// LAST_ACK (our FIN behind unacknowledged data, after the peer's FIN),
/// the peer outside the tree: ours twice.
#[test]
fn last_ack_two_rounds_peer_outside() {
    require!(why_not().or_else(|| common::why_not_tool("python3")));
    let criu = PathBuf::from(common::CRIU);
    fin_received(17, "la", Fam::V4, false, [(&criu, &criu), (&criu, &criu)]);
}

/// CLOSING (both FINs crossing), the peer in the tree, IPv6: ours twice.
#[test]
fn closing_two_rounds_peer_in_tree_v6() {
    require!(why_not().or_else(|| common::why_not_tool("python3")));
    let criu = PathBuf::from(common::CRIU);
    fin_received(18, "cl", Fam::V6, true, [(&criu, &criu), (&criu, &criu)]);
}

/// LAST_ACK on IPv4-mapped IPv6 sockets (AF_INET6, the forged FIN an
/// IPv4 packet), the peer in the tree: ours twice.
#[test]
fn last_ack_two_rounds_ipv4_mapped() {
    require!(why_not().or_else(|| common::why_not_tool("python3")));
    let criu = PathBuf::from(common::CRIU);
    fin_received(23, "la", Fam::Mapped, true, [(&criu, &criu), (&criu, &criu)]);
}

/// Upstream 4.2 dumping each of the three states and ours restoring,
/// then ours dumping and upstream restoring (CLOSING over IPv6, the others
/// IPv4; upstream forges the FIN too, with libnet).
#[test]
fn fin_received_upstream_both_ways() {
    require!(why_not().or_else(|| common::why_not_tool("python3")).or_else(common::why_not_upstream));
    let (criu, up) = (PathBuf::from(common::CRIU), upstream());
    fin_received(19, "cw", Fam::V4, true, [(&up, &criu), (&criu, &up)]);
    fin_received(20, "la", Fam::V4, true, [(&up, &criu), (&criu, &up)]);
    fin_received(21, "cl", Fam::V6, false, [(&up, &criu), (&criu, &up)]);
}

/// A network namespace of the test's own joined to this one by a veth
/// pair, `10.199.X.1` here and `10.199.X.2` there: a peer on "another
/// host" (its address is not local). Removed on drop.
struct PeerNs {
    name: String,
    here: String,
    x: u32,
}

impl PeerNs {
    fn new() -> PeerNs {
        let id = std::process::id();
        let x = 20 + id % 200;
        let ns = PeerNs { name: format!("criu-rs-tcpfin-{id}"), here: format!("tf{}h", id % 1_000_000), x };
        let there = format!("tf{}p", id % 1_000_000);
        let ip = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().expect("ip");
            assert!(st.success(), "ip {args:?}");
        };
        ip(&["netns", "add", &ns.name]);
        ip(&["link", "add", &ns.here, "type", "veth", "peer", "name", &there]);
        ip(&["link", "set", &there, "netns", &ns.name]);
        ip(&["addr", "add", &format!("{}/24", ns.addr(1)), "dev", &ns.here]);
        ip(&["link", "set", &ns.here, "up"]);
        ip(&["-n", &ns.name, "addr", "add", &format!("{}/24", ns.addr(2)), "dev", &there]);
        ip(&["-n", &ns.name, "link", "set", &there, "up"]);
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    fn addr(&self, n: u32) -> String {
        format!("10.199.{}.{n}", self.x)
    }
}

impl Drop for PeerNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        let _ = Command::new("ip").args(["link", "del", &self.here]).stderr(Stdio::null()).status();
    }
}

/// CLOSE_WAIT with the peer on another host (a network namespace of its
/// own behind a veth pair: the forged FIN's source address is not a
/// local one), ours twice: the program reads the peer's 60 KB and end of
/// file, writes 20 KB more and closes; the peer reads what it was sent
/// and the end of file.
#[test]
fn close_wait_peer_on_another_host() {
    require!(why_not().or_else(|| common::why_not_tools(&["python3", "ip"])));
    let ns = PeerNs::new();
    let pt = port(24);
    let host = ns.addr(1);
    let prog = FIN_PROG.replace("@MODE@", "cw").replace("@INNER@", "False").replace("@PT@", &pt.to_string()).replace("@HOST@", &host);
    let p = Program::start("fin-remote", &["python3", "-c", &prog]);
    let criu = private_criu(&p.dir);
    let got = p.dir.join("peer-got");
    let client = "import socket,sys,os\n\
        s=None\n\
        for i in range(200):\n\
        \x20 try: s=socket.create_connection((sys.argv[1],int(sys.argv[2]))); break\n\
        \x20 except OSError: import time; time.sleep(0.05)\n\
        open(sys.argv[3]+'.port','w').write(str(s.getsockname()[1]))\n\
        s.sendall(bytes(i*7%251 for i in range(60000))); s.shutdown(socket.SHUT_WR); s.settimeout(60); got=b''\n\
        while True:\n\
        \x20 d=s.recv(65536)\n\
        \x20 if not d: break\n\
        \x20 got+=d\n\
        open(sys.argv[3]+'.tmp','wb').write(got); os.rename(sys.argv[3]+'.tmp',sys.argv[3])\n";
    let mut peer = Command::new("ip").args(["netns", "exec", &ns.name, "python3", "-c", client, &host, &pt.to_string()]).arg(&got).stdin(Stdio::null()).spawn().expect("the peer");
    let port_file = got.with_extension("port");
    wait_until("the peer connected", Duration::from_secs(10), || std::fs::read_to_string(&port_file).is_ok_and(|s| !s.is_empty()));
    let pp: u16 = std::fs::read_to_string(&port_file).unwrap().trim().parse().unwrap();
    let code = || wait_until(&format!("CLOSE_WAIT: {:?}", conn_states(false, pt, pp, false)), Duration::from_secs(10), || end_state(false, pt, pp).as_deref() == Some("08"));
    code();
    let log = p.work.join("progress.log");
    for name in ["img1", "img2"] {
        p.round(&criu, name, || {});
        code();
        let t = common::last_tick(&log);
        wait_until("ticks after the restore", Duration::from_secs(10), || common::last_tick(&log) >= t + 3);
    }
    std::fs::write(p.work.join("go"), "").unwrap();
    wait_until("the program done", Duration::from_secs(60), || std::fs::read_to_string(&log).unwrap_or_default().contains("done\n"));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("FAIL") && text.contains("eof 60000 ok"), "{text}");
    wait_until("the peer's end of file", Duration::from_secs(60), || got.exists());
    let _ = peer.wait();
    assert!(std::fs::read(&got).unwrap() == [pat(11, 40000), pat(17, 20000)].concat(), "what the peer read");
    assert!(conn_states(false, pt, pp, false).iter().all(|(_, s)| s == "06"), "{:?}", conn_states(false, pt, pp, false));
}

/// CLOSE_WAIT behind megabytes: the peer (in the tree) filled the
/// connection, shut its writing side, and the end under test read just
/// enough to let the rest and the FIN in: megabytes queued before the
/// FIN. Ours twice; then every byte is read in order, and the end of
/// file after them.
#[test]
fn close_wait_behind_megabytes() {
    require!(why_not().or_else(|| common::why_not_tool("python3")));
    let pt = port(25);
    let prog = format!(
        "import socket,time,os\n\
         def pat(off,k): return bytes((off+i)*7%251 for i in range(k))\n\
         l=socket.socket(); l.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); l.bind(('127.0.0.1',{pt})); l.listen()\n\
         a=socket.create_connection(('127.0.0.1',{pt})); b,_=l.accept(); a.setblocking(False); n=0; stuck=0\n\
         while stuck<20:\n\
         \x20 try: n+=a.send(pat(n,65536))\n\
         \x20 except BlockingIOError: stuck+=1; time.sleep(0.02)\n\
         a.shutdown(socket.SHUT_WR); got=b''\n\
         while len(got)<300000: got+=b.recv(65536)\n\
         log=open('progress.log','w',buffering=1); log.write('sent %d\\n' % n); k=0\n\
         while not os.path.exists('go'):\n\
         \x20 k+=1; log.write('tick %d ok\\n' % k); time.sleep(0.05)\n\
         while True:\n\
         \x20 d=b.recv(65536)\n\
         \x20 if not d: break\n\
         \x20 got+=d\n\
         log.write(('eof %d ok\\n' if got==pat(0,n) else 'FAIL b got %d bytes\\n') % len(got))\n\
         while True:\n\
         \x20 k+=1; log.write('tick %d ok\\n' % k); time.sleep(0.05)\n"
    );
    let p = Program::start("fin-megabytes", &["python3", "-c", &prog]);
    let criu = private_criu(&p.dir);
    let log = p.work.join("progress.log");
    wait_until("the peer's bytes and FIN in", Duration::from_secs(20), || common::last_tick(&log) >= 2);
    let sent: usize = std::fs::read_to_string(&log).unwrap().lines().find_map(|l| l.strip_prefix("sent ")?.parse().ok()).expect("sent N");
    assert!(sent > 1 << 20, "megabytes sent: {sent}");
    let root = p.root().unwrap();
    let states = || {
        let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        tcp.lines().filter(|l| l.split_whitespace().nth(1).is_some_and(|a| a.ends_with(&format!(":{pt:04X}"))) && l.split_whitespace().nth(3) != Some("0A")).map(|l| l.split_whitespace().nth(3).unwrap().to_string()).collect::<Vec<_>>()
    };
    wait_until(&format!("the accepted end in CLOSE_WAIT (pid {root})"), Duration::from_secs(10), || states() == ["08"]);
    for name in ["img1", "img2"] {
        p.round(&criu, name, || {});
        let img = p.dir.join(name);
        let total: u64 = std::fs::read_dir(&img).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with("tcp-stream-")).map(|e| e.metadata().unwrap().len()).sum();
        assert!(total > 1 << 20, "{name}: the receive queue in the image: {total} bytes");
        wait_until("CLOSE_WAIT again", Duration::from_secs(10), || states() == ["08"]);
        let t = common::last_tick(&log);
        wait_until("ticks after the restore", Duration::from_secs(10), || common::last_tick(&log) >= t + 3);
    }
    std::fs::write(p.work.join("go"), "").unwrap();
    wait_until("every byte and the end of file", Duration::from_secs(30), || std::fs::read_to_string(&log).unwrap_or_default().contains(&format!("eof {sent} ok")));
    let _ = common::last_tick(&log); // no FAIL
}
