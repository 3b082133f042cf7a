//! `hunt --escalate`: a hunt's findings sent through the `[[escalation]]` destinations of the
//! configuration, by the same durable spool `run` uses, so that they are delivered at least
//! once and never twice to a destination that already has them.
//!
//! The spool is `<checkpoint folder>/escalation-spool`, where `run` keeps it: a hunt on the
//! folder of a `run` (`--checkpoint-dir`, else `checkpoint.dir`) skips what that run already
//! delivered (each destination's done-ledger, kept a week), and what it cannot deliver within
//! `--escalate-timeout-secs` stays spooled for the next `run` or `hunt --escalate` on the same
//! folder. Do not point a hunt at the folder of a `run` that is running: both would deliver the
//! pending findings (the destinations deduplicate by finding id, but that is twice).
//!
//! `--dry-run` only reads: what each destination would be sent, and what it already has, from
//! the spool's files as they are ([`plan`]), without opening the spool (opening it tidies the
//! folder), reading secrets or sending anything.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::escalation::{EscalationConfig, Escalator};
use crate::finding::{Finding, Severity};
use crate::metrics::Metrics;

pub use crate::escalation::spool_dir;

/// How long ago `run` last wrote a checkpoint in `checkpoint_dir` (`None`: never, or unknown):
/// a recent one says a `run` may be using the folder now.
pub fn checkpoint_age(checkpoint_dir: &Path) -> Option<Duration> {
    let modified = std::fs::metadata(checkpoint_dir.join(crate::checkpoint::FILE_NAME))
        .and_then(|m| m.modified())
        .ok()?;
    std::time::SystemTime::now().duration_since(modified).ok()
}

/// Where a finding stands with one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Not in the spool: it would be spooled and sent.
    Send,
    /// Spooled before and not delivered yet: it would be sent.
    Pending,
    /// In the done-ledger with this outcome (`delivered`, `dead_lettered`, or `done` once the
    /// ledger was compacted): it is not sent again.
    Done(String),
}

impl Standing {
    pub fn as_str(&self) -> &str {
        match self {
            Standing::Send => "send",
            Standing::Pending => "pending",
            Standing::Done(outcome) => outcome,
        }
    }

    /// Whether the destination already has it, or gave up on it.
    pub fn is_done(&self) -> bool {
        matches!(self, Standing::Done(_))
    }
}

/// One finding routed to one destination.
#[derive(Debug, Clone)]
pub struct Planned {
    pub id: String,
    pub rule: String,
    pub severity: Severity,
    pub standing: Standing,
}

/// What one destination would get.
#[derive(Debug, Clone)]
pub struct DestinationPlan {
    pub name: String,
    pub kind: &'static str,
    /// The hunt's findings it routes (its `rules` and `min_severity`), each once.
    pub findings: Vec<Planned>,
    /// Findings of the hunt it does not route.
    pub not_routed: usize,
    /// Findings spooled earlier for it that this hunt did not find: they would be sent too.
    pub other_pending: usize,
}

impl DestinationPlan {
    pub fn count(&self, pred: impl Fn(&Standing) -> bool) -> usize {
        self.findings.iter().filter(|p| pred(&p.standing)).count()
    }
}

/// What escalating `findings` would do, destination by destination, from the spool under
/// `spool_dir` as it is. Reads only.
pub fn plan(
    cfg: &[EscalationConfig],
    spool_dir: &Path,
    findings: &[Finding],
) -> std::io::Result<Vec<DestinationPlan>> {
    let mut out = Vec::new();
    for (i, c) in cfg.iter().enumerate() {
        let name = c.destination_name(i);
        let crate::escalation::spool::Peek { done, pending } =
            crate::escalation::spool::peek(&spool_dir.join(&name))?;
        let mut seen = HashSet::new();
        let mut planned = Vec::new();
        let mut not_routed = 0;
        for f in findings {
            if !c.routes(f) {
                not_routed += 1;
                continue;
            }
            if !seen.insert(f.id.as_str()) {
                continue;
            }
            let standing = match done.get(&f.id) {
                Some(outcome) => Standing::Done(outcome.clone()),
                None if pending.contains(&f.id) => Standing::Pending,
                None => Standing::Send,
            };
            planned.push(Planned {
                id: f.id.clone(),
                rule: f.rule.clone(),
                severity: f.severity,
                standing,
            });
        }
        let other_pending = pending
            .iter()
            .filter(|id| !seen.contains(id.as_str()))
            .count();
        out.push(DestinationPlan {
            name,
            kind: c.kind.as_str(),
            findings: planned,
            not_routed,
            other_pending,
        });
    }
    Ok(out)
}

