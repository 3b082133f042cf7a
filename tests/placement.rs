//! Placement on AWS's real `ip-ranges.json` (`../shared/data/aws-ip-ranges`, source in its
//! README): the lookup against a linear scan, the README's facts, errors, the bundled snapshot,
//! refreshing from a loopback HTTP server and from a changed file, and `credwatch place`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use credwatch::config::PlacementConfig;
use credwatch::placement::{cli, IpRanges, Place, PlaceArgs, Placement, Refresh, BUNDLED_SOURCE};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

fn data(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(rel)
}

fn shared_file() -> PathBuf {
    data("aws-ip-ranges/ip-ranges.json")
}

/// One listed entry, for the reference scan.
struct Entry<A> {
    start: A,
    end: A,
    len: u8,
    prefix: String,
    service: String,
    region: String,
}

/// The rule, written out again: longest prefix; on one prefix `EC2`, then other services
/// alphabetically, then `AMAZON`; then region.
fn better<A>(a: &Entry<A>, b: &Entry<A>) -> bool {
    let class = |s: &str| match s {
        "EC2" => 0,
        "AMAZON" => 2,
        _ => 1,
    };
    let ka = (
        std::cmp::Reverse(a.len),
        class(&a.service),
        &a.service,
        &a.region,
    );
    let kb = (
        std::cmp::Reverse(b.len),
        class(&b.service),
        &b.service,
        &b.region,
    );
    ka < kb
}

fn scan<A: Copy + Ord>(entries: &[Entry<A>], a: A) -> Option<&Entry<A>> {
    let mut best: Option<&Entry<A>> = None;
    for e in entries {
        if e.start <= a && a <= e.end && best.is_none_or(|b| better(e, b)) {
            best = Some(e);
        }
    }
    best
}

fn reference() -> (Vec<Entry<u32>>, Vec<Entry<u128>>) {
    let doc: Value = serde_json::from_slice(&std::fs::read(shared_file()).unwrap()).unwrap();
    let mut v4 = Vec::new();
    for p in doc["prefixes"].as_array().unwrap() {
        let net: ipnet::Ipv4Net = p["ip_prefix"].as_str().unwrap().parse().unwrap();
        v4.push(Entry {
            start: u32::from(net.network()),
            end: u32::from(net.broadcast()),
            len: net.prefix_len(),
            prefix: net.to_string(),
            service: p["service"].as_str().unwrap().into(),
            region: p["region"].as_str().unwrap().into(),
        });
    }
    let mut v6 = Vec::new();
    for p in doc["ipv6_prefixes"].as_array().unwrap() {
        let net: ipnet::Ipv6Net = p["ipv6_prefix"].as_str().unwrap().parse().unwrap();
        v6.push(Entry {
            start: u128::from(net.network()),
            end: u128::from(net.broadcast()),
            len: net.prefix_len(),
            prefix: net.to_string(),
            service: p["service"].as_str().unwrap().into(),
            region: p["region"].as_str().unwrap().into(),
        });
    }
    (v4, v6)
}

fn within<A>(rng: &mut StdRng, e: &Entry<A>) -> A
where
    A: Copy + rand::distr::uniform::SampleUniform + PartialOrd,
{
    rng.random_range(e.start..=e.end)
}

