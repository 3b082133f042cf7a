//! What placement keeps in memory, and what an inventory lookup costs, with a counting global
//! allocator (the bytes asked of the allocator and still held; the allocator's own per-block
//! overhead is not in them, hence the count of live blocks next to them).
//!
//! - The AWS ranges lookup of the bundled `ip-ranges.json` snapshot ([`IpRanges::load_bundled`]):
//!   the heap a load keeps (first load, which also interns the service and region names for the
//!   process, and a second one), the peak while loading, and [`IpRanges::heap_bytes`].
//! - An [`InventorySnapshot`] of 100,000 instances over 4 accounts x 2 regions (each with one
//!   public IPv4, one private IPv4, one IPv6 in its VPC's block, a VPC id and a state), 1,000 NAT
//!   gateways (one public and one private IPv4 each), 2,000 Elastic IPs (half associated with an
//!   instance, as its public IPv4), 200 VPCs with one IPv6 /56 each and 500 VPC endpoints: the
//!   records, the lookup indexes, bytes per instance, and ns per [`InventorySnapshot::owners`]
//!   over 1M lookups of a mix of hits and misses (each kind also alone).
//!
//! Run: `cargo bench --bench inventory_memory`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering::Relaxed};
use std::time::Instant;

use credwatch::inventory::model::{
    AccountRegion, ElasticIpRec, EndpointRec, InstanceRec, NatGatewayRec, NetworkRec,
};
use credwatch::inventory::InventorySnapshot;
use credwatch::placement::IpRanges;
use ipnet::{IpNet, Ipv6Net};

struct Counting;

/// Counting is off while lookups are timed: the timings are then those of the plain allocator.
static COUNT: AtomicBool = AtomicBool::new(true);
static HEAP: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);
static BLOCKS: AtomicIsize = AtomicIsize::new(0);

fn grew(by: isize) {
    let now = HEAP.fetch_add(by, Relaxed) + by;
    PEAK.fetch_max(now, Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNT.load(Relaxed) {
            grew(l.size() as isize);
            BLOCKS.fetch_add(1, Relaxed);
        }
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if COUNT.load(Relaxed) {
            HEAP.fetch_sub(l.size() as isize, Relaxed);
            BLOCKS.fetch_sub(1, Relaxed);
        }
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if COUNT.load(Relaxed) {
            grew(new as isize - l.size() as isize);
        }
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Heap held and live blocks now; the peak restarts from here.
fn mark() -> (isize, isize) {
    let h = HEAP.load(Relaxed);
    PEAK.store(h, Relaxed);
    (h, BLOCKS.load(Relaxed))
}

fn mib(b: isize) -> f64 {
    b as f64 / (1 << 20) as f64
}

const ACCOUNTS: [&str; 4] = [
    "111122223333",
    "222233334444",
    "333344445555",
    "444455556666",
];
const REGIONS: [&str; 2] = ["us-east-1", "eu-west-1"];
const PARTS: usize = ACCOUNTS.len() * REGIONS.len();

const INSTANCES: usize = 100_000;
const NATS: usize = 1_000;
const EIPS: usize = 2_000;
/// Elastic IPs `0..ASSOCIATED` are associated with an instance (its public IPv4).
const ASSOCIATED: usize = EIPS / 2;
const VPCS: usize = 200;
const ENDPOINTS: usize = 500;

/// Resource `i` of any kind lives in part `i % PARTS`; its VPC is one of that part's VPCs.
fn vpc_of(i: usize) -> usize {
    (i / PARTS % (VPCS / PARTS)) * PARTS + i % PARTS
}

fn v4(base: [u8; 4], i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::from(base)) + i as u32))
}

/// VPC `v`'s IPv6 block: 2600:1f18:0:VV00::/56.
fn vpc_block(v: usize) -> Ipv6Net {
    let base = (0x2600_1f18u128 << 96) | ((v as u128) << 72);
    Ipv6Net::new(Ipv6Addr::from(base), 56).unwrap()
}

fn in_block(v: usize, low: u128) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(u128::from(vpc_block(v).network()) | low))
}

fn instance_public(k: usize) -> IpAddr {
    v4([18, 0, 0, 0], k)
}
fn instance_private(k: usize) -> IpAddr {
    v4([10, 0, 0, 0], k)
}
/// In the instance's VPC, in subnet 1 of the block.
fn instance_ipv6(k: usize) -> IpAddr {
    in_block(vpc_of(k), (1u128 << 64) | k as u128)
}
fn nat_public(n: usize) -> IpAddr {
    v4([52, 10, 0, 0], n)
}
fn nat_private(n: usize) -> IpAddr {
    v4([10, 200, 0, 0], n)
}
/// The instance an associated Elastic IP belongs to (same part).
fn eip_instance(e: usize) -> usize {
    e * 96 + e % PARTS
}
fn eip_public(e: usize) -> IpAddr {
    if e < ASSOCIATED {
        instance_public(eip_instance(e))
    } else {
        v4([34, 10, 0, 0], e)
    }
}