/// The dry run's lines: one per finding and destination, then a summary per destination.
pub fn render_plan(spool_dir: &Path, plans: &[DestinationPlan]) -> String {
    let mut s = format!(
        "escalation dry run (nothing sent, nothing written, secrets not read); spool {}\n",
        spool_dir.display()
    );
    s.push_str(&format!(
        "{:<24} {:<32} {:<34} {:<8} STATE\n",
        "DESTINATION", "FINDING", "RULE", "SEVERITY"
    ));
    for d in plans {
        for p in &d.findings {
            s.push_str(&format!(
                "{:<24} {:<32} {:<34} {:<8} {}\n",
                d.name,
                p.id,
                p.rule,
                p.severity.as_str(),
                p.standing.as_str()
            ));
        }
    }
    for d in plans {
        s.push_str(&format!(
            "{} ({}): would send {} ({} new, {} pending from before), {} already done, {} not routed here; {} more pending in its spool would be sent too\n",
            d.name,
            d.kind,
            d.count(|s| !s.is_done()) + d.other_pending,
            d.count(|s| *s == Standing::Send),
            d.count(|s| *s == Standing::Pending),
            d.count(Standing::is_done),
            d.not_routed,
            d.other_pending,
        ));
    }
    s
}

/// What a real escalation did, per destination.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub name: String,
    /// The hunt's findings it routes that it already had (not sent again).
    pub already_done: usize,
    /// Deliveries confirmed (2xx) during this hunt.
    pub delivered: u64,
    /// Rejected for good during this hunt, written to the dead-letter file.
    pub dead_lettered: u64,
    /// Still spooled when the timeout came.
    pub remaining: usize,
}

/// The outcome of [`escalate`].
#[derive(Debug, Clone)]
pub struct Report {
    pub spool_dir: PathBuf,
    pub dead_letter_file: PathBuf,
    pub destinations: Vec<Delivered>,
    pub timeout: Duration,
}

impl Report {
    pub fn remaining(&self) -> usize {
        self.destinations.iter().map(|d| d.remaining).sum()
    }

    pub fn dead_lettered(&self) -> u64 {
        self.destinations.iter().map(|d| d.dead_lettered).sum()
    }

    /// Whether everything routed is now with its destination.
    pub fn complete(&self) -> bool {
        self.remaining() == 0 && self.dead_lettered() == 0
    }

    /// The lines for stderr.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for d in &self.destinations {
            s.push_str(&format!(
                "escalation {}: delivered {}, already delivered before {}, rejected {}, still spooled {}\n",
                d.name, d.delivered, d.already_done, d.dead_lettered, d.remaining
            ));
        }
        let remaining = self.remaining();
        if remaining > 0 {
            s.push_str(&format!(
                "escalation: {remaining} finding deliveries not confirmed within {} s remain spooled in {}; \
                 the next `credwatch run` or `credwatch hunt --escalate` with this checkpoint folder sends them\n",
                self.timeout.as_secs(),
                self.spool_dir.display()
            ));
        }
        let dead = self.dead_lettered();
        if dead > 0 {
            s.push_str(&format!(
                "escalation: {dead} finding deliveries rejected by their destination, written to {}\n",
                self.dead_letter_file.display()
            ));
        }
        s
    }
}

