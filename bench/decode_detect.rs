//! Decode plus detect on one core, against gunzip alone with the same decompressor on the same
//! input. The workload: Kinesis records as CloudWatch Logs delivers them (gzip'd envelopes of
//! 50 events), made of the real events in `../shared/data` (those that give no finding of their
//! own) with their credentials, addresses and times varied so that the store sees 5,000 EC2
//! instance sessions, 125 of them used from a second origin: every pass must find those 125.
//!
//! `cargo bench --bench decode_detect` prints criterion's numbers for both, then the ratios from
//! interleaved timed passes in the same run: gunzip alone, decode only, decode + detect as the
//! consumer does it (events read in place from the escaped messages), and decode + detect with
//! every event unescaped and parsed whole (the path before, for comparison).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use credwatch::app::{process_decoded, process_event};
use credwatch::config::Config;
use credwatch::decode::cloudtrail_file::decode_file;
use credwatch::decode::cloudwatch_envelope::{
    decode_record, decode_record_read, encode_envelope, Decoded, Scratch,
};
use credwatch::decode::gzip::gunzip_capped_into;
use credwatch::decode::Limits;
use credwatch::engine::Engine;
use criterion::{Criterion, Throughput};

const EVENTS_PER_RECORD: usize = 50;
const RECORDS: usize = 400;

/// Real events from the shared recordings, as JSON texts.
fn real_events() -> Vec<String> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data");
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(root).sort_by_file_name() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().to_string();
        if !entry.file_type().is_file() || !(name.ends_with(".json") || name.ends_with(".json.gz"))
        {
            continue;
        }
        let bytes = std::fs::read(entry.path()).unwrap();
        let _ = decode_file(
            &bytes,
            &Limits::default(),
            "bench",
            |raw| out.push(raw.json.into_owned()),
            |_| {},
        );
    }
    out
}

/// Sessions in the workload; each is used by `n / SESSIONS` events.
const SESSIONS: usize = 5000;
/// Every this many sessions, one session's third use comes from a second origin.
const PLANT_EVERY: usize = 40;

/// Varies credentials, addresses and times: event `i` is a call by session `i % SESSIONS` (an
/// EC2 instance-profile credential) from its instance's address, at a time increasing with `i`;
/// the third use of every `PLANT_EVERY`-th session comes from another address, so a run over
/// the whole workload has exactly [`planted`] findings. The rest of each event (names,
/// parameters, user agents, sizes) is the real event's.
fn vary(events: &[String], n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let session = i % SESSIONS;
            let second = i / SESSIONS == 2 && session % PLANT_EVERY == 0;
            vary_one(&events[i % events.len()], i, session, second)
        })
        .collect()
}

/// Event `ev` as call `i` of `session`, from its home or (`second`) from another address.
fn vary_one(ev: &str, i: usize, session: usize, second: bool) -> String {
    let time = credwatch::event::format_time;
    const BASE: i64 = 1_722_470_400; // 2024-08-01
    let mut v: serde_json::Value = serde_json::from_str(ev).unwrap();
    let instance = format!("i-{session:017x}");
    v["userIdentity"] = serde_json::json!({
        "type": "AssumedRole",
        "principalId": format!("AROABENCHEXAMPLE:{instance}"),
        "arn": format!("arn:aws:sts::111122223333:assumed-role/app/{instance}"),
        "accountId": "111122223333",
        "accessKeyId": format!("ASIABENCH{session:011}"),
        "sessionContext": {
            "sessionIssuer": {
                "type": "Role",
                "arn": "arn:aws:iam::111122223333:role/app",
                "userName": "app"
            },
            "attributes": {"creationDate": time(BASE - 300), "mfaAuthenticated": "false"},
            "ec2RoleDelivery": "2.0"
        }
    });
    if let Some(o) = v.as_object_mut() {
        o.remove("vpcEndpointId");
        o.remove("vpcEndpointAccountId");
    }
    // In AWS's EC2 ranges (54.160.0.0/13, us-east-1): the second origin is another instance,
    // so that session_token_reuse is the one rule it meets.
    v["sourceIPAddress"] = format!(
        "54.160.{}.{}",
        session / 256 % 128 + if second { 128 } else { 0 },
        session % 256
    )
    .into();
    v["eventTime"] = time(BASE + (i / 100) as i64).into();
    v["eventID"] = format!("00000000-0000-4000-8000-{i:012}").into();
    v.to_string()
}

