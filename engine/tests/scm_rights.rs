//! Regular files in flight (passed with SCM_RIGHTS in queued messages of
//! unix sockets, not received yet) through dump and restore, with
//! tests/progs/scmflight.c, which receives each tick what the last tick
//! passed and checks every fd (file, access mode, O_APPEND, offset):
//! plain and `--leave-running` rounds, upstream CRIU 4.2 both ways, the
//! sk-queues scm entries upstream's shape, hostile images (rights naming
//! no file, or a file that is not a regular one) refused. Needs root,
//! gcc, unshare, setsid.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;

use images_proto::{image, magic, pb};

use common::{criu_env, criu_ok, last_tick, live_with_exe, only_stdio, private_criu, require, test_dir, wait_until, why_not_here};

struct Scm {
    dir: PathBuf,
    bin: PathBuf,
    work: PathBuf,
    pid: i32,
}

impl Scm {
    fn start(name: &str) -> Scm {
        let dir = test_dir(&format!("scm-{name}"));
        let bin = dir.join("scmflight");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/progs/scmflight.c");
        let st = Command::new("gcc").args(["-O2", "-static", "-Wall", "-o"]).arg(&bin).arg(&src).status().expect("gcc");
        assert!(st.success(), "building scmflight");
        let work = dir.join("work");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        let mut child = only_stdio(Command::new("unshare").args(["--pid", "--fork", "setsid"]))
            .arg(&bin)
            .current_dir(&work)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start scmflight");
        std::thread::spawn(move || child.wait());
        wait_until("ready", Duration::from_secs(10), || work.join("ready").exists());
        let mut s = Scm { dir, bin, work, pid: 0 };
        wait_until("first tick", Duration::from_secs(10), || s.tick() >= 1);
        s.refind();
        s
    }

    fn refind(&mut self) {
        let pids = live_with_exe(&self.bin);
        assert_eq!(pids.len(), 1, "one scmflight expected, found {pids:?}");
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

impl Drop for Scm {
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

/// The messages of `img` that carry files: (rights count) per entry.
fn scm_counts(img: &Path) -> Vec<usize> {
    let mut r = image::ImageReader::open(img, "sk-queues.img", &magic::SK_QUEUES).unwrap();
    let mut out = Vec::new();
    while let Some(e) = r.next_entry::<pb::SkPacketEntry>().unwrap() {
        r.read_payload(u64::from(e.length)).unwrap();
        out.push(e.scm.iter().map(|s| s.rights.len()).sum());
    }
    out.sort();
    out
}

/// Plain and `--leave-running` rounds: every file in flight arrives after
/// restore as it was passed (the images hold them: two messages with
/// files, one without).
#[test]
fn files_in_flight_round_trip() {
    require!(why_not_here());
    let mut s = Scm::start("round");
    let criu = private_criu(&s.dir);
    s.ticks_on(2, "before the dump");
    let img = s.images("img1");
    criu_ok(&criu, &["dump", "-t", &s.pid.to_string()], &img, "dump.log");
    assert_eq!(scm_counts(&img), vec![0, 1, 2], "messages with files in flight in the image");
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

/// Our images restored by upstream CRIU 4.2, and upstream's dump restored
/// by ours: the files in flight arrive either way.
#[test]
fn files_in_flight_with_upstream() {
    require!(why_not_upstream());
    let mut s = Scm::start("upstream");
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
    assert_eq!(scm_counts(&img), vec![0, 1, 2], "upstream's messages with files in flight");
    s.gone();
    criu_ok(&criu, &["restore", "-d"], &img, "restore.log");
    s.refind();
    s.ticks_on(4, "after our restore of upstream's dump");
}

/// Hostile sk-queues: rights naming a file files.img lacks, rights naming
/// a file that is not a regular one, ancillary data of another type.
#[test]
fn hostile_files_in_flight_are_refused() {
    require!(why_not_here());
    let s = Scm::start("hostile");
    let criu = private_criu(&s.dir);
    s.ticks_on(2, "before the dump");
    let img = s.images("img");
    criu_ok(&criu, &["dump", "-t", &s.pid.to_string()], &img, "dump.log");
    s.gone();
    let files: Vec<pb::FileEntry> = image::read_all(&img, "files.img", &magic::FILES).unwrap();
    let sock_id = files.iter().find(|f| f.usk.is_some()).unwrap().id;
    let edit = |name: &str, f: &dyn Fn(&mut pb::SkPacketEntry)| -> PathBuf {
        let out = img.with_file_name(name);
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).unwrap();
        for e in std::fs::read_dir(&img).unwrap().flatten() {
            std::fs::copy(e.path(), out.join(e.file_name())).unwrap();
        }
        let mut r = image::ImageReader::open(&img, "sk-queues.img", &magic::SK_QUEUES).unwrap();
        let mut w = image::ImageWriter::create(&out, "sk-queues.img", &magic::SK_QUEUES).unwrap();
        while let Some(mut e) = r.next_entry::<pb::SkPacketEntry>().unwrap() {
            let data = r.read_payload(u64::from(e.length)).unwrap();
            if !e.scm.is_empty() {
                f(&mut e);
            }
            w.write_entry(&e).unwrap();
            w.write_payload(&data).unwrap();
        }
        w.finish().unwrap();
        out
    };
    let cases: Vec<(&str, PathBuf, String)> = vec![
        ("nowhere", edit("bad-nowhere", &|e| e.scm[0].rights[0] = 9999), "scm[0].rights: file 9999 is not in files.img".to_string()),
        ("socket", edit("bad-socket", &|e| e.scm[0].rights[0] = sock_id), format!("file {sock_id} in flight is a UNIXSK")),
        ("type", edit("bad-type", &|e| e.scm[0].r#type = 2), "ancillary data of type 2".to_string()),
    ];
    for (what, dir, want) in cases {
        let (st, log) = criu_env(&criu, &["restore", "-d"], &dir, "restore.log", &[]);
        assert_eq!(st.code(), Some(1), "{what}: the restore must fail:\n{log}");
        assert!(log.contains(&want), "{what}: the error must say {want:?}:\n{log}");
        assert!(live_with_exe(&s.bin).is_empty(), "{what}: a refused image must not start anything");
    }
}
