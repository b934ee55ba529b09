//! Event objects (eventfd, timerfd, signalfd, epoll, inotify, fanotify) through dump and
//! restore, with tests/progs/evobjs.c, which holds each object on a fixed
//! fd number and checks its state every tick (`tick N ok` / `FAIL ...` in
//! progress.log): plain, `--leave-running`, twice in a row; the images
//! against upstream CRIU 4.2 both ways where upstream supports the object;
//! hostile images refused by name. Needs root, gcc, unshare, setsid.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod common;

use engine::kinds::Kind;
use images_proto::{image, magic, pb};
use engine::model::{Fd, FileDesc};

use common::{build_test_prog_with, criu_ok, live_with_exe, private_criu, require, test_dir, upstream_ok, wait_until, why_not_here, why_not_upstream, Find, OwnNsProg};

/// A running evobjs, started `unshare --pid --fork setsid evobjs WORDS...`
/// (pid 1 of its own pid namespace and a session leader, as the shared
/// fixtures are, so that upstream CRIU dumps it too); killed on drop.
struct Ev {
    p: OwnNsProg,
    /// It holds the 20 ms timer read every 5th tick (fd 19).
    periodic: bool,
}

impl std::ops::Deref for Ev {
    type Target = OwnNsProg;
    fn deref(&self) -> &OwnNsProg {
        &self.p
    }
}

impl std::ops::DerefMut for Ev {
    fn deref_mut(&mut self) -> &mut OwnNsProg {
        &mut self.p
    }
}

impl Ev {
    /// Pid 1 of its namespace (with `fork`, its child runs the same binary).
    fn start(name: &str, words: &[&str]) -> Ev {
        let dir = test_dir(&format!("kinds-{name}"));
        let bin = build_test_prog_with("evobjs", &dir, &["-lrt"]);
        let p = OwnNsProg::run(dir, bin, Find::NsInit, |bin| {
            let mut c = Command::new("unshare");
            c.args(["--pid", "--fork", "setsid"]).arg(bin).args(words);
            c
        });
        Ev { p, periodic: words.contains(&"periodic") }
    }

