//! The uts and ipc namespaces a tree's root owns (a container's), all
//! three halves: dump ([`collect`]: a thread of the engine enters them
//! with setns(2) and reads uname(2), the ipc sysctls and every SysV
//! object, as any process in them would), images ([`write_images`],
//! [`read_images`]: upstream CRIU 4.2's utsns-ID.img, ipcns-var-ID.img,
//! ipcns-shm-ID.img with the contents in pagemap-shmem-SHMID.img +
//! pages-N.img, ipcns-sem-ID.img, ipcns-msg-ID.img; ID is the task's
//! uts/ipc namespace id) and restore ([`enter`]: the tree's root, before
//! it forks the others, unshares both and makes their state again).
//!
//! A segment a process keeps attached is a `VmaKind::SysvShm` mapping,
//! attached again by restore (`restore::space`); [`check_attachments`]
//! refuses partial ones. Refused by name too: POSIX message queues in the
//! namespace's mqueue file system, a shm segment marked for removal while
//! attached, SHM_LOCK'ed segments, a sysctl a restore can't write.

use crate::images_io::field_error as bad;
use crate::images_io::ImagesError;
use crate::model::{IpcDesc, IpcMsgQueue, IpcNs, IpcSem, IpcShm, IpcVar, KobjIds, Tree, UtsNs};
use crate::sys::sysv;
use crate::sys::Pid;
use images_proto::image::{read_all, write_all, ImageReader, ImageWriter};
use images_proto::magic as mg;
use images_proto::pages::{PagemapReader, PagesFile, PagesWriter, PAGE_SIZE};
use images_proto::pb;
use std::os::fd::AsFd;
use std::path::Path;

/// __NEW_UTS_LEN: the longest hostname or domain name the kernel keeps.
pub const UTS_LEN: usize = 64;
/// The most SysV shared memory (all segments together) a dump carries or
/// a restore makes: the contents are held in memory on the way.
pub const SHM_TOTAL_MAX: u64 = 1 << 30;
/// SEMMSL's upper bound (linux/sem.h): semaphores per set.
pub const SEMMSL_MAX: u32 = 32000;
/// Bytes of one SysV message at most (the kernel's msgmax is an int;
/// a restore is bounded by the namespace's msgmax too).
pub const MSG_MAX: u32 = 1 << 24;
/// Messages per queue at most (each takes at least one byte of qbytes).
pub const MSGS_MAX: u32 = 1 << 20;

/// Read the root's namespaces (`uts`/`ipc`: which ones it owns) from
/// inside them: a thread of the engine setns(2)'s into them, so uname(2),
/// /proc/sys/kernel/* and the SysV calls answer for them.
pub fn collect(pid: Pid, uts: bool, ipc: bool) -> Result<(Option<UtsNs>, Option<IpcNs>), String> {
    if !uts && !ipc {
        return Ok((None, None));
    }
    let open = |kind: &str| std::fs::File::open(format!("/proc/{pid}/ns/{kind}")).map_err(|e| format!("opening its {kind} namespace: {e}"));
    let uts_fd = if uts { Some(open("uts")?) } else { None };
    let ipc_fd = if ipc { Some(open("ipc")?) } else { None };
    std::thread::scope(|s| {
        s.spawn(|| -> Result<(Option<UtsNs>, Option<IpcNs>), String> {
            let u = match &uts_fd {
                None => None,
                Some(f) => {
                    crate::sys::ns::setns(f.as_fd(), libc::CLONE_NEWUTS).map_err(|e| format!("entering its uts namespace: {e}"))?;
                    let (n, d) = sysv::uts_names().map_err(|e| format!("uname in its uts namespace: {e}"))?;
                    let s = |b: Vec<u8>, what: &str| String::from_utf8(b).map_err(|_| format!("its {what} is not UTF-8: not supported"));
                    Some(UtsNs { nodename: s(n, "hostname")?, domainname: s(d, "domain name")? })
                }
            };
            let i = match &ipc_fd {
                None => None,
                Some(f) => {
                    crate::sys::ns::setns(f.as_fd(), libc::CLONE_NEWIPC).map_err(|e| format!("entering its ipc namespace: {e}"))?;
                    Some(collect_ipc()?)
                }
            };
            Ok((u, i))
        })
        .join()
        .map_err(|_| "the thread reading its namespaces panicked".to_string())?
    })
}

