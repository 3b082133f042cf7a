//! Progress of a long hunt, on stderr: a bar on a terminal (objects, bytes, events/s, ETA,
//! findings so far), plain lines every `--progress-every` seconds when stderr is not a terminal
//! (a CI log, a file), nothing with `--progress off`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// `--progress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, lines otherwise.
    Auto,
    Bar,
    Lines,
    Off,
}

/// Counters the hunt threads move and the reporter reads.
#[derive(Debug)]
pub struct Progress {
    pub objects_total: u64,
    pub bytes_total: u64,
    pub objects: AtomicU64,
    pub bytes: AtomicU64,
    pub events: AtomicU64,
    pub findings: AtomicU64,
    started: Instant,
}

impl Progress {
    pub fn new(objects_total: u64, bytes_total: u64) -> Progress {
        Progress {
            objects_total,
            bytes_total,
            objects: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            events: AtomicU64::new(0),
            findings: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// One object done.
    pub fn object_done(&self, bytes: u64, events: u64) {
        self.objects.fetch_add(1, Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
        self.events.fetch_add(events, Relaxed);
    }

    /// Seconds left at the rate so far, by bytes (objects when sizes are unknown).
    fn eta(&self) -> Option<f64> {
        let secs = self.started.elapsed().as_secs_f64();
        let (done, total) = if self.bytes_total > 0 {
            (self.bytes.load(Relaxed), self.bytes_total)
        } else {
            (self.objects.load(Relaxed), self.objects_total)
        };
        (done > 0).then(|| secs * (total.saturating_sub(done)) as f64 / done as f64)
    }

    /// One plain progress line.
    pub fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let events = self.events.load(Relaxed);
        format!(
            "progress: {}/{} objects, {:.1}/{:.1} MB, {} events, {:.0} events/s, {} findings, ETA {}",
            self.objects.load(Relaxed),
            self.objects_total,
            self.bytes.load(Relaxed) as f64 / 1e6,
            self.bytes_total as f64 / 1e6,
            events,
            events as f64 / secs,
            self.findings.load(Relaxed),
            self.eta()
                .map_or_else(|| "unknown".to_string(), |s| format!("{s:.0} s")),
        )
    }
}

/// Tells [`report`] to stop: it wakes at once, so that the end of a hunt does not wait for the
/// reporter's next tick.
#[derive(Default)]
pub struct Stop {
    stopped: std::sync::Mutex<bool>,
    wake: std::sync::Condvar,
}

impl Stop {
    pub fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.wake.notify_all();
    }

    /// Waits up to `d`; whether [`Stop::stop`] was called.
    fn wait(&self, d: Duration) -> bool {
        let guard = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = self
            .wake
            .wait_timeout_while(guard, d, |stopped| !*stopped)
            .unwrap_or_else(|p| p.into_inner());
        *guard
    }
}

/// Reports `progress` until `done` is stopped, in the way `mode` asks; call from a scoped thread.
pub fn report(progress: &Progress, mode: ProgressMode, every: Duration, done: &Stop) {
    let bar = match mode {
        ProgressMode::Off => return,
        ProgressMode::Bar => true,
        ProgressMode::Lines => false,
        ProgressMode::Auto => std::io::stderr().is_terminal(),
    };
    if bar {
        let pb = indicatif::ProgressBar::new(progress.bytes_total.max(1));
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {bytes}/{total_bytes} {msg} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        loop {
            let secs = progress.started.elapsed().as_secs_f64().max(1e-9);
            let events = progress.events.load(Relaxed);
            pb.set_position(progress.bytes.load(Relaxed));
            pb.set_message(format!(
                "{}/{} objects, {:.0} events/s, {} findings",
                progress.objects.load(Relaxed),
                progress.objects_total,
                events as f64 / secs,
                progress.findings.load(Relaxed)
            ));
            if done.wait(Duration::from_millis(200)) {
                break;
            }
        }
        pb.finish_and_clear();
    } else {
        while !done.wait(every) {
            eprintln!("{}", progress.line());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_counts_objects_bytes_events_and_findings() {
        let p = Progress::new(4, 4_000_000);
        p.object_done(1_000_000, 500);
        p.findings.fetch_add(2, Relaxed);
        let line = p.line();
        assert!(
            line.starts_with("progress: 1/4 objects, 1.0/4.0 MB, 500 events, "),
            "{line}"
        );
        assert!(line.contains(" 2 findings, ETA "), "{line}");
        assert!(!line.ends_with("unknown"), "{line}");
        assert!(Progress::new(1, 0).line().ends_with("ETA unknown"));
    }
}
