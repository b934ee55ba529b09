//! A dump becomes visible only when complete: images are written into a
//! staging directory inside the images directory (`.criu-rs-staging-PID`)
//! and moved into place by [`Staging::publish`]: a stale `inventory.img`
//! is removed first, every other file is renamed in, `inventory.img` last,
//! then the directory is synced. An image set without `inventory.img` is
//! incomplete (restore refuses it), so a dump that fails or is killed at
//! any point never leaves a set that looks complete with parts of another.
//! `Drop` removes an unpublished staging directory; one left by a killed
//! engine is removed by the next dump into the same directory.
//!
//! A directory that holds no image set at all (no `*.img`, no other
//! engine's staging directory: a fresh one, as most dumps get) has no set
//! to keep: [`Staging::new_direct_if_fresh`] writes the images straight
//! into it, the inventory still last (after the directory is synced:
//! [`Staging::before_inventory`]), which spares the renames of
//! [`Staging::publish`] (one a file: 700 for a tree of 100 processes, a
//! tenth of its dump). A failed dump removes what it wrote; a killed one
//! leaves its files without `inventory.img`: an incomplete set, which
//! restore refuses, and which makes the directory not fresh for the next
//! dump (staged as above).
//!
//! The directory is fsynced only for a set whose files were synced
//! ([`Staging::sync_files`]: tfork's `--persist`): the inventory-last order
//! holds against an engine killed at any point without it (renames and
//! creations are visible at once), and for a power loss a directory sync
//! without the files' data synced promises nothing. Upstream's dump syncs
//! nothing either. A directory fsync flushes the disk's write cache: after
//! the O_DIRECT writes of a 1 GiB dump it took 1.3 s here (the host
//! writing its cache out), where the dump itself took 0.8-2.1 s.

use std::io;
use std::path::{Path, PathBuf};

const PREFIX: &str = ".criu-rs-staging-";
const INVENTORY: &str = "inventory.img";

#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    #[error("{what} {}", path.display())]
    Io { what: &'static str, path: PathBuf, #[source] source: io::Error },
}

fn ioe(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StagingError {
    let path = path.to_path_buf();
    move |source| StagingError::Io { what, path, source }
}

/// The staging directory of one dump.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    tmp: PathBuf,
    published: bool,
    /// Written straight into `dir` (`tmp` == `dir`): the names that were
    /// there before, which an unpublished dump leaves.
    direct: Option<std::collections::HashSet<std::ffi::OsString>>,
    /// The files were synced ([`Staging::sync_files`]): the directory is
    /// synced around the inventory too.
    durable: std::cell::Cell<bool>,
}

