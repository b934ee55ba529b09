//! The mount namespace a tree's root owns, with tests/progs/mntns.c: a
//! container-like init (pid 1 of its own pid namespace, `unshare --mount
//! --pid --fork`) that pivot_root's into a rootfs directory with proc,
//! sysfs (read-only), tmpfs mounts holding files (/tmp, /dev with a device
//! node, /dev/shm), a devpts, an mqueue and a host directory bind-mounted
//! at /data, and checks them all every tick (a file of /tmp it keeps open
//! too). The host directory is an external mount: `--external
//! mnt[/data]:data` at dump, `--external mnt[data]:HOSTDIR` at restore,
//! the rootfs `--root`, as runc passes them. Dump + restore by ours twice,
//! both ways with upstream 4.2, and refusals by name: a host bind not
//! given as external, a restore without --root or without the external's
//! path, hostile mountpoints images; and tfork of it (each clone in a new
//! mount namespace, its root and /data copies of the source's mounts, its
//! tmpfs as at the freeze; `--root-snapshot overlay`; failures and
//! refusals leaving the source as it was). Needs root, gcc, unshare,
//! setsid, tar, ip; upstream's tests its binary too.
//!
//! On main the dump fails ("dumping namespaces other than pid, time, uts
//! and ipc ones is not supported yet"): every test but the restore-side
//! refusals fails (those need an image set ours dumps).

mod common;

use common::*;
use images_proto::image::{read_all, write_all};
use images_proto::magic as mg;
use images_proto::pb;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn why_not() -> Option<String> {
    why_not_here().or_else(|| why_not_tools(&["tar", "ip"]))
}

/// A running mntns in its rootfs; killed on drop.
struct Prog {
    dir: PathBuf,
    rootfs: PathBuf,
    host: PathBuf,
    /// What /data/marker holds: "host TAG-PID", how its processes are found.
    marker: String,
    pid: i32,
}

impl Prog {
    fn start(tag: &str, words: &[&str]) -> Prog {
        Self::start_in(tag, words, None)
    }

    /// [`Prog::start`] with its rootfs at `rootfs` (default: the test
    /// dir's `rootfs`).
    fn start_in(tag: &str, words: &[&str], rootfs: Option<PathBuf>) -> Prog {
        let dir = test_dir(&format!("mntns-{tag}"));
        let rootfs = rootfs.unwrap_or_else(|| dir.join("rootfs"));
        let host = dir.join("host");
        std::fs::create_dir_all(&rootfs).unwrap();
        std::fs::create_dir_all(&host).unwrap();
        let marker = format!("host {tag}-{}", std::process::id());
        std::fs::write(host.join("marker"), &marker).unwrap();
        build_test_prog("mntns", &rootfs);
        let mut child = only_stdio(Command::new("unshare").args(["--mount", "--pid", "--fork", "setsid"]))
            .arg(rootfs.join("mntns"))
            .arg("run")
            .arg(&rootfs)
            .arg(&host)
            .args(words)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mntns");
        std::thread::spawn(move || child.wait());
        let mut p = Prog { dir, rootfs, host, marker, pid: 0 };
        wait_until("ready", Duration::from_secs(10), || p.host.join("ready").exists() || p.log_text().contains("FAIL"));
        wait_until("first tick", Duration::from_secs(10), || last_tick(&p.log()) >= 1);
        p.refind();
        p
    }

    fn log(&self) -> PathBuf {
        self.host.join("progress.log")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// The pids of this test's mntns (`mntns in`, its /data/marker ours).
    fn live(&self) -> Vec<i32> {
        let mut v = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if !cmd.starts_with(b"mntns\0in\0") {
                continue;
            }
            if std::fs::read_to_string(format!("/proc/{pid}/root/data/marker")).unwrap_or_default() == self.marker {
                v.push(pid);
            }
        }
        v
    }

    fn refind(&mut self) {
        let pids = self.live();
        assert_eq!(pids.len(), 1, "one mntns expected, found {pids:?}");
        self.pid = pids[0];
    }

    fn ticks_on(&self, n: u64, what: &str) {
        let t = last_tick(&self.log());
        wait_until(&format!("{n} ticks {what}"), Duration::from_secs(20), || last_tick(&self.log()) >= t + n);
    }

