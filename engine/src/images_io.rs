//! Model <-> CRIU image files, in exactly the shapes upstream CRIU 4.2
//! writes (see ../shared/fixtures/upstream/*/json): inventory, pstree,
//! ids, core per thread, mm, pagemap + pages, files + fdinfo, fs, seccomp.

use crate::mem_source::{MemSource, PagesImage};
use crate::model::*;
use crate::sys::ptrace::{Regs, UserDesc};
use crate::sys::process::KSigaction;
use images_proto::image::{read_all, read_one, write_all};
use images_proto::magic as mg;
use images_proto::pages::{PagemapReader, PagesWriter, PE_LAZY, PE_PRESENT};
use images_proto::pb;
use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    #[error(transparent)]
    Image(#[from] images_proto::ImageError),
    #[error(transparent)]
    Mem(#[from] crate::mem_source::MemError),
    #[error("{file}: {what}")]
    Bad { file: String, what: String },
    #[error("writing {file}")]
    Io { file: String, #[source] source: std::io::Error },
}

fn bad(file: &str, what: impl Into<String>) -> ImagesError {
    ImagesError::Bad { file: file.to_string(), what: what.into() }
}

/// A malformed field of an image: `FILE: entry I, field F: what` (`field
/// F: what` for an image of one entry).
pub fn field_error(file: &str, entry: Option<usize>, field: &str, what: impl std::fmt::Display) -> ImagesError {
    let at = match entry {
        Some(i) => format!("entry {i}, field {field}"),
        None => format!("field {field}"),
    };
    ImagesError::Bad { file: file.to_string(), what: format!("{at}: {what}") }
}

// VMA status bits (criu/include/image.h)
const VMA_AREA_REGULAR: u32 = 1 << 0;
const VMA_AREA_VSYSCALL: u32 = 1 << 2;
const VMA_AREA_VDSO: u32 = 1 << 3;
const VMA_AREA_HEAP: u32 = 1 << 5;
const VMA_FILE_PRIVATE: u32 = 1 << 6;
const VMA_FILE_SHARED: u32 = 1 << 7;
const VMA_ANON_SHARED: u32 = 1 << 8;
const VMA_ANON_PRIVATE: u32 = 1 << 9;
const VMA_AREA_VVAR: u32 = 1 << 12;
/// A SysV shm attachment (with VMA_ANON_SHARED; `shmid` is the segment's id).
const VMA_AREA_SYSVIPC: u32 = 1 << 10;
const VMA_AREA_AIORING: u32 = 1 << 13;
const VMA_AREA_MEMFD: u32 = 1 << 14;

const MTYPE_X86_64: i32 = 1;
const TASK_ALIVE: u32 = 1;
/// Upstream's TASK_STOPPED (compel's COMPEL_TASK_STOPPED): a process in
/// group-stop, its stop signal in `stop_signo`.
const TASK_STOPPED: u32 = 3;
/// Upstream's TASK_DEAD: a zombie (core-PID holds its exit code).
pub const TASK_DEAD: u32 = 2;

fn regs_to_pb(r: &Regs) -> pb::UserX86RegsEntry {
    pb::UserX86RegsEntry {
        r15: r.r15, r14: r.r14, r13: r.r13, r12: r.r12, bp: r.bp, bx: r.bx, r11: r.r11, r10: r.r10,
        r9: r.r9, r8: r.r8, ax: r.ax, cx: r.cx, dx: r.dx, si: r.si, di: r.di, orig_ax: r.orig_ax,
        ip: r.ip, cs: r.cs, flags: r.flags, sp: r.sp, ss: r.ss, fs_base: r.fs_base, gs_base: r.gs_base,
        ds: r.ds, es: r.es, fs: r.fs, gs: r.gs, mode: Some(1),
    }
}

fn regs_from_pb(r: &pb::UserX86RegsEntry) -> Regs {
    Regs {
        r15: r.r15, r14: r.r14, r13: r.r13, r12: r.r12, bp: r.bp, bx: r.bx, r11: r.r11, r10: r.r10,
        r9: r.r9, r8: r.r8, ax: r.ax, cx: r.cx, dx: r.dx, si: r.si, di: r.di, orig_ax: r.orig_ax,
        ip: r.ip, cs: r.cs, flags: r.flags, sp: r.sp, ss: r.ss, fs_base: r.fs_base, gs_base: r.gs_base,
        ds: r.ds, es: r.es, fs: r.fs, gs: r.gs,
    }
}

fn u32s(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4"))).collect()
}
fn u64s(b: &[u8]) -> Vec<u64> {
    b.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8"))).collect()
}
fn put32(b: &mut [u8], v: &[u32]) {
    for (c, x) in b.chunks_exact_mut(4).zip(v) {
        c.copy_from_slice(&x.to_le_bytes());
    }
}
fn put64(b: &mut [u8], v: &[u64]) {
    for (c, x) in b.chunks_exact_mut(8).zip(v) {
        c.copy_from_slice(&x.to_le_bytes());
    }
}
fn comp(x: &[u8], i: u32) -> Option<&[u8]> {
    let (off, len) = crate::sys::cpu::xsave_component(i)?;
    x.get(off..off + len)
}

/// XSAVE area (standard format) -> upstream's fpregs message.
pub fn fpregs_to_pb(x: &[u8]) -> pb::UserX86FpregsEntry {
    let mut x = x.to_vec();
    if x.len() < 576 {
        x.resize(576, 0);
    }
    let r16 = |o: usize| u32::from(u16::from_le_bytes([x[o], x[o + 1]]));
    let xsave = pb::UserX86XsaveEntry {
        xstate_bv: u64s(&x[512..520])[0],
        ymmh_space: comp(&x, 2).map(u32s).unwrap_or_default(),
        bndreg_state: comp(&x, 3).map(u64s).unwrap_or_default(),
        bndcsr_state: comp(&x, 4).map(u64s).unwrap_or_default(),
        opmask_reg: comp(&x, 5).map(u64s).unwrap_or_default(),
        zmm_upper: comp(&x, 6).map(u64s).unwrap_or_default(),
        hi16_zmm: comp(&x, 7).map(u64s).unwrap_or_default(),
        pkru: comp(&x, 9).map(u32s).unwrap_or_default(),
        // upstream 4.2 always writes it; user shadow stacks are not dumped
        cet: Some(pb::UserX86CetEntry { cet: 0, ssp: 0 }),
    };
    pb::UserX86FpregsEntry {
        cwd: r16(0),
        swd: r16(2),
        twd: r16(4),
        fop: r16(6),
        rip: u64s(&x[8..16])[0],
        rdp: u64s(&x[16..24])[0],
        mxcsr: u32s(&x[24..28])[0],
        mxcsr_mask: u32s(&x[28..32])[0],
        st_space: u32s(&x[32..160]),
        xmm_space: u32s(&x[160..416]),
        padding: Vec::new(),
        xsave: Some(xsave),
    }
}

/// Upstream's fpregs message -> XSAVE area sized for this CPU.
pub fn fpregs_from_pb(f: &pb::UserX86FpregsEntry) -> Vec<u8> {
    let mut x = vec![0u8; crate::sys::cpu::xsave_size().max(576)];
    for (o, v) in [(0, f.cwd), (2, f.swd), (4, f.twd), (6, f.fop)] {
        x[o..o + 2].copy_from_slice(&(v as u16).to_le_bytes());
    }
    put64(&mut x[8..24], &[f.rip, f.rdp]);
    put32(&mut x[24..32], &[f.mxcsr, f.mxcsr_mask]);
    put32(&mut x[32..160], &f.st_space);
    put32(&mut x[160..416], &f.xmm_space);
    let mut bv = 0b11u64; // x87 and SSE state are in the legacy area
    if let Some(xs) = &f.xsave {
        bv = xs.xstate_bv;
        let mut set32 = |i: u32, v: &[u32]| {
            if let Some((o, l)) = crate::sys::cpu::xsave_component(i) {
                put32(&mut x[o..o + l], v);
            }
        };
        set32(2, &xs.ymmh_space);
        set32(9, &xs.pkru);
        for (i, v) in [(3, &xs.bndreg_state), (4, &xs.bndcsr_state), (5, &xs.opmask_reg), (6, &xs.zmm_upper), (7, &xs.hi16_zmm)] {
            if let Some((o, l)) = crate::sys::cpu::xsave_component(i) {
                put64(&mut x[o..o + l], v);
            }
        }
    }
    // only features this CPU has enabled
    let mut mask = 0b11u64;
    for i in 2..64 {
        if crate::sys::cpu::xsave_component(i).is_some() {
            mask |= 1 << i;
        }
    }
    put64(&mut x[512..520], &[bv & mask]);
    x
}

fn desc_to_pb(d: &UserDesc) -> pb::UserDescT {
    let f = d.flags;
    pb::UserDescT {
        entry_number: d.entry_number,
        base_addr: d.base_addr,
        limit: d.limit,
        seg_32bit: f & 1 != 0,
        contents_h: f & 4 != 0,
        contents_l: f & 2 != 0,
        read_exec_only: f & 8 != 0,
        limit_in_pages: f & 16 != 0,
        seg_not_present: f & 32 != 0,
        usable: f & 64 != 0,
    }
}

fn desc_from_pb(d: &pb::UserDescT) -> UserDesc {
    let mut f = 0;
    f |= u32::from(d.seg_32bit);
    f |= u32::from(d.contents_l) << 1;
    f |= u32::from(d.contents_h) << 2;
    f |= u32::from(d.read_exec_only) << 3;
    f |= u32::from(d.limit_in_pages) << 4;
    f |= u32::from(d.seg_not_present) << 5;
    f |= u32::from(d.usable) << 6;
    UserDesc { entry_number: d.entry_number, base_addr: d.base_addr, limit: d.limit, flags: f }
}

fn caps(v: u64) -> Vec<u32> {
    vec![v as u32, (v >> 32) as u32]
}
fn caps_from(v: &[u32]) -> u64 {
    u64::from(v.first().copied().unwrap_or(0)) | (u64::from(v.get(1).copied().unwrap_or(0)) << 32)
}

fn creds_to_pb(c: &Creds) -> pb::CredsEntry {
    pb::CredsEntry {
        uid: c.uid[0], euid: c.uid[1], suid: c.uid[2], fsuid: c.uid[3],
        gid: c.gid[0], egid: c.gid[1], sgid: c.gid[2], fsgid: c.gid[3],
        cap_inh: caps(c.cap_inh), cap_prm: caps(c.cap_prm), cap_eff: caps(c.cap_eff), cap_bnd: caps(c.cap_bnd),
        secbits: c.secbits,
        groups: c.groups.clone(),
        lsm_profile: None, lsm_sockcreate: None, apparmor_data: None,
        no_new_privs: c.no_new_privs.then_some(1),
        cap_amb: caps(c.cap_amb),
    }
}

fn creds_from_pb(c: &pb::CredsEntry) -> Creds {
    Creds {
        uid: [c.uid, c.euid, c.suid, c.fsuid],
        gid: [c.gid, c.egid, c.sgid, c.fsgid],
        groups: c.groups.clone(),
        cap_inh: caps_from(&c.cap_inh), cap_prm: caps_from(&c.cap_prm), cap_eff: caps_from(&c.cap_eff),
        cap_bnd: caps_from(&c.cap_bnd), cap_amb: caps_from(&c.cap_amb),
        secbits: c.secbits,
        no_new_privs: c.no_new_privs.unwrap_or(0) != 0,
    }
}

fn sigq(v: &[[u8; 128]]) -> pb::SignalQueueEntry {
    pb::SignalQueueEntry { signals: v.iter().map(|s| pb::SiginfoEntry { siginfo: s.to_vec() }).collect() }
}
fn sigq_from(q: &Option<pb::SignalQueueEntry>) -> Vec<[u8; 128]> {
    q.iter()
        .flat_map(|q| q.signals.iter())
        .map(|s| {
            let mut b = [0u8; 128];
            let n = s.siginfo.len().min(128);
            b[..n].copy_from_slice(&s.siginfo[..n]);
            b
        })
        .collect()
}

fn itimer(t: &Itimer) -> pb::ItimerEntry {
    pb::ItimerEntry { isec: t.isec, iusec: t.iusec, vsec: t.vsec, vusec: t.vusec }
}
fn itimer_from(t: &pb::ItimerEntry) -> Itimer {
    Itimer { isec: t.isec, iusec: t.iusec, vsec: t.vsec, vusec: t.vusec }
}

fn fown() -> pb::FownEntry {
    pb::FownEntry { uid: 0, euid: 0, signum: 0, pid_type: 0, pid: 0 }
}

pub(crate) fn reg_entry(id: u32, path: &str, flags: u32, pos: u64, mode: u32, size: Option<u64>) -> pb::FileEntry {
    mapped_entry(id, path, flags, pos, mode, size, &[])
}

fn mapped_entry(id: u32, path: &str, flags: u32, pos: u64, mode: u32, size: Option<u64>, build_id: &[u32]) -> pb::FileEntry {
    pb::FileEntry {
        r#type: pb::FdTypes::Reg as i32,
        id,
        reg: Some(pb::RegFileEntry {
            id, flags, pos, fown: fown(), name: path.to_string(), mnt_id: None, size, ext: None,
            mode: Some(mode), build_id: build_id.to_vec(), checksum: None, checksum_config: None, checksum_parameter: None,
        }),
        ..Default::default()
    }
}

// ---- files: files.img, fdinfo-N.img, pipes-data.img, remap-fpath.img,
// ghost-file-N.img, tty-info.img (the shapes upstream 4.2 writes; see
// ../shared/fixtures/upstream/files/json). One file entry per open file
// description: fds that share one (dup) share its id.

/// Append `e` to files.img with the next id (ids count from 1).
pub(crate) fn push_file(files: &mut Vec<pb::FileEntry>, mut e: pb::FileEntry) -> u32 {
    let id = files.len() as u32 + 1;
    e.id = id;
    if let Some(r) = e.reg.as_mut() {
        r.id = id;
    }
    if let Some(p) = e.pipe.as_mut() {
        p.id = id;
    }
    if let Some(t) = e.tty.as_mut() {
        t.id = id;
    }
    if let Some(f) = e.fifo.as_mut() {
        f.id = id;
    }
    if let Some(u) = e.usk.as_mut() {
        u.id = id;
    }
    if let Some(m) = e.memfd.as_mut() {
        m.id = id;
    }
    files.push(e);
    id
}

/// What the fds of a tree's processes share: descriptions (numbered across
/// the tree by the dump), memfds, link remaps and the kinds' images
/// (ghosts, terminals, pipes); written once.
#[derive(Default)]
struct FdImages {
    desc_ids: HashMap<u32, u32>,                    // model desc -> file id
    /// memfd inode number -> its memfd.img `inode_id` (from 1).
    memfd_inodes: HashMap<u64, u32>,
    /// Images beside files.img that the resource kinds (`crate::kinds`) write.
    kinds: crate::kinds::ImageAcc,
}

/// The files.img entry of a memfd (an fd's, or a mapping's).
pub(crate) fn memfd_entry(file: &str, memfd_inodes: &HashMap<u64, u32>, ino: u64, flags: u32, pos: u64) -> Result<pb::FileEntry, ImagesError> {
    let inode_id = *memfd_inodes.get(&ino).ok_or_else(|| bad(file, format!("memfd inode {ino} was not collected")))?;
    Ok(pb::FileEntry {
        r#type: pb::FdTypes::Memfd as i32,
        memfd: Some(pb::MemfdFileEntry { id: 0, flags, pos, fown: fown(), inode_id }),
        ..Default::default()
    })
}

/// The key of a mapped file among the files of mappings: its path; for a
/// memfd its inode (two memfds may share a name; no path has a NUL); for
/// a file unlinked while mapped its path and inode (another file may have
/// its name now).
pub fn map_key(f: &MapFile) -> String {
    match (f.memfd, &f.ghost) {
        (Some(ino), _) => format!("\0memfd:{ino}"),
        (None, Some(g)) => format!("{}\0{}:{}", f.path, g.dev, g.ino),
        (None, None) => f.path.clone(),
    }
}

/// memfd.img (one `memfd_inode_entry` per inode) and each inode's data in
/// pagemap-shmem-<ino>.img + pages-<id>.img, as upstream 4.2 writes them
/// (offsets in the file as `vaddr`; a last partial page padded with zeros).
fn write_memfds(dir: &Path, memfds: &[Memfd], pages_id: &mut u32) -> Result<(), ImagesError> {
    if memfds.is_empty() {
        return Ok(());
    }
    let name = mg::MEMFD_INODE.file_name("");
    let mut entries = Vec::with_capacity(memfds.len());
    for (i, m) in memfds.iter().enumerate() {
        let shmid = u32::try_from(m.ino).map_err(|_| bad(&name, format!("memfd {:?}: inode number {} does not fit the image's 32-bit shmid", m.name, m.ino)))?;
        entries.push(pb::MemfdInodeEntry {
            name: m.name.clone(),
            uid: m.uid,
            gid: m.gid,
            size: m.size,
            shmid,
            seals: m.seals,
            inode_id: i as u64 + 1,
            hugetlb_flag: (m.hugetlb != 0).then_some(m.hugetlb),
            mode: Some(libc::S_IFREG | m.mode),
        });
        *pages_id += 1;
        let mut pw = PagesWriter::create(dir, format!("shmem-{shmid}"), *pages_id)?;
        let pages_name = images_proto::pages::pages_name(*pages_id);
        let werr = |e: std::io::Error| bad(&pages_name, format!("copying the data of memfd {:?}: {e}", m.name));
        // in the kernel, from the memfd (or the pages file it came from)
        // to the pages file, each run padded to whole pages
        let (src, offsets): (Option<std::fs::File>, Vec<u64>) = match &m.data {
            MemfdData::None => (None, Vec::new()),
            MemfdData::Live(path) => (Some(std::fs::File::open(path).map_err(werr)?), m.runs.iter().map(|r| r.0).collect()),
            MemfdData::Image { pages, offsets } => (Some(std::fs::File::open(pages).map_err(werr)?), offsets.clone()),
        };
        for (i, &(off, len)) in m.runs.iter().enumerate() {
            let nr = len.div_ceil(4096);
            pw.add_header_only(off, nr, PE_PRESENT)?;
            let (Some(src), Some(&from)) = (&src, offsets.get(i)) else {
                return Err(bad(&name, format!("memfd {:?}: no data for its run at {off:#x}", m.name)));
            };
            let out = pw.flush_pages()?;
            if m.hugetlb != 0 {
                // hugetlbfs can't be spliced from: read, then written
                copy_read(out, src, from, len).map_err(werr)?;
            } else {
                crate::sys::process::sendfile_all(out.as_fd(), src.as_fd(), from, len).map_err(werr)?;
            }
            let pad = (nr * 4096 - len) as usize;
            if pad != 0 {
                std::io::Write::write_all(&mut &*out, &vec![0u8; pad]).map_err(werr)?;
            }
        }
        pw.finish()?;
    }
    write_all(dir, &name, &mg::MEMFD_INODE, &entries)?;
    Ok(())
}

/// `len` bytes of `src` from `from` appended to `out` (its position), by
/// read and write.
fn copy_read(out: &std::fs::File, src: &std::fs::File, from: u64, len: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        let n = usize::try_from(len - at).unwrap_or(buf.len()).min(buf.len());
        src.read_exact_at(&mut buf[..n], from + at)?;
        std::io::Write::write_all(&mut &*out, &buf[..n])?;
        at += n as u64;
    }
    Ok(())
}

// ---- file locks: filelocks.img, one `file_lock_entry` per held lock of
// every process (its pid and the fd it is held through), as upstream 4.2
// writes it with --file-locks.

const FL_POSIX: u32 = 1;
const FL_FLOCK: u32 = 2;
const FL_OFDLCK: u32 = 4;

/// filelocks.img for the tree's locks (none: no file).
fn write_locks(dir: &Path, tree: &Tree) -> Result<(), ImagesError> {
    let mut entries = Vec::new();
    for t in &tree.tasks {
        for l in &t.locks {
            let flag = match l.kind {
                LockKind::Posix => FL_POSIX,
                LockKind::Flock => FL_FLOCK,
                LockKind::Ofd => FL_OFDLCK,
            };
            let r#type = if l.write { libc::F_WRLCK } else { libc::F_RDLCK } as u32;
            entries.push(pb::FileLockEntry { flag, r#type, pid: t.pid, fd: l.fd, start: l.start, len: l.len });
        }
    }
    if entries.is_empty() {
        return Ok(());
    }
    write_all(dir, &mg::FILE_LOCKS.file_name(""), &mg::FILE_LOCKS, &entries)?;
    Ok(())
}

/// The locks of process `pid` in filelocks.img (if the image set has
/// one), each checked: a known kind and access, a range that is one, and
/// an fd the process has.
fn read_locks(dir: &Path, pid: i32, fds: &[Fd]) -> Result<Vec<FileLock>, ImagesError> {
    let name = mg::FILE_LOCKS.file_name("");
    if !dir.join(&name).exists() {
        return Ok(Vec::new());
    }
    let entries: Vec<pb::FileLockEntry> = read_all(dir, &name, &mg::FILE_LOCKS)?;
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate().filter(|(_, e)| e.pid == pid) {
        let what = |s: String| bad(&name, format!("entry {i} (process {pid}, fd {}): {s}", e.fd));
        let kind = match e.flag {
            FL_POSIX => LockKind::Posix,
            FL_FLOCK => LockKind::Flock,
            FL_OFDLCK => LockKind::Ofd,
            f => return Err(what(format!("lock kind {f:#x} is not supported (POSIX 1, flock 2, OFD 4)"))),
        };
        let write = match e.r#type as i32 {
            libc::F_WRLCK => true,
            libc::F_RDLCK => false,
            t => return Err(what(format!("lock type {t} is not supported (F_RDLCK 0, F_WRLCK 1)"))),
        };
        if e.start < 0 || e.len < 0 || e.start.checked_add(e.len).is_none() || (kind == LockKind::Flock && (e.start, e.len) != (0, 0)) {
            return Err(what(format!("bad range start {} len {}", e.start, e.len)));
        }
        if !fds.iter().any(|f| f.fd == e.fd) {
            return Err(what(format!("the lock is held through fd {}, which process {pid} does not have", e.fd)));
        }
        out.push(FileLock { kind, write, fd: e.fd, start: e.start, len: e.len });
    }
    Ok(out)
}

/// memfd.img's `inode_id` -> `shmid` (the model's inode key), without the
/// data; empty when there is no memfd.img.
/// inode_id -> name of memfd.img's entries (checked by `memfd_shmids`).
pub(crate) fn memfd_names(dir: &Path) -> Result<HashMap<u32, String>, ImagesError> {
    let name = mg::MEMFD_INODE.file_name("");
    if !dir.join(&name).exists() {
        return Ok(HashMap::new());
    }
    let entries: Vec<pb::MemfdInodeEntry> = read_all(dir, &name, &mg::MEMFD_INODE)?;
    Ok(entries.iter().filter_map(|e| Some((u32::try_from(e.inode_id).ok()?, e.name.clone()))).collect())
}

pub(crate) fn memfd_shmids(dir: &Path) -> Result<HashMap<u32, u64>, ImagesError> {
    let name = mg::MEMFD_INODE.file_name("");
    if !dir.join(&name).exists() {
        return Ok(HashMap::new());
    }
    let entries: Vec<pb::MemfdInodeEntry> = read_all(dir, &name, &mg::MEMFD_INODE)?;
    let mut out = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        let id = u32::try_from(e.inode_id).map_err(|_| bad(&name, format!("entry {i}: inode_id {} out of range", e.inode_id)))?;
        if out.insert(id, u64::from(e.shmid)).is_some() {
            return Err(bad(&name, format!("entry {i}: inode_id {id} given twice")));
        }
    }
    Ok(out)
}

/// memfd.img and the data of each inode, when the image set has one.
/// Untrusted: names, sizes and data runs are checked (a run past the
/// file's size, overlapping runs, a name memfd_create can't take, two
/// entries for one inode id or shmid are refused by name).
fn read_memfds(dir: &Path) -> Result<Vec<(u32, Memfd)>, ImagesError> {
    let name = mg::MEMFD_INODE.file_name("");
    if !dir.join(&name).exists() {
        return Ok(Vec::new());
    }
    let entries: Vec<pb::MemfdInodeEntry> = read_all(dir, &name, &mg::MEMFD_INODE)?;
    let mut out: Vec<(u32, Memfd)> = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let what = |s: String| bad(&name, format!("entry {i} (memfd {:?}): {s}", e.name));
        let inode_id = u32::try_from(e.inode_id).map_err(|_| what(format!("inode_id {} out of range", e.inode_id)))?;
        if out.iter().any(|(id, m)| *id == inode_id || m.ino == u64::from(e.shmid)) {
            return Err(what(format!("inode_id {} or shmid {} given twice", e.inode_id, e.shmid)));
        }
        if e.name.len() > crate::dump::files::MEMFD_NAME_MAX || e.name.contains('\0') {
            return Err(what("not a name memfd_create takes (at most 249 bytes, no NUL)".into()));
        }
        if e.size > i64::MAX as u64 {
            return Err(what(format!("size {} is beyond any file", e.size)));
        }
        if let Some(h) = e.hugetlb_flag.filter(|&h| h != 0) {
            // upstream 4.2 writes MAP_SHARED|MAP_HUGETLB anonymous memory
            // as a hugetlb memfd of this name (read back as such memory:
            // see the mm reader); other hugetlb memfds are not supported
            const MFD_HUGETLB: u32 = 4;
            if h & MFD_HUGETLB == 0 || h & !(MFD_HUGETLB | (0x3f << libc::MAP_HUGE_SHIFT)) != 0 {
                return Err(what(format!("hugetlb_flag {h:#x} is not MFD_HUGETLB with a page size")));
            }
            // (no page size: the system's default, 2 MiB here at least)
            let shift = ((h >> libc::MAP_HUGE_SHIFT) & 0x3f).max(21);
            if !(13..=34).contains(&shift) || e.size % (1u64 << shift) != 0 {
                return Err(what(format!("size {} is not a whole number of its {}-byte huge pages", e.size, 1u64 << shift.min(63))));
            }
        }
        // (upstream writes st_mode whole: S_IFREG and the permissions)
        let mode = e.mode.unwrap_or(libc::S_IFREG | 0o777);
        if mode & !0o7777 & !libc::S_IFMT != 0 || !matches!(mode & libc::S_IFMT, 0 | libc::S_IFREG) {
            return Err(what(format!("mode {mode:o} is not a regular file's")));
        }
        let mode = mode & 0o7777;
        let (mut runs, mut data) = (Vec::new(), MemfdData::None);
        let pm = images_proto::pages::pagemap_name(format!("shmem-{}", e.shmid));
        if dir.join(&pm).exists() {
            let rd = PagemapReader::open(dir, &pm)?;
            let pages = images_proto::pages::PagesFile::open(dir, rd.pages_id())?;
            let mut offsets = Vec::new();
            let limit = e.size.div_ceil(4096) * 4096;
            for r in &rd.runs()? {
                if !r.present() {
                    return Err(bad(&pm, format!("run at offset {:#x} is not in this image (parent images are not supported yet)", r.vaddr)));
                }
                if r.end() > limit {
                    return Err(bad(&pm, format!("pages {:#x}..{:#x} lie past the end of memfd {:?} ({} bytes)", r.vaddr, r.end(), e.name, e.size)));
                }
                pages.check(r)?;
                // the padding of a last partial page is not file data
                runs.push((r.vaddr, r.len().min(e.size - r.vaddr)));
                offsets.push(r.offset);
            }
            if !runs.is_empty() {
                data = MemfdData::Image { pages: pages.path().to_path_buf(), offsets };
            }
        }
        out.push((
            inode_id,
            Memfd { ino: u64::from(e.shmid), name: e.name.clone(), uid: e.uid, gid: e.gid, mode, size: e.size, seals: e.seals, runs, data, hugetlb: e.hugetlb_flag.unwrap_or(0) },
        ));
    }
    Ok(out)
}

