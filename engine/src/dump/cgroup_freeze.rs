//! `--freeze-cgroup PATH`: freeze the whole cgroup before seizing, so no
//! task of it runs (or forks) between the seizes of its threads, as
//! upstream does for containers. cgroup v2 (`cgroup.freeze` /
//! `cgroup.events`) and the v1 freezer (`freezer.state`) are both handled.
//! The guard thaws on drop, so a failed dump leaves the cgroup as it was;
//! after every thread is seized the dump thaws it itself and the threads
//! stay stopped under ptrace.

use crate::sys::Pid;
use crate::{pr_info, pr_warn};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{path}: neither cgroup.freeze (v2) nor freezer.state (v1): not a freezable cgroup")]
    NotFreezable { path: PathBuf },
    #[error("{what} {path}")]
    Io { what: &'static str, path: PathBuf, #[source] source: std::io::Error },
    #[error("{path}: not frozen after {secs} s")]
    Timeout { path: PathBuf, secs: u64 },
    #[error("process {pid} is not in cgroup {path}")]
    NotMember { pid: Pid, path: PathBuf },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    V2,
    V1,
}

/// A frozen cgroup; thawed on drop unless already thawed.
#[derive(Debug)]
pub struct CgroupFreeze {
    path: PathBuf,
    kind: Kind,
    frozen: bool,
}

/// How long to wait for the kernel to freeze the cgroup (upstream's
/// `--timeout` default, 10 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

fn write(path: &Path, file: &str, v: &str) -> Result<(), CgroupError> {
    let p = path.join(file);
    std::fs::write(&p, v).map_err(|e| CgroupError::Io { what: "writing", path: p, source: e })
}

fn read(path: &Path, file: &str) -> Result<String, CgroupError> {
    let p = path.join(file);
    std::fs::read_to_string(&p).map_err(|e| CgroupError::Io { what: "reading", path: p, source: e })
}

impl CgroupFreeze {
    /// Freeze the cgroup at `path` and wait until the kernel says it is.
    pub fn freeze(path: &Path) -> Result<CgroupFreeze, CgroupError> {
        Self::freeze_within(path, DEFAULT_TIMEOUT)
    }

    /// [`freeze`](Self::freeze), waiting at most `timeout` (`--timeout`).
    pub fn freeze_within(path: &Path, timeout: Duration) -> Result<CgroupFreeze, CgroupError> {
        let kind = if path.join("cgroup.freeze").exists() {
            Kind::V2
        } else if path.join("freezer.state").exists() {
            Kind::V1
        } else {
            return Err(CgroupError::NotFreezable { path: path.to_path_buf() });
        };
        let mut g = CgroupFreeze { path: path.to_path_buf(), kind, frozen: false };
        let t = Instant::now();
        match kind {
            Kind::V2 => {
                write(path, "cgroup.freeze", "1")?;
                g.frozen = true;
                while !read(path, "cgroup.events")?.lines().any(|l| l.trim() == "frozen 1") {
                    if t.elapsed() > timeout {
                        return Err(CgroupError::Timeout { path: g.path.clone(), secs: timeout.as_secs() });
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Kind::V1 => {
                // FREEZING may need the write repeated until every task is in.
                g.frozen = true;
                loop {
                    write(path, "freezer.state", "FROZEN")?;
                    if read(path, "freezer.state")?.trim() == "FROZEN" {
                        break;
                    }
                    if t.elapsed() > timeout {
                        return Err(CgroupError::Timeout { path: g.path.clone(), secs: timeout.as_secs() });
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        pr_info!("Freezing cgroup {} ({:?}) took {:?}", path.display(), kind, t.elapsed());
        Ok(g)
    }

    /// Check that `pid` is a member of the frozen cgroup.
    pub fn check_member(&self, pid: Pid) -> Result<(), CgroupError> {
        let procs = read(&self.path, "cgroup.procs")?;
        if procs.split_whitespace().any(|p| p.parse() == Ok(pid)) {
            Ok(())
        } else {
            Err(CgroupError::NotMember { pid, path: self.path.clone() })
        }
    }

    /// Thaw the cgroup (the seized threads stay stopped under ptrace).
    pub fn thaw(&mut self) -> Result<(), CgroupError> {
        if !self.frozen {
            return Ok(());
        }
        match self.kind {
            Kind::V2 => write(&self.path, "cgroup.freeze", "0")?,
            Kind::V1 => write(&self.path, "freezer.state", "THAWED")?,
        }
        self.frozen = false;
        Ok(())
    }
}

impl Drop for CgroupFreeze {
    fn drop(&mut self) {
        if let Err(e) = self.thaw() {
            pr_warn!("thawing cgroup {}: {e}", self.path.display());
        }
    }
}
