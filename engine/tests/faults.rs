//! Fault safety with real processes: the engine SIGKILLs itself at named
//! points (`CRIU_RS_FAULT_AT`, see engine/src/fault.rs) and we check what
//! it left behind.
//!
//! Dump: the source keeps ticking `ok` (it checks its own memory, stack,
//! TLS, locks and signal state), its threads and their signal masks are
//! as before, /proc/PID/maps is unchanged except for at most one leftover
//! scratch mapping after a death mid-injection, and the images directory
//! holds no `inventory.img` (or still the complete earlier set). After all
//! that the source is still dumped and restored fine.
//!
//! Restore: nothing of a half-restored tree is left running.
//!
//! Needs root, gcc, unshare; otherwise skips with the reason, or fails under
//! CI=true.

mod common;

use common::*;
use std::path::Path;

/// Size of the scratch mapping a dead engine may leave: code page + data,
/// plus a frame slot per thread (one page each with this CPU's XSAVE
/// size; two allowed).
const SCRATCH_MAPPING: u64 = 17 * 4096;

fn threads_of(pid: i32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count() as u64).unwrap_or(1)
}

fn range_len(line: &str) -> u64 {
    let r = line.split_whitespace().next().unwrap_or("");
    let (a, b) = r.split_once('-').unwrap_or(("0", "0"));
    u64::from_str_radix(b, 16).unwrap_or(0) - u64::from_str_radix(a, 16).unwrap_or(0)
}

fn is_scratch_like(line: &str) -> bool {
    let f: Vec<&str> = line.split_whitespace().collect();
    f.len() == 5 && f[1] == "rwxp" && f[2] == "00000000" && f[4] == "0"
}

/// Maps after vs before: identical, or (when `may_leave`) grown by one
/// anonymous rwx mapping of the scratch size for `threads` threads (which
/// the kernel may have merged with an earlier leftover). Returns the
/// number left (0 or 1).
fn check_maps(before: &[String], after: &[String], point: &str, may_leave: bool, threads: u64) -> usize {
    let added: Vec<&String> = after.iter().filter(|l| !before.contains(l)).collect();
    let removed: Vec<&String> = before.iter().filter(|l| !after.contains(l)).collect();
    let other: Vec<&&String> = added.iter().chain(removed.iter()).filter(|l| !is_scratch_like(l)).collect();
    assert!(other.is_empty(), "{point}: mappings changed: {other:?} (added {added:?}, removed {removed:?})");
    let grown = added.iter().map(|l| range_len(l)).sum::<u64>() - removed.iter().map(|l| range_len(l)).sum::<u64>();
    let frames = grown.wrapping_sub(SCRATCH_MAPPING);
    match grown {
        0 => 0,
        _ if may_leave && grown > SCRATCH_MAPPING && frames % 4096 == 0 && frames <= threads * 2 * 4096 => 1,
        _ => panic!("{point}: unexpected new mappings: added {added:?}, removed {removed:?}"),
    }
}

fn no_inventory(dir: &Path, point: &str) {
    let inv: Vec<_> = files_under(dir).into_iter().filter(|p| p.file_name().is_some_and(|n| n == "inventory.img")).collect();
    assert!(inv.is_empty(), "{point}: a killed dump left {inv:?}");
}

fn dump_faults(name: &str, points: &[&str]) {
    dump_faults_with(name, points, &[]);
}