/// files.img entries and the per-kind images for `task`'s fds; returns fdinfo.
fn write_fds(dir: &Path, task: &Task, files: &mut Vec<pb::FileEntry>, st: &mut FdImages) -> Result<Vec<pb::FdinfoEntry>, ImagesError> {
    let mut fdinfo = Vec::with_capacity(task.fds.len());
    let FdImages { desc_ids, kinds, .. } = st;
    for fd in &task.fds {
        let ty = match fd.file {
            FileDesc::Kind(ref k) => k.fd_type(),
        };
        let id = match desc_ids.get(&fd.desc) {
            Some(&id) => id,
            None => {
                let id = match &fd.file {
                    FileDesc::Kind(k) => k.write_entries(&mut crate::kinds::Write { files, acc: kinds, net_ns: task.ids.net_ns, dir })?,
                };
                desc_ids.insert(fd.desc, id);
                id
            }
        };
        fdinfo.push(pb::FdinfoEntry { id, flags: u32::from(fd.cloexec), r#type: ty as i32, fd: fd.fd as u32, xattr_security_selinux: None });
    }
    Ok(fdinfo)
}

/// The images every fd table of the tree shares, after the last one.
fn finish_fds(dir: &Path, st: &mut FdImages) -> Result<(), ImagesError> {
    st.kinds.finish(dir)?;
    let remaps = &st.kinds.state::<crate::kinds::ghost::GhostImages>().remaps;
    if !remaps.is_empty() {
        write_all(dir, &mg::REMAP_FPATH.file_name(""), &mg::REMAP_FPATH, remaps)?;
    }
    Ok(())
}

/// Every entry of image `kind` in `dir`, none when the file is not there.
pub fn read_optional<M: prost::Message + Default>(dir: &Path, kind: &'static images_proto::magic::ImageKind) -> Result<Vec<M>, ImagesError> {
    let name = kind.file_name("");
    if !dir.join(&name).exists() {
        return Ok(Vec::new());
    }
    Ok(read_all(dir, &name, kind)?)
}

/// The fd table `fdinfo-<files_id>.img` describes (with files.img,
/// remap-fpath/ghost-file, pipes-data, fifo-data, tty-info), without the
/// rest of the image set.
pub fn read_fd_table(dir: &Path, files_id: u32) -> Result<(Vec<Fd>, Vec<PipeData>), ImagesError> {
    let files: Vec<pb::FileEntry> = read_all(dir, &mg::FILES.file_name(""), &mg::FILES)?;
    let fdinfo: Vec<pb::FdinfoEntry> = read_all(dir, &mg::FDINFO.file_name(files_id), &mg::FDINFO)?;
    let fds = read_fds(dir, &files, &fdinfo)?;
    // the bytes of pipes and FIFOs ride on their fds (`kinds::pipe`,
    // `kinds::fifo`): the pipes' first, each once
    let mut data: Vec<PipeData> = Vec::new();
    for fifo in [false, true] {
        for f in &fds {
            let d = match &f.file {
                FileDesc::Kind(crate::kinds::Kind::Pipe(crate::kinds::pipe::Pipe { data: Some(d), .. })) if !fifo => d,
                FileDesc::Kind(crate::kinds::Kind::Fifo(crate::kinds::fifo::Fifo { data: Some(d), .. })) if fifo => d,
                _ => continue,
            };
            if !data.iter().any(|x| x.fifo == fifo && x.pipe_id == d.pipe_id) {
                data.push((**d).clone());
            }
        }
    }
    Ok((fds, data))
}

/// The fds of fdinfo from files.img and friends.
fn read_fds(dir: &Path, files: &[pb::FileEntry], fdinfo: &[pb::FdinfoEntry]) -> Result<Vec<Fd>, ImagesError> {
    let by_id: HashMap<u32, &pb::FileEntry> = files.iter().map(|f| (f.id, f)).collect();
    let file = |id: u32| by_id.get(&id).copied();
    let mut fds = Vec::with_capacity(fdinfo.len());
    let mut scratch = crate::kinds::Scratch::default();
    for fi in fdinfo {
        let f = file(fi.id).ok_or_else(|| bad("files.img", format!("fd {}: no file with id {}", fi.fd, fi.id)))?;
        let desc = if let Some(k) = crate::kinds::read(f, &mut crate::kinds::Read { dir, files, fd: fi.fd, scratch: &mut scratch })? {
            FileDesc::Kind(k)
        } else {
            return Err(bad("files.img", format!("fd {}: file type {} is not supported yet", fi.fd, f.r#type)));
        };
        fds.push(Fd { fd: fi.fd as i32, cloexec: fi.flags & 1 != 0, desc: f.id, file: desc });
    }
    crate::kinds::check_table(&fds).map_err(|e| bad("files.img", e))?;
    Ok(fds)
}

fn ids_to_pb(k: &KobjIds) -> pb::TaskKobjIdsEntry {
    let ns = |v: u32| (v != 0).then_some(v);
    pb::TaskKobjIdsEntry {
        vm_id: k.vm, files_id: k.files, fs_id: k.fs, sighand_id: k.sighand,
        pid_ns_id: ns(k.pid_ns), net_ns_id: ns(k.net_ns), ipc_ns_id: ns(k.ipc_ns), uts_ns_id: ns(k.uts_ns),
        mnt_ns_id: ns(k.mnt_ns), user_ns_id: ns(k.user_ns), cgroup_ns_id: ns(k.cgroup_ns), time_ns_id: ns(k.time_ns),
    }
}

fn ids_from_pb(k: &pb::TaskKobjIdsEntry) -> KobjIds {
    let ns = |v: Option<u32>| v.unwrap_or(0);
    KobjIds {
        vm: k.vm_id, files: k.files_id, fs: k.fs_id, sighand: k.sighand_id,
        pid_ns: ns(k.pid_ns_id), net_ns: ns(k.net_ns_id), ipc_ns: ns(k.ipc_ns_id), uts_ns: ns(k.uts_ns_id),
        mnt_ns: ns(k.mnt_ns_id), user_ns: ns(k.user_ns_id), cgroup_ns: ns(k.cgroup_ns_id), time_ns: ns(k.time_ns_id),
    }
}

/// Upstream writes 62 sigactions (signals 1..=64 without SIGKILL and
/// SIGSTOP); the model holds 64, indexed by signal number - 1.
fn sigactions_from(v: &[pb::SaEntry]) -> Vec<KSigaction> {
    let ka = |a: &pb::SaEntry| KSigaction { handler: a.sigaction, flags: a.flags, restorer: a.restorer, mask: a.mask };
    if v.len() >= 64 {
        return v.iter().take(64).map(ka).collect();
    }
    let mut it = v.iter();
    (1..=64usize)
        .map(|sig| {
            if sig == libc::SIGKILL as usize || sig == libc::SIGSTOP as usize {
                KSigaction::default()
            } else {
                it.next().map(ka).unwrap_or_default()
            }
        })
        .collect()
}

/// Add a thread's filter chain (oldest first) to seccomp.img's list,
/// sharing entries with chains already there; returns the index of its
/// newest filter (thread_core.seccomp_filter). `prev` is the index of the
/// filter installed before it, as upstream links them.
fn seccomp_chain(all: &mut Vec<pb::SeccompFilter>, chain: &[SeccompFilter]) -> Option<u32> {
    let mut prev: Option<u32> = None;
    for f in chain {
        let flags = (f.flags != 0).then_some(f.flags as u32);
        let found = all.iter().position(|e| e.filter == f.prog && e.prev == prev && e.flags == flags);
        let idx = match found {
            Some(i) => i as u32,
            None => {
                all.push(pb::SeccompFilter { filter: f.prog.clone(), prev, flags });
                all.len() as u32 - 1
            }
        };
        prev = Some(idx);
    }
    prev
}

/// A thread's filter chain from seccomp.img, oldest first.
fn seccomp_from(file: &str, all: &[pb::SeccompFilter], newest: u32) -> Result<Vec<SeccompFilter>, ImagesError> {
    let mut out = Vec::new();
    let mut pos = Some(newest);
    while let Some(p) = pos {
        let e = all.get(p as usize).ok_or_else(|| bad(file, format!("seccomp filter {p} is not in seccomp.img ({} filters)", all.len())))?;
        if out.len() > all.len() || e.filter.len() % 8 != 0 {
            return Err(bad("seccomp.img", format!("filter {p}: bad chain or program length {}", e.filter.len())));
        }
        out.push(SeccompFilter { prog: e.filter.clone(), flags: u64::from(e.flags.unwrap_or(0)) });
        pos = e.prev;
    }
    out.reverse();
    Ok(out)
}

/// Pages of shared anonymous objects, per shmid: (offset in the object,
/// vaddr in this task, nr_pages), by offset, each offset once.
type ShmemRuns = Vec<(u64, Vec<(u64, u64, u64)>)>;

/// Split a task's page runs into its private ones and those of its shared
/// anonymous mappings (grouped by shmem object, in object offsets).
fn split_shmem_pages(vmas: &[Vma], pages: &[PageRun]) -> (Vec<PageRun>, ShmemRuns) {
    let mut private: Vec<PageRun> = Vec::new();
    let mut shmem: ShmemRuns = Vec::new();
    for r in pages {
        let end = r.vaddr + r.nr_pages * 4096;
        let mut a = r.vaddr;
        while a < end {
            let v = vmas.iter().find(|v| v.start <= a && a < v.end);
            let hi = v.map_or(end, |v| v.end.min(end));
            match v {
                Some(v) if v.shmid != 0 => {
                    let i = shmem.iter().position(|(id, _)| *id == v.shmid).unwrap_or_else(|| {
                        shmem.push((v.shmid, Vec::new()));
                        shmem.len() - 1
                    });
                    shmem[i].1.push((a - v.start + v.pgoff, a, (hi - a) / 4096));
                }
                _ => match private.last_mut() {
                    Some(p) if p.vaddr + p.nr_pages * 4096 == a && p.lazy == r.lazy => p.nr_pages += (hi - a) / 4096,
                    _ => private.push(PageRun { vaddr: a, nr_pages: (hi - a) / 4096, lazy: r.lazy }),
                },
            }
            a = hi;
        }
    }
    for (_, runs) in &mut shmem {
        runs.sort_by_key(|r| r.0);
        // the same object mapped twice: keep each page once
        let mut out: Vec<(u64, u64, u64)> = Vec::with_capacity(runs.len());
        for &(off, vaddr, n) in runs.iter() {
            let done = out.last().map_or(0, |l| l.0 + l.2 * 4096);
            if off + n * 4096 <= done {
                continue;
            }
            let skip = done.saturating_sub(off);
            out.push((off + skip, vaddr + skip, n - skip / 4096));
        }
        *runs = out;
    }
    (private, shmem)
}

/// Page runs of shared anonymous objects (pagemap-shmem-SHMID.img, vaddr =
/// offset in the object) placed at each mapping of them: (vaddr, nr_pages,
/// offset in the pages file) per piece, for [`PagesImage::add`].
fn place_shmem_runs(vmas: &[Vma], shmid: u64, runs: &[images_proto::pages::PageRun]) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    for v in vmas.iter().filter(|v| v.shmid == shmid) {
        let (lo, hi) = (v.pgoff, v.pgoff + v.len());
        for r in runs {
            let (s, e) = (r.vaddr.max(lo), (r.vaddr + r.nr_pages * 4096).min(hi));
            if s < e {
                out.push((v.start + (s - lo), (e - s) / 4096, r.offset + (s - r.vaddr)));
            }
        }
    }
    out
}

/// One pagemap just written, read back as restore reads it (runs page
/// aligned, in ascending order and not overlapping: `PagemapReader`) and
/// checked against the size of its pages file: its runs.
fn check_written_pagemap(dir: &Path, name: String) -> Result<Vec<(u64, u64)>, ImagesError> {
    let rd = PagemapReader::open(dir, &name)?;
    let pages = images_proto::pages::pages_name(rd.pages_id());
    let runs = rd.runs()?;
    let need = runs.iter().filter(|r| r.present()).try_fold(0u64, |acc, r| acc.checked_add(r.nr_pages.checked_mul(4096)?));
    let have = std::fs::metadata(dir.join(&pages)).map_err(|e| ImagesError::Io { file: pages.clone(), source: e })?.len();
    if need != Some(have) {
        return Err(bad(&pages, format!("the dump wrote {have} bytes of pages, but {name} accounts for {need:?}")));
    }
    Ok(runs.iter().map(|r| (r.vaddr, r.nr_pages)).collect())
}

/// The pagemap images of task `pid` and of the shared memory objects
/// `shmem`, read back from `dir` as restore reads them: runs page aligned,
/// in ascending order and not overlapping (`PagemapReader`), the task's
/// runs inside its VMAs, and each pages file exactly as long as its present
/// runs.
fn check_written_pages(dir: &Path, pid: i32, vmas: &[Vma], shmem: &ShmemRuns) -> Result<(), ImagesError> {
    let check_one = |name: String| check_written_pagemap(dir, name);
    let pm_name = images_proto::pages::pagemap_name(pid);
    let runs = check_one(pm_name.clone())?;
    let vma_ranges: Vec<(u64, u64)> = vmas.iter().map(|v| (v.start, v.end)).collect();
    crate::validate::mm_layout(&mg::MM.file_name(pid), &pm_name, &vma_ranges, &runs)?;
    for (shmid, _) in shmem {
        check_one(images_proto::pages::pagemap_name(format!("shmem-{shmid}")))?;
    }
    Ok(())
}

/// Guard regions have no place in upstream's images: they go to a file of
/// ours, which upstream ignores (it then restores ordinary pages there).
const GUARDS_MAGIC: &[u8; 8] = b"CRRSGRD1";
/// At most this many guard regions are read from an image.
const MAX_GUARDS: usize = 1 << 20;

/// `criu-rs-guards-PID.img`: [`GUARDS_MAGIC`], then (start, end) u64 LE
/// pairs, sorted.
pub fn guards_name(pid: i32) -> String {
    format!("criu-rs-guards-{pid}.img")
}

fn write_guards(dir: &Path, pid: i32, guards: &[(u64, u64)]) -> Result<(), ImagesError> {
    let name = guards_name(pid);
    let mut b = GUARDS_MAGIC.to_vec();
    for &(s, e) in guards {
        b.extend_from_slice(&s.to_le_bytes());
        b.extend_from_slice(&e.to_le_bytes());
    }
    std::fs::write(dir.join(&name), b).map_err(|e| ImagesError::Io { file: name, source: e })
}

/// The guard regions of `pid` (none without the file), checked: page
/// aligned, ascending, not overlapping, inside the VMAs, holding no pages.
fn read_guards(dir: &Path, pid: i32, vmas: &[(u64, u64)], pages: &[PageRun]) -> Result<Vec<(u64, u64)>, ImagesError> {
    use std::io::Read;
    let name = guards_name(pid);
    let path = dir.join(&name);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let f = images_proto::image::open_regular(&path)?;
    let mut b = Vec::new();
    let limit = (8 + 16 * MAX_GUARDS) as u64;
    f.take(limit + 1).read_to_end(&mut b).map_err(|e| ImagesError::Io { file: name.clone(), source: e })?;
    if b.len() as u64 > limit || b.len() < 8 || &b[..8] != GUARDS_MAGIC || (b.len() - 8) % 16 != 0 {
        return Err(bad(&name, format!("not a guard region list ({} bytes)", b.len())));
    }
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (i, c) in b[8..].chunks_exact(16).enumerate() {
        let s = u64::from_le_bytes(c[..8].try_into().expect("8 bytes"));
        let e = u64::from_le_bytes(c[8..].try_into().expect("8 bytes"));
        if s >= e || s % 4096 != 0 || e % 4096 != 0 || out.last().is_some_and(|l| s < l.1) {
            return Err(bad(&name, format!("entry {i}: bad guard region {s:#x}-{e:#x}")));
        }
        // holding pages of the pagemap: the two images contradict each other
        let k = pages.partition_point(|r| r.vaddr.saturating_add(r.nr_pages.saturating_mul(4096)) <= s);
        if pages.get(k).is_some_and(|r| r.vaddr < e) {
            return Err(bad(&name, format!("entry {i}: guard region {s:#x}-{e:#x} holds pages of the pagemap")));
        }
        out.push((s, e));
    }
    let as_runs: Vec<(u64, u64)> = out.iter().map(|&(s, e)| (s, (e - s) / 4096)).collect();
    crate::validate::mm_layout(&mg::MM.file_name(pid), &name, vmas, &as_runs)?;
    Ok(out)
}

/// Write the model as an image set into `dir`, the page contents of
/// `tree.tasks[i]` from `mems[i]` (`None` for a zombie).
///
/// As upstream writes a tree: pstree.img lists every process (parents
/// before children); each live one has core-TID (per thread), ids, mm,
/// pagemap + pages (page image ids counted across the tree), fs and
/// fdinfo-<files id>; a zombie has only core-PID (TASK_DEAD, exit code).
/// files.img ids count across the tree in the order the processes are
/// visited (per process: exe and mapped files not seen before, fds whose
/// description is new, cwd, root).
pub fn write_images(tree: &Tree, dir: &Path, mems: &[Option<&dyn MemSource>], run_id: &str) -> Result<(), ImagesError> {
    if mems.len() != tree.tasks.len() {
        return Err(bad("pstree.img", format!("{} processes but {} memory sources", tree.tasks.len(), mems.len())));
    }
    write_images_inner(tree, dir, Some(mems), run_id)
}

/// [`write_images`]; `mems` `None`: the pages files are written already.
fn write_images_inner(tree: &Tree, dir: &Path, mems: Option<&[Option<&dyn MemSource>]>, run_id: &str) -> Result<(), ImagesError> {
    let mut files: Vec<pb::FileEntry> = Vec::new();
    let mut fd_images =
        FdImages { memfd_inodes: tree.memfds.iter().enumerate().map(|(i, m)| (m.ino, i as u32 + 1)).collect(), ..Default::default() };
    // (the memfd kind's fds name the inodes by these ids too)
    fd_images.kinds.state::<crate::kinds::memfd::InodeIds>().0 = fd_images.memfd_inodes.clone();
    let mut map_ids: Vec<(String, u32)> = Vec::new();
    let mut filters: Vec<pb::SeccompFilter> = Vec::new();
    let mut pages_id = 0u32;
    let mut shm_pages_id = tree.tasks.iter().filter(|t| t.zombie_exit.is_none()).count() as u32;
    let mut shm_written = std::collections::HashSet::new();
    for (k, task) in tree.tasks.iter().enumerate() {
        if let Some(exit) = task.zombie_exit {
            write_zombie(dir, task, exit)?;
            continue;
        }
        let mem = match mems {
            None => None,
            Some(mems) => match mems.get(k).copied().flatten() {
                Some(m) => Some(m),
                None => return Err(bad("pstree.img", format!("process {}: no memory source", task.pid))),
            },
        };
        pages_id += 1;
        write_task(dir, task, &mut shm_pages_id, &mut shm_written, mem, pages_id, &mut files, &mut map_ids, &mut fd_images, &mut filters)?;
    }
    finish_fds(dir, &mut fd_images)?;
    // entries no fd refers to (a unix socket's peer outside the tree):
    // first in files.img, as upstream writes them (its restore resolves a
    // socket's peer only among the entries read before it)
    let n = files.len();
    for e in fd_images.kinds.files() {
        push_file(&mut files, e.clone());
    }
    files.rotate_left(n);
    write_memfds(dir, &tree.memfds, &mut shm_pages_id)?;
    // the root's own uts and ipc namespaces (SysV shm contents: pages after the memfds')
    crate::utsipc::write_images(dir, tree, &mut shm_pages_id)?;
    // the root's own network namespace
    if let Some(n) = &tree.net {
        crate::netns::write_images(dir, n, tree.root().ids.net_ns)?;
    }
    // the root's own mount namespace (mountpoints-ID.img, tmpfs archives)
    crate::mntns::write_images(dir, tree)?;
    if let Some(cg) = &tree.cgroups {
        crate::cgroups::write_image(dir, cg)?;
    }
    write_locks(dir, tree)?;
    write_all(dir, &mg::FILES.file_name(""), &mg::FILES, &files)?;
    write_all(dir, &mg::SECCOMP.file_name(""), &mg::SECCOMP, &[pb::SeccompEntry { seccomp_filters: filters }])?;
    let task = tree.root();
    if let Some(tn) = &tree.timens {
        let ts = |(tv_sec, tv_nsec): (u64, u64)| pb::Timespec { tv_sec, tv_nsec };
        let e = pb::TimensEntry { monotonic: ts(tn.monotonic), boottime: ts(tn.boottime) };
        // as upstream: timens-<its id>.img for a time namespace of the
        // task's own, timens-0.img for criu's
        let id = task.ids.time_ns;
        let id = if id != 0 && id != tree.root_ids.time_ns { id } else { 0 };
        write_all(dir, &mg::TIMENS.file_name(id), &mg::TIMENS, &[e])?;
    }
    let ps: Vec<pb::PstreeEntry> = tree
        .tasks
        .iter()
        .map(|task| pb::PstreeEntry {
            pid: task.pid as u32,
            ppid: task.ppid as u32,
            pgid: task.pgid as u32,
            sid: task.sid as u32,
            // (a zombie: one thread numbered 0, as upstream writes it)
            threads: if task.zombie_exit.is_some() { vec![0] } else { task.threads.iter().map(|t| t.tid as u32).collect() },
        })
        .collect();
    write_all(dir, &mg::PSTREE.file_name(""), &mg::PSTREE, &ps)?;
    if mems.is_none() {
        // (completed by finish_images once the memory is written)
        return Ok(());
    }
    write_inventory(tree, dir, run_id)
}

/// The inventory, last: an image set without it is incomplete.
fn write_inventory(tree: &Tree, dir: &Path, run_id: &str) -> Result<(), ImagesError> {
    crate::fault::point("before-inventory");
    let root_ids = ids_to_pb(&tree.root_ids);
    let inv = pb::InventoryEntry {
        img_version: 2,
        fdinfo_per_id: Some(true),
        root_ids: Some(root_ids),
        ns_per_id: Some(true),
        root_cg_set: Some(1),
        lsmtype: Some(0),
        dump_uptime: None,
        pre_dump_mode: None,
        tcp_close: crate::kinds::inet::tcp_close().then_some(true),
        network_lock_method: Some(0),
        plugins_entry: Some(Default::default()),
        dump_criu_run_id: Some(run_id.to_string()),
    };
    write_all(dir, &mg::INVENTORY.file_name(""), &mg::INVENTORY, &[inv])?;
    Ok(())
}

/// core-PID.img of a zombie: only the task core, TASK_DEAD with its wait
/// status (upstream's shape).
fn write_zombie(dir: &Path, task: &Task, exit: u32) -> Result<(), ImagesError> {
    let tc = pb::TaskCoreEntry { task_state: TASK_DEAD, exit_code: exit, comm: task.comm.clone(), ..Default::default() };
    let core = pb::CoreEntry { mtype: MTYPE_X86_64, tc: Some(tc), ..Default::default() };
    write_all(dir, &mg::CORE.file_name(task.pid), &mg::CORE, &[core])?;
    Ok(())
}

/// A mapped file unlinked while mapped: its contents in ghost-file-N.img
/// (one per inode across the tree, shared with fds of the same inode) and
/// a `GHOST` remap of its files.img entry `orig_id`, as for fds.
fn map_ghost(dir: &Path, st: &mut FdImages, orig_id: u32, g: &Ghost) -> Result<(), ImagesError> {
    crate::kinds::ghost::ghost_remap(dir, &mut st.kinds, orig_id, g)
}

/// pagemap-PID and pages-ID of one process's private pages (`private`).
fn write_private_pages(dir: &Path, pid: i32, pages_id: u32, private: &[PageRun], mem: &dyn MemSource) -> Result<(), ImagesError> {
    let mut pw = PagesWriter::create(dir, pid, pages_id)?;
    let mut ranges = Vec::with_capacity(private.len());
    for r in private {
        pw.add_header_only(r.vaddr, r.nr_pages, PE_PRESENT | if r.lazy { PE_LAZY } else { 0 })?;
        ranges.push((r.vaddr, r.nr_pages * 4096));
    }
    mem.copy_to(&ranges, pw.flush_pages()?, 0)?;
    crate::fault::point("mid-memory");
    pw.finish()?;
    Ok(())
}

/// pagemap-shmem-SHMID and pages-ID of one shared anonymous object, read
/// through a process that maps it (`runs`: offset, address, pages).
fn write_shmem_pages(dir: &Path, shmid: u64, id: u32, runs: &[(u64, u64, u64)], mem: &dyn MemSource) -> Result<(), ImagesError> {
    let mut pw = PagesWriter::create(dir, format!("shmem-{shmid}"), id)?;
    let mut ranges = Vec::with_capacity(runs.len());
    for &(off, vaddr, n) in runs {
        pw.add_header_only(off, n, PE_PRESENT)?;
        ranges.push((vaddr, n * 4096));
    }
    mem.copy_to(&ranges, pw.flush_pages()?, 0)?;
    pw.finish()?;
    Ok(())
}

/// The pages files of one live process, as [`write_images`] numbers them:
/// its own pages id and the shared anonymous objects it writes (the first
/// process of the tree mapping each), with their pages ids.
#[derive(Debug, Clone, Default)]
pub struct MemoryIds {
    pub pages_id: u32,
    pub shmem: Vec<(u64, u32)>,
}

/// [`MemoryIds`] of every process of `tree` (`None` for a zombie), for
/// [`write_memory`].
pub fn memory_ids(tree: &Tree) -> Vec<Option<MemoryIds>> {
    let mut pages_id = 0u32;
    let mut shm_pages_id = tree.tasks.iter().filter(|t| t.zombie_exit.is_none()).count() as u32;
    let mut written = std::collections::HashSet::new();
    tree.tasks
        .iter()
        .map(|task| {
            task.zombie_exit.is_none().then(|| {
                pages_id += 1;
                let (_, shmem) = split_shmem_pages(&task.mm.vmas, &task.mm.pages);
                let shmem = shmem
                    .iter()
                    .filter(|(id, _)| written.insert(*id))
                    .map(|(id, _)| {
                        shm_pages_id += 1;
                        (*id, shm_pages_id)
                    })
                    .collect();
                MemoryIds { pages_id, shmem }
            })
        })
        .collect()
}

/// The pages files of `task` (`ids` from [`memory_ids`]), its memory read
/// through `mem`: what [`write_images`] writes for it, for
/// [`write_images_but_memory`] to write the rest. Processes may be written
/// at the same time, from several threads.
pub fn write_memory(dir: &Path, task: &Task, ids: &MemoryIds, mem: &dyn MemSource) -> Result<(), ImagesError> {
    let (private, shmem) = split_shmem_pages(&task.mm.vmas, &task.mm.pages);
    write_private_pages(dir, task.pid, ids.pages_id, &private, mem)?;
    let mut own: ShmemRuns = Vec::new();
    for (shmid, runs) in shmem.into_iter() {
        if let Some(&(_, id)) = ids.shmem.iter().find(|(s, _)| *s == shmid) {
            write_shmem_pages(dir, shmid, id, &runs, mem)?;
            own.push((shmid, runs));
        }
    }
    // read back what it wrote, as write_task does (each shared object by
    // the one process that writes it: memory_ids)
    check_written_pages(dir, task.pid, &task.mm.vmas, &own)
}

/// [`write_images`] but the pages files ([`write_memory`], which may run
/// at the same time on other threads) and the inventory
/// ([`finish_images`], once both are done).
pub fn write_images_but_memory(tree: &Tree, dir: &Path) -> Result<(), ImagesError> {
    write_images_inner(tree, dir, None, "")
}

/// After [`write_images_but_memory`] and every live process's
/// [`write_memory`] (each of which read back and checked the pages files
/// it wrote, as [`write_images`] checks them): the inventory.
pub fn finish_images(tree: &Tree, dir: &Path, run_id: &str) -> Result<(), ImagesError> {
    write_inventory(tree, dir, run_id)
}

/// The images of one live process of the tree (its shared anonymous
/// objects: page image ids from `shm_pages_id` on, after every process's).
#[allow(clippy::too_many_arguments)]
fn write_task(
    dir: &Path,
    task: &Task,
    shm_pages_id: &mut u32,
    shm_written: &mut std::collections::HashSet<u64>,
    mem: Option<&dyn MemSource>,
    pages_id: u32,
    files: &mut Vec<pb::FileEntry>,
    map_ids: &mut Vec<(String, u32)>,
    fd_images: &mut FdImages,
    filters: &mut Vec<pb::SeccompFilter>,
) -> Result<(), ImagesError> {
    let file_id = push_file;
    // exe first (upstream gives it id 1), then the files of mappings; one
    // entry per path across the tree (a child maps its parent's files)
    let exe_id = match &task.mm.exe {
        Some(x) => {
            let key = map_key(x);
            match map_ids.iter().find(|(p, _)| p == &key) {
                Some(&(_, id)) => id,
                None => {
                    let id = file_id(files, mapped_entry(0, &x.path, 0, 0, x.mode, x.size, &x.build_id));
                    // a deleted executable: the ghost of its mapping
                    if let Some(g) = &x.ghost {
                        map_ghost(dir, fd_images, id, g)?;
                    }
                    map_ids.push((key, id));
                    id
                }
            }
        }
        None => 0,
    };
    for v in &task.mm.vmas {
        if let Some(f) = &v.file {
            let key = map_key(f);
            if !map_ids.iter().any(|(p, _)| p == &key) {
                let e = match f.memfd {
                    Some(ino) => memfd_entry(&mg::MM.file_name(task.pid), &fd_images.memfd_inodes, ino, f.flags, 0)?,
                    None => mapped_entry(0, &f.path, f.flags, 0, f.mode, f.size, &f.build_id),
                };
                let id = file_id(files, e);
                if let Some(g) = &f.ghost {
                    map_ghost(dir, fd_images, id, g)?;
                }
                map_ids.push((key, id));
            }
        }
    }
    let fdinfo = write_fds(dir, task, files, fd_images)?;
    let dir_mode = |m: u32| if m == 0 { 0o40755 } else { m };
    let cwd_id = file_id(files, reg_entry(0, &task.fs.cwd, 0, 0, dir_mode(task.fs.cwd_mode), None));
    let root_id = file_id(files, reg_entry(0, &task.fs.root, 0, 0, dir_mode(task.fs.root_mode), None));
    let pid = task.pid;
    let ids = ids_to_pb(&task.ids);
    write_all(dir, &mg::FDINFO.file_name(ids.files_id), &mg::FDINFO, &fdinfo)?;
    write_all(dir, &mg::FS.file_name(pid), &mg::FS, &[pb::FsEntry { cwd_id, root_id, umask: Some(task.fs.umask) }])?;
    write_all(dir, &mg::IDS.file_name(pid), &mg::IDS, std::slice::from_ref(&ids))?;
    // mm
    let vmas = task
        .mm
        .vmas
        .iter()
        .map(|v| {
            let (status, shmid) = match v.kind {
                VmaKind::Vdso => (VMA_AREA_REGULAR | VMA_AREA_VDSO | VMA_ANON_PRIVATE, 0),
                VmaKind::Vvar => (VMA_AREA_REGULAR | VMA_ANON_PRIVATE | VMA_AREA_VVAR, 0),
                VmaKind::Vsyscall => (VMA_AREA_VSYSCALL | VMA_ANON_PRIVATE, 0),
                VmaKind::Heap => (VMA_AREA_REGULAR | VMA_AREA_HEAP | VMA_ANON_PRIVATE, 0),
                // as upstream 4.2: the status bit alone, flags MAP_SHARED
                VmaKind::Aio => (VMA_AREA_AIORING, 0),
                // as upstream 4.2: regular, anonymous shared and SYSVIPC,
                // the segment's id as shmid
                VmaKind::SysvShm(id) => (VMA_AREA_REGULAR | VMA_ANON_SHARED | VMA_AREA_SYSVIPC, u64::from(id)),
                VmaKind::Anon | VmaKind::Stack => {
                    (VMA_AREA_REGULAR | if v.shared() { VMA_ANON_SHARED } else { VMA_ANON_PRIVATE }, v.shmid)
                }
                VmaKind::File => {
                    let f = v.file.as_ref().expect("file vma");
                    let key = map_key(f);
                    let id = map_ids.iter().find(|(p, _)| p == &key).map(|(_, i)| *i).unwrap_or(0);
                    let memfd = if f.memfd.is_some() { VMA_AREA_MEMFD } else { 0 };
                    (VMA_AREA_REGULAR | memfd | if v.shared() { VMA_FILE_SHARED } else { VMA_FILE_PRIVATE }, u64::from(id))
                }
            };
            pb::VmaEntry {
                start: v.start,
                end: v.end,
                pgoff: v.pgoff,
                shmid,
                prot: v.prot,
                flags: if v.kind == VmaKind::Aio { v.flags & !(libc::MAP_ANONYMOUS as u32) } else { v.flags },
                status,
                fd: -1,
                madv: (v.madv != 0).then_some(v.madv),
                // (an AIO ring: O_RDWR, as upstream 4.2 writes it)
                fdflags: v.file.as_ref().map(|f| f.flags).or((v.kind == VmaKind::Aio).then_some(libc::O_RDWR as u32)).or(
                    matches!(v.kind, VmaKind::SysvShm(_))
                        .then_some(if v.prot & libc::PROT_WRITE as u32 != 0 { libc::O_RDWR as u32 } else { libc::O_RDONLY as u32 }),
                ),
            }
        })
        .collect();
    let mm = &task.mm;
    let mme = pb::MmEntry {
        mm_start_code: mm.start_code, mm_end_code: mm.end_code, mm_start_data: mm.start_data, mm_end_data: mm.end_data,
        mm_start_stack: mm.start_stack, mm_start_brk: mm.start_brk, mm_brk: mm.brk, mm_arg_start: mm.arg_start,
        mm_arg_end: mm.arg_end, mm_env_start: mm.env_start, mm_env_end: mm.env_end, exe_file_id: exe_id,
        mm_saved_auxv: mm.auxv.clone(), vmas, dumpable: Some(mm.dumpable as i32),
        // one per AIO ring: its id is its address; nr_req what io_setup is
        // given to make a ring of that length again
        aios: mm.vmas.iter().filter(|v| v.kind == VmaKind::Aio).map(|v| pb::AioRingEntry { id: v.start, nr_req: crate::restore::aio::nr_req(v.len()), ring_len: v.len() as u32 }).collect(),
        thp_disabled: Some(mm.thp_disabled),
    };
    write_all(dir, &mg::MM.file_name(pid), &mg::MM, &[mme])?;
    // pagemap + pages: private pages in pagemap-PID/pages-1, each shared
    // anonymous object's in pagemap-shmem-SHMID (offsets in the object)
    let (private, shmem) = split_shmem_pages(&mm.vmas, &mm.pages);
    if let Some(mem) = mem {
        write_private_pages(dir, pid, pages_id, &private, mem)?;
    }
    for (shmid, runs) in shmem.iter() {
        // an object several processes map (inherited over fork) is written
        // once, from the first of them (its data is the object's, not the
        // mapping's: the dump checked the others map no part it doesn't)
        if !shm_written.insert(*shmid) {
            continue;
        }
        *shm_pages_id += 1;
        if let Some(mem) = mem {
            write_shmem_pages(dir, *shmid, *shm_pages_id, runs, mem)?;
        }
    }
    // read back what was written, before the dump can report success or
    // kill the source: an image our own restore would refuse is an error now
    // (pages written elsewhere: checked by write_memory)
    if mem.is_some() {
        check_written_pages(dir, pid, &mm.vmas, &shmem)?;
    }
    if !mm.guards.is_empty() {
        write_guards(dir, pid, &mm.guards)?;
    }
    // seccomp.img: every thread's chain, common prefixes shared
    let seccomp_pos: Vec<Option<u32>> = task.threads.iter().map(|t| seccomp_chain(filters, &t.seccomp)).collect();
    // cores
    for (i, t) in task.threads.iter().enumerate() {
        let thread_core = pb::ThreadCoreEntry {
            futex_rla: t.robust_list.0,
            futex_rla_len: t.robust_list.1 as u32,
            sched_nice: Some(t.sched_nice),
            sched_policy: Some(t.sched_policy),
            sched_prio: (t.sched_prio != 0).then_some(t.sched_prio),
            blk_sigset: (i != 0).then_some(t.blocked),
            sas: Some(pb::ThreadSasEntry { ss_sp: t.altstack.sp, ss_size: t.altstack.size, ss_flags: t.altstack.flags }),
            pdeath_sig: (t.pdeath_sig != 0).then_some(t.pdeath_sig),
            signals_p: Some(sigq(&t.pending)),
            creds: Some(creds_to_pb(&t.creds)),
            seccomp_mode: (t.seccomp_mode != 0).then_some(t.seccomp_mode as i32),
            seccomp_filter: seccomp_pos.get(i).copied().flatten(),
            comm: Some(t.comm.clone()),
            blk_sigset_extended: None,
            rseq_entry: t.rseq.map(|r| pb::RseqEntry { rseq_abi_pointer: r.ptr, rseq_abi_size: r.len, signature: r.sig, rseq_cs_pointer: None }),
            cg_set: Some(task.cg_set.max(1)),
            rs_cpu_affinity: t.cpus.clone(),
            rs_ioprio: (t.ioprio != 0).then_some(t.ioprio),
        };
        let tc = (i == 0).then(|| pb::TaskCoreEntry {
            task_state: if task.stop_signo.is_some() { TASK_STOPPED } else { TASK_ALIVE },
            exit_code: 0,
            personality: task.personality,
            flags: task.flags,
            blk_sigset: t.blocked,
            comm: task.comm.clone(),
            timers: Some(pb::TaskTimersEntry {
                real: itimer(&task.itimers[0]),
                virt: itimer(&task.itimers[1]),
                prof: itimer(&task.itimers[2]),
                posix: task
                    .posix_timers
                    .iter()
                    .map(|p| pb::PosixTimerEntry {
                        it_id: p.id as u32, clock_id: p.clock as u32, si_signo: p.signo as u32, it_sigev_notify: p.notify as u32,
                        sival_ptr: p.sigval, overrun: p.overrun as u32, isec: p.interval.0, insec: p.interval.1,
                        vsec: p.value.0, vnsec: p.value.1, notify_thread_id: (p.notify_tid != 0).then_some(p.notify_tid),
                    })
                    .collect(),
            }),
            rlimits: Some(pb::TaskRlimitsEntry { rlimits: task.rlimits.iter().map(|&(cur, max)| pb::RlimitEntry { cur, max }).collect() }),
            cg_set: None,
            signals_s: Some(sigq(&task.shared_pending)),
            old_seccomp_mode: None,
            old_seccomp_filter: None,
            loginuid: Some(task.loginuid),
            oom_score_adj: Some(task.oom_score_adj),
            sigactions: task
                .sigactions
                .iter()
                .enumerate()
                // upstream has no entries for SIGKILL and SIGSTOP
                .filter(|(i, _)| *i + 1 != libc::SIGKILL as usize && *i + 1 != libc::SIGSTOP as usize)
                .map(|(_, a)| a)
                .map(|a| pb::SaEntry { sigaction: a.handler, flags: a.flags, restorer: a.restorer, mask: a.mask, compat_sigaction: Some(false), mask_extended: None })
                .collect(),
            child_subreaper: Some(task.child_subreaper),
            blk_sigset_extended: None,
            stop_signo: task.stop_signo,
            membarrier_registration_mask: (task.membarrier != 0).then_some(task.membarrier),
        });
        let core = pb::CoreEntry {
            mtype: MTYPE_X86_64,
            thread_info: Some(pb::ThreadInfoX86 {
                clear_tid_addr: t.clear_tid,
                gpregs: regs_to_pb(&t.regs),
                fpregs: fpregs_to_pb(&t.xsave),
                tls: t.tls.iter().map(desc_to_pb).collect(),
            }),
            tc,
            thread_core: Some(thread_core),
            ..Default::default()
        };
        write_all(dir, &mg::CORE.file_name(t.tid), &mg::CORE, &[core])?;
    }
    Ok(())
}

/// Ask the disk for every image of `dir` at once, before any is parsed:
/// the small ones first, then the start of the pages files (the kernel
/// caps POSIX_FADV_WILLNEED at the read-ahead window, 8 MiB here, 16 with
/// the sequential advice) unless they are big enough for the restore to
/// read them with O_DIRECT (`uffd::DIRECT_FILL_MIN`), which would read
/// that start again. The small reads then queue together instead of
/// one by one as each image is parsed (cold 64 MiB restore: the images
/// read in 5-6 ms before the fork instead of 19-25 ms). Advice only:
/// errors are ignored.
fn prefetch(dir: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let mut imgs: Vec<(bool, u64, std::path::PathBuf)> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let name = name.to_str()?;
            if !name.ends_with(".img") {
                return None;
            }
            let len = e.metadata().ok().filter(|m| m.is_file())?.len();
            Some((name.starts_with("pages-"), len, e.path()))
        })
        .collect();
    imgs.sort();
    let pages_total: u64 = imgs.iter().filter(|i| i.0).map(|i| i.1).sum();
    let direct = pages_total >= crate::sys::uffd::DIRECT_FILL_MIN as u64;
    // a tree's pages files are read ahead once it is forked, in the order
    // they are filled (restore/readahead.rs): asked for here, all at once
    // and in name order, they held up what the forked children read
    let tree = imgs.iter().filter(|i| i.2.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("mm-"))).count() > 1;
    for (pages, len, path) in imgs {
        if pages && (direct || tree) {
            continue;
        }
        // non-blocking: a file swapped for a FIFO since the listing must
        // not hang the restore here
        let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&path);
        if let Ok(f) = f {
            if pages {
                let _ = crate::sys::mmap::advise_sequential(&f);
            }
            let _ = crate::sys::mmap::advise_willneed(&f, len);
        }
    }
}

