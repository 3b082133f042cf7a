//! Size-capped gunzip for untrusted input.
//!
//! Format: RFC 1952, <https://www.rfc-editor.org/rfc/rfc1952>. CloudWatch Logs compresses every
//! subscription payload it writes to Kinesis with gzip
//! (<https://docs.aws.amazon.com/AmazonCloudWatch/latest/logs/SubscriptionFilters.html>) and
//! CloudTrail writes its S3 log objects as `.json.gz`
//! (<https://docs.aws.amazon.com/awscloudtrail/latest/userguide/cloudtrail-log-file-examples.html>).
//!
//! The fast path is libdeflate with an output buffer sized from the gzip trailer's ISIZE (the
//! uncompressed size mod 2^32) when that is within the cap. Anything the fast path cannot settle —
//! ISIZE over the cap, a first member larger than ISIZE (a lying trailer), more than one member —
//! goes through a streaming decoder read through `take(max + 1)`, so no input can make this module
//! hold more than `max` decompressed bytes.
//!
//! Every other gzip decoder is banned crate-wide by `clippy.toml`.

use std::io::{self, Read};

use libdeflater::{DecompressionError, Decompressor};

use super::BadKind;

/// The gzip magic bytes (ID1, ID2).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Smallest possible gzip member: 10-byte header, 2-byte empty deflate stream, 8-byte trailer.
const MIN_GZIP_LEN: usize = 20;

/// Bytes read from the streaming decoder at a time on the fallback path.
const STREAM_CHUNK: usize = 32 * 1024;

/// Whether `bytes` start with the gzip magic `1f 8b`.
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&GZIP_MAGIC)
}

/// Size-capped gunzip. Uses libdeflater (fast) sized from the gzip ISIZE trailer when that is
/// within `max`; falls back to a streaming flate2 `MultiGzDecoder` read through `.take(max + 1)`
/// (multi-member files, lying ISIZE).
///
/// Errors: not gzip -> [`BadKind::NotGzip`]; truncated/corrupt -> [`BadKind::TruncatedGzip`];
/// output over `max` -> [`BadKind::GzipBomb`].
pub fn gunzip_capped(input: &[u8], max: usize) -> Result<Vec<u8>, (BadKind, String)> {
    let mut decompressor = Decompressor::new();
    let mut out = Vec::new();
    gunzip_capped_into(&mut decompressor, input, max, &mut out)?;
    Ok(out)
}

/// Same as [`gunzip_capped`], reusing caller buffers (hot path for Kinesis records): a
/// `libdeflater::Decompressor` and the output `Vec`. On success `out` holds exactly the
/// decompressed bytes; on error it is empty (its capacity is kept, and never grows past `max`
/// because of this call's input).
pub fn gunzip_capped_into(
    d: &mut Decompressor,
    input: &[u8],
    max: usize,
    out: &mut Vec<u8>,
) -> Result<(), (BadKind, String)> {
    if !is_gzip(input) {
        out.clear();
        return Err((BadKind::NotGzip, "no gzip magic bytes 1f 8b".to_owned()));
    }
    if input.len() < MIN_GZIP_LEN {
        out.clear();
        return Err((
            BadKind::TruncatedGzip,
            format!("{} bytes is shorter than any gzip member", input.len()),
        ));
    }
    let trailer_isize = u32::from_le_bytes(last_four(input));
    let isize = trailer_isize as usize;
    if isize > max {
        // A bomb, a lying trailer, a truncated input whose last bytes are not a trailer, or (with
        // a cap of 4 GiB or more) a wrapped ISIZE: only the capped stream can tell them apart.
        return gunzip_streaming(input, max, out);
    }
    // Resize without clearing first: only the bytes past the previous length get zeroed.
    out.resize(isize, 0);
    match d.gzip_decompress(input, out) {
        Ok(n) => {
            out.truncate(n);
            if is_whole_single_member(input, n) {
                Ok(())
            } else {
                // libdeflate stops after the first member: let the stream decode them all (or
                // report the trailing garbage).
                gunzip_streaming(input, max, out)
            }
        }
        // The first member alone is larger than ISIZE claims: several members, or a lying trailer.
        Err(DecompressionError::InsufficientSpace) => gunzip_streaming(input, max, out),
        Err(DecompressionError::BadData) => {
            out.clear();
            Err((
                BadKind::TruncatedGzip,
                "truncated or corrupt gzip data (bad deflate stream, CRC or ISIZE)".to_owned(),
            ))
        }
    }
}

/// Whether libdeflate's first member (which decompressed to `n` bytes and whose own trailer it
/// checked) is the whole input.
///
/// A single member ends with its own trailer, so the input's last four bytes are `n` (mod 2^32).
/// A further member would start right after the first member's trailer, so the input would
/// contain `n` (little-endian u32) immediately followed by the gzip magic; when it does not, there
/// is no second member. (A chance match in compressed data only costs the slower path.)
fn is_whole_single_member(input: &[u8], n: usize) -> bool {
    let size = (n as u32).to_le_bytes();
    if last_four(input) != size {
        return false;
    }
    let needle = [
        size[0],
        size[1],
        size[2],
        size[3],
        GZIP_MAGIC[0],
        GZIP_MAGIC[1],
    ];
    memchr::memmem::find(input, &needle).is_none()
}