    fn images(&self, name: &str) -> PathBuf {
        let d = self.dir.join(name);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn gone(&self) {
        wait_until("the dumped program gone", Duration::from_secs(5), || self.live().is_empty());
    }

    fn dump_args(&self) -> Vec<String> {
        vec!["dump".into(), "-t".into(), self.pid.to_string(), "--external".into(), "mnt[/data]:data".into()]
    }

    fn restore_args(&self) -> Vec<String> {
        vec![
            "restore".into(),
            "-d".into(),
            "--root".into(),
            self.rootfs.display().to_string(),
            "--external".into(),
            format!("mnt[data]:{}", self.host.display()),
        ]
    }

    /// Restored: ticking on, in a mount namespace of its own with the
    /// mounts it had (from outside: its mountinfo).
    fn check_restored(&mut self) {
        self.ticks_on(5, "after restore");
        self.refind();
        assert_ne!(ns_link(self.pid, "mnt"), ns_link(std::process::id() as i32, "mnt"), "restored in a mount namespace of its own");
        let mi = std::fs::read_to_string(format!("/proc/{}/mountinfo", self.pid)).unwrap();
        for (mp, fs) in [("/proc", "proc"), ("/tmp", "tmpfs"), ("/dev", "tmpfs"), ("/dev/pts", "devpts"), ("/dev/shm", "tmpfs"), ("/dev/mqueue", "mqueue"), ("/sys", "sysfs")] {
            assert!(mi.lines().any(|l| l.split(' ').nth(4) == Some(mp) && l.contains(&format!(" - {fs} "))), "no {fs} at {mp} in:\n{mi}");
        }
        let data = mi.lines().find(|l| l.split(' ').nth(4) == Some("/data")).unwrap_or_else(|| panic!("no /data in:\n{mi}"));
        assert_eq!(data.split(' ').nth(3), Some(self.host.to_str().unwrap()), "/data is the host directory again");
        let root = mi.lines().find(|l| l.split(' ').nth(4) == Some("/")).unwrap();
        assert_eq!(root.split(' ').nth(3), Some(self.rootfs.to_str().unwrap()), "/ is --root");
        assert!(mi.lines().any(|l| l.split(' ').nth(4) == Some("/sys") && l.split(' ').nth(5).unwrap().starts_with("ro,")), "/sys read-only again:\n{mi}");
        assert!(!self.log_text().contains("FAIL"), "{}", self.log_text());
    }
}

impl Drop for Prog {
    fn drop(&mut self) {
        for pid in self.live() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ours(dir: &Path) -> PathBuf {
    engine_under_test(dir)
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(|s| s.as_str()).collect()
}

/// The archives of the three tmpfs file systems (and `ro` more: mntns.c's
/// `ro`) and the mountpoints image upstream writes, with the entries
/// upstream writes for them.
fn check_images(img: &Path, ro: usize) {
    let names: Vec<String> = std::fs::read_dir(img).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    let mnts: Vec<&String> = names.iter().filter(|n| n.starts_with("mountpoints-")).collect();
    assert_eq!(mnts.len(), 1, "one mountpoints image: {names:?}");
    assert_eq!(names.iter().filter(|n| n.starts_with("tmpfs-dev-") && n.ends_with(".tar.gz.img")).count(), 3 + ro, "a tmpfs archive each for /tmp, /dev, /dev/shm (/ro): {names:?}");
    let es: Vec<pb::MntEntry> = read_all(img, mnts[0], &mg::MNTS).unwrap();
    assert_eq!(es.len(), 9 + ro, "{es:?}");
    let by = |mp: &str| es.iter().find(|e| e.mountpoint == mp).unwrap_or_else(|| panic!("no entry for {mp}"));
    assert_eq!(by("/data").ext_key.as_deref(), Some("data"));
    assert_eq!((by("/proc").fstype, by("/tmp").fstype, by("/dev/pts").fstype, by("/dev/mqueue").fstype, by("/sys").fstype), (1, 5, 6, 14, 2));
    assert_eq!(by("/sys").flags, 0x20000f, "upstream's flags for a read-only sysfs");
    assert_eq!(by("/").parent_mnt_id, by("/").parent_mnt_id);
    assert!(by("/dev/pts").options.contains("newinstance"));
    // the archive of /tmp holds its files (tar reads it as upstream's does)
    let tmp = by("/tmp");
    let list = Command::new("tar").arg("tzf").arg(img.join(format!("tmpfs-dev-{}.tar.gz.img", tmp.root_dev))).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(list.contains("./hello") && list.contains("./sub/deep"), "{list}");
}

/// Ours dumps and restores twice (what a restore made must dump again):
/// every mount back in a new mount namespace below --root, the tmpfs
/// files, the held fd of /tmp/hello on the new /tmp.
#[test]
fn container_mount_namespace_survives_dump_and_restore_twice() {
    test_support::require!(why_not());
    let mut p = Prog::start("rt", &["sys", "hold"]);
    let criu = ours(&p.dir);
    for round in 0..2 {
        let img = p.images(&format!("img-{round}"));
        criu_ok(&criu, &strs(&p.dump_args()), &img, "dump.log");
        check_images(&img, 0);
        p.gone();
        criu_ok(&criu, &strs(&p.restore_args()), &img, "restore.log");
        p.check_restored();
    }
}

/// Ours dumps, upstream 4.2 restores; upstream dumps that, ours restores
/// (with a read-only tmpfs too, mntns.c's `ro`).
#[test]
fn images_go_both_ways_with_upstream() {
    test_support::require!(why_not_upstream().or_else(why_not));
    let mut p = Prog::start("up", &["sys", "hold", "ro"]);
    let criu = ours(&p.dir);
    let img = p.images("ours");
    criu_ok(&criu, &strs(&p.dump_args()), &img, "dump.log");
    p.gone();
    upstream_ok(&strs(&p.restore_args()), &img, "restore.log");
    p.check_restored();
    let img = p.images("theirs");
    upstream_ok(&strs(&p.dump_args()), &img, "dump.log");
    check_images(&img, 1);
    p.gone();
    criu_ok(&criu, &strs(&p.restore_args()), &img, "restore.log");
    p.check_restored();
}

/// A host directory bind-mounted in, not given as external: refused by
/// name (mount id, mount point, fstype) and the program runs on.
#[test]
fn a_host_bind_not_given_as_external_is_refused_by_name() {
    test_support::require!(why_not());
    let p = Prog::start("ext", &["sys"]);
    let criu = ours(&p.dir);
    let img = p.images("img");
    let (st, log) = criu_env(&criu, &["dump", "-t", &p.pid.to_string()], &img, "dump.log", &[]);
    assert!(!st.success());
    assert!(log.contains("at /data (ext") || log.contains("at /data ("), "{log}");
    assert!(log.contains("--external mnt[/data]:KEY"), "{log}");
    p.ticks_on(3, "after the refused dump");
    assert_eq!(p.live(), vec![p.pid]);
    // an --external naming no mount point (runc names every device it may
    // have bind-mounted) is unused, as upstream leaves it; /data still
    // refused
    let (st, log) = criu_env(&criu, &["dump", "-t", &p.pid.to_string(), "--external", "mnt[/nowhere]:x"], &img, "dump.log", &[]);
    assert!(!st.success() && log.contains("at /nowhere: unused") && log.contains("--external mnt[/data]:KEY"), "{log}");
    p.ticks_on(2, "after the second refused dump");
}

/// A restore without --root, or without the external mount's path, is
/// refused before anything is made, naming the mount and the option.
#[test]
fn restore_without_root_or_external_path_is_refused_by_name() {
    test_support::require!(why_not());
    let mut p = Prog::start("norst", &["sys"]);
    let criu = ours(&p.dir);
    let img = p.images("img");
    criu_ok(&criu, &strs(&p.dump_args()), &img, "dump.log");
    p.gone();
    let host = format!("mnt[data]:{}", p.host.display());
    let (st, log) = criu_env(&criu, &["restore", "-d", "--external", &host], &img, "restore.log", &[]);
    assert!(!st.success() && log.contains("--root DIR") && log.contains("mount ") && log.contains(" at / "), "{log}");
    let rootfs = p.rootfs.display().to_string();
    let (st, log) = criu_env(&criu, &["restore", "-d", "--root", &rootfs], &img, "restore.log", &[]);
    assert!(!st.success() && log.contains("at /data") && log.contains("--external mnt[data]:PATH"), "{log}");
    assert!(p.live().is_empty(), "nothing left behind");
    criu_ok(&criu, &strs(&p.restore_args()), &img, "restore.log");
    p.check_restored();
}

/// Hostile mountpoints images: refused naming the image, the entry and
/// the field (or the mount).
#[test]
fn hostile_mountpoints_images_are_refused_by_name() {
    test_support::require!(why_not());
    let mut p = Prog::start("hostile", &["sys"]);
    let criu = ours(&p.dir);
    let img = p.images("img");
    criu_ok(&criu, &strs(&p.dump_args()), &img, "dump.log");
    p.gone();
    let name = std::fs::read_dir(&img).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).find(|n| n.starts_with("mountpoints-")).unwrap();
    let good: Vec<pb::MntEntry> = read_all(&img, &name, &mg::MNTS).unwrap();
    type Bend = fn(&mut Vec<pb::MntEntry>);
    let cases: &[(&str, Bend)] = &[
        ("field flags", |v| v[0].flags = 0xffff_ffff),
        ("field fstype", |v| v[0].fstype = 99),
        ("without . or ..", |v| v[0].mountpoint = "/../../etc".into()),
        ("mount id appears twice", |v| v[1].mnt_id = v[0].mnt_id),
        ("propagation group", |v| v[0].shared_id = Some(7)),
        ("several mounts have no parent", |v| v[0].parent_mnt_id = 123_456),
        ("stacked at the same place", |v| {
            let dev = v.iter().position(|e| e.mountpoint == "/dev").unwrap();
            let shm = v.iter().position(|e| e.mountpoint == "/dev/shm").unwrap();
            v[shm].mountpoint = "/dev".into();
            v[shm].parent_mnt_id = v[dev].parent_mnt_id;
        }),
    ];
    for (want, bend) in cases {
        let mut v = good.clone();
        bend(&mut v);
        write_all(&img, &name, &mg::MNTS, &v).unwrap();
        let (st, log) = criu_env(&criu, &strs(&p.restore_args()), &img, "restore.log", &[]);
        assert!(!st.success(), "{want}: restored");
        assert!(log.contains(want) && (log.contains(&name) || log.contains("mount ")), "{want}: {log}");
        assert!(p.live().is_empty(), "{want}: nothing left behind");
    }
    write_all(&img, &name, &mg::MNTS, &good).unwrap();
    criu_ok(&criu, &strs(&p.restore_args()), &img, "restore.log");
    p.check_restored();
}

/// The tick `pid` last wrote in the /tmp of its own mount namespace (a
/// process's /tmp/tick, read through /proc/PID/root).
fn own_tick(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/root/tmp/tick")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

/// The mount points and file systems of `pid`'s namespace, as a sorted list
/// of "MOUNTPOINT FSTYPE ROOT" (ids and devices aside).
fn mount_shape(pid: i32) -> Vec<String> {
    let mi = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let mut v: Vec<String> = mi
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-").unwrap();
            format!("{} {} {} {}", f[4], f[sep + 1], f[3], f[5])
        })
        .collect();
    v.sort();
    v
}

/// Lines of the engine's (this test's) mount namespace naming the test's
/// directory: none, the container's mounts are all in its own namespace.
fn ours_naming(dir: &Path) -> Vec<String> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mi.lines().filter(|l| l.contains(dir.to_str().unwrap())).map(str::to_string).collect()
}