#[test]
fn the_lookup_agrees_with_a_linear_scan_on_100000_random_addresses() {
    let ranges = IpRanges::from_file(&shared_file()).unwrap();
    let (v4, v6) = reference();
    let mut rng = StdRng::seed_from_u64(20260822);
    let mut addrs: Vec<IpAddr> = Vec::with_capacity(100_000);
    for _ in 0..50_000 {
        addrs.push(IpAddr::V4(Ipv4Addr::from(rng.random::<u32>())));
    }
    for _ in 0..25_000 {
        let e = &v4[rng.random_range(0..v4.len())];
        addrs.push(IpAddr::V4(Ipv4Addr::from(within(&mut rng, e))));
    }
    for i in 0..25_000 {
        let e = &v6[rng.random_range(0..v6.len())];
        let a = match i % 4 {
            // Inside a listed prefix.
            0 | 1 => within(&mut rng, e),
            // Near one: the same first 16 bits, the rest random (gaps between AWS prefixes).
            2 => (e.start & (0xffff << 112)) | (rng.random::<u128>() >> 16),
            // Anywhere.
            _ => rng.random::<u128>(),
        };
        addrs.push(IpAddr::V6(Ipv6Addr::from(a)));
    }
    let (mut found, mut mapped) = (0, 0);
    for (i, addr) in addrs.iter().enumerate() {
        let want = match addr {
            IpAddr::V4(a) => scan(&v4, u32::from(*a)).map(|e| (&e.prefix, &e.service, &e.region)),
            IpAddr::V6(a) => scan(&v6, u128::from(*a)).map(|e| (&e.prefix, &e.service, &e.region)),
        };
        let got = ranges.lookup(*addr);
        let got_s = got.map(|r| (r.prefix.to_string(), r.service, r.region));
        assert_eq!(
            got_s.as_ref().map(|(p, s, r)| (p.as_str(), *s, *r)),
            want.map(|(p, s, r)| (p.as_str(), s.as_str(), r.as_str())),
            "address #{i} {addr}"
        );
        found += usize::from(got.is_some());
        if let (0, IpAddr::V4(a)) = (i % 10, addr) {
            assert_eq!(
                ranges.lookup(IpAddr::V6(a.to_ipv6_mapped())),
                got,
                "{addr} mapped"
            );
            mapped += 1;
        }
    }
    // Not vacuous: every address drawn inside a listed prefix is found, and some others are.
    assert!(found >= 25_000 + 12_500, "found {found}");
    assert!(mapped >= 7_500);
}

#[test]
fn the_readme_facts_hold() {
    for ranges in [
        Arc::new(IpRanges::from_file(&shared_file()).unwrap()),
        IpRanges::bundled(),
    ] {
        let r = ranges.lookup("34.234.236.212".parse().unwrap()).unwrap();
        assert_eq!(r.prefix.to_string(), "34.224.0.0/12");
        assert_eq!((r.service, r.region), ("EC2", "us-east-1"));
        let place = ranges.place("34.234.236.212".parse().unwrap());
        assert_eq!(place.to_string(), "AWS EC2 us-east-1 (34.224.0.0/12)");
        assert_eq!(place.as_str(), "aws");
        for outside in ["104.102.221.250", "212.129.74.137"] {
            assert_eq!(ranges.lookup(outside.parse().unwrap()), None, "{outside}");
            assert_eq!(ranges.place(outside.parse().unwrap()), Place::OutsideAws);
        }
        assert_eq!(ranges.place("10.0.0.1".parse().unwrap()), Place::Private);
    }
}

#[test]
fn the_bundled_snapshot_equals_the_shared_file() {
    let shared = IpRanges::from_file(&shared_file()).unwrap();
    let bundled = IpRanges::bundled();
    assert_eq!(bundled.source(), BUNDLED_SOURCE);
    assert_eq!(bundled.prefix_counts(), (10_668, 6_160));
    assert_eq!(bundled.prefix_counts(), shared.prefix_counts());
    assert_eq!(
        bundled.distinct_prefix_counts(),
        shared.distinct_prefix_counts()
    );
    assert_eq!(bundled.interval_counts(), shared.interval_counts());
    // createDate 2026-08-22-15-17-05 UTC.
    assert_eq!(bundled.create_date(), Some(1_787_411_825));
    assert_eq!(bundled.create_date(), shared.create_date());
    assert_eq!(bundled.sync_token(), "1787411825");
    assert!(bundled.iter().eq(shared.iter()));
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn bad_files_are_clear_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("empty.json", "", "the file is empty"),
        (
            "malformed.json",
            "{\"syncToken\": \"1\",\n \"prefixes\": [\n  {\"ip_prefix\": \"3.0.0.0/8\",}\n]}",
            "not a valid ip-ranges.json: trailing comma at line 3 column",
        ),
        (
            "zero.json",
            r#"{"syncToken":"1","createDate":"2026-08-22-15-17-05","prefixes":[],"ipv6_prefixes":[]}"#,
            "no prefixes",
        ),
        (
            "bad-prefix.json",
            r#"{"prefixes":[{"ip_prefix":"3.0.0.0/8","region":"r","service":"EC2"},{"ip_prefix":"3.0.300.0/24","region":"r","service":"EC2"}]}"#,
            r#"prefixes[1].ip_prefix "3.0.300.0/24" is not an IPv4 prefix"#,
        ),
        (
            "bad-v6.json",
            r#"{"ipv6_prefixes":[{"ipv6_prefix":"2600:1f18::/129","region":"r","service":"EC2"}]}"#,
            r#"ipv6_prefixes[0].ipv6_prefix "2600:1f18::/129" is not an IPv6 prefix"#,
        ),
    ];
    for (name, text, what) in cases {
        let path = write(dir.path(), name, text);
        let msg = IpRanges::from_file(&path).unwrap_err().to_string();
        let want = format!("{}: ", path.display());
        assert!(msg.starts_with(&want), "{name}: {msg}");
        assert!(msg.contains(what), "{name}: {msg}");
        // The same through the configuration.
        let cfg = PlacementConfig {
            ip_ranges_file: Some(path.clone()),
            ..PlacementConfig::default()
        };
        let msg = Placement::from_config(&cfg).unwrap_err().to_string();
        assert!(
            msg.starts_with(&want) && msg.contains(what),
            "{name}: {msg}"
        );
    }
}

