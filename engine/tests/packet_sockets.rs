//! Packet sockets through dump and restore, with tests/progs/pktsk.c (a
//! raw socket for a local ethertype bound to lo with aux data, timestamps
//! and a promiscuous membership added twice, which sends a frame on lo
//! and sees it come back every tick; a datagram socket for IP with
//! TPACKET_V2, a reserve and orig-dev; one with protocol 0): plain and
//! `--leave-running` rounds (the memberships read back from a second
//! dump), upstream CRIU 4.2 both ways (one membership: upstream's dump
//! refuses a repeated one), hostile images. Needs root, gcc, unshare,
//! setsid.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;

use images_proto::{image, magic, pb};
use engine::kinds::Kind;
use engine::model::FileDesc;

use common::{criu_env, criu_ok, last_tick, live_with_exe, only_stdio, private_criu, require, test_dir, wait_until, why_not_here};

struct Pk {
    dir: PathBuf,
    bin: PathBuf,
    work: PathBuf,
    pid: i32,
}

impl Pk {
    fn start(name: &str, words: &[&str]) -> Pk {
        let dir = test_dir(&format!("pk-{name}"));
        let bin = dir.join("pktsk");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/progs/pktsk.c");
        let st = Command::new("gcc").args(["-O2", "-static", "-Wall", "-o"]).arg(&bin).arg(&src).status().expect("gcc");
        assert!(st.success(), "building pktsk");
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
            .expect("start pktsk");
        std::thread::spawn(move || child.wait());
        wait_until("ready", Duration::from_secs(10), || work.join("ready").exists());
        let mut s = Pk { dir, bin, work, pid: 0 };
        wait_until("first tick", Duration::from_secs(10), || s.tick() >= 1);
        s.refind();
        s
    }

    fn refind(&mut self) {
        let pids = live_with_exe(&self.bin);
        assert_eq!(pids.len(), 1, "one pktsk expected, found {pids:?}");
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

impl Drop for Pk {
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

/// The packet sockets of image set `img` as read back.
fn packets(img: &Path) -> Vec<engine::kinds::packet::Packet> {
    let files_id = std::fs::read_dir(img)
        .unwrap()
        .flatten()
        .find_map(|e| e.file_name().to_str()?.strip_prefix("fdinfo-")?.strip_suffix(".img")?.parse().ok())
        .expect("an fdinfo image");
    let (fds, _) = engine::images_io::read_fd_table(img, files_id).expect("reading the fd table");
    fds.into_iter()
        .filter_map(|f| match f.file {
            FileDesc::Kind(Kind::Packet(n)) => Some(n),
            _ => None,
        })
        .collect()
}

#[test]
fn packet_sockets_round_trip() {
    require!(why_not_here());
    let mut s = Pk::start("round", &[]);
    let criu = private_criu(&s.dir);
    s.ticks_on(2, "before the dump");
    let img = s.images("img1");
    criu_ok(&criu, &["dump", "-t", &s.pid.to_string()], &img, "dump.log");
    let p = packets(&img);
    assert_eq!(p.len(), 3, "{p:?}");
    assert_eq!((p[0].protocol, p[0].ifindex, p[0].aux_data, p[0].mclist.len()), (0x88b5, 1, true, 2), "{:?}", p[0]);
    assert_eq!((p[1].protocol, p[1].version, p[1].reserve, p[1].orig_dev), (0x0800, 1, 64, true), "{:?}", p[1]);
    s.gone();
    criu_ok(&criu, &["restore", "-d"], &img, "restore.log");
    s.refind();
    s.ticks_on(4, "after restore");
    let img2 = s.images("img2");
    criu_ok(&criu, &["dump", "-t", &s.pid.to_string(), "--leave-running"], &img2, "dump.log");
    let again: Vec<_> = packets(&img2).into_iter().map(|mut x| { x.ino = 0; x }).collect();
    let first: Vec<_> = p.into_iter().map(|mut x| { x.ino = 0; x }).collect();
    assert_eq!(again, first, "the packet sockets as restored, dumped again");
    s.ticks_on(3, "after a --leave-running dump");
    for p in live_with_exe(&s.bin) {
        let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
    }
    s.gone();
    criu_ok(&criu, &["restore", "-d"], &img2, "restore.log");
    s.refind();
    s.ticks_on(4, "after the second restore");
}

#[test]
fn packet_sockets_with_upstream() {
    require!(why_not_upstream());
    let mut s = Pk::start("upstream", &["single"]);
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
fn hostile_packet_images_are_refused() {
    require!(why_not_here());
    let s = Pk::start("hostile", &[]);
    let criu = private_criu(&s.dir);
    s.ticks_on(2, "before the dump");
    let img = s.images("img");
    criu_ok(&criu, &["dump", "-t", &s.pid.to_string()], &img, "dump.log");
    s.gone();
    let edit = |name: &str, f: &dyn Fn(&mut pb::PacketSockEntry)| -> PathBuf {
        let out = img.with_file_name(name);
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).unwrap();
        for e in std::fs::read_dir(&img).unwrap().flatten() {
            std::fs::copy(e.path(), out.join(e.file_name())).unwrap();
        }
        let mut v: Vec<pb::FileEntry> = image::read_all(&out, "files.img", &magic::FILES).unwrap();
        v.iter_mut().filter_map(|e| e.psk.as_mut()).for_each(f);
        image::write_all(&out, "files.img", &magic::FILES, &v).unwrap();
        out
    };
    let ring = pb::PacketRing { block_size: 4096, block_nr: 1, frame_size: 2048, frame_nr: 2, retire_tmo: 0, sizeof_priv: 0, features: 0 };
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        ("type", edit("bad-type", &|e| e.r#type = 7), "psk.type: 7 is neither SOCK_RAW nor SOCK_DGRAM"),
        ("protocol", edit("bad-proto", &|e| e.protocol = 0x10000), "psk.protocol: 0x10000 is past 16 bits"),
        ("ring", edit("bad-ring", &|e| e.rx_ring = Some(ring)), "psk.rx_ring: rings are not supported yet"),
        ("mclist addr", edit("bad-addr", &|e| e.mclist.iter_mut().for_each(|m| m.addr = vec![1; 40])), "bytes, more than a membership holds"),
    ];
    for (what, dir, want) in cases {
        let (st, log) = criu_env(&criu, &["restore", "-d"], &dir, "restore.log", &[]);
        assert_eq!(st.code(), Some(1), "{what}: the restore must fail:\n{log}");
        assert!(log.contains(want), "{what}: the error must say {want:?}:\n{log}");
        assert!(live_with_exe(&s.bin).is_empty(), "{what}: a refused image must not start anything");
    }
}
