//! `credwatch score`: findings against a ground truth ([`super::truth`]).
//!
//! - A *detection* is a finding of `session_token_reuse` or `foreign_vpc_endpoint`. It matches an
//!   attack when its `session` is the attack's `session` or its `access_key_id` is the attack's
//!   `access_key_id`.
//! - A matching detection whose `event_time` (the time of the event that completed it) is at or
//!   after the attack's `time` is a true positive; it detects every such attack of its session.
//!   One whose `event_time` is before every matching attack flagged the session before it was
//!   attacked: a false positive, counted as `early` against the attack's kind.
//! - A detection on a session labelled benign is a false positive of that benign kind (of each
//!   label the session has); on a session in neither list, an `unlabelled` false positive.
//! - Per attack kind: recall = detected attacks / attacks, precision = true positives /
//!   (true positives + early). Overall: precision = true positives / detections, recall =
//!   detected attacks / attacks. 0/0 counts as 1 (no detections: no false alarm; no attacks:
//!   nothing missed).
//! - Other rules (event rules such as `workload_get_caller_identity`) are not detections of
//!   these attacks: they are counted separately, on attacked, benign and other sessions.
//! - Delay of a detected attack: its earliest true positive's `detected_at` minus the attack
//!   event's `sent_at` from `--sent-log` (JSON lines `{"event_id":…,"sent_at":<ms>}`, the
//!   earliest per id), or minus the attack's `time` without a sent-log. Reported as p50, p90,
//!   p99 (nearest rank) and max, in seconds.
//!
//! Findings are deduplicated by `id`. The report's last line is `precision=P recall=R`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::truth::{AttackKind, BenignKind, Truth};
use super::{parse_ms, EXIT_ERROR, EXIT_OK};

/// The rules whose findings are detections of the truth's attacks.
pub const DETECTION_RULES: [&str; 3] = [
    "session_token_reuse",
    "workload_credentials_outside_aws",
    "foreign_vpc_endpoint",
];

#[derive(Debug, clap::Args)]
pub struct ScoreArgs {
    /// The ground truth (`truth.json` of `credwatch generate`).
    #[arg(long, env = "CREDWATCH_SCORE_TRUTH")]
    pub truth: PathBuf,
    /// Findings as JSON lines (`hunt --output json`, or `run`'s findings file).
    #[arg(long, env = "CREDWATCH_SCORE_FINDINGS")]
    pub findings: PathBuf,
    /// `replay --sent-log` output: detection delays are measured from each attack event's send.
    #[arg(long, env = "CREDWATCH_SCORE_SENT_LOG")]
    pub sent_log: Option<PathBuf>,
    /// Also write the score as JSON to this file.
    #[arg(long, env = "CREDWATCH_SCORE_JSON")]
    pub json: Option<PathBuf>,
}