fn small(prefix: &str, service: &str, token: &str) -> String {
    format!(
        r#"{{"syncToken":"{token}","createDate":"2026-08-22-15-17-05","prefixes":[{{"ip_prefix":"{prefix}","region":"eu-west-1","service":"{service}","network_border_group":"eu-west-1"}}],"ipv6_prefixes":[]}}"#
    )
}

/// A loopback HTTP server answering every GET with the status and body in `Served`.
type Served = Arc<Mutex<(StatusCode, Vec<u8>)>>;

async fn serve(status: StatusCode, body: Vec<u8>) -> (String, Served) {
    let state: Served = Arc::new(Mutex::new((status, body)));
    let app = Router::new()
        .route(
            "/ip-ranges.json",
            get(|State(s): State<Served>| async move { s.lock().unwrap().clone() }),
        )
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/ip-ranges.json"), state)
}

fn url_config(url: &str) -> PlacementConfig {
    PlacementConfig {
        ip_ranges_url: Some(url.into()),
        ..PlacementConfig::default()
    }
}

#[tokio::test]
async fn a_refresh_from_a_url_replaces_the_ranges_and_a_failing_one_keeps_them() {
    let body = std::fs::read(shared_file()).unwrap();
    let (url, served) = serve(StatusCode::OK, body).await;
    let p = Placement::new(Arc::new(
        IpRanges::parse(small("3.0.0.0/8", "S3", "1").as_bytes(), "start").unwrap(),
    ));
    assert_eq!(p.lookup("34.234.236.212".parse().unwrap()), None);
    let cfg = url_config(&url);

    assert_eq!(p.refresh_once(&cfg).await.unwrap(), Refresh::Loaded);
    let loaded = p.ranges();
    assert_eq!(loaded.source(), url);
    assert_eq!(loaded.prefix_counts(), (10_668, 6_160));
    assert_eq!(
        p.lookup("34.234.236.212".parse().unwrap()).unwrap().service,
        "EC2"
    );
    let s = p.stats();
    assert_eq!(s.refresh_ok.load(Relaxed), 1);
    assert_eq!(s.refresh_errors.load(Relaxed), 0);
    assert_eq!(s.prefixes_v4.load(Relaxed), 10_668);
    assert_eq!(s.prefixes_v6.load(Relaxed), 6_160);
    assert_eq!(s.created_at.load(Relaxed), 1_787_411_825);

    *served.lock().unwrap() = (StatusCode::INTERNAL_SERVER_ERROR, b"oops".to_vec());
    let e = p.refresh_once(&cfg).await.unwrap_err().to_string();
    assert!(e.starts_with(&url) && e.contains("HTTP 500"), "{e}");
    *served.lock().unwrap() = (StatusCode::OK, b"{\"prefixes\": [".to_vec());
    let e = p.refresh_once(&cfg).await.unwrap_err().to_string();
    assert!(
        e.starts_with(&url) && e.contains("not a valid ip-ranges.json"),
        "{e}"
    );
    *served.lock().unwrap() = (StatusCode::OK, Vec::new());
    let e = p.refresh_once(&cfg).await.unwrap_err().to_string();
    assert!(e.starts_with(&url) && e.contains("empty"), "{e}");
    let closed = closed_port_url().await;
    let e = p
        .refresh_once(&url_config(&closed))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.starts_with(&closed) && e.contains("GET failed"), "{e}");

    assert!(
        Arc::ptr_eq(&loaded, &p.ranges()),
        "the ranges in use were kept"
    );
    assert_eq!(s.refresh_ok.load(Relaxed), 1);
    assert_eq!(s.refresh_errors.load(Relaxed), 4);

    // A gzip'd answer is read too.
    let gz = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/aws-ip-ranges.json.gz"),
    )
    .unwrap();
    *served.lock().unwrap() = (StatusCode::OK, gz);
    assert_eq!(p.refresh_once(&cfg).await.unwrap(), Refresh::Loaded);
    assert_eq!(p.ranges().prefix_counts(), (10_668, 6_160));
    assert_eq!(s.refresh_ok.load(Relaxed), 2);
}

