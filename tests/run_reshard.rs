//! `credwatch run` across a reshard, against kinesis-mock (moto never ends a closed shard).

mod support;

use std::time::Duration;

use aws_sdk_kinesis::types::ShardIteratorType;
use support::kinesis_mock::KinesisMock;

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
