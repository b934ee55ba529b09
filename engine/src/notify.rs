//! Notifications at the stages of a dump or restore, upstream's "action
//! scripts" as the RPC service sends them (`criu swrk` with
//! `notify_scripts`): the engine calls [`script`] at each stage, with
//! upstream's stage names, and a handler (set by the service) asks the
//! client; an `Err` from it fails the dump or restore at that point. With
//! no handler set (the command line) every call is a no-op.
//!
//! Dump: `pre-dump` (before anything is frozen), `network-lock` (the tree
//! frozen and collected), `query-ext-files`, `post-dump` (images written,
//! before the tree is released or killed), `network-unlock` (with
//! `leave_running`, once it runs again). Restore: `pre-restore`,
//! `setup-namespaces` (the root forked, with its pid), `post-setup-namespaces`
//! (every process forked), `post-restore` (with the root's pid: all state
//! restored, nothing resumed), `network-unlock`, `pre-resume`, `post-resume`
//! (the tree runs). `orphan-pts-master` ([`script_fd`], after
//! `post-setup-namespaces`): the master of a new pty pair whose slave the
//! tree holds where it held a slave of a master outside it, passed to the
//! client with the message (SCM_RIGHTS).

use std::cell::RefCell;
use std::os::fd::BorrowedFd;

/// What asks the client: the stage name, the pid upstream sends with it,
/// and an fd passed with the message.
pub type Handler = Box<dyn FnMut(&str, Option<i32>, Option<BorrowedFd<'_>>) -> Result<(), String>>;

thread_local! {
    static HANDLER: RefCell<Option<Handler>> = const { RefCell::new(None) };
}

/// Install (or with `None` remove) the handler.
pub fn set_handler(h: Option<Handler>) {
    HANDLER.with(|c| *c.borrow_mut() = h);
}

/// Whether a handler is set (the stages are asked).
pub fn active() -> bool {
    HANDLER.with(|c| c.borrow().is_some())
}

/// The engine reached stage `name`: ask the handler, if any.
pub fn script(name: &str, pid: Option<i32>) -> Result<(), String> {
    HANDLER.with(|c| match c.borrow_mut().as_mut() {
        Some(h) => h(name, pid, None).map_err(|e| format!("notify {name}: {e}")),
        None => Ok(()),
    })
}

/// Stage `name` with `fd` passed along. Without a handler: an error (the
/// fd would go nowhere).
pub fn script_fd(name: &str, fd: BorrowedFd<'_>) -> Result<(), String> {
    HANDLER.with(|c| match c.borrow_mut().as_mut() {
        Some(h) => h(name, None, Some(fd)).map_err(|e| format!("notify {name}: {e}")),
        None => Err(format!("notify {name}: no client to hand the fd to (an RPC request with notify_scripts)")),
    })
}

/// Whether a handler is installed (the RPC service's).
pub fn has_handler() -> bool {
    HANDLER.with(|c| c.borrow().is_some())
}
