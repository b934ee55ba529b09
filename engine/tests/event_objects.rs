//! Event objects (eventfd, timerfd, signalfd, epoll) through dump and
//! restore, with tests/progs/evobjs.c, which holds each object on a fixed
//! fd number and checks its state every tick (`tick N ok` / `FAIL ...` in
//! progress.log): plain, `--leave-running`, twice in a row; the images
//! against upstream CRIU 4.2 both ways where upstream supports the object;
//! hostile images refused by name. Needs root, gcc, unshare, setsid.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;

use engine::kinds::Kind;
use engine::model::{Fd, FileDesc};

use common::{criu_ok, last_tick, live_with_exe, only_stdio, private_criu, require, test_dir, wait_until, why_not_here};

/// A running evobjs, started `setsid unshare --pid --fork evobjs WORDS...`
/// (pid 1 of its own pid namespace); killed on drop.
struct Ev {
    dir: PathBuf,
    bin: PathBuf,
    work: PathBuf,
    pid: i32,
    /// It holds the 20 ms timer read every 5th tick (fd 19).
    periodic: bool,
}

impl Ev {
    fn start(name: &str, words: &[&str]) -> Ev {
        let dir = test_dir(&format!("kinds-{name}"));
        let bin = dir.join("evobjs");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/progs/evobjs.c");
        let st = Command::new("gcc").args(["-O2", "-static", "-Wall", "-o"]).arg(&bin).arg(&src).arg("-lrt").status().expect("gcc");
        assert!(st.success(), "building evobjs");
        let work = dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let mut child = only_stdio(Command::new("setsid").args(["unshare", "--pid", "--fork"]))
            .arg(&bin)
            .args(words)
            .current_dir(&work)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start evobjs");
        std::thread::spawn(move || child.wait());
        wait_until("ready", Duration::from_secs(10), || work.join("ready").exists());
        let periodic = words.iter().any(|w| *w == "periodic" || *w == "epoll");
        let mut ev = Ev { dir, bin, work, pid: 0, periodic };
        wait_until("first tick", Duration::from_secs(10), || ev.tick() >= 1);
        ev.refind();
        ev
    }

    fn refind(&mut self) {
        let pids = live_with_exe(&self.bin);
        assert_eq!(pids.len(), 1, "one evobjs process expected, found {pids:?}");
        self.pid = pids[0];
    }

    fn log(&self) -> PathBuf {
        self.work.join("progress.log")
    }

    fn tick(&self) -> u64 {
        last_tick(&self.log())
    }

    fn ticks_on(&self, n: u64, what: &str) {
        let t = self.tick();
        wait_until(&format!("{n} ticks {what}"), Duration::from_secs(20), || self.tick() >= t + n);
    }

    /// Right after a tick 5k+1, when the program holds fd 19: that timer
    /// has then expired and is unread for the next 300 ms or more (read on
    /// ticks 5k), which a dump now catches.
    fn wait_for_dump_moment(&self) {
        if self.periodic {
            wait_until("a tick 5k+1", Duration::from_secs(5), || self.tick() % 5 == 1);
        }
    }

