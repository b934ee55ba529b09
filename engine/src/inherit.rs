//! `--inherit-fd fd[N]:KEY` (repeatable) and RPC `criu_opts.inherit_fd`
//! (`{key, fd}`): the restore uses criu's own open fd N wherever the
//! dumped tree had the resource named KEY, instead of making it again.
//! The fd numbers are criu's (the RPC's are the service's own fds, which
//! it inherited from the client: runc hands its stdio and ExtraFiles
//! down), never the client's.
//!
//! Keys carried, as upstream 4.2 names them:
//! - `pipe:[INO]`: every open file description of the dumped pipe INO (a
//!   pipe whose other end was outside the tree: a container's stdio) is a
//!   new open of the inherited pipe (through /proc/self/fd, with the
//!   dumped end's flags, so each end keeps its direction and status flags
//!   apart from the caller's), as upstream reopens it; the bytes the dump
//!   took for that pipe are not written into it (they were in a pipe that
//!   is not ours any more, as upstream);
//! - a name given at dump with `--external net[INO]:KEY` (runc's and
//!   podman's `extRootNetNS`): the restored tree joins the network
//!   namespace of the inherited fd (setns) instead of one being made;
//! - a regular file's path without its leading `/` (`tmp/app.log`):
//!   every fd of that file in the tree is the inherited fd's own open
//!   file description (upstream dups it: offset and flags shared with
//!   the caller), its status flags set as dumped; not a mapping's file.
//!
//! Refused by name: the other kinds upstream inherits (`socket:[INO]`,
//! `tty[RDEV:DEV]`, `file[MNT:INO]`) and upstream's `debug[N]:TEXT`. A
//! key that names nothing of the image is ignored with a warning, as
//! upstream ignores it (runtimes send their stdio pipes whatever the
//! image holds); a key given again uses the first fd, as upstream's
//! lookup (runc's stdout and stderr on one pipe).
//!
//! The engine holds each inherited fd on a number above every fd the
//! restore children place by number ([`Held`]); every child keeps them
//! through its fd cleanup, and each closes them once its own fd table is
//! built (`restore::child`).

use std::os::fd::{AsRawFd, OwnedFd};

/// The most inherited fds one restore takes.
pub const MAX_INHERIT: usize = 1024;
/// Longest key taken (PATH_MAX).
pub const MAX_KEY: usize = 4096;

/// What a key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// `pipe:[INO]`.
    Pipe(u32),
    /// `tty[RDEV:DEV]` (hex, as upstream): a pty slave whose master was
    /// outside the tree, dumped with `--external tty[RDEV:DEV]`.
    Tty(u64, u64),
    /// Any other accepted key: an external namespace's name
    /// (`--external net[INO]:KEY`) or a regular file's path without its
    /// leading `/`, matched against the image.
    Name(String),
}

/// The key of terminal `rdev` on device `dev` (`tty[RDEV:DEV]`, hex).
pub fn tty_key(rdev: u64, dev: u64) -> String {
    format!("tty[{rdev:x}:{dev:x}]")
}

/// The pipe key of pipe `ino`, as the dump's link shows it.
pub fn pipe_key(ino: u32) -> String {
    format!("pipe:[{ino}]")
}

/// Check a key (untrusted: RPC input): what it names, or why it is not
/// taken.
pub fn classify(key: &str) -> Result<Key, String> {
    if key.is_empty() {
        return Err("an empty key".into());
    }
    if key.len() > MAX_KEY {
        return Err(format!("a key of {} bytes (at most {MAX_KEY})", key.len()));
    }
    if key.contains('\0') {
        return Err("a key with a NUL byte".into());
    }
    if let Some(rest) = key.strip_prefix("pipe:[") {
        let ino = rest
            .strip_suffix(']')
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse::<u32>().ok());
        return ino.map(Key::Pipe).ok_or_else(|| {
            format!("{key:?}: want pipe:[INODE] (a pipe's inode, a 32-bit number)")
        });
    }
    if let Some(rest) = key.strip_prefix("tty[") {
        let hex = |d: &str| (!d.is_empty() && d.len() <= 16).then(|| u64::from_str_radix(d, 16).ok()).flatten();
        let t = rest.strip_suffix(']').and_then(|r| r.split_once(':')).and_then(|(r, d)| Some((hex(r)?, hex(d)?)));
        return t.map(|(r, d)| Key::Tty(r, d)).ok_or_else(|| format!("{key:?}: want tty[RDEV:DEV] (the terminal's st_rdev and st_dev, hex)"));
    }
    for (prefix, what) in [
        ("socket:[", "sockets"),
        ("file[", "external files"),
    ] {
        if key.starts_with(prefix) {
            return Err(format!("{key:?}: inheriting {what} is not supported yet (pipe:[INODE] and external network namespaces are)"));
        }
    }
    if key.starts_with('/') {
        return Err(format!("{key:?}: a regular file's key is its path without the leading /"));
    }
    Ok(Key::Name(key.to_string()))
}

