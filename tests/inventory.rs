//! The EC2 inventory against a real moto server on loopback: two accounts (the second through
//! STS AssumeRole), every resource kind, pagination, refreshes, failures that stay local to
//! their account and region, and `credwatch inventory`.
//!
//! What moto 5.2.5 does (the tests rely on it, the code must not):
//! - `AssumeRole` on `arn:aws:iam::<account>:role/<any>` succeeds without the role existing, and
//!   the credentials act in `<account>`; `ExternalId` is not checked;
//! - with IAM authorization switched on (`/moto-api/reset-auth`), a user policy's `Deny` on
//!   `sts:AssumeRole` for a role ARN makes AssumeRole answer AccessDenied;
//! - an unknown region name (`xx-fake-1`) answers HTTP 500 to every EC2 call;
//! - instances get a public IPv4 in the default VPC (none in a new subnet), IPv6 addresses with
//!   `Ipv6AddressCount`; an associated Elastic IP shows as the instance's public address;
//! - NAT gateways list a public and a private address (the private one outside the subnet);
//! - a subnet's IPv6 block state comes back in a shape the SDK does not know;
//! - `DescribeInstances` pages by reservation (`MaxResults`); other Describe calls ignore it.

mod support;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::types::DomainType;
use aws_sdk_sts::config::Credentials;
use credwatch::config::InventoryConfig;
use credwatch::inventory::cli::{run_to_string, InventoryArgs, InventoryFormat};
use credwatch::inventory::{self, FetchOptions, Fetcher, InventorySnapshot, Owner};
use support::moto::{MotoServer, ACCOUNT_ID, REGION};

const OTHER_ACCOUNT: &str = "210987654321";
const DENIED_ACCOUNT: &str = "333333333333";
const AMI: &str = "ami-12c6146b";
const FAKE_REGION: &str = "xx-fake-1";

fn role(account: &str) -> String {
    format!("arn:aws:iam::{account}:role/x")
}

/// Quick retries (moto answers at once) and small pages, to read several pages.
fn test_options() -> FetchOptions {
    FetchOptions {
        retry: RetryConfig::standard()
            .with_max_attempts(3)
            .with_initial_backoff(Duration::from_millis(20))
            .with_max_backoff(Duration::from_millis(100)),
        page_size: 5,
        ..FetchOptions::default()
    }
}

fn inventory_config(roles: &[&str], regions: &[&str]) -> InventoryConfig {
    InventoryConfig {
        own_account: true,
        role_arns: roles.iter().map(|a| role(a)).collect(),
        external_id: Some("credwatch-test".into()),
        regions: regions.iter().map(|r| r.to_string()).collect(),
        refresh_secs: 900,
        endpoint_url: None,
        file: None,
    }
}

async fn config_with(moto: &MotoServer, creds: Credentials) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .credentials_provider(creds)
        .endpoint_url(moto.endpoint())
        .load()
        .await
}

/// moto's SDK configuration acting in `account` (through AssumeRole).
async fn in_account(moto: &MotoServer, account: &str) -> SdkConfig {
    let sts = aws_sdk_sts::Client::new(&moto.sdk_config().await);
    let out = sts
        .assume_role()
        .role_arn(role(account))
        .role_session_name("test-setup")
        .send()
        .await
        .unwrap_or_else(|e| panic!("AssumeRole into {account}: {e:?}"));
    let c = out.credentials().expect("credentials");
    let conf = config_with(
        moto,
        Credentials::new(
            c.access_key_id(),
            c.secret_access_key(),
            Some(c.session_token().to_string()),
            None,
            "test",
        ),
    )
    .await;
    let who = aws_sdk_sts::Client::new(&conf)
        .get_caller_identity()
        .send()
        .await
        .expect("GetCallerIdentity");
    assert_eq!(
        who.account(),
        Some(account),
        "moto acts in the role's account"
    );
    conf
}

fn ec2(conf: &SdkConfig) -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::new(conf)
}

async fn fetcher(base: SdkConfig, cfg: &InventoryConfig) -> Fetcher {
    Fetcher::new(base, cfg, test_options()).await
}