fn id(kind: &str, i: usize) -> String {
    format!("{kind}-{i:017x}")
}

fn inventory() -> Vec<AccountRegion> {
    let mut parts: Vec<AccountRegion> = (0..PARTS)
        .map(|p| AccountRegion {
            account: ACCOUNTS[p / REGIONS.len()].into(),
            region: REGIONS[p % REGIONS.len()].into(),
            refreshed_at: 1_764_000_000,
            ..AccountRegion::default()
        })
        .collect();
    for k in 0..INSTANCES {
        parts[k % PARTS].instances.push(InstanceRec {
            id: id("i", k),
            vpc_id: Some(id("vpc", vpc_of(k))),
            public_ipv4: vec![instance_public(k)],
            private_ipv4: vec![instance_private(k)],
            ipv6: vec![instance_ipv6(k)],
            state: Some("running".into()),
        });
    }
    for n in 0..NATS {
        parts[n % PARTS].nat_gateways.push(NatGatewayRec {
            id: id("nat", n),
            vpc_id: Some(id("vpc", vpc_of(n))),
            public_ips: vec![nat_public(n)],
            private_ips: vec![nat_private(n)],
        });
    }
    for e in 0..EIPS {
        let k = eip_instance(e);
        let associated = e < ASSOCIATED;
        assert!(!associated || (k < INSTANCES && k % PARTS == e % PARTS));
        parts[e % PARTS].elastic_ips.push(ElasticIpRec {
            public_ip: eip_public(e),
            allocation_id: Some(id("eipalloc", e)),
            instance_id: associated.then(|| id("i", k)),
            network_interface_id: associated.then(|| id("eni", k)),
            private_ip: associated.then(|| instance_private(k)),
        });
    }
    for v in 0..VPCS {
        parts[v % PARTS].vpcs.push(NetworkRec {
            id: id("vpc", v),
            vpc_id: Some(id("vpc", v)),
            ipv6_cidrs: vec![IpNet::V6(vpc_block(v))],
        });
    }
    for x in 0..ENDPOINTS {
        parts[x % PARTS].endpoints.push(EndpointRec {
            id: id("vpce", x),
            vpc_id: Some(id("vpc", vpc_of(x))),
            service_name: Some(format!("com.amazonaws.{}.s3", REGIONS[x % PARTS % 2])),
        });
    }
    parts
}

/// One kind of address in the lookup mix: its name, whether the inventory owns it, how many
/// owners each has, and the `j`th address of the kind.
struct Kind {
    name: &'static str,
    owners: usize,
    addr: fn(usize) -> IpAddr,
}

/// Addresses per kind in the pool (the 1M lookups cycle over the pool).
const PER_KIND: usize = 10_000;
const LOOKUPS: usize = 1_000_000;

fn kinds() -> Vec<Kind> {
    vec![
        Kind {
            name: "instance public IPv4 (hit)",
            owners: 1,
            // Instances about 9 apart, none with an associated Elastic IP (those are e * 96 + e % 8).
            addr: |j| {
                let k = j * 9;
                instance_public(if k % 96 < PARTS { k + PARTS } else { k })
            },
        },
        Kind {
            name: "instance private IPv4 (hit)",
            owners: 1,
            addr: |j| instance_private(j * 10 + 7),
        },
        Kind {
            name: "instance IPv6 (hit: the instance and its VPC's block)",
            owners: 2,
            addr: |j| instance_ipv6(j * 10 + 1),
        },
        Kind {
            name: "NAT gateway public IPv4 (hit)",
            owners: 1,
            addr: |j| nat_public(j % NATS),
        },
        Kind {
            name: "Elastic IP, not associated (hit)",
            owners: 1,
            addr: |j| eip_public(ASSOCIATED + j % (EIPS - ASSOCIATED)),
        },
        Kind {
            name: "IPv6 in a VPC block, no instance (hit)",
            owners: 1,
            addr: |j| in_block(j % VPCS, (2u128 << 64) | j as u128),
        },
        Kind {
            name: "public IPv4 not ours (miss)",
            owners: 0,
            addr: |j| v4([3, 80, 0, 0], j),
        },
        Kind {
            name: "private IPv4 not ours (miss)",
            owners: 0,
            addr: |j| v4([10, 250, 0, 0], j),
        },
        Kind {
            name: "IPv6 in AWS, not ours (miss)",
            owners: 0,
            addr: |j| IpAddr::V6(Ipv6Addr::from((0x2600_1f18_ffffu128 << 80) | j as u128)),
        },
        Kind {
            name: "IPv6 outside AWS (miss)",
            owners: 0,
            addr: |j| IpAddr::V6(Ipv6Addr::from((0x2001_0db8u128 << 96) | j as u128)),
        },
    ]
}