/// The real events that, as an instance's call, give no finding of their own (the event rules:
/// GetCallerIdentity, CreateAccessKey, a trail stopped, ... each fire on their event name): in
/// a workload made of these, every finding is a planted second origin.
fn quiet(events: Vec<String>) -> Vec<String> {
    let engine = Engine::new(&Config::default());
    let limits = Limits::default();
    events
        .into_iter()
        .enumerate()
        .filter(|(j, ev)| {
            let text = vary_one(ev, *j, 1_000_000 + j, false);
            let raw = credwatch::decode::RawEvent {
                json: std::borrow::Cow::Borrowed(text.as_str()),
                index: 0,
            };
            matches!(process_event(&engine, &raw, "pool", &limits), Ok((f, _)) if f.is_empty())
        })
        .map(|(_, ev)| ev)
        .collect()
}

/// The findings a run over `n` events of [`vary`] must give: one per planted session.
fn planted(n: usize) -> usize {
    if n / SESSIONS >= 3 {
        SESSIONS.div_ceil(PLANT_EVERY)
    } else {
        0
    }
}

fn records() -> (Vec<Vec<u8>>, usize) {
    let events = vary(&quiet(real_events()), EVENTS_PER_RECORD * RECORDS);
    let recs: Vec<Vec<u8>> = events
        .chunks(EVENTS_PER_RECORD)
        .enumerate()
        .map(|(i, chunk)| {
            let msgs: Vec<(i64, &str)> = chunk
                .iter()
                .map(|e| (1_722_587_000_000 + i as i64, e.as_str()))
                .collect();
            encode_envelope(
                "111122223333",
                "/aws/cloudtrail",
                &format!("stream-{}", i % 8),
                "cw",
                &msgs,
            )
        })
        .collect();
    (recs, events.len())
}

fn gunzip_all(records: &[Vec<u8>], d: &mut libdeflater::Decompressor, out: &mut Vec<u8>) -> usize {
    let mut n = 0;
    for r in records {
        gunzip_capped_into(d, r, 64 << 20, out).unwrap();
        n += out.len();
    }
    n
}

/// Decodes and judges every record; returns the findings by rule. `whole`: the way the consumer
/// worked before events were read in place, every message unescaped into a text and parsed
/// whole (`decode_record`, `process_event`).
fn decode_detect_all(
    records: &[Vec<u8>],
    engine: &Engine,
    scratch: &mut Scratch,
    limits: &Limits,
    whole: bool,
) -> BTreeMap<String, usize> {
    let mut findings = BTreeMap::new();
    let mut count = |f: &[credwatch::finding::Finding]| {
        for f in f {
            *findings.entry(f.rule.clone()).or_insert(0) += 1;
        }
    };
    for (i, r) in records.iter().enumerate() {
        let prefix = if i % 2 == 0 {
            "shardId-000000000000@1"
        } else {
            "shardId-000000000001@2"
        };
        let mut judged = |found: Result<(Vec<credwatch::finding::Finding>, i64), _>| {
            if let Ok((f, _)) = found {
                count(&f);
            }
        };
        let _ = if whole {
            decode_record(
                r,
                limits,
                prefix,
                scratch,
                |raw| judged(process_event(engine, &raw, prefix, limits)),
                |_| {},
            )
        } else {
            decode_record_read(
                r,
                limits,
                prefix,
                scratch,
                |ev| judged(process_decoded(engine, &ev, prefix, limits)),
                |_| {},
            )
        };
    }
    // Candidates wait for the watermark; at the end of the input everything has arrived.
    count(&engine.settle(credwatch::settle::SettleAt::END));
    findings
}

/// Decodes every record as the consumer does; returns how many events came out, and how many
/// of them were read in place (the others, which the engine reads whole, unescaped).
fn decode_all(records: &[Vec<u8>], scratch: &mut Scratch, limits: &Limits) -> (usize, usize) {
    let (mut events, mut read) = (0, 0);
    for r in records {
        let _ = decode_record_read(
            r,
            limits,
            "shardId-000000000000@1",
            scratch,
            |ev| {
                events += 1;
                read += usize::from(matches!(ev, Decoded::Read { .. }));
            },
            |_| {},
        );
    }
    (events, read)
}