/// `tfork --copies 2` of the container-like init: each clone is pid 1 of a
/// new pid namespace and in a new mount namespace of its own (not the
/// source's, not the other's), with the same mounts (its root and /data
/// copies of the source's: the same files; proc, sysfs, devpts, mqueue
/// new; each tmpfs new with its files as at the freeze, the held fd of
/// /tmp/hello on its own /tmp). A file a clone writes in its /tmp is seen
/// neither by the source nor by the other clone; the source's namespace
/// is as it was, nothing is mounted in the engine's namespace, and the
/// image set of the frozen moment restores with --root and the external
/// /data, by ours and by upstream 4.2. Fails on the branch before (the
/// host bind at /data refused at the collection: "give it as external").
#[test]
fn tfork_clones_get_their_own_mount_namespaces() {
    test_support::require!(why_not_upstream().or_else(why_not));
    tfork_two("tfork", &[], true);
}

/// The same, the clones restored from the copy of the frozen tree in tmpfs
/// (`CRIU_RS_TFORK_SNAPSHOT=off`: the image set read back, its mount
/// namespace still copied from the live source) and from the frozen source
/// itself (`CRIU_RS_TFORK_TREE_MEM=source`, the kmod path's).
#[test]
fn tfork_of_a_container_from_its_tmpfs_copy_or_from_the_source() {
    test_support::require!(why_not());
    tfork_two("tfork-tmpset", &[("CRIU_RS_TFORK_SNAPSHOT", "off")], false);
    tfork_two("tfork-fromsrc", &[("CRIU_RS_TFORK_TREE_MEM", "source")], false);
}