/// Parse `fd[N]:KEY` (the command line's value): (N, KEY), KEY checked
/// with [`classify`]. Errors name the value.
pub fn parse_arg(val: &str) -> Result<(i32, String), String> {
    if val.starts_with("debug[") {
        return Err(format!(
            "--inherit-fd {val}: debug[N]:TEXT (a marker written to fd N) is not supported"
        ));
    }
    let want = || format!("--inherit-fd {val}: want fd[N]:KEY (N one of criu's open fds)");
    let rest = val.strip_prefix("fd[").ok_or_else(want)?;
    let (n, key) = rest.split_once("]:").ok_or_else(want)?;
    if n.is_empty() || n.len() > 10 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return Err(want());
    }
    let n: i32 = n.parse().map_err(|_| want())?;
    classify(key).map_err(|e| format!("--inherit-fd {val}: {e}"))?;
    Ok((n, key.to_string()))
}

/// The inherited fds, checked to be open in criu (before anything is
/// read or forked): errors name the fd and key.
pub fn check_open(list: &[(i32, String)]) -> Result<(), String> {
    if list.len() > MAX_INHERIT {
        return Err(format!(
            "--inherit-fd: {} fds (at most {MAX_INHERIT})",
            list.len()
        ));
    }
    for (n, key) in list {
        let (mode, _) = crate::sys::process::fstat_mode_size(*n)
            .map_err(|e| format!("--inherit-fd fd[{n}]:{key}: fd {n} is not open in criu: {e}"))?;
        if let Ok(Key::Pipe(_)) = classify(key) {
            if mode & libc::S_IFMT != libc::S_IFIFO {
                return Err(format!(
                    "--inherit-fd fd[{n}]:{key}: fd {n} of criu is not a pipe (mode {mode:o})"
                ));
            }
        }
    }
    Ok(())
}

/// What the image makes of the inherited fds (before anything is
/// forked): a key that names nothing is logged and left out, as upstream
/// ignores it; an external network namespace the image has needs its key.
pub fn check_tree(
    tree: &crate::model::Tree,
    list: &[(i32, String)],
) -> Result<Vec<(i32, String)>, String> {
    use crate::kinds::Kind;
    use crate::model::FileDesc;
    let pipes: std::collections::HashSet<u32> = tree
        .tasks
        .iter()
        .flat_map(|t| &t.fds)
        .filter_map(|f| match &f.file {
            FileDesc::Kind(Kind::Pipe(p)) => Some(p.pipe_id),
            _ => None,
        })
        .collect();
    let net_key = tree.net.as_ref().and_then(|n| n.ext_key.clone());
    // upstream's key of a regular file: its path without the leading /
    let reg = |name: &str| {
        tree.tasks.iter().flat_map(|t| &t.fds).any(|f| matches!(&f.file, FileDesc::Kind(Kind::Reg(r)) if r.path.strip_prefix('/') == Some(name)))
    };
    if let Some(k) = &net_key {
        if !list.iter().any(|(_, key)| key == k) {
            return Err(format!("the image's network namespace is external ({k}, dumped with --external net[INO]:{k}): give its fd with --inherit-fd fd[N]:{k}"));
        }
    }
    let mut used: Vec<(i32, String)> = Vec::new();
    for (n, key) in list {
        // (runc sends one entry per stdio fd: a key twice when stdout and
        // stderr were one pipe; the first is used, as upstream's lookup)
        if let Some((m, _)) = used.iter().find(|(_, k)| k == key) {
            crate::pr_info!("--inherit-fd fd[{n}]:{key}: the key is given again; fd {m} is used");
            continue;
        }
        let hit = match classify(key).map_err(|e| format!("--inherit-fd fd[{n}]:{key}: {e}"))? {
            Key::Pipe(ino) => pipes.contains(&ino),
            // (a pty slave dumped with --external tty[RDEV:DEV])
            // (restored from it: kinds::pty::adopt_orphans)
            Key::Tty(rdev, dev) => tree.tasks.iter().flat_map(|t| &t.fds).any(|f| match &f.file {
                FileDesc::Kind(Kind::Tty(t)) => t.ext && t.rdev == rdev && t.dev.map(u64::from) == Some(dev),
                FileDesc::Kind(Kind::Pty(p)) => p.orphan.as_ref().and_then(|o| o.inherit.as_deref()) == Some(key.as_str()),
                _ => false,
            }),
            Key::Name(name) if net_key.as_deref() == Some(name.as_str()) => true,
            Key::Name(name) if reg(&name) => true,
            Key::Name(_) => false,
        };
        if hit {
            crate::pr_info!("File {key} will be restored from inherit fd {n}");
            used.push((*n, key.clone()));
        } else {
            crate::pr_warn!(
                "--inherit-fd fd[{n}]:{key}: the image has no {key}; fd {n} is not used"
            );
        }
    }
    Ok(used)
}