/// Read an image set into the model; the pages come back as a [`PagesImage`].
pub fn read_images(dir: &Path) -> Result<(Tree, Vec<PagesImage>), ImagesError> {
    // the disk asked for every image on a thread of its own while the
    // images are parsed (on a warm cache it is only the cost of opening
    // each image once more: not on the way of the parsing)
    let prefetcher = {
        let dir = dir.to_path_buf();
        std::thread::Builder::new().name("prefetch".into()).spawn(move || prefetch(&dir)).ok()
    };
    let res = read_images_now(dir);
    if let Some(h) = prefetcher {
        let _ = h.join();
    }
    res
}

/// Read the processes of the image set, `one(k)` for process k, in order;
/// on two threads when there are many of them (a tree of 100 small
/// processes: 7 images each to open and parse) and two CPUs to run them.
fn read_each<T: Send>(n: usize, one: impl Fn(usize) -> Result<T, ImagesError> + Sync) -> Vec<Result<T, ImagesError>> {
    let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
    if n < 8 || cpus < 2 {
        return (0..n).map(one).collect();
    }
    std::thread::scope(|s| {
        let odd = s.spawn(|| (1..n).step_by(2).map(&one).collect::<Vec<_>>());
        let even: Vec<_> = (0..n).step_by(2).map(&one).collect();
        let odd = odd.join().unwrap_or_else(|_| (1..n).step_by(2).map(|k| Err(bad("pstree.img", format!("process {k}: image reader thread panicked")))).collect());
        let mut out = Vec::with_capacity(n);
        let (mut e, mut o) = (even.into_iter(), odd.into_iter());
        for k in 0..n {
            out.extend(if k % 2 == 0 { e.next() } else { o.next() });
        }
        out
    })
}