fn sysctl(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).map_err(|e| format!("reading {path}: {e}"))
}

fn sysctl_num<T: std::str::FromStr>(path: &str) -> Result<T, String> {
    let s = sysctl(path)?;
    s.parse().map_err(|_| format!("{path}: {s:?} is not a number"))
}

/// Sysctl files of the ipc variables (read at dump, written at restore).
const K: &str = "/proc/sys/kernel";
const MQ: &str = "/proc/sys/fs/mqueue";

fn read_var() -> Result<IpcVar, String> {
    let sem = sysctl(&format!("{K}/sem"))?;
    let sv: Vec<u32> = sem.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    let sem_ctls: [u32; 4] = sv.try_into().map_err(|_| format!("{K}/sem: {sem:?} is not four numbers"))?;
    let opt = |p: String| if Path::new(&p).exists() { sysctl_num(&p).map(Some) } else { Ok(None) };
    Ok(IpcVar {
        sem_ctls,
        msg_ctlmax: sysctl_num(&format!("{K}/msgmax"))?,
        msg_ctlmnb: sysctl_num(&format!("{K}/msgmnb"))?,
        msg_ctlmni: sysctl_num(&format!("{K}/msgmni"))?,
        auto_msgmni: opt(format!("{K}/auto_msgmni"))?.unwrap_or(0),
        shm_ctlmax: sysctl_num(&format!("{K}/shmmax"))?,
        shm_ctlall: sysctl_num(&format!("{K}/shmall"))?,
        shm_ctlmni: sysctl_num(&format!("{K}/shmmni"))?,
        shm_rmid_forced: sysctl_num(&format!("{K}/shm_rmid_forced"))?,
        mq_queues_max: sysctl_num(&format!("{MQ}/queues_max"))?,
        mq_msg_max: sysctl_num(&format!("{MQ}/msg_max"))?,
        mq_msgsize_max: sysctl_num(&format!("{MQ}/msgsize_max"))?,
        mq_msg_default: opt(format!("{MQ}/msg_default"))?,
        mq_msgsize_default: opt(format!("{MQ}/msgsize_default"))?,
    })
}

fn desc(id: i32, p: &sysv::Perm) -> IpcDesc {
    IpcDesc { key: p.key, uid: p.uid, gid: p.gid, cuid: p.cuid, cgid: p.cgid, mode: p.mode & 0o777, id: id as u32 }
}