fn last_four(input: &[u8]) -> [u8; 4] {
    let mut four = [0u8; 4];
    four.copy_from_slice(&input[input.len() - 4..]);
    four
}

/// The fallback: every member, streamed, never more than `max` bytes kept.
// The one allowed use of a streaming gzip decoder: it is capped by `take(max + 1)` and by the
// length check below, so `out` never holds more than `max` bytes (and its capacity never
// exceeds `max` either, see `reserve_capped`).
#[allow(clippy::disallowed_types, clippy::disallowed_methods)]
fn gunzip_streaming(input: &[u8], max: usize, out: &mut Vec<u8>) -> Result<(), (BadKind, String)> {
    out.clear();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    let mut reader = flate2::read::MultiGzDecoder::new(input).take(limit);
    let mut chunk = vec![0u8; STREAM_CHUNK];
    loop {
        let read = match reader.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                out.clear();
                return Err(stream_error(&e));
            }
        };
        if read > max - out.len() {
            out.clear();
            return Err((
                BadKind::GzipBomb,
                format!("decompresses to more than {max} bytes"),
            ));
        }
        reserve_capped(out, read, max);
        out.extend_from_slice(&chunk[..read]);
    }
}

/// Makes room for `additional` more bytes, doubling, but never past `max` (the caller checked
/// that `out.len() + additional <= max`).
fn reserve_capped(out: &mut Vec<u8>, additional: usize, max: usize) {
    let needed = out.len() + additional;
    if needed <= out.capacity() {
        return;
    }
    let target = out
        .capacity()
        .saturating_mul(2)
        .max(needed)
        .max(STREAM_CHUNK)
        .min(max)
        .max(needed);
    out.reserve_exact(target - out.len());
}

