//! Pseudo-terminals held by the tree itself through dump and restore, with
//! tests/progs/ptys.c: a pty that is the controlling terminal of the
//! program's session with bytes queued both ways (a partial line too), a
//! locked master in packet mode, and (`tree`) a child session whose
//! terminal is a pty of the program's, with a foreground group of its own
//! that answers lines. Every tick checks indices, termios, window size,
//! session, foreground group, lock, packet mode and the queued bytes
//! (`tick N ok` / `FAIL ...` in progress.log). Plain and `--leave-running`
//! rounds, both directions with upstream CRIU 4.2 (as far as it carries
//! the state), hostile images refused, a taken index refused. Needs root,
//! gcc, unshare, setsid.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod common;

use images_proto::{magic, pb};

use common::{criu_env, criu_ok, edited_image as edited, live_with_exe, private_criu, require, upstream_ok, wait_until, why_not_here, why_not_upstream, Find, OwnNsProg};

/// An fd table as (fd, link).
type Links = Vec<(i32, String)>;

/// A running ptys program, started `unshare --pid --fork setsid ptys
/// WORDS...` (pid 1 of its own pid namespace, a session leader without a
/// terminal); killed on drop.
struct Pt {
    /// Dropped first: the program killed before `_serial` is released.
    p: OwnNsProg,
    /// pts indices of A, D and B (-1 without `tree`), from ./ready.
    indices: Vec<i32>,
    /// Held while the program lives: the kernel hands out the lowest free
    /// pts index, so another test's program started between this one's
    /// dump and restore would take the index it needs back.
    _serial: std::sync::MutexGuard<'static, ()>,
}

/// One ptys program at a time (see `Pt::_serial`).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl std::ops::Deref for Pt {
    type Target = OwnNsProg;
    fn deref(&self) -> &OwnNsProg {
        &self.p
    }
}

impl std::ops::DerefMut for Pt {
    fn deref_mut(&mut self) -> &mut OwnNsProg {
        &mut self.p
    }
}

impl Pt {
    fn start(name: &str, words: &[&str]) -> Pt {
        let serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let p = OwnNsProg::launch(&format!("pty-{name}"), "ptys", Find::NsInit, |bin| {
            let mut c = Command::new("unshare");
            c.args(["--pid", "--fork", "setsid"]).arg(bin).args(words);
            c
        });
        let indices = std::fs::read_to_string(p.work.join("ready")).unwrap().lines().map(|l| l.parse().unwrap()).collect();
        Pt { p, indices, _serial: serial }
    }

    /// Every process of the program: (its controlling terminal from
    /// stat's tty_nr, its fds' links), in pid order of the namespace.
    fn terminals(&self) -> Vec<(u64, Links)> {
        let mut v: Vec<(i32, u64, Links)> = live_with_exe(&self.bin)
            .into_iter()
            .map(|p| {
                let st = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
                let ns = st.lines().find(|l| l.starts_with("NSpid:")).and_then(|l| l.split_whitespace().last()?.parse().ok()).unwrap_or(0);
                let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
                let tty_nr = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().nth(4).unwrap_or("0").parse().unwrap_or(0)).unwrap_or(0);
                let links = common::fd_links(p).into_iter().filter(|(_, l)| l.starts_with("/dev/")).collect();
                (ns, tty_nr, links)
            })
            .collect();
        v.sort();
        v.into_iter().map(|(_, t, l)| (t, l)).collect()
    }

}

/// Dump (killing it, or `--leave-running` and then killed) and restore
/// with our criu; the program ticks on with every check passing, and its
/// processes have the same terminals and fds as before.
fn dump_restore(pt: &mut Pt, criu: &Path, img: &Path, leave_running: bool) {
    let before = pt.terminals();
    let pid = pt.pid.to_string();
    let mut args = vec!["dump", "-t", &pid];
    if leave_running {
        args.push("--leave-running");
    }
    criu_ok(criu, &args, img, "dump.log");
    if leave_running {
        pt.ticks_on(3, "after a --leave-running dump (queued bytes put back)");
        pt.kill_all();
    } else {
        wait_until("the dumped program gone", Duration::from_secs(5), || live_with_exe(&pt.bin).is_empty());
    }
    criu_ok(criu, &["restore", "-d"], img, "restore.log");
    pt.refind();
    pt.ticks_on(4, "after restore");
    assert_eq!(pt.terminals(), before, "controlling terminals and fds after restore");
}

/// The program with its child session (`tree`) through a plain round and
/// a `--leave-running` one: indices, termios, window size, lock, packet
/// mode, session and foreground groups, the queued bytes (a partial line
/// and ONLCR output) all as before.
#[test]
fn ptys_round_trip() {
    require!(why_not_here());
    let mut pt = Pt::start("round", &["tree"]);
    let criu = private_criu(&pt.dir);
    pt.ticks_on(2, "before the dump");
    assert_eq!(pt.indices.len(), 3);
    let img = pt.images("img1");
    dump_restore(&mut pt, &criu, &img, false);
    let img = pt.images("img2");
    dump_restore(&mut pt, &criu, &img, true);
}

/// A dump with `--leave-running` takes the queued bytes and puts them
/// back: the program goes on with nothing lost (checked by the ticks in
/// `dump_restore`); here several dumps in a row with no restore.
#[test]
fn leave_running_dumps_keep_queued_bytes() {
    require!(why_not_here());
    let pt = Pt::start("leave", &["tree"]);
    let criu = private_criu(&pt.dir);
    pt.ticks_on(2, "before the dumps");
    for i in 0..3 {
        let img = pt.images(&format!("img{i}"));
        criu_ok(&criu, &["dump", "-t", &pt.pid.to_string(), "--leave-running"], &img, "dump.log");
        pt.ticks_on(2, "after a --leave-running dump");
    }
}

