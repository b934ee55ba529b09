//! Inet sockets through dump and restore, with tests/progs/inetsk.c: TCP
//! listeners (IPv4 with SO_REUSEADDR, TCP_NODELAY, SO_RCVBUF, SO_KEEPALIVE,
//! backlog 7; IPv6 with IPV6_V6ONLY, SO_REUSEPORT, O_NONBLOCK, backlog 5),
//! UDP sockets bound and connected in both families, an unbound TCP
//! socket; every tick the program checks each socket's name, peer and
//! options, connects to each listener and accepts, and sends a datagram
//! through each UDP pair (`tick N ok` / `FAIL ...` in progress.log).
//! Plain, `--leave-running`, twice; images both ways with upstream CRIU
//! 4.2; refusals by name (established connections, queued connections,
//! queued datagrams); `--tcp-close`; hostile images. Needs root, gcc,
//! unshare, setsid.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod common;

use images_proto::{image, magic, pb};

use common::{alive, upstream, criu_env, criu_ok, live_with_exe, private_criu, require, upstream_ok, wait_until, why_not_here, why_not_upstream, Find, OwnNsProg};

/// A running inetsk, started `unshare --pid --fork setsid inetsk WORDS...`
/// (pid 1 of its own pid namespace and a session leader, so that upstream
/// CRIU dumps it too); killed on drop.
struct Sk {
    p: OwnNsProg,
}

impl std::ops::Deref for Sk {
    type Target = OwnNsProg;
    fn deref(&self) -> &OwnNsProg {
        &self.p
    }
}

impl std::ops::DerefMut for Sk {
    fn deref_mut(&mut self) -> &mut OwnNsProg {
        &mut self.p
    }
}

impl Sk {
    /// Pid 1 of its namespace.
    fn start(name: &str, words: &[&str]) -> Sk {
        let p = OwnNsProg::launch(&format!("inet-{name}"), "inetsk", Find::NsInit, |bin| {
            let mut c = Command::new("unshare");
            c.args(["--pid", "--fork", "setsid"]).arg(bin).args(words);
            c
        });
        Sk { p }
    }

    fn kill(&self) {
        self.kill_all();
    }

    /// `criu dump -t PID` by `criu` (ours or upstream's) into
    /// `img`. The program connects to its own listeners for a moment every
    /// tick: a dump landing in that moment finds a TCP connection and is
    /// refused (without --tcp-close), the program running on; it is
    /// tried again after the next tick, up to 5 times.
    fn dump_between_connections(&self, criu: &Path, img: &Path, log: &str) {
        let pid = self.pid.to_string();
        let args = ["dump", "-t", pid.as_str()];
        for attempt in 1..=5 {
            let (st, text) = criu_env(criu, &args, img, log, &[]);
            if st.success() {
                return;
            }
            let connection = text.contains("Connected TCP socket") || text.contains("TCP connection");
            assert!(connection && attempt < 5, "{} {args:?} failed ({st:?}), attempt {attempt}:\n{text}", criu.display());
            assert!(alive(self.pid), "the refused dump left the program running");
            self.ticks_on(1, "after a dump refused for a connection of the moment");
        }
    }

    /// The listening sockets of the program as `ss` shows them: local
    /// address and backlog, per fd.
    fn listeners(&self) -> Vec<String> {
        let out = Command::new("ss").args(["-Htlnp"]).output().expect("ss");
        let me = format!("pid={},fd=", self.pid);
        let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(&me))
            .map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                let rest = l.split(&me).nth(1).unwrap_or("");
                let fd: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                format!("fd {fd}: {} backlog {}", w[3], w[2])
            })
            .collect();
        v.sort();
        v
    }
}

/// The INETSK entries of an image set.
fn inet_entries(img: &Path) -> Vec<pb::InetSkEntry> {
    let files: Vec<pb::FileEntry> = image::read_all(img, "files.img", &magic::FILES).unwrap();
    files.into_iter().filter_map(|e| e.isk).collect()
}

/// Dump (`extra` options) and restore with our criu; the program ticks on.
fn dump_restore(sk: &mut Sk, criu: &Path, img: &Path, leave_running: bool, extra: &[&str]) {
    let pid = sk.pid.to_string();
    let mut args = vec!["dump", "-t", &pid];
    if leave_running {
        args.push("--leave-running");
    }
    args.extend_from_slice(extra);
    criu_ok(criu, &args, img, "dump.log");
    if leave_running {
        sk.ticks_on(2, "after a --leave-running dump");
    }
    sk.kill();
    let mut args = vec!["restore", "-d"];
    args.extend_from_slice(extra);
    criu_ok(criu, &args, img, "restore.log");
    sk.refind();
    sk.ticks_on(3, "after restore");
}

