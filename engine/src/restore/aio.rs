//! AIO rings (io_setup): a context's ring is a shared mapping the kernel
//! makes, `/[aio] (deleted)`, whose address is the context id the program
//! holds. The ring is a 32-byte header (id, nr, head, tail, magic,
//! compat and incompat features, header length) and `nr` 32-byte
//! `io_event`s; the kernel writes completions at its own copy of `tail`
//! and reads `head` from the ring.
//!
//! Dump: the VMA (`VmaKind::Aio`) with every page of it, and an `aios`
//! entry in mm.img (id = address, ring_len, nr_req = what io_setup takes
//! to make a ring of that length), as upstream 4.2 writes them.
//!
//! Restore (injected, after the memory fill): io_setup(nr_req) makes a new
//! context; requests that complete at once (1-byte reads at the end of an
//! empty memfd) are submitted and reaped until the kernel's head and tail
//! are the dumped head, then submitted and left unreaped up to the dumped
//! tail, so the kernel counts the completed-but-unreaped events as it did;
//! the dumped events are written over those slots, and the ring is moved
//! to its dumped address with mremap (the kernel moves the context id with
//! it). io_getevents then returns the dumped events, and io_submit goes on
//! with the program's stored context.
//!
//! Requests still in flight at dump are not visible from outside the
//! kernel: they are not carried (upstream 4.2 neither).

use super::{ioe, RestoreError};
use crate::mem_source::MemSource;
use crate::model::Vma;
use crate::sys::inject::Injector;
use crate::sys::Pid;
use std::fs::File;
use std::os::unix::fs::FileExt;

const HEADER: u64 = 32;
const EVENT: u64 = 32;
const IOCB: u64 = 64;
const MAGIC: u32 = 0xa10a_10a1;
/// Largest ring taken from an image (io_setup's requests are bounded by
/// fs.aio-max-nr, 65536 by default: a ring of ~4 MiB).
const MAX_RING: u64 = 64 << 20;

/// Events a ring of `len` bytes holds.
fn events_in(len: u64) -> u64 {
    len.saturating_sub(HEADER) / EVENT
}

/// The nr_req io_setup takes to make a ring of `len` bytes (the kernel
/// doubles the request and adds two events, then fills the pages): the
/// largest that fits, as upstream 4.2 records it.
pub fn nr_req(len: u64) -> u32 {
    u32::try_from(events_in(len).saturating_sub(2) / 2).unwrap_or(u32::MAX)
}

/// Check an AIO ring VMA of an image (`i`-th of `file`) against its `aios`
/// entry: the error says which field is wrong.
pub fn check_vma(i: usize, start: u64, end: u64, flags: u32, aios: &[images_proto::pb::AioRingEntry]) -> Result<(), String> {
    let len = end - start;
    let at = format!("vma {i} at {start:#x}: AIO ring");
    if flags & libc::MAP_SHARED as u32 == 0 {
        return Err(format!("{at}: flags {flags:#x} are not MAP_SHARED"));
    }
    if len > MAX_RING || nr_req(len) == 0 {
        return Err(format!("{at}: a ring of {len} bytes is out of range"));
    }
    let Some((k, a)) = aios.iter().enumerate().find(|(_, a)| a.id == start) else {
        return Err(format!("{at}: no aios entry has id {start:#x}"));
    };
    if u64::from(a.ring_len) != len {
        return Err(format!("{at}: aios entry {k}: ring_len {} is not the mapping's {len} bytes", a.ring_len));
    }
    if a.nr_req == 0 || a.nr_req > nr_req(len) {
        return Err(format!("{at}: aios entry {k}: nr_req {} does not fit a ring of {len} bytes (at most {})", a.nr_req, nr_req(len)));
    }
    Ok(())
}

