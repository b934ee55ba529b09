//! File descriptors through dump + restore with real processes: the shared
//! `files` fixture (two cycles: the second dumps the recreated ghost), and
//! our programs in tests/fdsupport/progs (every fd kind, a terminal, size
//! checks). Needs root, gcc, unshare, setsid, script(1) and the shared
//! fixtures: `require!` skips with the reason, or fails under CI=true.

mod fdsupport;

use fdsupport::{fd_table, last_tick, require, wait_until, why_not_fixture, why_not_here, why_not_tool, Scene};
use std::time::Duration;

#[test]
fn files_fixture_two_cycles() {
    require!(why_not_here());
    let mut s = Scene::start("files", "cycles");
    for c in 0..2 {
        let dir = s.images(c);
        s.criu_ok(&["dump", "-t", &s.pid.to_string()], &dir, "dump.log");
        for img in ["files.img", "fdinfo-2.img", "pipes-data.img", "remap-fpath.img", "ghost-file-1.img"] {
            assert!(dir.join(img).exists(), "cycle {c}: {img} missing");
        }
        s.restore(&dir, &[]);
    }
    last_tick(&s.log());
}

/// The fd table after restore is the one before dump: targets, offsets,
/// status flags, FD_CLOEXEC (O_CLOEXEC in fdinfo flags).
#[test]
fn fd_kinds_survive_exactly() {
    require!(why_not_here());
    let mut s = Scene::start("fdkinds", "exact");
    let before = fd_table(s.pid);
    let dir = s.images(0);
    s.criu_ok(&["dump", "-t", &s.pid.to_string()], &dir, "dump.log");
    s.restore(&dir, &[]);
    let after = fd_table(s.pid);
    // the log (fd 3) keeps growing; its offset is not comparable
    let strip = |v: &[fdsupport::FdView]| -> Vec<fdsupport::FdView> {
        v.iter().cloned().map(|mut f| {
            if f.target.ends_with("progress.log") {
                f.pos = 0;
            }
            f
        }).collect()
    };
    assert_eq!(strip(&before), strip(&after), "fd table changed across dump+restore");
    let cloexec = libc::O_CLOEXEC as u32;
    let by_fd = |fd: i32| after.iter().find(|f| f.fd == fd).unwrap_or_else(|| panic!("fd {fd} missing: {after:?}")).clone();
    assert!(after.iter().any(|f| f.target == "/dev/null" && f.flags & cloexec != 0), "/dev/null with O_CLOEXEC: {after:?}");
    assert!(after.iter().any(|f| f.target == "/dev/zero" && f.flags & libc::O_NONBLOCK as u32 != 0), "/dev/zero O_NONBLOCK");
    assert_eq!(by_fd(20).pos, 4321, "dup'ed fd offset");
    assert!(after.iter().any(|f| f.target.ends_with("app.log") && f.flags & libc::O_APPEND as u32 != 0), "O_APPEND");
    // ticks keep passing their self-checks (shared offsets, pipe contents and size)
    let t = last_tick(&s.log());
    wait_until("more ticks", Duration::from_secs(10), || last_tick(&s.log()) > t + 5);
}

/// Upstream's size check: a regular file that changed size since the dump
/// refuses the restore, naming the file; restoring the size makes it work.
#[test]
fn changed_file_size_refuses_restore() {
    require!(why_not_here());
    let mut s = Scene::start("fdkinds", "size");
    let dir = s.images(0);
    s.criu_ok(&["dump", "-t", &s.pid.to_string()], &dir, "dump.log");
    let rw = s.work.join("rw.bin");
    let orig = std::fs::read(&rw).unwrap();
    std::fs::write(&rw, &orig[..5000]).unwrap();
    let out = s.criu(&["restore", "-d"], &dir, "restore-bad.log");
    assert_eq!(out.status.code(), Some(1), "restore of a changed file must fail");
    let log = std::fs::read_to_string(dir.join("restore-bad.log")).unwrap();
    assert!(log.contains("rw.bin has bad size 5000 (expect 10000)"), "log names the file and sizes:\n{log}");
    assert!(log.contains("Restoring FAILED."), "{log}");
    std::fs::write(&rw, &orig).unwrap();
    s.restore(&dir, &[]);
}