/// `LOOKUPS` lookups cycling over `pool`: (hits, owners found, ns per lookup).
fn time_lookups(s: &InventorySnapshot, pool: &[IpAddr]) -> (usize, usize, f64) {
    COUNT.store(false, Relaxed);
    let t = Instant::now();
    let (mut hits, mut owners) = (0, 0);
    for i in 0..LOOKUPS {
        let o = s.owners(black_box(pool[i % pool.len()]));
        hits += usize::from(!o.is_empty());
        owners += o.len();
    }
    let ns = t.elapsed().as_secs_f64() * 1e9 / LOOKUPS as f64;
    COUNT.store(true, Relaxed);
    (hits, owners, ns)
}

fn ranges() {
    for load in ["first", "second"] {
        let (before, blocks) = mark();
        let t = Instant::now();
        let r = IpRanges::load_bundled().unwrap_or_else(|e| panic!("{e}"));
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let kept = HEAP.load(Relaxed) - before;
        let peak = PEAK.load(Relaxed) - before;
        let kept_blocks = BLOCKS.load(Relaxed) - blocks;
        let (v4, v6) = r.prefix_counts();
        let (d4, d6) = r.distinct_prefix_counts();
        let (i4, i6) = r.interval_counts();
        println!(
            "ranges, {load} load: {v4} IPv4 / {v6} IPv6 entries, {d4} / {d6} distinct prefixes, \
             {i4} / {i6} intervals; kept {kept} bytes ({:.2} MiB) in {kept_blocks} blocks; \
             heap_bytes {} ({:.2} MiB); peak while loading {:.2} MiB; {ms:.1} ms",
            mib(kept),
            r.heap_bytes(),
            mib(r.heap_bytes() as isize),
            mib(peak),
        );
        black_box(&r);
    }
}

fn main() {
    ranges();

    let (start, start_blocks) = mark();
    let parts = inventory();
    let (records, record_blocks) = (
        HEAP.load(Relaxed) - start,
        BLOCKS.load(Relaxed) - start_blocks,
    );
    let t = Instant::now();
    let snap = InventorySnapshot::new(parts);
    let index_ms = t.elapsed().as_secs_f64() * 1e3;
    let total = HEAP.load(Relaxed) - start;
    let total_blocks = BLOCKS.load(Relaxed) - start_blocks;
    let peak = PEAK.load(Relaxed) - start;
    assert_eq!(snap.parts.len(), PARTS);
    assert_eq!(
        snap.len(),
        INSTANCES + NATS + EIPS + VPCS + ENDPOINTS,
        "resources held"
    );
    let per = |b: isize| b as f64 / INSTANCES as f64;
    println!(
        "inventory: {INSTANCES} instances, {NATS} NAT gateways, {EIPS} Elastic IPs ({ASSOCIATED} \
         associated), {VPCS} VPCs with an IPv6 /56, {ENDPOINTS} endpoints in {PARTS} account-regions"
    );
    println!(
        "  records: {records} bytes ({:.1} MiB, {:.1} bytes per instance) in {record_blocks} blocks",
        mib(records),
        per(records)
    );
    println!(
        "  indexes: {} bytes ({:.1} MiB, {:.1} bytes per instance) in {} blocks; built in {index_ms:.1} ms",
        total - records,
        mib(total - records),
        per(total - records),
        total_blocks - record_blocks
    );
    println!(
        "  total:   {total} bytes ({:.1} MiB, {:.1} bytes per instance, {:.1} blocks per instance); \
         peak while indexing {:.1} MiB",
        mib(total),
        per(total),
        total_blocks as f64 / INSTANCES as f64,
        mib(peak)
    );

    // Lookups: every kind alone, then the mix (the kinds interleaved, one address of each in turn).
    let kinds = kinds();
    let pools: Vec<Vec<IpAddr>> = kinds
        .iter()
        .map(|k| (0..PER_KIND).map(k.addr).collect())
        .collect();
    for (k, pool) in kinds.iter().zip(&pools) {
        let (hits, owners, ns) = time_lookups(&snap, pool);
        let expect_hits = if k.owners > 0 { LOOKUPS } else { 0 };
        assert_eq!(hits, expect_hits, "{}: hits", k.name);
        assert_eq!(owners, LOOKUPS * k.owners, "{}: owners", k.name);
        println!("  owners(), {}: {ns:.1} ns per lookup", k.name);
    }
    let mix: Vec<IpAddr> = (0..PER_KIND)
        .flat_map(|j| pools.iter().map(move |p| p[j]))
        .collect();
    let per_cycle = LOOKUPS / mix.len();
    assert_eq!(
        per_cycle * mix.len(),
        LOOKUPS,
        "the pool divides the lookups"
    );
    let expect_hits = kinds.iter().filter(|k| k.owners > 0).count() * PER_KIND * per_cycle;
    let expect_owners = kinds.iter().map(|k| k.owners).sum::<usize>() * PER_KIND * per_cycle;
    let (hits, owners, ns) = time_lookups(&snap, &mix);
    assert_eq!(hits, expect_hits, "mix: hits");
    assert_eq!(owners, expect_owners, "mix: owners");
    println!(
        "  owners(), mix of the {} kinds above: {LOOKUPS} lookups, {hits} hits ({expect_hits} \
         expected), {owners} owners: {ns:.1} ns per lookup",
        kinds.len()
    );
    black_box(&snap);
}