/// [`dump_faults`] with `env` set for every dump (a copy path).
fn dump_faults_with(name: &str, points: &[&str], env: &[(&str, &str)]) {
    require!(why_not_here());
    // a directory of its own per variant: the tests of this binary run in parallel
    let tag: String = env.iter().map(|(_, v)| format!("-{v}")).collect();
    let tmp = test_dir(&format!("faults-dump-{name}{tag}"));
    let criu = private_criu(&tmp);
    let mut fx = Fixture::start(name, &tmp, Ns::OwnPidNs);
    // a complete earlier image set: a killed dump must leave it alone
    let kept = tmp.join("kept");
    std::fs::create_dir_all(&kept).unwrap();
    let p = fx.pid.to_string();
    criu_ok(&criu, &["dump", "-t", &p, "--leave-running"], &kept, "dump.log");
    std::fs::remove_file(kept.join("dump.log")).unwrap();
    let kept_files: Vec<(std::path::PathBuf, Vec<u8>)> = files_under(&kept).into_iter().map(|f| (f.clone(), std::fs::read(&f).unwrap())).collect();
    assert!(kept_files.iter().any(|(f, _)| f.ends_with("inventory.img")));
    fx.ticks_on(2, "after the --leave-running dump");
    let mut leftovers = 0;
    for (i, point) in points.iter().enumerate() {
        let dir = tmp.join(format!("img{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let maps0 = maps(fx.pid);
        let masks0 = sigmasks(fx.pid);
        let (fds0, cpus0) = (fd_links(fx.pid), cpu_masks(fx.pid));
        // without --leave-running: only a finished dump may kill the source
        let mut envs = vec![("CRIU_RS_FAULT_AT", *point)];
        envs.extend_from_slice(env);
        let (st, log) = criu_env(&criu, &["dump", "-t", &p], &dir, "dump.log", &envs);
        assert_killed(st, point, &log);
        if env.iter().any(|(k, _)| *k == "CRIU_RS_PUMP_MIN_RATE") && *point == "mid-memory" {
            assert!(log.contains("switching to O_DIRECT"), "{point}: the pump did not hand over:\n{log}");
        }
        fx.ticks_on(3, &format!("after the engine died at {point}"));
        assert!(alive(fx.pid), "{point}: source is gone");
        assert_eq!(sigmasks(fx.pid), masks0, "{point}: threads or signal masks changed");
        // the page pump's pipe fds closed and CPU mask put back by the source itself
        assert_eq!(fd_links(fx.pid), fds0, "{point}: the source's fd table changed");
        assert_eq!(cpu_masks(fx.pid), cpus0, "{point}: the source's CPU masks changed");
        // an injection session (state collection, or the page pump during
        // the memory copy) may leave its scratch mapping behind
        let mid_inject = point.starts_with("mid-inject") || point.starts_with("mid-pump") || *point == "mid-memory" || *point == "before-inventory";
        leftovers += check_maps(&maps0, &maps(fx.pid), point, mid_inject, threads_of(fx.pid));
        no_inventory(&dir, point);
        // the same point against the directory with the complete set
        let maps1 = maps(fx.pid);
        let (st, log) = criu_env(&criu, &["dump", "-t", &p], &kept, "dump.log", &envs);
        assert_killed(st, point, &log);
        std::fs::remove_file(kept.join("dump.log")).unwrap();
        for (f, data) in &kept_files {
            assert!(std::fs::read(f).ok().as_ref() == Some(data), "{point}: earlier complete image {} was touched", f.display());
        }
        leftovers += check_maps(&maps1, &maps(fx.pid), point, mid_inject, threads_of(fx.pid));
        fx.ticks_on(2, &format!("after the second death at {point}"));
        eprintln!("{name}: engine killed at {point}: source runs on unchanged");
    }
    eprintln!("{name}: {leftovers} scratch mapping(s) left behind by deaths mid-injection");
    // still dumpable and restorable after all that
    let last = tmp.join("last");
    std::fs::create_dir_all(&last).unwrap();
    criu_ok(&criu, &["dump", "-t", &p], &last, "dump.log");
    wait_until("source gone after the dump", std::time::Duration::from_secs(5), || !alive(fx.pid));
    let t = fx.tick();
    let mut cmd = std::process::Command::new(&criu);
    cmd.args(["restore", "-d", "-v4", "-o", "restore.log", "-D"]).arg(&last).current_dir(&fx.work);
    assert!(cmd.status().unwrap().success(), "restore failed:\n{}", std::fs::read_to_string(last.join("restore.log")).unwrap_or_default());
    wait_until("ticks after restore", std::time::Duration::from_secs(15), || fx.tick() > t + 3);
    fx.refind();
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// The engine dies after the page pump handed the rest of the copy to
/// O_DIRECT writes (forced after 4 MiB by an impossible minimum rate),
/// with the pump's pipes still open in the source: it runs on unchanged.
#[test]
fn dump_faults_pump_hand_over() {
    dump_faults_with("counter", &["mid-memory"], &[("CRIU_RS_PUMP_MIN_RATE", "1e15")]);
}

const DUMP_POINTS: &[&str] =
    &["after-freeze", "mid-inject", "mid-inject@40", "after-parasite", "mid-pump", "mid-pump@2", "mid-memory", "before-inventory"];

#[test]
fn dump_faults_counter() {
    dump_faults("counter", DUMP_POINTS);
}

#[test]
fn dump_faults_threads() {
    let mut p = DUMP_POINTS.to_vec();
    p.insert(3, "mid-inject-thread");
    p.insert(4, "mid-inject-thread@3");
    dump_faults("threads", &p);
}

#[test]
fn dump_faults_signals() {
    dump_faults("signals", &["mid-inject", "mid-inject@70", "after-parasite"]);
}

/// Kill the engine at each restore point; nothing may be left running.
fn restore_faults(name: &str, ns: Ns, points: &[&str]) {
    restore_faults_with(name, ns, points, &[]);
}

/// [`restore_faults`] with `env` set for every restore (a fill path).
fn restore_faults_with(name: &str, ns: Ns, points: &[&str], env: &[(&str, &str)]) {
    require!(why_not_here());
    let tag: String = env.iter().map(|(_, v)| format!("-{v}")).collect();
    let tmp = test_dir(&format!("faults-restore-{name}-{ns:?}{tag}"));
    let criu = private_criu(&tmp);
    let mut fx = Fixture::start(name, &tmp, ns);
    let img = tmp.join("img");
    std::fs::create_dir_all(&img).unwrap();
    let dumped = fx.pid;
    let p = fx.pid.to_string();
    criu_ok(&criu, &["dump", "-t", &p], &img, "dump.log");
    // reaped, not just dead: its pid must be free for set_tid
    wait_until("source reaped after the dump", std::time::Duration::from_secs(5), || !Path::new(&format!("/proc/{dumped}")).exists());
    for point in points {
        let t = fx.tick();
        let mut envs = vec![("CRIU_RS_FAULT_AT", *point)];
        envs.extend_from_slice(env);
        let (st, log) = criu_env(&criu, &["restore", "-d"], &img, "restore.log", &envs);
        if let Some((_, path)) = env.iter().find(|(k, _)| *k == "CRIU_RS_FILL_READ") {
            let direct = log.contains("from O_DIRECT reads");
            assert!(direct == (*path == "direct") || log.contains("no O_DIRECT reads of"), "{point}: the fill did not read the {path} way:\n{log}");
        }
        assert_killed(st, point, &log);
        wait_until(&format!("nothing left after the engine died at {point}"), std::time::Duration::from_secs(5), || {
            live_with_exe(&fx.bin).is_empty() && live_with_exe(&criu).is_empty()
        });
        if ns == Ns::Host {
            // dead at once (a task in the middle of exiting has lost its
            // exe link but is not a zombie yet: give it a moment); the pid
            // itself is free once init has reaped it
            wait_until(&format!("{point}: pid {dumped} dead"), std::time::Duration::from_secs(2), || !alive(dumped));
            wait_until(&format!("pid {dumped} reaped"), std::time::Duration::from_secs(5), || {
                !Path::new(&format!("/proc/{dumped}")).exists()
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(fx.tick(), t, "{point}: a half-restored process ran");
        eprintln!("{name} ({ns:?}): engine killed at {point}: nothing left");
    }
    // and the images still restore
    let t = fx.tick();
    let mut cmd = std::process::Command::new(&criu);
    cmd.args(["restore", "-d", "-v4", "-o", "restore.log", "-D"]).arg(&img).current_dir(&fx.work);
    assert!(cmd.status().unwrap().success(), "restore failed:\n{}", std::fs::read_to_string(img.join("restore.log")).unwrap_or_default());
    wait_until("ticks after restore", std::time::Duration::from_secs(15), || fx.tick() > t + 3);
    fx.refind();
    if ns == Ns::Host {
        assert_eq!(fx.pid, dumped, "restored with another pid");
    }
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn restore_faults_counter_own_pidns() {
    restore_faults("counter", Ns::OwnPidNs, &["after-clone", "mid-mm", "before-detach"]);
}

/// The engine dies in the middle of the memory fill, copying from the
/// mapped pages file, from plain reads of it and from O_DIRECT reads (the
/// reader threads and the buffer ring die with it): nothing is left.
#[test]
fn restore_faults_mid_fill() {
    restore_faults_with("counter", Ns::OwnPidNs, &["mid-fill"], &[("CRIU_RS_FILL_READ", "mmap")]);
    restore_faults_with("counter", Ns::OwnPidNs, &["mid-fill"], &[("CRIU_RS_FILL_READ", "pread")]);
    restore_faults_with("counter", Ns::OwnPidNs, &["mid-fill"], &[("CRIU_RS_FILL_READ", "direct")]);
}

/// A tree (root, pipe writer and reader, grandchild, zombie) in a pid
/// namespace of its own and in the host's: the engine killed while the
/// processes are forked, mid-memory, before and during their release
/// leaves none of them (the pipe's reader FAILs on a gap, so a restore
/// that lost bytes would show).
#[test]
fn restore_faults_tree() {
    restore_faults("tree", Ns::OwnPidNs, &["after-clone", "after-reports", "mid-mm", "mid-mm@3", "before-detach", "mid-detach"]);
    restore_faults("tree", Ns::Host, &["after-clone", "after-reports", "mid-mm@2", "before-detach"]);
}

/// `Some` reason when the engine would set the tree up on one thread
/// (restore/workers.rs: one worker per CPU).
fn why_not_two_cpus() -> Option<String> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (n < 2).then(|| format!("needs 2 CPUs for the restore's worker threads ({n} here)"))
}

/// The tree set up by two engine threads: the engine killed once the
/// second has restored a process (both trace processes of the tree), and
/// before the root's detach, after the other worker let its processes
/// go: nothing is left. (In a pid namespace of its own: the host's pids
/// of a dumped tree may be taken by the fixtures of tests running beside
/// this one; `restore_faults_tree` covers the host's, where the tree is
/// set up by workers too.)
#[test]
fn restore_faults_tree_workers() {
    require!(why_not_two_cpus());
    // (the variable, 2 workers, also gives the test a directory of its own)
    restore_faults_with("tree", Ns::OwnPidNs, &["mid-workers", "mid-detach"], &[("CRIU_RS_RESTORE_WORKERS", "2")]);
}

/// A tree restore that fails by itself in its second worker thread, or
/// at the root's detach after the other worker let its processes go:
/// the engine stops and joins its workers, kills the half-built tree and
/// exits 1; nothing of the tree ran.
#[test]
fn failing_tree_restore_with_workers_cleans_up() {
    require!(why_not_here());
    require!(why_not_two_cpus());
    let tmp = test_dir("faults-fail-workers");
    let criu = private_criu(&tmp);
    let fx = Fixture::start("tree", &tmp, Ns::OwnPidNs);
    let img = tmp.join("img");
    std::fs::create_dir_all(&img).unwrap();
    criu_ok(&criu, &["dump", "-t", &fx.pid.to_string()], &img, "dump.log");
    for point in ["mid-workers:fail", "mid-detach:fail"] {
        let t = fx.tick();
        let out = std::process::Command::new("timeout")
            .arg("60")
            .arg(&criu)
            .args(["restore", "-d", "-v4", "-o", "restore.log", "-D"])
            .arg(&img)
            .env("CRIU_RS_FAULT_AT", point)
            .output()
            .unwrap();
        let log = std::fs::read_to_string(img.join("restore.log")).unwrap_or_default();
        assert_ne!(out.status.code(), Some(124), "{point}: restore hung cleaning up after a failure:\n{log}");
        assert_eq!(out.status.code(), Some(1), "{point}: {log}");
        assert!(log.contains("injected failure") && log.contains("engine threads"), "{point}: {log}");
        wait_until(&format!("nothing left after the failed restore ({point})"), std::time::Duration::from_secs(5), || {
            live_with_exe(&fx.bin).is_empty() && live_with_exe(&criu).is_empty()
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(fx.tick(), t, "{point}: a half-restored process ran");
    }
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn restore_faults_threads_host_pidns() {
    restore_faults("threads", Ns::Host, &["after-clone", "mid-mm", "mid-threads", "mid-threads@3", "before-detach"]);
}

/// A restore that fails by itself (not killed) after threads exist, or in
/// the middle of an O_DIRECT memory fill: the engine must clean up its
/// half-built tree and exit 1, not hang reaping it (traced threads must be
/// reaped before their leader) or waiting on its reader threads.
#[test]
fn failing_restore_with_threads_cleans_up() {
    require!(why_not_here());
    let tmp = test_dir("faults-fail-threads");
    let criu = private_criu(&tmp);
    let fx = Fixture::start("threads", &tmp, Ns::OwnPidNs);
    let img = tmp.join("img");
    std::fs::create_dir_all(&img).unwrap();
    criu_ok(&criu, &["dump", "-t", &fx.pid.to_string()], &img, "dump.log");
    for (point, fill) in [("mid-threads:fail", "mmap"), ("mid-fill:fail", "direct")] {
        let t = fx.tick();
        let out = std::process::Command::new("timeout")
            .arg("60")
            .arg(&criu)
            .args(["restore", "-d", "-v4", "-o", "restore.log", "-D"])
            .arg(&img)
            .env("CRIU_RS_FAULT_AT", point)
            .env("CRIU_RS_FILL_READ", fill)
            .output()
            .unwrap();
        let log = std::fs::read_to_string(img.join("restore.log")).unwrap_or_default();
        assert_ne!(out.status.code(), Some(124), "{point}: restore hung cleaning up after a failure:\n{log}");
        assert_eq!(out.status.code(), Some(1), "{point}: {log}");
        assert!(log.contains("injected failure"), "{point}: {log}");
        wait_until(&format!("nothing left after the failed restore ({point})"), std::time::Duration::from_secs(5), || {
            live_with_exe(&fx.bin).is_empty() && live_with_exe(&criu).is_empty()
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(fx.tick(), t, "{point}: a half-restored process ran");
    }
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}

// ---- corrupted images ----

/// Replace `f` with a FIFO of the same name.
fn fifo(f: &Path) {
    std::fs::remove_file(f).unwrap();
    assert!(std::process::Command::new("mkfifo").arg(f).status().unwrap().success(), "mkfifo {}", f.display());
}

fn truncate(f: &Path, len: u64) {
    std::fs::OpenOptions::new().write(true).open(f).unwrap().set_len(len).unwrap();
}

fn size(f: &Path) -> u64 {
    std::fs::metadata(f).unwrap().len()
}

fn patch_bytes(f: &Path, off: usize, mut edit: impl FnMut(&mut u8)) {
    let mut b = std::fs::read(f).unwrap();
    for x in &mut b[off..off + 1] {
        edit(x);
    }
    std::fs::write(f, b).unwrap();
}

/// mm-PID.img with the end of VMA `i` moved onto the end of VMA `i + 1`.
fn overlap_vmas(dir: &Path, name: &str) {
    use images_proto::{image, magic, pb};
    let mut mm: pb::MmEntry = image::read_one(dir, name, &magic::MM).unwrap();
    let i = (0..mm.vmas.len() - 1).find(|&i| mm.vmas[i].end == mm.vmas[i + 1].start || mm.vmas[i + 1].end > mm.vmas[i].end).unwrap();
    mm.vmas[i].end = mm.vmas[i + 1].start + 4096;
    image::write_all(dir, name, &magic::MM, &[mm]).unwrap();
}

/// pagemap-PID.img with its first run moved below every VMA.
fn run_outside(dir: &Path, name: &str) {
    let f = dir.join(name);
    let mut v = images_proto::image::decode_image(&std::fs::read(&f).unwrap(), &f, false).unwrap();
    let e = &mut v["entries"][1]["vaddr"];
    *e = if e.is_string() { "0x10000".into() } else { 0x10000u64.into() };
    std::fs::write(&f, images_proto::image::encode_image(&v, &f).unwrap()).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn corrupted_images_are_refused() {
    require!(why_not_here());
    let tmp = test_dir("faults-corrupt");
    let criu = private_criu(&tmp);
    let mut fx = Fixture::start("counter", &tmp, Ns::Host);
    let pid = fx.pid;
    let good = tmp.join("good");
    std::fs::create_dir_all(&good).unwrap();
    criu_ok(&criu, &["dump", "-t", &pid.to_string()], &good, "dump.log");
    std::fs::remove_file(good.join("dump.log")).unwrap();
    wait_until("the dumped process reaped", std::time::Duration::from_secs(5), || !Path::new(&format!("/proc/{pid}")).exists());
    let core = format!("core-{pid}.img");
    let mm = format!("mm-{pid}.img");
    let pagemap = format!("pagemap-{pid}.img");
    let pages = "pages-1.img".to_string();
    type Corrupt = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Corrupt, Vec<String>)> = vec![
        ("truncated core", Box::new({ let c = core.clone(); move |d: &Path| truncate(&d.join(&c), size(&d.join(&c)) / 2) }), vec![core.clone(), "entry 0".into()]),
        ("truncated mm", Box::new({ let c = mm.clone(); move |d: &Path| truncate(&d.join(&c), size(&d.join(&c)) - 7) }), vec![mm.clone(), "entry 0".into()]),
        ("truncated pagemap", Box::new({ let c = pagemap.clone(); move |d: &Path| truncate(&d.join(&c), size(&d.join(&c)) - 3) }), vec![pagemap.clone(), "entry".into()]),
        ("truncated pages", Box::new({ let c = pages.clone(); move |d: &Path| truncate(&d.join(&c), size(&d.join(&c)) / 2) }), vec![pages.clone()]),
        ("pages short by one page", Box::new({ let c = pages.clone(); move |d: &Path| truncate(&d.join(&c), size(&d.join(&c)) - 4096) }), vec![pages.clone()]),
        ("core entry size flipped", Box::new({ let c = core.clone(); move |d: &Path| patch_bytes(&d.join(&c), 11, |b| *b ^= 0xff) }), vec![core.clone(), "entry 0".into()]),
        ("mm first field tag flipped", Box::new({ let c = mm.clone(); move |d: &Path| patch_bytes(&d.join(&c), 12, |b| *b ^= 0xff) }), vec![mm.clone(), "entry 0".into()]),
        ("wrong magic of mm", Box::new({ let c = mm.clone(); move |d: &Path| patch_bytes(&d.join(&c), 4, |b| *b ^= 0x5a) }), vec![mm.clone(), "magic".into()]),
        ("overlapping VMAs", Box::new({ let c = mm.clone(); move |d: &Path| overlap_vmas(d, &c) }), vec![mm.clone(), "overlaps vma".into()]),
        ("pagemap run outside every VMA", Box::new({ let c = pagemap.clone(); move |d: &Path| run_outside(d, &c) }), vec![pagemap.clone(), "entry 1".into(), "outside every VMA".into()]),
        // opening a FIFO would wait for a writer forever
        ("core is a FIFO", Box::new({ let c = core.clone(); move |d: &Path| fifo(&d.join(&c)) }), vec![core.clone(), "not a regular file".into()]),
        ("pages is a FIFO", Box::new({ let c = pages.clone(); move |d: &Path| fifo(&d.join(&c)) }), vec![pages.clone(), "not a regular file".into()]),
    ];
    for (i, (what, corrupt, want)) in cases.iter().enumerate() {
        let dir = tmp.join(format!("bad{i}"));
        copy_dir(&good, &dir);
        corrupt(&dir);
        let t = fx.tick();
        let (st, log) = criu_env(&criu, &["restore", "-d"], &dir, "restore.log", &[]);
        assert_eq!(st.code(), Some(1), "{what}: restore must fail with exit code 1:\n{log}");
        let err = log.lines().filter(|l| l.contains("Error")).collect::<Vec<_>>().join("\n");
        for w in want {
            assert!(err.contains(w.as_str()), "{what}: the error should name {w:?}:\n{err}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(live_with_exe(&fx.bin).is_empty() && live_with_exe(&criu).is_empty(), "{what}: something was left running");
        assert!(!alive(pid), "{what}: pid {pid} is alive");
        assert_eq!(fx.tick(), t, "{what}: a half-restored process ran");
        eprintln!("{what}: refused: {}", err.lines().next().unwrap_or(""));
    }
    // the untouched set restores
    let t = fx.tick();
    let mut cmd = std::process::Command::new(&criu);
    cmd.args(["restore", "-d", "-v4", "-o", "restore.log", "-D"]).arg(&good).current_dir(&fx.work);
    assert!(cmd.status().unwrap().success(), "restore failed:\n{}", std::fs::read_to_string(good.join("restore.log")).unwrap_or_default());
    wait_until("ticks after restore", std::time::Duration::from_secs(15), || fx.tick() > t + 3);
    fx.refind();
    assert_eq!(fx.pid, pid);
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}
