//! `credwatch run` across a reshard, against kinesis-mock: moto never ends a closed shard,
//! kinesis-mock does. Each test starts its own kinesis-mock and `credwatch run` child (killed on
//! every path); waits are bounded and a timeout panics with what was seen and credwatch's log.

mod support;

use std::time::Duration;

use aws_sdk_kinesis::types::ShardIteratorType;
use support::kinesis_mock::KinesisMock;
use support::run::{
    assert_one_finding_per_session, envelope, reuse_sessions, sessions, Nets, Run, Session, State,
    GRACE,
};

// Explicit hash keys, one in each quarter of the key space. A 2-shard stream has
// shard 0 = [0, 2^127) and shard 1 = [2^127, 2^128); splitting a shard in half puts Q1 and Q2
// (Q3 and Q4) on different children; merging shard 0's upper child with shard 1's lower child
// gives [2^126, 2^127 + 2^126), which holds `MIDDLE`.
const Q1: u128 = 1 << 125;
const Q2: u128 = 3 << 125;
const Q3: u128 = 5 << 125;
const Q4: u128 = 7 << 125;
const MIDDLE: u128 = 1 << 127;

/// Where this file's sessions come from.
const NETS: Nets = Nets {
    home: "54.164",
    evil: "3.90.5",
};
/// The log stream of every envelope.
const LOG_STREAM: &str = "i-0abc-logs";
/// What `credwatch run` gets on top of the usual test environment: quick shard discovery, and
/// two records per GetRecords call: a parent takes many calls to read, so a child read
/// alongside it would get findings in before the parent's last ones.
const RUN_ENV: &[(&str, &str)] = &[
    ("CREDWATCH_KINESIS__SHARD_DISCOVERY_INTERVAL_SECS", "1"),
    ("CREDWATCH_KINESIS__MAX_RECORDS_PER_CALL", "2"),
];

/// Reads one shard from TRIM_HORIZON until the shard ends (null `NextShardIterator`) or a read
/// comes back empty while the shard is open; returns the records and whether the shard ended.
async fn read_shard(
    kinesis: &aws_sdk_kinesis::Client,
    stream: &str,
    shard_id: &str,
) -> (Vec<Vec<u8>>, bool) {
    let mut iterator = kinesis
        .get_shard_iterator()
        .stream_name(stream)
        .shard_id(shard_id)
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GetShardIterator {stream}/{shard_id}: {e:?}"))
        .shard_iterator()
        .map(str::to_string);
    let mut records = Vec::new();
    for _ in 0..100 {
        let Some(it) = iterator else {
            return (records, true);
        };
        let out = kinesis
            .get_records()
            .shard_iterator(it)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GetRecords {stream}/{shard_id}: {e:?}"));
        let empty = out.records().is_empty();
        records.extend(out.records().iter().map(|r| r.data().as_ref().to_vec()));
        iterator = out.next_shard_iterator().map(str::to_string);
        if empty && iterator.is_some() {
            return (records, false);
        }
    }
    panic!("{stream}/{shard_id}: more than 100 reads");
}

/// Proves the emulator does what the reshard test relies on: the SDK talks to it, a split and
/// a merge close their parents, a closed parent's records stay readable and its last read ends
/// the shard, and ListShards gives the children with their parents.
#[tokio::test]
async fn kinesis_mock_ends_closed_shards_after_split_and_merge() {
    let mock = KinesisMock::start();
    let kinesis = mock.kinesis().await;
    let stream = "reshard-smoke";
    mock.create_stream(stream, 2).await;
    let shards = mock.list_shards(stream).await;
    assert_eq!(shards.len(), 2, "{shards:?}");
    let (s0, s1) = (
        shards[0].shard_id().to_string(),
        shards[1].shard_id().to_string(),
    );

    let put = mock
        .put_records_at(stream, &[(0, b"a".to_vec()), (u128::MAX, b"b".to_vec())])
        .await;
    assert_eq!(put[0].0, s0, "{put:?}");

    mock.split_shard_in_half(stream, &s0).await;
    let shards = mock.list_shards(stream).await;
    assert_eq!(shards.len(), 4, "{shards:?}");
    let children: Vec<_> = shards
        .iter()
        .filter(|s| s.parent_shard_id() == Some(s0.as_str()))
        .collect();
    assert_eq!(children.len(), 2, "{shards:?}");
    let (records, ended) = read_shard(&kinesis, stream, &s0).await;
    assert_eq!(records, vec![b"a".to_vec()]);
    assert!(ended, "split parent {s0} never ended");
    let (_, ended) = read_shard(&kinesis, stream, &s1).await;
    assert!(!ended, "open shard {s1} ended");

    // Merge the upper child of s0 with s1 (adjacent).
    let upper = children
        .iter()
        .max_by_key(|s| {
            s.hash_key_range()
                .expect("range")
                .starting_hash_key()
                .parse::<u128>()
                .expect("hash key")
        })
        .expect("two children");
    let upper = upper.shard_id().to_string();
    mock.merge_shards(stream, &upper, &s1).await;
    let shards = mock.list_shards(stream).await;
    let merged: Vec<_> = shards
        .iter()
        .filter(|s| {
            s.parent_shard_id() == Some(upper.as_str())
                && s.adjacent_parent_shard_id() == Some(s1.as_str())
                || s.parent_shard_id() == Some(s1.as_str())
                    && s.adjacent_parent_shard_id() == Some(upper.as_str())
        })
        .collect();
    assert_eq!(merged.len(), 1, "{shards:?}");
    let (records, ended) = read_shard(&kinesis, stream, &s1).await;
    assert_eq!(records, vec![b"b".to_vec()]);
    assert!(ended, "merged parent {s1} never ended");

    let put = mock
        .put_records_at(stream, &[(u128::MAX, b"c".to_vec())])
        .await;
    assert_eq!(put[0].0, merged[0].shard_id(), "{put:?}");
}