/// tfork --copies 2 --persist=sync of a new mntns (`tag`), the engine run
/// with `env`, and every check of
/// [`tfork_clones_get_their_own_mount_namespaces`] (the persisted set
/// restored by upstream too with `upstream`).
fn tfork_two(tag: &str, env: &[(&str, &str)], upstream: bool) {
    let p = Prog::start(tag, &["sys", "hold"]);
    let criu = ours(&p.dir);
    let src_mnt = ns_link(p.pid, "mnt");
    let src_shape = mount_shape(p.pid);
    assert!(ours_naming(&p.dir).is_empty(), "the test's namespace has no mount of the container");
    // a file of the source's /tmp as of the freeze
    std::fs::write(format!("/proc/{}/root/tmp/before", p.pid), "before the freeze").unwrap();
    let img = p.images("tfork");
    let (clones, _) = tfork_ok(&criu, p.pid, 2, &["--persist=sync"], &img, env);
    let all: Vec<i32> = [p.pid].iter().chain(&clones).copied().collect();
    // each ticks on in its own /tmp, and none writes FAIL
    let t0: Vec<u64> = all.iter().map(|&c| own_tick(c)).collect();
    wait_until("source and clones tick on", Duration::from_secs(20), || all.iter().zip(&t0).all(|(&c, &t)| own_tick(c) >= t + 5));
    assert!(!p.log_text().contains("FAIL"), "{}", p.log_text());
    let mut live = p.live();
    live.sort();
    let mut want = all.clone();
    want.sort();
    assert_eq!(live, want, "the source and its two clones, nothing else");
    let links: Vec<String> = all.iter().map(|&c| ns_link(c, "mnt")).collect();
    assert!(links[0] != links[1] && links[0] != links[2] && links[1] != links[2], "mount namespaces must all differ: {links:?}");
    assert_eq!(links[0], src_mnt, "the source keeps its mount namespace");
    assert!(links.iter().all(|l| *l != ns_link(std::process::id() as i32, "mnt")));
    for &c in &clones {
        assert_ne!(ns_link(c, "pid"), ns_link(p.pid, "pid"), "clone {c} in a pid namespace of its own");
        assert_eq!(mount_shape(c), src_shape, "clone {c} has the source's mounts");
        assert_eq!(std::fs::read_to_string(format!("/proc/{c}/root/tmp/before")).unwrap(), "before the freeze", "clone {c}: /tmp as at the freeze");
        assert_eq!(std::fs::read_to_string(format!("/proc/{c}/root/data/marker")).unwrap(), p.marker, "clone {c}: /data is the host directory");
        // its held fd of /tmp/hello is on its own /tmp (mntns checks it each tick too)
        use std::os::unix::fs::MetadataExt;
        let held = std::fs::metadata(format!("/proc/{c}/fd/10")).unwrap();
        let own = std::fs::metadata(format!("/proc/{c}/root/tmp/hello")).unwrap();
        assert_eq!((held.dev(), held.ino()), (own.dev(), own.ino()), "clone {c}: fd 10 is its own /tmp/hello");
        let theirs = std::fs::metadata(format!("/proc/{}/root/tmp/hello", p.pid)).unwrap();
        assert_ne!(own.dev(), theirs.dev(), "clone {c}: /tmp is a tmpfs of its own");
    }
    // isolation of the tmpfs files: a clone's write, the source's write
    std::fs::write(format!("/proc/{}/root/tmp/clone0", clones[0]), "clone 0").unwrap();
    std::fs::write(format!("/proc/{}/root/tmp/after", p.pid), "source after").unwrap();
    for &c in &[p.pid, clones[1]] {
        assert!(!Path::new(&format!("/proc/{c}/root/tmp/clone0")).exists(), "{c} sees the file clone {} wrote", clones[0]);
    }
    for &c in &clones {
        assert!(!Path::new(&format!("/proc/{c}/root/tmp/after")).exists(), "clone {c} sees the source's write after the freeze");
    }
    // the source as it was
    assert_eq!(ns_link(p.pid, "mnt"), src_mnt);
    assert_eq!(mount_shape(p.pid), src_shape, "the source's mounts unchanged");
    assert_eq!(std::fs::read_to_string(format!("/proc/{}/root/tmp/before", p.pid)).unwrap(), "before the freeze");
    assert!(ours_naming(&p.dir).is_empty(), "nothing mounted in the engine's namespace: {:?}", ours_naming(&p.dir));
    let t0: Vec<u64> = all.iter().map(|&c| own_tick(c)).collect();
    wait_until("source and clones tick on after the writes", Duration::from_secs(20), || all.iter().zip(&t0).all(|(&c, &t)| own_tick(c) >= t + 3));
    assert!(!p.log_text().contains("FAIL"), "{}", p.log_text());
    // a clone killed: the source and the other clone run on
    let _ = Command::new("kill").args(["-9", &clones[0].to_string()]).status();
    let t1 = (own_tick(p.pid), own_tick(clones[1]));
    wait_until("source and clone 1 tick on", Duration::from_secs(20), || own_tick(p.pid) >= t1.0 + 3 && own_tick(clones[1]) >= t1.1 + 3);
    // the image set of the frozen moment: the host bind recorded as external
    // (its key its mount point), the root for --root
    for &c in &[p.pid, clones[1]] {
        let _ = Command::new("kill").args(["-9", &c.to_string()]).status();
    }
    p.gone();
    let mut args = p.restore_args();
    args[5] = format!("mnt[/data]:{}", p.host.display());
    let mut q = p;
    criu_ok(&criu, &strs(&args), &img, "restore.log");
    q.check_restored();
    assert_eq!(std::fs::read_to_string(format!("/proc/{}/root/tmp/before", q.pid)).unwrap(), "before the freeze");
    if upstream {
        let _ = Command::new("kill").args(["-9", &q.pid.to_string()]).status();
        q.gone();
        upstream_ok(&strs(&args), &img, "restore-upstream.log");
        q.check_restored();
        assert_eq!(std::fs::read_to_string(format!("/proc/{}/root/tmp/before", q.pid)).unwrap(), "before the freeze");
    }
}

