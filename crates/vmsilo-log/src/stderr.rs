//! The daemons' stderr logger for the `log` facade, configured per program:
//!
//! - every line is `NAME: level: message` (`NAME[pid]: ...` with [`Logger::with_pid`]);
//! - [`Logger::journal_priority`]: under systemd (`JOURNAL_STREAM` set) a line is
//!   `<prio>level: message` instead, so the journal records the level (it adds the name);
//! - [`Logger::rate_limited`]: at most a burst per window for the whole process, then one
//!   `NAME: warn: N log lines dropped (rate limit)` line before the next line let through;
//! - [`Logger::escaping`]: the message goes through an escaping function (such as
//!   `vmsilo_proto::text::escape`) because it may carry text a guest chose;
//! - [`Logger::foreign_max`]: records of other crates (targets not starting with the
//!   program's own) are kept only up to a level (libraries chatty at info/debug).
//!
//! [`Logger::format`] is pure (time and pid passed in), so each program's lines are tested
//! here; [`Logger::install`] puts the logger behind the facade.

use std::borrow::Cow;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use log::{Level, Log, Metadata, Record};

use crate::Limiter;

/// Escapes a message before it is written.
pub type Escape = fn(&str) -> Cow<'_, str>;

/// A stderr logger; build it with the `with`-style methods, then [`Logger::install`] it.
#[derive(Debug)]
pub struct Logger {
    name: &'static str,
    pid: bool,
    journal_priority: bool,
    journal: bool,
    foreign: Option<(&'static str, Level)>,
    escape: Option<Escape>,
    limiter: Option<Mutex<Limiter>>,
}

impl Logger {
    /// Lines `name: level: message`.
    pub const fn new(name: &'static str) -> Self {
        Logger {
            name,
            pid: false,
            journal_priority: false,
            journal: false,
            foreign: None,
            escape: None,
            limiter: None,
        }
    }

    /// `name[pid]: ...`.
    pub const fn with_pid(mut self) -> Self {
        self.pid = true;
        self
    }

    /// Under systemd (`JOURNAL_STREAM` set when installed): `<prio>level: message`.
    pub const fn journal_priority(mut self) -> Self {
        self.journal_priority = true;
        self
    }

    /// Records whose target does not start with `own` are kept only up to `max`.
    pub const fn foreign_max(mut self, own: &'static str, max: Level) -> Self {
        self.foreign = Some((own, max));
        self
    }

    /// Messages go through `escape`.
    pub const fn escaping(mut self, escape: Escape) -> Self {
        self.escape = Some(escape);
        self
    }

    /// At most `burst` lines per `window` for the whole process.
    pub const fn rate_limited(mut self, burst: u32, window: Duration) -> Self {
        self.limiter = Some(Mutex::new(Limiter::new(burst, window)));
        self
    }

    /// Whether this logger writes `record` at all (level and target; not the rate limit).
    fn wanted(&self, level: Level, target: &str) -> bool {
        if level > log::max_level() {
            return false;
        }
        match self.foreign {
            Some((own, max)) => target.starts_with(own) || level <= max,
            None => true,
        }
    }

    fn prefix(&self, pid: u32) -> Cow<'static, str> {
        if self.pid {
            Cow::Owned(format!("{}[{pid}]: ", self.name))
        } else {
            Cow::Owned(format!("{}: ", self.name))
        }
    }

    /// The text written for one message of `level` (one or two lines), given how many lines
    /// were dropped before it. Pure: no clock, no rate limit, no level filter.
    pub fn format(&self, level: Level, message: &str, dropped: u64, pid: u32) -> String {
        let text = match self.escape {
            Some(escape) => escape(message),
            None => Cow::Borrowed(message),
        };
        let level_name = level.as_str().to_lowercase();
        let mut out = String::new();
        if self.journal {
            if dropped > 0 {
                out.push_str(&format!(
                    "<4>warn: {dropped} log lines dropped (rate limit)\n"
                ));
            }
            out.push_str(&format!("<{}>{level_name}: {text}\n", priority(level)));
            return out;
        }
        let prefix = self.prefix(pid);
        if dropped > 0 {
            out.push_str(&format!(
                "{prefix}warn: {dropped} log lines dropped (rate limit)\n"
            ));
        }
        out.push_str(&format!("{prefix}{level_name}: {text}\n"));
        out
    }