/// In a thread that has entered the ipc namespace.
fn collect_ipc() -> Result<IpcNs, String> {
    let var = read_var()?;
    // POSIX message queues live in the namespace's mqueue file system:
    // a mount of it attached nowhere lists them
    let mq = sysv::mqueue_root().map_err(|e| format!("a mount of its mqueue file system (to list POSIX message queues): {e}"))?;
    use std::os::fd::AsRawFd;
    let names: Vec<String> = std::fs::read_dir(format!("/proc/thread-self/fd/{}", mq.as_raw_fd()))
        .map_err(|e| format!("listing its POSIX message queues: {e}"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if !names.is_empty() {
        return Err(format!("its ipc namespace holds POSIX message queues (/{}): not supported yet", names.join(", /")));
    }
    let mut ns = IpcNs { var, ..Default::default() };
    let mut total = 0u64;
    for (id, p, size, nattch) in sysv::shm_list().map_err(|e| format!("listing SysV shared memory: {e}"))? {
        if p.mode & sysv::SHM_DEST != 0 {
            return Err(format!("SysV shm segment {id} is marked for removal but still attached ({nattch} attachments): not supported"));
        }
        if p.mode & sysv::SHM_LOCKED != 0 {
            return Err(format!("SysV shm segment {id} is locked in memory (SHM_LOCK): not supported yet"));
        }
        total = total.saturating_add(size);
        if total > SHM_TOTAL_MAX {
            return Err(format!("SysV shm segment {id} ({size} bytes) takes its namespace's shared memory over {SHM_TOTAL_MAX} bytes: not supported"));
        }
        let len = usize::try_from(size).map_err(|_| format!("SysV shm segment {id}: size {size}"))?;
        let (data, page_kb) = sysv::shm_read(id, len).map_err(|e| format!("reading SysV shm segment {id}: {e}"))?;
        if page_kb > 4 {
            return Err(format!("SysV shm segment {id} is in {page_kb} kB pages (SHM_HUGETLB): not supported yet"));
        }
        ns.shms.push(IpcShm { desc: desc(id, &p), size, data });
    }
    for (id, p, nsems) in sysv::sem_list().map_err(|e| format!("listing SysV semaphores: {e}"))? {
        let values = sysv::sem_values(id, nsems as usize).map_err(|e| format!("reading SysV semaphore set {id}: {e}"))?;
        ns.sems.push(IpcSem { desc: desc(id, &p), values });
    }
    for (id, p, qbytes, qnum) in sysv::msg_list().map_err(|e| format!("listing SysV message queues: {e}"))? {
        let mut msgs = Vec::new();
        for k in 0..qnum {
            // (a message is at most msgmax bytes when sent, and never more
            // than the queue's qbytes: msgmax may have been lowered since)
            let m = sysv::msg_copy(id, k, (ns.var.msg_ctlmax as usize).max(qbytes as usize).min(MSG_MAX as usize)).map_err(|e| format!("reading message {k} of SysV message queue {id} (MSG_COPY): {e}"))?;
            msgs.push(m);
        }
        let qbytes = u32::try_from(qbytes).map_err(|_| format!("SysV message queue {id}: qbytes {qbytes}"))?;
        ns.msgs.push(IpcMsgQueue { desc: desc(id, &p), qbytes, msgs });
    }
    crate::pr_debug!("ipc namespace: {} shm segments, {} semaphore sets, {} message queues", ns.shms.len(), ns.sems.len(), ns.msgs.len());
    Ok(ns)
}

fn desc_pb(d: &IpcDesc) -> pb::IpcDescEntry {
    pb::IpcDescEntry { key: d.key, uid: d.uid, gid: d.gid, cuid: d.cuid, cgid: d.cgid, mode: d.mode, id: d.id }
}

fn pad(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

/// Write the images of the root's own namespaces, as upstream 4.2 does:
/// utsns-UTSID.img; ipcns-var-IPCID.img, and ipcns-shm/sem/msg-IPCID.img
/// for the kinds that have objects. A segment's contents go in
/// pagemap-shmem-SHMID.img (one run from 0, every page of the segment)
/// and pages-N.img, N counted on from `pages_id`.
pub fn write_images(dir: &Path, tree: &Tree, pages_id: &mut u32) -> Result<(), ImagesError> {
    let ids = &tree.root().ids;
    if let Some(u) = &tree.uts {
        let e = pb::UtsnsEntry { nodename: u.nodename.clone(), domainname: u.domainname.clone() };
        write_all(dir, &mg::UTSNS.file_name(ids.uts_ns), &mg::UTSNS, &[e])?;
    }
    let Some(ipc) = &tree.ipc else { return Ok(()) };
    let v = &ipc.var;
    let var = pb::IpcVarEntry {
        sem_ctls: v.sem_ctls.to_vec(),
        msg_ctlmax: v.msg_ctlmax,
        msg_ctlmnb: v.msg_ctlmnb,
        msg_ctlmni: v.msg_ctlmni,
        auto_msgmni: v.auto_msgmni,
        shm_ctlmax: v.shm_ctlmax,
        shm_ctlall: v.shm_ctlall,
        shm_ctlmni: v.shm_ctlmni,
        shm_rmid_forced: v.shm_rmid_forced,
        mq_queues_max: v.mq_queues_max,
        mq_msg_max: v.mq_msg_max,
        mq_msgsize_max: v.mq_msgsize_max,
        mq_msg_default: v.mq_msg_default,
        mq_msgsize_default: v.mq_msgsize_default,
        msg_next_id: None,
        sem_next_id: None,
        shm_next_id: None,
    };
    let id = ids.ipc_ns;
    write_all(dir, &mg::IPC_VAR.file_name(id), &mg::IPC_VAR, &[var])?;
    if !ipc.shms.is_empty() {
        let mut w = ImageWriter::create(dir, &mg::IPCNS_SHM.file_name(id), &mg::IPCNS_SHM)?;
        for s in &ipc.shms {
            w.write_entry(&pb::IpcShmEntry { desc: desc_pb(&s.desc), size: s.size, in_pagemaps: Some(true), hugetlb_flag: None })?;
            let name = images_proto::pages::pagemap_name(format!("shmem-{}", s.desc.id));
            if dir.join(&name).exists() {
                return Err(ImagesError::Bad { file: name, what: format!("SysV shm segment {} and shared memory of the same id", s.desc.id) });
            }
            *pages_id += 1;
            let mut pw = PagesWriter::create(dir, format!("shmem-{}", s.desc.id), *pages_id)?;
            let mut data = s.data.clone();
            data.resize(pad(s.size as usize, PAGE_SIZE as usize), 0);
            if !data.is_empty() {
                pw.add(0, &data, 0)?;
            }
            pw.finish()?;
        }
        w.finish()?;
    }
    if !ipc.sems.is_empty() {
        let mut w = ImageWriter::create(dir, &mg::IPCNS_SEM.file_name(id), &mg::IPCNS_SEM)?;
        for s in &ipc.sems {
            w.write_entry(&pb::IpcSemEntry { desc: desc_pb(&s.desc), nsems: s.values.len() as u32 })?;
            let mut b: Vec<u8> = s.values.iter().flat_map(|v| v.to_le_bytes()).collect();
            b.resize(pad(b.len(), 8), 0);
            w.write_payload(&b)?;
        }
        w.finish()?;
    }
    if !ipc.msgs.is_empty() {
        let mut w = ImageWriter::create(dir, &mg::IPCNS_MSG.file_name(id), &mg::IPCNS_MSG)?;
        for q in &ipc.msgs {
            w.write_entry(&pb::IpcMsgEntry { desc: desc_pb(&q.desc), qbytes: q.qbytes, qnum: q.msgs.len() as u32 })?;
            for (mtype, text) in &q.msgs {
                w.write_entry(&pb::IpcMsg { mtype: *mtype, msize: text.len() as u32 })?;
                let mut b = text.clone();
                b.resize(pad(b.len(), 8), 0);
                w.write_payload(&b)?;
            }
        }
        w.finish()?;
    }
    Ok(())
}


fn desc_from(d: &pb::IpcDescEntry, file: &str, i: usize, seen: &mut std::collections::HashSet<u32>) -> Result<IpcDesc, ImagesError> {
    if d.mode > 0o777 {
        return Err(bad(file, Some(i), "desc.mode", format!("{:#o} has bits beyond 0777", d.mode)));
    }
    if d.id > i32::MAX as u32 {
        return Err(bad(file, Some(i), "desc.id", format!("{} is not a SysV id (above {})", d.id, i32::MAX)));
    }
    if !seen.insert(d.id) {
        return Err(bad(file, Some(i), "desc.id", format!("{} appears twice in the image", d.id)));
    }
    Ok(IpcDesc { key: d.key, uid: d.uid, gid: d.gid, cuid: d.cuid, cgid: d.cgid, mode: d.mode, id: d.id })
}

/// The root's own namespaces from the image set: those whose id in the
/// root's ids differs from inventory's `root_ids` (0: not recorded). Every
/// value is checked (lengths, sizes against the namespace's limits and
/// the files, ids unique), the error naming the image, entry and field.
pub fn read_images(dir: &Path, ids: &KobjIds, root_ids: &KobjIds) -> Result<(Option<UtsNs>, Option<IpcNs>), ImagesError> {
    let own = |mine: u32, root: u32| mine != 0 && root != 0 && mine != root;
    // (an id naming no image: refused naming both)
    let present = |name: &str, field: &str, mine: u32, root: u32| -> Result<(), ImagesError> {
        if dir.join(name).exists() {
            return Ok(());
        }
        Err(ImagesError::Bad {
            file: name.to_string(),
            what: format!("missing, but the root's {field} {mine} (its ids image) is not inventory's root_ids.{field} {root}: its namespace has no image"),
        })
    };
    let uts = if own(ids.uts_ns, root_ids.uts_ns) {
        let name = mg::UTSNS.file_name(ids.uts_ns);
        present(&name, "uts_ns_id", ids.uts_ns, root_ids.uts_ns)?;
        let v: Vec<pb::UtsnsEntry> = read_all(dir, &name, &mg::UTSNS)?;
        let [e] = v.as_slice() else { return Err(bad(&name, None, "entries", format!("{} entries, want 1", v.len()))) };
        for (field, s) in [("nodename", &e.nodename), ("domainname", &e.domainname)] {
            if s.len() > UTS_LEN || s.contains('\0') {
                return Err(bad(&name, Some(0), field, format!("{} bytes{}: the kernel keeps at most {UTS_LEN}, no NUL", s.len(), if s.contains('\0') { " with a NUL" } else { "" })));
            }
        }
        Some(UtsNs { nodename: e.nodename.clone(), domainname: e.domainname.clone() })
    } else {
        None
    };
    if !own(ids.ipc_ns, root_ids.ipc_ns) {
        return Ok((uts, None));
    }
    let id = ids.ipc_ns;
    let name = mg::IPC_VAR.file_name(id);
    present(&name, "ipc_ns_id", id, root_ids.ipc_ns)?;
    let v: Vec<pb::IpcVarEntry> = read_all(dir, &name, &mg::IPC_VAR)?;
    let [e] = v.as_slice() else { return Err(bad(&name, None, "entries", format!("{} entries, want 1", v.len()))) };
    let sem_ctls: [u32; 4] = e.sem_ctls.clone().try_into().map_err(|_| bad(&name, Some(0), "sem_ctls", format!("{} values, want 4", e.sem_ctls.len())))?;
    let var = IpcVar {
        sem_ctls,
        msg_ctlmax: e.msg_ctlmax,
        msg_ctlmnb: e.msg_ctlmnb,
        msg_ctlmni: e.msg_ctlmni,
        auto_msgmni: e.auto_msgmni,
        shm_ctlmax: e.shm_ctlmax,
        shm_ctlall: e.shm_ctlall,
        shm_ctlmni: e.shm_ctlmni,
        shm_rmid_forced: e.shm_rmid_forced,
        mq_queues_max: e.mq_queues_max,
        mq_msg_max: e.mq_msg_max,
        mq_msgsize_max: e.mq_msgsize_max,
        mq_msg_default: e.mq_msg_default,
        mq_msgsize_default: e.mq_msgsize_default,
    };
    let mut ns = IpcNs { var, ..Default::default() };
    let mut seen = std::collections::HashSet::new();
    let name = mg::IPCNS_SHM.file_name(id);
    if dir.join(&name).exists() {
        let mut r = ImageReader::open(dir, &name, &mg::IPCNS_SHM)?;
        let mut total = 0u64;
        let mut i = 0;
        while let Some(e) = r.next_entry::<pb::IpcShmEntry>()? {
            let d = desc_from(&e.desc, &name, i, &mut seen)?;
            total = total.checked_add(e.size).filter(|t| *t <= SHM_TOTAL_MAX).ok_or_else(|| {
                bad(&name, Some(i), "size", format!("{} bytes take the namespace's shared memory over {SHM_TOTAL_MAX} bytes", e.size))
            })?;
            if e.size > ns.var.shm_ctlmax {
                return Err(bad(&name, Some(i), "size", format!("{} bytes is more than the namespace's shmmax {}", e.size, ns.var.shm_ctlmax)));
            }
            if e.hugetlb_flag.is_some_and(|f| f != 0) {
                return Err(bad(&name, Some(i), "hugetlb_flag", "a hugetlb segment: not supported yet"));
            }
            let size = e.size as usize;
            let data = if e.in_pagemaps == Some(true) {
                shm_pages(dir, d.id, e.size)?
            } else {
                // (older images: the contents follow the entry, padded to 4)
                let mut b = r.read_payload(pad(size, 4) as u64)?;
                b.truncate(size);
                b
            };
            ns.shms.push(IpcShm { desc: d, size: e.size, data });
            i += 1;
        }
    }
    // (ids are per kind: a segment and a semaphore set may both be 0)
    let name = mg::IPCNS_SEM.file_name(id);
    seen.clear();
    if dir.join(&name).exists() {
        let mut r = ImageReader::open(dir, &name, &mg::IPCNS_SEM)?;
        let mut i = 0;
        while let Some(e) = r.next_entry::<pb::IpcSemEntry>()? {
            let d = desc_from(&e.desc, &name, i, &mut seen)?;
            if e.nsems == 0 || e.nsems > SEMMSL_MAX {
                return Err(bad(&name, Some(i), "nsems", format!("{} semaphores: want 1..={SEMMSL_MAX}", e.nsems)));
            }
            let b = r.read_payload(pad(e.nsems as usize * 2, 8) as u64)?;
            let values = b.chunks_exact(2).take(e.nsems as usize).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
            ns.sems.push(IpcSem { desc: d, values });
            i += 1;
        }
    }
    let name = mg::IPCNS_MSG.file_name(id);
    seen.clear();
    if dir.join(&name).exists() {
        let mut r = ImageReader::open(dir, &name, &mg::IPCNS_MSG)?;
        let mut i = 0;
        while let Some(e) = r.next_entry::<pb::IpcMsgEntry>()? {
            let d = desc_from(&e.desc, &name, i, &mut seen)?;
            if e.qnum > MSGS_MAX {
                return Err(bad(&name, Some(i), "qnum", format!("{} messages: at most {MSGS_MAX}", e.qnum)));
            }
            let mut msgs = Vec::new();
            let mut bytes = 0u64;
            for k in 0..e.qnum {
                let m: pb::IpcMsg = r.next_entry()?.ok_or_else(|| bad(&name, Some(i), "qnum", format!("{} messages, but the image ends after {k}", e.qnum)))?;
                if m.msize > MSG_MAX {
                    return Err(bad(&name, Some(i), "msize", format!("message {k}: {} bytes, at most {MSG_MAX}", m.msize)));
                }
                bytes += u64::from(m.msize);
                if bytes > u64::from(e.qbytes) {
                    return Err(bad(&name, Some(i), "qbytes", format!("the messages hold more than its {} bytes", e.qbytes)));
                }
                let mut b = r.read_payload(pad(m.msize as usize, 8) as u64)?;
                b.truncate(m.msize as usize);
                msgs.push((m.mtype, b));
            }
            ns.msgs.push(IpcMsgQueue { desc: d, qbytes: e.qbytes, msgs });
            i += 1;
        }
    }
    Ok((uts, Some(ns)))
}

/// A segment's contents from pagemap-shmem-SHMID.img: runs inside the
/// segment (its size rounded up to pages), their pages in the pages file.
fn shm_pages(dir: &Path, shmid: u32, size: u64) -> Result<Vec<u8>, ImagesError> {
    let name = images_proto::pages::pagemap_name(format!("shmem-{shmid}"));
    let r = PagemapReader::open(dir, &name)?;
    let pid = r.pages_id();
    let runs = r.runs()?;
    let limit = size.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let mut data = vec![0u8; size as usize];
    if runs.is_empty() {
        return Ok(data);
    }
    let pages = PagesFile::open(dir, pid)?;
    for (k, run) in runs.iter().enumerate() {
        if run.end() > limit {
            return Err(bad(&name, Some(k + 1), "nr_pages", format!("pages {:#x}..{:#x} are beyond the segment's {size} bytes", run.vaddr, run.end())));
        }
        if !run.present() {
            continue;
        }
        pages.check(run)?;
        let mut buf = vec![0u8; run.len() as usize];
        pages.read_at(run.offset, &mut buf)?;
        let at = run.vaddr as usize;
        let n = buf.len().min(data.len() - at);
        data[at..at + n].copy_from_slice(&buf[..n]);
    }
    Ok(data)
}

fn write_sysctl(path: &str, want: &str) -> Result<(), String> {
    let now = std::fs::read_to_string(path).map(|s| s.split_whitespace().collect::<Vec<_>>().join(" ")).ok();
    if now.as_deref() == Some(want) {
        return Ok(());
    }
    std::fs::write(path, want).map_err(|e| format!("writing {want:?} to {path} (it is {:?}): {e}", now.unwrap_or_default()))
}

fn set_next_id(kind: &str, id: u32) -> Result<(), String> {
    let path = format!("{K}/{kind}_next_id");
    std::fs::write(&path, id.to_string()).map_err(|e| format!("writing {id} to {path}: {e}"))
}

/// In the tree's root, before it forks: new uts and ipc namespaces with
/// the tree's hostname, domain name, ipc sysctls and SysV objects (each
/// with its dumped id, through *_next_id). Needs /proc (before the chroot)
/// and a single-threaded caller.
pub fn enter(tree: &Tree) -> Result<(), String> {
    let mut flags = 0;
    if tree.uts.is_some() {
        flags |= libc::CLONE_NEWUTS;
    }
    if tree.ipc.is_some() {
        flags |= libc::CLONE_NEWIPC;
    }
    if flags == 0 {
        return Ok(());
    }
    crate::sys::ns::unshare(flags).map_err(|e| format!("unshare of new uts/ipc namespaces ({flags:#x}): {e}"))?;
    if let Some(u) = &tree.uts {
        sysv::set_hostname(&u.nodename).map_err(|e| format!("sethostname({:?}): {e}", u.nodename))?;
        sysv::set_domainname(&u.domainname).map_err(|e| format!("setdomainname({:?}): {e}", u.domainname))?;
    }
    let Some(ipc) = &tree.ipc else { return Ok(()) };
    let v = &ipc.var;
    let s = |x: &dyn std::fmt::Display| x.to_string();
    let sem = v.sem_ctls.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(" ");
    let mut vars: Vec<(String, String)> = vec![
        (format!("{K}/sem"), sem),
        (format!("{K}/msgmax"), s(&v.msg_ctlmax)),
        (format!("{K}/msgmnb"), s(&v.msg_ctlmnb)),
        (format!("{K}/msgmni"), s(&v.msg_ctlmni)),
        (format!("{K}/shmmax"), s(&v.shm_ctlmax)),
        (format!("{K}/shmall"), s(&v.shm_ctlall)),
        (format!("{K}/shmmni"), s(&v.shm_ctlmni)),
        (format!("{K}/shm_rmid_forced"), s(&v.shm_rmid_forced)),
        (format!("{MQ}/queues_max"), s(&v.mq_queues_max)),
        (format!("{MQ}/msg_max"), s(&v.mq_msg_max)),
        (format!("{MQ}/msgsize_max"), s(&v.mq_msgsize_max)),
    ];
    if let Some(x) = v.mq_msg_default {
        vars.push((format!("{MQ}/msg_default"), s(&x)));
    }
    if let Some(x) = v.mq_msgsize_default {
        vars.push((format!("{MQ}/msgsize_default"), s(&x)));
    }
    for (path, want) in &vars {
        write_sysctl(path, want)?;
    }
    // (auto_msgmni does nothing since Linux 3.19; kept in the image only)
    for sh in &ipc.shms {
        let d = &sh.desc;
        set_next_id("shm", d.id)?;
        let got = sysv::shm_create(d.key, sh.size, &sh.data, d.uid, d.gid, d.mode).map_err(|e| format!("making SysV shm segment {} ({} bytes, key {:#x}): {e}", d.id, sh.size, d.key))?;
        if got as u32 != d.id {
            return Err(format!("SysV shm segment {} was made with id {got}", d.id));
        }
    }
    for se in &ipc.sems {
        let d = &se.desc;
        set_next_id("sem", d.id)?;
        let got = sysv::sem_create(d.key, &se.values, d.uid, d.gid, d.mode).map_err(|e| format!("making SysV semaphore set {} ({} semaphores, key {:#x}): {e}", d.id, se.values.len(), d.key))?;
        if got as u32 != d.id {
            return Err(format!("SysV semaphore set {} was made with id {got}", d.id));
        }
    }
    for q in &ipc.msgs {
        let d = &q.desc;
        set_next_id("msg", d.id)?;
        let got = sysv::msg_create(d.key, u64::from(q.qbytes), &q.msgs, d.uid, d.gid, d.mode)
            .map_err(|e| format!("making SysV message queue {} ({} messages, qbytes {}, key {:#x}): {e}", d.id, q.msgs.len(), q.qbytes, d.key))?;
        if got as u32 != d.id {
            return Err(format!("SysV message queue {} was made with id {got}", d.id));
        }
    }
    Ok(())
}

/// SysV shm attachments (`VmaKind::SysvShm`) of the tree's processes:
/// each must be of a segment of the tree's own ipc namespace (`ipc`: the
/// engine's namespace is not carried) and cover all of it (restore
/// attaches whole segments: shmat has no offset), else refused naming the
/// process, the mapping and the segment.
pub fn check_attachments<'a>(tasks: impl Iterator<Item = (i32, &'a crate::model::Task)>, ipc: Option<&IpcNs>) -> Result<(), (i32, String)> {
    for (pid, t) in tasks {
        for v in &t.mm.vmas {
            let crate::model::VmaKind::SysvShm(id) = v.kind else { continue };
            let Some(ipc) = ipc else {
                return Err((pid, format!(
                    "mapping {:#x}-{:#x} attaches SysV shm segment {id} of criu's ipc namespace, which is not dumped: not supported",
                    v.start, v.end
                )));
            };
            let Some(seg) = ipc.shms.iter().find(|s| s.desc.id == id) else {
                return Err((pid, format!("mapping {:#x}-{:#x} attaches SysV shm segment {id}, which its ipc namespace does not have", v.start, v.end)));
            };
            let whole = seg.size.div_ceil(PAGE_SIZE) * PAGE_SIZE;
            if v.pgoff != 0 || v.len() != whole {
                return Err((pid, format!(
                    "mapping {:#x}-{:#x} (offset {:#x}) is a part of SysV shm segment {id} ({} bytes): partial attachments (split by mprotect or munmap) are not supported yet",
                    v.start, v.end, v.pgoff, seg.size
                )));
            }
        }
    }
    Ok(())
}