/// A tfork of the container that fails (a clone's restore failing with
/// its mount namespace half made, the first or the second clone's; the
/// engine killed after a
/// clone was made) or is refused (`--root-snapshot`, not supported for a
/// source owning its mount namespace: refused by name) leaves the source
/// running as it was, no clone behind, nothing mounted in the engine's
/// namespace.
#[test]
fn failed_or_refused_tfork_of_a_container_leaves_the_source_as_it_was() {
    test_support::require!(why_not());
    let p = Prog::start("tforkfail", &["sys", "hold"]);
    let criu = ours(&p.dir);
    let src_mnt = ns_link(p.pid, "mnt");
    let src_shape = mount_shape(p.pid);
    let cases: &[(&str, &[&str], bool)] = &[
        ("mntns-made:fail", &[], false),
        ("mntns-made@2:fail", &[], false),
        ("tforktree-clone-made", &[], true),
        ("", &["--root-snapshot", "btrfs"], false),
    ];
    for &(at, extra, engine_dies) in cases {
        let img = p.images(&format!("img-{}", at.replace([':', '@'], "-")));
        let mut env = vec![];
        if !at.is_empty() {
            env.push(("CRIU_RS_FAULT_AT", at));
        }
        let mut args = vec!["tfork", "-t"];
        let pid = p.pid.to_string();
        args.push(&pid);
        args.extend(["--copies", "2", "--persist=sync"]);
        args.extend(extra);
        let (st, log) = criu_env(&criu, &args, &img, "tfork.log", &env);
        if engine_dies {
            assert_killed(st, at, &log);
        } else {
            assert_eq!(st.code(), Some(1), "{at}: {log}");
        }
        if at.is_empty() {
            assert!(log.contains("--root-snapshot btrfs") && log.contains("is not on btrfs"), "refused by name:\n{log}");
        } else if !engine_dies {
            assert!(log.contains("restoring a clone of"), "{at}: the clone's restore failed:\n{log}");
        }
        assert!(!img.join("inventory.img").exists(), "{at}: an image set that looks complete");
        if engine_dies {
            // (a namespace init's clone is released whole at the end of its
            // restore: one made before the engine died runs on, in a mount
            // namespace of its own; none half made)
            std::thread::sleep(Duration::from_millis(500));
            let left: Vec<i32> = p.live().into_iter().filter(|&c| c != p.pid).collect();
            assert!(left.len() <= 1, "{at}: {left:?}");
            for c in left {
                let t = own_tick(c);
                wait_until(&format!("{at}: the whole clone {c} ticks"), Duration::from_secs(20), || own_tick(c) >= t + 2);
                assert_ne!(ns_link(c, "mnt"), src_mnt, "{at}: clone {c} in a mount namespace of its own");
                let _ = Command::new("kill").args(["-9", &c.to_string()]).status();
            }
        }
        wait_until(&format!("{at}: no clone left"), Duration::from_secs(5), || p.live() == vec![p.pid]);
        let t = own_tick(p.pid);
        wait_until(&format!("{at}: the source ticks on"), Duration::from_secs(20), || own_tick(p.pid) >= t + 3);
        assert!(!p.log_text().contains("FAIL"), "{at}: {}", p.log_text());
        assert_eq!(ns_link(p.pid, "mnt"), src_mnt, "{at}");
        assert_eq!(mount_shape(p.pid), src_shape, "{at}: the source's mounts");
        assert!(ours_naming(&p.dir).is_empty(), "{at}: mounted in the engine's namespace: {:?}", ours_naming(&p.dir));
    }
}