/// A terminal fd is refused without --shell-job (the task keeps running),
/// dumped with it, and restored onto the restoring criu's terminal.
#[test]
fn tty_needs_shell_job() {
    require!(why_not_here());
    let mut s = Scene::start("ttyfd", "tty");
    let dir = s.images(0);
    let out = s.criu(&["dump", "-t", &s.pid.to_string()], &dir, "dump-refused.log");
    assert_eq!(out.status.code(), Some(1));
    let log = std::fs::read_to_string(dir.join("dump-refused.log")).unwrap();
    assert!(log.contains("is a terminal (/dev/pts/") && log.contains("--shell-job"), "{log}");
    assert!(s.alive(), "a refused dump must leave the task running");
    let t = last_tick(&s.log());
    wait_until("ticks after refused dump", Duration::from_secs(10), || last_tick(&s.log()) > t + 2);

    s.criu_ok(&["dump", "-t", &s.pid.to_string(), "--shell-job"], &dir, "dump.log");
    assert!(dir.join("tty-info.img").exists());
    // without --shell-job the restore refuses too
    let out = s.criu(&["restore", "-d"], &dir, "restore-refused.log");
    assert_eq!(out.status.code(), Some(1));
    let log = std::fs::read_to_string(dir.join("restore-refused.log")).unwrap();
    assert!(log.contains("restore with --shell-job"), "{log}");
    // give criu a terminal with script(1), as a shell would
    require!(why_not_tool("script").map(|w| format!("the restore half needs script(1) for a terminal: {w}")));
    let t = last_tick(&s.log());
    let cmd = format!("{} restore -d --shell-job -D {} -v4 -o restore.log", fdsupport::CRIU, dir.display());
    let st = std::process::Command::new("script").args(["-qec", &cmd, "/dev/null"]).current_dir(&s.work)
        .stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).status().unwrap();
    assert!(st.success(), "restore --shell-job:\n{}", std::fs::read_to_string(dir.join("restore.log")).unwrap_or_default());
    wait_until("ticks after restore", Duration::from_secs(10), || last_tick(&s.log()) > t + 3);
    s.pid = fdsupport::pid_of(&s.bin).unwrap();
    let tbl = fd_table(s.pid);
    assert!(tbl.iter().any(|f| f.target.starts_with("/dev/pts/")), "terminal fd restored: {tbl:?}");
}

/// Upstream 4.2's own images of the files fixture read into the model:
/// shared descriptions, ghost contents, pipe data, flags and offsets.
#[test]
fn upstream_files_images_read() {
    use engine::model::FileDesc;
    require!(why_not_fixture("upstream/files/images"));
    let dir = test_support::fixture("upstream/files/images");
    let (fds, pipes) = engine::images_io::read_fd_table(&dir, 2).expect("read upstream fd table");
    assert_eq!(fds.len(), 14);
    let fd = |n: i32| fds.iter().find(|f| f.fd == n).unwrap();
    assert_eq!(fd(1).desc, fd(2).desc, "fds 1 and 2 share one description");
    assert_ne!(fd(0).desc, fd(1).desc);
    assert!(fd(6).cloexec && !fd(5).cloexec);
    use engine::kinds::reg::Reg;
    use engine::kinds::Kind;
    match &fd(4).file {
        FileDesc::Kind(Kind::Reg(Reg { path, pos, size, ghost: None, .. })) => {
            assert!(path.ends_with("/data.bin"));
            assert_eq!((*pos, *size), (1234, Some(8192)));
        }
        other => panic!("fd 4: {other:?}"),
    }
    match &fd(5).file {
        FileDesc::Kind(Kind::Reg(Reg { flags, size: None, .. })) => assert_ne!(*flags & libc::O_APPEND as u32, 0),
        other => panic!("fd 5: {other:?}"),
    }
    match &fd(9).file {
        FileDesc::Kind(Kind::Reg(Reg { path, pos, ghost: Some(g), .. })) => {
            assert!(path.ends_with("/ghost.bin"));
            assert_eq!(*pos, 5000);
            assert_eq!(g.size, 5000);
            assert_eq!(g.extents.len(), 1);
            assert_eq!((g.extents[0].0, g.extents[0].1.len()), (0, 5000));
            assert_eq!(g.mode, 0o100600);
        }
        other => panic!("fd 9: {other:?}"),
    }
    use engine::kinds::pipe::Pipe;
    assert!(matches!(fd(11).file, FileDesc::Kind(Kind::Pipe(Pipe { flags: 0, .. }))));
    assert!(matches!(fd(12).file, FileDesc::Kind(Kind::Pipe(Pipe { flags: 1, .. }))));
    assert_eq!(pipes.len(), 1);
    assert_eq!((pipes[0].data.len(), pipes[0].size), (100, 65536));
}

