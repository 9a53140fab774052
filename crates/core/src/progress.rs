//! Progress of a long stage, wherever its output goes: a bar on a terminal; otherwise (a pipe,
//! a log file, CI, a Slurm job) one line every few seconds with done/total, rate and ETA, sent
//! through the `log` crate so that the runner decides where it lands (and copies it to the run
//! log). Stages only count.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Seconds between two progress lines off a terminal: `LLMEMBED_PROGRESS_SECS` (default 5; 0
/// prints a line at every step, which tests use).
fn line_interval() -> Duration {
    let secs = std::env::var("LLMEMBED_PROGRESS_SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .unwrap_or(5.0);
    Duration::from_secs_f64(secs)
}

enum Display {
    Hidden,
    Bar(ProgressBar),
    Lines { interval: Duration },
}

struct Counts {
    done: u64,
    message: String,
    last_line: Instant,
}

/// Counts a stage's items; made by [`crate::Context::progress`].
pub struct Progress {
    what: String,
    total: u64,
    started: Instant,
    display: Display,
    counts: Mutex<Counts>,
}

impl Progress {
    /// A bar on a terminal, lines otherwise; nothing when `quiet`.
    pub fn new(total: u64, what: &str, quiet: bool) -> Progress {
        let display = if quiet {
            Display::Hidden
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "  {prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            bar.set_prefix(what.to_string());
            Display::Bar(bar)
        } else {
            Display::Lines {
                interval: line_interval(),
            }
        };
        let started = Instant::now();
        Progress {
            what: what.to_string(),
            total,
            started,
            display,
            counts: Mutex::new(Counts {
                done: 0,
                message: String::new(),
                last_line: started,
            }),
        }
    }

    /// `n` more items done.
    pub fn inc(&self, n: u64) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.done += n;
        match &self.display {
            Display::Hidden => {}
            Display::Bar(bar) => bar.inc(n),
            Display::Lines { interval } => {
                if counts.last_line.elapsed() >= *interval && counts.done < self.total {
                    counts.last_line = Instant::now();
                    log::info!("{}", self.line(&counts));
                }
            }
        }
    }

    /// A short figure shown after the counts ("1,234 tok/s", "loss 0.53").
    pub fn set_message(&self, message: String) {
        if let Display::Bar(bar) = &self.display {
            bar.set_message(message.clone());
        }
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .message = message;
    }

    /// Removes the bar; off a terminal, prints the last line (the total and the time taken).
    pub fn finish(&self) {
        match &self.display {
            Display::Hidden => {}
            Display::Bar(bar) => bar.finish_and_clear(),
            Display::Lines { .. } => {
                let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
                log::info!("{}", self.line(&counts));
            }
        }
    }

    /// `  extract 1200/2500 (48%) 61.2/s eta 21s 2,345 tok/s`.
    fn line(&self, counts: &Counts) -> String {
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 {
            counts.done as f64 / secs
        } else {
            0.0
        };
        let percent = (100 * counts.done).checked_div(self.total).unwrap_or(100);
        let when = if counts.done >= self.total {
            format!("done in {secs:.1}s")
        } else if rate > 0.0 {
            format!("eta {:.0}s", (self.total - counts.done) as f64 / rate)
        } else {
            "eta ?".to_string()
        };
        let mut line = format!(
            "  {} {}/{} ({percent}%) {rate:.1}/s {when}",
            self.what, counts.done, self.total
        );
        if !counts.message.is_empty() {
            line.push(' ');
            line.push_str(&counts.message);
        }
        line
    }
}
