//! Address space: VMAs from smaps, mm fields from stat/auxv, and which
//! pages hold data (from /proc/PID/pagemap: present or swapped, not the
//! shared zero page, not a page-cache page of a file mapping).

use super::proc::{self, SmapsVma};
use crate::model::{MapFile, Mm, PageRun, Vma, VmaKind};
use crate::sys::Pid;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

#[derive(Debug, thiserror::Error)]
pub enum MmError {
    #[error("reading {what} of {pid}")]
    Read { pid: Pid, what: &'static str, #[source] source: io::Error },
    #[error("{pid}: mapping {start:#x}-{end:#x} of {name:?} is not supported yet")]
    Unsupported { pid: Pid, start: u64, end: u64, name: String },
}

fn rd(pid: Pid, what: &'static str) -> Result<String, MmError> {
    std::fs::read_to_string(format!("/proc/{pid}/{what}")).map_err(|e| MmError::Read { pid, what, source: e })
}

fn vma_from_smaps(pid: Pid, s: &SmapsVma) -> Result<Vma, MmError> {
    let m = &s.map;
    let mut prot = 0u32;
    if m.r {
        prot |= libc::PROT_READ as u32;
    }
    if m.w {
        prot |= libc::PROT_WRITE as u32;
    }
    if m.x {
        prot |= libc::PROT_EXEC as u32;
    }
    let mut flags = if m.shared { libc::MAP_SHARED } else { libc::MAP_PRIVATE } as u32;
    if s.vm_flags.iter().any(|f| f == "gd") {
        flags |= libc::MAP_GROWSDOWN as u32;
    }
    let kind = match m.name.as_str() {
        "[heap]" => VmaKind::Heap,
        "[stack]" => VmaKind::Stack,
        "[vdso]" => VmaKind::Vdso,
        "[vvar]" | "[vvar_vclock]" => VmaKind::Vvar,
        "[vsyscall]" => VmaKind::Vsyscall,
        n if n.starts_with('/') && m.ino != 0 && !n.ends_with(" (deleted)") => VmaKind::File,
        n if n.is_empty() || n.starts_with("[anon:") || n.starts_with("[stack:") => VmaKind::Anon,
        n => {
            return Err(MmError::Unsupported { pid, start: m.start, end: m.end, name: n.to_string() });
        }
    };
    if kind == VmaKind::Anon && m.shared {
        return Err(MmError::Unsupported { pid, start: m.start, end: m.end, name: "shared anonymous memory".into() });
    }
    if kind != VmaKind::File {
        flags |= libc::MAP_ANONYMOUS as u32;
    }
    let file = (kind == VmaKind::File).then(|| {
        let meta = std::fs::metadata(&m.name).ok();
        MapFile {
            path: m.name.clone(),
            flags: if m.shared && m.w { libc::O_RDWR as u32 } else { libc::O_RDONLY as u32 },
            size: meta.as_ref().map(std::os::unix::fs::MetadataExt::size),
            mode: meta.as_ref().map(std::os::unix::fs::MetadataExt::mode).unwrap_or(0),
        }
    });
    Ok(Vma {
        start: m.start,
        end: m.end,
        pgoff: if kind == VmaKind::File { m.pgoff } else { 0 },
        prot,
        flags,
        kind,
        madv: proc::madv_from_vmflags(&s.vm_flags),
        file,
    })
}

/// VMAs of `pid`, leaving out `[skip.0, skip.1)` (our scratch page).
pub fn collect_vmas(pid: Pid) -> Result<Vec<Vma>, MmError> {
    let text = rd(pid, "smaps")?;
    let mut out: Vec<Vma> = Vec::new();
    for s in proc::parse_smaps(&text) {
        let v = vma_from_smaps(pid, &s)?;
        // [vvar_vclock] folds into [vvar], as upstream 4.2 records it
        if s.map.name == "[vvar_vclock]" {
            if let Some(prev) = out.last_mut() {
                if prev.kind == VmaKind::Vvar && prev.end == v.start {
                    prev.end = v.end;
                    continue;
                }
            }
        }
        out.push(v);
    }
    Ok(out)
}

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAP: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;
const PM_PFN: u64 = (1 << 55) - 1;

/// Runs of pages with data in the private VMAs.
pub fn collect_pages(pid: Pid, vmas: &[Vma], zero_pfn: u64) -> Result<Vec<PageRun>, MmError> {
    let pm = File::open(format!("/proc/{pid}/pagemap")).map_err(|e| MmError::Read { pid, what: "pagemap", source: e })?;
    let mut runs: Vec<PageRun> = Vec::new();
    let mut buf = vec![0u8; 8 * 4096];
    for v in vmas {
        if v.shared() || matches!(v.kind, VmaKind::Vvar | VmaKind::Vsyscall) {
            continue;
        }
        let lazy = v.kind != VmaKind::File && v.kind != VmaKind::Vdso;
        let mut page = v.start / 4096;
        let end = v.end / 4096;
        while page < end {
            let n = (end - page).min(4096);
            let bytes = usize::try_from(n * 8).unwrap_or(0);
            pm.read_exact_at(&mut buf[..bytes], page * 8).map_err(|e| MmError::Read { pid, what: "pagemap", source: e })?;
            for (i, c) in buf[..bytes].chunks_exact(8).enumerate() {
                let e = u64::from_le_bytes(c.try_into().expect("8 bytes"));
                let want = if v.kind == VmaKind::Vdso {
                    e & PM_PRESENT != 0
                } else {
                    (e & PM_PRESENT != 0 && e & PM_FILE == 0 && (e & PM_PFN) != zero_pfn) || e & PM_SWAP != 0
                };
                if !want {
                    continue;
                }
                let addr = (page + i as u64) * 4096;
                match runs.last_mut() {
                    Some(r) if r.vaddr + r.nr_pages * 4096 == addr && r.lazy == lazy => r.nr_pages += 1,
                    _ => runs.push(PageRun { vaddr: addr, nr_pages: 1, lazy }),
                }
            }
            page += n;
        }
    }
    Ok(runs)
}

/// mm fields from /proc/PID/stat and auxv; `brk` comes from the parasite.
pub fn collect_mm(pid: Pid, vmas: Vec<Vma>, pages: Vec<PageRun>, brk: u64) -> Result<Mm, MmError> {
    let stat = rd(pid, "stat")?;
    let (_, f) = proc::parse_stat(&stat).ok_or(MmError::Read {
        pid,
        what: "stat",
        source: io::Error::other("unparsable"),
    })?;
    let auxv_raw = std::fs::read(format!("/proc/{pid}/auxv")).map_err(|e| MmError::Read { pid, what: "auxv", source: e })?;
    let mut auxv: Vec<u64> = auxv_raw.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8"))).collect();
    // drop the AT_NULL terminator pair, as upstream stores it
    while auxv.len() >= 2 && auxv[auxv.len() - 2] == 0 {
        auxv.truncate(auxv.len() - 2);
    }
    let exe_path = std::fs::read_link(format!("/proc/{pid}/exe")).map_err(|e| MmError::Read { pid, what: "exe", source: e })?;
    let exe_path = exe_path.to_string_lossy().to_string();
    let meta = std::fs::metadata(&exe_path).ok();
    let status = rd(pid, "status")?;
    let thp_disabled = proc::status_field(&status, "THP_enabled").map(|v| v == "0").unwrap_or(false);
    Ok(Mm {
        vmas,
        start_code: proc::stat_field(&f, 26),
        end_code: proc::stat_field(&f, 27),
        start_stack: proc::stat_field(&f, 28),
        start_data: proc::stat_field(&f, 45),
        end_data: proc::stat_field(&f, 46),
        start_brk: proc::stat_field(&f, 47),
        brk,
        arg_start: proc::stat_field(&f, 48),
        arg_end: proc::stat_field(&f, 49),
        env_start: proc::stat_field(&f, 50),
        env_end: proc::stat_field(&f, 51),
        auxv,
        exe: Some(MapFile {
            path: exe_path,
            flags: libc::O_RDONLY as u32,
            size: meta.as_ref().map(std::os::unix::fs::MetadataExt::size),
            mode: meta.as_ref().map(std::os::unix::fs::MetadataExt::mode).unwrap_or(0),
        }),
        dumpable: 1,
        thp_disabled,
        pages,
    })
}