/// Every aios entry of an image must name an AIO ring VMA.
pub fn check_entries(aios: &[images_proto::pb::AioRingEntry], vmas: &[Vma]) -> Result<(), String> {
    for (k, a) in aios.iter().enumerate() {
        if !vmas.iter().any(|v| v.kind == crate::model::VmaKind::Aio && v.start == a.id) {
            return Err(format!("aios entry {k}: id {:#x} names no AIO ring mapping", a.id));
        }
    }
    Ok(())
}

/// The header words of a ring: (nr, head, tail), checked.
fn header(pid: Pid, at: u64, len: u64, h: &[u8]) -> Result<(u32, u32, u32), RestoreError> {
    let w = |k: usize| u32::from_le_bytes(h[4 * k..4 * k + 4].try_into().expect("4 bytes"));
    let (nr, head, tail, magic) = (w(1), w(2), w(3), w(4));
    let bad = |what: String| RestoreError::Unsupported(format!("the AIO ring at {at:#x} of {pid}: {what}"));
    if magic != MAGIC {
        return Err(bad(format!("magic {magic:#x} is not an AIO ring's")));
    }
    if u64::from(nr) != events_in(len) {
        return Err(bad(format!("nr {nr} does not fit its {len} bytes")));
    }
    if head >= nr || tail >= nr {
        return Err(bad(format!("head {head} / tail {tail} out of its {nr} events")));
    }
    Ok((nr, head, tail))
}

/// Give the restored process its AIO ring `v` back (see the module
/// comment); `scratch` is the restore's scratch area in the target (at
/// least 16 KiB).
pub fn restore_ring(main: &mut Injector, memf: &File, mem: &dyn MemSource, v: &Vma, scratch: u64) -> Result<(), RestoreError> {
    let pid = main.tid;
    let len = v.len();
    let e = |what: String| ioe(pid, what);
    // the dumped ring, page by page (each page is in the memory source)
    let mut ring = vec![0u8; len as usize];
    for (k, page) in ring.chunks_mut(4096).enumerate() {
        mem.read(v.start + 4096 * k as u64, page)?;
    }
    let (nr, head, tail) = header(pid, v.start, len, &ring)?;
    // a new context of the same size
    memf.write_all_at(&0u64.to_le_bytes(), scratch).map_err(e("writing scratch memory".into()))?;
    main.call("io_setup", libc::SYS_io_setup, &[u64::from(nr_req(len)), scratch]).map_err(e(format!("io_setup({}) for the AIO ring at {:#x}", nr_req(len), v.start)))?;
    let mut ctx = [0u8; 8];
    memf.read_exact_at(&mut ctx, scratch).map_err(e("reading the new AIO context".into()))?;
    let ctx = u64::from_le_bytes(ctx);
    let mut h = [0u8; HEADER as usize];
    memf.read_exact_at(&mut h, ctx).map_err(e("reading the new AIO ring".into()))?;
    let new_nr = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
    if new_nr != nr {
        return Err(RestoreError::Unsupported(format!(
            "the AIO ring at {:#x} of {pid} had {nr} events; io_setup({}) makes one of {new_nr} here (another number of CPUs?)",
            v.start,
            nr_req(len)
        )));
    }
    // requests that complete at once: 1-byte reads at the end of an empty memfd
    let name = scratch + 8;
    memf.write_all_at(b"criu-aio\0", name).map_err(e("writing scratch memory".into()))?;
    let fd = main.call("memfd_create", libc::SYS_memfd_create, &[name, libc::MFD_CLOEXEC as u64]).map_err(e("memfd_create for the AIO ring".into()))?;
    let advanced = advance(main, memf, ctx, fd, head, tail, nr, scratch);
    let _ = main.call("close", libc::SYS_close, &[fd]);
    advanced?;
    let mut now = [0u8; 16];
    memf.read_exact_at(&mut now, ctx).map_err(e("reading the new AIO ring".into()))?;
    let (nh, nt) = (u32::from_le_bytes(now[8..12].try_into().expect("4")), u32::from_le_bytes(now[12..16].try_into().expect("4")));
    if (nh, nt) != (head, tail) {
        return Err(RestoreError::Unsupported(format!("the AIO ring at {:#x} of {pid}: head/tail {nh}/{nt} after replay, not {head}/{tail}", v.start)));
    }
    // the dumped events over the new ring's (the header stays the kernel's)
    memf.write_all_at(&ring[HEADER as usize..], ctx + HEADER).map_err(e("writing the AIO ring's events".into()))?;
    // and the ring where it was: its address is the program's context id
    let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
    let got = main.call("mremap(aio ring)", libc::SYS_mremap, &[ctx, len, len, flags, v.start]).map_err(e(format!("moving the AIO ring to {:#x}", v.start)))?;
    if got != v.start {
        return Err(RestoreError::Unsupported(format!("the AIO ring of {pid} moved to {got:#x}, not {:#x}", v.start)));
    }
    if v.prot != (libc::PROT_READ | libc::PROT_WRITE) as u32 {
        main.call("mprotect(aio ring)", libc::SYS_mprotect, &[v.start, len, u64::from(v.prot)]).map_err(e(format!("mprotect of the AIO ring at {:#x}", v.start)))?;
    }
    Ok(())
}

