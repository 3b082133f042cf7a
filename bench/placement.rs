//! Placement lookups: ns per address for a seeded mix (half uniformly random IPv4, a quarter
//! inside listed IPv4 prefixes, a quarter IPv6 — half inside listed prefixes, half random), on the
//! bundled snapshot (the full file); the heap its lookup holds (`heap_bytes`, and the allocator's
//! count of what loading keeps); and the time to load the bundled snapshot (gunzip, parse, build).
//!
//! Run: `cargo bench --bench placement -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Instant;

use credwatch::placement::{IpRanges, Place, Placement};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ipnet::IpNet;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[path = "counting.rs"]
mod counting;

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

const ADDRESSES: usize = 4096;

fn addresses(r: &IpRanges) -> Vec<IpAddr> {
    let mut rng = StdRng::seed_from_u64(42);
    let (v4, v6): (Vec<IpNet>, Vec<IpNet>) = r
        .iter()
        .map(|x| x.prefix)
        .partition(|p| matches!(p, IpNet::V4(_)));
    let mut out = Vec::with_capacity(ADDRESSES);
    for i in 0..ADDRESSES {
        let a = match i % 8 {
            0..=3 => IpAddr::V4(Ipv4Addr::from(rng.random::<u32>())),
            4 | 5 => match v4[rng.random_range(0..v4.len())] {
                IpNet::V4(n) => IpAddr::V4(Ipv4Addr::from(
                    rng.random_range(u32::from(n.network())..=u32::from(n.broadcast())),
                )),
                IpNet::V6(_) => unreachable!("partitioned"),
            },
            6 => match v6[rng.random_range(0..v6.len())] {
                IpNet::V6(n) => IpAddr::V6(Ipv6Addr::from(
                    rng.random_range(u128::from(n.network())..=u128::from(n.broadcast())),
                )),
                IpNet::V4(_) => unreachable!("partitioned"),
            },
            _ => IpAddr::V6(Ipv6Addr::from(rng.random::<u128>())),
        };
        out.push(a);
    }
    out
}

fn bench(c: &mut Criterion) {
    let before = counting::heap();
    let t = Instant::now();
    let ranges = match IpRanges::load_bundled() {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    let load = t.elapsed();
    let kept = counting::heap() - before;
    let (v4, v6) = ranges.prefix_counts();
    let (d4, d6) = ranges.distinct_prefix_counts();
    let (i4, i6) = ranges.interval_counts();
    println!(
        "bundled snapshot: {v4} IPv4 / {v6} IPv6 entries, {d4} / {d6} distinct prefixes, {i4} / {i6} intervals"
    );
    println!(
        "first load (gunzip + parse + build): {:.1} ms; heap_bytes {} ({:.1} KiB); allocator: {} bytes kept by the load",
        load.as_secs_f64() * 1e3,
        ranges.heap_bytes(),
        ranges.heap_bytes() as f64 / 1024.0,
        kept
    );

    let addrs = addresses(&ranges);
    let expected = addrs
        .iter()
        .filter(|a| ranges.lookup(**a).is_some())
        .count();
    assert!(expected > 0, "no address of the mix is in AWS");
    println!("mix: {} addresses, {expected} in AWS", addrs.len());

    let mut g = c.benchmark_group("placement");
    g.throughput(Throughput::Elements(addrs.len() as u64));
    g.bench_function("ip_ranges_lookup_mix", |b| {
        b.iter(|| {
            let r = black_box(&ranges);
            let found = addrs.iter().filter(|a| r.lookup(**a).is_some()).count();
            assert_eq!(found, expected);
            found
        })
    });
    let placement = Placement::new(Arc::new(ranges));
    g.bench_function("placement_place_mix", |b| {
        b.iter(|| {
            let p = black_box(&placement);
            let found = addrs
                .iter()
                .filter(|a| matches!(p.place(**a), Place::Aws(_)))
                .count();
            assert_eq!(found, expected);
            found
        })
    });
    g.finish();

    let mut g = c.benchmark_group("placement_load");
    g.sample_size(10);
    g.bench_function("load_bundled", |b| {
        b.iter(|| match IpRanges::load_bundled() {
            Ok(r) => r.prefix_counts(),
            Err(e) => panic!("{e}"),
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