/// `tfork --copies 2 --root-snapshot overlay` of the container: each
/// clone's root mount is an overlayfs over the source's root (upper
/// directory `-D/tfork-root/CLONE/upper`), so a file of the root a clone
/// writes lands in its own upper directory, seen neither by the source
/// (the rootfs on the host) nor by the other clone; the host bind at
/// /data stays shared, as a fork's; the other mounts as without it. The
/// source's namespace as it was, nothing in the engine's. Fails on the
/// branch before (refused by name there, the host bind before that).
#[test]
fn tfork_root_snapshot_gives_each_clone_its_own_root_files() {
    test_support::require!(why_not());
    let p = Prog::start("tforksnap", &["sys", "hold"]);
    let criu = ours(&p.dir);
    let src_mnt = ns_link(p.pid, "mnt");
    let src_shape = mount_shape(p.pid);
    std::fs::write(p.rootfs.join("shared.txt"), "frozen").unwrap();
    let img = p.images("tfork");
    let (clones, _) = tfork_ok(&criu, p.pid, 2, &["--root-snapshot", "overlay"], &img, &[]);
    let all: Vec<i32> = [p.pid].iter().chain(&clones).copied().collect();
    let t0: Vec<u64> = all.iter().map(|&c| own_tick(c)).collect();
    wait_until("source and clones tick on", Duration::from_secs(20), || all.iter().zip(&t0).all(|(&c, &t)| own_tick(c) >= t + 5));
    assert!(!p.log_text().contains("FAIL"), "{}", p.log_text());
    let links: Vec<String> = all.iter().map(|&c| ns_link(c, "mnt")).collect();
    assert!(links[0] != links[1] && links[0] != links[2] && links[1] != links[2], "mount namespaces must all differ: {links:?}");
    let not_root = |v: Vec<String>| -> Vec<String> { v.into_iter().filter(|l| !l.starts_with("/ ")).collect() };
    for &c in &clones {
        let shape = mount_shape(c);
        assert!(shape.iter().any(|l| l.starts_with("/ overlay ")), "clone {c}: its root an overlay: {shape:?}");
        assert_eq!(not_root(shape), not_root(src_shape.clone()), "clone {c}: the other mounts as the source's");
        assert_eq!(std::fs::read_to_string(format!("/proc/{c}/root/shared.txt")).unwrap(), "frozen", "clone {c}: the source's root files");
    }
    // a clone's write into its root: its upper directory only
    std::fs::write(format!("/proc/{}/root/shared.txt", clones[0]), "clone 0").unwrap();
    std::fs::write(format!("/proc/{}/root/newfile", clones[1]), "clone 1").unwrap();
    assert_eq!(std::fs::read_to_string(p.rootfs.join("shared.txt")).unwrap(), "frozen", "the source's file changed by a clone");
    assert_eq!(std::fs::read_to_string(format!("/proc/{}/root/shared.txt", p.pid)).unwrap(), "frozen");
    assert_eq!(std::fs::read_to_string(format!("/proc/{}/root/shared.txt", clones[1])).unwrap(), "frozen", "a clone saw another's write");
    assert!(!p.rootfs.join("newfile").exists() && !Path::new(&format!("/proc/{}/root/newfile", clones[0])).exists(), "a clone's new file seen elsewhere");
    assert_eq!(std::fs::read_to_string(img.join("tfork-root").join(clones[0].to_string()).join("upper/shared.txt")).unwrap(), "clone 0", "the clone's upper directory");
    // the host bind is shared, as a fork shares it
    std::fs::write(format!("/proc/{}/root/data/from-clone", clones[0]), "x").unwrap();
    assert!(p.host.join("from-clone").exists(), "/data of a clone is the host directory");
    // the source as it was, nothing in the engine's namespace
    assert_eq!(ns_link(p.pid, "mnt"), src_mnt);
    assert_eq!(mount_shape(p.pid), src_shape, "the source's mounts unchanged");
    assert!(ours_naming(&p.dir).is_empty(), "nothing mounted in the engine's namespace: {:?}", ours_naming(&p.dir));
    let t0: Vec<u64> = all.iter().map(|&c| own_tick(c)).collect();
    wait_until("source and clones tick on after the writes", Duration::from_secs(20), || all.iter().zip(&t0).all(|(&c, &t)| own_tick(c) >= t + 3));
    assert!(!p.log_text().contains("FAIL"), "{}", p.log_text());
}

/// `tfork --copies 2 --root-snapshot btrfs` of the container whose rootfs
/// is a directory of a btrfs subvolume (a loop-mounted btrfs, -D on it):
/// each clone's root mount is a bind of its own snapshot of the
/// subvolume's copy of the rootfs, so a file of the root a clone writes is
/// seen neither by the source nor by the other clone, and lands in the
/// clone's snapshot; /data stays shared. Refused by name before ("a btrfs
/// snapshot of its root per clone is not supported yet").
#[test]
fn tfork_root_snapshot_btrfs_gives_each_clone_its_own_root_snapshot() {
    test_support::require!(why_not().or_else(|| why_not_tools(&["mkfs.btrfs", "btrfs", "mount", "umount"])));
    let fs = LoopBtrfs::new(&test_dir("mntns-btrfs-fs"));
    let vol = fs.subvolume("vol");
    let rootfs = vol.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    let p = Prog::start_in("tforkbtrfs", &["sys", "hold"], Some(rootfs.clone()));
    let criu = ours(&p.dir);
    let src_mnt = ns_link(p.pid, "mnt");
    let src_shape = mount_shape(p.pid);
    std::fs::write(rootfs.join("shared.txt"), "frozen").unwrap();
    let img = fs.mnt.join("img");
    std::fs::create_dir_all(&img).unwrap();
    let (clones, _) = tfork_ok(&criu, p.pid, 2, &["--root-snapshot", "btrfs"], &img, &[]);
    let all: Vec<i32> = [p.pid].iter().chain(&clones).copied().collect();
    let t0: Vec<u64> = all.iter().map(|&c| own_tick(c)).collect();
    wait_until("source and clones tick on", Duration::from_secs(20), || all.iter().zip(&t0).all(|(&c, &t)| own_tick(c) >= t + 5));
    assert!(!p.log_text().contains("FAIL"), "{}", p.log_text());
    let not_root = |v: Vec<String>| -> Vec<String> { v.into_iter().filter(|l| !l.starts_with("/ ")).collect() };
    let root_dev = |pid: i32| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/proc/{pid}/root/shared.txt")).map(|m| (m.dev(), m.ino())).unwrap()
    };
    for &c in &clones {
        let shape = mount_shape(c);
        assert!(shape.iter().any(|l| l.starts_with("/ btrfs ")), "clone {c}: its root a btrfs mount: {shape:?}");
        assert_eq!(not_root(shape), not_root(src_shape.clone()), "clone {c}: the other mounts as the source's");
        assert_eq!(std::fs::read_to_string(format!("/proc/{c}/root/shared.txt")).unwrap(), "frozen", "clone {c}: the source's root files");
        assert_ne!(root_dev(c).0, root_dev(p.pid).0, "clone {c}: its root files on a snapshot (another subvolume: another st_dev)");
    }
    std::fs::write(format!("/proc/{}/root/shared.txt", clones[0]), "clone 0").unwrap();
    std::fs::write(format!("/proc/{}/root/newfile", clones[1]), "clone 1").unwrap();
    assert_eq!(std::fs::read_to_string(rootfs.join("shared.txt")).unwrap(), "frozen", "the source's file changed by a clone");
    assert_eq!(std::fs::read_to_string(format!("/proc/{}/root/shared.txt", clones[1])).unwrap(), "frozen", "a clone saw another's write");
    assert!(!rootfs.join("newfile").exists() && !Path::new(&format!("/proc/{}/root/newfile", clones[0])).exists(), "a clone's new file seen elsewhere");
    assert_eq!(std::fs::read_to_string(img.join("tfork-root").join(clones[0].to_string()).join("snap/rootfs/shared.txt")).unwrap(), "clone 0", "the clone's snapshot");
    std::fs::write(format!("/proc/{}/root/data/from-clone", clones[0]), "x").unwrap();
    assert!(p.host.join("from-clone").exists(), "/data of a clone is the host directory");
    assert_eq!(ns_link(p.pid, "mnt"), src_mnt);
    assert_eq!(mount_shape(p.pid), src_shape, "the source's mounts unchanged");
    let t0: Vec<u64> = all.iter().map(|&c| own_tick(c)).collect();
    wait_until("source and clones tick on after the writes", Duration::from_secs(20), || all.iter().zip(&t0).all(|(&c, &t)| own_tick(c) >= t + 3));
    assert!(!p.log_text().contains("FAIL"), "{}", p.log_text());
}

