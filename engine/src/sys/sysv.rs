//! SysV IPC (shmget(2), shmat(2), shmctl(2), semget(2), semctl(2),
//! msgget(2), msgctl(2), msgsnd(2), msgrcv(2)) in the calling thread's ipc
//! namespace, uname(2)'s names for sethostname(2)/setdomainname(2), and a
//! detached mount of the ipc namespace's mqueue file system (fsopen(2),
//! fsconfig(2), fsmount(2)) to list its POSIX message queues.

use super::last_err;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

// linux/ipc.h, linux/shm.h, linux/sem.h, linux/msg.h
const IPC_STAT: i32 = 2;
const IPC_SET: i32 = 1;
const MSG_INFO: i32 = 12;
const MSG_STAT_ANY: i32 = 13;
const SHM_INFO: i32 = 14;
const SHM_STAT_ANY: i32 = 15;
const SEM_INFO: i32 = 19;
const SEM_STAT_ANY: i32 = 20;
const GETALL: i32 = 13;
const SETALL: i32 = 17;
/// msgrcv(2): copy the message at index `msgtyp`, leave it queued.
const MSG_COPY: i32 = 0o40000;
/// shm_perm.mode bit: the segment is marked for removal (IPC_RMID while attached).
pub const SHM_DEST: u32 = 0o1000;
/// shm_perm.mode bit: SHM_LOCK'ed.
pub const SHM_LOCKED: u32 = 0o2000;

/// What every SysV object's stat gives: its `ipc_perm`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Perm {
    pub key: u32,
    pub uid: u32,
    pub gid: u32,
    pub cuid: u32,
    pub cgid: u32,
    /// Full mode: permission bits and the SHM_DEST/SHM_LOCKED flags.
    pub mode: u32,
}

fn perm(p: &libc::ipc_perm) -> Perm {
    Perm { key: p.__key as u32, uid: p.uid, gid: p.gid, cuid: p.cuid, cgid: p.cgid, mode: u32::from(p.mode) }
}

fn set_perm(p: &mut libc::ipc_perm, uid: u32, gid: u32, mode: u32) {
    p.uid = uid;
    p.gid = gid;
    p.mode = (mode & 0o777) as libc::c_ushort;
}

fn ret(r: libc::c_int) -> io::Result<i32> {
    if r < 0 {
        Err(last_err())
    } else {
        Ok(r)
    }
}

/// A shared memory segment: (id, perm, size, nattch).
pub fn shm_list() -> io::Result<Vec<(i32, Perm, u64, u64)>> {
    // SAFETY: shmid_ds is plain data; SHM_INFO writes a struct shm_info,
    // which is smaller than shmid_ds, into it.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a buffer at least as large as what the command writes.
    let max = ret(unsafe { libc::shmctl(0, SHM_INFO, &mut ds) })?;
    let mut out = Vec::new();
    for idx in 0..=max {
        // SAFETY: as above; SHM_STAT_ANY writes a shmid_ds.
        let id = unsafe { libc::shmctl(idx, SHM_STAT_ANY, &mut ds) };
        if id < 0 {
            continue; // an unused index
        }
        out.push((id, perm(&ds.shm_perm), ds.shm_segsz as u64, ds.shm_nattch));
    }
    Ok(out)
}

/// A semaphore set: (id, perm, nsems).
pub fn sem_list() -> io::Result<Vec<(i32, Perm, u64)>> {
    // SAFETY: semid_ds is plain data; SEM_INFO writes a struct seminfo
    // (smaller than semid_ds) through the union argument's pointer.
    let mut ds: libc::semid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: the fourth argument is the union semun's buf pointer, valid for the call.
    let max = ret(unsafe { libc::semctl(0, 0, SEM_INFO, &mut ds as *mut libc::semid_ds) })?;
    let mut out = Vec::new();
    for idx in 0..=max {
        // SAFETY: as above; SEM_STAT_ANY writes a semid_ds.
        let id = unsafe { libc::semctl(idx, 0, SEM_STAT_ANY, &mut ds as *mut libc::semid_ds) };
        if id < 0 {
            continue;
        }
        out.push((id, perm(&ds.sem_perm), ds.sem_nsems as u64));
    }
    Ok(out)
}

/// A message queue: (id, perm, qbytes, qnum).
pub fn msg_list() -> io::Result<Vec<(i32, Perm, u64, u64)>> {
    // SAFETY: msqid_ds is plain data; MSG_INFO writes a struct msginfo (smaller).
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a buffer at least as large as what the command writes.
    let max = ret(unsafe { libc::msgctl(0, MSG_INFO, &mut ds) })?;
    let mut out = Vec::new();
    for idx in 0..=max {
        // SAFETY: as above; MSG_STAT_ANY writes a msqid_ds.
        let id = unsafe { libc::msgctl(idx, MSG_STAT_ANY, &mut ds) };
        if id < 0 {
            continue;
        }
        out.push((id, perm(&ds.msg_perm), ds.msg_qbytes as u64, ds.msg_qnum as u64));
    }
    Ok(out)
}

