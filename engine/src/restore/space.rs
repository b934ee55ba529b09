//! Replacing the child's address space with the dumped one, by syscalls
//! injected into its main thread.

use super::{ioe, RestoreError};
use crate::dump::proc::parse_maps_line;
use crate::mem_source::MemSource;
use crate::model::{Task, VmaKind};
use crate::sys::inject::Injector;
use crate::sys::Pid;
use crate::{pr_debug, pr_info};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Size of the gadget page area: `syscall` at its start, scratch after.
pub const GADGET_LEN: u64 = 16 * 4096;
/// Scratch area inside the gadget mapping.
pub const SCRATCH_OFF: u64 = 4096;

/// The built address space: where the gadget and scratch live.
#[derive(Debug)]
pub struct Space {
    pub pid: Pid,
    pub gadget_page: u64,
    pub gadget: u64,
    pub scratch: u64,
    pub mem: File,
    /// The task's pid in its own pid namespace (what it sees as getpid()).
    pub ns_pid: i32,
}

impl Space {
    pub fn write(&self, off: u64, data: &[u8]) -> Result<u64, RestoreError> {
        self.mem.write_all_at(data, self.scratch + off).map_err(ioe(self.pid, "writing scratch memory"))?;
        Ok(self.scratch + off)
    }
}

fn current_maps(pid: Pid) -> Result<Vec<(u64, u64, String)>, RestoreError> {
    let t = std::fs::read_to_string(format!("/proc/{pid}/maps")).map_err(ioe(pid, "maps"))?;
    Ok(t.lines().filter_map(parse_maps_line).map(|m| (m.start, m.end, m.name)).collect())
}

/// First gap of `len` bytes at or above 1 MiB free in both lists of ranges.
fn free_gap(a: &[(u64, u64)], len: u64) -> Option<u64> {
    let mut v = a.to_vec();
    v.sort_unstable();
    let mut cand = 0x10_0000u64;
    for (s, e) in v {
        if cand + len <= s {
            return Some(cand);
        }
        cand = cand.max(e);
    }
    (cand + len < 0x7fff_0000_0000).then_some(cand)
}

