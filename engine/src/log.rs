//! criu-style log: `(SS.uuuuuu) message`, warnings as `Warn  (file:line): `,
//! errors as `Error (file:line): `. Levels follow upstream's -v0..-v4:
//! 0 = nothing but messages, 1 = errors, 2 = warnings (the default),
//! 3 = info, 4 = debug. As upstream, the `(SS.uuuuuu) ` timestamp (seconds
//! since the log was set up) is printed from level 3 on, and messages
//! ([`pr_msg!`]: "Looks good.") go to stdout without prefix. The log goes
//! to the `-o` file (relative to the work dir) or stderr.

use std::io::Write;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::time::Instant;

pub const LOG_MSG: u32 = 0;
pub const LOG_ERROR: u32 = 1;
pub const LOG_WARN: u32 = 2;
pub const LOG_INFO: u32 = 3;
pub const LOG_DEBUG: u32 = 4;

struct Logger {
    start: Instant,
    level: u32,
    out: Mutex<Box<dyn Write + Send>>,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Set up the log once; later calls are ignored.
pub fn init(level: u32, out: Box<dyn Write + Send>) {
    let _ = LOGGER.set(Logger { start: Instant::now(), level, out: Mutex::new(out) });
}

pub fn level() -> u32 {
    LOGGER.get().map(|l| l.level).unwrap_or(LOG_WARN)
}

pub fn enabled(lvl: u32) -> bool {
    lvl <= level()
}

/// Write one line at `lvl` with a criu prefix.
pub fn write(lvl: u32, file: &str, line: u32, args: std::fmt::Arguments<'_>) {
    let Some(l) = LOGGER.get() else {
        if lvl <= LOG_WARN {
            eprintln!("{args}");
        }
        return;
    };
    if lvl > l.level {
        return;
    }
    let t = l.start.elapsed();
    let prefix = match lvl {
        LOG_ERROR => format!("Error ({file}:{line}): "),
        LOG_WARN => format!("Warn  ({file}:{line}): "),
        _ => String::new(),
    };
    // the line formatted first, then one write (the log file is unbuffered:
    // each piece would be a syscall of its own)
    let mut line = String::with_capacity(128);
    if l.level >= LOG_TIMESTAMP {
        let _ = std::fmt::Write::write_fmt(&mut line, format_args!("({:02}.{:06}) ", t.as_secs(), t.subsec_micros()));
    }
    let _ = std::fmt::Write::write_fmt(&mut line, format_args!("{prefix}{args}\n"));
    let mut o = l.out.lock().unwrap_or_else(|e| e.into_inner());
    let _ = o.write_all(line.as_bytes());
    let _ = o.flush();
}

/// From this level on, lines carry the `(SS.uuuuuu) ` timestamp (upstream's LOG_TIMESTAMP).
pub const LOG_TIMESTAMP: u32 = LOG_INFO;

/// A message for the user: stdout, no prefix, at every level (upstream's pr_msg).
pub fn msg(args: std::fmt::Arguments<'_>) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{args}");
    let _ = o.flush();
}

#[macro_export]
macro_rules! pr_msg { ($($a:tt)*) => { $crate::log::msg(format_args!($($a)*)) } }
#[macro_export]
macro_rules! pr_err { ($($a:tt)*) => { $crate::log::write($crate::log::LOG_ERROR, file!(), line!(), format_args!($($a)*)) } }
#[macro_export]
macro_rules! pr_warn { ($($a:tt)*) => { $crate::log::write($crate::log::LOG_WARN, file!(), line!(), format_args!($($a)*)) } }
#[macro_export]
macro_rules! pr_info { ($($a:tt)*) => { $crate::log::write($crate::log::LOG_INFO, file!(), line!(), format_args!($($a)*)) } }
#[macro_export]
macro_rules! pr_debug { ($($a:tt)*) => { $crate::log::write($crate::log::LOG_DEBUG, file!(), line!(), format_args!($($a)*)) } }

/// An error and every error under it (`source()`), joined with ": ", as
/// log lines and refusals show them.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
