//! The network namespace a tree's root owns, with tests/progs/netsk.c
//! (pid 1 of its own pid and net namespaces, `unshare --pid --net --fork`,
//! lo set up by `ip` before it runs): lo up or down with 127.42.0.1/16 on
//! it, net.unix.max_dgram_qlen 33, and in it a TCP listener, an
//! established TCP connection between the root and its child, a UDP
//! socket and a unix socketpair, all checked by the program every tick and
//! by the test from outside (nsenter). Dump + restore by ours twice, both
//! ways with upstream 4.2, `tfork --copies 2` (each clone in a network
//! namespace of its own, its copy of the in-tree connection working), a
//! veth device and a nested network namespace refused by name, hostile
//! images refused naming image and field. Needs root, gcc, unshare,
//! setsid, nsenter, ip, iptables and nft; upstream's tests its binary too.
//!
//! On main the dump fails ("dumping namespaces other than pid, time, uts
//! and ipc ones is not supported yet"): every test fails.

mod common;

use common::*;
use images_proto::image::{read_all, write_all};
use images_proto::magic as mg;
use images_proto::pb;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn why_not() -> Option<String> {
    why_not_here().or_else(|| why_not_tools(&["nsenter", "ip", "iptables-restore", "iptables-legacy-save", "nft"]))
}

/// A running netsk tree (its root pid 1 of its own pid and net
/// namespaces); every netsk of this test killed on drop.
struct Prog(OwnNsProg);

impl std::ops::Deref for Prog {
    type Target = OwnNsProg;
    fn deref(&self) -> &OwnNsProg {
        &self.0
    }
}

impl std::ops::DerefMut for Prog {
    fn deref_mut(&mut self) -> &mut OwnNsProg {
        &mut self.0
    }
}

impl Prog {
    /// `unshare --pid --net --fork setsid sh -c 'SETUP && exec netsk run MODE'`.
    fn start(tag: &str, mode: &str, setup: &str) -> Prog {
        Self::start_script(tag, &format!("{setup} && exec \"$0\" run {mode}"))
    }

    /// `unshare --pid --net --fork setsid sh -c SCRIPT netsk` (`$0` is the
    /// program).
    fn start_script(tag: &str, script: &str) -> Prog {
        Self::start_in(tag, &["--pid", "--net", "--fork"], script)
    }

    /// `unshare UNSHARE setsid sh -c SCRIPT netsk`.
    fn start_in(tag: &str, unshare: &[&str], script: &str) -> Prog {
        let p = Prog(OwnNsProg::launch(&format!("netns-{tag}"), "netsk", Find::OneTree, |bin| {
            let mut c = Command::new("unshare");
            c.args(unshare).args(["setsid", "sh", "-c", script]).arg(bin);
            c
        }));
        p.ticks_on(2, "at start");
        p
    }

    /// lo up with 127.42.0.1/16, max_dgram_qlen 33; the sockets of `up`.
    fn start_up(tag: &str) -> Prog {
        Self::start(tag, "up", "ip link set lo up && ip addr add 127.42.0.1/16 dev lo && echo 33 > /proc/sys/net/unix/max_dgram_qlen")
    }

    fn dump(&self, criu: &Path, img: &Path) {
        let args = ["dump", "-t", &self.pid.to_string(), "--tcp-established"];
        if criu == upstream() {
            upstream_ok(&args, img, "dump.log");
        } else {
            criu_ok(criu, &args, img, "dump.log");
        }
        self.gone();
    }

    /// Restore `img` with `criu` (ours or upstream's) in the working dir.
    fn restore(&mut self, criu: &Path, img: &Path) {
        self.restore_in_work(criu, img, &["--tcp-established"]);
    }