/// The shard of `shards` whose hash key range holds `hash`, among the open ones.
fn open_shard_at(shards: &[aws_sdk_kinesis::types::Shard], hash: u128) -> String {
    shards
        .iter()
        .filter(|s| {
            s.sequence_number_range()
                .and_then(|r| r.ending_sequence_number())
                .is_none()
        })
        .find(|s| {
            let r = s.hash_key_range().expect("hash key range");
            let lo: u128 = r.starting_hash_key().parse().expect("starting hash key");
            let hi: u128 = r.ending_hash_key().parse().expect("ending hash key");
            (lo..=hi).contains(&hash)
        })
        .unwrap_or_else(|| panic!("no open shard holds {hash}: {shards:?}"))
        .shard_id()
        .to_string()
}

#[tokio::test]
async fn split_and_merge_while_running_lose_nothing_and_read_parents_first() {
    let mock = KinesisMock::start();
    let stream = "reshard";
    mock.create_stream(stream, 2).await;
    let shards = mock.list_shards(stream).await;
    let (s0, s1) = (open_shard_at(&shards, Q1), open_shard_at(&shards, Q3));
    assert_ne!(s0, s1);

    // Before the consumer starts: on shard 0, complete pairs of `parent` sessions (one record
    // each), homes of `roaming` sessions on both shards; then shard 0 is split and complete
    // pairs of `child` sessions go to its children. Reading parents first puts every `parent`
    // finding before every `child` finding.
    let parent = sessions("parent", 8, NETS);
    let child = sessions("child", 8, NETS);
    let roaming = sessions("roaming", 12, NETS);
    let merged_pairs = sessions("merged", 4, NETS);
    let pair = |s: &Session| envelope(LOG_STREAM, &[s.home(), s.second()]);
    let at = |hashes: &[u128], i: usize| hashes[i % hashes.len()];

    let mut records: Vec<(u128, Vec<u8>)> = Vec::new();
    for (i, s) in parent.iter().enumerate() {
        records.push((at(&[Q1, Q2], i), pair(s)));
    }
    for (i, s) in roaming.iter().enumerate() {
        records.push((at(&[Q1, Q2, Q3, Q4], i), envelope(LOG_STREAM, &[s.home()])));
    }
    let put = mock.put_records_at(stream, &records).await;
    for (i, (shard, _)) in put.iter().enumerate().take(parent.len()) {
        assert_eq!(shard, &s0, "parent pair {i} not on {s0}: {put:?}");
    }
    mock.split_shard_in_half(stream, &s0).await;
    let shards = mock.list_shards(stream).await;
    let (s0_low, s0_high) = (open_shard_at(&shards, Q1), open_shard_at(&shards, Q2));
    let records: Vec<(u128, Vec<u8>)> = child
        .iter()
        .enumerate()
        .map(|(i, s)| (at(&[Q1, Q2], i), pair(s)))
        .collect();
    let put = mock.put_records_at(stream, &records).await;
    for (shard, _) in &put {
        assert!(
            shard == &s0_low || shard == &s0_high,
            "child pair not on a child of {s0}: {put:?}"
        );
    }

    let state = State::new();
    let mut run = Run::start(&mock.endpoint(), stream, &state, None, RUN_ENV);
    let before: Vec<&Session> = parent.iter().chain(&child).collect();
    run.await_findings(&state, &before).await;
    // Findings settle together once the watermark passes them, so their order in the file says
    // nothing about read order: the log does. The parent's SHARD_END comes before any child is
    // read.
    let log = std::fs::read_to_string(&run.log).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let line_where = |pred: &dyn Fn(&str) -> bool| lines.iter().position(|l| pred(l));
    let parent_end =
        line_where(&|l: &str| l.contains("shard finished (SHARD_END)") && l.contains(&s0));
    let child_read = line_where(&|l: &str| {
        l.contains("reading shard") && (l.contains(&s0_low) || l.contains(&s0_high))
    });
    assert!(
        parent_end.is_some() && child_read.is_some() && parent_end < child_read,
        "a child of {s0} was read before {s0} ended: SHARD_END at log line {parent_end:?}, \
         first child read at {child_read:?}:\n{}",
        run.log_tail()
    );
    let findings = state.findings();
    assert_eq!(
        reuse_sessions(&findings).len(),
        before.len(),
        "{findings:?}"
    );

    // While running: split shard 1, then the second origins of half the roaming sessions go to
    // its children.
    mock.split_shard_in_half(stream, &s1).await;
    let shards = mock.list_shards(stream).await;
    let (s1_low, s1_high) = (open_shard_at(&shards, Q3), open_shard_at(&shards, Q4));
    let (first_half, second_half) = roaming.split_at(roaming.len() / 2);
    let records: Vec<(u128, Vec<u8>)> = first_half
        .iter()
        .enumerate()
        .map(|(i, s)| (at(&[Q3, Q4], i), envelope(LOG_STREAM, &[s.second()])))
        .collect();
    let put = mock.put_records_at(stream, &records).await;
    for (shard, _) in &put {
        assert!(
            shard == &s1_low || shard == &s1_high,
            "not on a child of {s1}: {put:?}"
        );
    }
    let waited: Vec<&Session> = first_half.iter().collect();
    run.await_findings(&state, &waited).await;

    // Still running: merge shard 0's upper child with shard 1's lower child; the rest goes to
    // the merged shard.
    mock.merge_shards(stream, &s0_high, &s1_low).await;
    let shards = mock.list_shards(stream).await;
    let merged = open_shard_at(&shards, MIDDLE);
    let mut records: Vec<(u128, Vec<u8>)> = second_half
        .iter()
        .map(|s| (MIDDLE, envelope(LOG_STREAM, &[s.second()])))
        .collect();
    records.extend(merged_pairs.iter().map(|s| (MIDDLE, pair(s))));
    let put = mock.put_records_at(stream, &records).await;
    for (shard, _) in &put {
        assert_eq!(shard, &merged, "not on the merged shard: {put:?}");
    }

    let all: Vec<&Session> = parent
        .iter()
        .chain(&child)
        .chain(&roaming)
        .chain(&merged_pairs)
        .collect();
    run.await_findings(&state, &all).await;
    tokio::time::sleep(GRACE).await;
    run.assert_running("duplicate findings");
    assert_one_finding_per_session(&state.findings(), &all);

    // Stop; the final checkpoint has every parent finished and every open shard not.
    run.sigterm();
    let status = run.wait_exit(Duration::from_secs(10));
    let log = run.log_tail();
    let status = status.unwrap_or_else(|| {
        panic!("credwatch run still running 10 s after SIGTERM\n--- credwatch log ---\n{log}")
    });
    assert!(
        status.success(),
        "exit after SIGTERM: {status}\n--- credwatch log ---\n{log}"
    );
    let cp = state.checkpoint().unwrap_or_else(|| {
        panic!("no checkpoint.json after SIGTERM\n--- credwatch log ---\n{log}")
    });
    for parent in [&s0, &s1, &s0_high, &s1_low] {
        assert_eq!(
            cp["shards"][parent.as_str()]["finished"],
            true,
            "parent {parent} not finished in the checkpoint: {cp}"
        );
    }
    for open in [&s0_low, &s1_high, &merged] {
        assert_eq!(
            cp["shards"][open.as_str()]["finished"],
            false,
            "open shard {open} in the checkpoint: {cp}"
        );
    }
    assert_eq!(
        state.findings().len(),
        all.len(),
        "findings written after the last check"
    );
}

