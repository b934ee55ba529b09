//! Item 10: CPU compatibility as upstream's `--cpu-cap` and cpuinfo.img
//! define it. `dump --cpu-cap` writes this CPU's cpuinfo.img (as upstream
//! describes the CPU, so that upstream checks it too), `restore --cpu-cap`
//! refuses an image whose CPU had features this one lacks and names them,
//! `--cpu-cap=^fpu` lets it through; without `--cpu-cap` cpuinfo.img is
//! neither written nor read (upstream's default). Each thread's XSAVE
//! state is refused only for components it had in use (xstate_bv), not
//! for components the image merely carries. Needs root, gcc, unshare,
//! setsid (SKIP otherwise).

mod fdsupport;

use engine::cpuinfo;
use fdsupport::{last_tick, why_not_here, Scene, CRIU};
use images_proto::image::{read_one, write_all};
use images_proto::magic as mg;
use images_proto::pb;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn cpuinfo_of(dir: &Path) -> pb::CpuinfoX86Entry {
    let e: pb::CpuinfoEntry = read_one(dir, &mg::CPUINFO.file_name(""), &mg::CPUINFO).expect("cpuinfo.img");
    assert_eq!(e.x86_entry.len(), 1);
    e.x86_entry[0].clone()
}

fn put_cpuinfo(dir: &Path, x: pb::CpuinfoX86Entry) {
    let e = pb::CpuinfoEntry { x86_entry: vec![x], ..Default::default() };
    write_all(dir, &mg::CPUINFO.file_name(""), &mg::CPUINFO, &[e]).unwrap();
}