    /// What the test sees from outside: the tree's network namespace is
    /// not the host's, lo is up (or down) with 127.42.0.1/16, nothing of
    /// the dump's lock is left in it, and the root's child shares it.
    fn check_outside(&self, up: bool) {
        let me = std::process::id() as i32;
        assert_ne!(ns_link(self.pid, "net"), ns_link(me, "net"), "{} must be in a network namespace of its own", self.pid);
        for p in live_with_exe(&self.bin) {
            assert_eq!(ns_link(p, "net"), ns_link(self.pid, "net"), "{p} must be in its root's network namespace");
        }
        let addr = in_net(self.pid, &["ip", "-o", "addr", "show", "dev", "lo"]);
        assert!(addr.contains("inet 127.42.0.1/16"), "lo lacks 127.42.0.1/16:\n{addr}");
        let link = in_net(self.pid, &["ip", "-o", "link", "show", "dev", "lo"]);
        assert_eq!(link.contains("<LOOPBACK,UP,LOWER_UP>"), up, "lo's flags: {link}");
        let rules = in_net(self.pid, &["nft", "list", "ruleset"]);
        assert!(!rules.contains("CRIU"), "the network lock is still there:\n{rules}");
    }
}

/// `nsenter -t PID --net cmd...`: its trimmed stdout.
fn in_net(pid: i32, cmd: &[&str]) -> String {
    nsenter(pid, &["--net"], cmd)
}

fn ours(dir: &Path) -> PathBuf {
    engine_under_test(dir)
}

/// The images upstream 4.2 writes for such a namespace (ID: the root's
/// net namespace id, 10 here as upstream numbers it).
const NET_IMAGES: [&str; 9] =
    ["netdev-10.img", "netns-10.img", "ifaddr-10.img", "route-10.img", "route6-10.img", "rule-10.img", "iptables-10.img", "ip6tables-10.img", "nftables-10.img"];

/// Ours dumps and restores twice: lo up with its addresses, the sysctl,
/// and the tree's sockets in the namespace (listener, in-tree established
/// connection, UDP, unix) working after each restore.
#[test]
fn network_namespace_with_sockets_survives_dump_and_restore_twice() {
    test_support::require!(why_not());
    let mut p = Prog::start_up("rt");
    let criu = ours(&p.dir);
    for round in 0..2 {
        let img = p.images(&format!("img-{round}"));
        p.dump(&criu, &img);
        for f in NET_IMAGES {
            assert!(img.join(f).exists(), "round {round}: no {f} (upstream 4.2 writes it)");
        }
        let nft = std::fs::read_to_string(img.join("nftables-10.img")).unwrap();
        assert!(nft.contains("chain CRIU"), "the ruleset dumped holds the lock, as upstream's:\n{nft}");
        let streams = std::fs::read_dir(&img).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with("tcp-stream-")).count();
        assert_eq!(streams, 2, "round {round}: both ends of the in-tree connection carried");
        p.restore(&criu, &img);
        p.check_outside(true);
    }
}

/// lo down, with an address on it: restored down, the address kept.
#[test]
fn loopback_down_with_an_address_survives() {
    test_support::require!(why_not());
    let mut p = Prog::start("down", "down", "ip addr add 127.42.0.1/16 dev lo && echo 33 > /proc/sys/net/unix/max_dgram_qlen");
    let criu = ours(&p.dir);
    let img = p.images("img");
    p.dump(&criu, &img);
    let devs: Vec<pb::NetDeviceEntry> = read_all(&img, "netdev-10.img", &mg::NETDEV).unwrap();
    assert_eq!(devs.len(), 1);
    assert_eq!(devs[0].flags & libc::IFF_UP as u32, 0, "lo dumped down");
    p.restore(&criu, &img);
    p.check_outside(false);
}

