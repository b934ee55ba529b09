//! AIO contexts (io_setup): `tests/progs/aioring.c` keeps two completed
//! reads unreaped in its ring between ticks and reaps them (checking
//! aio_data, obj, result and the bytes read) through the context id it
//! stored, then submits the next two.
//!
//! - ours: dumped and restored twice (and once with `--leave-running`),
//!   the program ticks on with no FAIL: the unreaped events came back, at
//!   the ring's old address, with io_submit working on it;
//! - upstream 4.2 restoring our images and we restoring upstream's;
//! - hostile images: an aios entry for no ring, a ring without an aios
//!   entry, ring_len or nr_req that do not fit, flags not MAP_SHARED,
//!   a ring whose header is not an AIO ring's: each refused by name.
//!
//! Needs root, gcc, setsid.

mod common;

use common::*;
use images_proto::magic as mg;
use images_proto::pb;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The AIO ring mappings of `pid` (start, end).
fn rings(pid: i32) -> Vec<(u64, u64)> {
    maps(pid)
        .iter()
        .filter(|l| l.ends_with("/[aio] (deleted)"))
        .filter_map(|l| {
            let (a, b) = l.split_whitespace().next()?.split_once('-')?;
            Some((u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?))
        })
        .collect()
}

fn restore(criu: &Path, fx: &mut Fixture, img: &Path, who: &str) {
    let t = fx.tick();
    let st = Command::new(criu).args(["restore", "-d", "-v4", "-o", "restore.log", "-D"]).arg(img).current_dir(&fx.work).status().unwrap();
    assert!(st.success(), "{who} restore: {}", std::fs::read_to_string(img.join("restore.log")).unwrap_or_default());
    wait_until(&format!("ticks after the {who} restore"), Duration::from_secs(15), || fx.tick() > t + 3);
    fx.refind();
}

#[test]
fn aio_ring_with_unreaped_events_restores_with_ours() {
    require!(why_not_here());
    let tmp = test_dir("aio-rings-ours");
    let mut fx = Fixture::start_ours("aioring", &tmp, Ns::Host);
    let before = rings(fx.pid);
    assert_eq!(before.len(), 1, "one AIO ring: {:?}", maps(fx.pid));
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
        let mm: pb::MmEntry = images_proto::image::read_one(&img, &mg::MM.file_name(fx.pid as u32), &mg::MM).unwrap();
        assert_eq!(mm.aios.len(), 1, "{:?}", mm.aios);
        assert_eq!((mm.aios[0].id, u64::from(mm.aios[0].ring_len)), (before[0].0, before[0].1 - before[0].0));
        if leave {
            fx.ticks_on(3, "after the --leave-running dump");
            continue;
        }
        restore(Path::new(CRIU), &mut fx, &img, "our");
        assert_eq!(rings(fx.pid), before, "the ring at its old address");
    }
    fx.ticks_on(3, "at the end");
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn aio_ring_both_ways_with_upstream() {
    require!(why_not_here().or_else(|| (!upstream().exists()).then(|| format!("{} not found", upstream().display()))));
    let tmp = test_dir("aio-rings-upstream");
    let mut fx = Fixture::start_ours("aioring", &tmp, Ns::Host);
    let before = rings(fx.pid);
    let steps: [(&Path, &Path, &str); 2] = [(Path::new(CRIU), &upstream(), "ours -> upstream"), (&upstream(), Path::new(CRIU), "upstream -> ours")];
    for (k, (dumper, restorer, what)) in steps.iter().enumerate() {
        let img = tmp.join(format!("img{k}"));
        std::fs::create_dir_all(&img).unwrap();
        criu_ok(dumper, &["dump", "-t", &fx.pid.to_string()], &img, "dump.log");
        restore(restorer, &mut fx, &img, what);
        assert_eq!(rings(fx.pid), before, "{what}: the ring at its old address");
    }
    fx.ticks_on(3, "at the end");
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// A copy of `img` with mm.img (of `pid`) rewritten by `edit`, or a page
/// of pages-1.img by `page`; our restore must refuse it naming `want`.
type PageEdit<'a> = Option<&'a dyn Fn(&mut [u8]) -> bool>;

fn refuse(img: &Path, pid: i32, name: &str, edit: impl FnOnce(&mut pb::MmEntry), page: PageEdit, want: &str) {
    let dir = img.with_file_name(format!("hostile-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(img).unwrap().flatten() {
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    let mmf = mg::MM.file_name(pid as u32);
    let mut mm: pb::MmEntry = images_proto::image::read_one(&dir, &mmf, &mg::MM).unwrap();
    edit(&mut mm);
    images_proto::image::write_all(&dir, &mmf, &mg::MM, &[mm]).unwrap();
    if let Some(f) = page {
        let p = dir.join("pages-1.img");
        let mut b = std::fs::read(&p).unwrap();
        assert!(b.chunks_mut(4096).any(f), "{name}: the page to edit");
        std::fs::write(&p, b).unwrap();
    }
    let (st, log) = criu_env(Path::new(CRIU), &["restore", "-d"], &dir, "restore.log", &[]);
    assert_eq!(st.code(), Some(1), "{name}: {log}");
    assert!(log.contains(want), "{name}: not refused by name ({want:?}):\n{log}");
    assert!(!log.contains("panicked"), "{name}: {log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hostile_aio_images_are_refused() {
    require!(why_not_here());
    let tmp = test_dir("aio-rings-hostile");
    let fx = Fixture::start_ours("aioring", &tmp, Ns::Host);
    let img = tmp.join("img");
    std::fs::create_dir_all(&img).unwrap();
    criu_ok(Path::new(CRIU), &["dump", "-t", &fx.pid.to_string(), "--leave-running"], &img, "dump.log");
    let pid = fx.pid;
    const AIORING: u32 = 1 << 13;
    let ring = |mm: &mut pb::MmEntry| mm.vmas.iter().position(|v| v.status & AIORING != 0).unwrap();
    refuse(&img, pid, "stray-entry", |mm| mm.aios.push(pb::AioRingEntry { id: 0x1000, nr_req: 1, ring_len: 4096 }), None, "aios entry 1: id 0x1000 names no AIO ring mapping");
    refuse(&img, pid, "no-entry", |mm| mm.aios.clear(), None, "no aios entry has id");
    refuse(&img, pid, "ring-len", |mm| mm.aios[0].ring_len = 8192, None, "ring_len 8192 is not the mapping's 4096 bytes");
    refuse(&img, pid, "nr-req", |mm| mm.aios[0].nr_req = 1000, None, "nr_req 1000 does not fit a ring of 4096 bytes");
    refuse(&img, pid, "private", |mm| { let i = ring(mm); mm.vmas[i].flags = libc::MAP_PRIVATE as u32 }, None, "are not MAP_SHARED");
    // the ring's header in the pages: its magic broken (found once the
    // process is forked again: the dumped one goes first)
    drop(fx);
    wait_until("the dumped process gone", Duration::from_secs(5), || !alive(pid));
    let magic = 0xa10a_10a1u32.to_le_bytes();
    let hit = |p: &mut [u8]| -> bool {
        if p.len() == 4096 && p[16..20] == magic && p[28..32] == 32u32.to_le_bytes() {
            p[16] ^= 0xff;
            return true;
        }
        false
    };
    refuse(&img, pid, "magic", |_| {}, Some(&hit), "is not an AIO ring's");
    let _ = std::fs::remove_dir_all(&tmp);
}
