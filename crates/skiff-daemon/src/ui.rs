//! Progress display on stderr: a spinner on a terminal, plain lines otherwise.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

pub struct StepProgress {
    bar: Option<ProgressBar>,
    quiet: bool,
    /// The current step's message, which byte counts are shown after.
    step: std::sync::Mutex<String>,
}

impl StepProgress {
    pub fn new(quiet: bool) -> StepProgress {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        StepProgress {
            bar,
            quiet,
            step: std::sync::Mutex::new(String::new()),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl skiff_image::Progress for StepProgress {
    fn step(&self, message: &str) {
        match &self.bar {
            Some(bar) => {
                bar.println(format!("skiff: {message}"));
                bar.set_message(message.to_owned());
                *self.step.lock().unwrap_or_else(|p| p.into_inner()) = message.to_owned();
            }
            None if !self.quiet => eprintln!("skiff: {}...", message.trim_end_matches('.')),
            None => {}
        }
    }

    /// On a terminal only: lines for byte counts would flood a log.
    fn bytes(&self, done: u64, total: u64) {
        if let Some(bar) = &self.bar {
            let step = self.step.lock().unwrap_or_else(|p| p.into_inner());
            bar.set_message(format!(
                "{step}: {} of {}",
                skiff_image::human_size(done),
                skiff_image::human_size(total)
            ));
        }
    }
}

impl Drop for StepProgress {
    fn drop(&mut self) {
        self.finish();
    }
}
