//! Syscalls run inside the frozen process to read state that /proc and
//! ptrace don't show (sigactions, itimers, sigaltstack, clear_tid, brk,
//! securebits, ...). No code is injected: each thread is pointed at an
//! existing `syscall` instruction (see `sys::inject`). Results that the
//! kernel writes to user memory land in a scratch page mapped for the
//! session; `Drop` unmaps it and puts the registers back.

use super::freeze::Frozen;
use crate::sys::inject::Injector;
use crate::sys::Pid;
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

pub const SCRATCH_LEN: u64 = 16 * 4096;

#[derive(Debug)]
pub struct Parasite {
    pub pid: Pid,
    inj: BTreeMap<Pid, Injector>,
    pub scratch: u64,
    mem: File,
}

/// Find a `syscall` instruction (0f 05) in an executable mapping of `pid`:
/// first right before the main thread's ip (it is usually in a syscall),
/// then anywhere in executable memory.
pub fn find_gadget(pid: Pid, ip: u64, exec_ranges: &[(u64, u64)]) -> io::Result<u64> {
    let mem = File::open(format!("/proc/{pid}/mem"))?;
    let mut b = [0u8; 2];
    if ip >= 2 && mem.read_exact_at(&mut b, ip - 2).is_ok() && b == [0x0f, 0x05] {
        return Ok(ip - 2);
    }
    let mut buf = vec![0u8; 1 << 16];
    for &(s, e) in exec_ranges {
        let mut a = s;
        while a < e {
            let n = usize::try_from((e - a).min(buf.len() as u64)).unwrap_or(buf.len());
            if mem.read_exact_at(&mut buf[..n], a).is_err() {
                break;
            }
            if let Some(i) = buf[..n].windows(2).position(|w| w == [0x0f, 0x05]) {
                return Ok(a + i as u64);
            }
            a += n as u64 - 1;
        }
    }
    Err(io::Error::other(format!("no syscall instruction found in the executable memory of {pid}")))
}

impl Parasite {
    /// Start a session on every frozen thread of `f`.
    pub fn start(f: &Frozen, gadget: u64) -> io::Result<Parasite> {
        f.block_signals()?;
        let mut inj = BTreeMap::new();
        for t in &f.threads {
            let mut i = Injector::new(t.tid, gadget)?;
            i.base = t.regs;
            inj.insert(t.tid, i);
        }
        let mem = std::fs::OpenOptions::new().read(true).write(true).open(format!("/proc/{}/mem", f.pid))?;
        let mut p = Parasite { pid: f.pid, inj, scratch: 0, mem };
        let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let a = p.call(f.pid, "mmap", libc::SYS_mmap, &[0, SCRATCH_LEN, prot, flags, u64::MAX, 0])?;
        p.scratch = a;
        Ok(p)
    }

    pub fn call(&mut self, tid: Pid, what: &str, nr: i64, args: &[u64]) -> io::Result<u64> {
        let i = self.inj.get_mut(&tid).ok_or_else(|| io::Error::other(format!("thread {tid} is not frozen")))?;
        i.call(what, nr, args)
    }

    pub fn raw(&mut self, tid: Pid, nr: i64, args: &[u64]) -> io::Result<i64> {
        let i = self.inj.get_mut(&tid).ok_or_else(|| io::Error::other(format!("thread {tid} is not frozen")))?;
        i.raw(nr, args)
    }

    /// Read `len` bytes at scratch offset `off`.
    pub fn read(&self, off: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.mem.read_exact_at(&mut v, self.scratch + off)?;
        Ok(v)
    }

    pub fn read_u64s(&self, off: u64, n: usize) -> io::Result<Vec<u64>> {
        let b = self.read(off, n * 8)?;
        Ok(b.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect())
    }
}

impl Drop for Parasite {
    fn drop(&mut self) {
        if self.scratch != 0 {
            let (pid, s) = (self.pid, self.scratch);
            if let Err(e) = self.call(pid, "munmap", libc::SYS_munmap, &[s, SCRATCH_LEN]) {
                crate::pr_warn!("can't unmap the scratch page of {pid}: {e}");
            }
        }
        for i in self.inj.values() {
            let _ = i.restore_regs();
        }
    }
}
