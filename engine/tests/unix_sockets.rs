//! Unix sockets (kinds/unix.rs) on real processes: tests/fdsupport/progs/
//! unixsk.c holds stream, datagram and seqpacket socketpairs with data
//! queued both ways, an abstract-named datagram socket with queued
//! datagrams, a half-shut stream pair, a listener on a path with a
//! connection queued and not accepted, options and O_NONBLOCK, and checks
//! every tick, by sequence number, that nothing was lost or repeated.
//! It survives our dump and restore (plain, `--leave-running`, rounds in
//! a row); upstream CRIU 4.2 restores our images and we restore its.
//! Hostile images are refused naming the image and field; sockets we
//! cannot dump (an fd in flight, a peer outside the process) are refused
//! by name with the process left running.

#[path = "fdsupport/mod.rs"]
mod fdsupport;

use fdsupport::*;
use images_proto::image::{ImageReader, ImageWriter};
use images_proto::magic as mg;
use images_proto::pb;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// A program of tests/fdsupport/progs started as the shared fixtures are
/// (`unshare --pid --fork setsid BIN ARGS`, so upstream CRIU can dump it
/// too), in its own scratch directory; killed on drop; run by our criu or
/// upstream's.
struct Prog(Scene);

impl std::ops::Deref for Prog {
    type Target = Scene;
    fn deref(&self) -> &Scene {
        &self.0
    }
}

impl std::ops::DerefMut for Prog {
    fn deref_mut(&mut self) -> &mut Scene {
        &mut self.0
    }
}

impl Prog {
    fn start(name: &str, tag: &str, args: &[&str]) -> Prog {
        Prog(Scene::launch(name, tag, args, Launch::SessionLeader))
    }