    /// Right after a tick 5k+1, when the program holds fd 19: that timer
    /// has then expired and is unread for the next 300 ms or more (read on
    /// ticks 5k), which a dump now catches.
    fn wait_for_dump_moment(&self) {
        if self.periodic {
            wait_until("a tick 5k+1", Duration::from_secs(5), || self.tick() % 5 == 1);
        }
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
        self.kill_all();
        // the files of the fanotify mount mark, named after the work dir's inode
        if let Ok(m) = std::fs::metadata(&self.work) {
            use std::os::unix::fs::MetadataExt;
            for x in ["m", "h"] {
                let _ = std::fs::remove_file(format!("/dev/shm/evobjs-{:x}-{x}", m.ino()));
            }
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
    round_trip("eventfd", &["eventfd", "semaphore", "bigcount"], &[10, 11, 12]);
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

/// inotify watches (their wds, one past a gap, masks and inodes) go on
/// reporting exactly the events they did.
#[test]
fn inotify_round_trips() {
    require!(why_not_here());
    round_trip("inotify", &["inotify"], &[28]);
}

/// fanotify marks (an inode, a mount, an ignored mask that survives
/// modification) go on reporting exactly what they did.
#[test]
fn fanotify_round_trips() {
    require!(why_not_here());
    round_trip("fanotify", &["fanotify"], &[29]);
}

/// What a restore changes on purpose in the fdinfo of evobjs's epoll set
/// (fd 25) with `moved`.
fn epoll_expect(fd: i32, v: Vec<String>) -> Vec<String> {
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
}

/// Every object shared by two processes (the program forks a child that
/// inherits them all): the root makes each description for the tree, an
/// epoll set after its targets, each watch added through the target's own
/// fd number (which the program's EPOLL_CTL_MOD/DEL name); both processes
/// are back and the program ticks on.
#[test]
fn objects_shared_across_a_fork_round_trip() {
    require!(why_not_here());
    let words = ["eventfd", "semaphore", "timerfd", "periodic", "signalfd", "epoll", "nested", "moved", "inotify", "fanotify", "fork"];
    let ev = round_trip_with("shared", &words, &[10, 11, 14, 19, 20, 21, 25, 26, 28, 29, 40], epoll_expect);
    assert_eq!(live_with_exe(&ev.bin).len(), 2, "the root and its child");
    let child = live_with_exe(&ev.bin).into_iter().find(|&p| p != ev.pid).unwrap();
    let watches = |pid: i32| -> Vec<String> {
        let t = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/25")).unwrap_or_default();
        let mut v: Vec<String> = t.lines().filter(|l| l.starts_with("tfd:")).map(|l| l.split(" pos:").next().unwrap().split_whitespace().collect::<Vec<_>>().join(" ")).collect();
        v.sort();
        v
    };
    assert_eq!(watches(child), watches(ev.pid), "the child's epoll is the root's");
    assert!(watches(ev.pid).iter().any(|l| l.starts_with("tfd: 40 ")), "{:?}", watches(ev.pid));
}

/// Every watch of an epoll set, EPOLLET and a fired EPOLLONESHOT among
/// them, a target added through an fd since closed (and its number reused)
/// and a nested epoll set.
#[test]
fn epoll_round_trips() {
    require!(why_not_here());
    let ev = round_trip_with("epoll", &["epoll", "periodic", "moved", "nested", "semaphore", "bigcount", "timerfd"], &[10, 11, 12, 14, 19, 20, 21, 24, 25, 26, 30, 40], epoll_expect);
    // fd 30 is the unwatched eventfd that took the number
    assert!(ev.fdinfo(30).iter().any(|l| l.trim_end().ends_with("eventfd-count:                0")), "fd 30: {:?}", ev.fdinfo(30));
}

/// Run upstream CRIU 4.2 (`args -D dir -v4 -o log`); require success.
/// Our image set of eventfds, timers (not the periodic ones: upstream's
/// restore disarms a periodic timer that expired unread, README of the
/// fixtures), signalfds and epoll sets (nested, and a target whose fd was
/// closed) restored by upstream CRIU 4.2: it ticks on.
#[test]
fn upstream_restores_our_images() {
    require!(why_not_upstream());
    let mut ev = Ev::start("to-upstream", &["eventfd", "timerfd", "signalfd", "epoll", "nested", "moved", "inotify", "fanotify"]);
    let criu = private_criu(&ev.dir);
    ev.ticks_on(2, "before the dump");
    let links = ev.links();
    let img = ev.images("img");
    criu_ok(&criu, &["dump", "-t", &ev.pid.to_string()], &img, "dump.log");
    wait_until("the dumped process gone", Duration::from_secs(5), || live_with_exe(&ev.bin).is_empty());
    upstream_ok(&["restore", "-d"], &img, "restore-upstream.log");
    ev.refind();
    ev.ticks_on(5, "after upstream's restore");
    assert_eq!(ev.links(), links, "fds after upstream's restore");
}

/// Upstream CRIU 4.2's dump of the program, every object upstream dumps
/// (the eventfd semaphore mode it does not record), restored by ours: it
/// ticks on, including the periodic timer upstream's own restore loses
/// (expired and unread in the image: checked).
#[test]
fn we_restore_upstream_dumps() {
    require!(why_not_upstream());
    let mut ev = Ev::start("from-upstream", &["eventfd", "bigcount", "timerfd", "periodic", "signalfd", "epoll", "nested", "moved", "inotify", "fanotify"]);
    let criu = private_criu(&ev.dir);
    ev.ticks_on(2, "before the dump");
    let links = ev.links();
    let img = ev.images("img");
    ev.wait_for_dump_moment();
    upstream_ok(&["dump", "-t", &ev.pid.to_string()], &img, "dump-upstream.log");
    expired_timer_in(&img);
    wait_until("the dumped process gone", Duration::from_secs(5), || live_with_exe(&ev.bin).is_empty());
    criu_ok(&criu, &["restore", "-d"], &img, "restore.log");
    ev.refind();
    ev.ticks_on(7, "after our restore of upstream's dump");
    assert_eq!(ev.links(), links, "fds after restore");
}

/// A copy of image set `img` with files.img's entries changed by `edit`.
fn edited(img: &Path, name: &str, edit: impl FnOnce(&mut Vec<pb::FileEntry>)) -> PathBuf {
    common::edited_image(img, name, "files.img", &magic::FILES, edit)
}

/// Hostile images: an epoll target that names no fd of the table, one
/// past any fd number, a timerfd on a clock that does not exist, a
/// nanosecond count past a second. Each refused with an error naming
/// what is wrong, before any process is made.
#[test]
fn hostile_event_images_are_refused() {
    require!(why_not_here());
    let ev = Ev::start("hostile", &["epoll", "timerfd", "inotify", "fanotify"]);
    let criu = private_criu(&ev.dir);
    ev.ticks_on(1, "before the dump");
    let img = ev.images("img");
    criu_ok(&criu, &["dump", "-t", &ev.pid.to_string()], &img, "dump.log");
    wait_until("the dumped process gone", Duration::from_secs(5), || live_with_exe(&ev.bin).is_empty());
    let epoll = |f: &mut Vec<pb::FileEntry>| -> usize { f.iter().position(|e| e.epfd.is_some()).expect("an epoll entry") };
    let timer = |f: &mut Vec<pb::FileEntry>| -> usize { f.iter().position(|e| e.tfd.is_some()).expect("a timerfd entry") };
    let inotify = |f: &mut Vec<pb::FileEntry>| -> usize { f.iter().position(|e| e.ify.is_some()).expect("an inotify entry") };
    let fanotify = |f: &mut Vec<pb::FileEntry>| -> usize { f.iter().position(|e| e.ffy.is_some()).expect("a fanotify entry") };
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        ("epoll target nowhere", edited(&img, "bad-tfd", |f| { let i = epoll(f); f[i].epfd.as_mut().unwrap().tfd[0].tfd = 77 }), "needs fd 77, which is not in the fd table"),
        ("epoll target out of range", edited(&img, "huge-tfd", |f| { let i = epoll(f); f[i].epfd.as_mut().unwrap().tfd[0].tfd = u32::MAX }), "tfd: fd 4294967295 is out of range"),
        ("timerfd clock", edited(&img, "bad-clock", |f| { let i = timer(f); f[i].tfd.as_mut().unwrap().clockid = 42 }), "tfd.clockid: 42 is not a clock a timerfd can use"),
        ("inotify handle size", edited(&img, "bad-handle", |f| { let i = inotify(f); f[i].ify.as_mut().unwrap().wd[0].f_handle.bytes = 4096 }), "ify.wd[0].f_handle.bytes: 4096 bytes"),
        ("inotify wd", edited(&img, "bad-wd", |f| { let i = inotify(f); f[i].ify.as_mut().unwrap().wd[0].wd = 0 }), "ify.wd[0].wd: 0 is not a watch descriptor"),
        ("fanotify mark type", edited(&img, "bad-mark", |f| { let i = fanotify(f); f[i].ffy.as_mut().unwrap().mark[0].r#type = 7 }), "ffy.mark[0].type: 7 is not a mark type"),
        ("timerfd nanoseconds", edited(&img, "bad-nsec", |f| { let i = timer(f); f[i].tfd.as_mut().unwrap().insec = 1_000_000_000 }), "tfd.insec: 1000000000 nanoseconds is not below one second"),
    ];
    common::refused_restores(&criu, &ev.bin, cases);
}

/// The event objects of upstream CRIU 4.2's dump of the `ipc` fixture
/// (../shared/fixtures/upstream/ipc) read as what that program holds: an
/// eventfd with count 5, its 20 ms CLOCK_MONOTONIC timerfd expired and
/// unread, a signalfd for SIGUSR1, an epoll set over the timerfd (fd 9)
/// and a socket (fd 5) with their data. (The program's unix sockets are
/// another kind's: only these entries are read here.)
#[test]
fn upstream_ipc_event_objects_read() {
    require!(common::why_not_fixture("upstream/ipc"));
    let dir = test_support::fixture("upstream/ipc").join("images");
    let files: Vec<pb::FileEntry> = image::read_all(&dir, "files.img", &magic::FILES).unwrap();
    let mut scratch = engine::kinds::Scratch::default();
    let mut got = Vec::new();
    for e in &files {
        let mut cx = engine::kinds::Read { dir: &dir, files: &files, fd: 0, scratch: &mut scratch };
        match engine::kinds::read(e, &mut cx).unwrap() {
            // the unix sockets are tests/unix_sockets.rs's, the pipe and
            // regular files files.rs's
            Some(Kind::Unix(_)) | Some(Kind::Pipe(_)) | Some(Kind::Reg(_)) | None => {}
            Some(k) => got.push(k),
        }
    }
    use engine::kinds::{epoll, eventfd::Eventfd, signalfd::Signalfd, timerfd::Timerfd};
    let rdwr_nonblock = (libc::O_RDWR | libc::O_NONBLOCK) as u32;
    let target = |fd, data, ino| epoll::Target { fd, events: 0x19, data, dev: if fd == 9 { 16 } else { 9 }, ino, pos: 0 };
    assert_eq!(
        got,
        vec![
            Kind::Eventfd(Eventfd { flags: rdwr_nonblock, count: 5, semaphore: false }),
            Kind::Timerfd(Timerfd { flags: rdwr_nonblock, clock: 1, ticks: 1, settime_flags: 0, value: (0, 0), interval: (0, 20_000_000) }),
            Kind::Signalfd(Signalfd { flags: rdwr_nonblock, mask: 1 << (libc::SIGUSR1 - 1) }),
            Kind::Epoll(epoll::Epoll { flags: libc::O_RDWR as u32, targets: vec![target(9, 0x2222, 1038), target(5, 0x1111, 664962)] }),
        ]
    );
}

/// Every key path of a JSON value (arrays folded to `[]`).
fn key_paths(v: &serde_json::Value, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                out.insert(p.clone());
                key_paths(x, &p, out);
            }
        }
        serde_json::Value::Array(a) => {
            for x in a {
                key_paths(x, &format!("{prefix}.[]"), out);
            }
        }
        _ => {}
    }
}

/// Per event-object type, the key paths of its files.img entries as crit
/// renders them.
fn event_entry_shapes(img: &Path) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let path = img.join("files.img");
    let v = image::decode_image(&std::fs::read(&path).unwrap(), &path, false).unwrap();
    let mut out = std::collections::BTreeMap::new();
    for e in v["entries"].as_array().unwrap() {
        let ty = e["type"].as_str().unwrap().to_string();
        if ["EVENTFD", "TIMERFD", "SIGNALFD", "EVENTPOLL", "INOTIFY", "FANOTIFY"].contains(&ty.as_str()) {
            key_paths(e, "", out.entry(ty).or_default());
        }
    }
    out
}

/// The files.img entries of every event object, as our dump writes them,
/// have the shape (crit's JSON keys) of upstream 4.2's for the same
/// program at the same moment.
#[test]
fn event_images_have_upstream_shape() {
    require!(why_not_upstream());
    let ev = Ev::start("shape", &["eventfd", "timerfd", "periodic", "signalfd", "epoll", "nested", "moved", "inotify", "fanotify"]);
    let criu = private_criu(&ev.dir);
    ev.ticks_on(2, "before the dumps");
    let ours = ev.images("ours");
    criu_ok(&criu, &["dump", "-t", &ev.pid.to_string(), "--leave-running"], &ours, "dump.log");
    let up = ev.images("upstream");
    upstream_ok(&["dump", "-t", &ev.pid.to_string()], &up, "dump-upstream.log");
    let (a, b) = (event_entry_shapes(&ours), event_entry_shapes(&up));
    assert_eq!(a.keys().count(), 6, "every event type in our image: {:?}", a.keys());
    assert_eq!(a, b, "shapes of the event entries: ours (left), upstream's (right)");
}
