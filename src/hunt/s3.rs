//! `hunt s3://bucket/prefix`: CloudTrail's objects listed straight from the bucket, pruned by
//! the [`Selection`] before anything is fetched, then fetched with bounded concurrency while the
//! hunt threads decode what has arrived.
//!
//! Listing walks the key layout a level at a time with `ListObjectsV2` and the `/` delimiter,
//! the folders of a level listed side by side (`--s3-concurrency`). Folders the selection rules
//! out are never listed; with both `--since` and `--until`, the day folders of each region are
//! named directly. A listing error (no such bucket, access denied, wrong region) stops the hunt
//! with a message naming the bucket; a `GetObject` that still fails after the SDK's retries
//! (503 SlowDown and other throttling or transient errors are retried with backoff) is a bad
//! record of that object and the hunt goes on.

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use futures::stream::{self, StreamExt, TryStreamExt};

use super::select::Selection;
use crate::decode::{BadKind, BadRecord};

/// A parsed `s3://bucket/prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    pub prefix: String,
}

impl S3Url {
    /// `None` when `raw` is not an `s3://` URL; an error when it is one without a bucket.
    pub fn parse(raw: &str) -> Option<Result<S3Url, String>> {
        let rest = raw.strip_prefix("s3://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Some(Err(format!("{raw}: no bucket name after s3://")));
        }
        Some(Ok(S3Url {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        }))
    }
}

/// One object to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Object {
    pub bucket: String,
    pub key: String,
    pub size: u64,
}

/// How to reach S3.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// Region of the bucket (else the default chain's, else us-east-1).
    pub region: Option<String>,
    /// An S3-compatible endpoint (an emulator); path-style addressing is used with it.
    pub endpoint_url: Option<String>,
    /// Attempts per request, the first included, for throttling and transient errors.
    pub max_attempts: u32,
}

/// Builds the S3 client: region, endpoint, retries (standard mode: exponential backoff with
/// jitter, throttling errors such as `SlowDown` included), the connect and first-byte timeouts
/// the other AWS clients use.
pub async fn client(opts: &S3Options) -> aws_sdk_s3::Client {
    let region = aws_config::meta::region::RegionProviderChain::first_try(
        opts.region.clone().map(aws_sdk_s3::config::Region::new),
    )
    .or_default_provider()
    .or_else("us-east-1");
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(region)
        .timeout_config(crate::kinesis::timeouts())
        .retry_config(
            aws_config::retry::RetryConfig::standard().with_max_attempts(opts.max_attempts.max(1)),
        );
    if let Some(u) = &opts.endpoint_url {
        loader = loader.endpoint_url(u);
    }
    let shared = loader.load().await;
    let conf = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(opts.endpoint_url.is_some())
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// One error of a call, as `Code: message`.
fn describe<E, R>(e: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e {
        SdkError::ServiceError(s) => {
            let err = s.err();
            match (err.code(), err.message()) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c.to_string(),
                _ => format!("{err}"),
            }
        }
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

/// What one folder holds: sub-folders and objects.
type Level = (Vec<String>, Vec<S3Object>);

/// Lists one folder (all pages).
async fn list_level(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: String,
) -> Result<Level, String> {
    let mut dirs = Vec::new();
    let mut objects = Vec::new();
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(&prefix)
        .delimiter("/")
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| {
            let text = describe(&e);
            let hint = if text.starts_with("AccessDenied") {
                format!(" (the hunt needs s3:ListBucket on arn:aws:s3:::{bucket})")
            } else {
                String::new()
            };
            format!("s3://{bucket}/{prefix}: cannot list: {text}{hint}")
        })?;
        dirs.extend(
            page.common_prefixes()
                .iter()
                .filter_map(|p| p.prefix().map(str::to_string)),
        );
        objects.extend(page.contents().iter().filter_map(|o| {
            Some(S3Object {
                bucket: bucket.to_string(),
                key: o.key()?.to_string(),
                size: o.size().unwrap_or(0).max(0) as u64,
            })
        }));
    }
    Ok((dirs, objects))
}

/// Every object under `url` the selection can need, in key order. Returns the objects and the
/// number of LIST calls made.
pub async fn list(
    client: &aws_sdk_s3::Client,
    url: &S3Url,
    selection: &Selection,
    concurrency: usize,
) -> Result<(Vec<S3Object>, u64), String> {
    let mut frontier = vec![url.prefix.clone()];
    let mut objects = Vec::new();
    let mut lists = 0u64;
    while !frontier.is_empty() {
        lists += frontier.len() as u64;
        let levels: Vec<Level> = stream::iter(std::mem::take(&mut frontier))
            .map(|p| list_level(client, &url.bucket, p))
            .buffered(concurrency.max(1))
            .try_collect()
            .await?;
        for (dirs, objs) in levels {
            frontier.extend(
                dirs.iter()
                    .filter(|d| selection.keep_dir(d))
                    .flat_map(|d| selection.expand_dir(d)),
            );
            objects.extend(objs.into_iter().filter(|o| selection.keep_object(&o.key)));
        }
    }
    objects.sort_by(|a, b| a.key.cmp(&b.key));
    objects.dedup_by(|a, b| a.key == b.key);
    Ok((objects, lists))
}

/// Fetches one object, whole. Over `cap` bytes it is not fetched ([`BadKind::Oversize`]); a
/// failure after the SDK's retries, or a body cut off `max_attempts` times, is a
/// [`BadKind::Io`] bad record naming the object and the error.
pub async fn get(
    client: &aws_sdk_s3::Client,
    object: &S3Object,
    cap: usize,
    max_attempts: u32,
) -> Result<Vec<u8>, BadRecord> {
    let position = format!("s3://{}/{}", object.bucket, object.key);
    if object.size as usize > cap {
        return Err(BadRecord::new(
            BadKind::Oversize,
            &position,
            format!(
                "object of {} bytes is over input.max_decompressed_bytes = {cap}",
                object.size
            ),
        ));
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let resp = client
            .get_object()
            .bucket(&object.bucket)
            .key(&object.key)
            .send()
            .await
            .map_err(|e| {
                BadRecord::new(
                    BadKind::Io,
                    &position,
                    format!("GetObject: {}", describe(&e)),
                )
            })?;
        match resp.body.collect().await {
            Ok(body) => {
                let bytes = body.into_bytes();
                if bytes.len() > cap {
                    return Err(BadRecord::new(
                        BadKind::Oversize,
                        &position,
                        format!(
                            "object of {} bytes is over input.max_decompressed_bytes = {cap}",
                            bytes.len()
                        ),
                    ));
                }
                return Ok(bytes.to_vec());
            }
            Err(e) if attempt < max_attempts.max(1) => {
                tracing::debug!(%position, attempt, error = %e, "object body cut off; fetching it again");
            }
            Err(e) => {
                return Err(BadRecord::new(
                    BadKind::Io,
                    &position,
                    format!("GetObject body, {attempt} attempts: {e}"),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_bucket_and_prefix() {
        assert_eq!(S3Url::parse("/data/x.json"), None);
        assert_eq!(
            S3Url::parse("s3://trail-bucket/AWSLogs/o-abc/")
                .unwrap()
                .unwrap(),
            S3Url {
                bucket: "trail-bucket".into(),
                prefix: "AWSLogs/o-abc/".into()
            }
        );
        assert_eq!(
            S3Url::parse("s3://trail-bucket").unwrap().unwrap().prefix,
            ""
        );
        assert!(S3Url::parse("s3:///x")
            .unwrap()
            .unwrap_err()
            .contains("no bucket"));
    }
}
