//! `credwatch run` against a real local Kinesis (moto): findings across shards, dead letters,
//! kill -9 and restart, SIGTERM.
//!
//! Each test starts its own moto server and its own `credwatch run` child, killed on every path
//! (the guard kills it on drop). Waits are bounded; a timeout panics with what was awaited, what
//! was seen and the tail of credwatch's log.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use credwatch::decode::gzip::gunzip_capped;
use serde_json::Value;
use support::moto::MotoServer;
use support::prometheus::free_port;
use support::run::{
    assert_one_finding_per_session, checkpoint_covers, checkpointed_sequence, envelope, gzip,
    http_get, last_sequences, metric_value, now_ms, reuse_sessions, sessions, Nets, Run, Session,
    State, ACCT, FINDINGS_TIMEOUT, LOG_GROUP, REGION,
};

/// Where this file's sessions come from.
const NETS: Nets = Nets {
    home: "54.160",
    evil: "54.210.7",
};

// ---- events --------------------------------------------------------------------------------

/// Standard base64 with padding (the dead-letter file's `data_base64`).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Shard ids of `stream`, in order.
async fn shard_ids(moto: &MotoServer, stream: &str) -> Vec<String> {
    moto.kinesis()
        .await
        .list_shards()
        .stream_name(stream)
        .send()
        .await
        .unwrap_or_else(|e| panic!("ListShards {stream}: {e:?}"))
        .shards()
        .iter()
        .map(|s| s.shard_id().to_string())
        .collect()
}

// ---- tests ---------------------------------------------------------------------------------

#[tokio::test]
async fn put_log_events_give_a_finding_for_a_session_whose_origins_arrive_on_different_shards() {
    let moto = MotoServer::start();
    let stream = "cloudtrail";
    moto.create_stream(stream, 4).await;
    moto.create_log_group_with_subscription(LOG_GROUP, stream)
        .await;

    // One PutLogEvents call per event, each on its own log stream: moto gives every call its own
    // record under a random partition key, so each pair crosses shards with probability 3/4.
    // Odd sessions put the second origin first: the home is the earlier event, whatever the
    // order of arrival.
    let sessions = sessions("cross", 12, NETS);
    for (n, s) in sessions.iter().enumerate() {
        let home = (format!("{ACCT}_CloudTrail_{REGION}_home_{n}"), s.home());
        let second = (format!("{ACCT}_CloudTrail_{REGION}_second_{n}"), s.second());
        let order = if n % 2 == 0 {
            [home, second]
        } else {
            [second, home]
        };
        for (log_stream, message) in order {
            moto.put_log_events(LOG_GROUP, &log_stream, &[(now_ms(), message)])
                .await;
        }
    }

    // Where did each event land?
    let mut shard_of: BTreeMap<String, String> = BTreeMap::new();
    for (shard, seq, data) in moto.read_all_records(stream).await {
        let json = gunzip_capped(&data, 1 << 20)
            .unwrap_or_else(|(k, why)| panic!("record {shard}@{seq}: {k:?}: {why}"));
        let envelope: Value = serde_json::from_slice(&json).expect("envelope is JSON");
        for e in envelope["logEvents"].as_array().expect("logEvents") {
            let event: Value =
                serde_json::from_str(e["message"].as_str().expect("message")).expect("event");
            let id = event["eventID"].as_str().expect("eventID").to_string();
            shard_of.insert(id, shard.clone());
        }
    }
    assert_eq!(shard_of.len(), 2 * sessions.len(), "{shard_of:?}");
    let crossing = sessions
        .iter()
        .filter(|s| shard_of[&s.home_id] != shard_of[&s.second_id])
        .count();
    assert!(
        crossing > 0,
        "no session's events crossed shards: {shard_of:?}"
    );

    let state = State::new();
    let mut run = Run::start(&moto.endpoint(), stream, &state, None, &[]);
    let expected: Vec<&Session> = sessions.iter().collect();
    let findings = run.wait_for_findings(&state, &expected).await;
    assert_one_finding_per_session(&findings, &expected);

    // The ids are the stable ones `hunt` gives for the same events.
    let events_file = state.dir.path().join("events.jsonl");
    let lines: Vec<String> = sessions
        .iter()
        .flat_map(|s| [s.home(), s.second()])
        .collect();
    std::fs::write(&events_file, lines.join("\n") + "\n").expect("write events.jsonl");
    let hunt = Command::new(env!("CARGO_BIN_EXE_credwatch"))
        .args(["hunt", "--output", "json"])
        .arg(&events_file)
        .env_remove("CREDWATCH_CONFIG")
        .output()
        .expect("credwatch hunt runs");
    assert!(
        hunt.status.success(),
        "hunt: {}",
        String::from_utf8_lossy(&hunt.stderr)
    );
    let hunt_ids: BTreeSet<String> = String::from_utf8_lossy(&hunt.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("hunt JSON line")["id"].to_string())
        .collect();
    let run_ids: BTreeSet<String> = findings.iter().map(|f| f["id"].to_string()).collect();
    assert_eq!(
        run_ids, hunt_ids,
        "run and hunt give different ids for the same events"
    );
}

