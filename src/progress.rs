//! Progress of the offline maintenance commands (`reindex`, `migrate-db`) on stderr: a bar
//! for a person at a terminal, otherwise a plain line every few seconds (and none for a
//! short run), so logs and pipes get a readable record instead of control codes.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a plain progress line is written when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(2);

pub struct Progress {
    /// The command, leading every line (`reindex`).
    label: &'static str,
    /// What is counted, after the counts (`records read`).
    unit: &'static str,
    bar: Option<ProgressBar>,
    show: bool,
    total: u64,
    done: u64,
    last_line: Instant,
}

impl Progress {
    /// Progress towards `total` items; nothing is shown unless `show`.
    pub fn new(label: &'static str, unit: &'static str, total: u64, show: bool) -> Self {
        let bar = (show && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(&format!(
                    "{label} [{{bar:30.green}}] {{pos}}/{{len}} {unit} {{msg}} ({{eta}} left)"
                ))
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar
        });
        Self {
            label,
            unit,
            bar,
            show,
            total,
            done: 0,
            last_line: Instant::now(),
        }
    }

    /// `items` more are done; `msg` says how it goes.
    pub fn advance(&mut self, items: u64, msg: &str) {
        self.done += items;
        if let Some(bar) = &self.bar {
            bar.set_position(self.done);
            bar.set_message(msg.to_owned());
        } else if self.show && self.last_line.elapsed() >= LINE_EVERY {
            self.last_line = Instant::now();
            let _ = writeln!(
                std::io::stderr(),
                "{}: {}/{} {}, {msg}",
                self.label,
                self.done,
                self.total,
                self.unit
            );
        }
    }

    /// Clears the bar (the summary follows on stdout).
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