/// A loopback URL where nothing listens.
async fn closed_port_url() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}/ip-ranges.json")
}

#[tokio::test]
async fn a_changed_file_is_read_again_and_a_broken_one_keeps_the_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "ip-ranges.json", &small("3.0.0.0/8", "S3", "1"));
    let cfg = PlacementConfig {
        ip_ranges_file: Some(path.clone()),
        ..PlacementConfig::default()
    };
    let p = Placement::from_config(&cfg).unwrap();
    assert_eq!(p.lookup("3.1.1.1".parse().unwrap()).unwrap().service, "S3");
    assert_eq!(p.refresh_once(&cfg).await.unwrap(), Refresh::Unchanged);

    write(
        dir.path(),
        "ip-ranges.json",
        &small("4.0.0.0/8", "EC2", "22"),
    );
    assert_eq!(p.refresh_once(&cfg).await.unwrap(), Refresh::Loaded);
    assert_eq!(p.lookup("3.1.1.1".parse().unwrap()), None);
    assert_eq!(p.lookup("4.1.1.1".parse().unwrap()).unwrap().service, "EC2");
    assert_eq!(p.ranges().sync_token(), "22");
    assert_eq!(p.refresh_once(&cfg).await.unwrap(), Refresh::Unchanged);

    write(dir.path(), "ip-ranges.json", "{\"prefixes\": [");
    let e = p.refresh_once(&cfg).await.unwrap_err().to_string();
    assert!(e.starts_with(&path.display().to_string()), "{e}");
    assert_eq!(p.ranges().sync_token(), "22");
    std::fs::remove_file(&path).unwrap();
    assert!(p.refresh_once(&cfg).await.is_err());
    assert_eq!(p.ranges().sync_token(), "22");
    assert_eq!(p.stats().refresh_ok.load(Relaxed), 1);
    assert_eq!(p.stats().refresh_errors.load(Relaxed), 2);

    // Nothing to refresh from: the bundled snapshot stays.
    let bundled = Placement::from_config(&PlacementConfig::default()).unwrap();
    let off = bundled.refresh_once(&PlacementConfig::default()).await;
    assert_eq!(off.unwrap(), Refresh::Off);
}

#[tokio::test]
async fn the_refresh_loop_picks_up_a_changed_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "ip-ranges.json", &small("3.0.0.0/8", "S3", "1"));
    let cfg = PlacementConfig {
        ip_ranges_file: Some(path.clone()),
        // Below the configuration's minimum of 60, for the test only.
        refresh_secs: 1,
        ..PlacementConfig::default()
    };
    let p = Arc::new(Placement::from_config(&cfg).unwrap());
    let task = tokio::spawn(p.clone().refresh_loop(cfg));
    write(
        dir.path(),
        "ip-ranges.json",
        &small("4.0.0.0/8", "EC2", "2"),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while p.stats().refresh_ok.load(Relaxed) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no refresh in 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(p.ranges().sync_token(), "2");
    task.abort();
}

