//! Progress reporting. Pipeline stages report through the `Reporter` trait and never draw; the
//! CLI picks the implementation (bars on a terminal, plain lines otherwise, nothing for `--json`).

use std::io::{IsTerminal, Read, Write};
use std::sync::Arc;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub trait Reporter: Send + Sync {
    /// A one-line status for humans (stderr).
    fn status(&self, message: &str);
    /// A task with a byte count, such as a download or a layer being written.
    fn task(&self, label: &str, total: Option<u64>) -> Arc<dyn Task>;
    /// Something the user should know about a result that is still made (stderr, prefixed
    /// `warning:`); shown also with `--json` and `--quiet`, which silence only progress.
    fn warn(&self, message: &str) {
        self.status(&format!("warning: {message}"));
    }
}

/// Shared between the reader that moves the bytes and the code that started the task.
pub trait Task: Send + Sync {
    fn advance(&self, bytes: u64);
    fn set_total(&self, total: u64);
    fn set_position(&self, position: u64);
}

/// Bars on a terminal (one line each, drawn together so that concurrent downloads never
/// interleave); plain status lines when stderr is not one.
pub(crate) struct HumanReporter {
    bars: Option<MultiProgress>,
}

impl HumanReporter {
    pub(crate) fn new() -> Self {
        let bars =
            std::io::stderr().is_terminal().then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        HumanReporter { bars }
    }
}

impl Default for HumanReporter {
    fn default() -> Self {
        Self::new()
    }
}

impl Reporter for HumanReporter {
    fn status(&self, message: &str) {
        match &self.bars {
            Some(bars) => {
                let _ = bars.println(message);
            }
            // Never a panic when nobody reads stderr any more (`2>&1 | head`): the work goes on.
            None => {
                let _ = writeln!(std::io::stderr(), "{message}");
            }
        }
    }

    fn task(&self, label: &str, total: Option<u64>) -> Arc<dyn Task> {
        let Some(bars) = &self.bars else {
            let _ = writeln!(std::io::stderr(), "{label}");
            return Arc::new(NoTask);
        };
        let bar = bars.add(ProgressBar::with_draw_target(total, ProgressDrawTarget::hidden()));
        let style =
            ProgressStyle::with_template("{msg:40!} {bar:30} {bytes:>10}/{total_bytes:10} {bytes_per_sec:>12} {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_message(label.to_string());
        Arc::new(BarTask(bar))
    }
}

struct BarTask(ProgressBar);

impl Task for BarTask {
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
    fn set_total(&self, total: u64) {
        self.0.set_length(total);
    }
    fn set_position(&self, position: u64) {
        self.0.set_position(position);
    }
}

impl Drop for BarTask {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// Reports nothing: `--json` and `--quiet`.
pub(crate) struct SilentReporter;

impl Reporter for SilentReporter {
    fn status(&self, _message: &str) {}
    fn warn(&self, message: &str) {
        let _ = writeln!(std::io::stderr(), "warning: {message}");
    }
    fn task(&self, _label: &str, _total: Option<u64>) -> Arc<dyn Task> {
        Arc::new(NoTask)
    }
}

struct NoTask;

impl Task for NoTask {
    fn advance(&self, _bytes: u64) {}
    fn set_total(&self, _total: u64) {}
    fn set_position(&self, _position: u64) {}
}

/// A reader that advances a task by every byte it reads.
pub(crate) struct ProgressReader<R> {
    inner: R,
    task: Arc<dyn Task>,
}

impl<R> ProgressReader<R> {
    pub(crate) fn new(inner: R, task: Arc<dyn Task>) -> Self {
        ProgressReader { inner, task }
    }
}

impl<R: Read> Read for ProgressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.task.advance(n as u64);
        Ok(n)
    }
}
