//! The network namespace a tree's root owns (a container's, `unshare -n`),
//! all three halves, as upstream CRIU 4.2 images it:
//!
//! - dump ([`collect`]): a thread of the engine setns(2)'s into the
//!   namespace (a net namespace can be entered by one thread of a
//!   multi-threaded process) and reads its devices (only the loopback one
//!   is supported: any other is refused naming it and its driver), lo's
//!   flags and MTU (netdevice(7) ioctls), the ipv4/ipv6 conf sysctls of lo,
//!   `default` and `all` and net.unix.max_dgram_qlen (/proc/sys/net is
//!   resolved per the reader's namespace), and runs, from that thread (a
//!   child inherits the thread's namespace), the same tools upstream runs
//!   for the blobs it stores: `ip addr save`, `ip route save`, `ip -6
//!   route save`, `ip rule save` (iproute2's binary dumps of rtnetlink
//!   messages), `iptables-legacy-save`, `ip6tables-legacy-save` (text) and
//!   `nft list ruleset` (text). The namespace is locked first as upstream
//!   locks it ([`lock`]: a `CRIU` chain in filter's INPUT and OUTPUT that
//!   drops every packet not marked 0xc114), so the ruleset dumped holds
//!   the lock, and a restore by either engine starts locked and lifts it
//!   ([`unlock_in`]) once the tree runs. Sock_diag sockets of the dump
//!   ([`diag_socket`]) are made in the tree's namespace.
//! - images ([`write_images`], [`read_images`]): netdev-ID.img (one
//!   `net_device_entry` per device: lo), netns-ID.img (`netns_entry`:
//!   def/all conf4/conf6, unix_conf), ifaddr-ID.img, route-ID.img,
//!   route6-ID.img, rule-ID.img, iptables-ID.img, ip6tables-ID.img,
//!   nftables-ID.img (the tools' output as it is). ID is the root's net
//!   namespace id. Read back, every value is checked, errors naming the
//!   image, entry and field.
//! - restore ([`enter`]: the tree's root, before it forks the others):
//!   unshare(CLONE_NEWNET), the sysctls that differ from the new
//!   namespace's, lo's MTU and flags, then `ip addr restore`, `ip route
//!   restore`, `ip -6 route restore`, `ip rule restore`,
//!   `iptables-legacy-restore`, `ip6tables-legacy-restore`, `nft -f -` fed
//!   the blobs; the tree's sockets are made after, inside it.

use crate::images_io::field_error as bad;
use crate::images_io::ImagesError;
use crate::model::KobjIds;
use crate::sys::netdev;
use crate::sys::Pid;
use images_proto::image::{read_all, write_all};
use images_proto::magic as mg;
use images_proto::pb;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// The ipv4 per-device sysctls, in the order of upstream's images
/// (`conf4`, `def_conf4`, `all_conf4` are positional).
pub const DEVCONFS4: [&str; 30] = [
    "accept_local",
    "accept_redirects",
    "accept_source_route",
    "arp_accept",
    "arp_announce",
    "arp_filter",
    "arp_ignore",
    "arp_notify",
    "bootp_relay",
    "disable_policy",
    "disable_xfrm",
    "force_igmp_version",
    "forwarding",
    "igmpv2_unsolicited_report_interval",
    "igmpv3_unsolicited_report_interval",
    "log_martians",
    "medium_id",
    "promote_secondaries",
    "proxy_arp",
    "proxy_arp_pvlan",
    "route_localnet",
    "rp_filter",
    "secure_redirects",
    "send_redirects",
    "shared_media",
    "src_valid_mark",
    "tag",
    "ignore_routes_with_linkdown",
    "drop_gratuitous_arp",
    "drop_unicast_in_l2_multicast",
];

