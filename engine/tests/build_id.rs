//! Build-id validation of mapped files: the dump records the GNU build-id
//! of the executable as upstream does (`reg.build_id` in files.img), and a
//! restore over a rebuilt binary (same path, different build-id) is refused
//! before anything is created. Needs root, gcc, unshare and the shared
//! fixtures; otherwise skips with the reason, or fails under CI=true.

mod common;

use common::*;
use std::process::Command;

#[test]
fn rebuilt_binary_is_refused() {
    require!(why_not_here());
    let dir = test_dir("build-id");
    let criu = private_criu(&dir);
    let img = dir.join("img");
    std::fs::create_dir_all(&img).unwrap();
    let fx = Fixture::start("counter", &dir, Ns::OwnPidNs);
    criu_ok(&criu, &["dump", "-t", &fx.pid.to_string()], &img, "dump.log");

    // files.img records the executable's build-id.
    let files = std::fs::read(img.join("files.img")).unwrap();
    let json = images_proto::image::decode_image(&files, &img.join("files.img"), false).unwrap();
    let exe = json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["reg"]["name"].as_str() == Some(fx.bin.to_str().unwrap()))
        .expect("exe in files.img");
    assert_eq!(exe["reg"]["build_id"].as_array().map(Vec::len), Some(5), "{exe}");

    // Rebuild the same source at the same path with another build-id.
    let src = progs_dir().join("counter.c");
    let st = Command::new("gcc")
        .args(["-O2", "-static", "-Wl,--build-id=0x0123456789abcdef0123456789abcdef01234567", "-o"])
        .arg(&fx.bin)
        .arg(&src)
        .args(["-lpthread", "-lrt"])
        .status()
        .unwrap();
    assert!(st.success());
    let (st, log) = criu_env(&criu, &["restore", "-d"], &img, "restore.log", &[]);
    assert_eq!(st.code(), Some(1), "restore over a rebuilt binary must fail:\n{log}");
    assert!(log.contains("bad build-ID"), "{log}");
    assert!(live_with_exe(&fx.bin).is_empty(), "nothing may be left running");
    let _ = std::fs::remove_dir_all(&dir);
}