/// How many times the log says `shard` was subscribed to (enhanced fan-out).
fn subscriptions_in_log(log: &std::path::Path, shard: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("subscribed to shard") && l.contains(shard))
        .count()
}

#[tokio::test]
async fn enhanced_fan_out_reads_across_a_reshard_and_a_resubscribe_and_resumes_from_its_checkpoint()
{
    let mock = KinesisMock::start();
    let stream = "fan-out";
    mock.create_stream(stream, 2).await;
    let shards = mock.list_shards(stream).await;
    let (s0, s1) = (open_shard_at(&shards, Q1), open_shard_at(&shards, Q3));
    let efo_env: &[(&str, &str)] = &[
        ("CREDWATCH_KINESIS__SHARD_DISCOVERY_INTERVAL_SECS", "1"),
        ("CREDWATCH_KINESIS__CONSUMER", "enhanced_fan_out"),
        ("CREDWATCH_KINESIS__CONSUMER_NAME", "credwatch-test"),
        // A forced resubscribe every 6 s (AWS ends a subscription after 5 minutes).
        ("CREDWATCH_KINESIS__RESUBSCRIBE_SECS", "6"),
    ];

    // Pairs on shard 0, then shard 0 split and pairs on its children, homes of `roaming` on
    // every shard.
    let parent = sessions("efo-parent", 6, NETS);
    let child = sessions("efo-child", 6, NETS);
    let roaming = sessions("efo-roaming", 8, NETS);
    let after_restart = sessions("efo-restart", 6, NETS);
    let pair = |s: &Session| envelope(LOG_STREAM, &[s.home(), s.second()]);
    let at = |hashes: &[u128], i: usize| hashes[i % hashes.len()];
    let mut records: Vec<(u128, Vec<u8>)> = Vec::new();
    for (i, s) in parent.iter().enumerate() {
        records.push((at(&[Q1, Q2], i), pair(s)));
    }
    for (i, s) in roaming.iter().enumerate() {
        records.push((at(&[Q1, Q2, Q3, Q4], i), envelope(LOG_STREAM, &[s.home()])));
    }
    mock.put_records_at(stream, &records).await;
    mock.split_shard_in_half(stream, &s0).await;
    let shards = mock.list_shards(stream).await;
    let (s0_low, s0_high) = (open_shard_at(&shards, Q1), open_shard_at(&shards, Q2));
    let records: Vec<(u128, Vec<u8>)> = child
        .iter()
        .enumerate()
        .map(|(i, s)| (at(&[Q1, Q2], i), pair(s)))
        .collect();
    mock.put_records_at(stream, &records).await;

    let state = State::new();
    let mut run = Run::start(&mock.endpoint(), stream, &state, None, efo_env);
    let before: Vec<&Session> = parent.iter().chain(&child).collect();
    run.await_findings(&state, &before).await;
    let log = std::fs::read_to_string(&run.log).unwrap_or_default();
    assert!(
        log.contains("shard finished (SHARD_END)") && log.contains(&s0),
        "the split parent {s0} was read to its end through enhanced fan-out:\n{}",
        run.log_tail()
    );

    // Wait for a forced resubscribe on shard 1 (and on a child), then send the second origins
    // of the roaming sessions: they are read by the renewed subscriptions.
    let log_path = run.log.clone();
    run.wait_for("a resubscribe on every open shard", FAN_OUT_WAIT, || {
        let counts: Vec<usize> = [&s1, &s0_low, &s0_high]
            .iter()
            .map(|s| subscriptions_in_log(&log_path, s))
            .collect();
        if counts.iter().all(|&n| n >= 2) {
            Ok(())
        } else {
            Err(format!("subscriptions per open shard: {counts:?}"))
        }
    })
    .await;
    let records: Vec<(u128, Vec<u8>)> = roaming
        .iter()
        .enumerate()
        .map(|(i, s)| {
            (
                at(&[Q1, Q2, Q3, Q4], i),
                envelope(LOG_STREAM, &[s.second()]),
            )
        })
        .collect();
    mock.put_records_at(stream, &records).await;
    let so_far: Vec<&Session> = parent.iter().chain(&child).chain(&roaming).collect();
    run.await_findings(&state, &so_far).await;
    tokio::time::sleep(GRACE).await;
    run.assert_running("duplicate findings");
    assert_one_finding_per_session(&state.findings(), &so_far);

    // Stop, put more while it is down, start again: it resumes from the checkpoint (the same
    // registered consumer), with nothing lost or repeated.
    run.sigterm();
    let status = run.wait_exit(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "exit after SIGTERM: {status:?}\n{}",
        run.log_tail()
    );
    let records: Vec<(u128, Vec<u8>)> = after_restart
        .iter()
        .enumerate()
        .map(|(i, s)| (at(&[Q1, Q2, Q3, Q4], i), pair(s)))
        .collect();
    mock.put_records_at(stream, &records).await;
    let mut run = Run::start(&mock.endpoint(), stream, &state, None, efo_env);
    let all: Vec<&Session> = so_far.iter().copied().chain(&after_restart).collect();
    run.await_findings(&state, &all).await;
    tokio::time::sleep(GRACE).await;
    run.assert_running("duplicate findings");
    assert_one_finding_per_session(&state.findings(), &all);
    let log = std::fs::read_to_string(&run.log).unwrap_or_default();
    assert!(
        log.contains("already registered"),
        "the restart found the consumer it had registered:\n{}",
        run.log_tail()
    );
}

/// Longest wait for subscriptions to renew.
const FAN_OUT_WAIT: Duration = Duration::from_secs(60);
