//! Origins placed with AWS's ranges and the inventory: scenario tables on the engine, with an
//! inventory built in the test (the inventory read from a real EC2 emulator is
//! `tests/inventory.rs`).

mod support;

use std::sync::Arc;

use credwatch::config::Config;
use credwatch::engine::{Engine, Position};
use credwatch::finding::{Finding, Severity};
use credwatch::inventory::model::{
    AccountRegion, ElasticIpRec, EndpointRec, InstanceRec, NatGatewayRec, NetworkRec,
};
use credwatch::inventory::{Inventory, InventorySnapshot};
use serde_json::json;
use support::events::{judge_with, Ev, ACCT, T0};

const INST: &str = "i-0abc1234def567890";
const OTHER_INST: &str = "i-0fff1234def567890";
const INST_IP: &str = "54.160.12.34";
const INST_V6: &str = "2600:1f18:aa:bb00::10";
const OTHER_INST_IP: &str = "54.160.99.99";
const NAT_IP: &str = "52.200.5.5";
const EIP: &str = "34.192.7.7";
const THIEF: &str = "185.220.101.4";
const NETWORK_ACCT: &str = "999988887777";

fn inventory() -> InventorySnapshot {
    let ip = |s: &str| s.parse().unwrap();
    InventorySnapshot::new(vec![
        AccountRegion {
            account: ACCT.into(),
            region: "us-east-1".into(),
            refreshed_at: T0,
            instances: vec![
                InstanceRec {
                    id: INST.into(),
                    vpc_id: Some("vpc-1".into()),
                    public_ipv4: vec![ip(INST_IP)],
                    private_ipv4: vec![ip("10.0.0.5")],
                    ipv6: vec![],
                    state: Some("running".into()),
                },
                InstanceRec {
                    id: OTHER_INST.into(),
                    vpc_id: Some("vpc-2".into()),
                    public_ipv4: vec![ip(OTHER_INST_IP)],
                    private_ipv4: vec![],
                    ipv6: vec![],
                    state: Some("running".into()),
                },
            ],
            elastic_ips: vec![ElasticIpRec {
                public_ip: ip(EIP),
                allocation_id: Some("eipalloc-0123".into()),
                instance_id: None,
                network_interface_id: None,
                private_ip: None,
            }],
            nat_gateways: vec![NatGatewayRec {
                id: "nat-0aa".into(),
                vpc_id: Some("vpc-1".into()),
                public_ips: vec![ip(NAT_IP)],
                private_ips: vec![],
            }],
            vpcs: vec![NetworkRec {
                id: "vpc-1".into(),
                vpc_id: Some("vpc-1".into()),
                ipv6_cidrs: vec!["2600:1f18:aa:bb00::/56".parse().unwrap()],
            }],
            ..Default::default()
        },
        AccountRegion {
            account: NETWORK_ACCT.into(),
            region: "us-east-1".into(),
            refreshed_at: T0,
            endpoints: vec![EndpointRec {
                id: "vpce-0shared".into(),
                vpc_id: Some("vpc-net".into()),
                service_name: Some("com.amazonaws.us-east-1.s3".into()),
            }],
            ..Default::default()
        },
    ])
}