fn stream_error(e: &io::Error) -> (BadKind, String) {
    let detail = if e.kind() == io::ErrorKind::UnexpectedEof {
        "truncated gzip data (unexpected end of input)".to_owned()
    } else {
        format!("corrupt gzip data: {e}")
    };
    (BadKind::TruncatedGzip, detail)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::write::GzEncoder;
    use flate2::Compression;
    use proptest::prelude::*;

    use super::*;

    const MIB: usize = 1024 * 1024;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    /// Some text that compresses like CloudTrail JSON does.
    fn sample(len: usize) -> Vec<u8> {
        let mut text = Vec::with_capacity(len + 200);
        let mut i = 0u64;
        while text.len() < len {
            write!(
                text,
                r#"{{"eventName":"GetObject","eventID":"{i:016x}","sourceIPAddress":"10.0.{}.{}"}}"#,
                i % 256,
                i * 7 % 256
            )
            .unwrap();
            i += 1;
        }
        text.truncate(len);
        text
    }

    /// A gzip stream of `len` zero bytes, built without holding them.
    fn zeros_bomb(len: usize) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        let block = vec![0u8; MIB];
        let mut left = len;
        while left > 0 {
            let n = left.min(block.len());
            enc.write_all(&block[..n]).unwrap();
            left -= n;
        }
        enc.finish().unwrap()
    }

    #[test]
    fn gzip_round_trips_through_the_fast_path_and_a_reused_buffer() {
        let mut d = Decompressor::new();
        let mut out = vec![7u8; 3 * MIB]; // stale content from an earlier, larger record
        for len in [0, 1, 100, 64 * 1024, 2 * MIB] {
            let data = sample(len);
            let gz = gzip(&data);
            assert_eq!(gunzip_capped(&gz, 4 * MIB).unwrap(), data, "len {len}");
            gunzip_capped_into(&mut d, &gz, 4 * MIB, &mut out).unwrap();
            assert_eq!(out, data, "len {len} into a reused buffer");
        }
    }

    #[test]
    fn input_without_the_gzip_magic_is_not_gzip() {
        for input in [&b""[..], b"{\"Records\":[]}", b"\x1f", b"\x8b\x1f\x08\x00"] {
            assert!(!is_gzip(input));
            let (kind, _) = gunzip_capped(input, MIB).unwrap_err();
            assert_eq!(kind, BadKind::NotGzip, "{input:?}");
        }
        assert!(is_gzip(b"\x1f\x8b"));
    }

    #[test]
    fn truncated_or_corrupt_gzip_is_reported_as_truncated() {
        let gz = gzip(&sample(200_000));
        let mut flipped = gz.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0xff;
        let mut bad_crc = gz.clone();
        let crc_at = bad_crc.len() - 8;
        bad_crc[crc_at] ^= 1;
        let cases: [(&str, &[u8]); 5] = [
            ("cut in half", &gz[..gz.len() / 2]),
            ("cut before the trailer", &gz[..gz.len() - 8]),
            ("header only", &gz[..12]),
            ("a flipped byte", &flipped),
            ("a wrong CRC", &bad_crc),
        ];
        for (name, input) in cases {
            let (kind, detail) = gunzip_capped(input, 4 * MIB).unwrap_err();
            assert_eq!(kind, BadKind::TruncatedGzip, "{name}: {detail}");
        }
    }

    #[test]
    fn a_gzip_bomb_is_stopped_at_the_cap_without_allocating_past_it() {
        let max = 64 * MIB;
        let bomb = zeros_bomb(200 * 1000 * 1000);
        assert!(bomb.len() < MIB, "the bomb is small: {}", bomb.len());
        let mut d = Decompressor::new();
        let mut out = Vec::new();
        let (kind, detail) = gunzip_capped_into(&mut d, &bomb, max, &mut out).unwrap_err();
        assert_eq!(kind, BadKind::GzipBomb, "{detail}");
        assert!(out.is_empty());
        assert!(
            out.capacity() <= max,
            "held {} bytes for a cap of {max}",
            out.capacity()
        );
    }

    #[test]
    fn output_of_exactly_the_cap_is_allowed_and_one_byte_more_is_a_bomb() {
        let data = sample(10_000);
        let gz = gzip(&data);
        assert_eq!(gunzip_capped(&gz, data.len()).unwrap(), data);
        let (kind, _) = gunzip_capped(&gz, data.len() - 1).unwrap_err();
        assert_eq!(kind, BadKind::GzipBomb);
    }

    #[test]
    fn a_lying_isize_trailer_decodes_correctly_or_is_reported_cleanly() {
        let data = sample(300_000);
        let gz = gzip(&data);
        let real = data.len() as u32;
        for (name, claimed, max) in [
            ("smaller", 10u32, 4 * MIB),
            ("zero", 0, 4 * MIB),
            ("larger, within the cap", real + 1000, 4 * MIB),
            ("larger than the cap", u32::MAX, 4 * MIB),
            ("smaller, real size over the cap", 10, 100_000),
        ] {
            let mut lying = gz.clone();
            let at = lying.len() - 4;
            lying[at..].copy_from_slice(&claimed.to_le_bytes());
            match gunzip_capped(&lying, max) {
                Ok(out) => assert_eq!(out, data, "{name}"),
                Err((kind, detail)) => {
                    let expected = if data.len() > max {
                        BadKind::GzipBomb
                    } else {
                        BadKind::TruncatedGzip
                    };
                    assert_eq!(kind, expected, "{name}: {detail}");
                }
            }
        }
    }

    #[test]
    fn a_multi_member_gzip_decodes_fully() {
        let a = sample(5_000);
        let b = b"second member".to_vec();
        let big = sample(50_000);
        let cases: [(&str, Vec<Vec<u8>>); 5] = [
            ("different members", vec![a.clone(), b.clone()]),
            ("the same member twice", vec![a.clone(), a.clone()]),
            (
                "first member larger than the last",
                vec![big.clone(), b.clone()],
            ),
            ("empty members around", vec![vec![], big.clone(), vec![]]),
            ("three members", vec![b.clone(), a.clone(), b.clone()]),
        ];
        for (name, members) in cases {
            let input: Vec<u8> = members.iter().flat_map(|m| gzip(m)).collect();
            let expected: Vec<u8> = members.concat();
            assert_eq!(gunzip_capped(&input, 4 * MIB).unwrap(), expected, "{name}");
            let (kind, _) = gunzip_capped(&input, expected.len() - 1).unwrap_err();
            assert_eq!(kind, BadKind::GzipBomb, "{name} over the cap");
        }
    }

    #[test]
    fn trailing_garbage_after_a_member_is_reported_not_ignored() {
        let mut input = gzip(b"{}");
        input.extend_from_slice(b"garbage!");
        let (kind, _) = gunzip_capped(&input, MIB).unwrap_err();
        assert_eq!(kind, BadKind::TruncatedGzip);
    }

    proptest! {
        #[test]
        fn gunzip_of_arbitrary_bytes_never_panics_nor_exceeds_the_cap(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
            max in 0usize..4096,
            with_magic in any::<bool>(),
        ) {
            let mut input = bytes;
            if with_magic {
                input.splice(0..0, [0x1f, 0x8b, 0x08]);
            }
            if let Ok(out) = gunzip_capped(&input, max) {
                prop_assert!(out.len() <= max);
            }
        }

        #[test]
        fn gunzip_of_gzipped_bytes_gives_them_back_or_a_bomb(
            data in proptest::collection::vec(any::<u8>(), 0..4096),
            max in 0usize..6000,
        ) {
            let gz = gzip(&data);
            match gunzip_capped(&gz, max) {
                Ok(out) => {
                    prop_assert!(data.len() <= max);
                    prop_assert_eq!(out, data);
                }
                Err((kind, _)) => {
                    prop_assert!(data.len() > max);
                    prop_assert_eq!(kind, BadKind::GzipBomb);
                }
            }
        }
    }
}
