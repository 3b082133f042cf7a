//! Decode plus detect on one core, against gunzip alone with the same decompressor on the same
//! input. The workload: Kinesis records as CloudWatch Logs delivers them (gzip'd envelopes of
//! 50 events), made of the real events in `../shared/data` with their credentials and addresses
//! varied so that the store sees many sessions, some of them used from a second origin.
//!
//! `cargo bench --bench decode_detect` prints criterion's numbers for both, then the ratio from
//! one timed pass of each, in the same run.

use std::hint::black_box;
use std::time::Instant;

use credwatch::app::process_event;
use credwatch::config::Config;
use credwatch::decode::cloudtrail_file::decode_file;
use credwatch::decode::cloudwatch_envelope::{decode_record, encode_envelope, Scratch};
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

/// Varies credentials and addresses: event `i` uses one of 5,000 sessions, and one event in 200
/// comes from a second origin.
fn vary(events: &[String], n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let mut v: serde_json::Value = serde_json::from_str(&events[i % events.len()]).unwrap();
            let session = i % 5000;
            if let Some(ui) = v.get_mut("userIdentity").and_then(|u| u.as_object_mut()) {
                if ui.contains_key("accessKeyId") {
                    ui.insert(
                        "accessKeyId".into(),
                        format!("ASIABENCH{session:011}").into(),
                    );
                    ui.insert(
                        "arn".into(),
                        format!("arn:aws:sts::111122223333:assumed-role/app/i-{session:017x}")
                            .into(),
                    );
                }
            }
            if v["sourceIPAddress"]
                .as_str()
                .is_some_and(|s| s.as_bytes()[0].is_ascii_digit())
            {
                let second = i % 200 == 199;
                v["sourceIPAddress"] = format!(
                    "54.{}.{}.{}",
                    session / 256 % 256,
                    session % 256,
                    if second { 99 } else { 1 }
                )
                .into();
            }
            v["eventID"] = format!("00000000-0000-4000-8000-{i:012}").into();
            v.to_string()
        })
        .collect()
}

fn records() -> (Vec<Vec<u8>>, usize) {
    let events = vary(&real_events(), EVENTS_PER_RECORD * RECORDS);
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

fn decode_detect_all(
    records: &[Vec<u8>],
    engine: &Engine,
    scratch: &mut Scratch,
    limits: &Limits,
) -> usize {
    let mut findings = 0;
    for (i, r) in records.iter().enumerate() {
        let prefix = if i % 2 == 0 {
            "shardId-000000000000@1"
        } else {
            "shardId-000000000001@2"
        };
        let _ = decode_record(
            r,
            limits,
            prefix,
            scratch,
            |raw| {
                if let Ok((f, _)) = process_event(engine, &raw, prefix, limits) {
                    findings += f.len();
                }
            },
            |_| {},
        );
    }
    // Candidates wait for the watermark; at the end of the input everything has arrived.
    findings + engine.settle(credwatch::settle::SettleAt::END).len()
}

fn decode_all(records: &[Vec<u8>], scratch: &mut Scratch, limits: &Limits) -> usize {
    let mut bytes = 0;
    for r in records {
        let _ = decode_record(
            r,
            limits,
            "shardId-000000000000@1",
            scratch,
            |raw| bytes += raw.json.len(),
            |_| {},
        );
    }
    bytes
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
            b.iter(|| black_box(decode_detect_all(&recs, &engine, &mut scratch, &limits)))
        });
        g.finish();
    }
    c.final_summary();

    // The ratio, from timed passes of both in this run (best of 15 each).
    let best = |f: &mut dyn FnMut()| {
        (0..15)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min)
    };
    let mut d = libdeflater::Decompressor::new();
    let mut out = Vec::new();
    let floor = best(&mut || {
        black_box(gunzip_all(&recs, &mut d, &mut out));
    });
    let mut scratch = Scratch::default();
    let decode = best(&mut || {
        black_box(decode_all(&recs, &mut scratch, &limits));
    });
    let engine = Engine::new(&cfg);
    let mut findings = 0;
    let full = best(&mut || {
        findings = decode_detect_all(&recs, &engine, &mut scratch, &limits);
    });
    let (fe, oe, de) = (
        events as f64 / floor,
        events as f64 / decode,
        events as f64 / full,
    );
    println!(
        "gunzip floor: {fe:.0} events/s; decode only: {oe:.0} events/s ({:.2} of the floor); \
         decode+detect: {de:.0} events/s; ratio {:.2} of the floor; sessions tracked {}, findings {findings}",
        oe / fe,
        de / fe,
        engine.tracked_sessions()
    );
}