/// Build the dumped address space in the stopped child `main.tid`.
pub fn build(main: &mut Injector, task: &Task, mem: &dyn MemSource, svc_base: i32, map_files: &[(String, i32)]) -> Result<Space, RestoreError> {
    let pid = main.tid;
    let e = |what: &str| ioe(pid, what.to_string());
    // 1. the engine's rseq registration must go before its memory does
    let rc = crate::sys::ptrace::rseq_config(pid).map_err(e("rseq configuration"))?;
    if rc.rseq_abi_pointer != 0 {
        main.call("rseq(unregister)", libc::SYS_rseq, &[rc.rseq_abi_pointer, u64::from(rc.rseq_abi_size), 1, u64::from(rc.signature)])
            .map_err(e("unregistering rseq"))?;
    }
    // 2. gadget page, free in the child now and in the image
    let cur = current_maps(pid)?;
    let mut used: Vec<(u64, u64)> = cur.iter().map(|(s, e, _)| (*s, *e)).collect();
    used.extend(task.mm.vmas.iter().map(|v| (v.start, v.end)));
    let g = free_gap(&used, GADGET_LEN).ok_or_else(|| RestoreError::Unsupported("no free address range for the restore gadget".into()))?;
    let prot = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64;
    let got = main.call("mmap(gadget)", libc::SYS_mmap, &[g, GADGET_LEN, prot, flags, u64::MAX, 0]).map_err(e("mapping the gadget"))?;
    if got != g {
        return Err(RestoreError::Unsupported(format!("gadget mapped at {got:#x}, wanted {g:#x}")));
    }
    let memf = std::fs::OpenOptions::new().read(true).write(true).open(format!("/proc/{pid}/mem")).map_err(e("opening /proc/PID/mem"))?;
    memf.write_all_at(&[0x0f, 0x05, 0xcc], g).map_err(e("writing the gadget"))?;
    main.gadget = g;
    pr_debug!("restore gadget at {g:#x}");
    // 3. drop everything of the engine's
    for (s, end, name) in cur {
        if name == "[vsyscall]" || (s >= g && end <= g + GADGET_LEN) {
            continue;
        }
        main.call("munmap", libc::SYS_munmap, &[s, end - s]).map_err(e("unmapping the engine's memory"))?;
    }
    // 4. vdso where it was
    if let Some(vvar) = task.mm.vmas.iter().find(|v| v.kind == VmaKind::Vvar) {
        const ARCH_MAP_VDSO_64: u64 = 0x2003;
        main.call("arch_prctl(ARCH_MAP_VDSO_64)", libc::SYS_arch_prctl, &[ARCH_MAP_VDSO_64, vvar.start]).map_err(e("mapping the vdso"))?;
        let now = current_maps(pid)?;
        if let Some(vd) = task.mm.vmas.iter().find(|v| v.kind == VmaKind::Vdso) {
            if !now.iter().any(|(s, en, n)| n == "[vdso]" && *s == vd.start && *en == vd.end) {
                return Err(RestoreError::Unsupported(format!(
                    "this kernel's vdso layout differs from the image's (vdso at {:#x}-{:#x}); vdso remapping is not implemented yet",
                    vd.start, vd.end
                )));
            }
        }
    }
    // 5. every VMA
    for v in &task.mm.vmas {
        if matches!(v.kind, VmaKind::Vdso | VmaKind::Vvar | VmaKind::Vsyscall) {
            continue;
        }
        let (fd, off) = match &v.file {
            Some(f) => {
                let i = map_files.iter().position(|(p, _)| p == &f.path).expect("planned");
                ((svc_base + 1 + i as i32) as u64, v.pgoff)
            }
            None => {
                if v.shared() {
                    return Err(RestoreError::Unsupported(format!("shared anonymous mapping {:#x}-{:#x} is not supported yet", v.start, v.end)));
                }
                (u64::MAX, 0)
            }
        };
        let flags = u64::from(v.flags) | libc::MAP_FIXED as u64;
        let got = main
            .call("mmap", libc::SYS_mmap, &[v.start, v.len(), u64::from(v.prot), flags, fd, off])
            .map_err(e(&format!("mapping {:#x}-{:#x}", v.start, v.end)))?;
        if got != v.start {
            return Err(RestoreError::Unsupported(format!("mmap of {:#x} landed at {got:#x}", v.start)));
        }
    }
    crate::fault::point("mid-mm");
    // 6. contents
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    for r in &task.mm.pages {
        let end = r.vaddr + r.nr_pages * 4096;
        let mut covered = 0u64;
        for v in task.mm.vmas.iter().filter(|v| v.start < end && r.vaddr < v.end) {
            let (lo, hi) = (r.vaddr.max(v.start), end.min(v.end));
            covered += hi - lo;
            if matches!(v.kind, VmaKind::Vdso | VmaKind::Vvar | VmaKind::Vsyscall) || v.shared() {
                continue;
            }
            let mut a = lo;
            while a < hi {
                let n = usize::try_from((hi - a).min(buf.len() as u64)).unwrap_or(buf.len());
                let data: &[u8] = match mem.slice(a, n) {
                    Some(s) => s,
                    None => {
                        mem.read(a, &mut buf[..n])?;
                        &buf[..n]
                    }
                };
                memf.write_all_at(data, a).map_err(e(&format!("writing pages at {a:#x}")))?;
                a += n as u64;
            }
        }
        if covered != end - r.vaddr {
            return Err(RestoreError::Unsupported(format!("pages at {:#x}..{end:#x} lie outside the VMAs", r.vaddr)));
        }
        total += r.nr_pages;
    }
    pr_info!("Restored {total} pages");
    // 7. madvise
    for v in &task.mm.vmas {
        if matches!(v.kind, VmaKind::Vdso | VmaKind::Vvar | VmaKind::Vsyscall) {
            continue;
        }
        for bit in 0..64u64 {
            if v.madv & (1 << bit) != 0 {
                main.call("madvise", libc::SYS_madvise, &[v.start, v.len(), bit]).map_err(e(&format!("madvise({bit}) {:#x}", v.start)))?;
            }
        }
    }
    let sp = Space { pid, gadget_page: g, gadget: g, scratch: g + SCRATCH_OFF, mem: memf, ns_pid: task.pid };
    // 8. mm fields
    let mm = &task.mm;
    let mut auxv = mm.auxv.clone();
    auxv.extend([0, 0]);
    let auxv_bytes: Vec<u8> = auxv.iter().flat_map(|w| w.to_le_bytes()).collect();
    let auxv_ptr = sp.write(1024, &auxv_bytes)?;
    let exe_fd = match &mm.exe {
        Some(x) => svc_base + 1 + map_files.iter().position(|(p, _)| p == &x.path).expect("planned") as i32,
        None => -1,
    };
    let mut m: Vec<u8> = [
        mm.start_code, mm.end_code, mm.start_data, mm.end_data, mm.start_brk, mm.brk, mm.start_stack,
        mm.arg_start, mm.arg_end, mm.env_start, mm.env_end, auxv_ptr,
    ]
    .iter()
    .flat_map(|w| w.to_le_bytes())
    .collect();
    m.extend((auxv_bytes.len() as u32).to_le_bytes());
    m.extend((exe_fd as u32).to_le_bytes());
    let mptr = sp.write(0, &m)?;
    const PR_SET_MM: u64 = 35;
    const PR_SET_MM_MAP: u64 = 14;
    main.call("prctl(PR_SET_MM_MAP)", libc::SYS_prctl, &[PR_SET_MM, PR_SET_MM_MAP, mptr, m.len() as u64, 0])
        .map_err(e("PR_SET_MM_MAP"))?;
    Ok(sp)
}