/// The ipv6 per-device sysctls, in the order of upstream's images.
pub const DEVCONFS6: [&str; 42] = [
    "accept_dad",
    "accept_ra",
    "accept_ra_defrtr",
    "accept_ra_from_local",
    "accept_ra_min_hop_limit",
    "accept_ra_mtu",
    "accept_ra_pinfo",
    "accept_ra_rt_info_max_plen",
    "accept_ra_rtr_pref",
    "accept_redirects",
    "accept_source_route",
    "autoconf",
    "dad_transmits",
    "disable_ipv6",
    "drop_unicast_in_l2_multicast",
    "drop_unsolicited_na",
    "force_mld_version",
    "force_tllao",
    "forwarding",
    "hop_limit",
    "ignore_routes_with_linkdown",
    "keep_addr_on_down",
    "max_addresses",
    "max_desync_factor",
    "mldv1_unsolicited_report_interval",
    "mldv2_unsolicited_report_interval",
    "mtu",
    "ndisc_notify",
    "optimistic_dad",
    "proxy_ndp",
    "regen_max_retry",
    "router_probe_interval",
    "router_solicitation_delay",
    "router_solicitation_interval",
    "router_solicitations",
    "stable_secret",
    "suppress_frag_ndisc",
    "temp_prefered_lft",
    "temp_valid_lft",
    "use_oif_addrs_only",
    "use_optimistic",
    "use_tempaddr",
];

/// The one string sysctl of the lists (its read fails with EIO until set).
const STR_CONF: &str = "stable_secret";
/// Longest string sysctl value kept (upstream's limit).
const MAX_STR_CONF: usize = 200;
/// The net.unix sysctls of `unix_conf`.
const UNIX_CONFS: [&str; 1] = ["max_dgram_qlen"];
/// The largest blob (ip/iptables/nft dump) read back from an image.
pub const BLOB_MAX: u64 = 64 << 20;

/// One sysctl value as the images hold it: an int or a string, absent
/// when this kernel lacks the file (or a string sysctl is unset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ctl {
    Int(Option<i32>),
    Str(Option<String>),
}

/// A network device of the namespace (only the loopback one is carried).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    pub mtu: u32,
    /// As rtnetlink shows them (IFF_LOWER_UP included).
    pub flags: u32,
    pub conf4: Vec<Ctl>,
    pub conf6: Vec<Ctl>,
}

/// A network namespace: its devices, sysctls, and the tools' dumps of its
/// addresses, routes, rules and firewall.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetNs {
    /// `--empty-ns net`: nothing of it is dumped or restored; restore
    /// makes a new, empty one (the runtime sets it up).
    pub empty: bool,
    /// `--external net[INO]:KEY` at dump: the namespace is the runtime's,
    /// not dumped (netns-ID.img holds only this key, as upstream writes
    /// it); restore joins the one given with `--inherit-fd fd[N]:KEY`.
    pub ext_key: Option<String>,
    pub links: Vec<Link>,
    pub def4: Vec<Ctl>,
    pub all4: Vec<Ctl>,
    pub def6: Vec<Ctl>,
    pub all6: Vec<Ctl>,
    pub unix: Vec<Ctl>,
    pub ifaddr: Vec<u8>,
    pub route: Vec<u8>,
    pub route6: Vec<u8>,
    pub rule: Vec<u8>,
    pub iptables: Option<Vec<u8>>,
    pub ip6tables: Option<Vec<u8>>,
    pub nftables: Option<Vec<u8>>,
}

/// Run `f` in a thread of the engine that entered the network namespace
/// `ns` (what it spawns is in it too).
pub fn in_ns<T: Send>(ns: &OwnedFd, f: impl FnOnce() -> Result<T, String> + Send) -> Result<T, String> {
    std::thread::scope(|s| {
        s.spawn(|| {
            crate::sys::ns::setns(ns.as_fd(), libc::CLONE_NEWNET).map_err(|e| format!("entering its network namespace: {e}"))?;
            f()
        })
        .join()
        .map_err(|_| "the thread working in its network namespace panicked".to_string())?
    })
}

/// The network namespace of `pid`, opened.
pub fn open(pid: Pid) -> Result<OwnedFd, String> {
    std::fs::File::open(format!("/proc/{pid}/ns/net")).map(OwnedFd::from).map_err(|e| format!("opening the network namespace of {pid}: {e}"))
}