/// Restoring while the dumped program still runs: its pts indices are
/// taken, and the restore says so by name (nothing is left behind).
#[test]
fn a_taken_index_is_refused() {
    require!(why_not_here());
    let pt = Pt::start("taken", &[]);
    let criu = private_criu(&pt.dir);
    pt.ticks_on(1, "before the dump");
    let img = pt.images("img");
    criu_ok(&criu, &["dump", "-t", &pt.pid.to_string(), "--leave-running"], &img, "dump.log");
    let (st, log) = criu_env(&criu, &["restore", "-d"], &img, "restore.log", &[]);
    assert_eq!(st.code(), Some(1), "the restore must fail:\n{log}");
    let want = format!("/dev/pts/{} is taken", pt.indices[0]);
    assert!(log.contains(&want), "the error must say {want:?}:\n{log}");
    assert_eq!(live_with_exe(&pt.bin), vec![pt.pid], "only the original runs");
    pt.ticks_on(2, "after the refused restore");
}

/// Our images restored by upstream CRIU 4.2: the pty of the program's own
/// session goes on, partial line included. (`noout`: upstream writes the
/// slave's queued output back through the slave, where ONLCR doubles the
/// "\r"; without `tree`: upstream gives the controlling terminal to a
/// session leader after its children are forked, so they have none.)
#[test]
fn upstream_restores_our_pty_images() {
    require!(why_not_upstream());
    let mut pt = Pt::start("to-upstream", &["noout"]);
    let criu = private_criu(&pt.dir);
    pt.ticks_on(2, "before the dump");
    let img = pt.images("img");
    criu_ok(&criu, &["dump", "-t", &pt.pid.to_string()], &img, "dump.log");
    wait_until("the dumped program gone", Duration::from_secs(5), || live_with_exe(&pt.bin).is_empty());
    upstream_ok(&["restore", "-d"], &img, "restore-upstream.log");
    pt.refind();
    pt.ticks_on(5, "after upstream's restore");
}

/// Upstream CRIU 4.2's dump of the program with its child session,
/// restored by ours: it goes on, the child session's foreground group
/// with its terminal. (`lines`: upstream's dump loses a partial line of a
/// canonical slave; `noout` as above.)
#[test]
fn we_restore_upstream_pty_dumps() {
    require!(why_not_upstream());
    let mut pt = Pt::start("from-upstream", &["tree", "noout", "lines"]);
    let criu = private_criu(&pt.dir);
    pt.ticks_on(2, "before the dump");
    let before = pt.terminals();
    let img = pt.images("img");
    upstream_ok(&["dump", "-t", &pt.pid.to_string()], &img, "dump-upstream.log");
    wait_until("the dumped program gone", Duration::from_secs(5), || live_with_exe(&pt.bin).is_empty());
    criu_ok(&criu, &["restore", "-d"], &img, "restore.log");
    pt.refind();
    pt.ticks_on(5, "after our restore of upstream's dump");
    assert_eq!(pt.terminals(), before, "controlling terminals and fds after restore");
}

/// Hostile images: a pty index past the kernel's, queued bytes past what
/// a terminal holds, a tty entry naming info that is not there, a session
/// whose leader is not in the tree, a termios line discipline past a
/// byte. Each refused with an error naming it, before anything runs.
#[test]
fn hostile_pty_images_are_refused() {
    require!(why_not_here());
    let pt = Pt::start("hostile", &[]);
    let criu = private_criu(&pt.dir);
    pt.ticks_on(2, "before the dump");
    let img = pt.images("img");
    criu_ok(&criu, &["dump", "-t", &pt.pid.to_string()], &img, "dump.log");
    wait_until("the dumped program gone", Duration::from_secs(5), || live_with_exe(&pt.bin).is_empty());
    let info = |name: &str, f: &dyn Fn(&mut pb::TtyInfoEntry)| {
        edited(&img, name, "tty-info.img", &magic::TTY_INFO, |v: &mut Vec<pb::TtyInfoEntry>| v.iter_mut().for_each(f))
    };
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        ("index", info("bad-index", &|e| e.pty.as_mut().unwrap().index = 1 << 20), "past the kernel's largest pty index"),
        ("session", info("bad-sid", &|e| if e.sid != 0 { e.sid = 77 }), "session 77, whose leader is not in the tree"),
        ("c_line", info("bad-line", &|e| e.termios.as_mut().unwrap().c_line = 300), "c_line 300 is past a byte"),
        (
            "queue size",
            edited(&img, "bad-data", "tty-data.img", &magic::TTY_DATA, |v: &mut Vec<pb::TtyDataEntry>| v[0].data = vec![b'x'; 100_000]),
            "100000 bytes queued, more than a terminal holds",
        ),
        (
            "info id",
            edited(&img, "bad-info-id", "files.img", &magic::FILES, |v: &mut Vec<pb::FileEntry>| {
                v.iter_mut().filter_map(|e| e.tty.as_mut()).for_each(|t| t.tty_info_id += 1000)
            }),
            "which tty-info.img does not have",
        ),
    ];
    // an entry whose length runs past the end of tty-data.img
    let cut = img.with_file_name("cut-data");
    let _ = std::fs::remove_dir_all(&cut);
    std::fs::create_dir_all(&cut).unwrap();
    for e in std::fs::read_dir(&img).unwrap().flatten() {
        std::fs::copy(e.path(), cut.join(e.file_name())).unwrap();
    }
    let data = std::fs::read(cut.join("tty-data.img")).unwrap();
    std::fs::write(cut.join("tty-data.img"), &data[..data.len() - 3]).unwrap();
    let mut cases = cases;
    cases.push(("truncated data", cut, "tty-data.img"));
    common::refused_restores(&criu, &pt.bin, cases);
}