/// Process-wide state set last: timers, pending signals, dumpable,
/// pdeath signal; service fds closed.
pub fn finish_process(main: &mut Injector, sp: &Space, task: &Task, svc_base: i32, nfiles: usize) -> Result<(), RestoreError> {
    let pid = main.tid;
    let e = |what: &str| ioe(pid, what.to_string());
    for (which, t) in task.itimers.iter().enumerate() {
        let (vsec, mut vusec) = (t.vsec, t.vusec);
        if vsec == 0 && vusec == 0 {
            if t.isec == 0 && t.iusec == 0 {
                continue;
            }
            // expired at dump time and not yet re-armed: due now
            vusec = 1;
        }
        let b: Vec<u8> = [t.isec, t.iusec, vsec, vusec].iter().flat_map(|w| w.to_le_bytes()).collect();
        let ptr = sp.write(0, &b)?;
        main.call("setitimer", libc::SYS_setitimer, &[which as u64, ptr, 0]).map_err(e("setitimer"))?;
    }
    if !task.posix_timers.is_empty() {
        super::thread::restore_posix_timers(main, sp, task)?;
    }
    for si in &task.shared_pending {
        let ptr = sp.write(0, si)?;
        let signo = u64::from(u32::from_le_bytes(si[0..4].try_into().expect("4")));
        main.call("rt_sigqueueinfo", libc::SYS_rt_sigqueueinfo, &[task.pid as u64, signo, ptr]).map_err(e("queueing a shared signal"))?;
    }
    for i in 0..nfiles {
        main.call("close", libc::SYS_close, &[(svc_base + 1 + i as i32) as u64]).map_err(e("closing a service fd"))?;
    }
    if task.mm.dumpable != 1 {
        main.call("prctl(PR_SET_DUMPABLE)", libc::SYS_prctl, &[libc::PR_SET_DUMPABLE as u64, u64::from(task.mm.dumpable)]).map_err(e("PR_SET_DUMPABLE"))?;
    }
    Ok(())
}
