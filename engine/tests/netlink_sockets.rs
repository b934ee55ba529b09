//! Netlink sockets through dump and restore, with tests/progs/nlsk.c
//! (NETLINK_ROUTE with groups in and past the address's 32, one bound to
//! a port id of its own and connected to the kernel, a uevent listener,
//! an unbound generic one), which checks ports and memberships and talks
//! to the kernel through each route socket every tick: plain and
//! `--leave-running` rounds, upstream CRIU 4.2 both ways (without a group
//! past 32: upstream's restore refuses those), hostile images. Needs
//! root, gcc, unshare, setsid.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;

use images_proto::{image, magic, pb};
use engine::kinds::Kind;
use engine::model::FileDesc;

use common::{criu_env, criu_ok, last_tick, live_with_exe, only_stdio, private_criu, require, test_dir, wait_until, why_not_here};

struct Nl {
    dir: PathBuf,
    bin: PathBuf,
    work: PathBuf,
    pid: i32,
}

impl Nl {
    fn start(name: &str, words: &[&str]) -> Nl {
        let dir = test_dir(&format!("nl-{name}"));
        let bin = dir.join("nlsk");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/progs/nlsk.c");
        let st = Command::new("gcc").args(["-O2", "-static", "-Wall", "-o"]).arg(&bin).arg(&src).status().expect("gcc");
        assert!(st.success(), "building nlsk");
        let work = dir.join("work");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        let mut child = only_stdio(Command::new("unshare").args(["--pid", "--fork", "setsid"]))
            .arg(&bin)
            .args(words)
            .current_dir(&work)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nlsk");
        std::thread::spawn(move || child.wait());
        wait_until("ready", Duration::from_secs(10), || work.join("ready").exists());
        let mut s = Nl { dir, bin, work, pid: 0 };
        wait_until("first tick", Duration::from_secs(10), || s.tick() >= 1);
        s.refind();
        s
    }

    fn refind(&mut self) {
        let pids = live_with_exe(&self.bin);
        assert_eq!(pids.len(), 1, "one nlsk expected, found {pids:?}");
        self.pid = pids[0];
    }

    fn tick(&self) -> u64 {
        last_tick(&self.work.join("progress.log"))
    }

    fn ticks_on(&self, n: u64, what: &str) {
        let t = self.tick();
        let log = self.work.join("progress.log");
        let fails = || std::fs::read_to_string(&log).unwrap_or_default().lines().filter(|l| l.starts_with("FAIL")).map(str::to_string).collect::<Vec<_>>();
        wait_until(&format!("{n} ticks {what}"), Duration::from_secs(20), || self.tick() >= t + n || !fails().is_empty());
        assert!(fails().is_empty(), "{what}: {:?}", fails());
    }

    fn images(&self, name: &str) -> PathBuf {
        let d = self.dir.join(name);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn gone(&self) {
        wait_until("the dumped program gone", Duration::from_secs(5), || live_with_exe(&self.bin).is_empty());
    }
}

impl Drop for Nl {
    fn drop(&mut self) {
        for p in live_with_exe(&self.bin) {
            let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
        }
    }
}

fn upstream() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/upstream-criu/criu-4.2")
}

fn why_not_upstream() -> Option<String> {
    why_not_here().or_else(|| (!upstream().exists()).then(|| format!("{} not found", upstream().display())))
}

fn upstream_ok(args: &[&str], dir: &Path, log: &str) {
    let (st, text) = criu_env(&upstream(), args, dir, log, &[]);
    assert!(st.success(), "upstream criu {args:?} failed ({st:?}):\n{text}");
}

/// The netlink sockets of image set `img` as read back.
fn netlinks(img: &Path) -> Vec<engine::kinds::netlink::Netlink> {
    let files_id = std::fs::read_dir(img)
        .unwrap()
        .flatten()
        .find_map(|e| e.file_name().to_str()?.strip_prefix("fdinfo-")?.strip_suffix(".img")?.parse().ok())
        .expect("an fdinfo image");
    let (fds, _) = engine::images_io::read_fd_table(img, files_id).expect("reading the fd table");
    fds.into_iter()
        .filter_map(|f| match f.file {
            FileDesc::Kind(Kind::Netlink(n)) => Some(n),
            _ => None,
        })
        .collect()
}