/// The fields of a finding the score reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScoredFinding {
    #[serde(default)]
    pub id: Option<String>,
    pub rule: String,
    #[serde(default)]
    pub session: Option<String>,
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub event_time: Option<String>,
    #[serde(default)]
    pub detected_at: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KindScore {
    pub attacks: u64,
    pub detected: u64,
    pub recall: f64,
    /// True-positive detections attributed to this kind.
    pub findings: u64,
    /// Detections on this kind's attacked sessions from before the attack.
    pub early: u64,
    pub precision: f64,
    /// Sessions of the attacks not detected.
    pub missed: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FalsePositives {
    pub sessions: u64,
    pub findings: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRuleCount {
    pub on_attacked: u64,
    pub on_benign: u64,
    pub other: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delays {
    /// `sent_at` (from a sent-log) or `event_time`.
    pub reference: String,
    pub count: u64,
    /// Detected attacks without a reference time (not in the sent-log) or a `detected_at`.
    pub without_time: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub by_kind: BTreeMap<String, KindScore>,
    pub total: KindScore,
    /// Detections (findings of the detection rules), deduplicated.
    pub detections: u64,
    pub true_positives: u64,
    pub false_positives: u64,
    /// By benign kind, plus `unlabelled` and `early`.
    pub false_positives_by_kind: BTreeMap<String, FalsePositives>,
    pub event_rules: BTreeMap<String, EventRuleCount>,
    pub delays: Option<Delays>,
    pub precision: f64,
    pub recall: f64,
}

fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        1.0
    } else {
        num as f64 / den as f64
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Scores findings against the truth. `sent` maps event ids to send times (ms).
pub fn score(
    truth: &Truth,
    findings: &[ScoredFinding],
    sent: Option<&HashMap<String, i64>>,
) -> Score {
    let mut by_session: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut by_key: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, a) in truth.attacks.iter().enumerate() {
        by_session.entry(a.session.as_str()).or_default().push(i);
        if let Some(k) = a.access_key_id.as_deref() {
            by_key.entry(k).or_default().push(i);
        }
    }
    let mut benign: HashMap<&str, BTreeSet<BenignKind>> = HashMap::new();
    for b in &truth.benign {
        benign.entry(b.session.as_str()).or_default().insert(b.kind);
    }
    let attack_ms: Vec<Option<i64>> = truth.attacks.iter().map(|a| parse_ms(&a.time)).collect();

    let mut seen_ids = BTreeSet::new();
    let mut s = Score::default();
    let mut detected_at: Vec<Option<Option<i64>>> = vec![None; truth.attacks.len()];
    let mut tp_by_kind: BTreeMap<AttackKind, u64> = BTreeMap::new();
    let mut early_by_kind: BTreeMap<AttackKind, u64> = BTreeMap::new();
    let mut fp_sessions: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in findings {
        if let Some(id) = &f.id {
            if !seen_ids.insert(id.clone()) {
                continue;
            }
        }
        let mut matched: Vec<usize> = Vec::new();
        if let Some(sess) = f.session.as_deref() {
            matched.extend(by_session.get(sess).into_iter().flatten());
        }
        if let Some(k) = f.access_key_id.as_deref() {
            matched.extend(by_key.get(k).into_iter().flatten());
        }
        matched.sort_unstable();
        matched.dedup();
        let session_label = f
            .session
            .as_deref()
            .or(f.access_key_id.as_deref())
            .unwrap_or("-")
            .to_string();
        let labels: BTreeSet<BenignKind> = [f.session.as_deref(), f.access_key_id.as_deref()]
            .into_iter()
            .flatten()
            .filter_map(|x| benign.get(x))
            .flatten()
            .copied()
            .collect();

        if !DETECTION_RULES.contains(&f.rule.as_str()) {
            let c = s.event_rules.entry(f.rule.clone()).or_default();
            if !matched.is_empty() {
                c.on_attacked += 1;
            } else if !labels.is_empty() {
                c.on_benign += 1;
            } else {
                c.other += 1;
            }
            continue;
        }
        s.detections += 1;
        if matched.is_empty() {
            s.false_positives += 1;
            let kinds: Vec<String> = if labels.is_empty() {
                vec!["unlabelled".into()]
            } else {
                labels.iter().map(|k| k.as_str().to_string()).collect()
            };
            for k in kinds {
                s.false_positives_by_kind
                    .entry(k.clone())
                    .or_default()
                    .findings += 1;
                fp_sessions
                    .entry(k)
                    .or_default()
                    .insert(session_label.clone());
            }
            continue;
        }
        let f_time = f.event_time.as_deref().and_then(parse_ms);
        let f_detected = f.detected_at.as_deref().and_then(parse_ms);
        let hits: Vec<usize> = matched
            .iter()
            .copied()
            .filter(|&i| match (f_time, attack_ms[i]) {
                (Some(ft), Some(at)) => ft >= at,
                _ => true,
            })
            .collect();
        if hits.is_empty() {
            s.false_positives += 1;
            let first = matched
                .iter()
                .copied()
                .min_by_key(|&i| attack_ms[i])
                .expect("matched is not empty");
            *early_by_kind.entry(truth.attacks[first].kind).or_default() += 1;
            s.false_positives_by_kind
                .entry("early".into())
                .or_default()
                .findings += 1;
            fp_sessions
                .entry("early".into())
                .or_default()
                .insert(session_label);
            continue;
        }
        s.true_positives += 1;
        let latest = hits
            .iter()
            .copied()
            .max_by_key(|&i| attack_ms[i])
            .expect("hits is not empty");
        *tp_by_kind.entry(truth.attacks[latest].kind).or_default() += 1;
        for i in hits {
            let slot = &mut detected_at[i];
            *slot = Some(match (*slot, f_detected) {
                (Some(Some(a)), Some(b)) => Some(a.min(b)),
                (Some(Some(a)), None) => Some(a),
                (_, b) => b,
            });
        }
    }
    for (k, set) in fp_sessions {
        s.false_positives_by_kind.entry(k).or_default().sessions = set.len() as u64;
    }

    let mut kinds: BTreeSet<AttackKind> = truth.attacks.iter().map(|a| a.kind).collect();
    kinds.extend(tp_by_kind.keys().copied());
    kinds.extend(early_by_kind.keys().copied());
    let mut delays = Vec::new();
    let mut without_time = 0u64;
    for kind in kinds {
        let mut ks = KindScore::default();
        for (i, a) in truth
            .attacks
            .iter()
            .enumerate()
            .filter(|(_, a)| a.kind == kind)
        {
            ks.attacks += 1;
            match detected_at[i] {
                Some(det) => {
                    ks.detected += 1;
                    let reference = match sent {
                        Some(map) => map.get(&a.event_id).copied(),
                        None => attack_ms[i],
                    };
                    match (det, reference) {
                        (Some(d), Some(r)) => delays.push((d - r) as f64 / 1000.0),
                        _ => without_time += 1,
                    }
                }
                None => ks.missed.push(a.session.clone()),
            }
        }
        ks.findings = tp_by_kind.get(&kind).copied().unwrap_or(0);
        ks.early = early_by_kind.get(&kind).copied().unwrap_or(0);
        ks.recall = ratio(ks.detected, ks.attacks);
        ks.precision = ratio(ks.findings, ks.findings + ks.early);
        s.total.attacks += ks.attacks;
        s.total.detected += ks.detected;
        s.total.findings += ks.findings;
        s.total.early += ks.early;
        s.total.missed.extend(ks.missed.iter().cloned());
        s.by_kind.insert(kind.as_str().to_string(), ks);
    }
    s.total.recall = ratio(s.total.detected, s.total.attacks);
    s.total.precision = ratio(s.total.findings, s.total.findings + s.total.early);
    s.precision = ratio(s.true_positives, s.detections);
    s.recall = s.total.recall;
    if !delays.is_empty() || without_time > 0 {
        delays.sort_by(f64::total_cmp);
        s.delays = Some(Delays {
            reference: if sent.is_some() {
                "sent_at"
            } else {
                "event_time"
            }
            .into(),
            count: delays.len() as u64,
            without_time,
            p50: percentile(&delays, 50.0),
            p90: percentile(&delays, 90.0),
            p99: percentile(&delays, 99.0),
            max: delays.last().copied().unwrap_or(0.0),
        });
    }
    s
}

impl Score {
    /// The human-readable report; its last line is `precision=P recall=R`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "{:<22} {:>7} {:>8} {:>7} {:>8} {:>6} {:>9}\n",
            "attack kind", "attacks", "detected", "recall", "findings", "early", "precision"
        ));
        let row = |name: &str, k: &KindScore| {
            format!(
                "{:<22} {:>7} {:>8} {:>7.3} {:>8} {:>6} {:>9.3}\n",
                name, k.attacks, k.detected, k.recall, k.findings, k.early, k.precision
            )
        };
        for (name, k) in &self.by_kind {
            out.push_str(&row(name, k));
        }
        out.push_str(&row("all", &self.total));
        if !self.total.missed.is_empty() {
            out.push_str(&format!("missed: {}\n", self.total.missed.join(", ")));
        }
        out.push_str(&format!(
            "detections: {} (true positives {}, false positives {})\n",
            self.detections, self.true_positives, self.false_positives
        ));
        if self.false_positives_by_kind.is_empty() {
            out.push_str("false positives by benign kind: none\n");
        } else {
            out.push_str("false positives by benign kind:\n");
            for (k, fp) in &self.false_positives_by_kind {
                out.push_str(&format!(
                    "  {:<20} sessions={} findings={}\n",
                    k, fp.sessions, fp.findings
                ));
            }
        }
        if self.event_rules.is_empty() {
            out.push_str("event-rule findings (not counted as detections): none\n");
        } else {
            out.push_str("event-rule findings (not counted as detections):\n");
            for (rule, c) in &self.event_rules {
                out.push_str(&format!(
                    "  {:<30} on_attacked={} on_benign={} other={}\n",
                    rule, c.on_attacked, c.on_benign, c.other
                ));
            }
        }
        match &self.delays {
            Some(d) => out.push_str(&format!(
                "detection delay (from {}, n={}{}): p50={:.3}s p90={:.3}s p99={:.3}s max={:.3}s\n",
                d.reference,
                d.count,
                if d.without_time > 0 {
                    format!(", {} without times", d.without_time)
                } else {
                    String::new()
                },
                d.p50,
                d.p90,
                d.p99,
                d.max
            )),
            None => out.push_str("detection delay: no detected attack\n"),
        }
        out.push_str(&format!(
            "precision={:.3} recall={:.3}\n",
            self.precision, self.recall
        ));
        out
    }
}

