//! Rendering progress events: progress bars when stderr is a terminal (and not verbose),
//! plain timestamped lines otherwise. Test result lines go to stdout.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::report::{Event, Reporter};
use crate::testing::TestResult;

pub struct Renderer {
    verbose: bool,
    bars: Option<MultiProgress>,
    active: Mutex<Vec<(String, ProgressBar)>>,
    /// Test lines go to stdout, unless stdout is reserved for JSON.
    tests_on_stdout: std::sync::atomic::AtomicBool,
    /// Plain mode: when each build last printed a progress line.
    last_progress: Mutex<Vec<(String, Instant)>>,
}

/// Plain mode prints a running build's current step at most this often.
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(10);

impl Renderer {
    pub fn new(verbose: bool) -> Renderer {
        let fancy = std::io::stderr().is_terminal() && !verbose && std::env::var_os("CI").is_none();
        Renderer {
            verbose,
            bars: fancy.then(MultiProgress::new),
            active: Mutex::new(Vec::new()),
            last_progress: Mutex::new(Vec::new()),
            tests_on_stdout: std::sync::atomic::AtomicBool::new(true),
        }
    }

    fn line(&self, text: &str) {
        match &self.bars {
            Some(bars) => {
                let _ = bars.println(text);
            }
            None => {
                let secs = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
                eprintln!("[{h:02}:{m:02}:{s:02}] {text}");
            }
        }
    }

    fn bar(&self, name: &str, message: &str) {
        let Some(bars) = &self.bars else { return };
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, bar)) = active.iter().find(|(n, _)| n == name) {
            bar.set_message(format!("{name}: {message}"));
            return;
        }
        let bar = bars.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed}] {wide_msg}")
                .expect("valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        bar.set_message(format!("{name}: {message}"));
        active.push((name.to_string(), bar));
    }

    fn end_bar(&self, name: &str) {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = active.iter().position(|(n, _)| n == name) {
            let (_, bar) = active.remove(i);
            bar.finish_and_clear();
        }
    }

    /// Whether a plain-mode progress line for `name` is due (rate-limited).
    fn progress_due(&self, name: &str) -> bool {
        let mut last = self.last_progress.lock().unwrap_or_else(|e| e.into_inner());
        match last.iter_mut().find(|(n, _)| n == name) {
            Some((_, at)) if at.elapsed() < PLAIN_PROGRESS_EVERY => false,
            Some((_, at)) => {
                *at = Instant::now();
                true
            }
            None => {
                last.push((name.to_string(), Instant::now()));
                true
            }
        }
    }

    pub fn finish(&self) {
        for (_, bar) in self
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            bar.finish_and_clear();
        }
    }

    /// Sends test lines to stderr, keeping stdout for machine-readable output.
    pub fn tests_to_stderr(&self) {
        self.tests_on_stdout
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Prints one finished test to stdout (stderr with `--json`).
    pub fn test_line(&self, recipe: &str, result: &TestResult, cached: bool) {
        let text = self.test_text(recipe, result, cached);
        self.print_test(&text);
    }

    /// The test's lines. Names, reasons and fio's job names come from the guest: their
    /// control characters are shown escaped (`\u{1b}`, `\n`), so a test can neither
    /// recolour the terminal nor forge a result line.
    fn test_text(&self, recipe: &str, result: &TestResult, cached: bool) -> String {
        let mut text = format!(
            "{:<7} {recipe}/{} ({:.2}s)",
            result.status.name().to_uppercase(),
            printable(&result.name),
            result.duration
        );
        if let Some(reason) = &result.reason {
            text.push_str(&format!(": {}", printable(reason)));
        }
        if cached {
            text.push_str(" [cached]");
        }
        for sub in &result.subtests {
            text.push_str(&format!(
                "\n  {:<7} {}",
                sub.status.name().to_uppercase(),
                printable(&sub.name)
            ));
        }
        for job in &result.fio {
            for io in &job.io {
                text.push_str(&format!(
                    "\n  fio {} {}: {:.0} IOPS, {:.1} MiB/s, clat p50 {} p99 {}",
                    printable(&job.name),
                    printable(&io.direction),
                    io.iops,
                    io.bandwidth_kib_s / 1024.0,
                    micros(io.clat_p50_us),
                    micros(io.clat_p99_us)
                ));
            }
        }
        text
    }

    fn print_test(&self, text: &str) {
        let to_stdout = self
            .tests_on_stdout
            .load(std::sync::atomic::Ordering::Relaxed);
        let print = || {
            if to_stdout {
                println!("{text}");
                let _ = std::io::stdout().flush();
            } else {
                eprintln!("{text}");
            }
        };
        match &self.bars {
            Some(bars) => bars.suspend(print),
            None => print(),
        }
    }
}

impl Reporter for Renderer {
    fn event(&self, event: Event) {
        match event {
            Event::Cached { name, kind, .. } => {
                if self.verbose {
                    self.line(&format!("{name} ({kind}): cached"));
                }
            }
            Event::Started { name, kind } => {
                self.line(&format!("{name} ({kind}): building"));
                self.bar(name, "building");
            }
            Event::Progress { name, line } => {
                if self.bars.is_some() {
                    self.bar(name, line);
                } else if self.verbose || self.progress_due(name) {
                    self.line(&format!("{name}: {line}"));
                }
            }
            Event::Waiting { name } => {
                self.line(&format!(
                    "{name}: waiting for another vmbuild building the same entry"
                ));
                self.bar(name, "waiting for another vmbuild");
            }
            Event::Built {
                name,
                kind,
                seconds,
            } => {
                self.end_bar(name);
                self.line(&format!("{name} ({kind}): built in {seconds:.1}s"));
            }
            Event::Notice(text) => self.line(&format!("note: {text}")),
            Event::Booting { recipe, accel, vms } => {
                self.line(&format!("{recipe}: booting {vms} VM(s) with {accel}"));
                self.bar(recipe, "running tests");
            }
            Event::TestFinished {
                recipe,
                result,
                cached,
            } => self.test_line(recipe, result, cached),
            Event::Detail(text) => {
                if self.verbose {
                    self.line(text);
                }
            }
        }
    }
}

/// A latency for a test line: `218 us`, `4.8 ms`, or `-` when fio gave none.
fn micros(us: Option<f64>) -> String {
    match us {
        Some(us) if us >= 1000.0 => format!("{:.1} ms", us / 1000.0),
        Some(us) => format!("{us:.0} us"),
        None => "-".into(),
    }
}

/// `text` with its control characters escaped, for a terminal.
pub(super) fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn guest_text_cannot_reach_the_terminal_raw() {
        assert_eq!(
            super::printable("job\u{1b}[31m\nFAKE\r\u{7}"),
            "job\\u{1b}[31m\\nFAKE\\r\\u{7}"
        );
        assert_eq!(
            super::printable("selftests: size: get_size"),
            "selftests: size: get_size"
        );
    }
}