#[tokio::test]
async fn the_initial_load_fetches_the_url_and_falls_back_when_it_fails() {
    let (url, _served) = serve(StatusCode::OK, small("5.0.0.0/8", "EC2", "9").into_bytes()).await;
    let p = Placement::load_initial(&url_config(&url)).await.unwrap();
    assert_eq!(p.ranges().source(), url);
    assert_eq!(p.lookup("5.5.5.5".parse().unwrap()).unwrap().service, "EC2");

    let closed = closed_port_url().await;
    let p = Placement::load_initial(&url_config(&closed)).await.unwrap();
    assert_eq!(p.ranges().source(), BUNDLED_SOURCE);

    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "ip-ranges.json", &small("6.0.0.0/8", "S3", "3"));
    let cfg = PlacementConfig {
        ip_ranges_file: Some(path.clone()),
        ..url_config(&closed)
    };
    let p = Placement::load_initial(&cfg).await.unwrap();
    assert_eq!(p.ranges().source(), path.display().to_string());
    // Without a URL: the file, no fetch.
    let p = Placement::load_initial(&PlacementConfig::default())
        .await
        .unwrap();
    assert_eq!(p.ranges().source(), BUNDLED_SOURCE);
}

fn place(args: &[&str]) -> (i32, String, String) {
    use clap::Parser;
    #[derive(Parser)]
    struct Top {
        #[command(flatten)]
        args: PlaceArgs,
    }
    let top = Top::try_parse_from(std::iter::once("place").chain(args.iter().copied())).unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = cli::run(&top.args, &mut out, &mut err);
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

#[test]
fn the_place_command_prints_a_line_per_address() {
    let shared = shared_file();
    let (code, out, err) = place(&[
        "--ip-ranges",
        shared.to_str().unwrap(),
        "34.234.236.212",
        "104.102.221.250",
        "10.0.0.1",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(err, "");
    let want = format!(
        "# ranges\t{}\tcreateDate\t2026-08-22T15:17:05Z\tsyncToken\t1787411825\n\
         34.234.236.212\taws\tEC2\tus-east-1\t34.224.0.0/12\n\
         104.102.221.250\toutside_aws\t-\t-\t-\n\
         10.0.0.1\tprivate\t-\t-\t-\n",
        shared.display()
    );
    assert_eq!(out, want);

    let (code, out, err) = place(&["--ip-ranges", shared.to_str().unwrap(), "3.5.140.9", "nope"]);
    assert_eq!(code, 2);
    assert_eq!(
        err,
        "credwatch: place: \"nope\" is not an IPv4 or IPv6 address\n"
    );
    // Listed as AMAZON, S3 and EC2: EC2 wins.
    assert!(
        out.contains("\n3.5.140.9\taws\tEC2\tap-northeast-2\t3.5.140.0/22\n"),
        "{out}"
    );

    let (code, _, err) = place(&["--ip-ranges", "/nonexistent.json", "3.5.140.9"]);
    assert_eq!(code, 2);
    assert!(
        err.starts_with("credwatch: place: /nonexistent.json: cannot read"),
        "{err}"
    );
}

#[test]
fn the_place_command_uses_the_configured_file_or_the_bundled_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let ranges = write(dir.path(), "r.json", &small("7.0.0.0/8", "EC2", "4"));
    let toml = format!(
        "[placement]\nip_ranges_file = {:?}\n",
        ranges.display().to_string()
    );
    let config = write(dir.path(), "credwatch.toml", &toml);
    let (code, out, err) = place(&["--config", config.to_str().unwrap(), "7.1.2.3"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.ends_with("7.1.2.3\taws\tEC2\teu-west-1\t7.0.0.0/8\n"),
        "{out}"
    );

    let empty = write(dir.path(), "empty.toml", "");
    let (code, out, err) = place(&["--config", empty.to_str().unwrap(), "2600:1f18::1"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(&format!("# ranges\t{BUNDLED_SOURCE}\t")),
        "{out}"
    );
}