/// Spools `findings` for every destination that routes them and has not had them (durably,
/// as `run` does), then delivers what is spooled, also what earlier runs left, for at most
/// `timeout`. Errors (a secret that cannot be read, a spool that cannot be written) name the
/// config key or the file.
pub async fn escalate(
    cfg: &[EscalationConfig],
    spool_dir: &Path,
    findings: &[Finding],
    timeout: Duration,
) -> anyhow::Result<Report> {
    let before = plan(cfg, spool_dir, findings)?;
    let metrics = Arc::new(Metrics::new());
    let esc = Arc::new(Escalator::new(cfg, spool_dir, metrics.clone())?);
    let dead_letter_file = esc.dead_letter_path().to_path_buf();
    {
        let esc = esc.clone();
        let findings = findings.to_vec();
        tokio::task::spawn_blocking(move || esc.submit(&findings))
            .await?
            .map_err(|e| anyhow::anyhow!("spooling findings in {}: {e}", spool_dir.display()))?;
    }
    esc.clone().flush(timeout).await;
    let count = |name: &str, outcome: &str| {
        metrics
            .escalations
            .with_label_values(&[name, outcome])
            .get()
    };
    let destinations = before
        .iter()
        .map(|d| Delivered {
            name: d.name.clone(),
            already_done: d.count(Standing::is_done),
            delivered: count(&d.name, "delivered"),
            dead_lettered: count(&d.name, "dead_lettered"),
            remaining: esc.pending(&d.name).unwrap_or(0),
        })
        .collect();
    Ok(Report {
        spool_dir: spool_dir.to_path_buf(),
        dead_letter_file,
        destinations,
        timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::escalation::spool::{DONE_FILE, DONE_RETENTION_SECS};
    use crate::escalation::DestinationKind;
    use crate::finding::test_finding;

    fn finding(id: &str, rule: &str, severity: Severity) -> Finding {
        let mut f = test_finding(id);
        f.rule = rule.into();
        f.severity = severity;
        f
    }

    #[test]
    fn the_plan_reads_the_spool_as_it_is_and_routes_like_the_escalator() {
        let dir = tempfile::tempdir().unwrap();
        let spool = spool_dir(dir.path());
        let dest = spool.join("siem");
        std::fs::create_dir_all(&dest).unwrap();
        // The spool as the escalator leaves it: "a" delivered, "c" dead-lettered, "b" and
        // "elsewhere" pending; plus a ledger line older than the retention ("old").
        {
            let (sp, _) = crate::escalation::spool::Spool::open(&dest).unwrap();
            let spooled: Vec<Finding> = ["a", "b", "c", "elsewhere"]
                .iter()
                .map(|id| finding(id, "session_token_reuse", Severity::High))
                .collect();
            sp.add(spooled.iter()).unwrap();
            sp.finish("a", "delivered").unwrap();
            sp.finish("c", "dead_lettered").unwrap();
        }
        let old = format!(
            "{{\"t\":{},\"outcome\":\"delivered\",\"id\":\"old\"}}\n",
            chrono::Utc::now().timestamp() - DONE_RETENTION_SECS - 10
        );
        let ledger = dest.join(DONE_FILE);
        let mut text = std::fs::read_to_string(&ledger).unwrap();
        text.push_str(&old);
        std::fs::write(&ledger, text).unwrap();
        let cfg = [
            EscalationConfig {
                kind: DestinationKind::Webhook,
                name: Some("siem".into()),
                ..Default::default()
            },
            EscalationConfig {
                kind: DestinationKind::Pagerduty,
                min_severity: Some(Severity::Critical),
                rules: vec!["stop_logging".into()],
                ..Default::default()
            },
        ];
        let found = [
            finding("a", "session_token_reuse", Severity::High),
            finding("b", "session_token_reuse", Severity::High),
            finding("c", "stop_logging", Severity::Critical),
            finding("old", "stop_logging", Severity::High),
            finding("new", "stop_logging", Severity::Critical),
            finding("new", "stop_logging", Severity::Critical),
        ];
        let before = listing(dir.path());
        let plans = plan(&cfg, &spool, &found).unwrap();
        assert_eq!(before, listing(dir.path()), "the plan writes nothing");

        let standing = |p: &DestinationPlan| -> Vec<(String, String)> {
            p.findings
                .iter()
                .map(|x| (x.id.clone(), x.standing.as_str().to_string()))
                .collect()
        };
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert_eq!(plans[0].name, "siem");
        assert_eq!(
            standing(&plans[0]),
            pairs(&[
                ("a", "delivered"),
                ("b", "pending"),
                ("c", "dead_lettered"),
                ("old", "send"),
                ("new", "send"),
            ])
        );
        assert_eq!((plans[0].other_pending, plans[0].not_routed), (1, 0));
        assert_eq!(plans[1].name, "pagerduty-1");
        assert_eq!(
            standing(&plans[1]),
            pairs(&[("c", "send"), ("new", "send")])
        );
        assert_eq!(plans[1].not_routed, 3);
        let text = render_plan(&spool, &plans);
        assert!(text.contains("siem (webhook): would send 4 (2 new, 1 pending from before), 2 already done, 0 not routed here; 1 more pending"), "{text}");
    }

    fn listing(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out: Vec<(PathBuf, Vec<u8>)> = walkdir::WalkDir::new(dir)
            .into_iter()
            .map(|e| e.unwrap())
            .map(|e| {
                let bytes = if e.file_type().is_file() {
                    std::fs::read(e.path()).unwrap()
                } else {
                    vec![]
                };
                (e.into_path(), bytes)
            })
            .collect();
        out.sort();
        out
    }
}