/// The inherited fds as the engine holds them for the restore children:
/// copies on numbers at or above a floor above every fd the children
/// place by number, so that no restored fd lands on one before it is
/// used.
#[derive(Default)]
pub struct Held {
    fds: Vec<(String, OwnedFd)>,
}

impl Held {
    /// Copies of `list`'s fds at `min` or above (close-on-exec).
    pub fn hold(list: &[(i32, String)], min: i32) -> Result<Held, String> {
        let mut fds = Vec::with_capacity(list.len());
        for (n, key) in list {
            let fd = crate::sys::process::dup_number_above(*n, min)
                .map_err(|e| format!("--inherit-fd fd[{n}]:{key}: {e}"))?;
            fds.push((key.clone(), fd));
        }
        Ok(Held { fds })
    }

    /// (key, fd number) of each, for the children's plan.
    pub fn slots(&self) -> Vec<(String, i32)> {
        self.fds
            .iter()
            .map(|(k, f)| (k.clone(), f.as_raw_fd()))
            .collect()
    }
}

/// In a restore child: join the network namespace of the inherited fd
/// `slot` (`key`'s), checked to be one.
pub fn join_netns(slot: i32, key: &str) -> Result<(), String> {
    use std::os::fd::AsFd;
    let fd =
        crate::sys::tty::dup_number(slot).map_err(|e| format!("the inherited fd of {key}: {e}"))?;
    crate::sys::ns::setns(fd.as_fd(), libc::CLONE_NEWNET).map_err(|e| format!("joining the network namespace of the inherited fd of {key}: {e} (is it a network namespace?)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args() {
        assert_eq!(
            parse_arg("fd[7]:pipe:[374532]").unwrap(),
            (7, "pipe:[374532]".to_string())
        );
        assert_eq!(
            parse_arg("fd[0]:extRootNetNS").unwrap(),
            (0, "extRootNetNS".to_string())
        );
        assert_eq!(classify("pipe:[12]").unwrap(), Key::Pipe(12));
        // upstream's tty[RDEV:DEV], hex
        assert_eq!(classify("tty[8800:1a]").unwrap(), Key::Tty(0x8800, 0x1a));
        assert_eq!(tty_key(0x8800, 0x1a), "tty[8800:1a]");
        for bad in [
            "fd[]:pipe:[1]",
            "fd[-1]:pipe:[1]",
            "fd[1]:",
            "fd[1]",
            "fd1:pipe:[1]",
            "fd[99999999999]:x",
            "fd[1]:pipe:[]",
            "fd[1]:pipe:[x]",
            "fd[1]:pipe:[4294967296]",
            "fd[1]:pipe:[1",
            "fd[1]:socket:[5]",
            "fd[1]:tty[88]",
            "fd[1]:tty[zz:3]",
            "fd[1]:tty[88:3",
            "fd[1]:file[3:4]",
            "fd[1]:/tmp/log",
            "debug[1]:hello",
            "",
        ] {
            let e = parse_arg(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad} taken"));
            assert!(e.contains(bad), "{e} names {bad}");
        }
    }
}
