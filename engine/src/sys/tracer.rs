//! Engine threads that run jobs for the rest of the engine and stay alive
//! between them ("tracer threads"): a ptrace request must come from the
//! thread that seized the tracee, so a process seized by one of these
//! threads is injected into, read and released by jobs sent to that same
//! thread (the dump of a tree on several CPUs: `dump::freeze`).
//!
//! Jobs may borrow from the caller: [`run_all`] returns only once every job
//! it handed out has finished or been dropped unrun, so nothing a job
//! borrows can go away while the job still holds it (the same contract as
//! `std::thread::scope`).

use std::any::Any;
use std::sync::mpsc;
use std::thread::ThreadId;

/// A job as the thread's queue holds it.
type Job = Box<dyn FnOnce() + Send + 'static>;

/// One tracer thread (a handle: clones send to the same thread). The
/// thread ends once every handle is gone and its queue is empty.
#[derive(Clone, Debug)]
pub struct Tracer {
    idx: usize,
    tx: mpsc::Sender<Job>,
    thread: ThreadId,
}

/// Why a job gave no result.
#[derive(Debug)]
pub enum Lost {
    /// It panicked (the message, when it was a string).
    Panicked(String),
    /// Its thread could not take it.
    Gone,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::Panicked(m) => write!(f, "an engine tracer thread panicked: {m}"),
            Lost::Gone => write!(f, "an engine tracer thread is gone"),
        }
    }
}

fn panic_text(p: &(dyn Any + Send)) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default()
}

impl Tracer {
    /// Start tracer thread number `idx`, pinned to `cpu` when given.
    pub fn spawn(idx: usize, cpu: Option<usize>) -> std::io::Result<Tracer> {
        let (tx, rx) = mpsc::channel::<Job>();
        let h = std::thread::Builder::new().name(format!("criu-tracer-{idx}")).spawn(move || {
            if let Some(c) = cpu {
                let _ = super::process::sched_setaffinity(0, &super::process::one_cpu(c));
            }
            // (a job catches its own panic: see run_all)
            while let Ok(job) = rx.recv() {
                job();
            }
        })?;
        Ok(Tracer { idx, thread: h.thread().id(), tx })
    }

    /// Its number.
    pub fn idx(&self) -> usize {
        self.idx
    }

    /// Whether the calling thread is this tracer thread.
    pub fn is_current(&self) -> bool {
        std::thread::current().id() == self.thread
    }

    /// Run `f` on this thread (directly when called from it) and wait for
    /// its result.
    pub fn run<'a, R: Send + 'a>(&self, f: impl FnOnce() -> R + Send + 'a) -> Result<R, Lost> {
        run_all(vec![(Some(self), Box::new(f) as Box<dyn FnOnce() -> R + Send + 'a>)]).pop().unwrap_or(Err(Lost::Gone))
    }
}

/// A job for [`run_all`]: the thread it must run on (`None`: the calling
/// thread) and the job.
pub type Work<'t, 'a, R> = (Option<&'t Tracer>, Box<dyn FnOnce() -> R + Send + 'a>);

/// Run every job on its thread, all at once (each thread takes its jobs in
/// the order given; the caller's own, `None` or its own tracer, run here
/// after the others were handed out), and return their results in the
/// order given once every one has finished.
pub fn run_all<'a, R: Send + 'a>(jobs: Vec<Work<'_, 'a, R>>) -> Vec<Result<R, Lost>> {
    let n = jobs.len();
    let (rtx, rrx) = mpsc::channel::<(usize, Result<R, Lost>)>();
    let mut here = Vec::new();
    for (k, (t, f)) in jobs.into_iter().enumerate() {
        let Some(t) = t.filter(|t| !t.is_current()) else {
            here.push((k, f));
            continue;
        };
        let rtx = rtx.clone();
        let job: Box<dyn FnOnce() + Send + 'a> = Box::new(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| Lost::Panicked(panic_text(&*p)));
            let _ = rtx.send((k, r));
        });
        // SAFETY: the job may borrow data that lives for 'a only; it is
        // made 'static just to pass through the thread's queue. This
        // function does not return before the job is gone: every job
        // holds a clone of `rtx`, which it drops when it has run (after
        // sending its result) or when it is dropped unrun (the queue of a
        // thread that ended, or the job given back by a failed send), and
        // the loop below waits until every clone is dropped (`recv` fails
        // only then). A job's own panic is caught inside it, so a thread
        // never unwinds out of its queue with a job half run. So no
        // borrow of 'a is used after this function returns.
        let job: Job = unsafe { std::mem::transmute::<Box<dyn FnOnce() + Send + 'a>, Job>(job) };
        if let Err(mpsc::SendError(job)) = t.tx.send(job) {
            drop(job);
        }
    }
    drop(rtx);
    let mut out: Vec<Option<Result<R, Lost>>> = (0..n).map(|_| None).collect();
    for (k, f) in here {
        out[k] = Some(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| Lost::Panicked(panic_text(&*p))));
    }
    while let Ok((k, r)) = rrx.recv() {
        out[k] = Some(r);
    }
    out.into_iter().map(|r| r.unwrap_or(Err(Lost::Gone))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_on_their_threads_and_borrow() {
        let a = Tracer::spawn(0, None).unwrap();
        let b = Tracer::spawn(1, None).unwrap();
        let mut data = vec![1u64, 2, 3];
        let (x, y) = data.split_at_mut(1);
        let ids: Vec<Result<(ThreadId, u64), Lost>> = run_all(vec![
            (Some(&a), Box::new(|| {
                x[0] += 10;
                (std::thread::current().id(), x[0])
            })),
            (Some(&b), Box::new(|| {
                y[0] += 20;
                (std::thread::current().id(), y[0])
            })),
            (None, Box::new(|| (std::thread::current().id(), 0))),
        ]);
        let ids: Vec<(ThreadId, u64)> = ids.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(ids[0], (a.thread, 11));
        assert_eq!(ids[1], (b.thread, 22));
        assert_eq!(ids[2].0, std::thread::current().id());
        assert_eq!(data, vec![11, 22, 3]);
        assert!(a.run(|| a.is_current()).unwrap());
        let p = a.run(|| -> u32 { panic!("boom") });
        assert!(matches!(p, Err(Lost::Panicked(ref m)) if m == "boom"));
        // still serving after a panic
        assert_eq!(a.run(|| 5).unwrap(), 5);
    }
}