/// A tmpfs whose superblock is read-only (mntns.c `ro`: /ro holding a
/// file, remounted read-only) comes back read-only with its file, after
/// a dump and restore by ours and in tfork's clones: its archive is
/// extracted into it before it is made read-only. Failed before (tar could
/// not write into the new tmpfs, mounted read-only at once).
#[test]
fn read_only_tmpfs_survives_dump_restore_and_tfork() {
    test_support::require!(why_not());
    let mut p = Prog::start("rotmp", &["sys", "ro"]);
    let criu = ours(&p.dir);
    let img = p.images("img");
    criu_ok(&criu, &strs(&p.dump_args()), &img, "dump.log");
    p.gone();
    criu_ok(&criu, &strs(&p.restore_args()), &img, "restore.log");
    p.check_restored();
    let ro = |pid: i32| -> bool {
        let mi = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        // (its super options: the superblock read-only)
        mi.lines().filter(|l| l.split(' ').nth(4) == Some("/ro")).any(|l| l.split_once(" - tmpfs ").is_some_and(|(_, r)| r.split(' ').nth(1).is_some_and(|o| o == "ro" || o.starts_with("ro,"))))
    };
    assert!(ro(p.pid), "/ro read-only again");
    let img = p.images("tfork");
    let clone = tfork_ok(&criu, p.pid, 1, &[], &img, &[]).0[0];
    let t = own_tick(clone);
    wait_until("the clone ticks on", Duration::from_secs(20), || own_tick(clone) >= t + 3);
    assert!(ro(clone), "the clone's /ro read-only");
    assert_eq!(std::fs::read_to_string(format!("/proc/{clone}/root/ro/file")).unwrap(), "read-only");
    assert!(std::fs::write(format!("/proc/{clone}/root/ro/new"), "x").is_err(), "the clone's /ro is writable");
    assert!(!p.log_text().contains("FAIL"), "{}", p.log_text());
}

/// The shared fixture `counter` built in `dir` and started in
/// `dir/work` by `setsid unshare ARGS` (stdio only), its first tick
/// awaited; every process of it killed and `dir` removed on drop.
struct Counter {
    bin: PathBuf,
    log: PathBuf,
    dir: PathBuf,
}

