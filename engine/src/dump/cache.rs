//! Facts every process of one dumped tree would otherwise read again: read
//! once per dump ([`reset`] at the start of each collection, so a later
//! dump in the same engine process reads them afresh) and shared by the
//! tracer threads.
//!
//! - the mount ids a regular file's fd may be on (its process's mount
//!   namespace's and the engine's, from their mountinfo), per mount
//!   namespace: a tree of 100 processes in one namespace read both
//!   mountinfo files 100 times;
//! - the dirty background threshold the page pump is sized against
//!   (`/proc/sys/vm/dirty_background_*`, MemAvailable), the pump's pipe
//!   size (`/proc/sys/fs/pipe-max-size`) and the CPUs online (each
//!   thread's affinity is compared with them): read once a process before.

use crate::sys::Pid;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

#[derive(Default)]
struct Cache {
    /// mount namespace (`mnt:[INODE]` of /proc/PID/ns/mnt) -> its mount
    /// ids and the engine's.
    mounts: HashMap<String, Arc<HashSet<u32>>>,
    /// The engine's own mount ids.
    own_mounts: Option<Arc<HashSet<u32>>>,
    dirty_background: Option<u64>,
    pipe_max: Option<u64>,
    online: Option<Vec<u64>>,
}

fn cache() -> &'static Mutex<Cache> {
    static C: OnceLock<Mutex<Cache>> = OnceLock::new();
    C.get_or_init(Default::default)
}

fn lock() -> std::sync::MutexGuard<'static, Cache> {
    cache().lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Forget everything: called as a dump's collection starts.
pub fn reset() {
    *lock() = Cache::default();
}

fn mount_ids_of(path: &str) -> std::io::Result<HashSet<u32>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.lines().filter_map(|l| l.split(' ').next()?.parse::<u32>().ok()).collect())
}

/// The mount ids of `pid`'s mount namespace and of the engine's (a file
/// on neither is on a detached mount or another namespace's). Read once
/// per mount namespace per dump; without a readable namespace link,
/// read for this call only.
pub fn mount_ids(pid: Pid) -> std::io::Result<Arc<HashSet<u32>>> {
    let ns = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok().map(|l| l.to_string_lossy().into_owned());
    if let Some(ns) = &ns {
        let known = lock().mounts.get(ns).cloned();
        if let Some(ids) = known {
            return Ok(ids);
        }
    }
    let known = lock().own_mounts.clone();
    let own = match known {
        Some(o) => o,
        None => {
            let o = Arc::new(mount_ids_of("/proc/self/mountinfo")?);
            lock().own_mounts = Some(o.clone());
            o
        }
    };
    let mut ids = mount_ids_of(&format!("/proc/{pid}/mountinfo"))?;
    ids.extend(own.iter().copied());
    let ids = Arc::new(ids);
    if let Some(ns) = ns {
        lock().mounts.insert(ns, ids.clone());
    }
    Ok(ids)
}

/// `compute`'s value, computed the first time in this dump.
fn once<T: Clone>(slot: impl Fn(&mut Cache) -> &mut Option<T>, compute: impl FnOnce() -> T) -> T {
    let known = slot(&mut lock()).clone();
    if let Some(v) = known {
        return v;
    }
    let v = compute();
    *slot(&mut lock()) = Some(v.clone());
    v
}

/// The dirty background threshold in bytes (`vm.dirty_background_bytes`,
/// or `dirty_background_ratio`% of MemAvailable).
pub fn dirty_background() -> u64 {
    once(
        |c| &mut c.dirty_background,
        || {
            let num = |f: &str| std::fs::read_to_string(f).ok().and_then(|s| s.trim().parse::<u64>().ok());
            match num("/proc/sys/vm/dirty_background_bytes") {
                Some(b) if b > 0 => b,
                _ => {
                    let ratio = num("/proc/sys/vm/dirty_background_ratio").unwrap_or(10);
                    let avail_kib = std::fs::read_to_string("/proc/meminfo")
                        .ok()
                        .and_then(|m| m.lines().find_map(|l| l.strip_prefix("MemAvailable:")?.split_whitespace().next()?.parse::<u64>().ok()))
                        .unwrap_or(0);
                    avail_kib * 1024 / 100 * ratio
                }
            }
        },
    )
}

/// `/proc/sys/fs/pipe-max-size` (1 MiB when unreadable).
pub fn pipe_max_size() -> u64 {
    once(|c| &mut c.pipe_max, || std::fs::read_to_string("/proc/sys/fs/pipe-max-size").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1 << 20))
}

/// [`crate::sys::process::online_cpus`], read once per dump (a failure is
/// not kept: the next call reads again).
pub fn online_cpus() -> std::io::Result<Vec<u64>> {
    let known = lock().online.clone();
    if let Some(v) = known {
        return Ok(v);
    }
    let v = crate::sys::process::online_cpus()?;
    lock().online = Some(v.clone());
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_mount_ids_are_every_mount_of_the_namespace() {
        let me = std::process::id() as Pid;
        reset();
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let all: HashSet<u32> = text.lines().map(|l| l.split(' ').next().unwrap().parse().unwrap()).collect();
        assert_eq!(*mount_ids(me).unwrap(), all);
        // (kept for the namespace: the same set again)
        assert_eq!(*mount_ids(me).unwrap(), all);
    }

    #[test]
    fn sysctls_read_once_match_the_files() {
        reset();
        let max: u64 = std::fs::read_to_string("/proc/sys/fs/pipe-max-size").unwrap().trim().parse().unwrap();
        assert_eq!(pipe_max_size(), max);
        assert_eq!(online_cpus().unwrap(), crate::sys::process::online_cpus().unwrap());
        assert!(dirty_background() > 0);
    }
}