/// XSAVE components a process can use that this CPU has not enabled.
fn missing_components() -> Vec<u32> {
    // 30: a component number no CPU defines yet, so the list is never empty
    [9, 17, 18, 19, 11, 30].into_iter().filter(|&c| engine::sys::cpu::xsave_component(c).is_none()).collect()
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// A restore that must be refused: exit 1, the log names `what`, nothing
/// left running (the progress log stands still).
fn refused(s: &Scene, dir: &Path, args: &[&str], what: &[&str]) {
    let t = last_tick(&s.log());
    let out = s.criu(args, dir, "refused.log");
    let log = std::fs::read_to_string(dir.join("refused.log")).unwrap_or_default();
    assert_eq!(out.status.code(), Some(1), "{args:?} must be refused:\n{log}");
    for w in what {
        assert!(log.contains(w), "{args:?}: the log does not name {w:?}:\n{log}");
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(last_tick(&s.log()), t, "a refused restore ran the program");
}

#[test]
fn cpu_cap_and_cpuinfo_image() {
    test_support::require!(why_not_here());
    let mut s = Scene::start("exiter", "cpucap");
    // without --cpu-cap: no cpuinfo.img, as upstream
    let plain = s.images(0);
    s.criu_ok(&["dump", "-R", "-t", &s.pid.to_string()], &plain, "dump.log");
    assert!(!plain.join("cpuinfo.img").exists(), "cpuinfo.img written without --cpu-cap");
    let dir = s.images(1);
    s.criu_ok(&["dump", "-t", &s.pid.to_string(), "--cpu-cap"], &dir, "dump.log");
    let img = cpuinfo_of(&dir);
    let host = cpuinfo::host();
    assert_eq!(img, host);
    assert_eq!(img.capability.len(), 19);
    assert!(img.xsave_size.unwrap_or(0) >= 576 && img.xfeatures_mask.unwrap_or(0) & 1 == 1, "{img:?}");
    // `criu cpuinfo check` accepts it; `cpuinfo dump` writes the same
    let out = Command::new(CRIU).args(["cpuinfo", "check", "-D"]).arg(&dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cd = s.images(2);
    let out = Command::new(CRIU).args(["cpuinfo", "dump", "-D"]).arg(&cd).output().unwrap();
    assert!(out.status.success());
    assert_eq!(cpuinfo_of(&cd), host);
    // an image from a CPU with more XSAVE components: refused by name
    let missing = missing_components();
    if let Some(&c) = missing.first() {
        let bad = s.images(3);
        copy_dir(&dir, &bad);
        let mut x = img.clone();
        x.xfeatures_mask = Some(x.xfeatures_mask.unwrap_or(0) | (1 << c));
        put_cpuinfo(&bad, x);
        let name = cpuinfo::xfeature_name(c);
        refused(&s, &bad, &["restore", "-d", "--cpu-cap"], &["cpuinfo.img", "XSAVE features this CPU lacks", &name]);
        refused(&s, &bad, &["restore", "-d", "--cpu-cap=fpu"], &[&name]);
        let out = Command::new(CRIU).args(["cpuinfo", "check", "-D"]).arg(&bad).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains(&name));
    } else {
        panic!("XSAVE component 30 reported by this CPU: the test needs a component it lacks");
    }
    // an instruction-set extension this CPU lacks: refused by `ins`, not by `fpu`
    let (w, b, ins) = *cpuinfo::INS_FEATURES.iter().find(|(w, b, _)| host.capability[*w] & (1 << b) == 0).expect("a CPU without some extension");
    let bad = s.images(4);
    copy_dir(&dir, &bad);
    let mut x = img.clone();
    x.capability[w] |= 1 << b;
    put_cpuinfo(&bad, x);
    refused(&s, &bad, &["restore", "-d", "--cpu-cap=ins"], &["instructions this CPU lacks", ins]);
    refused(&s, &bad, &["restore", "-d", "--cpu-cap=cpu"], &[&format!("-{ins}")]);
    // with the checks off the image restores; so it does without --cpu-cap
    // (cpuinfo.img is not read then, as upstream)
    s.restore(&bad, &["--cpu-cap=^fpu"]);
    std::fs::write(s.work.join("stop"), "").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::remove_file(s.work.join("stop")).unwrap();
    s.restore(&bad, &[]);
}

/// Set or clear component `c` of every thread's XSAVE state in `dir`
/// (its data present either way).
fn edit_xsave(dir: &Path, in_use: Option<u32>, carried: u32) {
    let ps: pb::PstreeEntry = read_one(dir, &mg::PSTREE.file_name(""), &mg::PSTREE).unwrap();
    for &tid in &ps.threads {
        let name = mg::CORE.file_name(tid);
        let mut core: pb::CoreEntry = read_one(dir, &name, &mg::CORE).unwrap();
        let xs = core.thread_info.as_mut().unwrap().fpregs.xsave.as_mut().unwrap();
        match carried {
            9 => xs.pkru = vec![0x5555_5554, 0],
            _ => xs.hi16_zmm = vec![0; 128],
        }
        if let Some(c) = in_use {
            xs.xstate_bv |= 1 << c;
        }
        write_all(dir, &name, &mg::CORE, &[core]).unwrap();
    }
}

#[test]
fn xsave_state_refused_only_when_in_use() {
    test_support::require!(why_not_here());
    // PKRU (9) is the component a process has but this kind of CPU may not
    let Some(&c) = missing_components().iter().find(|&&c| c == 9) else {
        test_support::not_on_this_cpu("this CPU has PKRU: an image carrying PKRU state it lacks cannot be made here");
        return;
    };
    let mut s = Scene::start("exiter", "xsave");
    let dir = s.images(0);
    s.criu_ok(&["dump", "-t", &s.pid.to_string()], &dir, "dump.log");
    // carried but not in use (xstate_bv bit clear): restores and runs on
    let carried = s.images(1);
    copy_dir(&dir, &carried);
    edit_xsave(&carried, None, c);
    // in use: its registers would be lost, refused naming the component
    let in_use = s.images(2);
    copy_dir(&dir, &in_use);
    edit_xsave(&in_use, Some(c), c);
    refused(&s, &in_use, &["restore", "-d"], &["PKRU", "which this CPU lacks"]);
    s.restore(&carried, &[]);
    std::fs::write(s.work.join("stop"), "").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::remove_file(s.work.join("stop")).unwrap();
    // --cpu-cap=none restores it without those registers (as upstream
    // does by default); a warning names them
    s.restore(&in_use, &["--cpu-cap=none"]);
    let log = std::fs::read_to_string(in_use.join("restore.log")).unwrap();
    assert!(log.contains("Warn") && log.contains("PKRU"), "{log}");
}