impl Counter {
    fn start(dir: &Path, unshare: &[&str]) -> Counter {
        let bin = build("counter", dir);
        let work = dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let mut child = only_stdio(Command::new("setsid").arg("unshare").args(unshare))
            .arg(&bin)
            .current_dir(&work)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start counter");
        std::thread::spawn(move || child.wait());
        let c = Counter { bin, log: work.join("progress.log"), dir: dir.to_path_buf() };
        wait_until("first tick", Duration::from_secs(10), || last_tick(&c.log) >= 1);
        c
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        for p in live_with_exe(&self.bin) {
            let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A process of the host's pid namespace in a private copy of the host's
/// mount namespace (`unshare --mount`, the shared fixture `counter`): a
/// fork-made clone would share its namespace, so it is cloned by restore,
/// into a new mount namespace with the same mounts (the host's root and
/// binds copies, tmpfs copies as at the freeze, proc/sysfs/devpts new).
/// The clone ticks on beside the source, nothing is mounted in the
/// engine's namespace. Failed before (tfork refused the host's
/// directories as non-external mounts, then a read-only tmpfs).
#[test]
fn tfork_of_a_process_in_a_copy_of_the_host_mount_namespace() {
    test_support::require!(why_not());
    let dir = test_dir("mntns-hostcopy");
    // a namespace file bind-mounted in the host's namespace (`ip netns
    // add`, as on many hosts), copied into the counter's: its root
    // "net:[INO]" is no path (the tfork failed on it before)
    let netns = format!("criu-rs-mntns-hostcopy-{}", std::process::id());
    let st = Command::new("ip").args(["netns", "add", &netns]).status().expect("ip netns add");
    assert!(st.success(), "ip netns add {netns}");
    struct DelNetns(String);
    impl Drop for DelNetns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "delete", &self.0]).status();
        }
    }
    let _n = DelNetns(netns.clone());
    let c = Counter::start(&dir, &["--mount", "--propagation", "private"]);
    let (bin, log) = (c.bin.clone(), c.log.clone());
    let src = roots_with_exe(&bin)[0];
    let me = ns_link(std::process::id() as i32, "mnt");
    assert_ne!(ns_link(src, "mnt"), me, "the counter in a mount namespace of its own");
    let points = |pid: i32| -> Vec<String> {
        let mut v: Vec<String> = mount_shape(pid).into_iter().map(|l| l.split(' ').take(2).collect::<Vec<_>>().join(" ")).collect();
        v.dedup();
        v
    };
    let src_points = points(src);
    assert!(src_points.iter().any(|l| l.contains(&netns)), "the nsfs bind in the counter's namespace: {src_points:?}");
    let img = dir.join("img");
    std::fs::create_dir_all(&img).unwrap();
    let criu = ours(&dir);
    let out = Command::new(&criu).args(["tfork", "-t", &src.to_string(), "--copies", "1", "-D"]).arg(&img).args(["-v4", "-o", "tfork.log"]).stdin(Stdio::null()).output().unwrap();
    let tlog = std::fs::read_to_string(img.join("tfork.log")).unwrap_or_default();
    assert!(out.status.success(), "tfork failed:\n{tlog}{}", String::from_utf8_lossy(&out.stderr));
    assert!(tlog.contains("owns a mnt namespace"), "cloned by restore for its mount namespace:\n{tlog}");
    let clone: i32 = String::from_utf8_lossy(&out.stdout).lines().find_map(|l| l.trim().parse().ok()).expect("a clone pid");
    let cl = ns_link(clone, "mnt");
    assert!(cl != me && cl != ns_link(src, "mnt"), "the clone in a new mount namespace");
    assert_eq!(points(clone), src_points, "the clone's mount points and file systems are the source's");
    // both tick on into the one progress.log (its directory is the host's)
    let oks = || std::fs::read_to_string(&log).unwrap_or_default().lines().filter(|l| l.ends_with(" ok")).count();
    let n = oks();
    wait_until("source and clone tick on", Duration::from_secs(20), || oks() >= n + 10);
    assert!(alive(src) && alive(clone));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains("FAIL"), "{text}");
    assert!(ours_naming(&dir).is_empty(), "nothing mounted in the engine's namespace: {:?}", ours_naming(&dir));
}

/// A process in a copy of the host's mount namespace (`unshare --pid
/// --fork --mount --mount-proc`, the shared fixture `counter`): its cgroup
/// v1 mounts (on a hybrid host; any file system a restore does not make
/// anew) are not its own to make, so a plain dump names one and asks for
/// it as external; `--external mnt[]` makes each mount criu's namespace
/// shows external, keyed by the path it shows at, and `--ext-mount-map
/// auto --root /` restores it on this host: the same mount points, ticks
/// on. Without `auto` the restore names the external key it lacks. Failed
/// before: `mnt[]` and `auto` were refused, and `--root /` restored over
/// the host's own submounts (a new sysfs on the host's /sys: EBUSY).
#[test]
fn a_copy_of_the_host_mount_namespace_with_external_mnt_auto() {
    test_support::require!(why_not());
    let dir = test_dir("mntns-auto");
    let c = Counter::start(&dir, &["--pid", "--fork", "--mount", "--mount-proc", "--propagation", "private"]);
    let (bin, log) = (c.bin.clone(), c.log.clone());
    let pid = roots_with_exe(&bin)[0];
    let points = |pid: i32| -> Vec<String> {
        let mut v: Vec<String> = mount_shape(pid).into_iter().map(|l| l.split(' ').take(2).collect::<Vec<_>>().join(" ")).collect();
        v.sort();
        v
    };
    let before = points(pid);
    let criu = ours(&dir);
    // without mnt[]: refused naming a mount and the option, the counter left running
    let not_new = mount_shape(pid).iter().any(|l| l.contains(" cgroup ") && !l.contains("cgroup2"));
    if not_new {
        let img = dir.join("img-plain");
        std::fs::create_dir_all(&img).unwrap();
        let (st, text) = criu_env(&criu, &["dump", "-t", &pid.to_string()], &img, "dump.log", &[]);
        assert!(!st.success() && text.contains("--external mnt["), "a cgroup v1 mount named:\n{text}");
        assert!(alive(pid), "the refused dump left the counter running");
    }
    let img = dir.join("img");
    std::fs::create_dir_all(&img).unwrap();
    let text = criu_ok(&criu, &["dump", "-t", &pid.to_string(), "--external", "mnt[]"], &img, "dump.log");
    if not_new {
        assert!(text.contains("external (--external mnt[]), bound from /sys/fs/cgroup/"), "cgroup v1 mounts made external:\n{text}");
    }
    wait_until("the dumped counter gone", Duration::from_secs(5), || live_with_exe(&bin).is_empty());
    if not_new {
        let (st, text) = criu_env(&criu, &["restore", "-d", "--root", "/"], &img, "restore-noauto.log", &[]);
        assert!(!st.success() && text.contains("is external (key \"/sys/fs/cgroup/"), "the missing external named:\n{text}");
        assert!(live_with_exe(&bin).is_empty(), "a refused restore starts nothing");
    }
    let t = last_tick(&log);
    criu_ok(&criu, &["restore", "-d", "--ext-mount-map", "auto", "--root", "/"], &img, "restore.log");
    wait_until("ticks after the restore", Duration::from_secs(10), || last_tick(&log) >= t + 5);
    let now = roots_with_exe(&bin);
    assert_eq!(now.len(), 1, "one counter: {now:?}");
    assert_eq!(points(now[0]), before, "the restored mount points and file systems are the dumped ones");
    assert!(ours_naming(&dir).is_empty(), "nothing mounted in the engine's namespace");
}
