//! Progress bars: one per task (its state, as a step of five) and one for all of them
//! (tasks final). Drawn on stderr, and only when a person is watching: hidden when stdout
//! or stderr is not a terminal, and with `--json`.

use std::collections::HashMap;
use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::follow::Snapshot;
use crate::domain::TaskState;

/// Steps of a task's bar: queued, submitting, submitted, running, ingesting, final.
const STEPS: u64 = 5;

fn step(state: TaskState) -> u64 {
    match state {
        TaskState::Queued => 0,
        TaskState::Submitting => 1,
        TaskState::Submitted => 2,
        TaskState::Running => 3,
        TaskState::Ingesting => 4,
        TaskState::Succeeded | TaskState::Failed | TaskState::Canceled | TaskState::Expired => {
            STEPS
        }
    }
}

pub struct Progress {
    /// Draws the bars together; kept with them.
    _multi: MultiProgress,
    overall: ProgressBar,
    tasks: HashMap<String, ProgressBar>,
}

impl Progress {
    /// Bars for `ids`; drawn only when `show` and both outputs are terminals.
    pub fn new(ids: &[String], show: bool) -> Self {
        let visible = show && std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        let target = if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let multi = MultiProgress::with_draw_target(target);
        let task_style = ProgressStyle::with_template("{prefix} [{bar:20.cyan/blue}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let overall_style =
            ProgressStyle::with_template("{prefix:>38} [{bar:20.green}] {pos}/{len} final {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        let tasks = ids
            .iter()
            .map(|id| {
                let bar = multi.add(ProgressBar::new(STEPS));
                bar.set_style(task_style.clone());
                bar.set_prefix(id.clone());
                bar.set_message("queued");
                (id.clone(), bar)
            })
            .collect();
        let overall = multi.add(ProgressBar::new(ids.len() as u64));
        overall.set_style(overall_style);
        overall.set_prefix("all tasks");
        Self {
            _multi: multi,
            overall,
            tasks,
        }
    }

    pub fn update(&self, snapshot: &Snapshot) {
        let Some(bar) = self.tasks.get(&snapshot.task_id) else {
            return;
        };
        bar.set_position(step(snapshot.state));
        let mut message = snapshot.state.as_str().to_owned();
        if let Some(code) = &snapshot.error_code {
            message = format!("{message} ({code})");
        }
        bar.set_message(message);
        if snapshot.state.is_terminal() && !bar.is_finished() {
            bar.finish();
            self.overall.inc(1);
        }
    }

    /// A note on one task's bar (a download under way, its file).
    pub fn note(&self, task_id: &str, message: String) {
        if let Some(bar) = self.tasks.get(task_id) {
            bar.set_message(message);
        }
    }

    /// Leaves the bars as they last were drawn.
    pub fn finish(&self) {
        for bar in self.tasks.values() {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
        self.overall.finish();
    }
}