/// Submit (and reap) immediate requests on `ctx` until the kernel's head
/// and tail are `head`, then submit and leave unreaped up to `tail`.
#[allow(clippy::too_many_arguments)]
fn advance(main: &mut Injector, memf: &File, ctx: u64, fd: u64, head: u32, tail: u32, nr: u32, scratch: u64) -> Result<(), RestoreError> {
    let pid = main.tid;
    const ROUND: u64 = 32;
    let buf = scratch + 64; // 1 byte, never written (reads at EOF)
    let iocbs = scratch + 128;
    let ptrs = iocbs + ROUND * IOCB;
    let events = ptrs + ROUND * 8;
    let submit = |main: &mut Injector, n: u64, reap: bool| -> Result<(), RestoreError> {
        let mut cbs = vec![0u8; (n * IOCB) as usize];
        let mut ps = Vec::with_capacity((n * 8) as usize);
        for k in 0..n {
            let c = &mut cbs[(k * IOCB) as usize..((k + 1) * IOCB) as usize];
            c[0..8].copy_from_slice(&k.to_le_bytes()); // aio_data
            c[16..18].copy_from_slice(&0u16.to_le_bytes()); // IOCB_CMD_PREAD
            c[20..24].copy_from_slice(&(fd as u32).to_le_bytes());
            c[24..32].copy_from_slice(&buf.to_le_bytes());
            c[32..40].copy_from_slice(&1u64.to_le_bytes());
            ps.extend_from_slice(&(iocbs + k * IOCB).to_le_bytes());
        }
        memf.write_all_at(&cbs, iocbs).map_err(ioe(pid, "writing AIO requests"))?;
        memf.write_all_at(&ps, ptrs).map_err(ioe(pid, "writing AIO requests"))?;
        let got = main.call("io_submit", libc::SYS_io_submit, &[ctx, n, ptrs]).map_err(ioe(pid, "io_submit replaying the AIO ring"))?;
        if got != n {
            return Err(RestoreError::Unsupported(format!("io_submit replaying the AIO ring of {pid}: {got} of {n} requests taken")));
        }
        if reap {
            let got = main.call("io_getevents", libc::SYS_io_getevents, &[ctx, n, n, events, 0]).map_err(ioe(pid, "io_getevents replaying the AIO ring"))?;
            if got != n {
                return Err(RestoreError::Unsupported(format!("io_getevents replaying the AIO ring of {pid}: {got} of {n} events")));
            }
        }
        Ok(())
    };
    let mut left = u64::from(head);
    while left > 0 {
        let n = left.min(ROUND);
        submit(main, n, true)?;
        left -= n;
    }
    let mut left = u64::from((tail + nr - head) % nr);
    while left > 0 {
        let n = left.min(ROUND);
        submit(main, n, false)?;
        left -= n;
    }
    Ok(())
}