impl Staging {
    /// Create `dir/.criu-rs-staging-<engine pid>`, removing the staging
    /// directories of engines that are gone.
    pub fn new(dir: &Path) -> Result<Staging, StagingError> {
        for e in std::fs::read_dir(dir).map_err(ioe("listing", dir))?.flatten() {
            let name = e.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else { continue };
            if pid.parse::<u32>().is_ok_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let tmp = dir.join(format!("{PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir(&tmp).map_err(ioe("creating the staging directory", &tmp))?;
        Ok(Staging { dir: dir.to_path_buf(), tmp, published: false, direct: None, durable: false.into() })
    }

    /// [`Staging::new`], but straight into `dir` when it is fresh: no
    /// `*.img` and no staging directory in it (after the stale ones are
    /// removed). See the module's comment.
    pub fn new_direct_if_fresh(dir: &Path) -> Result<Staging, StagingError> {
        let staged = Staging::new(dir)?;
        let mut before = std::collections::HashSet::new();
        for e in std::fs::read_dir(dir).map_err(ioe("listing", dir))?.flatten() {
            let name = e.file_name();
            let n = name.to_string_lossy();
            if n.ends_with(".img") || (n.starts_with(PREFIX) && staged.tmp.file_name() != Some(name.as_os_str())) {
                return Ok(staged);
            }
            before.insert(name);
        }
        // (its own, empty, staging directory gone with it)
        drop(staged);
        before.retain(|n| !n.to_string_lossy().starts_with(PREFIX));
        Ok(Staging { dir: dir.to_path_buf(), tmp: dir.to_path_buf(), published: false, direct: Some(before), durable: false.into() })
    }

    /// Whether the images go straight into the images directory.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Before the inventory is written into [`Staging::path`]: written
    /// straight and durable, the directory synced (every other file's name
    /// durable first, as `publish` does before it moves the inventory in).
    pub fn before_inventory(&self) -> Result<(), StagingError> {
        if self.direct.is_some() {
            self.sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Where the images go until published.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// fsync every staged file (before [`Staging::publish`], which syncs
    /// the directories): through one io_uring batch when `uring`, with
    /// fsync(2) one by one where it is not asked for or refused. Says
    /// which was used.
    pub fn sync_files(&self, uring: bool) -> Result<&'static str, StagingError> {
        let mut files = Vec::new();
        for e in std::fs::read_dir(&self.tmp).map_err(ioe("listing", &self.tmp))?.flatten() {
            let p = e.path();
            files.push(std::fs::File::open(&p).map_err(ioe("opening to sync", &p))?);
        }
        self.durable.set(true);
        if uring {
            match crate::sys::uring::fsync_all(&files) {
                Ok(r) => return r.map(|()| "io_uring").map_err(ioe("syncing the files of", &self.tmp)),
                Err(e) => crate::pr_debug!("fsync through io_uring refused ({e}): fsync(2)"),
            }
        }
        for f in &files {
            f.sync_all().map_err(ioe("syncing the files of", &self.tmp))?;
        }
        Ok("fsync")
    }

    /// Move the finished image set into the images directory.
    pub fn publish(mut self) -> Result<(), StagingError> {
        if self.direct.is_some() {
            // (everything in place, the inventory last)
            if !self.dir.join(INVENTORY).exists() {
                return Err(ioe("no inventory written in", &self.dir)(io::ErrorKind::NotFound.into()));
            }
            self.sync_dir(&self.dir)?;
            self.published = true;
            return Ok(());
        }
        let old_inv = self.dir.join(INVENTORY);
        match std::fs::remove_file(&old_inv) {
            Ok(()) => self.sync_dir(&self.dir)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ioe("removing the old", &old_inv)(e)),
        }
        let mut names: Vec<_> = std::fs::read_dir(&self.tmp)
            .map_err(ioe("listing", &self.tmp))?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        // inventory last
        names.sort_by_key(|n| n == INVENTORY);
        for n in names {
            let (from, to) = (self.tmp.join(&n), self.dir.join(&n));
            if n == INVENTORY {
                self.sync_dir(&self.dir)?;
            }
            std::fs::rename(&from, &to).map_err(ioe("moving into place", &to))?;
        }
        self.sync_dir(&self.dir)?;
        std::fs::remove_dir(&self.tmp).map_err(ioe("removing", &self.tmp))?;
        self.published = true;
        Ok(())
    }
}

impl Staging {
    /// fsync `d` when the set is durable (see the module's comment).
    fn sync_dir(&self, d: &Path) -> Result<(), StagingError> {
        if !self.durable.get() {
            return Ok(());
        }
        std::fs::File::open(d).and_then(|f| f.sync_all()).map_err(ioe("syncing", d))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.published {
            return;
        }
        match &self.direct {
            None => {
                let _ = std::fs::remove_dir_all(&self.tmp);
            }
            // what this dump wrote: the files that were not there before
            Some(before) => {
                for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
                    if !before.contains(&e.file_name()) && e.file_type().is_ok_and(|t| t.is_file()) {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(n: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("criu-rs-staging-{n}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn publish_moves_everything_and_replaces_an_old_set() {
        let d = tmpdir("pub");
        std::fs::write(d.join(INVENTORY), "old").unwrap();
        std::fs::write(d.join("core-1.img"), "old").unwrap();
        let s = Staging::new(&d).unwrap();
        std::fs::write(s.path().join("core-1.img"), "new").unwrap();
        std::fs::write(s.path().join(INVENTORY), "new").unwrap();
        let tmp = s.path().to_path_buf();
        s.publish().unwrap();
        assert_eq!(std::fs::read_to_string(d.join(INVENTORY)).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(d.join("core-1.img")).unwrap(), "new");
        assert!(!tmp.exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_fresh_directory_is_written_straight_and_an_old_set_is_staged() {
        let d = tmpdir("direct");
        std::fs::write(d.join("dump.log"), "log").unwrap();
        // fresh: straight in; dropped unpublished, only what it wrote goes
        let s = Staging::new_direct_if_fresh(&d).unwrap();
        assert!(s.is_direct());
        assert_eq!(s.path(), d.as_path());
        std::fs::write(s.path().join("core-1.img"), "new").unwrap();
        drop(s);
        let names: Vec<_> = std::fs::read_dir(&d).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("dump.log")]);
        // published: in place, the inventory required
        let s = Staging::new_direct_if_fresh(&d).unwrap();
        std::fs::write(s.path().join("core-1.img"), "new").unwrap();
        s.before_inventory().unwrap();
        std::fs::write(s.path().join(INVENTORY), "new").unwrap();
        s.publish().unwrap();
        assert_eq!(std::fs::read_to_string(d.join("core-1.img")).unwrap(), "new");
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 3);
        // a set there: staged, and a dump that fails leaves it whole
        let s = Staging::new_direct_if_fresh(&d).unwrap();
        assert!(!s.is_direct());
        std::fs::write(s.path().join("core-1.img"), "newer").unwrap();
        drop(s);
        assert_eq!(std::fs::read_to_string(d.join("core-1.img")).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(d.join(INVENTORY)).unwrap(), "new");
        // an incomplete set (no inventory) is not fresh either
        std::fs::remove_file(d.join(INVENTORY)).unwrap();
        assert!(!Staging::new_direct_if_fresh(&d).unwrap().is_direct());
        // nor a directory another live engine stages into (pid 1's name)
        std::fs::remove_file(d.join("core-1.img")).unwrap();
        let other = d.join(format!("{PREFIX}1"));
        std::fs::create_dir(&other).unwrap();
        assert!(!Staging::new_direct_if_fresh(&d).unwrap().is_direct());
        std::fs::remove_dir(&other).unwrap();
        assert!(Staging::new_direct_if_fresh(&d).unwrap().is_direct());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn dropped_staging_leaves_nothing_and_stale_ones_are_swept() {
        let d = tmpdir("drop");
        let stale = d.join(format!("{PREFIX}{}", u32::MAX - 1));
        std::fs::create_dir(&stale).unwrap();
        let s = Staging::new(&d).unwrap();
        assert!(!stale.exists(), "staging dir of a dead engine removed");
        std::fs::write(s.path().join("pages-1.img"), "x").unwrap();
        drop(s);
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