/// A source with no free fd (RLIMIT_NOFILE 32, all taken): the page pump's
/// injected pipe2 fails with EMFILE, the dump says so and copies the pages
/// the two-copy way, the source's fd table is untouched (no half-made pipe
/// left in it), and the restored program keeps passing its memory and
/// fd-count checks. Then once more with `--leave-running` and two cycles.
#[test]
fn full_fd_table_dumps_without_the_pump() {
    require!(why_not_here());
    let mut s = Scene::start("fdfull", "full");
    for cycle in 0..2 {
        let before = fd_table(s.pid);
        let dir = s.images(cycle);
        s.criu_ok(&["dump", "-t", &s.pid.to_string(), "--leave-running"], &dir, "dump.log");
        let log = std::fs::read_to_string(dir.join("dump.log")).unwrap();
        assert!(log.contains("page pump of") && log.contains("unavailable"), "the pump should have been refused:\n{log}");
        assert!(log.contains("Copied"), "no page copy logged:\n{log}");
        // the program ticks every 50 ms through its O_APPEND progress.log,
        // whose offset moves whenever the dump outlasts a tick: not compared
        let steady = |v: Vec<fdsupport::FdView>| -> Vec<(i32, String, u32, Option<u64>)> {
            v.into_iter().map(|f| (f.fd, f.target.clone(), f.flags, (!f.target.ends_with("/progress.log")).then_some(f.pos))).collect()
        };
        assert_eq!(steady(fd_table(s.pid)), steady(before), "a refused pump changed the source's fds");
        let t = last_tick(&s.log());
        wait_until("ticks after the --leave-running dump", Duration::from_secs(10), || last_tick(&s.log()) > t + 3);
        s.criu_ok(&["dump", "-t", &s.pid.to_string()], &dir, "dump2.log");
        s.restore(&dir, &[]);
    }
}

/// Run `dump` expecting it to fail; the log, for the caller to check.
fn dump_refused(s: &Scene, tag: &str) -> String {
    let dir = s.images(0);
    let log = format!("dump-{tag}.log");
    let out = s.criu(&["dump", "-t", &s.pid.to_string()], &dir, &log);
    let text = std::fs::read_to_string(dir.join(&log)).unwrap_or_default();
    assert!(!out.status.success(), "{tag}: dump should have been refused:\n{text}");
    text
}

/// FIFOs as upstream images them (a FIFO entry + its REG entry in
/// files.img, queued bytes and size in fifo-data.img): 3 queued bytes come
/// back, and a FIFO open read-only with no writer anywhere is restored
/// (before: restored as a regular file with 0 bytes, and the read-only one
/// blocked the restore child forever).
#[test]
fn fifos_survive() {
    require!(why_not_here());
    use images_proto::{image::read_all, magic as mg, pb};
    let mut s = Scene::start("fifo", "fifo");
    let before = fd_table(s.pid);
    for c in 0..2 {
        let dir = s.images(c);
        s.criu_ok(&["dump", "-t", &s.pid.to_string()], &dir, "dump.log");
        let files: Vec<pb::FileEntry> = read_all(&dir, "files.img", &mg::FILES).unwrap();
        let fifos: Vec<_> = files.iter().filter_map(|f| f.fifo.as_ref()).collect();
        assert_eq!(fifos.len(), 3, "three FIFO descriptions: {files:?}");
        for f in &fifos {
            let reg = files.iter().find(|e| Some(e.id) == f.regf_id).and_then(|e| e.reg.as_ref()).expect("regf_id names a REG entry");
            assert!(reg.name.ends_with(".fifo") && reg.mode.unwrap_or(0) & libc::S_IFMT == libc::S_IFIFO, "{reg:?}");
        }
        let mut r = images_proto::image::ImageReader::open(&dir, "fifo-data.img", &mg::FIFO_DATA).unwrap();
        let mut sizes: Vec<(u32, Option<u32>)> = Vec::new();
        while let Some(d) = r.next_entry::<pb::PipeDataEntry>().unwrap() {
            let bytes = r.read_payload(u64::from(d.bytes)).unwrap();
            assert!(bytes.is_empty() || bytes == b"abc", "{bytes:?}");
            sizes.push((d.bytes, d.size));
        }
        sizes.sort();
        assert_eq!(sizes, [(0, Some(65536)), (3, Some(65536))]);
        let t = std::time::Instant::now();
        s.restore(&dir, &[]);
        assert!(t.elapsed() < Duration::from_secs(20), "restore took {:?}", t.elapsed());
        assert_eq!(fd_table(s.pid).len(), before.len(), "{before:?} vs {:?}", fd_table(s.pid));
    }
    let t = last_tick(&s.log());
    wait_until("more ticks", Duration::from_secs(10), || last_tick(&s.log()) > t + 3);
}