/// Upstream 4.2's images of the tree restore here, and ours there; the
/// device and sysctl images of both are the same (crit's JSON).
#[test]
fn network_namespace_images_restore_both_ways_with_upstream() {
    test_support::require!(why_not_upstream());
    test_support::require!(why_not());
    let mut p = Prog::start_up("upstream");
    let criu = ours(&p.dir);
    let theirs = p.images("img-upstream");
    p.dump(&upstream(), &theirs);
    p.restore(&criu, &theirs);
    p.check_outside(true);
    let img = p.images("img-ours");
    p.dump(&criu, &img);
    let names = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| NET_IMAGES.iter().any(|k| k.split('-').next() == n.split('-').next()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&img), names(&theirs), "network namespace image files, ours vs upstream's");
    let json = |d: &Path, n: &str| images_proto::image::decode_image(&std::fs::read(d.join(n)).unwrap(), Path::new(n), false).unwrap();
    for n in ["netdev-10.img", "netns-10.img"] {
        assert_eq!(json(&img, n), json(&theirs, n), "{n}: ours vs upstream's");
    }
    p.restore(&upstream(), &img);
    p.check_outside(true);
}

/// A veth pair in the namespace is refused by name (device and driver),
/// and the tree runs on.
#[test]
fn veth_device_is_refused() {
    test_support::require!(why_not());
    let p = Prog::start(
        "veth",
        "up",
        "ip link set lo up && ip addr add 127.42.0.1/16 dev lo && echo 33 > /proc/sys/net/unix/max_dgram_qlen && ip link add v0 type veth peer name v1",
    );
    let criu = ours(&p.dir);
    let img = p.images("img");
    let (st, log) = criu_env(&criu, &["dump", "-t", &p.pid.to_string(), "--tcp-established"], &img, "dump.log", &[]);
    assert_eq!(st.code(), Some(1), "the dump must fail:\n{log}");
    assert!(log.contains("device v") && log.contains("driver veth") && log.contains("only the loopback device is supported"), "the error should name the veth device:\n{log}");
    assert!(!img.join("inventory.img").exists());
    p.ticks_on(3, "after the refused dump");
    let rules = in_net(p.pid, &["nft", "list", "ruleset"]);
    assert!(!rules.contains("CRIU"), "the refused dump left its lock:\n{rules}");
}

/// A process of the tree in another network namespace than its root's
/// is refused by name.
#[test]
fn nested_network_namespace_is_refused() {
    test_support::require!(why_not());
    // a sh root (pid 1) whose child netsk unshared a network namespace
    let setup = "ip addr add 127.42.0.1/16 dev lo && echo 33 > /proc/sys/net/unix/max_dgram_qlen";
    let p = Prog::start_script("nested", &format!("{setup}; unshare --net sh -c '{setup} && exec \"$0\" run down' \"$0\"; exit"));
    let root = std::fs::read_to_string(format!("/proc/{}/status", p.pid))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("PPid:").map(|v| v.trim().parse::<i32>().unwrap()))
        .unwrap();
    assert_ne!(ns_link(root, "net"), ns_link(p.pid, "net"), "the root sh and netsk must be in different network namespaces");
    let criu = ours(&p.dir);
    let img = p.images("img");
    let (st, log) = criu_env(&criu, &["dump", "-t", &root.to_string()], &img, "dump.log", &[]);
    assert_eq!(st.code(), Some(1), "the dump must fail:\n{log}");
    assert!(log.contains("nested net namespaces are not supported"), "the error should name the nested network namespace:\n{log}");
    assert!(!img.join("inventory.img").exists());
    p.ticks_on(3, "after the refused dump");
}