#[tokio::test]
async fn garbage_records_are_dead_lettered_and_the_consumer_keeps_going() {
    let moto = MotoServer::start();
    let stream = "raw";
    moto.create_stream(stream, 2).await;

    let s = Session::new("garbage", 0, NETS);
    let full_gzip = gzip(b"{\"messageType\":\"DATA_MESSAGE\"}");
    let garbage: Vec<(&str, Vec<u8>)> = vec![
        ("not_gzip", b"definitely not gzip".to_vec()),
        ("truncated_gzip", full_gzip[..full_gzip.len() / 2].to_vec()),
        ("not_json", gzip(b"{ this is not json")),
        (
            "unknown_message_type",
            gzip(br#"{"messageType":"WHAT","owner":"111122223333","logGroup":"g","logStream":"s","subscriptionFilters":[],"logEvents":[]}"#),
        ),
    ];
    // Everything under one partition key: one shard, garbage first, so that the valid pair can
    // only be read by moving past every bad record.
    let mut records: Vec<(&str, Vec<u8>)> = garbage
        .iter()
        .map(|(_, data)| ("same-key", data.clone()))
        .collect();
    records.push(("same-key", envelope("home", &[s.home()])));
    records.push(("same-key", envelope("elsewhere", &[s.second()])));
    let positions = moto.put_records(stream, &records).await;
    let shards: BTreeSet<&str> = positions.iter().map(|(shard, _)| shard.as_str()).collect();
    assert_eq!(
        shards.len(),
        1,
        "one partition key, one shard: {positions:?}"
    );
    let mut want: Vec<(String, String, &str, Vec<u8>)> = garbage
        .iter()
        .zip(&positions)
        .map(|((kind, data), (shard, seq))| (shard.clone(), seq.clone(), *kind, data.clone()))
        .collect();
    // And garbage on the other shard, with nothing after it. Keys are tried until one lands
    // there; the misses land after the valid pair: dead letters too.
    let stray = b"\x00\x01 nope".to_vec();
    for attempt in 0.. {
        assert!(
            attempt < 50,
            "every partition key lands on {}",
            positions[0].0
        );
        let key = format!("other-key-{attempt}");
        let (shard, seq) = moto
            .put_records(stream, &[(key.as_str(), stray.clone())])
            .await
            .remove(0);
        let done = shard != positions[0].0;
        want.push((shard, seq, "not_gzip", stray.clone()));
        if done {
            break;
        }
    }

    let state = State::new();
    let mut run = Run::start(&moto.endpoint(), stream, &state, None, &[]);
    let findings = run.wait_for_findings(&state, &[&s]).await;
    assert_one_finding_per_session(&findings, &[&s]);

    // Every bad record, and only those, is in the dead-letter file.
    let want_count = want.len();
    let dead = run
        .wait_for(
            "every bad record in the dead-letter file",
            FINDINGS_TIMEOUT,
            || {
                let dead = state.dead_letters();
                if dead.len() >= want_count {
                    Ok(dead)
                } else {
                    Err(format!("{} of {want_count}: {dead:?}", dead.len()))
                }
            },
        )
        .await;
    assert_eq!(dead.len(), want_count, "{dead:#?}");
    for (shard, seq, kind, data) in &want {
        let line = dead
            .iter()
            .find(|d| d["shard_id"] == shard.as_str() && d["sequence_number"] == seq.as_str())
            .unwrap_or_else(|| panic!("no dead letter for {shard}@{seq} ({kind}): {dead:#?}"));
        assert_eq!(line["kind"], *kind, "{shard}@{seq}: {line}");
        let position = line["position"].as_str().unwrap_or_default();
        assert_eq!(position, format!("{shard}@{seq}"), "{line}");
        assert_eq!(line["data_base64"], base64(data), "{shard}@{seq}: {line}");
        assert!(line["detail"].is_string(), "{line}");
    }
    // The consumer is still up.
    run.assert_running("the end of the test");
}

#[tokio::test]
async fn kill_9_then_restart_loses_nothing_keeps_locks_and_repeats_no_finding() {
    let moto = MotoServer::start();
    let stream = "cloudtrail";
    moto.create_stream(stream, 2).await;
    moto.create_log_group_with_subscription(LOG_GROUP, stream)
        .await;
    let sessions = sessions("kill", 25, NETS);
    let (early, late, mid) = (&sessions[..10], &sessions[10..20], &sessions[20..]);

    // Phase 1: homes of sessions 0..20 (five per PutLogEvents call), second origins of 0..10.
    for (i, chunk) in sessions[..20].chunks(5).enumerate() {
        let ts = now_ms();
        let events: Vec<(i64, String)> = chunk.iter().map(|s| (ts, s.home())).collect();
        moto.put_log_events(LOG_GROUP, &format!("homes-{i}"), &events)
            .await;
    }
    for (i, chunk) in early.chunks(5).enumerate() {
        let ts = now_ms();
        let events: Vec<(i64, String)> = chunk.iter().map(|s| (ts, s.second())).collect();
        moto.put_log_events(LOG_GROUP, &format!("seconds-{i}"), &events)
            .await;
    }
    let phase1 = last_sequences(&moto, stream).await;

    let state = State::new();
    let slow_checkpoints = [("CREDWATCH_CHECKPOINT__INTERVAL_SECS", "3")];
    let mut run = Run::start(&moto.endpoint(), stream, &state, None, &slow_checkpoints);
    let early_refs: Vec<&Session> = early.iter().collect();
    let findings = run.wait_for_findings(&state, &early_refs).await;
    assert_one_finding_per_session(&findings, &early_refs);
    // The homes of 10..20 are in a checkpoint: after the restart only the snapshot knows them.
    run.wait_for("a checkpoint covering phase 1", FINDINGS_TIMEOUT, || {
        checkpoint_covers(&state, &phase1)
    })
    .await;

    // Mid-stream: complete pairs for 20..25, one record each, put right after a checkpoint
    // was written; kill -9 as soon as one of their findings is out, most likely before the next
    // checkpoint (3 s later) covers it: the restart then reads that record again.
    let written = std::fs::read(state.checkpoint_file()).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read(state.checkpoint_file()).unwrap_or_default() == written
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (i, s) in mid.iter().enumerate() {
        let ts = now_ms();
        moto.put_log_events(
            LOG_GROUP,
            &format!("pairs-{i}"),
            &[(ts, s.home()), (ts, s.second())],
        )
        .await;
    }
    let mid_names: BTreeSet<String> = mid.iter().map(|s| s.name()).collect();
    run.wait_for(
        "a first finding of sessions 20..25",
        FINDINGS_TIMEOUT,
        || {
            let got = reuse_sessions(&state.findings());
            if got.intersection(&mid_names).next().is_some() {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        },
    )
    .await;
    run.kill9();
    let before_kill = state.findings().len();
    drop(run);
    let replayed = checkpoint_covers(&state, &last_sequences(&moto, stream).await).is_err();

    // Phase 2: the second origins of 10..20, whose homes were read before the kill.
    for (i, chunk) in late.chunks(5).enumerate() {
        let ts = now_ms();
        let events: Vec<(i64, String)> = chunk.iter().map(|s| (ts, s.second())).collect();
        moto.put_log_events(LOG_GROUP, &format!("late-seconds-{i}"), &events)
            .await;
    }
    let mut run = Run::start(&moto.endpoint(), stream, &state, None, &[]);
    let all: Vec<&Session> = sessions.iter().collect();
    let findings = run.wait_for_findings(&state, &all).await;
    eprintln!(
        "{before_kill} findings before the kill, {} after the restart; records read again \
         after the restart: {replayed}",
        findings.len()
    );
    assert_one_finding_per_session(&findings, &all);
}

#[tokio::test]
async fn sigterm_checkpoints_and_exits_0() {
    let moto = MotoServer::start();
    let stream = "cloudtrail";
    moto.create_stream(stream, 3).await;
    let shards = shard_ids(&moto, stream).await;
    assert_eq!(shards.len(), 3, "{shards:?}");

    let s = Session::new("sigterm", 0, NETS);
    moto.put_records(
        stream,
        &[
            ("key-a", envelope("a", &[s.home()])),
            ("key-b", envelope("b", &[s.second()])),
        ],
    )
    .await;
    let last = last_sequences(&moto, stream).await;

    let state = State::new();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut run = Run::start(&moto.endpoint(), stream, &state, Some(&addr), &[]);
    run.wait_for(
        "GET /readyz to answer 200",
        Duration::from_secs(30),
        || match http_get(port, "/readyz") {
            Some((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    let live = http_get(port, "/livez");
    assert!(matches!(live, Some((200, _))), "/livez: {live:?}");
    let metrics = http_get(port, "/metrics");
    assert!(
        matches!(&metrics, Some((200, body)) if body.contains("# TYPE ")),
        "/metrics: {metrics:?}"
    );
    let findings = run.wait_for_findings(&state, &[&s]).await;
    assert_one_finding_per_session(&findings, &[&s]);

    run.sigterm();
    let sent = Instant::now();
    let status = run.wait_exit(Duration::from_secs(10));
    let log = run.log_tail();
    let status = status.unwrap_or_else(|| {
        panic!("credwatch run still running 10 s after SIGTERM\n--- credwatch log ---\n{log}")
    });
    assert!(
        status.success(),
        "exit after SIGTERM: {status}\n--- credwatch log ---\n{log}"
    );
    eprintln!("exited {:?} after SIGTERM", sent.elapsed());

    let cp = state.checkpoint().unwrap_or_else(|| {
        panic!("no checkpoint.json after SIGTERM\n--- credwatch log ---\n{log}")
    });
    for shard in &shards {
        let entry = &cp["shards"][shard.as_str()];
        assert!(
            entry.is_object(),
            "checkpoint has no entry for {shard}: {cp}"
        );
        assert_eq!(entry["finished"], false, "{shard}: {cp}");
    }
    for (shard, want) in &last {
        assert_eq!(
            checkpointed_sequence(&cp, shard).as_deref(),
            Some(want.as_str()),
            "{shard}: the final checkpoint should cover its last record: {cp}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_candidates_are_pending_then_restart_writes_each_finding_once() {
    let moto = MotoServer::start();
    let stream = "pending";
    moto.create_stream(stream, 2).await;
    moto.create_log_group_with_subscription(LOG_GROUP, stream)
        .await;
    let sessions = sessions("pend", 6, NETS);
    // Homes and second origins on their own log streams, so on both shards.
    for (i, s) in sessions.iter().enumerate() {
        moto.put_log_events(LOG_GROUP, &format!("home-{i}"), &[(now_ms(), s.home())])
            .await;
        moto.put_log_events(LOG_GROUP, &format!("away-{i}"), &[(now_ms(), s.second())])
            .await;
    }
    let last = last_sequences(&moto, stream).await;
    assert_eq!(last.len(), 2, "records on both shards: {last:?}");

    // The stream never goes idle for this run: its watermark stays at the events' own times, so
    // every candidate waits (a second origin needs the watermark past its time + the allowed lateness).
    let state = State::new();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let hold = [("CREDWATCH_DETECTION__IDLE_SECS", "3600")];
    let mut run = Run::start(&moto.endpoint(), stream, &state, Some(&addr), &hold);
    run.wait_for(
        "six candidates pending and a checkpoint written",
        FINDINGS_TIMEOUT,
        || {
            let text = http_get(port, "/metrics")
                .map(|(_, t)| t)
                .unwrap_or_default();
            let pending = metric_value(&text, "credwatch_candidates_pending");
            match (pending, state.checkpoint()) {
                (Some(p), Some(_)) if p >= 6.0 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    // A second checkpoint interval, so a checkpoint taken after the candidates is on disk.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        checkpoint_covers(&state, &last).is_err(),
        "the checkpoint moved past records whose candidates are pending: {:?}",
        state.checkpoint()
    );
    run.kill9();
    drop(run);
    assert!(
        state.findings().is_empty(),
        "nothing is final yet, nothing was written: {:?}",
        state.findings()
    );

    // Restarted with the tests' idleness: the held records are read again and settle.
    let mut run = Run::start(&moto.endpoint(), stream, &state, None, &[]);
    let refs: Vec<&Session> = sessions.iter().collect();
    let findings = run.wait_for_findings(&state, &refs).await;
    assert_one_finding_per_session(&findings, &refs);
    run.wait_for(
        "a checkpoint covering every record",
        FINDINGS_TIMEOUT,
        || checkpoint_covers(&state, &last),
    )
    .await;
}
