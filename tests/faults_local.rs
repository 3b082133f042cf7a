//! `credwatch run` under local faults (issue #14): the findings disk full, the checkpoint folder
//! full and read-only (size-limited tmpfs mounts), event times far in the future and the past,
//! and `kill -9` at random points over fifty runs. Network faults are in `faults_network.rs`.
//!
//! For every fault: every session has exactly one finding, what went in was processed or set
//! aside (metrics, dead letters, the checkpoint covering every record), no panic, and while
//! degraded a log line and a metric say so.
//!
//! The mounts need root (these tests run as root on the CI machine kind); without it they fail
//! with `mount`'s message, they are not skipped.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::moto::MotoServer;
use support::prometheus::free_port;
use support::run::{
    assert_one_finding_per_session, checkpoint_covers, http_get, last_sequences, now_ms, now_secs,
    sessions, Nets, Run, Session, State, FINDINGS_TIMEOUT, LOG_GROUP,
};

const NETS: Nets = Nets {
    home: "54.161",
    evil: "54.211.9",
};

// ---- a small tmpfs ----------------------------------------------------------------------------

/// A tmpfs of a few hundred KiB mounted on a folder of the test's own, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
    filler: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).expect("create the mount point");
        mount(
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ],
            path,
        );
        Tmpfs {
            path: path.to_path_buf(),
            filler: path.join("filler"),
        }
    }

    /// Fills the file system: every later write gets ENOSPC.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(&self.filler).expect("create the filler");
        let chunk = vec![0u8; 4096];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling {}: {e}", self.path.display()),
            }
        }
        let _ = f.sync_all();
        let probe = std::fs::write(self.path.join("probe"), [0u8; 4096]);
        assert!(probe.is_err(), "{} is not full", self.path.display());
        let _ = std::fs::remove_file(self.path.join("probe"));
    }

    fn free(&self) {
        std::fs::remove_file(&self.filler).expect("remove the filler");
    }

    fn remount(&self, mode: &str) {
        mount(&["-o", &format!("remount,{mode}")], &self.path);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn mount(args: &[&str], path: &Path) {
    let out = Command::new("mount")
        .args(args)
        .arg(path)
        .output()
        .expect("run mount");
    assert!(
        out.status.success(),
        "mount {args:?} {}: {}{} (these tests need root)",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- helpers ----------------------------------------------------------------------------------

/// A stream `name` of two shards, fed by the test log group's subscription.
async fn stream(moto: &MotoServer, name: &str) {
    moto.create_stream(name, 2).await;
    moto.create_log_group_with_subscription(LOG_GROUP, name)
        .await;
}

/// Puts each session's home and second origin, each on a log stream of its own (so both
/// shards get some).
async fn put_sessions(moto: &MotoServer, tag: &str, sessions: &[Session]) {
    for (i, s) in sessions.iter().enumerate() {
        moto.put_log_events(
            LOG_GROUP,
            &format!("{tag}-home-{i}"),
            &[(now_ms(), s.home())],
        )
        .await;
        moto.put_log_events(
            LOG_GROUP,
            &format!("{tag}-away-{i}"),
            &[(now_ms(), s.second())],
        )
        .await;
    }
}

/// Sum of every series of `name` (with or without labels) in a `/metrics` text.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The value of `name{label}` (label given as `output="findings"`).
fn metric_labelled(text: &str, name: &str, label: &str) -> Option<f64> {
    let prefix = format!("{name}{{{label}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
}

fn metrics(port: u16) -> String {
    http_get(port, "/metrics")
        .map(|(_, t)| t)
        .unwrap_or_default()
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// No log of this state's runs holds a panic.
fn assert_no_panic(state: &State) {
    for e in std::fs::read_dir(state.dir.path()).expect("read the state folder") {
        let p = e.expect("dir entry").path();
        if p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("credwatch-run-"))
        {
            let log = std::fs::read_to_string(&p).unwrap_or_default();
            assert!(
                !log.contains("panicked"),
                "{} holds a panic:\n{log}",
                p.display()
            );
        }
    }
}

/// Events in = events processed + events set aside, from one run's metrics: every event the
/// records held (`credwatch_kinesis_events_total`) was judged (`credwatch_events_total`) or set
/// aside as an event (`credwatch_bad_records_total` less the whole records set aside).
fn assert_accounted(text: &str, events_in: f64, records_set_aside: f64) {
    let decoded = metric_sum(text, "credwatch_kinesis_events_total");
    let judged = metric_sum(text, "credwatch_events_total");
    let set_aside = metric_sum(text, "credwatch_bad_records_total");
    assert_eq!(decoded, events_in, "events decoded, against events put");
    assert_eq!(
        judged + (set_aside - records_set_aside),
        events_in,
        "events judged {judged} + events set aside {} != events in {events_in}",
        set_aside - records_set_aside
    );
}

// ---- the findings disk full -------------------------------------------------------------------

/// The findings file's disk is full while findings are due: reading waits (nothing is checkpointed
/// past them), the log and `credwatch_output_blocked` say so, and once space is back every
/// finding is written exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findings_disk_full_holds_reading_until_space_is_back_and_loses_nothing() {
    let moto = MotoServer::start();
    stream(&moto, "full").await;
    let mut state = State::new();
    let disk = Tmpfs::mount(&state.dir.path().join("findings-disk"), "256k");
    state.findings = disk.path.join("findings.jsonl");
    let port = free_port();
    let mut run = Run::start(
        &moto.endpoint(),
        "full",
        &state,
        Some(&format!("127.0.0.1:{port}")),
        &[],
    );
    let log = run.log.clone();
    run.wait_for("a first checkpoint", FINDINGS_TIMEOUT, || {
        state.checkpoint().ok_or("none yet".to_string())
    })
    .await;
    disk.fill();
    let all = sessions("full", 8, NETS);
    put_sessions(&moto, "full", &all).await;
    let last = last_sequences(&moto, "full").await;

    run.wait_for(
        "the findings output blocked, in the log and the metrics",
        FINDINGS_TIMEOUT,
        || {
            let text = metrics(port);
            let blocked = metric_labelled(&text, "credwatch_output_blocked", "output=\"findings\"");
            let errors = metric_labelled(
                &text,
                "credwatch_output_write_errors_total",
                "output=\"findings\"",
            );
            let logged = log_of(&log).contains("cannot write findings");
            match (blocked, errors, logged) {
                (Some(b), Some(e), true) if b == 1.0 && e >= 1.0 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    // Blocked, and nothing moves past the findings it owes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(state.findings().is_empty(), "{:?}", state.findings());
    assert!(
        checkpoint_covers(&state, &last).is_err(),
        "a checkpoint moved past records whose findings are not written: {:?}",
        state.checkpoint()
    );
    run.assert_running("the disk full");

    disk.free();
    let refs: Vec<&Session> = all.iter().collect();
    let findings = run.wait_for_findings(&state, &refs).await;
    assert_one_finding_per_session(&findings, &refs);
    run.wait_for("every record checkpointed", FINDINGS_TIMEOUT, || {
        checkpoint_covers(&state, &last)
    })
    .await;
    let text = metrics(port);
    assert_eq!(
        metric_labelled(&text, "credwatch_output_blocked", "output=\"findings\""),
        Some(0.0)
    );
    assert!(
        log_of(&log).contains("findings written again"),
        "{}",
        run.log_tail()
    );
    assert_accounted(&text, (2 * all.len()) as f64, 0.0);
    assert_no_panic(&state);
}

/// SIGTERM while the findings disk is full: the process gives up the write, writes no
/// checkpoint after it, and the next start (space back) reads those records again and writes
/// every finding exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_the_findings_disk_is_full_then_restart_loses_nothing() {
    let moto = MotoServer::start();
    stream(&moto, "fullterm").await;
    let mut state = State::new();
    let disk = Tmpfs::mount(&state.dir.path().join("findings-disk"), "256k");
    state.findings = disk.path.join("findings.jsonl");
    let mut run = Run::start(&moto.endpoint(), "fullterm", &state, None, &[]);
    let log = run.log.clone();
    run.wait_for("a first checkpoint", FINDINGS_TIMEOUT, || {
        state.checkpoint().ok_or("none yet".to_string())
    })
    .await;
    disk.fill();
    let all = sessions("fullterm", 6, NETS);
    put_sessions(&moto, "fullterm", &all).await;
    let last = last_sequences(&moto, "fullterm").await;
    run.wait_for("the findings output blocked", FINDINGS_TIMEOUT, || {
        if log_of(&log).contains("cannot write findings") {
            Ok(())
        } else {
            Err("not yet".into())
        }
    })
    .await;
    run.sigterm();
    let status = run.wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some(),
        "still running 30 s after SIGTERM:\n{}",
        run.log_tail()
    );
    let log = log_of(&log);
    assert!(log.contains("given up at shutdown"), "{log}");
    assert!(
        checkpoint_covers(&state, &last).is_err(),
        "a checkpoint covers records whose findings were never written: {:?}",
        state.checkpoint()
    );
    drop(run);

    disk.free();
    let mut run = Run::start(&moto.endpoint(), "fullterm", &state, None, &[]);
    let refs: Vec<&Session> = all.iter().collect();
    let findings = run.wait_for_findings(&state, &refs).await;
    assert_one_finding_per_session(&findings, &refs);
    assert_no_panic(&state);
}

// ---- the checkpoint folder full, then read-only -----------------------------------------------

/// The checkpoint folder's disk full, then read-only: detection goes on (every finding once),
/// each failed checkpoint is counted and logged and its partial file removed, the age grows;
/// when the folder is writable again checkpoints resume and a kill -9 then repeats nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_folder_full_then_read_only_detection_goes_on_and_checkpoints_resume() {
    let moto = MotoServer::start();
    stream(&moto, "cpfull").await;
    let mut state = State::new();
    let disk = Tmpfs::mount(&state.dir.path().join("checkpoint-disk"), "512k");
    state.checkpoint_dir = disk.path.join("checkpoints");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut run = Run::start(&moto.endpoint(), "cpfull", &state, Some(&addr), &[]);
    let log = run.log.clone();
    run.wait_for("a first checkpoint", FINDINGS_TIMEOUT, || {
        state.checkpoint().ok_or("none yet".to_string())
    })
    .await;

    let errors = |text: &str| {
        metric_labelled(
            text,
            "credwatch_checkpoint_writes_total",
            "outcome=\"error\"",
        )
        .unwrap_or(0.0)
    };
    for (phase, fault) in ["full", "read-only"].into_iter().enumerate() {
        let before = errors(&metrics(port));
        match fault {
            "full" => disk.fill(),
            _ => disk.remount("ro"),
        }
        let batch = sessions(&format!("cp{phase}"), 5, NETS);
        put_sessions(&moto, &format!("cp{phase}"), &batch).await;
        let refs: Vec<&Session> = batch.iter().collect();
        run.await_findings(&state, &refs).await;
        run.wait_for(
            &format!("failed checkpoints counted and logged ({fault})"),
            FINDINGS_TIMEOUT,
            || {
                let text = metrics(port);
                let age = support::run::metric_value(&text, "credwatch_checkpoint_age_seconds")
                    .unwrap_or(0.0);
                if errors(&text) >= before + 2.0
                    && age >= 2.0
                    && log_of(&log).contains("checkpoint failed")
                {
                    Ok(())
                } else {
                    Err(format!("errors {} age {age}", errors(&text)))
                }
            },
        )
        .await;
        let leftovers: Vec<String> = std::fs::read_dir(&state.checkpoint_dir)
            .expect("read the checkpoint folder")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n != "checkpoint.json")
            .collect();
        assert!(leftovers.is_empty(), "partial files left: {leftovers:?}");
        match fault {
            "full" => disk.free(),
            _ => disk.remount("rw"),
        }
    }
    let last = last_sequences(&moto, "cpfull").await;
    run.wait_for(
        "checkpoints again, covering every record",
        FINDINGS_TIMEOUT,
        || checkpoint_covers(&state, &last),
    )
    .await;
    let all: Vec<Session> = (0..2)
        .flat_map(|p| sessions(&format!("cp{p}"), 5, NETS))
        .collect();
    let refs: Vec<&Session> = all.iter().collect();
    assert_one_finding_per_session(&state.findings(), &refs);
    assert_accounted(&metrics(port), (2 * all.len()) as f64, 0.0);
    run.kill9();
    drop(run);
    let mut run = Run::start(&moto.endpoint(), "cpfull", &state, None, &[]);
    let findings = run.wait_for_findings(&state, &refs).await;
    assert_one_finding_per_session(&findings, &refs);
    assert_no_panic(&state);
}

// ---- event times far in the future and the past -----------------------------------------------

/// An event dated 2200 is set aside (`time_ahead`, dead-lettered with its shard and sequence
/// number) and does not move the watermark; a pair dated 1971 is judged like any other; the
/// sessions of today are found exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_future_events_are_set_aside_and_far_past_ones_judged() {
    let moto = MotoServer::start();
    stream(&moto, "times").await;
    let today = sessions("times", 5, NETS);
    let mut future = Session::new("times-future", 0, NETS);
    future.t = 7_258_118_400; // 2200-01-01
    let mut past = Session::new("times-past", 0, NETS);
    past.t = 31_536_000; // 1971-01-01
    moto.put_log_events(
        LOG_GROUP,
        "far",
        &[
            (now_ms(), future.home()),
            (now_ms(), future.second()),
            (now_ms(), past.home()),
            (now_ms(), past.second()),
        ],
    )
    .await;
    put_sessions(&moto, "times", &today).await;

    let state = State::new();
    let port = free_port();
    let mut run = Run::start(
        &moto.endpoint(),
        "times",
        &state,
        Some(&format!("127.0.0.1:{port}")),
        &[],
    );
    let log = run.log.clone();
    let mut expected: Vec<&Session> = today.iter().collect();
    expected.push(&past);
    let findings = run.wait_for_findings(&state, &expected).await;
    assert_one_finding_per_session(&findings, &expected);

    let text = metrics(port);
    assert_eq!(
        metric_labelled(&text, "credwatch_bad_records_total", "kind=\"time_ahead\""),
        Some(2.0),
        "{text}"
    );
    let low = support::run::metric_value(&text, "credwatch_low_watermark_timestamp_seconds")
        .expect("a low watermark");
    assert!(
        low <= (now_secs() + 900) as f64,
        "the watermark moved into the future: {low}"
    );
    let letters = state.dead_letters();
    let ahead: Vec<_> = letters
        .iter()
        .filter(|l| l["kind"] == "time_ahead")
        .collect();
    assert_eq!(ahead.len(), 2, "{letters:?}");
    for l in ahead {
        assert!(
            l["shard_id"]
                .as_str()
                .is_some_and(|s| s.starts_with("shardId-")),
            "{l}"
        );
        assert!(
            l["sequence_number"].as_str().is_some_and(|s| !s.is_empty()),
            "{l}"
        );
        assert!(
            l["detail"]
                .as_str()
                .is_some_and(|d| d.contains("max_clock_skew_secs")),
            "{l}"
        );
    }
    assert_accounted(&text, (2 * today.len() + 4) as f64, 0.0);
    assert!(log_of(&log).contains("time_ahead"), "{}", run.log_tail());
    assert_no_panic(&state);
}

// ---- kill -9 at random points -----------------------------------------------------------------

/// xorshift64*: the kill points are random but the same on every run of the test.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Fifty runs, each killed with SIGKILL after a random 0.1 to 2.5 s (during start-up, reading,
/// settling, writing findings or a checkpoint), with records put between them: sessions whose
/// two origins straddle the kills, and a garbage record now and then. A last run then finds
/// every session exactly once, dead-letters every garbage record, and checkpoints every record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_kill_9_at_random_points_lose_nothing_and_repeat_nothing() {
    const RUNS: usize = 50;
    let moto = MotoServer::start();
    stream(&moto, "kills").await;
    let all = sessions("kills", RUNS + 1, NETS);
    let state = State::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut garbage = Vec::new();
    let started = Instant::now();
    let mut killed_with_findings = 0;
    for i in 0..RUNS {
        // Session i's home now, session i-1's second origin: each pair straddles a kill.
        moto.put_log_events(
            LOG_GROUP,
            &format!("home-{i}"),
            &[(now_ms(), all[i].home())],
        )
        .await;
        if i > 0 {
            moto.put_log_events(
                LOG_GROUP,
                &format!("away-{i}"),
                &[(now_ms(), all[i - 1].second())],
            )
            .await;
        }
        if i % 10 == 5 {
            let bad = format!("not gzip, record {i}").into_bytes();
            let key = format!("k{i}");
            let put = moto.put_records("kills", &[(key.as_str(), bad)]).await;
            garbage.extend(put);
        }
        let mut run = Run::start(&moto.endpoint(), "kills", &state, None, &[]);
        let wait = Duration::from_millis(100 + rng.below(2400));
        tokio::time::sleep(wait).await;
        run.assert_running(&format!("kill {i}"));
        run.kill9();
        if !state.findings().is_empty() {
            killed_with_findings += 1;
        }
    }
    moto.put_log_events(LOG_GROUP, "away-last", &[(now_ms(), all[RUNS].home())])
        .await;
    moto.put_log_events(
        LOG_GROUP,
        "away-last-2",
        &[
            (now_ms(), all[RUNS - 1].second()),
            (now_ms(), all[RUNS].second()),
        ],
    )
    .await;
    let last = last_sequences(&moto, "kills").await;
    let mut run = Run::start(&moto.endpoint(), "kills", &state, None, &[]);
    let refs: Vec<&Session> = all.iter().collect();
    let findings = run.wait_for_findings(&state, &refs).await;
    assert_one_finding_per_session(&findings, &refs);
    run.wait_for("every record checkpointed", FINDINGS_TIMEOUT, || {
        checkpoint_covers(&state, &last)
    })
    .await;
    let letters = state.dead_letters();
    for (shard, seq) in &garbage {
        assert!(
            letters
                .iter()
                .any(|l| l["shard_id"] == shard.as_str() && l["sequence_number"] == seq.as_str()),
            "garbage record {shard}@{seq} is not in the dead letters: {letters:?}"
        );
    }
    assert_no_panic(&state);
    eprintln!(
        "{RUNS} kills in {:?}; findings on disk at {killed_with_findings} of the kills",
        started.elapsed()
    );
}
