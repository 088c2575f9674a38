//! `jobd submit`'s progress on standard error: a bar redrawn in place on a terminal,
//! plain lines every few seconds otherwise.

use std::io::{IsTerminal as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A progress reporter running on a thread of its own until [`Progress::finish`].
pub(super) struct Progress {
    done: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Progress {
    /// Reports `lines()` against `total` (when the input's size is known).
    pub fn start(lines: impl Fn() -> u64 + Send + 'static, total: Option<u64>) -> Progress {
        let done = Arc::new(AtomicBool::new(false));
        let terminal = std::io::stderr().is_terminal();
        let thread = {
            let done = done.clone();
            std::thread::spawn(move || report(&lines, total, terminal, &done))
        };
        Progress { done, thread }
    }

    pub fn finish(self) {
        self.done.store(true, Ordering::Release);
        self.thread.thread().unpark();
        drop(self.thread.join());
    }
}

fn report(lines: &dyn Fn() -> u64, total: Option<u64>, terminal: bool, done: &AtomicBool) {
    let started = Instant::now();
    let every = if terminal { Duration::from_millis(250) } else { Duration::from_secs(5) };
    loop {
        std::thread::park_timeout(every);
        let finished = done.load(Ordering::Acquire);
        let line = describe(lines(), total, started.elapsed());
        let mut stderr = std::io::stderr().lock();
        if terminal {
            // Returns to the line's start and clears it, so each report replaces the last.
            drop(write!(stderr, "\r\x1b[2K{line}"));
            if finished {
                drop(writeln!(stderr));
            }
        } else if !finished {
            drop(writeln!(stderr, "{line}"));
        }
        drop(stderr.flush());
        if finished {
            return;
        }
    }
}

/// `[#####.....] 45000/100000 lines  21300/s  ETA 3s`, or without a bar when the total is
/// unknown (standard input).
fn describe(lines: u64, total: Option<u64>, elapsed: Duration) -> String {
    let rate = lines as f64 / elapsed.as_secs_f64().max(0.001);
    match total {
        Some(total) if total > 0 => {
            let filled = ((lines.min(total) * 30) / total) as usize;
            let eta = if rate > 0.0 { (total.saturating_sub(lines)) as f64 / rate } else { 0.0 };
            format!(
                "[{}{}] {lines}/{total} lines  {rate:.0}/s  ETA {eta:.0}s",
                "#".repeat(filled),
                ".".repeat(30 - filled)
            )
        }
        _ => format!("{lines} lines  {rate:.0}/s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_shows_lines_rate_and_eta() {
        let line = describe(50, Some(100), Duration::from_secs(5));
        assert_eq!(line, format!("[{}{}] 50/100 lines  10/s  ETA 5s", "#".repeat(15), ".".repeat(15)));
        assert_eq!(describe(30, None, Duration::from_secs(3)), "30 lines  10/s");
    }
}
