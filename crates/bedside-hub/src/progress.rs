//! Byte progress for downloads and copies: an indicatif bar with rate and ETA on a terminal, a
//! plain line every few seconds otherwise (a log file or CI shows that work goes on).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How often the plain line is written when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    total: Option<u64>,
    pos: u64,
    started: Instant,
    start_pos: u64,
    last_line: Instant,
}

impl Progress {
    /// `what` names the file; `start` is where a resumed transfer begins.
    pub fn new(what: &str, total: Option<u64>, start: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = match total {
                Some(t) => ProgressBar::new(t),
                None => ProgressBar::new_spinner(),
            };
            let template = if total.is_some() {
                "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, ETA {eta})"
            } else {
                "{msg} {spinner} {bytes} ({bytes_per_sec})"
            };
            b.set_style(ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> "));
            b.set_message(what.to_string());
            b.set_position(start);
            b.reset_eta();
            b
        });
        let now = Instant::now();
        Progress { bar, label: what.to_string(), total, pos: start, started: now, start_pos: start, last_line: now }
    }

    pub fn set(&mut self, pos: u64) {
        self.pos = pos;
        if let Some(b) = &self.bar {
            b.set_position(pos);
        } else if self.last_line.elapsed() >= PLAIN_EVERY {
            self.last_line = Instant::now();
            eprintln!("{}", self.line());
        }
    }

    pub fn inc(&mut self, n: u64) {
        self.set(self.pos.saturating_add(n));
    }

    /// `label: 12.0 MB of 45.0 MB (27%), 5.1 MB/s, ETA 7s`.
    fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = (self.pos - self.start_pos.min(self.pos)) as f64 / secs;
        match self.total {
            Some(t) if t > 0 => {
                let eta = if rate > 0.0 { format!("{:.0}s", t.saturating_sub(self.pos) as f64 / rate) } else { "?".into() };
                format!(
                    "{}: {} of {} ({:.0}%), {}/s, ETA {eta}",
                    self.label,
                    crate::human_bytes(self.pos),
                    crate::human_bytes(t),
                    100.0 * self.pos as f64 / t as f64,
                    crate::human_bytes(rate as u64)
                )
            }
            _ => format!("{}: {}, {}/s", self.label, crate::human_bytes(self.pos), crate::human_bytes(rate as u64)),
        }
    }

    pub fn finish(self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
