//! Running syscalls inside a ptrace-stopped thread.
//!
//! The thread is pointed at a `syscall; int3` pair (the "gadget": the
//! engine's own, or the one the restore writes into the target) with the
//! syscall number and arguments in its registers, and resumed with
//! PTRACE_CONT: the syscall runs, the `int3` stops the thread with a
//! SIGTRAP, and the return value is read there. That is one stop per call;
//! stepping with PTRACE_SYSCALL to the syscall-exit stop took two (entry and
//! exit), each a wakeup of the engine. The SIGTRAP is never delivered: the
//! next resume passes signal 0. But the kernel forces it: with SIGTRAP
//! blocked (every signal is, during the injection) or ignored, it resets
//! SIGTRAP's action to SIG_DFL and unblocks it in that thread. So each
//! trap is followed by blocking every signal again (PTRACE_SETSIGMASK, no
//! resume), the caller sets SIGTRAP's action last with
//! [`Injector::call_stepped`], and a thread that gets a SIGTRAP of its own
//! queued is stepped from then on ([`Injector::stop_trapping`]: a trap's
//! SIGTRAP would merge with it). `orig_ax = -1` keeps the kernel's
//! syscall-restart logic away from the registers we load.
//!
//! The caller blocks signals (PTRACE_SETSIGMASK) for the duration, so a
//! stop other than the syscall ones means the thread is being killed or
//! stopped by someone else: that is reported as an error.

use super::ptrace::{self, Regs, Wait};
use super::Pid;
use std::io;

/// Address of a `syscall; int3` pair in the engine's own text. A child
/// forked from the engine has it at the same address.
pub fn engine_gadget() -> u64 {
    extern "C" {
        fn criu_rs_syscall_gadget();
    }
    criu_rs_syscall_gadget as *const () as usize as u64
}

std::arch::global_asm!(
    ".pushsection .text.criu_rs_gadget,\"ax\",@progbits",
    ".globl criu_rs_syscall_gadget",
    ".type criu_rs_syscall_gadget,@function",
    "criu_rs_syscall_gadget:",
    "syscall",
    "int3",
    ".popsection",
);

/// Syscall injector bound to one stopped thread.
#[derive(Debug)]
pub struct Injector {
    pub tid: Pid,
    /// Address of a `syscall; int3` pair executable in the thread's mm.
    pub gadget: u64,
    /// Registers used as the template of each call (the thread's own).
    pub base: Regs,
    /// Called when a clone event is seen: new thread ids.
    pub cloned: Vec<Pid>,
    /// Every call stepped (no `int3`) from now on ([`Injector::stop_trapping`]).
    stepped: bool,
}

impl Injector {
    pub fn new(tid: Pid, gadget: u64) -> io::Result<Self> {
        let base = ptrace::get_regs(tid)?;
        Ok(Injector { tid, gadget, base, cloned: Vec::new(), stepped: false })
    }

    /// Run syscall `nr` with `args`; returns the raw result (negative errno on failure).
    pub fn raw(&mut self, nr: i64, args: &[u64]) -> io::Result<i64> {
        self.run(nr, args, false)
    }

    /// Step every later call (no `int3`): for a thread about to get a
    /// SIGTRAP of its own queued, which a trap's SIGTRAP would merge with
    /// and the discarding resume would then lose.
    pub fn stop_trapping(&mut self) {
        self.stepped = true;
    }

    /// Every call is stepped ([`stop_trapping`](Self::stop_trapping) was
    /// called): nothing may run to an `int3` in this thread.
    pub fn is_stepped(&self) -> bool {
        self.stepped
    }

    /// Like [`call`](Self::call) but stepped from the syscall-entry to the
    /// syscall-exit stop (two stops), so the gadget's `int3` does not run:
    /// for a syscall that unmaps the gadget itself, and for one that sets
    /// SIGTRAP's action (a trap with SIGTRAP blocked or ignored makes the
    /// kernel reset that action to SIG_DFL, so it is set after the last trap).
    pub fn call_stepped(&mut self, what: &str, nr: i64, args: &[u64]) -> io::Result<u64> {
        let r = self.run(nr, args, true)?;
        super::check_raw(r).map_err(|e| io::Error::new(e.kind(), format!("injected {what} in {}: {e}", self.tid)))
    }

    fn run(&mut self, nr: i64, args: &[u64], stepped: bool) -> io::Result<i64> {
        let stepped = stepped || self.stepped;
        let mut r = self.base;
        r.ip = self.gadget;
        r.ax = nr as u64;
        r.orig_ax = u64::MAX;
        let mut a = [0u64; 6];
        a[..args.len()].copy_from_slice(args);
        r.di = a[0];
        r.si = a[1];
        r.dx = a[2];
        r.r10 = a[3];
        r.r8 = a[4];
        r.r9 = a[5];
        ptrace::set_regs(self.tid, &r)?;
        // run to the int3 after the syscall, or with `stepped` from the
        // syscall-entry to the syscall-exit stop (clone events on the way
        // are recorded)
        let mut seen_entry = false;
        loop {
            if stepped {
                ptrace::cont_syscall(self.tid, 0)?;
            } else {
                ptrace::cont(self.tid, 0)?;
            }
            match ptrace::wait(self.tid)? {
                Wait::Stopped { sig: libc::SIGTRAP, event: 0 } if !stepped => break,
                Wait::Stopped { sig, event: 0 } if stepped && sig == (libc::SIGTRAP | 0x80) => {
                    if seen_entry {
                        break;
                    }
                    seen_entry = true;
                }
                Wait::Stopped { sig, event } if sig == libc::SIGTRAP && event == ptrace::EVENT_CLONE => {
                    let t = ptrace::event_msg(self.tid)?;
                    self.cloned.push(i32::try_from(t).unwrap_or(-1));
                }
                other => {
                    return Err(io::Error::other(format!(
                        "thread {} stopped unexpectedly during injected syscall {nr}: {other:?}",
                        self.tid
                    )))
                }
            }
        }
        if !stepped {
            // the trap unblocked SIGTRAP in this thread: every signal blocked
            // again, so a queued SIGTRAP stays queued
            ptrace::set_sigmask(self.tid, !0)?;
        }
        let out = ptrace::get_regs(self.tid)?;
        let after = if stepped { self.gadget + 2 } else { self.gadget + 3 };
        if out.ip != after {
            return Err(io::Error::other(format!(
                "thread {} trapped at {:#x} during injected syscall {nr}, not after the gadget at {:#x}",
                self.tid, out.ip, self.gadget
            )));
        }
        Ok(out.ax as i64)
    }

    /// Like [`raw`](Self::raw) but negative results become errors naming the syscall.
    pub fn call(&mut self, what: &str, nr: i64, args: &[u64]) -> io::Result<u64> {
        let r = self.raw(nr, args)?;
        super::check_raw(r).map_err(|e| io::Error::new(e.kind(), format!("injected {what} in {}: {e}", self.tid)))
    }

    /// Put the thread's template registers back.
    pub fn restore_regs(&self) -> io::Result<()> {
        ptrace::set_regs(self.tid, &self.base)
    }
}