#[test]
fn netlink_sockets_round_trip() {
    require!(why_not_here());
    let mut s = Nl::start("round", &[]);
    let criu = private_criu(&s.dir);
    s.ticks_on(2, "before the dump");
    let img = s.images("img1");
    criu_ok(&criu, &["dump", "-t", &s.pid.to_string()], &img, "dump.log");
    let nl = netlinks(&img);
    assert_eq!(nl.len(), 4, "{nl:?}");
    assert_eq!(nl[0].groups, vec![1, 1], "groups 1 and 33");
    assert_eq!(nl[2].protocol, 15, "the uevent socket");
    s.gone();
    criu_ok(&criu, &["restore", "-d"], &img, "restore.log");
    s.refind();
    s.ticks_on(4, "after restore");
    let img = s.images("img2");
    criu_ok(&criu, &["dump", "-t", &s.pid.to_string(), "--leave-running"], &img, "dump.log");
    s.ticks_on(3, "after a --leave-running dump");
    for p in live_with_exe(&s.bin) {
        let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
    }
    s.gone();
    criu_ok(&criu, &["restore", "-d"], &img, "restore.log");
    s.refind();
    s.ticks_on(4, "after the second restore");
}

#[test]
fn netlink_sockets_with_upstream() {
    require!(why_not_upstream());
    let mut s = Nl::start("upstream", &["low"]);
    let criu = private_criu(&s.dir);
    s.ticks_on(2, "before the dump");
    let img = s.images("ours");
    criu_ok(&criu, &["dump", "-t", &s.pid.to_string()], &img, "dump.log");
    s.gone();
    upstream_ok(&["restore", "-d"], &img, "restore-upstream.log");
    s.refind();
    s.ticks_on(4, "after upstream's restore of our images");
    let img = s.images("theirs");
    upstream_ok(&["dump", "-t", &s.pid.to_string()], &img, "dump-upstream.log");
    s.gone();
    criu_ok(&criu, &["restore", "-d"], &img, "restore.log");
    s.refind();
    s.ticks_on(4, "after our restore of upstream's dump");
}

#[test]
fn hostile_netlink_images_are_refused() {
    require!(why_not_here());
    let s = Nl::start("hostile", &[]);
    let criu = private_criu(&s.dir);
    s.ticks_on(2, "before the dump");
    let img = s.images("img");
    criu_ok(&criu, &["dump", "-t", &s.pid.to_string()], &img, "dump.log");
    s.gone();
    let edit = |name: &str, f: &dyn Fn(&mut pb::NetlinkSkEntry)| -> PathBuf {
        let out = img.with_file_name(name);
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).unwrap();
        for e in std::fs::read_dir(&img).unwrap().flatten() {
            std::fs::copy(e.path(), out.join(e.file_name())).unwrap();
        }
        let mut v: Vec<pb::FileEntry> = image::read_all(&out, "files.img", &magic::FILES).unwrap();
        v.iter_mut().filter_map(|e| e.nlsk.as_mut()).for_each(f);
        image::write_all(&out, "files.img", &magic::FILES, &v).unwrap();
        out
    };
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        ("protocol", edit("bad-proto", &|e| e.protocol = 40), "nlsk.protocol: 40 is not a netlink protocol"),
        ("groups", edit("bad-groups", &|e| e.groups = vec![1; 100]), "nlsk.groups: 100 bitmap words"),
        ("dst_group", edit("bad-dst", &|e| e.dst_group = u32::MAX), "nlsk.dst_group: 4294967295 is past the groups"),
    ];
    for (what, dir, want) in cases {
        let (st, log) = criu_env(&criu, &["restore", "-d"], &dir, "restore.log", &[]);
        assert_eq!(st.code(), Some(1), "{what}: the restore must fail:\n{log}");
        assert!(log.contains(want), "{what}: the error must say {want:?}:\n{log}");
        assert!(live_with_exe(&s.bin).is_empty(), "{what}: a refused image must not start anything");
    }
}
