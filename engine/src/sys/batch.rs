//! Many syscalls in a stopped thread for one ptrace stop.
//!
//! [`Injector`] runs one syscall per stop: set the registers, resume, wait
//! for the `int3` after the `syscall`, read the result. A restore of a
//! process with 20,000 VMAs makes tens of thousands of such calls, and each
//! stop is two context switches through the engine. A batch instead writes
//! a list of calls into the target's memory and runs a small loop there
//! ([`STUB`]) that makes them one after the other and traps once, at the end
//! or at the first call that fails.
//!
//! The stub (position independent, 54 bytes) with `rbx` pointing at the
//! first record:
//!
//! ```text
//!  0: mov rax,[rbx]        ; nr; u64::MAX ends the list
//!  3: cmp rax,-1
//!  7: je done
//!  9: mov rdi,[rbx+8] ... mov r9,[rbx+48]
//! 21: syscall
//! 23: mov [rbx+56],rax     ; the result, read back by the engine
//! 27: cmp rax,-4095        ; unsigned: -4095..-1 is an error
//! 2d: jae done
//! 2f: add rbx,64
//! 33: jmp 0
//! 35: done: int3
//! ```
//!
//! A record is eight u64s: nr, six arguments, result. The engine pre-fills
//! every result with [`NOT_RUN`], so after the trap the first record whose
//! result is an error is the failed call and those after it never ran.
//! Nothing here writes outside the record buffer the caller names; the
//! stub only ever runs the calls it is given.

use super::inject::Injector;
use super::ptrace::{self, Wait};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// The loop's machine code (x86_64), checked against the assembler's
/// output in the tests.
pub const STUB: [u8; 0x36] = [
    0x48, 0x8b, 0x03, // mov rax,[rbx]
    0x48, 0x83, 0xf8, 0xff, // cmp rax,-1
    0x74, 0x2c, // je done
    0x48, 0x8b, 0x7b, 0x08, // mov rdi,[rbx+8]
    0x48, 0x8b, 0x73, 0x10, // mov rsi,[rbx+16]
    0x48, 0x8b, 0x53, 0x18, // mov rdx,[rbx+24]
    0x4c, 0x8b, 0x53, 0x20, // mov r10,[rbx+32]
    0x4c, 0x8b, 0x43, 0x28, // mov r8,[rbx+40]
    0x4c, 0x8b, 0x4b, 0x30, // mov r9,[rbx+48]
    0x0f, 0x05, // syscall
    0x48, 0x89, 0x43, 0x38, // mov [rbx+56],rax
    0x48, 0x3d, 0x01, 0xf0, 0xff, 0xff, // cmp rax,-4095
    0x73, 0x06, // jae done
    0x48, 0x83, 0xc3, 0x40, // add rbx,64
    0xeb, 0xcb, // jmp 0
    0xcc, // done: int3
];

/// Bytes of one record.
pub const RECORD: u64 = 64;
/// The result slot of a call the stub has not reached.
pub const NOT_RUN: u64 = 0x8000_0000_0000_0000;

/// One call: number and arguments, blocks of bytes copied into the target
/// beside the records (each block's address replaces the argument it
/// names), and a name for errors.
#[derive(Debug)]
struct Call {
    rec: [u64; 7],
    data: Vec<(usize, Vec<u8>)>,
    what: String,
}

impl Call {
    /// Bytes it takes in the target: its record and its data, 8-aligned.
    fn footprint(&self) -> u64 {
        RECORD + self.data.iter().map(|(_, d)| (d.len() as u64).next_multiple_of(8)).sum::<u64>()
    }
}

/// A list of syscalls to run in one thread, each with a name for errors.
#[derive(Debug, Default)]
pub struct Batch {
    calls: Vec<Call>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add syscall `nr` with up to six arguments; `what` names it in errors.
    pub fn push(&mut self, what: impl Into<String>, nr: i64, args: &[u64]) {
        let mut rec = [0u64; 7];
        rec[0] = nr as u64;
        rec[1..=args.len()].copy_from_slice(args);
        self.calls.push(Call { rec, data: Vec::new(), what: what.into() });
    }