fn read_images_now(dir: &Path) -> Result<(Tree, Vec<PagesImage>), ImagesError> {
    let inv: pb::InventoryEntry = read_one(dir, &mg::INVENTORY.file_name(""), &mg::INVENTORY)?;
    if inv.img_version != 2 {
        return Err(bad("inventory.img", format!("image version {} is not supported (want 2)", inv.img_version)));
    }
    let ps: Vec<pb::PstreeEntry> = read_all(dir, &mg::PSTREE.file_name(""), &mg::PSTREE)?;
    // (a zombie's one thread id is whatever upstream's memory held: its
    // core says it is one, read here only for a thread list that is not
    // the process's own)
    let dead = |p: &pb::PstreeEntry| {
        p.threads.len() == 1
            && p.threads[0] != p.pid
            && read_one::<pb::CoreEntry>(dir, &mg::CORE.file_name(p.pid), &mg::CORE).is_ok_and(|c| c.tc.is_some_and(|tc| tc.task_state == TASK_DEAD))
    };
    let shape: Vec<crate::validate::PstreeShape> =
        ps.iter().map(|p| crate::validate::PstreeShape { pid: p.pid, ppid: p.ppid, pgid: p.pgid, sid: p.sid, threads: p.threads.clone(), dead: dead(p) }).collect();
    crate::validate::pstree(&mg::PSTREE.file_name(""), &shape)?;
    let files: Vec<pb::FileEntry> = read_all(dir, &mg::FILES.file_name(""), &mg::FILES)?;
    let seccomp_img: Vec<pb::SeccompFilter> = if dir.join(mg::SECCOMP.file_name("")).exists() {
        read_all::<pb::SeccompEntry>(dir, &mg::SECCOMP.file_name(""), &mg::SECCOMP)?.into_iter().flat_map(|e| e.seccomp_filters).collect()
    } else {
        Vec::new()
    };
    let root_ids = inv.root_ids.as_ref().map(ids_from_pb).unwrap_or_default();
    let memfds = read_memfds(dir)?;
    let mut tasks = Vec::with_capacity(ps.len());
    let mut mems = Vec::with_capacity(ps.len());
    let one = |k: usize| -> Result<(Task, PagesImage), ImagesError> {
        let p = &ps[k];
        let name = mg::CORE.file_name(p.pid);
        // a zombie (TASK_DEAD) has only its core: state, exit status, comm
        let core: pb::CoreEntry = read_one(dir, &name, &mg::CORE)?;
        if let Some(tc) = core.tc.as_ref().filter(|tc| tc.task_state == TASK_DEAD) {
            if k == 0 {
                return Err(bad(&name, "the root of the tree is a zombie"));
            }
            let task = Task {
                pid: p.pid as i32, ppid: p.ppid as i32, pgid: p.pgid as i32, sid: p.sid as i32,
                comm: tc.comm.clone(), zombie_exit: Some(tc.exit_code), ..Default::default()
            };
            return Ok((task, PagesImage::default()));
        }
        read_task(dir, p, &files, &seccomp_img, &memfds)
    };
    // (the first error in pstree order, as when read one by one)
    for r in read_each(ps.len(), one) {
        let (task, mem) = r?;
        tasks.push(task);
        mems.push(mem);
    }
    let task = &tasks[0];
    // timens-<id>.img when the task had a time namespace of its own (as
    // upstream names it), else timens-0.img
    let own = task.ids.time_ns != 0 && root_ids.time_ns != 0 && task.ids.time_ns != root_ids.time_ns;
    let tn_name = Some(mg::TIMENS.file_name(task.ids.time_ns))
        .filter(|n| own && dir.join(n).exists())
        .unwrap_or_else(|| mg::TIMENS.file_name(0));
    let timens = match read_all::<pb::TimensEntry>(dir, &tn_name, &mg::TIMENS) {
        Ok(v) => v.first().map(|e| TimeNs { monotonic: (e.monotonic.tv_sec, e.monotonic.tv_nsec), boottime: (e.boottime.tv_sec, e.boottime.tv_nsec) }),
        Err(_) if !dir.join(&tn_name).exists() => None,
        Err(e) => return Err(e.into()),
    };
    // the root's own uts and ipc namespaces (ids other than root_ids')
    let (uts, ipc) = crate::utsipc::read_images(dir, &task.ids, &root_ids)?;
    crate::utsipc::check_attachments(tasks.iter().map(|t| (t.pid, t)), ipc.as_ref()).map_err(|(p, w)| bad(&mg::MM.file_name(p), w))?;
    let mnt = crate::mntns::read_images(dir, &task.ids, &root_ids)?;
    let net = crate::netns::read_images(dir, &task.ids, &root_ids)?;
    let cgroups = crate::cgroups::read_image(dir)?;
    for t in tasks.iter().filter(|t| t.zombie_exit.is_none() && t.cg_set > 1) {
        if !cgroups.as_ref().is_some_and(|c| c.sets.iter().any(|s| s.id == t.cg_set)) {
            return Err(bad(&mg::CORE.file_name(t.pid), format!("thread_core.cg_set {} is not a set of cgroup.img", t.cg_set)));
        }
    }
    let tree = Tree { root_owns_pid_ns: ps[0].pid == 1, tasks, root_ids, timens, memfds: memfds.into_iter().map(|(_, m)| m).collect(), uts, ipc, net, mnt, cgroups };
    Ok((tree, mems))
}

