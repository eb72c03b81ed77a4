//! How far a long operator command has got: a bar with an ETA on a terminal, a line per step in a log.
//!
//! `migrate-store`, `rotate-master-key`, `encrypt-store` and the sealing at `parley serve` start
//! all show progress the same way. On a terminal, a bar on stderr; when stderr is not a terminal
//! (a log file, systemd, a test), the bar is hidden and a line is printed when a pass starts and
//! at every tenth of it instead, so a log shows how far a run got before it stopped.

use std::sync::Mutex;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

/// Percent of a pass between two log lines.
const LOG_STEP_PERCENT: u64 = 10;

/// A progress display on stderr.
pub struct Progress {
    bar: ProgressBar,
    log: Mutex<LogLines>,
}

/// What the log lines need to remember between updates.
struct LogLines {
    label: String,
    /// The last tenth printed.
    step: u64,
    started: Instant,
}

impl Progress {
    /// A display of `total` items, at zero.
    pub fn new(total: u64) -> Self {
        let bar = ProgressBar::new(total).with_style(
            ProgressStyle::with_template("{msg:>16} [{bar:40}] {human_pos}/{human_len} ({eta} left)")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        Self {
            bar,
            log: Mutex::new(LogLines {
                label: String::new(),
                step: 0,
                started: Instant::now(),
            }),
        }
    }

    /// Whether stderr is not a terminal, so lines are printed instead of a bar.
    pub fn is_hidden(&self) -> bool {
        self.bar.is_hidden()
    }

    /// Names what is being done now (a table, say) without restarting the count.
    pub fn label(&self, label: &str) {
        self.bar.set_message(label.to_owned());
        self.log.lock().expect("progress lock").label = label.to_owned();
    }

    /// Starts a pass of its own: `label`, `done` of `total` already (left by an earlier run).
    pub fn pass(&self, label: &str, done: u64, total: u64) {
        self.bar.reset();
        self.bar.set_length(total);
        self.bar.set_position(done);
        self.bar.set_message(label.to_owned());
        let mut log = self.log.lock().expect("progress lock");
        log.label = label.to_owned();
        log.step = percent(done, total) / LOG_STEP_PERCENT;
        log.started = Instant::now();
        if self.bar.is_hidden() {
            eprintln!("{label}: {done} of {total} done at the start");
        }
    }

    /// Adds `n` items done.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
        self.log_step();
    }

    /// Sets the items done and the total (which may move while a pass runs).
    pub fn set(&self, done: u64, total: u64) {
        self.bar.set_length(total);
        self.bar.set_position(done);
        self.log_step();
    }

    /// Items done so far.
    pub fn position(&self) -> u64 {
        self.bar.position()
    }

    /// Prints a line in a log; on a terminal the bar says it already.
    pub fn note(&self, line: &str) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        }
    }

    /// Removes the bar, leaving the terminal to what follows.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    fn log_step(&self) {
        if !self.bar.is_hidden() {
            return;
        }
        let (done, total) = (self.bar.position(), self.bar.length().unwrap_or(0));
        let step = percent(done, total) / LOG_STEP_PERCENT;
        let mut log = self.log.lock().expect("progress lock");
        if step > log.step {
            log.step = step;
            eprintln!(
                "{}: {}% ({done} of {total}) after {:.1?}",
                log.label,
                percent(done, total),
                log.started.elapsed()
            );
        }
    }
}

/// `done` of `total` in whole percent; an empty pass is complete.
fn percent(done: u64, total: u64) -> u64 {
    (done.min(total) * 100).checked_div(total).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_is_whole_capped_and_full_for_nothing_to_do() {
        assert_eq!(percent(0, 3000), 0);
        assert_eq!(percent(299, 3000), 9);
        assert_eq!(percent(300, 3000), 10);
        assert_eq!(percent(4000, 3000), 100);
        assert_eq!(percent(0, 0), 100);
    }
}