    /// Like [`push`](Self::push), with `data` copied into the target for
    /// the call: argument `arg` (0-based) becomes its address there (an
    /// ioctl's struct, a timer's itimerval). What the kernel writes back
    /// into it is not read.
    pub fn push_data(&mut self, what: impl Into<String>, nr: i64, args: &[u64], arg: usize, data: &[u8]) {
        self.push_blocks(what, nr, args, &[(arg, data)]);
    }

    /// Like [`push_data`](Self::push_data) with several blocks, each for
    /// the argument it names (capset's header and data).
    pub fn push_blocks(&mut self, what: impl Into<String>, nr: i64, args: &[u64], blocks: &[(usize, &[u8])]) {
        self.push(what, nr, args);
        self.calls.last_mut().expect("just pushed").data = blocks.iter().map(|(a, d)| (*a, d.to_vec())).collect();
    }

    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }
}

/// Where a batch runs in the target: the stub's address (executable) and a
/// record buffer (writable, `buf_len` bytes, at least two records), both in
/// memory the engine owns in that process, written through `mem` (the
/// target's `/proc/PID/mem`, opened read-write).
#[derive(Debug, Clone, Copy)]
pub struct Place {
    pub stub: u64,
    pub buf: u64,
    pub buf_len: u64,
}

/// Run `batch` in the stopped thread of `inj`, as many records at a time as
/// `place.buf_len` holds. Returns every call's result; the first failed call
/// is an error naming it and the thread (the calls after it are not run).
/// A thread that must not trap ([`Injector::is_stepped`]) gets the calls
/// one at a time through the injector instead.
pub fn run(inj: &mut Injector, mem: &File, place: Place, batch: &Batch) -> io::Result<Vec<u64>> {
    run_tail_optional(inj, mem, place, batch, batch.len()).map(|(out, _)| out)
}

/// [`run`], where the calls from index `optional` on may fail without
/// failing the batch: a failure there ends the batch (the calls after it
/// are not run) and comes back beside the results of the calls before it.
/// A call to try last, whose failure the caller can do without (the
/// restore's userfaultfd at the end of the layout batch).
pub fn run_tail_optional(inj: &mut Injector, mem: &File, place: Place, batch: &Batch, optional: usize) -> io::Result<(Vec<u64>, Option<io::Error>)> {
    let mut out = Vec::with_capacity(batch.len());
    let tid = inj.tid;
    if inj.is_stepped() {
        for c in &batch.calls {
            let mut args = c.rec;
            let mut at = place.buf;
            for (arg, data) in &c.data {
                mem.write_all_at(data, at).map_err(|e| io::Error::new(e.kind(), format!("writing the data of {} into {tid}: {e}", c.what)))?;
                args[1 + arg] = at;
                at += (data.len() as u64).next_multiple_of(8);
            }
            match inj.call(&c.what, args[0] as i64, &args[1..]) {
                Ok(r) => out.push(r),
                Err(e) if out.len() >= optional => return Ok((out, Some(e))),
                Err(e) => return Err(e),
            }
        }
        return Ok((out, None));
    }
    let mut rest = &batch.calls[..];
    let mut bytes = Vec::new();
    while !rest.is_empty() {
        // as many calls as fit, with the end marker
        let mut n = 0;
        let mut used = 8;
        while n < rest.len() && used + rest[n].footprint() <= place.buf_len {
            used += rest[n].footprint();
            n += 1;
        }
        if n == 0 {
            return Err(io::Error::other(format!("{} does not fit a batch buffer of {} bytes", rest[0].what, place.buf_len)));
        }
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        // records, the end marker, then the data blocks
        let mut data_at = place.buf + n as u64 * RECORD + 8;
        let mut data = Vec::new();
        bytes.clear();
        for c in chunk {
            let mut rec = c.rec;
            for (arg, d) in &c.data {
                rec[1 + arg] = data_at;
                data.extend_from_slice(d);
                data.resize(data.len().next_multiple_of(8), 0);
                data_at = place.buf + n as u64 * RECORD + 8 + data.len() as u64;
            }
            rec.iter().for_each(|w| bytes.extend_from_slice(&w.to_le_bytes()));
            bytes.extend_from_slice(&NOT_RUN.to_le_bytes());
        }
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        bytes.extend_from_slice(&data);
        mem.write_all_at(&bytes, place.buf).map_err(|e| io::Error::new(e.kind(), format!("writing {n} batch records into {tid}: {e}")))?;
        trap_once(inj, place)?;
        let mut back = vec![0u8; n * RECORD as usize];
        mem.read_exact_at(&mut back, place.buf).map_err(|e| io::Error::new(e.kind(), format!("reading batch results from {tid}: {e}")))?;
        for (i, c) in chunk.iter().enumerate() {
            let at = i * RECORD as usize + 56;
            let r = u64::from_le_bytes(back[at..at + 8].try_into().expect("8 bytes"));
            if r == NOT_RUN {
                return Err(io::Error::other(format!("batch in {tid} stopped before {} without an error", c.what)));
            }
            if let Err(e) = super::check_raw(r as i64) {
                let e = io::Error::new(e.kind(), format!("injected {} in {tid}: {e}", c.what));
                if out.len() >= optional {
                    return Ok((out, Some(e)));
                }
                return Err(e);
            }
            out.push(r);
        }
    }
    Ok((out, None))
}