    fn images(&self, n: &str) -> PathBuf {
        let d = self.tmp.join(format!("img-{n}"));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Run `criu` (ours or upstream's) with `args -D dir -v4 -o log` in work/.
    fn run(&self, criu: &Path, args: &[&str], dir: &Path, log: &str) -> (Output, String) {
        let out = Command::new(criu).args(args).arg("-D").arg(dir).args(["-v4", "-o", log]).current_dir(&self.work).output().expect("run criu");
        let text = std::fs::read_to_string(dir.join(log)).unwrap_or_default() + &String::from_utf8_lossy(&out.stderr);
        (out, text)
    }

    fn ok(&self, criu: &Path, args: &[&str], dir: &Path, log: &str) {
        let (out, text) = self.run(criu, args, dir, log);
        assert!(out.status.success(), "{} {args:?} failed ({}):\n{text}", criu.display(), out.status);
    }

    fn dump(&self, criu: &Path, dir: &Path, extra: &[&str]) {
        let pid = self.pid.to_string();
        let mut args = vec!["dump", "-t", &pid];
        args.extend_from_slice(extra);
        self.ok(criu, &args, dir, "dump.log");
        if !extra.contains(&"--leave-running") {
            wait_until("the dumped program gone", Duration::from_secs(5), || pid_of(&self.bin).is_none());
        }
    }

    /// Restore detached and wait for 5 more ok ticks (no FAIL).
    fn restore(&mut self, criu: &Path, dir: &Path) {
        let t = last_tick(&self.log());
        self.ok(criu, &["restore", "-d"], dir, "restore.log");
        wait_until("ticks after restore", Duration::from_secs(15), || last_tick(&self.log()) > t + 5);
        self.pid = pid_of(&self.bin).expect("restored program running");
    }

    fn kill(&self) {
        if let Some(p) = pid_of(&self.bin) {
            let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
        }
        wait_until("the program gone", Duration::from_secs(5), || pid_of(&self.bin).is_none());
    }
}

fn ours() -> PathBuf {
    PathBuf::from(CRIU)
}

/// The UNIXSK entries of an image set's files.img.
fn unix_entries(dir: &Path) -> Vec<pb::UnixSkEntry> {
    let files: Vec<pb::FileEntry> = images_proto::image::read_all(dir, "files.img", &mg::FILES).expect("files.img");
    files.into_iter().filter_map(|f| f.usk).collect()
}

/// (id_for, length) of every sk-queues.img entry.
fn queue_entries(dir: &Path) -> Vec<(u32, u32)> {
    let mut r = ImageReader::open(dir, "sk-queues.img", &mg::SK_QUEUES).expect("sk-queues.img");
    let mut v = Vec::new();
    while let Some(e) = r.next_entry::<pb::SkPacketEntry>().expect("entry") {
        r.read_payload(u64::from(e.length)).expect("payload");
        v.push((e.id_for, e.length));
    }
    v
}

/// Plain dump + restore, a `--leave-running` dump (the original keeps
/// ticking; the restore of that image follows it), and another round:
/// every tick checks every queue by sequence number.
#[test]
fn unix_sockets_survive_rounds() {
    require!(why_not_here());
    let mut p = Prog::start("unixsk", "rounds", &[]);
    let d1 = p.images("1");
    p.dump(&ours(), &d1, &[]);
    // what the images hold: 14 sockets, their queues in sk-queues.img
    let socks = unix_entries(&d1);
    assert_eq!(socks.len(), 14, "{socks:#?}");
    let listener = socks.iter().find(|s| s.state == 10).expect("a listening socket");
    assert!(listener.name.ends_with(b"listen.sock\0"), "{listener:?}");
    assert_eq!(socks.iter().filter(|s| s.peer == listener.ino).count(), 1, "the queued client names the listener as its peer");
    let q = queue_entries(&d1);
    // stream 1000 + 777 and the 300 before the shutdown; 3 messages each
    // way of the dgram and seqpacket pairs; 2 on the abstract socket, 2 on
    // the one whose path was unlinked
    assert!(socks.iter().any(|s| s.deleted == Some(true) && s.name.ends_with(b"gone.sock\0")), "{socks:#?}");
    assert_eq!(q.len(), 3 + 12 + 2 + 2, "{q:?}");
    let total: u32 = q.iter().map(|e| e.1).sum();
    assert!(total > 2077, "{q:?}");
    p.restore(&ours(), &d1);

    let d2 = p.images("2");
    p.dump(&ours(), &d2, &["--leave-running"]);
    let t = last_tick(&p.log());
    wait_until("the original ticking after a --leave-running dump", Duration::from_secs(10), || last_tick(&p.log()) > t + 3);
    p.kill();
    p.restore(&ours(), &d2);

    let d3 = p.images("3");
    p.dump(&ours(), &d3, &[]);
    p.restore(&ours(), &d3);
    let log = std::fs::read_to_string(p.log()).unwrap();
    assert!(!log.contains("FAIL"), "{log}");
}

/// Upstream CRIU 4.2 restores the image set our engine writes.
#[test]
fn upstream_restores_our_unix_sockets() {
    require!(why_not_upstream());
    let mut p = Prog::start("unixsk", "ours2up", &[]);
    let d = p.images("ours");
    p.dump(&ours(), &d, &[]);
    p.restore(&upstream(), &d);
    // and ours again from what upstream restored
    let d2 = p.images("again");
    p.dump(&ours(), &d2, &[]);
    p.restore(&ours(), &d2);
}

/// Our engine restores the image set upstream CRIU 4.2 writes (and its
/// entries are the shape ours are: same sockets, same queue entries).
#[test]
fn we_restore_upstream_unix_sockets() {
    require!(why_not_upstream());
    let mut p = Prog::start("unixsk", "up2ours", &[]);
    let d = p.images("up");
    p.dump(&upstream(), &d, &[]);
    let up = unix_entries(&d);
    assert_eq!(up.len(), 14, "{up:#?}");
    assert_eq!(queue_entries(&d).len(), 19);
    p.restore(&ours(), &d);
    let d2 = p.images("ours");
    p.dump(&ours(), &d2, &[]);
    let mine = unix_entries(&d2);
    let shape = |v: &[pb::UnixSkEntry]| {
        let mut s: Vec<_> = v.iter().map(|u| (u.r#type, u.state, u.flags, u.shutdown, u.name.starts_with(b"/"), u.opts.so_sndbuf)).collect();
        s.sort();
        s
    };
    assert_eq!(shape(&up), shape(&mine));
    p.restore(&ours(), &d2);
}

/// Copy an image set, changing one image on the way.
fn tamper(src: &Path, dst: &Path, f: impl FnOnce(&Path)) {
    let _ = std::fs::remove_dir_all(dst);
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "img") {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
    f(dst);
}

fn rewrite_files(dir: &Path, f: impl FnOnce(&mut Vec<pb::FileEntry>)) {
    let mut files: Vec<pb::FileEntry> = images_proto::image::read_all(dir, "files.img", &mg::FILES).unwrap();
    f(&mut files);
    let mut w = ImageWriter::create(dir, "files.img", &mg::FILES).unwrap();
    for e in &files {
        w.write_entry(e).unwrap();
    }
    w.finish().unwrap();
}

/// Rewrite sk-queues.img: `f` gets each entry with its payload.
fn rewrite_queues(dir: &Path, f: impl Fn(usize, &mut pb::SkPacketEntry, &mut Vec<u8>)) {
    let mut r = ImageReader::open(dir, "sk-queues.img", &mg::SK_QUEUES).unwrap();
    let mut all = Vec::new();
    while let Some(e) = r.next_entry::<pb::SkPacketEntry>().unwrap() {
        let data = r.read_payload(u64::from(e.length)).unwrap();
        all.push((e, data));
    }
    drop(r);
    let mut w = ImageWriter::create(dir, "sk-queues.img", &mg::SK_QUEUES).unwrap();
    for (i, (mut e, mut data)) in all.into_iter().enumerate() {
        f(i, &mut e, &mut data);
        w.write_entry(&e).unwrap();
        w.write_payload(&data).unwrap();
    }
    w.finish().unwrap();
}

/// Hostile images: a peer that names no socket, a name longer than a
/// `sockaddr_un` holds, a shutdown mode that is none, a queue entry longer
/// than what is left of the file, a queue for a file that is no socket, a
/// socket type that is not a unix one: each refused before anything is
/// created, with the image and the field named.
#[test]
fn hostile_unix_images_refused() {
    require!(why_not_here());
    let p = Prog::start("unixsk", "hostile", &[]);
    let good = p.images("good");
    p.dump(&ours(), &good, &[]);
    let first_sock = |files: &mut Vec<pb::FileEntry>| files.iter().position(|f| f.usk.is_some()).unwrap();
    type Case = (&'static str, Box<dyn Fn(&Path)>, &'static [&'static str]);
    let cases: Vec<Case> = vec![
        (
            "peer",
            Box::new(move |d: &Path| {
                rewrite_files(d, |f| {
                    let i = first_sock(f);
                    f[i].usk.as_mut().unwrap().peer = 0x7fff_0001;
                })
            }),
            &["files.img", "usk.peer", "2147418113"],
        ),
        (
            "type",
            Box::new(move |d: &Path| {
                rewrite_files(d, |f| {
                    let i = first_sock(f);
                    f[i].usk.as_mut().unwrap().r#type = 3;
                })
            }),
            &["files.img", "usk.type"],
        ),
        (
            "name",
            Box::new(move |d: &Path| {
                rewrite_files(d, |f| {
                    let i = first_sock(f);
                    f[i].usk.as_mut().unwrap().name = vec![b'/'; 200];
                })
            }),
            &["files.img", "usk.name", "200 bytes"],
        ),
        (
            "shutdown",
            Box::new(move |d: &Path| {
                rewrite_files(d, |f| {
                    let i = first_sock(f);
                    f[i].usk.as_mut().unwrap().shutdown = Some(9);
                })
            }),
            &["files.img", "usk.shutdown"],
        ),
        (
            "qlen",
            Box::new(|d: &Path| {
                rewrite_queues(d, |i, e, _| {
                    if i == 16 {
                        e.length = 1 << 30;
                    }
                })
            }),
            &["sk-queues.img"],
        ),
        (
            "idfor",
            Box::new(|d: &Path| {
                rewrite_queues(d, |i, e, _| {
                    if i == 0 {
                        e.id_for = 1; // the executable's REG entry
                    }
                })
            }),
            &["sk-queues.img", "id_for 1"],
        ),
    ];
    for (tag, f, want) in cases {
        let dir = p.tmp.join(format!("img-bad-{tag}"));
        tamper(&good, &dir, f);
        let (out, text) = p.run(&ours(), &["restore", "-d"], &dir, "restore.log");
        assert!(!out.status.success(), "{tag}: restore of a hostile image succeeded:\n{text}");
        for w in want {
            assert!(text.contains(w), "{tag}: the error does not name {w:?}:\n{text}");
        }
        assert!(!text.contains("panicked"), "{tag}:\n{text}");
        assert!(pid_of(&p.bin).is_none(), "{tag}: a process was left behind");
    }
}

/// Run a dump that must be refused; the program keeps ticking after it.
fn refused(p: &Prog, tag: &str, want: &[&str]) {
    let dir = p.images(tag);
    let (out, text) = p.run(&ours(), &["dump", "-t", &p.pid.to_string()], &dir, "dump.log");
    assert!(!out.status.success(), "{tag}: the dump should have been refused:\n{text}");
    for w in want {
        assert!(text.contains(w), "{tag}: the refusal does not say {w:?}:\n{text}");
    }
    let t = last_tick(&p.log());
    wait_until("ticks after a refused dump", Duration::from_secs(10), || last_tick(&p.log()) > t + 2);
}

/// A file in flight that is not a regular file (/dev/null passed with
/// SCM_RIGHTS, not received), a peer outside the
/// process, a connection queued on a listener outside, and a listener
/// with a connection queued from outside are refused by name; the process
/// goes on.
#[test]
fn unix_sockets_we_cannot_dump_are_refused() {
    require!(why_not_here());
    let p = Prog::start("unixrefuse", "scm", &["scm"]);
    refused(&p, "scm", &["unix socket", "SCM_RIGHTS"]);
    drop(p);

    let sockdir = std::env::temp_dir().join(format!("criu-rs-sockets-outside-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&sockdir);
    std::fs::create_dir_all(&sockdir).unwrap();
    let path = sockdir.join("outside.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let p = Prog::start("unixrefuse", "ext", &["ext", path.to_str().unwrap()]);
    let (conn, _) = listener.accept().unwrap();
    refused(&p, "ext", &["unix socket", "is not open in the dumped tree"]);
    drop(p);
    drop(conn);

    // connected to a listener outside, not accepted yet
    let p = Prog::start("unixrefuse", "extq", &["ext", path.to_str().unwrap()]);
    refused(&p, "extq", &["unix socket", "queued (not accepted) on listening socket"]);
    drop(p);
    drop(listener);

    // listening, with a connection from outside queued
    let lpath = sockdir.join("inside.sock");
    let p = Prog::start("unixrefuse", "listen", &["listen", lpath.to_str().unwrap()]);
    let client = std::os::unix::net::UnixStream::connect(&lpath).unwrap();
    refused(&p, "listen", &["unix socket", "listening, with a connection queued (not accepted)"]);
    drop(p);
    drop(client);
    let _ = std::fs::remove_dir_all(&sockdir);
}

/// `--ext-unix-sk`: a datagram socket connected to a socket outside the
/// process is refused without it (naming the option), dumped with it (the
/// peer as an external entry, as upstream writes it), and connected to the
/// outside socket again on restore: its datagrams arrive there again, from
/// our restore and from upstream's of our image.
#[test]
fn ext_unix_sk_datagram_peer() {
    require!(why_not_upstream());
    let sockdir = std::env::temp_dir().join(format!("criu-rs-sockets-outdg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&sockdir);
    std::fs::create_dir_all(&sockdir).unwrap();
    let path = sockdir.join("log.sock");
    let outside = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    outside.set_nonblocking(true).unwrap();
    let drain = || {
        let mut n = 0;
        let mut b = [0u8; 16];
        while outside.recv(&mut b).is_ok() {
            n += 1;
        }
        n
    };
    let arrives = |what: &str| {
        drain();
        let mut got = 0;
        wait_until(what, Duration::from_secs(10), || {
            got += drain();
            got >= 3
        });
    };
    let mut p = Prog::start("unixrefuse", "extdg", &["extdg", path.to_str().unwrap()]);
    arrives("datagrams from the program");
    refused(&p, "no-x", &["unix socket", "--ext-unix-sk"]);

    let d = p.images("x");
    p.dump(&ours(), &d, &["--ext-unix-sk"]);
    let socks = unix_entries(&d);
    let ext = socks.iter().find(|s| s.uflags & 1 != 0).expect("an external entry");
    assert!(ext.name.starts_with(path.to_str().unwrap().as_bytes()) && ext.r#type == 2, "{ext:?}");
    assert!(socks.iter().any(|s| s.peer == ext.ino && s.uflags == 0), "{socks:?}");
    p.restore(&ours(), &d);
    arrives("datagrams after our restore");

    let d2 = p.images("x2");
    p.dump(&ours(), &d2, &["-x"]);
    p.restore(&upstream(), &d2);
    arrives("datagrams after upstream's restore of our image");

    // upstream's own --ext-unix-sk image, restored by ours
    let d3 = p.images("x3");
    p.dump(&upstream(), &d3, &["-x"]);
    p.restore(&ours(), &d3);
    arrives("datagrams after our restore of upstream's image");
    drop(p);
    let _ = std::fs::remove_dir_all(&sockdir);
}

/// The acceptance program of issue 11, `ipc` of ../shared/fixtures/progs
/// (a stream and a datagram socketpair with queued data beside an eventfd,
/// a timerfd, a signalfd and an epoll set): plain dump and restore, a
/// `--leave-running` dump and its restore, and another round, with no
/// FAIL, the first tick after each restore included.
#[test]
fn ipc_fixture_rounds() {
    require!(why_not_here());
    let mut p = Prog::start("ipc", "ipc", &[]);
    let d1 = p.images("1");
    p.dump(&ours(), &d1, &[]);
    p.restore(&ours(), &d1);
    let d2 = p.images("2");
    p.dump(&ours(), &d2, &["--leave-running"]);
    let t = last_tick(&p.log());
    wait_until("the original ticking after a --leave-running dump", Duration::from_secs(10), || last_tick(&p.log()) > t + 3);
    p.kill();
    p.restore(&ours(), &d2);
    let d3 = p.images("3");
    p.dump(&ours(), &d3, &[]);
    p.restore(&ours(), &d3);
}

/// Upstream CRIU 4.2 restores the `ipc` image set our engine writes. Its
/// restore of the expired, unread periodic timerfd loses the timer's
/// readiness to epoll (../shared/fixtures/README.md: upstream restoring its
/// own ipc images fails the same way in most runs), so the first tick after
/// it may report `epoll events`; anything else failing is ours.
#[test]
fn upstream_restores_our_ipc() {
    require!(why_not_upstream());
    let mut p = Prog::start("ipc", "ipc-up", &[]);
    let d = p.images("ours");
    p.dump(&ours(), &d, &[]);
    let t = last_tick(&p.log());
    p.ok(&upstream(), &["restore", "-d"], &d, "restore.log");
    let log = p.log();
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("ticks or upstream's known epoll loss", Duration::from_secs(15), || {
        let s = text();
        s.contains("FAIL") || s.lines().filter_map(|l| l.strip_prefix("tick ")?.split_whitespace().next()?.parse::<u64>().ok()).any(|n| n > t + 5)
    });
    let s = text();
    for l in s.lines().filter(|l| l.contains("FAIL")) {
        assert!(l.contains("epoll events"), "upstream's restore of our ipc image failed a check other than its known timerfd loss:\n{s}");
    }
    p.pid = pid_of(&p.bin).unwrap_or(0);
}

/// Our engine restores upstream CRIU 4.2's own `ipc` image set
/// (../shared/fixtures/upstream/ipc, set up as its README says) and it
/// ticks with no FAIL. Those images come from a CPU with AVX-512 (their
/// static glibc chose EVEX code): on a CPU without it the restore must be
/// refused cleanly instead.
#[test]
fn we_restore_upstream_ipc_images() {
    require!(why_not_root().or_else(|| why_not_tool("tar")).or_else(|| why_not_fixture("upstream/ipc")));
    let up = test_support::fixture("upstream/ipc");
    let srv = Path::new("/srv/criu-fixtures");
    std::fs::create_dir_all(srv.join("bin")).unwrap();
    let bin = srv.join("bin/fx-ipc");
    if let Some(p) = pid_of(&bin) {
        let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
    }
    std::fs::copy(up.join("fx-ipc"), &bin).unwrap();
    let _ = std::fs::remove_dir_all(srv.join("ipc"));
    let st = Command::new("tar").arg("-C").arg(srv).arg("-xf").arg(up.join("workdir.tar")).status().unwrap();
    assert!(st.success(), "unpacking workdir.tar");
    let img = std::env::temp_dir().join(format!("criu-rs-sockets-upipc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&img);
    std::fs::create_dir_all(&img).unwrap();
    for e in std::fs::read_dir(up.join("images")).unwrap().flatten() {
        std::fs::copy(e.path(), img.join(e.file_name())).unwrap();
    }
    let log = srv.join("ipc/progress.log");
    let before = last_tick(&log);
    let out = Command::new(CRIU).args(["restore", "-d", "-v4", "-o", "restore.log", "-D"]).arg(&img).output().unwrap();
    let text = std::fs::read_to_string(img.join("restore.log")).unwrap_or_default();
    if !test_support::cpu_has("avx512f") {
        assert_eq!(out.status.code(), Some(1), "this CPU lacks avx512f: the restore must be refused:\n{text}");
        assert!(text.contains("AVX-512"), "the refusal must name AVX-512:\n{text}");
        return;
    }
    assert!(out.status.success(), "restore of upstream's ipc images failed:\n{text}");
    wait_until("upstream's ipc ticking after our restore", Duration::from_secs(15), || last_tick(&log) > before + 5);
    if let Some(p) = pid_of(&bin) {
        let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
    }
    let _ = std::fs::remove_dir_all(&img);
}

/// Queues larger than the default buffers: 3 MiB on a stream pair and a
/// 1 MiB datagram (read at dump in several peeks, MSG_TRUNC telling where
/// it goes on) before a small one; through a plain and a `--leave-running`
/// round.
#[test]
fn large_queues_survive() {
    require!(why_not_here());
    let mut p = Prog::start("unixbig", "big", &[]);
    let d1 = p.images("1");
    p.dump(&ours(), &d1, &[]);
    let q = queue_entries(&d1);
    assert!(q.iter().any(|e| e.1 == 1 << 20) && q.iter().any(|e| e.1 == 7), "{q:?}");
    assert_eq!(q.iter().map(|e| u64::from(e.1)).sum::<u64>(), (3 << 20) + (1 << 20) + 7, "{q:?}");
    p.restore(&ours(), &d1);
    let d2 = p.images("2");
    p.dump(&ours(), &d2, &["--leave-running"]);
    p.kill();
    p.restore(&ours(), &d2);
}

/// Every key path of a JSON value (arrays folded to `[]`), with its value
/// where `values` asks for it.
fn key_paths(v: &serde_json::Value, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                out.insert(p.clone());
                key_paths(x, &p, out);
            }
        }
        serde_json::Value::Array(a) => {
            for x in a {
                key_paths(x, &format!("{prefix}.[]"), out);
            }
        }
        _ => {}
    }
}

/// Per (socket type, state, external or not), the key paths of the UNIXSK
/// entries of an image set as crit renders them, and those of sk-queues.img.
fn unix_shapes(img: &Path) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut out = std::collections::BTreeMap::new();
    let path = img.join("files.img");
    let v = images_proto::image::decode_image(&std::fs::read(&path).unwrap(), &path, false).unwrap();
    for e in v["entries"].as_array().unwrap() {
        if e["type"].as_str() == Some("UNIXSK") {
            let u = &e["usk"];
            let key = format!("{} {} uflags {}", u["type"], u["state"], u["uflags"]);
            key_paths(e, "", out.entry(key).or_default());
        }
    }
    let path = img.join("sk-queues.img");
    let v = images_proto::image::decode_image(&std::fs::read(&path).unwrap(), &path, false).unwrap();
    for e in v["entries"].as_array().unwrap() {
        key_paths(e, "", out.entry("sk-queues".to_string()).or_default());
    }
    out
}

/// The UNIXSK entries and sk-queues.img our dump writes have the shape
/// (crit's JSON keys) of upstream 4.2's for the same program at the same
/// moment: every type and state of unixsk.c, and an external peer.
#[test]
fn unix_images_have_upstream_shape() {
    require!(why_not_upstream());
    let p = Prog::start("unixsk", "shape", &[]);
    let ours_dir = p.images("ours");
    p.dump(&ours(), &ours_dir, &["--leave-running"]);
    let up = p.images("upstream");
    p.dump(&upstream(), &up, &[]);
    let (a, b) = (unix_shapes(&ours_dir), unix_shapes(&up));
    assert!(a.len() >= 6, "{:?}", a.keys());
    assert_eq!(a, b, "shapes of the unix socket entries: ours (left), upstream's (right)");
    drop(p);

    let sockdir = std::env::temp_dir().join(format!("criu-rs-sockets-shapedg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&sockdir);
    std::fs::create_dir_all(&sockdir).unwrap();
    let path = sockdir.join("log.sock");
    let _outside = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    let p = Prog::start("unixrefuse", "shape-ext", &["extdg", path.to_str().unwrap()]);
    let ours_dir = p.images("ours");
    p.dump(&ours(), &ours_dir, &["--leave-running", "-x"]);
    let up = p.images("upstream");
    p.dump(&upstream(), &up, &["-x"]);
    let files = |d: &Path| {
        let mut m = unix_shapes_files_only(d);
        m.retain(|k, _| k != "sk-queues");
        m
    };
    assert_eq!(files(&ours_dir), files(&up), "shapes with an external peer: ours (left), upstream's (right)");
    drop(p);
    let _ = std::fs::remove_dir_all(&sockdir);
}

/// As [`unix_shapes`], for an image set that may have no sk-queues.img.
fn unix_shapes_files_only(img: &Path) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut out = std::collections::BTreeMap::new();
    let path = img.join("files.img");
    let v = images_proto::image::decode_image(&std::fs::read(&path).unwrap(), &path, false).unwrap();
    for e in v["entries"].as_array().unwrap() {
        if e["type"].as_str() == Some("UNIXSK") {
            let u = &e["usk"];
            let key = format!("{} {} uflags {}", u["type"], u["state"], u["uflags"]);
            key_paths(e, "", out.entry(key).or_default());
        }
    }
    out
}

/// With `--root`, a unix socket bound to a path is refused by name (its
/// bind would happen before the chroot, outside the root), nothing left
/// running.
#[test]
fn path_sockets_under_root_refused() {
    require!(why_not_here());
    let p = Prog::start("unixsk", "root", &[]);
    let d = p.images("1");
    p.dump(&ours(), &d, &[]);
    let (out, text) = p.run(&ours(), &["restore", "-d", "--root", "/"], &d, "restore.log");
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("unix socket paths under --root") && text.contains("listen.sock"), "{text}");
    assert!(pid_of(&p.bin).is_none(), "a process was left behind:\n{text}");
}

/// The root of a tree of `bin`: its process whose parent runs something else.
fn tree_root(bin: &Path) -> Option<i32> {
    let argv0 = |pid: i32| std::fs::read(format!("/proc/{pid}/cmdline")).ok().and_then(|c| c.split(|b| *b == 0).next().map(<[u8]>::to_vec));
    let ppid = |pid: i32| {
        let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        st.rsplit_once(") ")?.1.split_whitespace().nth(1)?.parse::<i32>().ok()
    };
    let me = bin.as_os_str().as_encoded_bytes().to_vec();
    std::fs::read_dir("/proc").ok()?.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()).find(|&p| {
        argv0(p).as_deref() == Some(me.as_slice()) && !std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default().contains(") Z") && ppid(p).and_then(argv0).as_deref() != Some(me.as_slice())
    })
}

/// A stream and a datagram socketpair split across a parent and its child
/// (tests/fdsupport/progs/unixtree.c, data queued both ways, every byte
/// and datagram checked by position and number): dumped as one tree (each
/// end's peer in the other process), the pair made by the restored root
/// for both processes to inherit; restored by ours, dumped again and
/// restored by upstream 4.2; a `--leave-running` dump of the restored tree
/// leaves both processes running, and that image restores too.
#[test]
fn socketpairs_across_processes() {
    require!(why_not_upstream());
    let mut p = Prog::start("unixtree", "tree", &[]);
    let root = |p: &Prog| tree_root(&p.bin).expect("the tree's root");
    p.pid = root(&p);
    wait_until("data flowing both ways", Duration::from_secs(10), || last_tick(&p.log()) >= 5);
    let d1 = p.images("1");
    p.dump(&ours(), &d1, &[]);
    let socks = unix_entries(&d1);
    assert_eq!(socks.len(), 4, "{socks:#?}");
    assert!(socks.iter().all(|s| socks.iter().any(|o| o.ino == s.peer && o.peer == s.ino)), "{socks:#?}");
    assert!(!queue_entries(&d1).is_empty());
    let t = last_tick(&p.log());
    p.ok(&ours(), &["restore", "-d"], &d1, "restore.log");
    wait_until("ticks after restore", Duration::from_secs(15), || last_tick(&p.log()) > t + 10);
    p.pid = root(&p);

    // --leave-running: both go on; then the tree is killed at once (its
    // root is its pid namespace's init) and that image restored
    let d2 = p.images("2");
    p.dump(&ours(), &d2, &["--leave-running"]);
    let t = last_tick(&p.log());
    wait_until("the tree ticking after a --leave-running dump", Duration::from_secs(15), || last_tick(&p.log()) > t + 10);
    let _ = Command::new("kill").args(["-9", &root(&p).to_string()]).status();
    wait_until("the tree gone", Duration::from_secs(5), || pid_of(&p.bin).is_none());
    let t = last_tick(&p.log());
    p.ok(&ours(), &["restore", "-d"], &d2, "restore-2.log");
    wait_until("ticks after the second restore", Duration::from_secs(15), || last_tick(&p.log()) > t + 10);
    p.pid = root(&p);

    let d3 = p.images("3");
    p.dump(&ours(), &d3, &[]);
    let t = last_tick(&p.log());
    p.ok(&upstream(), &["restore", "-d"], &d3, "restore-up.log");
    wait_until("ticks after upstream's restore", Duration::from_secs(15), || last_tick(&p.log()) > t + 10);
}