/// The first `len` bytes of segment `id` (attached read-only for the
/// copy, then detached), and the kernel page size of the attachment in
/// kB (from smaps: 4 for a normal segment, more for SHM_HUGETLB; 0 when
/// smaps does not say).
pub fn shm_read(id: i32, len: usize) -> io::Result<(Vec<u8>, u64)> {
    // SAFETY: shmat with a null address lets the kernel pick a free range.
    let p = unsafe { libc::shmat(id, std::ptr::null(), libc::SHM_RDONLY) };
    if p as isize == -1 {
        return Err(last_err());
    }
    let at = format!("{:x}-", p as usize);
    let page_kb = std::fs::read_to_string("/proc/self/smaps")
        .ok()
        .and_then(|s| {
            let block = &s[s.lines().find(|l| l.starts_with(&at)).and_then(|l| s.find(l))?..];
            let line = block.lines().find(|l| l.starts_with("KernelPageSize:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0);
    let mut v = vec![0u8; len];
    // SAFETY: the attachment is at least the segment's size, which the
    // caller's `len` does not exceed (its own stat); v has len bytes.
    unsafe { std::ptr::copy_nonoverlapping(p as *const u8, v.as_mut_ptr(), len) };
    // SAFETY: detaching what was attached above.
    unsafe { libc::shmdt(p) };
    Ok((v, page_kb))
}

/// A new segment of `size` bytes with `key` (IPC_CREAT|IPC_EXCL, or a
/// private one for key 0), `data` copied to its start, then owner and
/// mode set. Its id is what the kernel gives (see `*_next_id`).
pub fn shm_create(key: u32, size: u64, data: &[u8], uid: u32, gid: u32, mode: u32) -> io::Result<i32> {
    if data.len() as u64 > size {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "more data than the segment's size"));
    }
    let size = usize::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: integer arguments.
    let id = ret(unsafe { libc::shmget(key as libc::key_t, size, libc::IPC_CREAT | libc::IPC_EXCL | 0o600) })?;
    if !data.is_empty() {
        // SAFETY: null address: the kernel picks the range.
        let p = unsafe { libc::shmat(id, std::ptr::null(), 0) };
        if p as isize == -1 {
            return Err(last_err());
        }
        // SAFETY: the attachment is `size` bytes long, data.len() <= size.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p as *mut u8, data.len()) };
        // SAFETY: detaching what was attached above.
        unsafe { libc::shmdt(p) };
    }
    // SAFETY: shmid_ds is plain data, filled by IPC_STAT below.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: a valid shmid_ds pointer for IPC_STAT, then IPC_SET.
    ret(unsafe { libc::shmctl(id, IPC_STAT, &mut ds) })?;
    set_perm(&mut ds.shm_perm, uid, gid, mode);
    // SAFETY: as above.
    ret(unsafe { libc::shmctl(id, IPC_SET, &mut ds) })?;
    Ok(id)
}

/// The values of every semaphore of set `id`.
pub fn sem_values(id: i32, nsems: usize) -> io::Result<Vec<u16>> {
    let mut v = vec![0u16; nsems.max(1)];
    // SAFETY: GETALL writes nsems unsigned shorts through the union's array pointer; v has room.
    ret(unsafe { libc::semctl(id, 0, GETALL, v.as_mut_ptr()) })?;
    v.truncate(nsems);
    Ok(v)
}

/// A new semaphore set with these values, owner and mode.
pub fn sem_create(key: u32, values: &[u16], uid: u32, gid: u32, mode: u32) -> io::Result<i32> {
    let n = i32::try_from(values.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: integer arguments.
    let id = ret(unsafe { libc::semget(key as libc::key_t, n, libc::IPC_CREAT | libc::IPC_EXCL | 0o600) })?;
    let mut v = values.to_vec();
    // SAFETY: SETALL reads nsems unsigned shorts through the array pointer; v has them.
    ret(unsafe { libc::semctl(id, 0, SETALL, v.as_mut_ptr()) })?;
    // SAFETY: semid_ds is plain data, filled by IPC_STAT.
    let mut ds: libc::semid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: the union's buf pointer, valid for IPC_STAT and IPC_SET.
    ret(unsafe { libc::semctl(id, 0, IPC_STAT, &mut ds as *mut libc::semid_ds) })?;
    set_perm(&mut ds.sem_perm, uid, gid, mode);
    // SAFETY: as above.
    ret(unsafe { libc::semctl(id, 0, IPC_SET, &mut ds as *mut libc::semid_ds) })?;
    Ok(id)
}

/// Message `index` of queue `id` (type, text), left queued (MSG_COPY);
/// `max` bounds the text.
pub fn msg_copy(id: i32, index: u64, max: usize) -> io::Result<(u64, Vec<u8>)> {
    let mut buf = vec![0u8; 8 + max];
    // SAFETY: buf holds a long mtype and max bytes of text, as msgrcv writes.
    let n = unsafe { libc::msgrcv(id, buf.as_mut_ptr().cast(), max, index as libc::c_long, libc::IPC_NOWAIT | MSG_COPY) };
    if n < 0 {
        return Err(last_err());
    }
    let mtype = u64::from_ne_bytes(buf[..8].try_into().expect("8 bytes"));
    buf.drain(..8);
    buf.truncate(n as usize);
    Ok((mtype, buf))
}

/// A new message queue holding `msgs` in order, with `qbytes`, owner and mode.
pub fn msg_create(key: u32, qbytes: u64, msgs: &[(u64, Vec<u8>)], uid: u32, gid: u32, mode: u32) -> io::Result<i32> {
    // SAFETY: integer arguments.
    let id = ret(unsafe { libc::msgget(key as libc::key_t, libc::IPC_CREAT | libc::IPC_EXCL | 0o600) })?;
    // SAFETY: msqid_ds is plain data, filled by IPC_STAT.
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: a valid msqid_ds pointer.
    ret(unsafe { libc::msgctl(id, IPC_STAT, &mut ds) })?;
    if ds.msg_qbytes as u64 != qbytes {
        ds.msg_qbytes = qbytes as libc::msglen_t;
        // SAFETY: as above.
        ret(unsafe { libc::msgctl(id, IPC_SET, &mut ds) })?;
    }
    for (mtype, text) in msgs {
        let mut buf = Vec::with_capacity(8 + text.len());
        buf.extend_from_slice(&(*mtype as libc::c_long).to_ne_bytes());
        buf.extend_from_slice(text);
        // SAFETY: buf is a long mtype followed by text.len() bytes.
        ret(unsafe { libc::msgsnd(id, buf.as_ptr().cast(), text.len(), libc::IPC_NOWAIT) })?;
    }
    // SAFETY: as above.
    ret(unsafe { libc::msgctl(id, IPC_STAT, &mut ds) })?;
    set_perm(&mut ds.msg_perm, uid, gid, mode);
    // SAFETY: as above.
    ret(unsafe { libc::msgctl(id, IPC_SET, &mut ds) })?;
    Ok(id)
}

/// setdomainname(2) (nix has sethostname only).
pub fn set_domainname(name: &str) -> io::Result<()> {
    // SAFETY: a pointer and length of a live byte string.
    ret(unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) }).map(drop)
}

/// sethostname(2).
pub fn set_hostname(name: &str) -> io::Result<()> {
    // SAFETY: a pointer and length of a live byte string.
    ret(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

/// (nodename, domainname) of uname(2), in the caller's uts namespace.
pub fn uts_names() -> io::Result<(Vec<u8>, Vec<u8>)> {
    // SAFETY: utsname is plain data.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: a valid utsname pointer.
    ret(unsafe { libc::uname(&mut u) })?;
    let field = |f: &[libc::c_char]| f.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect::<Vec<u8>>();
    Ok((field(&u.nodename), field(&u.domainname)))
}

/// A mount of the calling thread's ipc namespace's mqueue file system,
/// attached nowhere (fsopen + fsconfig(FSCONFIG_CMD_CREATE) + fsmount):
/// its root is the namespace's POSIX message queues.
pub fn mqueue_root() -> io::Result<OwnedFd> {
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    let own = |r: libc::c_long| -> io::Result<OwnedFd> {
        if r < 0 {
            return Err(last_err());
        }
        // SAFETY: a new fd the syscall returned, owned by nothing else.
        Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
    };
    // SAFETY: a static NUL-terminated name, integer flags.
    let fs = own(unsafe { libc::syscall(libc::SYS_fsopen, c"mqueue".as_ptr(), libc::FSOPEN_CLOEXEC) })?;
    use std::os::fd::AsRawFd;
    // SAFETY: integer arguments and null key/value, as FSCONFIG_CMD_CREATE takes.
    if unsafe { libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), FSCONFIG_CMD_CREATE, std::ptr::null::<u8>(), std::ptr::null::<u8>(), 0) } < 0 {
        return Err(last_err());
    }
    // SAFETY: integer arguments.
    own(unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), libc::FSMOUNT_CLOEXEC, 0) })
}
