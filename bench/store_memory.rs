//! Bytes per tracked session at 1M and 10M sessions, measured with a counting allocator: the
//! heap the session-origin store holds after N distinct instance sessions went through the
//! engine, divided by N. Run: `cargo bench --bench store_memory` (add `-- 1000000` for one size).

use std::time::Instant;

use credwatch::config::Config;
use credwatch::engine::{Engine, Position};

#[path = "counting.rs"]
mod counting;

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

fn event(i: usize) -> String {
    format!(
        concat!(
            r#"{{"eventVersion":"1.08","eventID":"{:08x}-0000-4000-8000-{:012x}","eventTime":"2026-11-22T10:00:00Z","#,
            r#""eventName":"DescribeInstances","eventSource":"ec2.amazonaws.com","sourceIPAddress":"{}.{}.{}.{}","#,
            r#""userAgent":"aws-sdk-go-v2/1.30.3 os/linux lang/go#1.22.5","userIdentity":{{"type":"AssumedRole","#,
            r#""arn":"arn:aws:sts::111122223333:assumed-role/app/i-{:017x}","accountId":"111122223333","#,
            r#""accessKeyId":"ASIA{:016X}","sessionContext":{{"attributes":{{"creationDate":"2026-11-22T09:30:00Z"}},"ec2RoleDelivery":"2.0"}}}}}}"#
        ),
        i,
        i,
        3 + (i >> 24) % 200,
        (i >> 16) & 255,
        (i >> 8) & 255,
        i & 255,
        i,
        i
    )
}

fn measure(n: usize) {
    let engine = Engine::new(&Config::default());
    let before = counting::heap();
    let t = Instant::now();
    for i in 0..n {
        let text = event(i);
        engine
            .process_json(
                &text,
                Position {
                    prefix: "bench",
                    index: i,
                },
            )
            .expect("event parses");
    }
    let elapsed = t.elapsed().as_secs_f64();
    let held = counting::heap() - before;
    assert_eq!(engine.tracked_sessions(), n);
    println!(
        "{n} sessions: {:.1} bytes per session ({:.1} MiB held); {:.0} events/s inserting",
        held as f64 / n as f64,
        held as f64 / (1 << 20) as f64,
        n as f64 / elapsed
    );
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1_000_000, 10_000_000]
    } else {
        sizes
    };
    for n in sizes {
        measure(n);
    }
}