/// Reads findings (JSON lines; blank lines skipped).
pub fn read_findings(path: &Path) -> Result<Vec<ScoredFinding>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let f: ScoredFinding = serde_json::from_str(&line)
            .map_err(|e| format!("{}:{}: not a finding: {e}", path.display(), n + 1))?;
        out.push(f);
    }
    Ok(out)
}

/// Reads a sent-log: the earliest `sent_at` per `event_id`.
pub fn read_sent_log(path: &Path) -> Result<HashMap<String, i64>, String> {
    #[derive(Deserialize)]
    struct Line {
        event_id: String,
        sent_at: i64,
    }
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out: HashMap<String, i64> = HashMap::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let l: Line = serde_json::from_str(&line)
            .map_err(|e| format!("{}:{}: not a sent-log line: {e}", path.display(), n + 1))?;
        out.entry(l.event_id)
            .and_modify(|t| *t = (*t).min(l.sent_at))
            .or_insert(l.sent_at);
    }
    Ok(out)
}

/// `credwatch score`.
pub fn cli(args: ScoreArgs) -> i32 {
    let run = || -> Result<Score, String> {
        let truth = Truth::load(&args.truth)?;
        let findings = read_findings(&args.findings)?;
        let sent = args.sent_log.as_deref().map(read_sent_log).transpose()?;
        let s = score(&truth, &findings, sent.as_ref());
        if let Some(p) = &args.json {
            let text = serde_json::to_string_pretty(&s).map_err(|e| e.to_string())? + "\n";
            std::fs::write(p, text).map_err(|e| format!("{}: {e}", p.display()))?;
        }
        Ok(s)
    };
    match run() {
        Ok(s) => {
            print!("{}", s.render());
            EXIT_OK
        }
        Err(e) => {
            eprintln!("credwatch: score: {e}");
            EXIT_ERROR
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 5.0);
        assert_eq!(percentile(&v, 90.0), 9.0);
        assert_eq!(percentile(&v, 99.0), 10.0);
        assert_eq!(percentile(&[3.0], 50.0), 3.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn no_detections_and_no_attacks_count_as_one() {
        let s = score(&Truth::default(), &[], None);
        assert_eq!((s.precision, s.recall), (1.0, 1.0));
        assert!(s.render().ends_with("precision=1.000 recall=1.000\n"));
    }
}