fn main() {
    let (recs, events) = records();
    let bytes: usize = recs.iter().map(Vec::len).sum();
    eprintln!(
        "workload: {} records, {events} events, {bytes} compressed bytes",
        recs.len()
    );
    let limits = Limits::default();
    let cfg = Config::default();

    let mut c = Criterion::default().configure_from_args().sample_size(20);
    {
        let mut g = c.benchmark_group("one_core");
        g.throughput(Throughput::Elements(events as u64));
        let mut d = libdeflater::Decompressor::new();
        let mut out = Vec::new();
        g.bench_function("gunzip_floor_libdeflate", |b| {
            b.iter(|| black_box(gunzip_all(&recs, &mut d, &mut out)))
        });
        let mut scratch = Scratch::default();
        g.bench_function("decode_only", |b| {
            b.iter(|| black_box(decode_all(&recs, &mut scratch, &limits)))
        });
        // The engine keeps its state between iterations, as it does in a running consumer.
        let engine = Engine::new(&cfg);
        let mut scratch = Scratch::default();
        g.bench_function("decode_detect", |b| {
            b.iter(|| {
                black_box(decode_detect_all(
                    &recs,
                    &engine,
                    &mut scratch,
                    &limits,
                    false,
                ))
            })
        });
        g.finish();
    }
    c.final_summary();

    // The ratio, from timed passes in this run: rounds of one pass of each (gunzip alone, decode,
    // decode and detect), so that a slow spell of the machine slows all three; the best of each.
    let mut d = libdeflater::Decompressor::new();
    let mut out = Vec::new();
    let mut scratch = Scratch::default();
    let (decoded, read) = decode_all(&recs, &mut scratch, &limits);
    assert_eq!(decoded, events, "decode gives every event");
    let gunzipped = gunzip_all(&recs, &mut d, &mut out);
    let want = planted(events);
    assert!(want > 0, "the workload plants no second origin");
    let want_map = BTreeMap::from([("session_token_reuse".to_string(), want)]);
    let (mut floor, mut decode, mut full, mut text) = (f64::MAX, f64::MAX, f64::MAX, f64::MAX);
    let mut findings = BTreeMap::new();
    let mut tracked = 0;
    let timed = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64()
    };
    for _ in 0..30 {
        floor = floor.min(timed(&mut || {
            black_box(gunzip_all(&recs, &mut d, &mut out));
        }));
        decode = decode.min(timed(&mut || {
            black_box(decode_all(&recs, &mut scratch, &limits));
        }));
        // A fresh engine for each pass (made before its clock starts), so that every pass does
        // the whole work, findings included, and must find every planted session.
        let engine = Engine::new(&cfg);
        full = full.min(timed(&mut || {
            findings = decode_detect_all(&recs, &engine, &mut scratch, &limits, false);
        }));
        tracked = engine.tracked_sessions();
        assert_eq!(
            findings, want_map,
            "decode+detect found these findings, the workload plants {want} second origins"
        );
        let engine = Engine::new(&cfg);
        text = text.min(timed(&mut || {
            findings = decode_detect_all(&recs, &engine, &mut scratch, &limits, true);
        }));
        assert_eq!(findings, want_map, "the text path finds the same");
    }
    let (fe, oe, de, te) = (
        events as f64 / floor,
        events as f64 / decode,
        events as f64 / full,
        events as f64 / text,
    );
    println!(
        "gunzip floor: {fe:.0} events/s ({:.0} MB/s of JSON, {} bytes an event); decode only: {oe:.0} events/s ({:.2} of the floor); \
         decode+detect: {de:.0} events/s; ratio {:.2} of the floor; sessions tracked {tracked}, \
         findings {findings:?} (planted {want}); read in place {read} of {events} events; \
         decode+detect with every event unescaped and parsed whole: {te:.0} events/s ({:.2} of \
         the floor; the in-place path {:.2}x it)",
        gunzipped as f64 / floor / 1e6,
        gunzipped / events,
        oe / fe,
        de / fe,
        te / fe,
        de / te,
    );
}