/// Pipes keep each end's status flags exactly (no O_NONBLOCK gained), a
/// second open file description of one end stays separate, and an empty
/// pipe keeps its 1 MiB buffer (before: 64 KiB after restore).
#[test]
fn pipe_flags_and_size_survive() {
    require!(why_not_here());
    let mut s = Scene::start("pipeflags", "pipeflags");
    let before = fd_table(s.pid);
    let dir = s.images(0);
    s.criu_ok(&["dump", "-t", &s.pid.to_string()], &dir, "dump.log");
    s.restore(&dir, &[]);
    let strip = |v: Vec<fdsupport::FdView>| -> Vec<fdsupport::FdView> {
        v.into_iter().map(|mut f| {
            if f.target.ends_with("progress.log") {
                f.pos = 0;
            }
            f
        }).collect()
    };
    assert_eq!(strip(before), strip(fd_table(s.pid)), "fd table changed across dump+restore");
    let t = last_tick(&s.log());
    wait_until("more ticks", Duration::from_secs(10), || last_tick(&s.log()) > t + 3);
}

/// 30 dump/restore rounds of a program holding an unlinked open file: the
/// name /proc shows for it, its contents and offset stay the same (the
/// program checks them every tick; before, the name grew by
/// `.cr.1.ghost` each round), and no ghost file is left on disk.
#[test]
fn ghost_rounds_do_not_drift() {
    require!(why_not_here());
    let mut s = Scene::start("ghostloop", "rounds");
    let name = |pid: i32| fd_table(pid).into_iter().find(|f| f.target.contains("kept.bin")).map(|f| f.target);
    let first = name(s.pid).expect("ghost fd");
    assert!(first.ends_with("/kept.bin (deleted)"), "{first}");
    for round in 0..30 {
        let dir = s.images(round % 2);
        s.criu_ok(&["dump", "-t", &s.pid.to_string()], &dir, "dump.log");
        s.restore(&dir, &[]);
        assert_eq!(name(s.pid).as_deref(), Some(first.as_str()), "round {round}");
        let left: Vec<_> = std::fs::read_dir(&s.work).unwrap().flatten().map(|e| e.file_name()).filter(|n| n.to_string_lossy().contains("kept")).collect();
        assert!(left.is_empty(), "round {round}: left on disk: {left:?}");
    }
    last_tick(&s.log());
}

/// As `ghost_rounds_do_not_drift`, with a new file created under the
/// ghost's old name: the ghost keeps its name (it is exchanged into place,
/// opened, and the new file renamed back over it; before, it was opened as
/// `kept.bin.cr.1.ghost` and the name grew every round), the new file stays
/// as it was, and nothing else is left on disk.
#[test]
fn ghost_rounds_with_the_name_taken() {
    require!(why_not_here());
    let mut s = Scene::start_args("ghostloop", "taken", &["taken"]);
    let name = |pid: i32| fd_table(pid).into_iter().find(|f| f.target.contains("kept.bin")).map(|f| f.target);
    let first = name(s.pid).expect("ghost fd");
    assert!(first.ends_with("/kept.bin (deleted)"), "{first}");
    for round in 0..10 {
        let dir = s.images(round % 2);
        s.criu_ok(&["dump", "-t", &s.pid.to_string()], &dir, "dump.log");
        s.restore(&dir, &[]);
        assert_eq!(name(s.pid).as_deref(), Some(first.as_str()), "round {round}");
        let mut left: Vec<_> = std::fs::read_dir(&s.work).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.contains("kept")).collect();
        left.sort();
        assert_eq!(left, ["kept.bin"], "round {round}: on disk");
    }
    last_tick(&s.log());
}

/// A sparse unlinked file (8 MiB apparent, 8 KiB of data): under the ghost
/// limit, which counts allocated bytes as upstream; the image holds the
/// data extent only (chunks) and the restored file has its holes back
/// (before: refused as over the 1 MiB limit).
#[test]
fn sparse_ghost_keeps_holes() {
    require!(why_not_here());
    let mut s = Scene::start_args("ghostloop", "sparse", &["sparse"]);
    for c in 0..2 {
        let dir = s.images(c);
        s.criu_ok(&["dump", "-t", &s.pid.to_string()], &dir, "dump.log");
        let total: u64 = std::fs::read_dir(&dir).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with("ghost-file")).map(|e| e.metadata().unwrap().len()).sum();
        assert!(total < 64 << 10, "ghost images hold {total} bytes");
        s.restore(&dir, &[]);
    }
    let t = last_tick(&s.log());
    wait_until("more ticks", Duration::from_secs(10), || last_tick(&s.log()) > t + 3);
}