/// Listeners and UDP sockets, plain then `--leave-running`: the program
/// ticks on (its listeners accept on the same ports, its datagrams arrive
/// from the same names), the listeners have their addresses and backlogs.
#[test]
fn listeners_and_udp_round_trip() {
    require!(why_not_here());
    let mut sk = Sk::start("round", &[]);
    let criu = private_criu(&sk.dir);
    sk.ticks_on(2, "before the dump");
    let listeners = sk.listeners();
    assert_eq!(listeners.len(), 2, "{listeners:?}");
    let img = sk.images("img1");
    dump_restore(&mut sk, &criu, &img, false, &[]);
    let isk = inet_entries(&img);
    assert_eq!(isk.len(), 7, "{isk:?}");
    let l4 = isk.iter().find(|e| e.state == 10 && e.family == 2).expect("the v4 listener");
    let t = l4.tcp_opts.unwrap_or_default();
    assert_eq!((l4.backlog, l4.opts.reuseaddr, l4.opts.so_keepalive, l4.opts.so_buf_lock), (7, Some(true), Some(true), Some(2)), "{l4:?}");
    assert_eq!((t.nodelay, t.keepidle, t.keepintvl, t.keepcnt), (Some(true), Some(77), Some(7), Some(3)), "{l4:?}");
    let l6 = isk.iter().find(|e| e.state == 10 && e.family == 10).expect("the v6 listener");
    assert_eq!((l6.backlog, l6.v6only, l6.opts.so_reuseport, l6.flags & libc::O_NONBLOCK as u32 != 0), (5, Some(true), Some(true), true), "{l6:?}");
    assert_eq!((l6.src_addr.len(), l6.dst_addr.len()), (4, 4));
    let u4 = isk.iter().find(|e| e.proto == 17 && e.family == 2 && e.state == 1).expect("the connected v4 UDP socket");
    assert_ne!(u4.dst_port, 0);
    assert_eq!(sk.listeners(), listeners, "listeners after restore");
    let img = sk.images("img2");
    dump_restore(&mut sk, &criu, &img, true, &[]);
    assert_eq!(sk.listeners(), listeners, "listeners after the second restore");
    sk.ticks_on(3, "at the end");
}

/// Sockets inherited over fork (a pre-forking server): parent and child
/// hold each socket as one open file description; after restore both are
/// back, each fd of the child the same socket as the parent's, and the
/// parent ticks on.
#[test]
fn sockets_shared_across_a_fork_round_trip() {
    require!(why_not_here());
    let mut sk = Sk::start("fork", &["fork"]);
    let criu = private_criu(&sk.dir);
    sk.ticks_on(2, "before the dump");
    let listeners = sk.listeners();
    let img = sk.images("img");
    dump_restore(&mut sk, &criu, &img, false, &[]);
    let all = live_with_exe(&sk.bin);
    assert_eq!(all.len(), 2, "the parent and its child: {all:?}");
    let child = all.into_iter().find(|&p| p != sk.pid).unwrap();
    let sockets = |pid: i32| -> Vec<(i32, String)> { common::fd_links(pid).into_iter().filter(|(fd, _)| (10..=16).contains(fd)).collect() };
    assert_eq!(sockets(child), sockets(sk.pid), "the child's sockets are the parent's");
    assert_eq!(sockets(child).len(), 7);
    assert_eq!(sk.listeners(), listeners, "listeners after restore");
}

/// What upstream refuses is refused by name, the program left running:
/// an established connection (without --tcp-close), a connection queued on
/// a listener and not accepted, a datagram queued on a UDP socket.
#[test]
fn unsupported_states_are_refused_by_name() {
    require!(why_not_here());
    for (word, want) in [
        ("established", "an established TCP connection 127.0.0.1:"),
        ("queued", "with 1 connection(s) queued and not accepted"),
        ("udpqueued", "with datagrams queued"),
    ] {
        let sk = Sk::start(&format!("refuse-{word}"), &[word]);
        let criu = private_criu(&sk.dir);
        sk.ticks_on(1, "before the dump");
        let img = sk.images("img");
        let (st, log) = criu_env(&criu, &["dump", "-t", &sk.pid.to_string()], &img, "dump.log", &[]);
        assert_eq!(st.code(), Some(1), "{word}: the dump must fail:\n{log}");
        assert!(log.contains(want) && log.contains("(inet socket)"), "{word}: the error must say {want:?}:\n{log}");
        sk.ticks_on(2, "after a refused dump");
    }
}

