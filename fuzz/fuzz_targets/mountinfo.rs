//! `engine::mntns::parse_mountinfo` (the /proc/PID/mountinfo parser a
//! mount namespace's dump starts from) and `engine::mntns::classify` (what
//! restore makes each mount from, and in which order; it also checks the
//! entries of an untrusted mountpoints image) over what it parsed: never
//! a panic, and every index of the order a mount, each once.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(lines) = engine::mntns::parse_mountinfo(text) else { return };
    let mounts: Vec<engine::mntns::Mount> = lines
        .into_iter()
        .map(|l| engine::mntns::Mount {
            mnt_id: l.mnt_id,
            parent_mnt_id: l.parent_id,
            root_dev: engine::mntns::kdev(l.major, l.minor),
            root: l.root,
            ext_key: l.optional.first().cloned(),
            mountpoint: l.mountpoint,
            source: l.source,
            options: l.super_opts,
            fstype: l.fstype,
            ..Default::default()
        })
        .collect();
    if let Ok((how, order)) = engine::mntns::classify(&mounts) {
        assert_eq!(how.len(), mounts.len());
        let mut seen = vec![false; mounts.len()];
        for i in order {
            assert!(!seen[i], "mount {i} twice in the order");
            seen[i] = true;
        }
        assert!(seen.iter().all(|s| *s), "a mount left out of the order");
    }
});
