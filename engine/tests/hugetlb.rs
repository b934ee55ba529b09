//! hugetlb memory: `tests/progs/hugetlb.c` holds a private MAP_HUGETLB
//! anonymous mapping of two 2 MiB pages and a shared one of one page (and,
//! unless told otherwise, a memfd_create(MFD_HUGETLB) mapped shared),
//! each filled with its own pattern; every tick it checks the patterns,
//! a counter per mapping, that each is still backed by 2 MiB pages and
//! still private or shared as made.
//!
//! - ours: dumped and restored twice (and once with `--leave-running`),
//!   the program ticks on with no FAIL and the system's free huge pages
//!   show the memory is in huge pages again;
//! - upstream 4.2 restoring our images, and we restoring upstream's (it
//!   writes the shared mapping as a hugetlb memfd named /anon_hugepage);
//! - hostile images: a hugetlb_flag that is not MFD_HUGETLB, a hugetlb
//!   memfd whose size is not whole huge pages, /anon_hugepage mapped
//!   without MAP_HUGETLB: refused by name.
//!
//! Each test sets vm.nr_hugepages for itself (the tests of this file one
//! at a time) and puts the old value back. Needs root, gcc, setsid.

mod common;

use common::*;
use images_proto::magic as mg;
use images_proto::pb;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

const NR: &str = "/proc/sys/vm/nr_hugepages";
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// vm.nr_hugepages raised by `n` 2 MiB pages while it lives.
struct HugePages(String);

impl HugePages {
    fn reserve(n: u64) -> Option<HugePages> {
        let old = std::fs::read_to_string(NR).ok()?.trim().to_string();
        let want = old.parse::<u64>().ok()? + n;
        std::fs::write(NR, want.to_string()).ok()?;
        let now: u64 = std::fs::read_to_string(NR).ok()?.trim().parse().ok()?;
        if now < want {
            let _ = std::fs::write(NR, &old);
            return None;
        }
        Some(HugePages(old))
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        let _ = std::fs::write(NR, &self.0);
    }
}

fn free_huge() -> u64 {
    let m = std::fs::read_to_string("/proc/meminfo").unwrap();
    m.lines().find_map(|l| l.strip_prefix("HugePages_Free:")).and_then(|v| v.trim().parse().ok()).unwrap()
}

fn start(tmp: &Path, mode: &str) -> Fixture {
    let work = tmp.join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("mode"), mode).unwrap();
    Fixture::start_ours("hugetlb", tmp, Ns::Host)
}

fn restore(criu: &Path, fx: &mut Fixture, img: &Path, who: &str) {
    let t = fx.tick();
    let st = Command::new(criu).args(["restore", "-d", "-v4", "-o", "restore.log", "-D"]).arg(img).current_dir(&fx.work).status().unwrap();
    assert!(st.success(), "{who} restore: {}", std::fs::read_to_string(img.join("restore.log")).unwrap_or_default());
    wait_until(&format!("ticks after the {who} restore"), Duration::from_secs(15), || fx.tick() > t + 3);
    fx.refind();
}

/// (lock, the pages raised, scratch dir, the program, free huge pages
/// before it started)
fn setup(name: &str, mode: &str) -> (std::sync::MutexGuard<'static, ()>, Option<HugePages>, PathBuf, Option<Fixture>, u64) {
    let lock = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let hp = HugePages::reserve(8);
    let tmp = test_dir(name);
    let free = free_huge();
    let fx = hp.as_ref().map(|_| start(&tmp, mode));
    (lock, hp, tmp, fx, free)
}