/// Point the thread at the stub with `rbx` = the records, resume it, and
/// wait for the stub's `int3`.
fn trap_once(inj: &mut Injector, place: Place) -> io::Result<()> {
    let tid = inj.tid;
    let mut r = inj.base;
    r.ip = place.stub;
    r.bx = place.buf;
    r.orig_ax = u64::MAX;
    ptrace::set_regs(tid, &r)?;
    ptrace::cont(tid, 0)?;
    match ptrace::wait(tid)? {
        Wait::Stopped { sig: libc::SIGTRAP, event: 0 } => {}
        other => return Err(io::Error::other(format!("thread {tid} stopped unexpectedly in a syscall batch: {other:?}"))),
    }
    // the trap unblocked SIGTRAP in this thread (see sys/inject.rs)
    ptrace::set_sigmask(tid, !0)?;
    let ip = ptrace::get_regs(tid)?.ip;
    let done = place.stub + STUB.len() as u64;
    if ip != done {
        return Err(io::Error::other(format!("thread {tid} trapped at {ip:#x} in a syscall batch, not at its end {done:#x}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::inject::engine_gadget;

    /// The bytes are what the assembler makes of the listing above.
    #[test]
    fn stub_matches_the_assembler() {
        let dir = std::env::temp_dir().join(format!("criu-rs-batch-asm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("stub.s");
        std::fs::write(
            &src,
            ".intel_syntax noprefix\nstub:\nmov rax,[rbx]\ncmp rax,-1\nje done\nmov rdi,[rbx+8]\nmov rsi,[rbx+16]\nmov rdx,[rbx+24]\n\
             mov r10,[rbx+32]\nmov r8,[rbx+40]\nmov r9,[rbx+48]\nsyscall\nmov [rbx+56],rax\ncmp rax,-4095\njae done\nadd rbx,64\njmp stub\ndone:\nint3\n",
        )
        .unwrap();
        let obj = dir.join("stub.o");
        let bin = dir.join("stub.bin");
        test_support::require!(test_support::why_not_tools(&["as", "objcopy"]));
        let ok = std::process::Command::new("as").arg("-o").arg(&obj).arg(&src).status().unwrap();
        assert!(ok.success(), "assembling the stub's listing");
        let st = std::process::Command::new("objcopy").args(["-O", "binary", "-j", ".text"]).arg(&obj).arg(&bin).status().unwrap();
        assert!(st.success());
        assert_eq!(std::fs::read(&bin).unwrap(), STUB.to_vec());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A forked copy of the test runs a batch: every result comes back, the
    /// failed call is named, and the call after it is not run.
    #[test]
    fn batch_runs_in_a_real_process() {
        test_support::require!(test_support::why_not_root());
        // SAFETY: the child only loops on pause(2), which is async-signal-safe.
        let child = unsafe { libc::fork() };
        assert!(child >= 0);
        if child == 0 {
            loop {
                // SAFETY: pause has no preconditions.
                unsafe { libc::pause() };
            }
        }
        let kill = scopeguard(child);
        ptrace::seize(child, 0).unwrap();
        ptrace::interrupt(child).unwrap();
        assert!(matches!(ptrace::wait(child).unwrap(), Wait::Stopped { .. }));
        ptrace::set_sigmask(child, !0).unwrap();
        let mut inj = Injector::new(child, engine_gadget()).unwrap();
        let prot = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let page = inj.call("mmap", libc::SYS_mmap, &[0, 3 * 4096, prot, flags, u64::MAX, 0]).unwrap();
        let mem = std::fs::OpenOptions::new().read(true).write(true).open(format!("/proc/{child}/mem")).unwrap();
        mem.write_all_at(&STUB, page).unwrap();
        // a small buffer, so the batch goes in several chunks
        let mut b = Batch::new();
        for _ in 0..7 {
            b.push("getpid", libc::SYS_getpid, &[]);
        }
        b.push("mprotect", libc::SYS_mprotect, &[page + 2 * 4096, 4096, libc::PROT_READ as u64]);
        // a call with data: uname(2) gets its buffer beside the records
        b.push_data("uname", libc::SYS_uname, &[0], 0, &[0u8; 390]);
        b.push("getpid", libc::SYS_getpid, &[]);
        let r = run(&mut inj, &mem, Place { stub: page, buf: page + 4096, buf_len: 8 * RECORD }, &b).unwrap();
        assert_eq!(r.len(), 10);
        assert_eq!(r[8], 0);
        assert_eq!(r[9], child as u64);
        assert!(r[..7].iter().all(|&p| p == child as u64), "{r:?}");
        let maps = std::fs::read_to_string(format!("/proc/{child}/maps")).unwrap();
        assert!(maps.lines().any(|l| l.starts_with(&format!("{:x}-{:x} r--p", page + 2 * 4096, page + 3 * 4096))), "{maps}");
        let mut b = Batch::new();
        b.push("getpid", libc::SYS_getpid, &[]);
        b.push("munmap(unaligned)", libc::SYS_munmap, &[page + 1, 4096]);
        b.push("mprotect(after the failure)", libc::SYS_mprotect, &[page + 2 * 4096, 4096, prot]);
        let err = run(&mut inj, &mem, Place { stub: page, buf: page + 4096, buf_len: 4096 }, &b).unwrap_err();
        assert_eq!(err.raw_os_error(), None);
        assert!(err.to_string().contains("munmap(unaligned)") && err.to_string().contains("Invalid argument"), "{err}");
        let maps = std::fs::read_to_string(format!("/proc/{child}/maps")).unwrap();
        assert!(maps.lines().any(|l| l.starts_with(&format!("{:x}-{:x} r--p", page + 2 * 4096, page + 3 * 4096))), "the call after the failure ran:\n{maps}");
        drop(kill);
    }

    struct Killer(i32);
    impl Drop for Killer {
        fn drop(&mut self) {
            // SAFETY: kill/waitpid on our own forked child.
            unsafe {
                libc::kill(self.0, libc::SIGKILL);
                libc::waitpid(self.0, std::ptr::null_mut(), libc::__WALL);
            }
        }
    }
    fn scopeguard(pid: i32) -> Killer {
        Killer(pid)
    }
}
