//! runc for the runc tests (runc.rs, runc_tty.rs): a busybox bundle, runc
//! itself with its stderr kept, a container's pid, a guard that deletes
//! the container.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A bundle in `dir/bundle`: a rootfs with busybox (and `links` to it in
/// /bin), `runc spec`'s config with a writable root, `"terminal"` as
/// `terminal` says, and the process `sh -c SCRIPT` (`script` as it
/// stands in the JSON string: quotes escaped).
pub fn busybox_bundle(dir: &Path, links: &[&str], terminal: bool, script: &str) -> PathBuf {
    let b = dir.join("bundle");
    for d in ["bin", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(b.join("rootfs").join(d)).unwrap();
    }
    let bb = std::fs::canonicalize("/usr/bin/busybox").unwrap();
    std::fs::copy(bb, b.join("rootfs/bin/busybox")).unwrap();
    for c in links {
        std::os::unix::fs::symlink("busybox", b.join("rootfs/bin").join(c)).unwrap();
    }
    assert!(Command::new("runc").arg("spec").current_dir(&b).status().unwrap().success(), "runc spec");
    let cfg = b.join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("\"terminal\": true"), "runc spec makes a terminal container:\n{text}");
    let text = text
        .replace("\"terminal\": true", &format!("\"terminal\": {terminal}"))
        .replace("\"readonly\": true", "\"readonly\": false")
        .replace("\"sh\"\n\t\t]", &format!("\"sh\", \"-c\", \"{script}\"\n\t\t]"));
    assert!(text.contains(script), "config.json's args not replaced:\n{text}");
    std::fs::write(&cfg, text).unwrap();
    b
}

/// Run runc in `bundle`; its stderr through a file (a container started
/// by `run -d` keeps runc's stdio: a pipe would never end). Success and
/// stderr.
pub fn runc(bundle: &Path, args: &[&str]) -> (bool, String) {
    let err = bundle.with_file_name("runc.err");
    let f = std::fs::File::create(&err).unwrap();
    let st = Command::new("runc").args(args).current_dir(bundle).stdin(Stdio::null()).stdout(Stdio::null()).stderr(f).status().unwrap();
    (st.success(), std::fs::read_to_string(&err).unwrap_or_default())
}

/// The host pid of container `id`'s init (`runc state`).
pub fn pid_of(bundle: &Path, id: &str) -> i32 {
    let out = Command::new("runc").args(["state", id]).current_dir(bundle).output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    s.split("\"pid\":").nth(1).and_then(|r| r.trim().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()).unwrap_or_else(|| panic!("no pid in runc state {id}: {s}"))
}

/// A container of `bundle`, deleted (`runc delete -f`) on drop.
pub struct Container<'a> {
    pub bundle: &'a Path,
    pub id: String,
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = Command::new("runc").args(["delete", "-f", &self.id]).current_dir(self.bundle).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}