/// `--empty-ns net` (dump, restore, tfork): the namespace is left to the
/// runtime, as upstream leaves it.
static EMPTY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Set from `--empty-ns` / `criu_opts.empty_ns` before a dump, restore or
/// tfork.
pub fn set_empty(on: bool) {
    EMPTY.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// `--external net[INO]:KEY` (dump): the tree's namespace of inode INO
/// is the runtime's, recorded by its key only.
static EXTERNAL: Mutex<Option<(u64, String)>> = Mutex::new(None);

/// Set from `--external net[INO]:KEY` / `criu_opts.external` before a dump.
pub fn set_external(ext: Option<(u64, String)>) {
    *EXTERNAL.lock().unwrap_or_else(|p| p.into_inner()) = ext;
}

/// The tree's namespace as the dump takes it: its key when external
/// (`--external net[INO]:KEY`, even with `--empty-ns net`, as upstream),
/// empty with `--empty-ns net`, else read from inside ([`collect`]).
pub fn collect_or_empty(pid: Pid) -> Result<NetNs, String> {
    if let Some((ino, key)) = EXTERNAL.lock().unwrap_or_else(|p| p.into_inner()).clone() {
        use std::os::unix::fs::MetadataExt;
        let theirs = std::fs::metadata(format!("/proc/{pid}/ns/net")).map_err(|e| format!("its network namespace: {e}"))?.ino();
        if theirs != ino {
            return Err(format!("--external net[{ino}]:{key} names no network namespace of the tree (its root's is net:[{theirs}])"));
        }
        crate::pr_info!("the network namespace net:[{ino}] of {pid} is external ({key}): not dumped");
        return Ok(NetNs { ext_key: Some(key), ..Default::default() });
    }
    if EMPTY.load(std::sync::atomic::Ordering::Relaxed) {
        crate::pr_info!("--empty-ns net: the network namespace of {pid} is not dumped");
        return Ok(NetNs { empty: true, ..Default::default() });
    }
    collect(pid)
}

/// Whether `pid` is in a network namespace other than the engine's.
pub fn owns(pid: Pid) -> bool {
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
    theirs.is_some() && theirs != std::fs::read_link("/proc/self/ns/net").ok()
}

/// The dump's hold on the tree's network namespace: its fd (sock_diag
/// sockets are made in it) and whether it was locked.
struct DumpNs {
    ns: OwnedFd,
    locked: bool,
}

static DUMP_NS: Mutex<Option<DumpNs>> = Mutex::new(None);

/// A NETLINK_SOCK_DIAG socket of the dumped tree's network namespace when
/// it has one of its own, else of the engine's.
pub fn diag_socket() -> std::io::Result<OwnedFd> {
    let g = DUMP_NS.lock().unwrap_or_else(|p| p.into_inner());
    match &*g {
        None => crate::sys::sock::diag_socket(),
        Some(d) => in_ns(&d.ns, || crate::sys::sock::diag_socket().map_err(|e| e.to_string())).map_err(std::io::Error::other),
    }
}

/// The tree's network namespace (root `pid`'s) for the dump: held for
/// [`diag_socket`], and locked (`lock`: not with `--network-lock skip`).
pub fn begin_dump(pid: Pid, lock_it: bool) -> Result<(), String> {
    let ns = open(pid)?;
    if lock_it {
        in_ns(&ns, lock)?;
    }
    *DUMP_NS.lock().unwrap_or_else(|p| p.into_inner()) = Some(DumpNs { ns, locked: lock_it });
    Ok(())
}

/// The end of a dump: the namespace let go, its lock lifted if the tree
/// runs on (`running`: a killed tree's namespace goes with it, as
/// upstream leaves it).
pub fn end_dump(running: bool) {
    let Some(d) = DUMP_NS.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
    if d.locked && running {
        if let Err(e) = in_ns(&d.ns, unlock) {
            crate::pr_err!("unlocking the dumped tree's network namespace: {e}");
        }
    }
}

/// Whether the dump holds a network namespace of the tree's (its
/// connections are locked with it, not one by one).
pub fn dumping_own() -> bool {
    DUMP_NS.lock().unwrap_or_else(|p| p.into_inner()).is_some()
}

/// iptables-restore input of the lock (`-I`) and of its removal, per
/// family, as upstream's.
const LOCK_RULES: &str = "*filter\n:CRIU - [0:0]\n-I INPUT -j CRIU\n-I OUTPUT -j CRIU\n-A CRIU -m mark --mark 0xC114 -j ACCEPT\n-A CRIU -j DROP\nCOMMIT\n";
// (-F before -X: iptables-nft refuses to delete a chain that still has
// rules in the same transaction)
const UNLOCK_RULES: &str = "*filter\n-D INPUT -j CRIU\n-D OUTPUT -j CRIU\n-F CRIU\n-X CRIU\nCOMMIT\n";

/// Run `cmd args` with `input` on its stdin (a memfd: `ip ... restore`
/// wants a seekable file); its stdout.
fn run(cmd: &str, args: &[&str], input: &[u8]) -> Result<Vec<u8>, String> {
    let shown = format!("{cmd} {}", args.join(" "));
    let mut f = std::fs::File::from(crate::sys::process::memfd_create(c"criu-rs-netns", libc::MFD_CLOEXEC).map_err(|e| format!("memfd for `{shown}`: {e}"))?);
    f.write_all(input).map_err(|e| format!("input of `{shown}`: {e}"))?;
    std::io::Seek::rewind(&mut f).map_err(|e| format!("input of `{shown}`: {e}"))?;
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::from(f))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("running `{shown}` (a network namespace needs iproute2, iptables and nftables): {e}"))?;
    if !out.status.success() {
        return Err(format!("`{shown}` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(out.stdout)
}

/// In the namespace: the lock of every packet not marked 0xc114.
fn lock() -> Result<(), String> {
    for cmd in ["iptables-restore", "ip6tables-restore"] {
        run(cmd, &["-w", "--noflush"], LOCK_RULES.as_bytes()).map_err(|e| format!("locking its network namespace: {e}"))?;
    }
    crate::pr_info!("network namespace locked (chain CRIU)");
    Ok(())
}

/// In the namespace: the lock lifted.
fn unlock() -> Result<(), String> {
    let mut errs = Vec::new();
    for cmd in ["iptables-restore", "ip6tables-restore"] {
        if let Err(e) = run(cmd, &["-w", "--noflush"], UNLOCK_RULES.as_bytes()) {
            errs.push(e);
        }
    }
    if errs.is_empty() {
        crate::pr_info!("network namespace unlocked");
        Ok(())
    } else {
        Err(errs.join("; "))
    }
}

/// After a restore: the lock the namespace of the restored root (host
/// pid `pid`) came back with, lifted (a namespace without it: a warning).
pub fn unlock_in(pid: Pid) {
    match open(pid).and_then(|ns| in_ns(&ns, unlock)) {
        Ok(()) => {}
        Err(e) => crate::pr_warn!("lifting the network lock of the restored namespace: {e}"),
    }
}

fn read_ctl(path: &str, is_str: bool) -> Ctl {
    match std::fs::read_to_string(path) {
        Ok(s) if is_str => {
            let s = s.trim_end_matches('\n').to_string();
            Ctl::Str((s.len() <= MAX_STR_CONF).then_some(s))
        }
        Ok(s) => Ctl::Int(s.trim().parse().ok()),
        Err(_) if is_str => Ctl::Str(None),
        Err(_) => Ctl::Int(None),
    }
}

fn read_confs(proto: &str, tgt: &str, names: &[&str]) -> Vec<Ctl> {
    names.iter().map(|n| read_ctl(&format!("/proc/sys/net/{proto}/conf/{tgt}/{n}"), *n == STR_CONF)).collect()
}

/// Read the network namespace of `pid` (the tree's root) from inside it.
pub fn collect(pid: Pid) -> Result<NetNs, String> {
    let ns = open(pid)?;
    in_ns(&ns, collect_here)
}

fn collect_here() -> Result<NetNs, String> {
    let s = netdev::ctl_socket().map_err(|e| format!("a socket in its network namespace: {e}"))?;
    let mut links = Vec::new();
    for (ifindex, name) in netdev::list().map_err(|e| format!("listing its network devices: {e}"))? {
        let shown = String::from_utf8_lossy(&name).into_owned();
        let hw = netdev::hw_type(s.as_fd(), &name).map_err(|e| format!("SIOCGIFHWADDR of its device {shown}: {e}"))?;
        if hw != netdev::ARPHRD_LOOPBACK {
            let driver = netdev::driver(s.as_fd(), &name).unwrap_or_else(|_| "no ethtool driver name".to_string());
            return Err(format!(
                "its network namespace has device {shown} (ifindex {ifindex}, driver {driver}, ARPHRD {hw}): only the loopback device is supported yet (veth, tun, macvlan, bridge and other devices are not)"
            ));
        }
        let name = String::from_utf8(name).map_err(|_| format!("its device {shown}: a name that is not UTF-8"))?;
        let mut flags = u32::from(netdev::flags(s.as_fd(), name.as_bytes()).map_err(|e| format!("SIOCGIFFLAGS of {name}: {e}"))?);
        // (SIOCGIFFLAGS has 16 bits; a running loopback has its carrier)
        if flags & libc::IFF_RUNNING as u32 != 0 {
            flags |= netdev::IFF_LOWER_UP;
        }
        let mtu = netdev::mtu(s.as_fd(), name.as_bytes()).map_err(|e| format!("SIOCGIFMTU of {name}: {e}"))?;
        links.push(Link { ifindex, conf4: read_confs("ipv4", &name, &DEVCONFS4), conf6: read_confs("ipv6", &name, &DEVCONFS6), name, mtu, flags });
    }
    let unix = UNIX_CONFS.iter().map(|n| read_ctl(&format!("/proc/sys/net/unix/{n}"), false)).collect();
    let ip = |args: &[&str]| run("ip", args, b"");
    let mut n = NetNs {
        links,
        def4: read_confs("ipv4", "default", &DEVCONFS4),
        all4: read_confs("ipv4", "all", &DEVCONFS4),
        def6: read_confs("ipv6", "default", &DEVCONFS6),
        all6: read_confs("ipv6", "all", &DEVCONFS6),
        unix,
        ifaddr: ip(&["addr", "save"])?,
        route: ip(&["route", "save"])?,
        route6: ip(&["-6", "route", "save"])?,
        rule: ip(&["rule", "save"])?,
        ..Default::default()
    };
    n.iptables = Some(run("iptables-legacy-save", &[], b"")?);
    n.ip6tables = Some(run("ip6tables-legacy-save", &[], b"")?);
    n.nftables = Some(run("nft", &["list", "ruleset"], b"")?);
    crate::pr_debug!("network namespace: {} device(s), {} bytes of addresses, {} of nft rules", n.links.len(), n.ifaddr.len(), n.nftables.as_ref().map_or(0, Vec::len));
    Ok(n)
}

fn ctl_pb(c: &Ctl) -> pb::SysctlEntry {
    match c {
        Ctl::Int(v) => pb::SysctlEntry { r#type: pb::SysctlType::Ctl32 as i32, iarg: *v, sarg: None },
        Ctl::Str(v) => pb::SysctlEntry { r#type: pb::SysctlType::CtlStr as i32, iarg: None, sarg: v.clone() },
    }
}

fn ctls_pb(v: &[Ctl]) -> Vec<pb::SysctlEntry> {
    v.iter().map(ctl_pb).collect()
}

/// The raw images, by their magic table names and the model's field.
fn blobs(n: &NetNs) -> [(&'static str, Option<&Vec<u8>>); 7] {
    [
        ("ifaddr", Some(&n.ifaddr)),
        ("route", Some(&n.route)),
        ("route6", Some(&n.route6)),
        ("rule", Some(&n.rule)),
        ("iptables", n.iptables.as_ref()),
        ("ip6tables", n.ip6tables.as_ref()),
        ("nftables", n.nftables.as_ref()),
    ]
}

/// LOOPBACK of `nd_type`.
const ND_LOOPBACK: i32 = 1;

/// Write the images of the root's own network namespace (`id`: its net
/// namespace id), as upstream 4.2 does.
pub fn write_images(dir: &Path, n: &NetNs, id: u32) -> Result<(), ImagesError> {
    if let Some(key) = &n.ext_key {
        // as upstream: netns-ID.img with the key alone
        let e = pb::NetnsEntry { ext_key: Some(key.clone()), ..Default::default() };
        write_all(dir, &mg::NETNS.file_name(id), &mg::NETNS, &[e])?;
        return Ok(());
    }
    if n.empty {
        return Ok(());
    }
    let devs: Vec<pb::NetDeviceEntry> = n
        .links
        .iter()
        .map(|l| pb::NetDeviceEntry {
            r#type: ND_LOOPBACK,
            ifindex: l.ifindex,
            mtu: l.mtu,
            flags: l.flags,
            name: l.name.clone(),
            conf4: ctls_pb(&l.conf4),
            conf6: ctls_pb(&l.conf6),
            // (as upstream writes lo: its own link, in this namespace)
            peer_ifindex: Some(l.ifindex),
            peer_nsid: Some(id),
            ..Default::default()
        })
        .collect();
    write_all(dir, &mg::NETDEV.file_name(id), &mg::NETDEV, &devs)?;
    let e = pb::NetnsEntry {
        def_conf4: ctls_pb(&n.def4),
        all_conf4: ctls_pb(&n.all4),
        def_conf6: ctls_pb(&n.def6),
        all_conf6: ctls_pb(&n.all6),
        unix_conf: ctls_pb(&n.unix),
        ..Default::default()
    };
    write_all(dir, &mg::NETNS.file_name(id), &mg::NETNS, &[e])?;
    for (kind, data) in blobs(n) {
        let Some(data) = data else { continue };
        let name = format!("{kind}-{id}.img");
        std::fs::write(dir.join(&name), data).map_err(|source| ImagesError::Io { file: name, source })?;
    }
    Ok(())
}


/// Sysctl entries of `field` checked against `names` (at most as many,
/// each of the type its name has, a string at most 200 bytes without NUL).
fn ctls_from(v: &[pb::SysctlEntry], names: &[&str], file: &str, entry: usize, field: &str) -> Result<Vec<Ctl>, ImagesError> {
    if v.len() > names.len() {
        return Err(bad(file, Some(entry), field, format!("{} values, at most {} are known", v.len(), names.len())));
    }
    v.iter()
        .zip(names)
        .enumerate()
        .map(|(k, (e, name))| {
            let is_str = *name == STR_CONF;
            match (pb::SysctlType::try_from(e.r#type), is_str) {
                (Ok(pb::SysctlType::Ctl32), false) => Ok(Ctl::Int(e.iarg)),
                (Ok(pb::SysctlType::CtlStr), true) => match &e.sarg {
                    Some(s) if s.len() > MAX_STR_CONF || s.contains('\0') => Err(bad(file, Some(entry), field, format!("value {k} ({name}): a string of {} bytes or with a NUL", s.len()))),
                    s => Ok(Ctl::Str(s.clone())),
                },
                _ => Err(bad(file, Some(entry), field, format!("value {k} ({name}): type {} is not its type", e.r#type))),
            }
        })
        .collect()
}

/// The root's own network namespace from the image set, when its net
/// namespace id differs from inventory's `root_ids` (0: not recorded).
pub fn read_images(dir: &Path, ids: &KobjIds, root_ids: &KobjIds) -> Result<Option<NetNs>, ImagesError> {
    let (id, root) = (ids.net_ns, root_ids.net_ns);
    if id == 0 || root == 0 || id == root {
        return Ok(None);
    }
    // an external one (netns-ID.img with ext_key only): joined at restore
    // through --inherit-fd fd[N]:KEY (crate::inherit)
    let nname = mg::NETNS.file_name(id);
    if dir.join(&nname).exists() {
        let v: Vec<pb::NetnsEntry> = read_all(dir, &nname, &mg::NETNS)?;
        if let Some(key) = v.first().and_then(|e| e.ext_key.clone()) {
            if v.len() > 1 {
                return Err(bad(&nname, None, "entries", format!("{} entries, want 1", v.len())));
            }
            match crate::inherit::classify(&key) {
                Ok(crate::inherit::Key::Name(_)) => return Ok(Some(NetNs { ext_key: Some(key), ..Default::default() })),
                Ok(_) => return Err(bad(&nname, Some(0), "ext_key", format!("{key:?} is a pipe's key, not a namespace's name"))),
                Err(e) => return Err(bad(&nname, Some(0), "ext_key", e)),
            }
        }
    }
    if EMPTY.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(Some(NetNs { empty: true, ..Default::default() }));
    }
    let name = mg::NETDEV.file_name(id);
    if !dir.join(&name).exists() {
        return Err(ImagesError::Bad {
            file: name,
            what: format!("missing, but the root's net_ns_id {id} (its ids image) is not inventory's root_ids.net_ns_id {root}: its namespace has no image"),
        });
    }
    let devs: Vec<pb::NetDeviceEntry> = read_all(dir, &name, &mg::NETDEV)?;
    let mut links = Vec::new();
    for (i, d) in devs.iter().enumerate() {
        if d.r#type != ND_LOOPBACK {
            let kind = pb::NdType::try_from(d.r#type).map(|t| t.as_str_name().to_string()).unwrap_or_else(|_| d.r#type.to_string());
            return Err(bad(&name, Some(i), "type", format!("device {:?} is of type {kind}: only the loopback device is supported yet", d.name)));
        }
        if d.name.is_empty() || d.name.len() >= libc::IFNAMSIZ || d.name.contains(['\0', '/']) {
            return Err(bad(&name, Some(i), "name", format!("{:?} is not a device name", d.name)));
        }
        if links.iter().any(|l: &Link| l.name == d.name) || d.ifindex != 1 {
            return Err(bad(&name, Some(i), "ifindex", format!("{} ({:?}): the loopback device is ifindex 1, once", d.ifindex, d.name)));
        }
        if d.mtu == 0 || d.mtu > i32::MAX as u32 {
            return Err(bad(&name, Some(i), "mtu", format!("{} is not an MTU", d.mtu)));
        }
        links.push(Link {
            ifindex: d.ifindex,
            name: d.name.clone(),
            mtu: d.mtu,
            flags: d.flags,
            conf4: ctls_from(&d.conf4, &DEVCONFS4, &name, i, "conf4")?,
            conf6: ctls_from(&d.conf6, &DEVCONFS6, &name, i, "conf6")?,
        });
    }
    let nname = mg::NETNS.file_name(id);
    let v: Vec<pb::NetnsEntry> = if dir.join(&nname).exists() { read_all(dir, &nname, &mg::NETNS)? } else { Vec::new() };
    let mut n = NetNs { links, ..Default::default() };
    if let Some(e) = v.first() {
        if v.len() > 1 {
            return Err(bad(&nname, None, "entries", format!("{} entries, want 1", v.len())));
        }
        n.def4 = ctls_from(&e.def_conf4, &DEVCONFS4, &nname, 0, "def_conf4")?;
        n.all4 = ctls_from(&e.all_conf4, &DEVCONFS4, &nname, 0, "all_conf4")?;
        n.def6 = ctls_from(&e.def_conf6, &DEVCONFS6, &nname, 0, "def_conf6")?;
        n.all6 = ctls_from(&e.all_conf6, &DEVCONFS6, &nname, 0, "all_conf6")?;
        n.unix = ctls_from(&e.unix_conf, &UNIX_CONFS, &nname, 0, "unix_conf")?;
    }
    let read_blob = |kind: &str| -> Result<Option<Vec<u8>>, ImagesError> {
        let file = format!("{kind}-{id}.img");
        let path = dir.join(&file);
        if !path.exists() {
            return Ok(None);
        }
        let f = images_proto::image::open_regular(&path)?;
        let len = f.metadata().map_err(|source| ImagesError::Io { file: file.clone(), source })?.len();
        if len > BLOB_MAX {
            return Err(bad(&file, None, "size", format!("{len} bytes, at most {BLOB_MAX}")));
        }
        let mut b = Vec::with_capacity(len as usize);
        std::io::Read::read_to_end(&mut std::io::Read::take(f, BLOB_MAX), &mut b).map_err(|source| ImagesError::Io { file, source })?;
        Ok(Some(b))
    };
    n.ifaddr = read_blob("ifaddr")?.unwrap_or_default();
    n.route = read_blob("route")?.unwrap_or_default();
    n.route6 = read_blob("route6")?.unwrap_or_default();
    n.rule = read_blob("rule")?.unwrap_or_default();
    n.iptables = read_blob("iptables")?;
    n.ip6tables = read_blob("ip6tables")?;
    n.nftables = read_blob("nftables")?;
    Ok(Some(n))
}

/// Write `ctl` to `path` when it differs from what is there (a value this
/// kernel lacks, or an unset string, is skipped).
fn write_ctl(path: &str, ctl: &Ctl) -> Result<(), String> {
    let want = match ctl {
        Ctl::Int(Some(v)) => v.to_string(),
        Ctl::Str(Some(s)) => s.clone(),
        _ => return Ok(()),
    };
    let now = std::fs::read_to_string(path).map(|s| s.trim_end_matches('\n').to_string()).ok();
    if now.as_deref().map(str::trim) == Some(want.as_str()) {
        return Ok(());
    }
    std::fs::write(path, &want).map_err(|e| format!("writing {want:?} to {path} (it is {:?}): {e}", now.unwrap_or_default()))
}

fn write_confs(proto: &str, tgt: &str, names: &[&str], v: &[Ctl]) -> Result<(), String> {
    // (accept_redirects last: it depends on forwarding, as upstream orders it)
    let order = names.iter().zip(v).filter(|(n, _)| **n != "accept_redirects").chain(names.iter().zip(v).filter(|(n, _)| **n == "accept_redirects"));
    for (n, c) in order {
        write_ctl(&format!("/proc/sys/net/{proto}/conf/{tgt}/{n}"), c)?;
    }
    Ok(())
}

/// In the tree's root, before it forks (single-threaded, /proc still
/// the host's): a new network namespace made as the images describe it.
pub fn enter(n: &NetNs) -> Result<(), String> {
    crate::sys::ns::unshare(libc::CLONE_NEWNET).map_err(|e| format!("unshare of a new network namespace: {e}"))?;
    if n.empty {
        return Ok(());
    }
    for (k, c) in UNIX_CONFS.iter().zip(&n.unix) {
        write_ctl(&format!("/proc/sys/net/unix/{k}"), c)?;
    }
    write_confs("ipv4", "all", &DEVCONFS4, &n.all4)?;
    write_confs("ipv4", "default", &DEVCONFS4, &n.def4)?;
    write_confs("ipv6", "all", &DEVCONFS6, &n.all6)?;
    write_confs("ipv6", "default", &DEVCONFS6, &n.def6)?;
    let s = netdev::ctl_socket().map_err(|e| format!("a socket in the new network namespace: {e}"))?;
    for l in &n.links {
        let name = l.name.as_bytes();
        if netdev::mtu(s.as_fd(), name).map_err(|e| format!("SIOCGIFMTU of {}: {e}", l.name))? != l.mtu {
            netdev::set_mtu(s.as_fd(), name, l.mtu).map_err(|e| format!("setting the MTU of {} to {}: {e}", l.name, l.mtu))?;
        }
        write_confs("ipv4", &l.name, &DEVCONFS4, &l.conf4)?;
        write_confs("ipv6", &l.name, &DEVCONFS6, &l.conf6)?;
        let now = netdev::flags(s.as_fd(), name).map_err(|e| format!("SIOCGIFFLAGS of {}: {e}", l.name))?;
        let up = libc::IFF_UP as u16;
        if (l.flags as u16 & up) != (now & up) {
            netdev::set_flags(s.as_fd(), name, (now & !up) | (l.flags as u16 & up)).map_err(|e| format!("setting the flags of {} to {:#x}: {e}", l.name, l.flags))?;
        }
    }
    let feed = |what: &str, cmd: &str, args: &[&str], data: &[u8]| -> Result<(), String> {
        run(cmd, args, data).map(drop).map_err(|e| format!("restoring its {what}: {e}"))
    };
    feed("addresses", "ip", &["addr", "restore"], &n.ifaddr)?;
    feed("routes", "ip", &["route", "restore"], &n.route)?;
    feed("ipv6 routes", "ip", &["-6", "route", "restore"], &n.route6)?;
    // (a new namespace has the default rules already: flushed first, the
    // local table's too, as upstream does)
    if !n.rule.is_empty() {
        feed("rules", "ip", &["rule", "flush"], b"")?;
        feed("rules", "ip", &["rule", "delete", "table", "local"], b"")?;
        feed("rules", "ip", &["rule", "restore"], &n.rule)?;
    }
    for (what, cmd, data) in [("iptables rules", "iptables-legacy-restore", &n.iptables), ("ip6tables rules", "ip6tables-legacy-restore", &n.ip6tables)] {
        if let Some(d) = data.as_ref().filter(|d| !d.is_empty()) {
            feed(what, cmd, &[], d)?;
        }
    }
    if let Some(d) = n.nftables.as_ref().filter(|d| !d.is_empty()) {
        feed("nftables ruleset", "nft", &["-f", "-"], d)?;
    }
    Ok(())
}