/// The ghost a file entry `id` (named `name`) of a mapping or an exe is
/// remapped to in remap-fpath.img, read once per remap (`cache`).
fn mapped_ghost(
    dir: &Path,
    remaps: &[pb::RemapFilePathEntry],
    cache: &mut HashMap<u32, std::sync::Arc<Ghost>>,
    id: u32,
    name: &str,
) -> Result<Option<std::sync::Arc<Ghost>>, ImagesError> {
    match remaps.iter().find(|m| m.orig_id == id) {
        None => Ok(None),
        Some(m) if m.remap_type.unwrap_or(0) == pb::RemapType::Ghost as i32 => Ok(Some(match cache.get(&m.remap_id) {
            Some(g) => g.clone(),
            None => {
                let g = std::sync::Arc::new(crate::kinds::ghost::read_ghost(dir, m.remap_id)?);
                cache.insert(m.remap_id, g.clone());
                g
            }
        })),
        Some(m) => Err(bad("remap-fpath.img", format!("mapping of {name}: remap type {} is not supported yet", m.remap_type.unwrap_or(0)))),
    }
}

/// One live process of the image set: its core, ids, fds, fs, mm and
/// pagemap images, and its pages (its own, and those of the shared
/// anonymous memory it maps, at its mappings' addresses).
fn read_task(
    dir: &Path,
    p: &pb::PstreeEntry,
    files: &[pb::FileEntry],
    seccomp_img: &[pb::SeccompFilter],
    memfds: &[(u32, Memfd)],
) -> Result<(Task, PagesImage), ImagesError> {
    let pid = p.pid as i32;
    let file = |id: u32| files.iter().find(|f| f.id == id);
    let reg = |id: u32, what: &str| -> Result<&pb::RegFileEntry, ImagesError> {
        file(id).and_then(|f| f.reg.as_ref()).ok_or_else(|| bad("files.img", format!("{what}: no regular file with id {id}")))
    };
    let ids: pb::TaskKobjIdsEntry = read_one(dir, &mg::IDS.file_name(pid), &mg::IDS)?;
    let fdinfo: Vec<pb::FdinfoEntry> = read_all(dir, &mg::FDINFO.file_name(ids.files_id), &mg::FDINFO)?;
    let fds = read_fds(dir, files, &fdinfo)?;
    let fse: pb::FsEntry = read_one(dir, &mg::FS.file_name(pid), &mg::FS)?;
    let (cwd, root) = (reg(fse.cwd_id, "cwd")?, reg(fse.root_id, "root")?);
    let fs = Fs {
        cwd: cwd.name.clone(),
        root: root.name.clone(),
        umask: fse.umask.unwrap_or(0o22),
        cwd_mode: cwd.mode.unwrap_or(0),
        root_mode: root.mode.unwrap_or(0),
    };
    let mme: pb::MmEntry = read_one(dir, &mg::MM.file_name(pid), &mg::MM)?;
    // files unlinked while mapped: a GHOST remap of their files.img entry
    let remaps: Vec<pb::RemapFilePathEntry> = if dir.join(mg::REMAP_FPATH.file_name("")).exists() {
        read_all(dir, &mg::REMAP_FPATH.file_name(""), &mg::REMAP_FPATH)?
    } else {
        Vec::new()
    };
    let mut map_ghosts: HashMap<u32, std::sync::Arc<Ghost>> = HashMap::new();
    let mut vmas = Vec::new();
    for (i, v) in mme.vmas.iter().enumerate() {
        if v.start >= v.end || v.start % 4096 != 0 || v.end % 4096 != 0 {
            return Err(bad(&mg::MM.file_name(pid), format!("vma {i}: bad range {:#x}-{:#x}", v.start, v.end)));
        }
        // the offset (in a file or a shared memory object) of the whole
        // mapping must be a valid, page-aligned off_t
        if v.pgoff % 4096 != 0 || v.pgoff.checked_add(v.end - v.start).is_none_or(|e| e > i64::MAX as u64) {
            return Err(bad(&mg::MM.file_name(pid), format!("vma {i} at {:#x}: bad pgoff {:#x} for {} bytes", v.start, v.pgoff, v.end - v.start)));
        }
        let s = v.status;
        let kind = if s & VMA_AREA_VDSO != 0 {
            VmaKind::Vdso
        } else if s & VMA_AREA_VVAR != 0 {
            VmaKind::Vvar
        } else if s & VMA_AREA_VSYSCALL != 0 {
            VmaKind::Vsyscall
        } else if s & VMA_AREA_HEAP != 0 {
            VmaKind::Heap
        } else if s & VMA_AREA_AIORING != 0 {
            crate::restore::aio::check_vma(i, v.start, v.end, v.flags, &mme.aios).map_err(|w| bad(&mg::MM.file_name(pid), w))?;
            VmaKind::Aio
        } else if s & VMA_AREA_SYSVIPC != 0 {
            // (the segment itself is checked against the ipc namespace's
            // images: utsipc::check_attachments)
            let id = u32::try_from(v.shmid).ok().filter(|id| *id <= i32::MAX as u32);
            let id = id.ok_or_else(|| bad(&mg::MM.file_name(pid), format!("vma {i} at {:#x}: shmid {}: not a SysV shm id", v.start, v.shmid)))?;
            if v.flags & libc::MAP_SHARED as u32 == 0 {
                return Err(bad(&mg::MM.file_name(pid), format!("vma {i} at {:#x}: a SysV shm attachment that is not MAP_SHARED (flags {:#x})", v.start, v.flags)));
            }
            VmaKind::SysvShm(id)
        } else if s & (VMA_FILE_PRIVATE | VMA_FILE_SHARED) != 0 {
            VmaKind::File
        } else if s & (VMA_ANON_PRIVATE | VMA_ANON_SHARED) != 0 {
            VmaKind::Anon
        } else {
            return Err(bad(&mg::MM.file_name(pid), format!("vma {i} at {:#x}: status {s:#x} is not supported yet", v.start)));
        };
        let memfd_map = u32::try_from(v.shmid).ok().and_then(file).and_then(|f| f.memfd.as_ref());
        let mut kind = kind;
        let mut flags = v.flags;
        let mut anon_shmid = 0;
        let file = if kind == VmaKind::File && (s & VMA_AREA_MEMFD != 0 || memfd_map.is_some()) {
            let m = memfd_map.ok_or_else(|| bad(&mg::MM.file_name(pid), format!("vma {i} at {:#x}: a memfd mapping whose file {} is not a memfd", v.start, v.shmid)))?;
            let (_, inode) = memfds.iter().find(|(id, _)| *id == m.inode_id).ok_or_else(|| {
                bad(&mg::MM.file_name(pid), format!("vma {i} at {:#x}: memfd {} names inode {}, which memfd.img does not have", v.start, v.shmid, m.inode_id))
            })?;
            if inode.name == "/dev/zero" && v.flags & libc::MAP_SHARED as u32 != 0 {
                // upstream 4.2 writes MAP_SHARED anonymous memory (the
                // kernel's "/dev/zero (deleted)" shmem object) as a memfd
                // of that name: it is shared anonymous memory again, its
                // pages (pagemap-shmem-<shmid>) at this mapping
                kind = VmaKind::Anon;
                flags |= libc::MAP_ANONYMOUS as u32;
                anon_shmid = inode.ino;
            }
            if inode.name == "/anon_hugepage" {
                // upstream 4.2's form of MAP_SHARED|MAP_HUGETLB anonymous
                // memory (its flags keep MAP_HUGETLB and the page size)
                if v.flags & libc::MAP_SHARED as u32 == 0 || v.flags & libc::MAP_HUGETLB as u32 == 0 {
                    return Err(bad(&mg::MM.file_name(pid), format!("vma {i} at {:#x}: a mapping of hugetlb memory {} that is not MAP_SHARED|MAP_HUGETLB (flags {:#x})", v.start, inode.ino, v.flags)));
                }
                kind = VmaKind::Anon;
                flags |= libc::MAP_ANONYMOUS as u32;
                anon_shmid = inode.ino;
            }
            (kind == VmaKind::File).then(|| MapFile {
                path: format!("/memfd:{} (deleted)", inode.name),
                flags: v.fdflags.unwrap_or(m.flags),
                size: None,
                mode: 0,
                build_id: Vec::new(),
                ghost: None,
                memfd: Some(inode.ino),
            })
        } else if kind == VmaKind::File {
            let r = reg(v.shmid as u32, "file mapping")?;
            let ghost = mapped_ghost(dir, &remaps, &mut map_ghosts, v.shmid as u32, &r.name)?;
            Some(MapFile {
                path: r.name.clone(),
                flags: v.fdflags.unwrap_or(0),
                size: r.size,
                mode: r.mode.unwrap_or(0),
                build_id: r.build_id.clone(),
                ghost,
                memfd: None,
            })
        } else {
            None
        };
        let shmid = if anon_shmid != 0 {
            anon_shmid
        } else if kind == VmaKind::Anon && s & VMA_ANON_SHARED != 0 {
            if v.shmid == 0 {
                return Err(bad(&mg::MM.file_name(pid), format!("vma {i} at {:#x}: shared anonymous memory without a shmid", v.start)));
            }
            v.shmid
        } else {
            0
        };
        if kind == VmaKind::Aio {
            flags |= libc::MAP_ANONYMOUS as u32;
        }
        vmas.push(Vma { start: v.start, end: v.end, pgoff: v.pgoff, prot: v.prot, flags, kind, madv: v.madv.unwrap_or(0), file, shmid });
    }
    crate::restore::aio::check_entries(&mme.aios, &vmas).map_err(|w| bad(&mg::MM.file_name(pid), w))?;
    let exe = reg(mme.exe_file_id, "exe")?;
    // (an executable deleted while it ran: the ghost of its mapping)
    let exe_ghost = mapped_ghost(dir, &remaps, &mut map_ghosts, mme.exe_file_id, &exe.name)?;
    // pages
    let pm_name = images_proto::pages::pagemap_name(pid);
    let rd = PagemapReader::open(dir, &pm_name)?;
    let pages_id = rd.pages_id();
    let mut pages = Vec::new();
    let runs = rd.runs()?;
    for r in &runs {
        if r.flags & PE_PRESENT == 0 {
            return Err(bad(&pm_name, format!("run at {:#x} is not in this image (parent/lazy images are not supported yet)", r.vaddr)));
        }
        pages.push(PageRun { vaddr: r.vaddr, nr_pages: r.nr_pages, lazy: r.flags & PE_LAZY != 0 });
    }
    let vma_ranges: Vec<(u64, u64)> = mme.vmas.iter().map(|v| (v.start, v.end)).collect();
    let run_ranges: Vec<(u64, u64)> = pages.iter().map(|r| (r.vaddr, r.nr_pages)).collect();
    crate::validate::mm_layout(&mg::MM.file_name(pid), &pm_name, &vma_ranges, &run_ranges)?;
    let mut src = PagesImage::default();
    src.add(&dir.join(images_proto::pages::pages_name(pages_id)), runs.iter().map(|r| (r.vaddr, r.nr_pages, r.offset)))?;
    // shared anonymous objects: their pages at every mapping of them
    let mut shmids: Vec<u64> = vmas.iter().filter(|v| v.shmid != 0).map(|v| v.shmid).collect();
    shmids.sort_unstable();
    shmids.dedup();
    for shmid in shmids {
        let name = images_proto::pages::pagemap_name(format!("shmem-{shmid}"));
        if !dir.join(&name).exists() {
            continue; // never written to: no pages
        }
        let rd = PagemapReader::open(dir, &name)?;
        let id = rd.pages_id();
        let runs = rd.runs()?;
        if let Some(r) = runs.iter().find(|r| r.flags & PE_PRESENT == 0) {
            return Err(bad(&name, format!("run at offset {:#x} is not in this image (parent images are not supported yet)", r.vaddr)));
        }
        let placed = place_shmem_runs(&vmas, shmid, &runs);
        pages.extend(placed.iter().map(|&(vaddr, nr_pages, _)| PageRun { vaddr, nr_pages, lazy: false }));
        src.add(&dir.join(images_proto::pages::pages_name(id)), placed)?;
    }
    pages.sort_by_key(|r| r.vaddr);
    // in address order (checked disjoint above): restore looks VMAs up by address
    vmas.sort_by_key(|v| v.start);
    let guards = read_guards(dir, pid, &vma_ranges, &pages)?;
    let mm = Mm {
        vmas,
        start_code: mme.mm_start_code, end_code: mme.mm_end_code, start_data: mme.mm_start_data, end_data: mme.mm_end_data,
        start_stack: mme.mm_start_stack, start_brk: mme.mm_start_brk, brk: mme.mm_brk, arg_start: mme.mm_arg_start,
        arg_end: mme.mm_arg_end, env_start: mme.mm_env_start, env_end: mme.mm_env_end, auxv: mme.mm_saved_auxv.clone(),
        exe: Some(MapFile {
            memfd: None,
            path: exe.name.clone(),
            flags: 0,
            size: exe.size,
            mode: exe.mode.unwrap_or(0),
            build_id: exe.build_id.clone(),
            ghost: exe_ghost,
        }),
        dumpable: mme.dumpable.unwrap_or(1) as u32,
        thp_disabled: mme.thp_disabled.unwrap_or(false),
        pages,
        guards,
    };
    let locks = read_locks(dir, pid, &fds)?;
    let mut task = Task { pid, ppid: p.ppid as i32, pgid: p.pgid as i32, sid: p.sid as i32, mm, fds, fs, locks, ..Default::default() };
    for (i, &tid) in p.threads.iter().enumerate() {
        let name = mg::CORE.file_name(tid);
        let core: pb::CoreEntry = read_one(dir, &name, &mg::CORE)?;
        if core.mtype != MTYPE_X86_64 {
            return Err(bad(&name, format!("machine type {} is not x86_64", core.mtype)));
        }
        let ti = core.thread_info.as_ref().ok_or_else(|| bad(&name, "no thread_info"))?;
        // XSAVE components this CPU lacks are dropped by fpregs_from_pb;
        // whether that may happen is decided before (cpuinfo::check_threads)
        let tcore = core.thread_core.clone().unwrap_or_default();
        // its cgroup set (per thread since 4.x; tc's in older images)
        let cg = tcore.cg_set.or_else(|| core.tc.as_ref().and_then(|t| t.cg_set)).unwrap_or(0);
        if i == 0 {
            task.cg_set = cg;
        } else if cg > 1 && cg != task.cg_set {
            return Err(bad(&name, format!("thread_core.cg_set {cg}: thread {tid} is in other cgroups than its process (set {}): not supported", task.cg_set)));
        }
        if i == 0 {
            let tc = core.tc.as_ref().ok_or_else(|| bad(&name, "main thread without tc"))?;
            match tc.task_state {
                TASK_ALIVE => {}
                // upstream stops it with SIGSTOP when no signal was recorded
                TASK_STOPPED => {
                    let sig = tc.stop_signo.unwrap_or(libc::SIGSTOP as u32);
                    if !(1..=64).contains(&sig) {
                        return Err(bad(&name, format!("tc.stop_signo {sig} is not a signal")));
                    }
                    task.stop_signo = Some(sig);
                }
                s => return Err(bad(&name, format!("task state {s} is not supported yet"))),
            }
            task.comm = tc.comm.clone();
            task.personality = tc.personality;
            task.flags = tc.flags;
            task.sigactions = sigactions_from(&tc.sigactions);
            if let Some(t) = &tc.timers {
                task.itimers = [itimer_from(&t.real), itimer_from(&t.virt), itimer_from(&t.prof)];
                task.posix_timers = t
                    .posix
                    .iter()
                    .map(|p| PosixTimer {
                        id: p.it_id as i32, clock: p.clock_id as i32, signo: p.si_signo as i32, notify: p.it_sigev_notify as i32,
                        notify_tid: p.notify_thread_id.unwrap_or(0), sigval: p.sival_ptr, overrun: p.overrun as i32,
                        interval: (p.isec, p.insec), value: (p.vsec, p.vnsec),
                    })
                    .collect();
            }
            task.rlimits = tc.rlimits.as_ref().map(|r| r.rlimits.iter().map(|l| (l.cur, l.max)).collect()).unwrap_or_default();
            task.shared_pending = sigq_from(&tc.signals_s);
            task.child_subreaper = tc.child_subreaper.unwrap_or(false);
            task.loginuid = tc.loginuid.unwrap_or(u32::MAX);
            task.oom_score_adj = tc.oom_score_adj.unwrap_or(0);
            task.membarrier = tc.membarrier_registration_mask.unwrap_or(0);
        }
        let blocked = match (i, &core.tc) {
            (0, Some(tc)) => tcore.blk_sigset.unwrap_or(tc.blk_sigset),
            _ => tcore.blk_sigset.unwrap_or(0),
        };
        task.threads.push(Thread {
            tid: tid as i32,
            regs: regs_from_pb(&ti.gpregs),
            xsave: fpregs_from_pb(&ti.fpregs),
            tls: ti.tls.iter().map(desc_from_pb).collect(),
            rseq: tcore.rseq_entry.as_ref().map(|r| Rseq { ptr: r.rseq_abi_pointer, len: r.rseq_abi_size, sig: r.signature }),
            altstack: tcore.sas.as_ref().map(|s| AltStack { sp: s.ss_sp, size: s.ss_size, flags: s.ss_flags }).unwrap_or(AltStack { sp: 0, size: 0, flags: libc::SS_DISABLE as u32 }),
            robust_list: (tcore.futex_rla, u64::from(tcore.futex_rla_len)),
            clear_tid: ti.clear_tid_addr,
            blocked,
            pending: sigq_from(&tcore.signals_p),
            comm: tcore.comm.clone().unwrap_or_else(|| task.comm.clone()),
            creds: tcore.creds.as_ref().map(creds_from_pb).unwrap_or_default(),
            sched_nice: tcore.sched_nice.unwrap_or(0),
            sched_policy: tcore.sched_policy.unwrap_or(0),
            sched_prio: tcore.sched_prio.unwrap_or(0),
            cpus: {
                if tcore.rs_cpu_affinity.len() > 16 {
                    return Err(bad(&name, format!("thread {tid}: rs_cpu_affinity: {} words, past the 1024 CPUs restore sets", tcore.rs_cpu_affinity.len())));
                }
                tcore.rs_cpu_affinity.clone()
            },
            ioprio: match tcore.rs_ioprio.unwrap_or(0) {
                // class (none, real time, best effort, idle) and a level below 8
                p if p >> 13 <= 3 && p & 0x1fff < 8 => p,
                p => return Err(bad(&name, format!("thread {tid}: rs_ioprio: {p:#x} is no I/O priority (class {} level {})", p >> 13, p & 0x1fff))),
            },
            pdeath_sig: tcore.pdeath_sig.unwrap_or(0),
            seccomp_mode: tcore.seccomp_mode.unwrap_or(0) as u32,
            seccomp: match tcore.seccomp_filter {
                Some(pos) => seccomp_from(&name, seccomp_img, pos)?,
                None => Vec::new(),
            },
        });
    }
    task.ids = ids_from_pb(&ids);
    Ok((task, src))
}