/// `--empty-ns net`: the namespace is not dumped (no image of it), and
/// the restored tree is in a new, empty one (lo down, no address, the
/// sysctl at its default), as upstream leaves it to the runtime.
#[test]
fn empty_ns_net_leaves_the_namespace_to_the_runtime() {
    test_support::require!(why_not());
    let mut p = Prog::start("empty", "bare", "ip link set lo up && ip addr add 127.42.0.1/16 dev lo && echo 33 > /proc/sys/net/unix/max_dgram_qlen");
    let criu = ours(&p.dir);
    let img = p.images("img");
    criu_ok(&criu, &["dump", "-t", &p.pid.to_string(), "--empty-ns", "net"], &img, "dump.log");
    p.gone();
    for f in NET_IMAGES {
        assert!(!img.join(f).exists(), "{f} written with --empty-ns net");
    }
    // without --empty-ns net the restore wants the namespace's images
    let (st, log) = criu_env(&criu, &["restore", "-d"], &img, "restore-bad.log", &[]);
    assert!(!st.success() && log.contains("netdev-10.img") && log.contains("missing"), "{log}");
    let st = Command::new(&criu).args(["restore", "-d", "--empty-ns", "net", "-v4", "-o", "restore.log", "-D"]).arg(&img).current_dir(&p.work).stdin(Stdio::null()).status().unwrap();
    assert!(st.success(), "restore --empty-ns net failed:\n{}", std::fs::read_to_string(img.join("restore.log")).unwrap_or_default());
    p.refind();
    p.ticks_on(3, "after restore");
    assert_ne!(ns_link(p.pid, "net"), ns_link(std::process::id() as i32, "net"));
    let link = in_net(p.pid, &["ip", "-o", "addr"]);
    assert!(!link.contains("127.42.0.1") && !link.contains("UP"), "an empty namespace expected:\n{link}");
}

/// The last tick the processes of network namespace `ns` logged.
fn tick_in(p: &Prog, ns: &str) -> u64 {
    p.log_text().lines().filter(|l| l.ends_with(ns)).filter_map(|l| l.strip_prefix("tick ")?.split_whitespace().next()?.parse().ok()).max().unwrap_or(0)
}

/// `tfork --copies 2` of the tree (`root`: its root pid): every clone
/// tree in a network namespace of its own (not the source's, not the
/// other's) with lo and its address, each with its own copy of the
/// in-tree connection, listener, UDP and unix sockets: the source and each
/// clone tick on alone (the others killed one by one).
fn tfork_keeps_in_tree_connections(p: &mut Prog, root: i32) {
    let criu = ours(&p.dir);
    let img = p.images("tfork");
    let (clones, _) = tfork_ok(&criu, root, 2, &[], &img, &[]);
    let trees: Vec<i32> = [root].into_iter().chain(clones.iter().copied()).collect();
    let nss: Vec<String> = trees.iter().map(|&t| ns_link(t, "net")).collect();
    assert!(nss[0] != nss[1] && nss[0] != nss[2] && nss[1] != nss[2], "network namespaces must all differ: {nss:?}");
    for &c in &clones {
        let addr = in_net(c, &["ip", "-o", "addr", "show", "dev", "lo"]);
        assert!(addr.contains("inet 127.42.0.1/16") && in_net(c, &["ip", "-o", "link", "show", "dev", "lo"]).contains("UP"), "clone {c}: lo as the source's:\n{addr}");
        assert!(!in_net(c, &["nft", "list", "ruleset"]).contains("CRIU"), "clone {c}: the lock is still there");
    }
    assert!(!in_net(root, &["nft", "list", "ruleset"]).contains("CRIU"), "the source's lock is still there");
    // each alone: the others killed one by one, it ticks on
    let mut alive: Vec<usize> = vec![0, 1, 2];
    for victim in [1, 0] {
        for &k in &alive {
            let t = tick_in(p, &nss[k]);
            wait_until(&format!("tree {} ticking", trees[k]), Duration::from_secs(20), || tick_in(p, &nss[k]) >= t + 3 || p.log_text().contains("FAIL"));
            assert!(!p.log_text().contains("FAIL"), "{}", p.log_text().lines().filter(|l| l.contains("FAIL")).collect::<Vec<_>>().join("\n"));
        }
        // (stopped first, then killed: none of it sees the other end go)
        let members: Vec<String> = live_with_exe(&p.bin).into_iter().filter(|&q| ns_link(q, "net") == nss[victim]).map(|q| q.to_string()).collect();
        assert!(!members.is_empty());
        Command::new("kill").arg("-STOP").args(&members).status().unwrap();
        Command::new("kill").arg("-KILL").args(&members).status().unwrap();
        alive.retain(|&k| k != victim);
    }
    let k = alive[0];
    let t = tick_in(p, &nss[k]);
    wait_until("the last tree ticking alone", Duration::from_secs(20), || tick_in(p, &nss[k]) >= t + 3 || p.log_text().contains("FAIL"));
    assert!(!p.log_text().contains("FAIL"));
}