/// Launches one instance (its own reservation); returns its id.
async fn launch(ec2: &aws_sdk_ec2::Client, subnet: Option<&str>, ipv6: bool) -> String {
    let mut req = ec2.run_instances().image_id(AMI).min_count(1).max_count(1);
    if let Some(s) = subnet {
        req = req.subnet_id(s);
    }
    if ipv6 {
        req = req.ipv6_address_count(1);
    }
    let out = req.send().await.expect("RunInstances");
    out.instances()[0]
        .instance_id()
        .expect("instance id")
        .to_string()
}

async fn describe(ec2: &aws_sdk_ec2::Client, id: &str) -> aws_sdk_ec2::types::Instance {
    let out = ec2
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .expect("DescribeInstances");
    out.reservations()[0].instances()[0].clone()
}

async fn endpoint_in(ec2: &aws_sdk_ec2::Client, vpc: &str) -> String {
    ec2.create_vpc_endpoint()
        .vpc_id(vpc)
        .service_name(format!("com.amazonaws.{REGION}.s3"))
        .send()
        .await
        .expect("CreateVpcEndpoint")
        .vpc_endpoint()
        .and_then(|e| e.vpc_endpoint_id())
        .expect("endpoint id")
        .to_string()
}

async fn new_vpc(ec2: &aws_sdk_ec2::Client, cidr: &str, ipv6: bool) -> aws_sdk_ec2::types::Vpc {
    ec2.create_vpc()
        .cidr_block(cidr)
        .amazon_provided_ipv6_cidr_block(ipv6)
        .send()
        .await
        .expect("CreateVpc")
        .vpc()
        .expect("vpc")
        .clone()
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

/// The owners of `addr`, as (kind, resource id, account).
fn owners(s: &InventorySnapshot, addr: IpAddr) -> Vec<(&'static str, String, String)> {
    s.owners(addr)
        .iter()
        .map(|o| {
            let (kind, id) = match o {
                Owner::Instance { rec, .. } => ("instance", rec.id.clone()),
                Owner::ElasticIp { rec, .. } => {
                    ("elastic-ip", rec.allocation_id.clone().unwrap_or_default())
                }
                Owner::NatGateway { rec, .. } => ("nat-gateway", rec.id.clone()),
                Owner::Ipv6Block { rec, .. } => ("ipv6-block", rec.id.clone()),
            };
            (kind, id, o.account().to_string())
        })
        .collect()
}

fn own(kind: &'static str, id: &str) -> (&'static str, String, String) {
    (kind, id.to_string(), ACCOUNT_ID.to_string())
}

/// Everything the default account has, as created by [`populate`].
struct Made {
    vpc: String,
    vpc_block: ipnet::IpNet,
    subnet: String,
    /// In the subnet, with an IPv6 address and the Elastic IP.
    with_eip: String,
    with_eip_private: IpAddr,
    with_eip_v6: IpAddr,
    /// In the default VPC, with moto's public IPv4.
    public: String,
    public_ip: IpAddr,
    allocation: String,
    eip: IpAddr,
    nat: String,
    nat_public: IpAddr,
    nat_private: IpAddr,
    endpoint: String,
}

async fn populate(ec2: &aws_sdk_ec2::Client) -> Made {
    let vpc = new_vpc(ec2, "10.1.0.0/16", true).await;
    let vpc_id = vpc.vpc_id().expect("vpc id").to_string();
    let vpc_block: ipnet::IpNet = vpc.ipv6_cidr_block_association_set()[0]
        .ipv6_cidr_block()
        .expect("an Amazon-provided IPv6 block")
        .parse()
        .expect("a CIDR");
    // The VPC's first /64.
    let subnet_block = ipnet::Ipv6Net::new(
        match vpc_block.network() {
            IpAddr::V6(a) => a,
            IpAddr::V4(_) => panic!("an IPv6 block"),
        },
        64,
    )
    .expect("a /64");
    let subnet = ec2
        .create_subnet()
        .vpc_id(&vpc_id)
        .cidr_block("10.1.1.0/24")
        .ipv6_cidr_block(subnet_block.to_string())
        .send()
        .await
        .expect("CreateSubnet")
        .subnet()
        .and_then(|s| s.subnet_id())
        .expect("subnet id")
        .to_string();

    let with_eip = launch(ec2, Some(&subnet), true).await;
    let public = launch(ec2, None, false).await;
    let d = describe(ec2, &with_eip).await;
    let with_eip_private = ip(d.private_ip_address().expect("a private address"));
    let with_eip_v6 = ip(d.network_interfaces()[0].ipv6_addresses()[0]
        .ipv6_address()
        .expect("moto gives the instance an IPv6 address"));
    let public_ip = ip(describe(ec2, &public)
        .await
        .public_ip_address()
        .expect("moto gives a public IPv4 in the default VPC"));

    let eip = ec2
        .allocate_address()
        .domain(DomainType::Vpc)
        .send()
        .await
        .expect("AllocateAddress");
    let allocation = eip.allocation_id().expect("allocation id").to_string();
    let eip = ip(eip.public_ip().expect("public ip"));
    ec2.associate_address()
        .allocation_id(&allocation)
        .instance_id(&with_eip)
        .send()
        .await
        .expect("AssociateAddress");

    let nat_eip = ec2
        .allocate_address()
        .domain(DomainType::Vpc)
        .send()
        .await
        .expect("AllocateAddress");
    let nat = ec2
        .create_nat_gateway()
        .subnet_id(&subnet)
        .allocation_id(nat_eip.allocation_id().expect("allocation id"))
        .send()
        .await
        .expect("CreateNatGateway");
    let nat = nat.nat_gateway().expect("nat gateway");
    let nat_addr = &nat.nat_gateway_addresses()[0];
    let made = Made {
        nat: nat.nat_gateway_id().expect("nat id").to_string(),
        nat_public: ip(nat_addr.public_ip().expect("NAT public ip")),
        nat_private: ip(nat_addr.private_ip().expect("NAT private ip")),
        endpoint: endpoint_in(ec2, &vpc_id).await,
        vpc: vpc_id,
        vpc_block,
        subnet,
        with_eip,
        with_eip_private,
        with_eip_v6,
        public,
        public_ip,
        allocation,
        eip,
    };
    made
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_every_resource_of_two_accounts_and_explains_their_addresses() {
    let moto = MotoServer::start();
    let own_ec2 = ec2(&moto.sdk_config().await);
    let m = populate(&own_ec2).await;
    // More reservations than a page holds (page size 5): DescribeInstances is read in pages.
    let mut more = Vec::new();
    for _ in 0..6 {
        more.push(launch(&own_ec2, None, false).await);
    }

    let other_ec2 = ec2(&in_account(&moto, OTHER_ACCOUNT).await);
    let other_vpc = new_vpc(&other_ec2, "10.9.0.0/16", false).await;
    let other_vpc = other_vpc.vpc_id().expect("vpc id").to_string();
    let other_endpoint = endpoint_in(&other_ec2, &other_vpc).await;

    let cfg = inventory_config(&[OTHER_ACCOUNT], &[REGION]);
    let inv = inventory::load_with(fetcher(moto.sdk_config().await, &cfg).await).await;
    let s = inv.snapshot();

    assert_eq!(
        s.parts
            .iter()
            .map(|p| (p.account.as_str(), p.region.as_str(), p.error.as_deref()))
            .collect::<Vec<_>>(),
        [(ACCOUNT_ID, REGION, None), (OTHER_ACCOUNT, REGION, None)],
        "{}",
        moto.log()
    );
    assert_eq!(s.accounts(), BTreeSet::from([ACCOUNT_ID, OTHER_ACCOUNT]));
    let own_part = &s.parts[0];
    assert!(own_part.refreshed_at > 0);
    assert_eq!(own_part.instances.len(), 8, "{:?}", own_part.instances);
    for id in more.iter().chain([&m.with_eip, &m.public]) {
        let (rec, at) = s.instance(id).unwrap_or_else(|| panic!("instance {id}"));
        assert_eq!(at.account, ACCOUNT_ID);
        assert_eq!(rec.state.as_deref(), Some("running"));
    }

    // Instances: private, public, IPv6 (with the subnet's and the VPC's blocks, most specific
    // first).
    assert_eq!(
        owners(&s, m.with_eip_private),
        [own("instance", &m.with_eip)]
    );
    assert_eq!(owners(&s, m.public_ip), [own("instance", &m.public)]);
    assert_eq!(
        owners(&s, m.with_eip_v6),
        [
            own("instance", &m.with_eip),
            own("ipv6-block", &m.subnet),
            own("ipv6-block", &m.vpc)
        ]
    );
    // An address of the VPC's block outside the subnet's /64.
    let IpAddr::V6(net) = m.vpc_block.network() else {
        panic!("an IPv6 block")
    };
    let mut seg = net.segments();
    seg[3] |= 0xff;
    seg[7] = 1;
    let elsewhere = IpAddr::V6(seg.into());
    assert_eq!(owners(&s, elsewhere), [own("ipv6-block", &m.vpc)]);
    let block = s.owners(elsewhere).into_iter().find_map(|o| match o {
        Owner::Ipv6Block { cidr, .. } => Some(cidr),
        _ => None,
    });
    assert_eq!(block, Some(m.vpc_block));

    // The Elastic IP: its allocation, associated with the instance (which shows it as public).
    let eip_owners = owners(&s, m.eip);
    assert!(
        eip_owners.contains(&own("elastic-ip", &m.allocation))
            && eip_owners.contains(&own("instance", &m.with_eip)),
        "{eip_owners:?}"
    );
    let eip = s
        .owners(m.eip)
        .into_iter()
        .find_map(|o| match o {
            Owner::ElasticIp { rec, .. } => Some(rec.clone()),
            _ => None,
        })
        .expect("the Elastic IP");
    assert_eq!(eip.instance_id.as_deref(), Some(m.with_eip.as_str()));
    assert_eq!(eip.private_ip, Some(m.with_eip_private));
    assert!(eip.network_interface_id.is_some());
    assert_eq!(s.allocation(&m.allocation), Some(m.eip));
    assert_eq!(s.allocation("eipalloc-none"), None);

    // The NAT gateway: its public address (also an Elastic IP, allocated for it) and private.
    assert!(owners(&s, m.nat_public).contains(&own("nat-gateway", &m.nat)));
    assert_eq!(owners(&s, m.nat_private), [own("nat-gateway", &m.nat)]);
    let nat = &own_part.nat_gateways[0];
    assert_eq!(nat.vpc_id.as_deref(), Some(m.vpc.as_str()));

    // VPCs and subnets of both accounts; the IPv6 blocks where there are some.
    let vpc = own_part
        .vpcs
        .iter()
        .find(|v| v.id == m.vpc)
        .expect("the VPC");
    assert_eq!(vpc.ipv6_cidrs, [m.vpc_block]);
    let subnet = own_part
        .subnets
        .iter()
        .find(|v| v.id == m.subnet)
        .expect("the subnet");
    assert_eq!(subnet.vpc_id.as_deref(), Some(m.vpc.as_str()));
    assert_eq!(subnet.ipv6_cidrs.len(), 1);
    assert!(s.parts[1].vpcs.iter().any(|v| v.id == other_vpc));

    // Both endpoints, each in its own account.
    let (e, at) = s.endpoint(&m.endpoint).expect("the own endpoint");
    assert_eq!(at.account, ACCOUNT_ID);
    assert_eq!(e.vpc_id.as_deref(), Some(m.vpc.as_str()));
    assert_eq!(
        e.service_name.as_deref(),
        Some(format!("com.amazonaws.{REGION}.s3").as_str())
    );
    let (e, at) = s
        .endpoint(&other_endpoint)
        .expect("the other account's endpoint");
    assert_eq!(at.account, OTHER_ACCOUNT);
    assert_eq!(e.vpc_id.as_deref(), Some(other_vpc.as_str()));
    assert!(s.endpoint("vpce-none").is_none());

    let stats = inv.stats();
    assert_eq!(stats.len(), 2);
    assert!(stats
        .iter()
        .all(|p| !p.error && p.refreshes_ok == 1 && p.refreshes_error == 0));
    assert_eq!(stats[0].resources, own_part.len());
    assert_eq!(stats[0].last_success_secs, Some(own_part.refreshed_at));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refresh_loop_picks_up_a_new_instance() {
    let moto = MotoServer::start();
    let own_ec2 = ec2(&moto.sdk_config().await);
    let first = launch(&own_ec2, None, false).await;
    let mut cfg = inventory_config(&[OTHER_ACCOUNT], &[REGION]);
    let inv = Arc::new(inventory::load_with(fetcher(moto.sdk_config().await, &cfg).await).await);
    assert!(inv.snapshot().instance(&first).is_some());

    let other_ec2 = ec2(&in_account(&moto, OTHER_ACCOUNT).await);
    let second = launch(&own_ec2, None, false).await;
    let third = launch(&other_ec2, None, false).await;
    assert!(inv.snapshot().instance(&second).is_none());

    cfg.refresh_secs = 1;
    let task = tokio::spawn(inv.clone().refresh_loop(cfg));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = inv.snapshot();
        if s.instance(&second).is_some() && s.instance(&third).is_some() {
            let (_, at) = s.instance(&third).expect("found");
            assert_eq!(at.account, OTHER_ACCOUNT);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no refresh picked up the new instances"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    task.abort();
    assert!(inv.stats().iter().all(|p| p.refreshes_ok >= 2 && !p.error));
}

/// Creates the user the inventory calls as once IAM authorization is on, allowed every EC2
/// Describe and AssumeRole except into [`DENIED_ACCOUNT`]; returns its credentials. The role
/// in [`OTHER_ACCOUNT`] gets a policy allowing EC2 Describe calls.
async fn iam_setup(moto: &MotoServer) -> Credentials {
    let iam = aws_sdk_iam::Client::new(&moto.sdk_config().await);
    iam.create_user()
        .user_name("inventory")
        .send()
        .await
        .expect("CreateUser");
    let key = iam
        .create_access_key()
        .user_name("inventory")
        .send()
        .await
        .expect("CreateAccessKey");
    let key = key.access_key().expect("access key");
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["ec2:Describe*", "sts:AssumeRole"], "Resource": "*"},
            {"Effect": "Deny", "Action": "sts:AssumeRole", "Resource": role(DENIED_ACCOUNT)}
        ]
    });
    iam.put_user_policy()
        .user_name("inventory")
        .policy_name("inventory")
        .policy_document(policy.to_string())
        .send()
        .await
        .expect("PutUserPolicy");

    let other_iam = aws_sdk_iam::Client::new(&in_account(moto, OTHER_ACCOUNT).await);
    let trust = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT_ID}:root")},
            "Action": "sts:AssumeRole"
        }]
    });
    iam_role(&other_iam, &trust).await;
    Credentials::new(
        key.access_key_id(),
        key.secret_access_key(),
        None,
        None,
        "test-user",
    )
}