/// A working directory removed while the program sits in it is refused at
/// dump by name, as upstream refuses it (before: dumped, then the restore
/// failed); the program runs on.
#[test]
fn deleted_cwd_refused() {
    require!(why_not_here());
    let s = Scene::start("delcwd", "delcwd");
    let log = dump_refused(&s, "delcwd");
    assert!(log.contains("cwd of") && log.contains("gone") && log.contains("removed"), "{log}");
    let t = last_tick(&s.log());
    wait_until("ticks after the refused dump", Duration::from_secs(10), || last_tick(&s.log()) > t + 3);
}

/// Kinds the engine does not support are refused by name, and the program
/// runs on (before: a misc device was reopened by path, a non-UTF-8 name
/// was mangled, memfd_secret was taken for a deleted file; memfds, once refused here, are supported: more_files.rs;
/// pidfds too, and those still refused are pidfds.rs's).
#[test]
fn unsupported_fd_kinds_refused_by_name() {
    require!(why_not_here());
    for (kind, want) in [
        ("socket", "a socket of another family than AF_UNIX"),
        ("userfaultfd", "anonymous inode (userfaultfd)"),
        ("misc", "/dev/loop-control, character device 10:237"),
        ("rawname", "a path that is not UTF-8"),
        // before: "unlinked but the file still has 1 other links: dump
        // with --link-remap", which then failed on a cross-device link
        ("secretfd", "a memfd_secret(2) area"),
        ("secretmap", "it is memfd_secret(2) memory"),
        // before: dumped as the path "/", reopened in the namespace's tree
        ("detached", "in neither the process's mount namespace nor criu's"),
        ("io_uring", "anonymous inode (io_uring)"),
        ("perf_event", "anonymous inode (perf_event)"),
    ] {
        let s = Scene::start_args("fdrefuse", kind, &[kind]);
        let log = dump_refused(&s, kind);
        assert!(log.contains(want) && log.contains("not supported yet"), "{kind}: want {want:?} in:\n{log}");
        let t = last_tick(&s.log());
        wait_until("ticks after the refused dump", Duration::from_secs(10), || last_tick(&s.log()) > t + 2);
    }
}

/// A process another tracer holds (strace here) is refused naming the
/// tracer, and runs on traced (before: "seizing thread N: Operation not
/// permitted").
#[test]
fn traced_process_refused_naming_its_tracer() {
    require!(why_not_here());
    require!(why_not_tool("strace"));
    let s = Scene::start_args("fdrefuse", "traced", &["rdonly"]);
    let mut strace = std::process::Command::new("strace")
        .args(["-o", "/dev/null", "-p", &s.pid.to_string()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("strace");
    let tracer = strace.id() as i32;
    wait_until("strace attached", Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{}/status", s.pid)).unwrap_or_default().lines().any(|l| l == format!("TracerPid:\t{tracer}"))
    });
    let log = dump_refused(&s, "traced");
    let _ = strace.kill();
    let _ = strace.wait();
    let want = format!("thread {} is already traced by {tracer} (strace)", s.pid);
    assert!(log.contains(&want), "want {want:?} in:\n{log}");
    let t = last_tick(&s.log());
    wait_until("ticks after the refused dump", Duration::from_secs(10), || last_tick(&s.log()) > t + 2);
}

/// A regular file replaced by a FIFO between dump and restore: the restore
/// fails at once naming the file's mode (before: the child's read-only
/// open waited for a writer forever, and so did `criu restore`).
#[test]
fn file_replaced_by_fifo_fails_fast() {
    require!(why_not_here());
    let s = Scene::start_args("fdrefuse", "rdonly", &["rdonly"]);
    let dir = s.images(0);
    s.criu_ok(&["dump", "-t", &s.pid.to_string()], &dir, "dump.log");
    let plain = s.work.join("plain.bin");
    std::fs::remove_file(&plain).unwrap();
    let st = std::process::Command::new("mkfifo").arg(&plain).status().unwrap();
    assert!(st.success(), "mkfifo");
    let mut child = std::process::Command::new(fdsupport::CRIU)
        .args(["restore", "-d", "-D"])
        .arg(&dir)
        .args(["-v4", "-o", "restore.log"])
        .current_dir(&s.work)
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("restore still running after 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(dir.join("restore.log")).unwrap_or_default();
    assert!(!status.success(), "restore should fail:\n{log}");
    assert!(log.contains("plain.bin has bad mode"), "{log}");
}