/// tfork of a namespace init owning its network namespace.
#[test]
fn tfork_clones_get_their_own_network_namespaces_with_the_connection() {
    test_support::require!(why_not());
    let mut p = Prog::start_up("tfork");
    let root = p.pid;
    tfork_keeps_in_tree_connections(&mut p, root);
}

/// tfork of a tree of the host's pid namespace owning its network
/// namespace (`unshare --net`): sent down the restore path (a fork-made
/// clone would share it), the same.
#[test]
fn tfork_of_a_host_pid_namespace_tree_with_its_network_namespace() {
    test_support::require!(why_not());
    let mut p = Prog::start_in("tforkhost", &["--net"], "ip link set lo up && ip addr add 127.42.0.1/16 dev lo && echo 33 > /proc/sys/net/unix/max_dgram_qlen && exec \"$0\" run up");
    let root = p.pid;
    tfork_keeps_in_tree_connections(&mut p, root);
}

/// Hostile images of a network namespace: refused naming image and field.
#[test]
fn hostile_network_namespace_images_are_refused() {
    test_support::require!(why_not());
    let mut p = Prog::start_up("hostile");
    let criu = ours(&p.dir);
    let img = p.images("img");
    p.dump(&criu, &img);
    let devs: Vec<pb::NetDeviceEntry> = read_all(&img, "netdev-10.img", &mg::NETDEV).unwrap();
    let case = |tag: &str, f: &dyn Fn(&mut Vec<pb::NetDeviceEntry>), want: &[&str]| {
        let d = p.images(&format!("bad-{tag}"));
        for e in std::fs::read_dir(&img).unwrap().flatten() {
            std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
        }
        let mut v = devs.clone();
        f(&mut v);
        write_all(&d, "netdev-10.img", &mg::NETDEV, &v).unwrap();
        let (st, log) = criu_env(&criu, &["restore", "-d", "--tcp-established"], &d, "restore.log", &[]);
        assert!(!st.success(), "{tag}: the restore must fail");
        for w in want {
            assert!(log.contains(w), "{tag}: the error should say {w:?}:\n{log}");
        }
    };
    case("veth", &|v| v[0].r#type = 2, &["netdev-10.img", "entry 0, field type", "VETH"]);
    case("name", &|v| v[0].name = "a-name-much-too-long".into(), &["netdev-10.img", "field name"]);
    case("conf4", &|v| { let c = v[0].conf4.clone(); v[0].conf4.extend(c) }, &["netdev-10.img", "field conf4", "60 values"]);
    case("ctltype", &|v| v[0].conf6[35].r#type = 6, &["netdev-10.img", "field conf6", "stable_secret"]);
    // a missing netdev image
    let d = p.images("bad-missing");
    for e in std::fs::read_dir(&img).unwrap().flatten() {
        if e.file_name() != "netdev-10.img" {
            std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
        }
    }
    let (st, log) = criu_env(&criu, &["restore", "-d", "--tcp-established"], &d, "restore.log", &[]);
    assert!(!st.success() && log.contains("netdev-10.img") && log.contains("missing"), "a missing netdev image:\n{log}");
    // the good images still restore
    p.restore(&criu, &img);
    p.check_outside(true);
}