fn judge(events: &[Ev], with_inventory: bool) -> Vec<Finding> {
    let mut engine = Engine::new(&Config::default());
    if with_inventory {
        engine = engine.with_inventory(Arc::new(Inventory::new(inventory())));
    }
    let mut out = judge_with(&engine, events);
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

fn ec2(ip: &str, t: i64) -> Ev {
    Ev::ec2("ASIAEC2KEY0000000001", INST, ip, t)
}

fn rules(f: &[Finding]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = f
        .iter()
        .map(|f| {
            (
                f.rule.clone(),
                f.suspicious_origin.clone().unwrap_or_default(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn the_inventory_explains_a_workloads_own_addresses_and_nothing_else() {
    let reuse = "session_token_reuse".to_string();
    // (what, events, findings without the inventory, findings with it)
    type Row = (
        &'static str,
        Vec<Ev>,
        Vec<(String, String)>,
        Vec<(String, String)>,
    );
    let rows: Vec<Row> = vec![
        (
            "a dual-stack instance calls from its IPv4 and its VPC's IPv6 block",
            vec![ec2(INST_IP, T0), ec2(INST_V6, T0 + 60)],
            vec![(reuse.clone(), INST_V6.into())],
            vec![],
        ),
        (
            "an instance behind its VPC's NAT gateway and from its own address",
            vec![ec2(INST_IP, T0), ec2(NAT_IP, T0 + 60)],
            vec![(reuse.clone(), NAT_IP.into())],
            vec![],
        ),
        (
            "another instance's address of the same account: a pivot, still a finding",
            vec![ec2(INST_IP, T0), ec2(OTHER_INST_IP, T0 + 60)],
            vec![(reuse.clone(), OTHER_INST_IP.into())],
            vec![(reuse.clone(), OTHER_INST_IP.into())],
        ),
        (
            "the thief first, then the instance's own address",
            vec![ec2(THIEF, T0), ec2(INST_IP, T0 + 60)],
            vec![
                (reuse.clone(), THIEF.into()),
                ("workload_credentials_outside_aws".into(), THIEF.into()),
            ],
            vec![
                (reuse.clone(), THIEF.into()),
                ("workload_credentials_outside_aws".into(), THIEF.into()),
            ],
        ),
        (
            "an Elastic IP allocated before the data begins, associated in the stream",
            vec![
                ec2(INST_IP, T0),
                Ev::associate_allocation("eipalloc-0123", INST, T0 + 30),
                ec2(EIP, T0 + 60),
            ],
            vec![(reuse.clone(), EIP.into())],
            vec![],
        ),
        (
            "an instance not in the inventory yet, dual-stack: its first EC2 IPv4 is its own, a second is not",
            vec![
                Ev::ec2("ASIANEW0000000000001", "i-0new0000000000001", INST_V6, T0),
                Ev::ec2("ASIANEW0000000000001", "i-0new0000000000001", "54.160.77.77", T0 + 60),
                Ev::ec2("ASIANEW0000000000001", "i-0new0000000000001", "54.210.7.7", T0 + 120),
            ],
            vec![(reuse.clone(), "54.160.77.77".into()), (reuse.clone(), "54.210.7.7".into())],
            vec![(reuse.clone(), "54.210.7.7".into())],
        ),
        (
            "an instance not in the inventory yet behind its account's NAT: no IPv4 is taken as its own",
            vec![
                Ev::ec2("ASIANEW0000000000002", "i-0new0000000000002", NAT_IP, T0),
                Ev::ec2("ASIANEW0000000000002", "i-0new0000000000002", "54.210.7.7", T0 + 60),
            ],
            vec![(reuse.clone(), "54.210.7.7".into())],
            vec![(reuse.clone(), "54.210.7.7".into())],
        ),
        (
            "the network account's shared VPC endpoint",
            vec![
                ec2(INST_IP, T0),
                ec2("10.0.0.5", T0 + 60)
                    .set("vpcEndpointId", json!("vpce-0shared"))
                    .set("vpcEndpointAccountId", json!(NETWORK_ACCT)),
            ],
            vec![(
                "foreign_vpc_endpoint".into(),
                "vpce-0shared@999988887777 (10.0.0.5)".into(),
            )],
            vec![],
        ),
    ];
    for (what, events, without, with) in rows {
        assert_eq!(rules(&judge(&events, false)), without, "without: {what}");
        assert_eq!(rules(&judge(&events, true)), with, "with: {what}");
        let mut reversed = events.clone();
        reversed.reverse();
        assert_eq!(
            rules(&judge(&reversed, true)),
            with,
            "with, reversed: {what}"
        );
    }
}

#[test]
fn findings_say_where_each_origin_is() {
    let f = judge(&[ec2(INST_IP, T0), ec2(OTHER_INST_IP, T0 + 60)], true);
    assert_eq!(f.len(), 1);
    let f = &f[0];
    assert_eq!(
        f.severity,
        Severity::Medium,
        "a pivot within the organisation is one step lower"
    );
    assert!(
        f.title.contains("ours but another workload's"),
        "{}",
        f.title
    );
    let places: Vec<&str> = f
        .events
        .iter()
        .map(|e| e.place.as_deref().unwrap())
        .collect();
    assert_eq!(places, ["ours", "ours_other"]);
    assert!(f.events[1]
        .place_detail
        .as_deref()
        .unwrap()
        .contains(OTHER_INST));
    let inv = f
        .exceptions_checked
        .iter()
        .find(|c| c.exception == "inventory")
        .unwrap();
    assert!(
        !inv.applied && inv.detail.contains("not this workload's"),
        "{}",
        inv.detail
    );

    let f = judge(&[ec2(INST_IP, T0), ec2("54.210.7.7", T0 + 60)], true);
    assert_eq!(f[0].severity, Severity::High);
    assert!(
        f[0].title.contains("in AWS (EC2 us-east-1), not ours"),
        "{}",
        f[0].title
    );
    assert_eq!(f[0].events[1].place.as_deref(), Some("aws"));

    let f = judge(&[ec2(THIEF, T0), ec2("54.210.7.7", T0 + 60)], false);
    let reuse = f.iter().find(|f| f.rule == "session_token_reuse").unwrap();
    assert!(
        reuse
            .title
            .contains("the first origin is the suspicious one"),
        "{}",
        reuse.title
    );
    assert_eq!(reuse.suspicious_origin.as_deref(), Some(THIEF));
    assert_eq!(reuse.events[0].place.as_deref(), Some("outside_aws"));
}

#[test]
fn outside_aws_is_judged_on_the_single_event() {
    let f = judge(&[ec2(THIEF, T0)], false);
    assert_eq!(
        rules(&f),
        [(
            "workload_credentials_outside_aws".to_string(),
            THIEF.to_string()
        )]
    );
    let checks: Vec<&str> = f[0]
        .exceptions_checked
        .iter()
        .map(|c| c.exception.as_str())
        .collect();
    assert_eq!(
        checks,
        ["aws_ip_ranges", "inventory", "allow_list", "workload_class"]
    );
    // An assumed role (a person) from outside AWS is not a workload's credential.
    let person = Ev::role("ASIAPERSON0000000001", "alice", THIEF, T0);
    assert!(judge(&[person], false).is_empty());
    // An allowed network is not outside.
    let cfg = Config::from_toml_str(&format!(
        "[[allow]]\ncidr = \"185.220.101.0/24\"\nreason = \"test lab\"\naccount = \"{ACCT}\""
    ))
    .unwrap();
    let engine = Engine::new(&cfg);
    let out = engine
        .process_json(
            &ec2(THIEF, T0).text(),
            Position {
                prefix: "t",
                index: 0,
            },
        )
        .unwrap();
    assert!(out.is_empty());
}