async fn iam_role(iam: &aws_sdk_iam::Client, trust: &serde_json::Value) {
    iam.create_role()
        .role_name("x")
        .assume_role_policy_document(trust.to_string())
        .send()
        .await
        .expect("CreateRole");
    let describe = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "ec2:Describe*", "Resource": "*"}]
    });
    iam.put_role_policy()
        .role_name("x")
        .policy_name("describe")
        .policy_document(describe.to_string())
        .send()
        .await
        .expect("PutRolePolicy");
}

/// Switches moto's IAM authorization on: from now on every call is checked against IAM.
async fn enforce_iam(moto: &MotoServer) {
    let res = reqwest::Client::new()
        .post(format!("{}/moto-api/reset-auth", moto.endpoint()))
        .body("0")
        .send()
        .await
        .expect("reset-auth");
    assert!(res.status().is_success(), "reset-auth: {}", res.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_role_or_region_keeps_its_data_and_the_others_go_on() {
    let moto = MotoServer::start();
    let own_ec2 = ec2(&moto.sdk_config().await);
    let own_vpc = new_vpc(&own_ec2, "10.1.0.0/16", false).await;
    let own_endpoint = endpoint_in(&own_ec2, own_vpc.vpc_id().expect("vpc id")).await;
    let mut endpoints = vec![own_endpoint.clone()];
    for account in [OTHER_ACCOUNT, DENIED_ACCOUNT] {
        let e = ec2(&in_account(&moto, account).await);
        let vpc = new_vpc(&e, "10.2.0.0/16", false).await;
        endpoints.push(endpoint_in(&e, vpc.vpc_id().expect("vpc id")).await);
    }
    let user = iam_setup(&moto).await;

    // First read, IAM not enforced: every account reads in the real region; the region that
    // does not exist fails everywhere, and only there.
    let cfg = inventory_config(&[OTHER_ACCOUNT, DENIED_ACCOUNT], &[REGION, FAKE_REGION]);
    let inv = inventory::load_with(fetcher(moto.sdk_config().await, &cfg).await).await;
    let s = inv.snapshot();
    let summary = |s: &InventorySnapshot| -> Vec<(String, String, bool)> {
        s.parts
            .iter()
            .map(|p| (p.account.clone(), p.region.clone(), p.error.is_some()))
            .collect()
    };
    let expect = |denied_ok: bool| -> Vec<(String, String, bool)> {
        [ACCOUNT_ID, OTHER_ACCOUNT, DENIED_ACCOUNT]
            .iter()
            .flat_map(|a| {
                let ok = *a != DENIED_ACCOUNT || denied_ok;
                [
                    (a.to_string(), REGION.to_string(), !ok),
                    (a.to_string(), FAKE_REGION.to_string(), true),
                ]
            })
            .collect()
    };
    assert_eq!(summary(&s), expect(true), "{:?}", s.parts);
    for (e, account) in endpoints
        .iter()
        .zip([ACCOUNT_ID, OTHER_ACCOUNT, DENIED_ACCOUNT])
    {
        assert_eq!(
            s.endpoint(e).map(|(_, at)| at.account.as_str()),
            Some(account)
        );
    }
    let fake = &s.parts[1];
    assert!(fake.is_empty() && fake.refreshed_at == 0);
    let err = fake.error.as_deref().expect("an error");
    assert!(err.starts_with("Describe"), "{err}");
    let denied_read_at = s.parts[4].refreshed_at;
    assert!(denied_read_at > 0);

    // Second read, as the user whose policy denies AssumeRole into the third account: that
    // account keeps what it had, with the error; the others read as before.
    enforce_iam(&moto).await;
    let as_user = fetcher(config_with(&moto, user).await, &cfg).await;
    inv.refresh(&as_user).await;
    let s = inv.snapshot();
    assert_eq!(summary(&s), expect(false), "{:?}\n{}", s.parts, moto.log());
    let denied = &s.parts[4];
    let err = denied.error.as_deref().expect("an error");
    assert!(
        err.contains("AssumeRole")
            && err.contains(&role(DENIED_ACCOUNT))
            && err.contains("AccessDenied"),
        "{err}"
    );
    assert_eq!(
        denied.refreshed_at, denied_read_at,
        "the previous read's time"
    );
    let (_, at) = s
        .endpoint(&endpoints[2])
        .expect("the denied account's endpoint is kept");
    assert_eq!(at.account, DENIED_ACCOUNT);
    assert!(s.endpoint(&own_endpoint).is_some());
    assert!(s.endpoint(&endpoints[1]).is_some());

    let stats = inv.stats();
    let st = |account: &str, region: &str| {
        stats
            .iter()
            .find(|p| p.account == account && p.region == region)
            .cloned()
            .expect("stats of the part")
    };
    let d = st(DENIED_ACCOUNT, REGION);
    assert!(d.error && d.refreshes_ok == 1 && d.refreshes_error == 1);
    assert_eq!(d.last_success_secs, Some(denied_read_at));
    assert!(d.resources > 0);
    let o = st(OTHER_ACCOUNT, REGION);
    assert!(!o.error && o.refreshes_ok == 2 && o.refreshes_error == 0);
    let f = st(ACCOUNT_ID, FAKE_REGION);
    assert!(f.error && f.refreshes_ok == 0 && f.refreshes_error == 2);
    assert_eq!(f.last_success_secs, None);
}

/// The command reads the SDK's default credentials chain: moto's test credentials, from the
/// environment (the same for every test in this binary; the others pass theirs explicitly).
fn test_credentials_in_env() {
    static ENV: OnceLock<()> = OnceLock::new();
    ENV.get_or_init(|| {
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("AWS_CONFIG_FILE", "/nonexistent/credwatch-test-config");
        std::env::set_var(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/credwatch-test-credentials",
        );
        std::env::remove_var("AWS_PROFILE");
        std::env::remove_var("AWS_SESSION_TOKEN");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inventory_command_prints_json_that_reads_back_and_a_table() {
    let moto = MotoServer::start();
    test_credentials_in_env();
    let own_ec2 = ec2(&moto.sdk_config().await);
    let vpc = new_vpc(&own_ec2, "10.1.0.0/16", true).await;
    let vpc = vpc.vpc_id().expect("vpc id").to_string();
    let endpoint = endpoint_in(&own_ec2, &vpc).await;
    let instance = launch(&own_ec2, None, false).await;

    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("credwatch.toml");
    std::fs::write(
        &config,
        format!(
            "[inventory]\nregions = [\"{REGION}\"]\nendpoint_url = \"{}\"\n",
            moto.endpoint()
        ),
    )
    .expect("write config");
    let out = run_to_string(&InventoryArgs {
        config: Some(config.clone()),
        format: InventoryFormat::Json,
    })
    .await
    .expect("credwatch inventory --format json");
    assert_eq!(out.failed_parts, 0, "{}", out.text);
    let mut snap: InventorySnapshot = serde_json::from_str(&out.text).expect("JSON inventory");
    snap.reindex();
    assert_eq!(snap.parts.len(), 1);
    assert_eq!(snap.parts[0].account, ACCOUNT_ID);
    assert!(snap.endpoint(&endpoint).is_some());
    assert!(snap.instance(&instance).is_some());

    // The JSON is what `[inventory] file` reads.
    let file = dir.path().join("inventory.json");
    std::fs::write(&file, &out.text).expect("write inventory");
    let from_file = dir.path().join("from-file.toml");
    std::fs::write(
        &from_file,
        format!("[inventory]\nfile = \"{}\"\n", file.display()),
    )
    .expect("write config");
    let table = run_to_string(&InventoryArgs {
        config: Some(from_file),
        format: InventoryFormat::Table,
    })
    .await
    .expect("credwatch inventory --format table");
    let text = table.text;
    assert!(
        text.lines()
            .any(|l| l.starts_with(&format!("{ACCOUNT_ID} {REGION}: 1 instances"))),
        "{text}"
    );
    let endpoint_line = text
        .lines()
        .find(|l| l.contains(&endpoint))
        .unwrap_or_else(|| panic!("no line for {endpoint}:\n{text}"));
    let cells: Vec<&str> = endpoint_line.split_whitespace().collect();
    assert_eq!(
        cells,
        [
            ACCOUNT_ID,
            REGION,
            "endpoint",
            endpoint.as_str(),
            &format!("com.amazonaws.{REGION}.s3"),
            vpc.as_str()
        ]
    );
    assert!(text.lines().any(|l| l.contains(&instance)), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains(" vpc ") && l.contains(&vpc) && l.contains("::/56")),
        "{text}"
    );
}

#[test]
fn the_inventory_command_without_an_inventory_names_the_option() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("credwatch.toml");
    std::fs::write(&config, "").expect("write config");
    let args = InventoryArgs {
        config: Some(config),
        format: InventoryFormat::Table,
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let err = rt
        .block_on(run_to_string(&args))
        .expect_err("not configured");
    assert!(err.to_string().contains("[inventory] regions"), "{err}");
    drop(rt);
    assert_eq!(inventory::cli::cli(args), inventory::cli::EXIT_ERROR);
}

/// The engine with the inventory read from moto: each resource explains the workload's use of
/// its address (or endpoint), and another workload's address stays a finding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_explains_each_resource_read_from_ec2() {
    use credwatch::engine::Engine;
    use support::events::{Ev, T0};

    let moto = MotoServer::start();
    let own_ec2 = ec2(&moto.sdk_config().await);
    let m = populate(&own_ec2).await;
    // An Elastic IP allocated before the stream begins; the stream associates it.
    let late = own_ec2
        .allocate_address()
        .domain(DomainType::Vpc)
        .send()
        .await
        .expect("AllocateAddress");
    let late_alloc = late.allocation_id().expect("allocation id").to_string();
    let late_ip = late.public_ip().expect("public ip").to_string();
    // A second account's endpoint (a network account's shared one).
    let other_ec2 = ec2(&in_account(&moto, OTHER_ACCOUNT).await);
    let other_vpc = new_vpc(&other_ec2, "10.9.0.0/16", false).await;
    let shared = endpoint_in(&other_ec2, other_vpc.vpc_id().expect("vpc id")).await;

    let cfg = inventory_config(&[OTHER_ACCOUNT], &[REGION]);
    let inv = Arc::new(inventory::load_with(fetcher(moto.sdk_config().await, &cfg).await).await);

    let call = |key: &str, instance: &str, ip: &str, t: i64| {
        Ev::ec2(key, instance, ip, t).set(
            "userIdentity",
            serde_json::json!({
                "type": "AssumedRole",
                "arn": format!("arn:aws:sts::{ACCOUNT_ID}:assumed-role/app-role/{instance}"),
                "accountId": ACCOUNT_ID,
                "accessKeyId": key,
                "sessionContext": {"ec2RoleDelivery": "2.0"}
            }),
        )
    };
    let (a, b) = ("ASIAINSTANCEA0000001", "ASIAINSTANCEB0000001");
    let events = [
        // The instance with the Elastic IP: its EIP, its IPv6 address, its VPC's NAT gateway,
        // and the network account's endpoint.
        call(a, &m.with_eip, &m.eip.to_string(), T0),
        call(a, &m.with_eip, &m.with_eip_v6.to_string(), T0 + 10),
        call(a, &m.with_eip, &m.nat_public.to_string(), T0 + 20),
        call(a, &m.with_eip, &m.with_eip_private.to_string(), T0 + 25)
            .set("vpcEndpointId", serde_json::json!(shared))
            .set("vpcEndpointAccountId", serde_json::json!(OTHER_ACCOUNT)),
        // The other instance: its own address, then the late Elastic IP once associated.
        call(b, &m.public, &m.public_ip.to_string(), T0),
        Ev::associate_allocation(&late_alloc, &m.public, T0 + 30),
        call(b, &m.public, &late_ip, T0 + 60),
        // The other instance from the first one's Elastic IP: ours, not this workload's.
        call(b, &m.public, &m.eip.to_string(), T0 + 90),
    ];
    let judge = |with: bool| {
        let mut engine = Engine::new(&credwatch::config::Config::default());
        if with {
            engine = engine.with_inventory(inv.clone());
        }
        let out = support::events::judge_with(&engine, &events);
        let mut got: Vec<(String, String)> = out
            .iter()
            .map(|f| {
                (
                    f.rule.clone(),
                    f.suspicious_origin.clone().unwrap_or_default(),
                )
            })
            .collect();
        got.sort();
        (got, out)
    };
    let (with, findings) = judge(true);
    assert_eq!(
        with,
        [("session_token_reuse".to_string(), m.eip.to_string())],
        "only the pivot is left: {findings:#?}"
    );
    let pivot = &findings[0];
    assert_eq!(pivot.events[1].place.as_deref(), Some("ours_other"));
    assert!(
        pivot.events[1]
            .place_detail
            .as_deref()
            .is_some_and(|d| d.contains(&m.allocation) || d.contains(&m.with_eip)),
        "{pivot:#?}"
    );
    let (without, _) = judge(false);
    for origin in [
        m.with_eip_v6.to_string(),
        m.nat_public.to_string(),
        late_ip.clone(),
        m.eip.to_string(),
    ] {
        assert!(
            without
                .iter()
                .any(|(r, o)| r == "session_token_reuse" && *o == origin),
            "without the inventory {origin} is a second origin: {without:?}"
        );
    }
    assert!(
        without.iter().any(|(r, _)| r == "foreign_vpc_endpoint"),
        "without the inventory the network account's endpoint is foreign: {without:?}"
    );
}