    /// Installs this logger behind the `log` facade (`JOURNAL_STREAM` is read now) and
    /// returns whether it was installed: `false` if a logger already was (the first stays).
    /// The level is the caller's (`log::set_max_level`).
    pub fn install(mut self) -> bool {
        self.journal = self.journal_priority && std::env::var_os("JOURNAL_STREAM").is_some();
        let logger: &'static Logger = Box::leak(Box::new(self));
        log::set_logger(logger).is_ok()
    }
}

/// The syslog priority of a level.
fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.wanted(metadata.level(), metadata.target())
    }

    fn log(&self, record: &Record<'_>) {
        if !self.wanted(record.level(), record.target()) {
            return;
        }
        let dropped = match &self.limiter {
            Some(limiter) => match limiter.lock() {
                Ok(mut l) => match l.allow(Instant::now()) {
                    Some(dropped) => dropped,
                    None => return,
                },
                Err(_) => 0,
            },
            None => 0,
        };
        let message = record.args().to_string();
        let line = self.format(record.level(), &message, dropped, std::process::id());
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escape_newlines(text: &str) -> Cow<'_, str> {
        Cow::Owned(text.replace('\n', "\\n"))
    }

    #[test]
    fn test_gate_style_lines_carry_the_pid_escape_and_say_what_was_dropped() {
        let l = Logger::new("vmsilo-gate")
            .with_pid()
            .escaping(escape_newlines);
        assert_eq!(
            l.format(Level::Warn, "bad\nbind", 0, 42),
            "vmsilo-gate[42]: warn: bad\\nbind\n"
        );
        assert_eq!(
            l.format(Level::Info, "x", 3, 42),
            "vmsilo-gate[42]: warn: 3 log lines dropped (rate limit)\nvmsilo-gate[42]: info: x\n"
        );
    }

    #[test]
    fn test_plain_lines_have_the_name_and_the_level() {
        let l = Logger::new("vmsilo-balloond").journal_priority();
        assert_eq!(
            l.format(Level::Error, "boom", 0, 1),
            "vmsilo-balloond: error: boom\n"
        );
        assert_eq!(
            l.format(Level::Trace, "t", 0, 1),
            "vmsilo-balloond: trace: t\n"
        );
    }

    #[test]
    fn test_under_the_journal_lines_start_with_the_syslog_priority() {
        let mut l = Logger::new("vmsilo-balloond").journal_priority();
        l.journal = true;
        assert_eq!(l.format(Level::Warn, "w", 0, 1), "<4>warn: w\n");
        assert_eq!(l.format(Level::Error, "e", 0, 1), "<3>error: e\n");
        assert_eq!(l.format(Level::Info, "i", 0, 1), "<6>info: i\n");
        assert_eq!(l.format(Level::Debug, "d", 0, 1), "<7>debug: d\n");
    }

    #[test]
    fn test_foreign_records_are_kept_only_up_to_their_level() {
        log::set_max_level(log::LevelFilter::Trace);
        let l = Logger::new("vm-switch").foreign_max("vm_switch", Level::Warn);
        assert!(l.wanted(Level::Debug, "vm_switch::backend"));
        assert!(l.wanted(Level::Warn, "vhost_user_backend"));
        assert!(!l.wanted(Level::Info, "vhost_user_backend"));
        let plain = Logger::new("vmsilo-gate");
        assert!(plain.wanted(Level::Trace, "wl_proxy"));
    }
}