#[test]
fn hugetlb_memory_restores_with_ours() {
    require!(why_not_here());
    let (_lock, hp, tmp, fx, free) = setup("hugetlb-ours", "all");
    require!(hp.is_none().then(|| "vm.nr_hugepages can't be raised by 8 here".to_string()));
    let mut fx = fx.unwrap();
    let used = |f: u64| free.saturating_sub(f);
    let in_use = used(free_huge());
    assert_eq!(in_use, 4, "the program holds 4 huge pages");
    for round in 0..3 {
        let img = tmp.join(format!("img{round}"));
        std::fs::create_dir_all(&img).unwrap();
        let p = fx.pid.to_string();
        let leave = round == 0;
        let mut args = vec!["dump", "-t", &p];
        if leave {
            args.push("--leave-running");
        }
        criu_ok(Path::new(CRIU), &args, &img, "dump.log");
        if leave {
            fx.ticks_on(3, "after the --leave-running dump");
            continue;
        }
        restore(Path::new(CRIU), &mut fx, &img, "our");
        assert_eq!(used(free_huge()), in_use, "huge pages in use after the restore");
    }
    fx.ticks_on(3, "at the end");
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn hugetlb_memory_both_ways_with_upstream() {
    require!(why_not_here().or_else(|| (!upstream().exists()).then(|| format!("{} not found", upstream().display()))));
    let (_lock, hp, tmp, fx, _) = setup("hugetlb-upstream", "all");
    require!(hp.is_none().then(|| "vm.nr_hugepages can't be raised by 8 here".to_string()));
    let mut fx = fx.unwrap();
    // (upstream first: it restores shared hugetlb memory as a hugetlb
    // memfd, not as what it dumped)
    let steps: [(&Path, &Path, &str); 2] = [(&upstream(), Path::new(CRIU), "upstream -> ours"), (Path::new(CRIU), &upstream(), "ours -> upstream")];
    for (k, (dumper, restorer, what)) in steps.iter().enumerate() {
        let img = tmp.join(format!("img{k}"));
        std::fs::create_dir_all(&img).unwrap();
        criu_ok(dumper, &["dump", "-t", &fx.pid.to_string()], &img, "dump.log");
        restore(restorer, &mut fx, &img, what);
    }
    fx.ticks_on(3, "at the end");
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Upstream's image set of the program, edited; our restore must refuse
/// it naming `want` (before anything is forked: the program still runs).
#[test]
fn hostile_hugetlb_images_are_refused() {
    require!(why_not_here().or_else(|| (!upstream().exists()).then(|| format!("{} not found", upstream().display()))));
    let (_lock, hp, tmp, fx, _) = setup("hugetlb-hostile", "all");
    require!(hp.is_none().then(|| "vm.nr_hugepages can't be raised by 8 here".to_string()));
    let fx = fx.unwrap();
    let img = tmp.join("img");
    std::fs::create_dir_all(&img).unwrap();
    criu_ok(&upstream(), &["dump", "-t", &fx.pid.to_string(), "--leave-running"], &img, "dump.log");
    let pid = fx.pid;
    let refuse = |name: &str, edit: &dyn Fn(&Path), want: &str| {
        let dir = tmp.join(format!("hostile-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir(&img).unwrap().flatten() {
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
        edit(&dir);
        let (st, log) = criu_env(Path::new(CRIU), &["restore", "-d"], &dir, "restore.log", &[]);
        assert_eq!(st.code(), Some(1), "{name}: {log}");
        assert!(log.contains(want), "{name}: not refused by name ({want:?}):\n{log}");
        assert!(!log.contains("panicked"), "{name}: {log}");
    };
    let memfds = |dir: &Path, f: &dyn Fn(&mut Vec<pb::MemfdInodeEntry>)| {
        let mut m: Vec<pb::MemfdInodeEntry> = images_proto::image::read_all(dir, "memfd.img", &mg::MEMFD_INODE).unwrap();
        f(&mut m);
        images_proto::image::write_all(dir, "memfd.img", &mg::MEMFD_INODE, &m).unwrap();
    };
    refuse("flag", &|d| memfds(d, &|m| m[0].hugetlb_flag = Some(1)), "hugetlb_flag 0x1 is not MFD_HUGETLB");
    refuse("size", &|d| memfds(d, &|m| m[0].size = 4096), "size 4096 is not a whole number of its 2097152-byte huge pages");
    let mmf = mg::MM.file_name(pid as u32);
    refuse(
        "not-huge",
        &|d| {
            let mut mm: pb::MmEntry = images_proto::image::read_one(d, &mmf, &mg::MM).unwrap();
            for v in mm.vmas.iter_mut().filter(|v| v.status & (1 << 14) != 0) {
                v.flags &= !(libc::MAP_HUGETLB as u32);
            }
            images_proto::image::write_all(d, &mmf, &mg::MM, &[mm]).unwrap();
        },
        "that is not MAP_SHARED|MAP_HUGETLB",
    );
    assert!(alive(pid));
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}