    fn images(&self, name: &str) -> PathBuf {
        let d = self.dir.join(name);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// The fdinfo lines that describe the objects, sorted (not positions,
    /// ids, a timer's time left and expirations, which move on), per fd.
    fn fdinfo(&self, fd: i32) -> Vec<String> {
        let t = std::fs::read_to_string(format!("/proc/{}/fdinfo/{fd}", self.pid)).unwrap_or_default();
        let skip = ["pos:", "mnt_id:", "ino:", "eventfd-id:", "it_value:", "ticks:"];
        let mut v: Vec<String> = t
            .lines()
            .filter(|l| !skip.iter().any(|s| l.starts_with(s)))
            .map(|l| {
                // epoll: tfd, events, data (not the target's ino/sdev/pos)
                match l.split_once(" pos:") {
                    Some((head, _)) if l.starts_with("tfd:") => head.split_whitespace().collect::<Vec<_>>().join(" "),
                    _ => l.to_string(),
                }
            })
            .collect();
        v.sort();
        v
    }

    /// What each fd is (a pipe without its inode number, which a restore
    /// renews).
    fn links(&self) -> Vec<(i32, String)> {
        common::fd_links(self.pid).into_iter().map(|(fd, l)| (fd, if l.starts_with("pipe:[") { "pipe".to_string() } else { l })).collect()
    }
}

impl Drop for Ev {
    fn drop(&mut self) {
        for p in live_with_exe(&self.bin) {
            let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
        }
    }
}

/// Dump (killing it) and restore with our criu; the program ticks on.
fn dump_restore(ev: &mut Ev, criu: &Path, img: &Path, leave_running: bool) {
    let pid = ev.pid.to_string();
    let mut args = vec!["dump", "-t", &pid];
    if leave_running {
        args.push("--leave-running");
    }
    ev.wait_for_dump_moment();
    criu_ok(criu, &args, img, "dump.log");
    if ev.periodic {
        expired_timer_in(img);
    }
    if leave_running {
        ev.ticks_on(2, "after a --leave-running dump");
        for p in live_with_exe(&ev.bin) {
            let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
        }
        wait_until("the original gone", Duration::from_secs(5), || live_with_exe(&ev.bin).is_empty());
    } else {
        wait_until("the dumped process gone", Duration::from_secs(5), || live_with_exe(&ev.bin).is_empty());
    }
    criu_ok(criu, &["restore", "-d"], img, "restore.log");
    ev.refind();
    ev.ticks_on(3, "after restore");
}

/// The fd table of the image set in `img` (its one fdinfo-N.img).
fn image_fds(img: &Path) -> Vec<Fd> {
    let files_id = std::fs::read_dir(img)
        .unwrap()
        .flatten()
        .find_map(|e| e.file_name().to_str()?.strip_prefix("fdinfo-")?.strip_suffix(".img")?.parse().ok())
        .expect("an fdinfo image");
    engine::images_io::read_fd_table(img, files_id).expect("reading the fd table").0
}

/// The image holds fd 19 as what this test means it to: a periodic timer
/// that expired and was not read (no time left, expirations pending).
fn expired_timer_in(img: &Path) {
    let fds = image_fds(img);
    let t = fds.iter().find(|f| f.fd == 19).map(|f| &f.file);
    match t {
        Some(FileDesc::Kind(Kind::Timerfd(t))) => {
            assert!(t.ticks >= 1 && t.value == (0, 0) && t.interval == (0, 20_000_000), "fd 19 is not an expired unread periodic timer: {t:?}")
        }
        other => panic!("fd 19 of the image is {other:?}"),
    }
}

/// Start evobjs with `words`, dump and restore it (plain), check the
/// fdinfo of `fds` is as before (through `expect`, which says what a
/// restore changes on purpose), then dump the restored one with
/// `--leave-running` and restore that too. Returns the running program.
fn round_trip_with(name: &str, words: &[&str], fds: &[i32], expect: impl Fn(i32, Vec<String>) -> Vec<String>) -> Ev {
    let mut ev = Ev::start(name, words);
    let criu = private_criu(&ev.dir);
    ev.ticks_on(2, "before the dump");
    let links = ev.links();
    let before: Vec<Vec<String>> = fds.iter().map(|&f| expect(f, ev.fdinfo(f))).collect();
    let img = ev.images("img1");
    dump_restore(&mut ev, &criu, &img, false);
    assert_eq!(ev.links(), links, "fds after restore");
    let after: Vec<Vec<String>> = fds.iter().map(|&f| ev.fdinfo(f)).collect();
    assert_eq!(after, before, "fdinfo of fds {fds:?} after restore");
    // and again, from the restored process, leaving it running
    let img = ev.images("img2");
    dump_restore(&mut ev, &criu, &img, true);
    assert_eq!(ev.links(), links, "fds after the second restore");
    let after: Vec<Vec<String>> = fds.iter().map(|&f| ev.fdinfo(f)).collect();
    assert_eq!(after, before, "fdinfo of fds {fds:?} after the second restore");
    ev.ticks_on(3, "at the end");
    ev
}

fn round_trip(name: &str, words: &[&str], fds: &[i32]) {
    round_trip_with(name, words, fds, |_, v| v);
}

#[test]
fn eventfd_round_trips() {
    require!(why_not_here());
    round_trip("eventfd", &["eventfd", "semaphore"], &[10, 11, 12]);
}

#[test]
fn timerfd_round_trips() {
    require!(why_not_here());
    round_trip("timerfd", &["timerfd", "periodic"], &[14, 15, 16, 17, 18, 19]);
}

#[test]
fn signalfd_round_trips() {
    require!(why_not_here());
    round_trip("signalfd", &["signalfd"], &[20, 21]);
}

/// Every watch of an epoll set, EPOLLET and a fired EPOLLONESHOT among
/// them, a target added through an fd since closed (and its number reused)
/// and a nested epoll set.
#[test]
fn epoll_round_trips() {
    require!(why_not_here());
    let ev = round_trip_with("epoll", &["epoll", "moved", "nested", "semaphore", "timerfd"], &[10, 11, 12, 14, 19, 20, 21, 24, 25, 26, 30, 40], |fd, v| {
        if fd != 25 {
            return v;
        }
        let mut v: Vec<String> = v
            .into_iter()
            .map(|l| {
                // the target added as fd 30 is watched through fd 40, which holds it
                let l = l.replace("tfd: 30 ", "tfd: 40 ");
                // a fired EPOLLONESHOT watch comes back with EPOLLERR|EPOLLHUP,
                // which the kernel adds to every EPOLL_CTL_ADD
                l.replace("events: 40000000 ", "events: 40000018 ")
            })
            .collect();
        v.sort();
        v
    });
    // fd 30 is the unwatched eventfd that took the number
    assert!(ev.fdinfo(30).iter().any(|l| l.trim_end().ends_with("eventfd-count:                0")), "fd 30: {:?}", ev.fdinfo(30));
}