/// `--tcp-close`: a connection held by the program (both ends) is dumped
/// and restored closed (the program sees ENOTCONN on both ends and goes on
/// ticking); its images are restored only with `--tcp-close`, as upstream.
#[test]
fn tcp_close_restores_connections_closed() {
    require!(why_not_here());
    let mut sk = Sk::start("tcp-close", &["established"]);
    let criu = private_criu(&sk.dir);
    sk.ticks_on(2, "before the dump");
    let img = sk.images("img");
    criu_ok(&criu, &["dump", "-t", &sk.pid.to_string(), "--tcp-close"], &img, "dump.log");
    let inv: Vec<pb::InventoryEntry> = image::read_all(&img, "inventory.img", &magic::INVENTORY).unwrap();
    assert_eq!(inv[0].tcp_close, Some(true), "inventory tcp_close");
    let est: Vec<_> = inet_entries(&img).into_iter().filter(|e| e.state == 1 && e.proto == 6).collect();
    assert_eq!(est.len(), 2, "both ends of the connection in the image");
    sk.kill();
    let (st, log) = criu_env(&criu, &["restore", "-d"], &img, "restore-refused.log", &[]);
    assert_eq!(st.code(), Some(1), "a restore without --tcp-close must fail:\n{log}");
    assert!(log.contains("files.img") && log.contains("isk.state: a TCP connection (ESTABLISHED): restored only with --tcp-established (ESTABLISHED, FIN_WAIT1/2, CLOSE_WAIT, LAST_ACK and CLOSING ones) or --tcp-close (closed)"), "{log}");
    assert!(live_with_exe(&sk.bin).is_empty(), "a refused restore must not start anything");
    criu_ok(&criu, &["restore", "-d", "--tcp-close"], &img, "restore.log");
    sk.refind();
    wait_until("the program sees its connection closed", Duration::from_secs(5), || sk.work.join("closed").exists());
    sk.ticks_on(3, "after restore");
}

/// `--tcp-close` images both ways with upstream CRIU 4.2: its dump of the
/// program holding a connection restored by ours, ours restored by it;
/// each time the connection comes back closed and the program ticks on.
#[test]
fn tcp_close_images_both_ways_with_upstream() {
    require!(why_not_upstream());
    let mut sk = Sk::start("tcp-close-upstream", &["established"]);
    let criu = private_criu(&sk.dir);
    sk.ticks_on(2, "before the dump");
    let img = sk.images("img-up");
    upstream_ok(&["dump", "-t", &sk.pid.to_string(), "--tcp-close"], &img, "dump-upstream.log");
    wait_until("the dumped process gone", Duration::from_secs(5), || live_with_exe(&sk.bin).is_empty());
    criu_ok(&criu, &["restore", "-d", "--tcp-close"], &img, "restore.log");
    sk.refind();
    wait_until("the program sees its connection closed", Duration::from_secs(5), || sk.work.join("closed").exists());
    sk.ticks_on(3, "after our restore of upstream's dump");
    drop(sk);
    // ours of a fresh program restored by upstream
    let mut sk = Sk::start("tcp-close-to-upstream", &["established"]);
    let criu = private_criu(&sk.dir);
    sk.ticks_on(2, "before our dump");
    let img = sk.images("img-ours");
    criu_ok(&criu, &["dump", "-t", &sk.pid.to_string(), "--tcp-close"], &img, "dump.log");
    wait_until("the dumped process gone", Duration::from_secs(5), || live_with_exe(&sk.bin).is_empty());
    upstream_ok(&["restore", "-d", "--tcp-close"], &img, "restore-upstream.log");
    sk.refind();
    wait_until("closed after upstream's restore", Duration::from_secs(5), || sk.work.join("closed").exists());
    sk.ticks_on(3, "after upstream's restore of our dump");
}

