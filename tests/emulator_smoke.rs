//! Proves the emulator harness: CloudTrail events put into CloudWatch Logs come out of Kinesis
//! as gzip'd subscription envelopes, and raw records put into Kinesis come back unchanged.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use credwatch::decode::gzip::gunzip_capped;
use serde_json::{json, Value};
use support::moto::{MotoServer, ACCOUNT_ID, SUBSCRIPTION_FILTER};

/// No test record comes near this; a bigger one is a bug, not a record.
const MAX_DECOMPRESSED_BYTES: usize = 64 << 20;

fn gunzip(data: &[u8]) -> Vec<u8> {
    gunzip_capped(data, MAX_DECOMPRESSED_BYTES)
        .unwrap_or_else(|(kind, why)| panic!("record is not valid gzip: {kind:?}: {why}"))
}

fn now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(now.as_millis()).expect("milliseconds fit i64")
}

fn cloudtrail_event(n: usize, log_stream: &str) -> String {
    json!({
        "eventVersion": "1.08",
        "userIdentity": {
            "type": "AssumedRole",
            "principalId": "AROAEXAMPLE:i-0123456789abcdef0",
            "arn": "arn:aws:sts::123456789012:assumed-role/app/i-0123456789abcdef0",
            "accountId": "123456789012",
            "accessKeyId": format!("ASIAEXAMPLE{n:05}"),
        },
        "eventTime": "2026-01-01T00:00:00Z",
        "eventSource": "sts.amazonaws.com",
        "eventName": "GetCallerIdentity",
        "awsRegion": "us-east-1",
        "sourceIPAddress": "203.0.113.7",
        "userAgent": "aws-cli/2",
        "eventID": format!("{log_stream}-{n}"),
        "eventType": "AwsApiCall",
        "recipientAccountId": "123456789012",
    })
    .to_string()
}

#[tokio::test]
async fn log_events_reach_kinesis_as_gzipped_data_message_envelopes() {
    let moto = MotoServer::start();
    let (stream, group) = ("cloudtrail", "/credwatch/cloudtrail");
    moto.create_stream(stream, 4).await;
    moto.create_log_group_with_subscription(group, stream).await;

    // moto turns each PutLogEvents call into one record under a random partition key: 12 calls
    // land on more than one of the 4 shards except with probability 4^-11.
    let log_streams = [
        "123456789012_CloudTrail_us-east-1",
        "123456789012_CloudTrail_us-east-1_2",
        "123456789012_CloudTrail_eu-west-1",
    ];
    let mut put: BTreeMap<String, BTreeSet<(i64, String)>> = BTreeMap::new();
    let mut n = 0;
    let start = now_ms();
    for batch in 0..4 {
        for log_stream in log_streams {
            let events: Vec<(i64, String)> = (0..3)
                .map(|i| {
                    n += 1;
                    (start + batch * 10 + i, cloudtrail_event(n, log_stream))
                })
                .collect();
            moto.put_log_events(group, log_stream, &events).await;
            put.entry(log_stream.to_string())
                .or_default()
                .extend(events);
        }
    }

    let records = moto.read_all_records(stream).await;
    assert_eq!(records.len(), 12, "one record per PutLogEvents call");
    let shards: BTreeSet<&str> = records.iter().map(|(shard, _, _)| shard.as_str()).collect();
    assert!(shards.len() > 1, "all records on one shard: {shards:?}");

    let mut got: BTreeMap<String, BTreeSet<(i64, String)>> = BTreeMap::new();
    for (shard, seq, data) in &records {
        let envelope: Value = serde_json::from_slice(&gunzip(data))
            .unwrap_or_else(|e| panic!("record {shard}/{seq} is not JSON: {e}"));
        assert_eq!(envelope["messageType"], "DATA_MESSAGE", "{envelope}");
        assert_eq!(envelope["owner"], ACCOUNT_ID, "{envelope}");
        assert_eq!(envelope["logGroup"], group, "{envelope}");
        assert_eq!(
            envelope["subscriptionFilters"],
            json!([SUBSCRIPTION_FILTER]),
            "{envelope}"
        );
        let log_stream = envelope["logStream"]
            .as_str()
            .expect("logStream")
            .to_string();
        let log_events = envelope["logEvents"].as_array().expect("logEvents");
        assert_eq!(log_events.len(), 3, "{envelope}");
        for event in log_events {
            // moto writes `id` as a number; AWS writes a string.
            assert!(
                event["id"].is_number() || event["id"].is_string(),
                "{event}"
            );
            let ts = event["timestamp"].as_i64().expect("timestamp");
            let message = event["message"].as_str().expect("message").to_string();
            assert!(
                got.entry(log_stream.clone())
                    .or_default()
                    .insert((ts, message)),
                "event delivered twice: {event}"
            );
        }
    }
    assert_eq!(got, put);
}

#[tokio::test]
async fn records_put_straight_into_the_stream_come_back_unchanged() {
    let moto = MotoServer::start();
    let stream = "raw";
    moto.create_stream(stream, 2).await;

    let payloads: Vec<(&str, Vec<u8>)> = vec![
        ("plain-text", b"not gzip at all".to_vec()),
        ("truncated-gzip", vec![0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00]),
        ("every-byte", (0..=255u8).collect()),
        ("high-bytes", vec![0xff; 1000]),
        ("nul", vec![0]),
        (
            "json-not-gzip",
            br#"{"messageType":"DATA_MESSAGE","logEvents":[]}"#.to_vec(),
        ),
        (
            "invalid-utf8",
            vec![0xc3, 0x28, 0xa0, 0xa1, 0xe2, 0x28, 0xa1],
        ),
    ];
    let positions = moto.put_records(stream, &payloads).await;

    let records = moto.read_all_records(stream).await;
    assert_eq!(records.len(), payloads.len());
    let by_position: BTreeMap<(String, String), Vec<u8>> = records
        .into_iter()
        .map(|(shard, seq, data)| ((shard, seq), data))
        .collect();
    for ((key, data), position) in payloads.iter().zip(positions) {
        assert_eq!(
            by_position.get(&position),
            Some(data),
            "record {key} at {position:?}"
        );
    }
}
