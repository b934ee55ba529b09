//! Upstream CRIU 4.2's own image sets of `counter`, `threads` and `signals`
//! (../shared/fixtures/upstream) restored by our engine, set up as the
//! fixtures' README says (binary under /srv/criu-fixtures/bin, working
//! directory from workdir.tar), must keep ticking `ok`.
//!
//! Those images were dumped on a CPU with AVX-512; their static glibc chose
//! EVEX code paths, so they can only run on such a CPU (checked by hand on
//! this AMD VM with the refusal bypassed: the restored upstream fx-counter
//! died at once with `trap invalid opcode` in `__strchrnul_evex`, glibc's
//! AVX-512 strchrnul its IFUNC had picked on the dumping CPU). Where this CPU lacks
//! a feature the image's XSAVE state uses, our restore refuses with a clear
//! error before creating anything, and the test checks exactly that refusal
//! and reports SKIP for the ticking part. Needs root and tar; otherwise SKIP.

mod common;

use common::{last_tick, skip_reason, wait_until, CRIU};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn restore_upstream(name: &str) {
    if let Some(r) = skip_reason() {
        eprintln!("SKIP upstream {name}: {r}");
        return;
    }
    let up = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/upstream").join(name);
    if !up.is_dir() {
        eprintln!("SKIP upstream {name}: no fixture set at {}", up.display());
        return;
    }
    let srv = Path::new("/srv/criu-fixtures");
    std::fs::create_dir_all(srv.join("bin")).unwrap();
    let bin = srv.join("bin").join(format!("fx-{name}"));
    std::fs::copy(up.join(format!("fx-{name}")), &bin).unwrap();
    let _ = std::fs::remove_dir_all(srv.join(name));
    let st = Command::new("tar").arg("-C").arg(srv).arg("-xf").arg(up.join("workdir.tar")).status().unwrap();
    assert!(st.success(), "unpacking workdir.tar");
    let img = std::env::temp_dir().join(format!("criu-rs-upstream-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&img);
    std::fs::create_dir_all(&img).unwrap();
    for e in std::fs::read_dir(up.join("images")).unwrap().flatten() {
        std::fs::copy(e.path(), img.join(e.file_name())).unwrap();
    }
    let log_path = srv.join(name).join("progress.log");
    let before = last_tick(&log_path);
    let pidfile = img.join("restored.pid");
    let out = Command::new(CRIU)
        .args(["restore", "-d", "-v4", "-o", "restore.log", "--pidfile"])
        .arg(&pidfile)
        .arg("-D")
        .arg(&img)
        .output()
        .unwrap();
    let log = std::fs::read_to_string(img.join("restore.log")).unwrap_or_default();
    if !out.status.success() && log.contains("which this CPU lacks") {
        // The refusal must be clean: exit 1, nothing started, nothing ticking.
        assert_eq!(out.status.code(), Some(1), "{log}");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(last_tick(&log_path), before, "a refused restore must not run anything");
        let why = log.lines().find(|l| l.contains("which this CPU lacks")).unwrap_or("").trim();
        eprintln!("SKIP upstream {name}: refused as it must be on this CPU: {why}");
        let _ = std::fs::remove_dir_all(&img);
        return;
    }
    assert!(out.status.success(), "restore of upstream {name} failed:\n{log}");
    wait_until(&format!("upstream {name} ticking after restore"), Duration::from_secs(15), || last_tick(&log_path) > before + 3);
    if let Some(pid) = std::fs::read_to_string(&pidfile).ok().and_then(|s| s.trim().parse::<i32>().ok()) {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    let _ = std::fs::remove_dir_all(&img);
}

#[test]
fn upstream_counter() {
    restore_upstream("counter");
}

#[test]
fn upstream_threads() {
    restore_upstream("threads");
}

#[test]
fn upstream_signals() {
    restore_upstream("signals");
}