/// Our image set restored by upstream CRIU 4.2: the program ticks on.
#[test]
fn upstream_restores_our_images() {
    require!(why_not_upstream());
    let mut sk = Sk::start("to-upstream", &[]);
    let criu = private_criu(&sk.dir);
    sk.ticks_on(2, "before the dump");
    let listeners = sk.listeners();
    let img = sk.images("img");
    sk.dump_between_connections(&criu, &img, "dump.log");
    sk.kill();
    upstream_ok(&["restore", "-d"], &img, "restore-upstream.log");
    sk.refind();
    sk.ticks_on(5, "after upstream's restore");
    assert_eq!(sk.listeners(), listeners, "listeners after upstream's restore");
}

/// Upstream CRIU 4.2's dump of the program restored by ours: it ticks on.
#[test]
fn we_restore_upstream_dumps() {
    require!(why_not_upstream());
    let mut sk = Sk::start("from-upstream", &[]);
    let criu = private_criu(&sk.dir);
    sk.ticks_on(2, "before the dump");
    let listeners = sk.listeners();
    let img = sk.images("img");
    sk.dump_between_connections(&upstream(), &img, "dump-upstream.log");
    assert_eq!(inet_entries(&img).len(), 7);
    wait_until("the dumped process gone", Duration::from_secs(5), || live_with_exe(&sk.bin).is_empty());
    criu_ok(&criu, &["restore", "-d"], &img, "restore.log");
    sk.refind();
    sk.ticks_on(5, "after our restore of upstream's dump");
    assert_eq!(sk.listeners(), listeners, "listeners after restore");
}

/// A copy of image set `img` with its first INETSK entry of `family` and
/// `proto` changed by `edit`.
fn edited(img: &Path, name: &str, proto: u32, family: u32, edit: impl FnOnce(&mut pb::InetSkEntry)) -> PathBuf {
    common::edited_image(img, name, "files.img", &magic::FILES, |files: &mut Vec<pb::FileEntry>| {
        edit(files.iter_mut().filter_map(|e| e.isk.as_mut()).find(|e| e.proto == proto && e.family == family).expect("such an INETSK entry"))
    })
}

/// Hostile images refused before anything is made, naming files.img and
/// the field: a family that is not inet, an address of the other family's
/// length, a state no socket is restored in, a protocol we do not
/// restore, a port past 65535.
#[test]
fn hostile_inet_images_are_refused() {
    require!(why_not_here());
    let sk = Sk::start("hostile", &[]);
    let criu = private_criu(&sk.dir);
    sk.ticks_on(1, "before the dump");
    let img = sk.images("img");
    sk.dump_between_connections(&criu, &img, "dump.log");
    sk.kill();
    let (tcp, udp, v4, v6) = (6, 17, 2, 10);
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        ("family", edited(&img, "bad-family", tcp, v4, |e| e.family = 1), "isk.family: 1 is neither AF_INET (2) nor AF_INET6 (10)"),
        ("v6 address in a v4 socket", edited(&img, "bad-addr", tcp, v4, |e| e.src_addr = vec![0, 0, 0, 0x0100_0000]), "isk.src_addr: 4 words for AF_INET (want 1)"),
        ("v4 address in a v6 socket", edited(&img, "bad-dst", udp, v6, |e| e.dst_addr = vec![0x0100_007f]), "isk.dst_addr: 1 words for AF_INET6 (want 4)"),
        ("state", edited(&img, "bad-state", tcp, v6, |e| e.state = 6), "isk.state: 6 (TIME_WAIT) is not a state of a TCP socket we restore"),
        ("udp state", edited(&img, "bad-udp-state", udp, v4, |e| e.state = 10), "isk.state: 10 (LISTEN) is not a state of a UDP socket we restore"),
        ("protocol", edited(&img, "bad-proto", udp, v4, |e| e.proto = 132), "isk.type/proto: type 2, protocol 132"),
        ("port", edited(&img, "bad-port", tcp, v4, |e| e.src_port = 70000), "isk.src_addr: port 70000 is past 65535"),
    ];
    for (what, dir, want) in cases {
        let (st, log) = criu_env(&criu, &["restore", "-d"], &dir, "restore.log", &[]);
        assert_eq!(st.code(), Some(1), "{what}: the restore must fail:\n{log}");
        assert!(log.contains("files.img") && log.contains(want), "{what}: the error must say {want:?}:\n{log}");
        assert!(live_with_exe(&sk.bin).is_empty(), "{what}: a refused image must not start anything");
    }
}
