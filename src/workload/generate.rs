//! `credwatch generate`: a seeded synthetic CloudTrail workload with its ground truth.
//!
//! Written under `--out DIR`:
//! - `AWSLogs/<acct>/CloudTrail/<region>/YYYY/MM/DD/<acct>_CloudTrail_<region>_<YYYYMMDDTHHMMZ>_<rand>.json.gz`:
//!   CloudTrail S3 log objects (`{"Records":[...]}`, gzip'd), one per account and 5-minute window,
//!   events in time order within a file;
//! - `truth.json`: the ground truth ([`super::truth`]);
//! - `credwatch.toml`: the configuration under which every benign kind is benign: the
//!   organisation's accounts (a shared network account owns VPC endpoints the workload accounts
//!   use) and an `[[allow]]` entry per account for its VPC's IPv6 range (dual-stack instances call
//!   from both their IPv4 and their IPv6 address; nothing in CloudTrail credits an address an
//!   instance was launched with, so without the entry each dual-stack instance is a finding).
//!
//! With the default configuration (no `credwatch.toml`), two benign kinds are known false
//! positives: `ipv6_dual_stack` (see above) and `vpc_endpoint` for the instances that call through
//! the network account's shared endpoints (without `[organization]` only the session's own
//! account owns acceptable endpoints).
//!
//! The same seed and options give the same bytes (the generator uses its own PRNG, [`Rng`], and
//! gzip headers carry no time). `--events` is the exact number of events written; every entity
//! scales with it.
//!
//! What is generated (N = `--events`):
//! - EC2 instances (about N/120), each with an instance-profile role session whose key rotates
//!   hourly: plain instances with their own public address (`rotation`), instances behind a NAT
//!   gateway shared by many (`nat_shared`), dual-stack instances (`ipv6_dual_stack`), instances
//!   given an Elastic IP (AllocateAddress + AssociateAddress by an administrator, then calls from
//!   it: `eip_association`), instances stopped and started (StopInstances, StartInstances, then a
//!   new public address and key: `stop_start`), instances calling partly through the
//!   organisation's VPC endpoints, their own account's or the network account's
//!   (`vpc_endpoint`);
//! - Lambda functions (execution environments with their own keys, runtime user agent, calls from
//!   ever-changing AWS addresses: `lambda`), ECS tasks (`ecs`), console users (`console`),
//!   deployment sessions whose calls are mostly made by CloudFormation (`invokedBy`,
//!   `*.amazonaws.com`: `aws_service`), and sessions with `AWS Internal` calls (`aws_internal`);
//! - attacks (about N/5000 of each kind, at least one): an instance's current key used from
//!   outside AWS (`outside_aws`), from an address of another account's instance
//!   (`other_account`), through a VPC endpoint of a foreign account (`foreign_vpc_endpoint`), from
//!   another instance of the same account (`other_instance`), and a Lambda environment's key used
//!   outside the runtime (`lambda_outside`); one to three calls each, the first of which is the
//!   truth's `event_id`.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::truth::{Attack, AttackKind, Benign, BenignKind, Truth};
use super::{Rng, EXIT_ERROR, EXIT_OK};
use crate::event::format_time;

/// The organisation: two workload accounts and a network account that owns shared VPC endpoints.
pub const ORGANIZATION: [&str; 3] = ["314159265358", "271828182845", "161803398874"];
const WORKLOAD_ACCOUNTS: usize = 2;
const NETWORK_ACCOUNT: usize = 2;
/// Default start of the workload's time span.
pub const DEFAULT_START: &str = "2024-08-01T00:00:00Z";
/// CloudTrail delivers a file per account about every five minutes.
const FILE_SECS: i64 = 300;

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Folder to write the workload into (created if missing).
    #[arg(long, env = "CREDWATCH_GENERATE_OUT")]
    pub out: PathBuf,
    /// Seed: the same seed and options give the same bytes.
    #[arg(long, env = "CREDWATCH_GENERATE_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Exact number of events to write (entities scale with it).
    #[arg(long, env = "CREDWATCH_GENERATE_EVENTS", default_value_t = 10_000)]
    pub events: usize,
    /// Start of the workload's time span (RFC 3339).
    #[arg(long, env = "CREDWATCH_GENERATE_START", default_value = DEFAULT_START)]
    pub start: String,
    /// Length of the time span in hours.
    #[arg(long, env = "CREDWATCH_GENERATE_HOURS", default_value_t = 4)]
    pub hours: u32,
    /// AWS region of the events.
    #[arg(long, env = "CREDWATCH_GENERATE_REGION", default_value = "us-east-1")]
    pub region: String,
    /// Replace an existing workload (`DIR/AWSLogs`) in the folder.
    #[arg(long)]
    pub force: bool,
    /// Take the organisation's networks from an inventory (`credwatch inventory --format
    /// json`): each workload account's VPC IPv6 block and VPC endpoint, and the network
    /// account's shared endpoint, are the inventory's (the same seed otherwise gives the
    /// same workload). For testing the inventory against a generated workload.
    #[arg(long, env = "CREDWATCH_GENERATE_NETWORK_FROM")]
    pub network_from: Option<PathBuf>,
}

/// The organisation's networks, when they come from an inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// Per workload account: the VPC's IPv6 block (at most /56).
    pub ipv6_nets: Vec<String>,
    /// Per workload account: a VPC endpoint of its own.
    pub own_vpce: Vec<String>,
    /// The network account's shared endpoint.
    pub shared_vpce: String,
}

impl Network {
    /// Reads the networks of [`ORGANIZATION`]'s accounts from an inventory file.
    pub fn from_inventory(path: &Path) -> Result<Network, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let inv: crate::inventory::InventorySnapshot =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        fn parts<'i>(
            inv: &'i crate::inventory::InventorySnapshot,
            acct: &'i str,
        ) -> impl Iterator<Item = &'i crate::inventory::AccountRegion> {
            inv.parts.iter().filter(move |p| p.account == acct)
        }
        let endpoint = |acct: &str| {
            parts(&inv, acct)
                .flat_map(|p| p.endpoints.iter())
                .map(|e| e.id.clone())
                .next()
                .ok_or_else(|| format!("{}: no VPC endpoint in account {acct}", path.display()))
        };
        let mut ipv6_nets = Vec::new();
        let mut own_vpce = Vec::new();
        for acct in &ORGANIZATION[..WORKLOAD_ACCOUNTS] {
            let net = parts(&inv, acct)
                .flat_map(|p| p.vpcs.iter())
                .flat_map(|v| v.ipv6_cidrs.iter())
                .find(|n| n.prefix_len() <= 56 && n.addr().is_ipv6())
                .ok_or_else(|| {
                    format!(
                        "{}: no VPC with an IPv6 block of /56 or wider in account {acct}",
                        path.display()
                    )
                })?;
            ipv6_nets.push(net.trunc().to_string());
            own_vpce.push(endpoint(acct)?);
        }
        Ok(Network {
            ipv6_nets,
            own_vpce,
            shared_vpce: endpoint(ORGANIZATION[NETWORK_ACCOUNT])?,
        })
    }
}

/// Options of [`generate`].
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub out: PathBuf,
    pub seed: u64,
    pub events: usize,
    /// Seconds since the epoch.
    pub start: i64,
    pub hours: u32,
    pub region: String,
    pub force: bool,
    /// The organisation's networks from an inventory, instead of generated ones.
    pub network: Option<Network>,
}

impl GenerateOptions {
    /// Options for a seed and event count, with the default start, span and region.
    pub fn new(out: impl Into<PathBuf>, seed: u64, events: usize) -> GenerateOptions {
        GenerateOptions {
            out: out.into(),
            seed,
            events,
            start: crate::event::parse_time(DEFAULT_START).unwrap_or(0),
            hours: 4,
            region: "us-east-1".into(),
            force: false,
            network: None,
        }
    }
}

/// What [`generate`] wrote.
#[derive(Debug, Clone)]
pub struct GenerateReport {
    pub files: usize,
    pub events: usize,
    pub truth: Truth,
    pub truth_path: PathBuf,
    pub config_path: PathBuf,
}

/// `credwatch generate`.
pub fn cli(args: GenerateArgs) -> i32 {
    let Some(start) = crate::event::parse_time(&args.start) else {
        eprintln!("credwatch: --start {:?} is not RFC 3339", args.start);
        return EXIT_ERROR;
    };
    let network = match args.network_from.as_deref().map(Network::from_inventory) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(e)) => {
            eprintln!("credwatch: --network-from {e}");
            return EXIT_ERROR;
        }
    };
    let opts = GenerateOptions {
        out: args.out,
        seed: args.seed,
        events: args.events,
        start,
        hours: args.hours,
        region: args.region,
        force: args.force,
        network,
    };
    match generate(&opts) {
        Ok(r) => {
            let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
            for a in &r.truth.attacks {
                *kinds.entry(a.kind.as_str()).or_default() += 1;
            }
            let attacks: Vec<String> = kinds.iter().map(|(k, v)| format!("{k}={v}")).collect();
            eprintln!(
                "generated {} events in {} files under {} (seed {})\nattacks: {} ({})\nbenign sessions: {}\ntruth: {}\nconfig: {}",
                r.events,
                r.files,
                opts.out.display(),
                opts.seed,
                r.truth.attacks.len(),
                attacks.join(" "),
                r.truth.benign.len(),
                r.truth_path.display(),
                r.config_path.display()
            );
            EXIT_OK
        }
        Err(e) => {
            eprintln!("credwatch: generate: {e}");
            EXIT_ERROR
        }
    }
}

/// Generates the workload into `opts.out`.
pub fn generate(opts: &GenerateOptions) -> Result<GenerateReport, String> {
    if opts.hours == 0 {
        return Err("--hours must be at least 1".into());
    }
    let logs_dir = opts.out.join("AWSLogs");
    if logs_dir.exists() {
        if !opts.force {
            return Err(format!(
                "{} already holds a workload; use --force to replace it",
                opts.out.display()
            ));
        }
        std::fs::remove_dir_all(&logs_dir).map_err(|e| format!("{}: {e}", logs_dir.display()))?;
    }
    let mut g = Gen::new(opts);
    let world = g.world();
    g.structural(&world);
    let structural = g.out.len();
    if structural > opts.events {
        return Err(format!(
            "--events {} is below the {structural} events the scenario needs; ask for more",
            opts.events
        ));
    }
    while g.out.len() < opts.events {
        g.background(&world);
    }
    let mut truth = g.truth(&world);
    truth.seed = opts.seed;
    let files = g.write_files(&opts.out)?;
    let config_path = opts.out.join("credwatch.toml");
    write(&config_path, config_toml(&world, opts.seed).as_bytes())?;
    let truth_path = opts.out.join("truth.json");
    let text = serde_json::to_string_pretty(&truth).map_err(|e| e.to_string())? + "\n";
    write(&truth_path, text.as_bytes())?;
    Ok(GenerateReport {
        files,
        events: g.out.len(),
        truth,
        truth_path,
        config_path,
    })
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn config_toml(w: &World, seed: u64) -> String {
    let mut s = format!(
        "# Written by `credwatch generate --seed {seed}`: the configuration under which every\n\
         # benign kind of the generated workload is benign (see truth.json).\n\n\
         # The organisation: two workload accounts and the network account whose shared VPC\n\
         # endpoints the workload accounts call through.\n\
         [organization]\naccount_ids = [{}]\n",
        ORGANIZATION
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (acct, net) in w.ipv6_nets.iter().enumerate() {
        s.push_str(&format!(
            "\n# Dual-stack instances call from their IPv4 and their IPv6 address: the VPC's IPv6 range.\n\
             [[allow]]\ncidr = \"{net}\"\naccount = \"{}\"\nreason = \"organisation VPC IPv6 range (dual-stack instances)\"\n",
            ORGANIZATION[acct]
        ));
    }
    s
}

// ---- the world: who exists, where they call from ------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    Nat,
    DualStack,
    Eip,
    StopStart,
    Vpce,
}

#[derive(Debug, Clone)]
struct Instance {
    acct: usize,
    id: String,
    role: &'static str,
    role_id: String,
    ua: &'static str,
    mode: Mode,
    /// IPv4 egress: the instance's own public address or its NAT gateway's.
    ip: String,
    private_ip: String,
    ipv6: Option<String>,
    /// Elastic IP: (address, allocation id, AssociateAddress time).
    eip: Option<(String, String, i64)>,
    /// Stop time, start time, public address after the start.
    restart: Option<(i64, i64, String)>,
    /// VPC endpoint the instance calls through: (id, owner account index).
    vpce: Option<(String, usize)>,
    /// Keys by creation time.
    keys: Vec<(i64, String)>,
    label: Option<BenignKind>,
}

impl Instance {
    fn session(&self) -> String {
        format!("{}/{}", self.role, self.id)
    }

    fn key_at(&self, t: i64) -> &(i64, String) {
        self.keys
            .iter()
            .rev()
            .find(|(c, _)| *c <= t)
            .unwrap_or(&self.keys[0])
    }

    /// When the instance makes calls: (from, to) spans.
    fn active(&self, start: i64, end: i64) -> Vec<(i64, i64)> {
        if let Some((_, _, at)) = &self.eip {
            return vec![(start, *at), (at + 120, end)];
        }
        if let Some((stop, begin, _)) = &self.restart {
            return vec![(start, *stop), (begin + 90, end)];
        }
        vec![(start, end)]
    }

    /// IPv4 egress at time `t`.
    fn ipv4_at(&self, t: i64) -> &str {
        if let Some((ip, _, at)) = &self.eip {
            if t >= *at {
                return ip;
            }
        }
        if let Some((_, begin, ip)) = &self.restart {
            if t >= *begin {
                return ip;
            }
        }
        &self.ip
    }
}

#[derive(Debug, Clone)]
struct LambdaEnv {
    key: String,
    created: i64,
    first: i64,
    until: i64,
    victim: bool,
}

#[derive(Debug, Clone)]
struct LambdaFn {
    acct: usize,
    name: String,
    role: String,
    role_id: String,
    ua: &'static str,
    envs: Vec<LambdaEnv>,
}

/// A role session other than an instance's or a Lambda's: ECS tasks, console users, deployment
/// sessions relayed by CloudFormation, sessions with `AWS Internal` calls.
#[derive(Debug, Clone)]
struct RoleSession {
    kind: BenignKind,
    acct: usize,
    role: String,
    role_id: String,
    name: String,
    key: String,
    ip: String,
    ua: &'static str,
    created: i64,
    first: i64,
    until: i64,
}

#[derive(Debug, Clone)]
enum Target {
    Instance(usize),
    /// (function, environment)
    Lambda(usize, usize),
}

#[derive(Debug, Clone)]
struct PlannedAttack {
    kind: AttackKind,
    target: Target,
    time: i64,
    origin: Origin,
    calls: u32,
}

#[derive(Debug, Clone)]
enum Origin {
    Ip(String),
    Vpce {
        id: String,
        account: String,
        ip: String,
    },
    /// An AWS service acting for the session (`invokedBy`).
    Service(&'static str),
    Internal,
}

impl Origin {
    /// As findings show it.
    fn display(&self) -> String {
        match self {
            Origin::Ip(ip) => ip.clone(),
            Origin::Vpce { id, account, ip } => format!("{id}@{account} ({ip})"),
            Origin::Service(s) => (*s).to_string(),
            Origin::Internal => "AWS Internal".into(),
        }
    }
}

struct World {
    instances: Vec<Instance>,
    lambdas: Vec<LambdaFn>,
    sessions: Vec<RoleSession>,
    attacks: Vec<PlannedAttack>,
    /// Per workload account: the administrator's access key and office address.
    admins: Vec<(String, String)>,
    /// Per workload account: the VPC's IPv6 /56.
    ipv6_nets: Vec<String>,
}

// ---- the generator ------------------------------------------------------------------------

struct Out {
    t: i64,
    acct: usize,
    seq: u64,
    json: String,
}

struct Gen {
    rng: Rng,
    region: String,
    events: usize,
    start: i64,
    end: i64,
    out: Vec<Out>,
    used_ips: HashSet<String>,
    /// First event id of each planned attack, by index.
    attack_ids: Vec<Option<String>>,
    network: Option<Network>,
}

const INSTANCE_ROLES: [&str; 5] = [
    "app-role",
    "web-role",
    "worker-role",
    "batch-role",
    "api-role",
];
const INSTANCE_UAS: [&str; 4] = [
    "aws-sdk-go/1.44.327 (go1.20.7; linux; amd64)",
    "Boto3/1.34.11 md/Botocore#1.34.11 ua/2.0 os/linux#5.10.205-195.804.amzn2.x86_64 md/arch#x86_64 lang/python#3.11.6 md/pyimpl#CPython cfg/retry-mode#legacy Botocore/1.34.11",
    "aws-sdk-java/2.25.10 Linux/5.10.219-208.866.amzn2.x86_64 OpenJDK_64-Bit_Server_VM/17.0.11+9-LTS Java/17.0.11 vendor/Amazon.com_Inc. io/sync http/Apache cfg/retry-mode/legacy",
    "aws-cli/2.15.10 Python/3.11.6 Linux/5.10.205-195.804.amzn2.x86_64 exe/x86_64.amzn.2 prompt/off",
];
const LAMBDA_UAS: [&str; 2] = [
    "Boto3/1.34.42 md/Botocore#1.34.42 ua/2.0 os/linux#5.10.214-223.800.amzn2.x86_64 md/arch#x86_64 lang/python#3.12.2 md/pyimpl#CPython exec-env/AWS_Lambda_python3.12 cfg/retry-mode#legacy Botocore/1.34.42",
    "aws-sdk-js/3.511.0 ua/2.0 os/linux#5.10.214-223.800.amzn2.x86_64 lang/js md/nodejs#20.11.0 api/dynamodb#3.511.0 exec-env/AWS_Lambda_nodejs20.x",
];
const ECS_UA: &str = "aws-sdk-java/2.25.10 Linux/5.10.219-208.866.amzn2.x86_64 OpenJDK_64-Bit_Server_VM/17.0.11+9-LTS Java/17.0.11 vendor/Amazon.com_Inc. exec-env/AWS_ECS_FARGATE io/sync http/Apache cfg/retry-mode/legacy";
const BROWSER_UA: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/123.0.0.0 Safari/537.36";
const CONSOLE_RELAY_UA: &str = "aws-internal/3 aws-sdk-java/1.12.720 Linux/5.10.216-182.855.amzn2int.x86_64 OpenJDK_64-Bit_Server_VM/25.412-b09 java/1.8.0_412 vendor/Oracle_Corporation cfg/retry-mode/standard";
const CI_UA: &str = "aws-cli/2.15.30 Python/3.11.8 Linux/6.5.0-1017-azure exe/x86_64.ubuntu.22 prompt/off command/cloudformation.deploy";
const OPS_UA: &str =
    "aws-cli/2.15.10 Python/3.11.6 Darwin/23.4.0 exe/x86_64 prompt/off command/athena.start-query-execution";
const ADMIN_UA: &str =
    "aws-cli/2.15.10 Python/3.11.6 Darwin/23.4.0 exe/x86_64 prompt/off command/ec2";
const ATTACKER_UAS: [&str; 3] = [
    "aws-cli/2.15.10 Python/3.11.6 Linux/6.5.0-14-generic exe/x86_64.ubuntu.22 prompt/off command/sts.get-caller-identity",
    "Boto3/1.34.2 md/Botocore#1.34.2 ua/2.0 os/linux#6.5.0-14-generic md/arch#x86_64 lang/python#3.11.6 md/pyimpl#CPython cfg/retry-mode#legacy Botocore/1.34.2",
    "aws-sdk-go-v2/1.24.0 os/linux lang/go#1.21.5 md/GOOS#linux md/GOARCH#amd64 api/sts#1.26.6",
];

/// /16 prefixes per address pool; pools never overlap.
const EC2_PUBLIC: [[u8; 2]; 6] = [[54, 160], [54, 161], [3, 80], [3, 81], [18, 204], [44, 192]];
const NAT_PUBLIC: [[u8; 2]; 2] = [[52, 200], [52, 201]];
const EIP_POOL: [[u8; 2]; 2] = [[34, 192], [34, 193]];
const LAMBDA_POOL: [[u8; 2]; 3] = [[3, 88], [3, 89], [52, 70]];
const AWS_RELAY: [[u8; 2]; 1] = [[52, 94]];
const CI_POOL: [[u8; 2]; 2] = [[20, 42], [4, 175]];
const OFFICE_POOL: [[u8; 2]; 1] = [[198, 51]];
const OUTSIDE_POOL: [[u8; 2]; 6] = [
    [81, 2],
    [90, 64],
    [176, 31],
    [185, 220],
    [45, 155],
    [91, 240],
];
const FOREIGN_EC2: [[u8; 2]; 2] = [[3, 90], [54, 210]];

/// Read-only management calls a workload makes.
const CALLS: [(&str, &str); 7] = [
    ("ec2.amazonaws.com", "DescribeInstances"),
    ("ec2.amazonaws.com", "DescribeTags"),
    ("ssm.amazonaws.com", "GetParameter"),
    ("kms.amazonaws.com", "Decrypt"),
    ("secretsmanager.amazonaws.com", "GetSecretValue"),
    ("s3.amazonaws.com", "ListBuckets"),
    ("logs.amazonaws.com", "DescribeLogGroups"),
];

const B32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

impl Gen {
    fn new(opts: &GenerateOptions) -> Gen {
        Gen {
            rng: Rng::new(opts.seed),
            region: opts.region.clone(),
            events: opts.events,
            start: opts.start,
            end: opts.start + i64::from(opts.hours) * 3600,
            out: Vec::new(),
            used_ips: HashSet::new(),
            attack_ids: Vec::new(),
            network: opts.network.clone(),
        }
    }

    fn span(&self) -> i64 {
        self.end - self.start
    }

    /// A time at `lo..hi` fractions of the span.
    fn frac_time(&mut self, lo: f64, hi: f64) -> i64 {
        let span = self.span() as f64;
        let a = self.start + (span * lo) as i64;
        let b = self.start + (span * hi) as i64;
        self.rng.range(a, b.max(a + 1))
    }

    /// A fresh address from `pool`, never handed out before.
    fn ip(&mut self, pool: &[[u8; 2]]) -> String {
        loop {
            let p = *self.rng.pick(pool);
            let ip = format!(
                "{}.{}.{}.{}",
                p[0],
                p[1],
                self.rng.below(256),
                1 + self.rng.below(254)
            );
            if self.used_ips.insert(ip.clone()) {
                return ip;
            }
        }
    }

    /// Any address from `pool` (addresses AWS hands out to many callers, e.g. Lambda's).
    fn any_ip(&mut self, pool: &[[u8; 2]]) -> String {
        let p = *self.rng.pick(pool);
        format!(
            "{}.{}.{}.{}",
            p[0],
            p[1],
            self.rng.below(256),
            1 + self.rng.below(254)
        )
    }

    fn asia(&mut self) -> String {
        format!("ASIA{}", self.rng.chars(B32, 16))
    }

    fn aroa(&mut self) -> String {
        format!("AROA{}", self.rng.chars(B32, 17))
    }

    fn foreign_account(&mut self) -> String {
        loop {
            let a = format!("{:012}", 100_000_000_000 + self.rng.below(899_999_999_999));
            if !ORGANIZATION.contains(&a.as_str()) {
                return a;
            }
        }
    }

    // ---- the world --------------------------------------------------------------------------

    fn world(&mut self) -> World {
        let n = self.events;
        let n_att = (n / 5000).clamp(1, 100);
        let (start, end) = (self.start, self.end);

        let admins: Vec<(String, String)> = (0..WORKLOAD_ACCOUNTS)
            .map(|_| {
                let key = format!("AKIA{}", self.rng.chars(B32, 16));
                (key, self.ip(&OFFICE_POOL))
            })
            .collect();
        let mut ipv6_nets: Vec<String> = (0..WORKLOAD_ACCOUNTS)
            .map(|_| {
                // Within 2600:1f18::/33, EC2 us-east-1 in AWS's published ranges.
                let a = self.rng.below(0x8000) as u16;
                let b = (self.rng.below(0x100) as u16) << 8;
                format!("{}/56", Ipv6Addr::new(0x2600, 0x1f18, a, b, 0, 0, 0, 0))
            })
            .collect();
        // Shared VPC endpoints in the network account, and one per workload account.
        let mut shared_vpce = format!("vpce-0{}", self.rng.hex(16));
        let mut own_vpce: Vec<String> = (0..WORKLOAD_ACCOUNTS)
            .map(|_| format!("vpce-0{}", self.rng.hex(16)))
            .collect();
        // The same draws either way, so the rest of the workload is the seed's.
        if let Some(n) = &self.network {
            ipv6_nets = n.ipv6_nets.clone();
            own_vpce = n.own_vpce.clone();
            shared_vpce = n.shared_vpce.clone();
        }

        // Instance modes: attack victims and hosts first, one of each special mode, then a mix.
        let n_inst = (n / 120).max(24);
        let mut modes: Vec<(Mode, bool)> = Vec::new(); // (mode, shared endpoint)
                                                       // Attack victims and the hosts of other_instance attacks, in groups of five.
        for i in 0..5 * n_att {
            let nat = (i % 5) % 2 == 1;
            modes.push((if nat { Mode::Nat } else { Mode::Plain }, false));
        }
        for m in [
            (Mode::DualStack, false),
            (Mode::Eip, false),
            (Mode::StopStart, false),
            (Mode::Vpce, false),
            (Mode::Vpce, true),
            (Mode::Nat, false),
        ] {
            modes.push(m);
        }
        while modes.len() < n_inst {
            let r = self.rng.unit();
            let m = match r {
                r if r < 0.40 => Mode::Plain,
                r if r < 0.70 => Mode::Nat,
                r if r < 0.80 => Mode::DualStack,
                r if r < 0.87 => Mode::Eip,
                r if r < 0.93 => Mode::StopStart,
                _ => Mode::Vpce,
            };
            let shared = self.rng.chance(0.5);
            modes.push((m, shared));
        }
        let nat_count = modes.iter().filter(|m| m.0 == Mode::Nat).count();
        let nats_per_account = (nat_count / 25).max(1);
        let nat_ips: Vec<Vec<String>> = (0..WORKLOAD_ACCOUNTS)
            .map(|_| {
                (0..nats_per_account)
                    .map(|_| self.ip(&NAT_PUBLIC))
                    .collect()
            })
            .collect();

        let mut instances = Vec::with_capacity(modes.len());
        for (i, (mode, shared)) in modes.iter().copied().enumerate() {
            // Reserved victims and hosts live in the first workload account.
            let acct = if i < 5 * n_att {
                0
            } else {
                self.rng.below(WORKLOAD_ACCOUNTS as u64) as usize
            };
            let id = format!("i-0{}", self.rng.hex(16));
            let role = *self.rng.pick(&INSTANCE_ROLES);
            let role_id = self.aroa();
            let ua = *self.rng.pick(&INSTANCE_UAS);
            let ip = if mode == Mode::Nat {
                let pool = &nat_ips[acct];
                pool[self.rng.below(pool.len() as u64) as usize].clone()
            } else {
                self.ip(&EC2_PUBLIC)
            };
            let private_ip = format!(
                "10.{}.{}.{}",
                acct,
                self.rng.below(256),
                1 + self.rng.below(254)
            );
            let ipv6 = (mode == Mode::DualStack).then(|| {
                let net: ipnet::Ipv6Net = ipv6_nets[acct].parse().expect("generated /56");
                let s = net.network().segments();
                let addr = Ipv6Addr::new(
                    s[0],
                    s[1],
                    s[2],
                    s[3] | self.rng.below(256) as u16,
                    self.rng.below(0x10000) as u16,
                    self.rng.below(0x10000) as u16,
                    self.rng.below(0x10000) as u16,
                    1 + self.rng.below(0xfffe) as u16,
                );
                addr.to_string()
            });
            let eip = (mode == Mode::Eip).then(|| {
                let ip = self.ip(&EIP_POOL);
                let alloc = format!("eipalloc-0{}", self.rng.hex(16));
                (ip, alloc, self.frac_time(0.2, 0.7))
            });
            let restart = (mode == Mode::StopStart).then(|| {
                let stop = self.frac_time(0.2, 0.6);
                // Started again early enough for calls from the new address before the end.
                let begin = (stop + self.rng.range(120, 1800))
                    .min(end - 900)
                    .max(stop + 60);
                (stop, begin, self.ip(&EC2_PUBLIC))
            });
            let vpce = (mode == Mode::Vpce).then(|| {
                if shared {
                    (shared_vpce.clone(), NETWORK_ACCOUNT)
                } else {
                    (own_vpce[acct].clone(), acct)
                }
            });
            let mut keys = Vec::new();
            let mut c = start - self.rng.range(60, 3600);
            let stop_at = restart.as_ref().map(|r| (r.0, r.1));
            while c < end {
                if let Some((stop, _)) = stop_at {
                    if c >= stop {
                        break;
                    }
                }
                keys.push((c, self.asia()));
                c += 3600;
            }
            if let Some((_, begin)) = stop_at {
                let mut c = begin + 60;
                while c < end {
                    keys.push((c, self.asia()));
                    c += 3600;
                }
            }
            let label = Some(match mode {
                Mode::Plain => BenignKind::Rotation,
                Mode::Nat => BenignKind::NatShared,
                Mode::DualStack => BenignKind::Ipv6DualStack,
                Mode::Eip => BenignKind::EipAssociation,
                Mode::StopStart => BenignKind::StopStart,
                Mode::Vpce => BenignKind::VpcEndpoint,
            });
            instances.push(Instance {
                acct,
                id,
                role,
                role_id,
                ua,
                mode,
                ip,
                private_ip,
                ipv6,
                eip,
                restart,
                vpce,
                keys,
                label,
            });
        }

        // Lambda functions and their execution environments.
        let n_fn = (n / 2000).max(2) + n_att;
        let mut lambdas = Vec::with_capacity(n_fn);
        for f in 0..n_fn {
            let acct = self.rng.below(WORKLOAD_ACCOUNTS as u64) as usize;
            let name = format!(
                "fn-{}-{f}",
                self.rng.chars(b"abcdefghijklmnopqrstuvwxyz", 6)
            );
            let role = format!("{name}-role-{}", self.rng.chars(ALNUM, 8).to_lowercase());
            let role_id = self.aroa();
            let ua = *self.rng.pick(&LAMBDA_UAS);
            let n_env = 1 + self.rng.below(3) as usize;
            let mut envs = Vec::with_capacity(n_env);
            for _ in 0..n_env {
                let created = self.rng.range(start - 1800, end - 1800);
                let until = end.min(created + self.rng.range(3600, 4 * 3600));
                let first = created.max(start) + self.rng.range(0, 60);
                envs.push(LambdaEnv {
                    key: self.asia(),
                    created,
                    first,
                    until,
                    victim: false,
                });
            }
            lambdas.push(LambdaFn {
                acct,
                name,
                role,
                role_id,
                ua,
                envs,
            });
        }

        // ECS tasks, console users, CloudFormation deployments, AWS Internal sessions.
        let mut sessions = Vec::new();
        let counts = [
            (BenignKind::Ecs, (n / 2000).max(2)),
            (BenignKind::Console, (n / 5000).max(1)),
            (BenignKind::AwsService, (n / 5000).max(1)),
            (BenignKind::AwsInternal, (n / 5000).max(1)),
        ];
        for (kind, count) in counts {
            for k in 0..count {
                let acct = self.rng.below(WORKLOAD_ACCOUNTS as u64) as usize;
                let role_id = self.aroa();
                let key = self.asia();
                let (role, name, ip, ua, created, until) = match kind {
                    BenignKind::Ecs => {
                        let c = self.rng.range(start - 3600, end - 1200);
                        let u = end.min(c + self.rng.range(1800, 3 * 3600));
                        (
                            format!("ecs-task-role-svc{k}"),
                            self.rng.hex(32),
                            self.ip(&EC2_PUBLIC),
                            ECS_UA,
                            c,
                            u,
                        )
                    }
                    BenignKind::Console => {
                        let c = self.rng.range(start - 3600, end - 1800);
                        let u = end.min(c + self.rng.range(3600, 8 * 3600));
                        (
                            format!("AWSReservedSSO_AdministratorAccess_{}", self.rng.hex(16)),
                            format!("user{k}@example.com"),
                            self.ip(&OFFICE_POOL),
                            BROWSER_UA,
                            c,
                            u,
                        )
                    }
                    BenignKind::AwsService => {
                        let c = self.rng.range(start - 600, end - 3600);
                        (
                            "deploy-role".to_string(),
                            format!("GitHubActions-{}", 1_000_000 + self.rng.below(9_000_000)),
                            self.ip(&CI_POOL),
                            CI_UA,
                            c,
                            end.min(c + 3600),
                        )
                    }
                    _ => {
                        let c = self.rng.range(start - 1800, end - 1800);
                        let u = end.min(c + self.rng.range(1800, 4 * 3600));
                        (
                            "ops-role".to_string(),
                            format!("ops{k}"),
                            self.ip(&OFFICE_POOL),
                            OPS_UA,
                            c,
                            u,
                        )
                    }
                };
                let first = created.max(start) + self.rng.range(0, 60);
                sessions.push(RoleSession {
                    kind,
                    acct,
                    role,
                    role_id,
                    name,
                    key,
                    ip,
                    ua,
                    created,
                    first,
                    until,
                });
            }
        }

        // Attacks: victims are the reserved instances (plain or NAT, first account) and the last
        // n_att Lambda functions; other_instance attacks come from reserved plain hosts.
        // Reserved slots come in groups of five: plain, NAT, plain, NAT, plain.
        let mut attacks = Vec::new();
        let mut reserved_plan: Vec<(AttackKind, usize, Option<usize>)> = Vec::new();
        for g in 0..n_att {
            let base = 5 * g;
            reserved_plan.push((AttackKind::OutsideAws, base, None));
            reserved_plan.push((AttackKind::OtherAccount, base + 1, None));
            reserved_plan.push((AttackKind::ForeignVpcEndpoint, base + 2, None));
            reserved_plan.push((AttackKind::OtherInstance, base + 3, Some(base + 4)));
        }
        for (kind, victim, host) in reserved_plan {
            instances[victim].label = None;
            let time = self.frac_time(0.3, 0.85);
            let origin = match kind {
                AttackKind::OutsideAws => Origin::Ip(self.ip(&OUTSIDE_POOL)),
                AttackKind::OtherAccount => Origin::Ip(self.ip(&FOREIGN_EC2)),
                AttackKind::ForeignVpcEndpoint => Origin::Vpce {
                    id: format!("vpce-0{}", self.rng.hex(16)),
                    account: self.foreign_account(),
                    ip: format!("172.31.{}.{}", self.rng.below(256), 1 + self.rng.below(254)),
                },
                _ => Origin::Ip(
                    instances[host.expect("other_instance has a host")]
                        .ip
                        .clone(),
                ),
            };
            let calls = 1 + self.rng.below(3) as u32;
            attacks.push(PlannedAttack {
                kind,
                target: Target::Instance(victim),
                time,
                origin,
                calls,
            });
        }
        for (f, lf) in lambdas.iter_mut().enumerate().skip(n_fn - n_att) {
            let (e, env) = lf
                .envs
                .iter_mut()
                .enumerate()
                .max_by_key(|(_, e)| e.until - e.first)
                .expect("a function has an environment");
            env.victim = true;
            let room = env.until - env.first;
            let lo = env.first + (room / 10).max(30);
            let hi = (env.first + room * 7 / 10).max(lo + 1);
            let time = self.rng.range(lo, hi);
            let origin = Origin::Ip(self.ip(&OUTSIDE_POOL));
            let calls = 1 + self.rng.below(3) as u32;
            attacks.push(PlannedAttack {
                kind: AttackKind::LambdaOutside,
                target: Target::Lambda(f, e),
                time,
                origin,
                calls,
            });
        }
        attacks.sort_by_key(|a| (a.time, a.kind));
        self.attack_ids = vec![None; attacks.len()];
        World {
            instances,
            lambdas,
            sessions,
            attacks,
            admins,
            ipv6_nets,
        }
    }

    // ---- events -----------------------------------------------------------------------------

    fn instance_identity(&self, inst: &Instance, key: &str, created: i64) -> Value {
        let acct = ORGANIZATION[inst.acct];
        json!({
            "type": "AssumedRole",
            "principalId": format!("{}:{}", inst.role_id, inst.id),
            "arn": format!("arn:aws:sts::{acct}:assumed-role/{}/{}", inst.role, inst.id),
            "accountId": acct,
            "accessKeyId": key,
            "sessionContext": {
                "sessionIssuer": {
                    "type": "Role",
                    "principalId": inst.role_id,
                    "arn": format!("arn:aws:iam::{acct}:role/{}", inst.role),
                    "accountId": acct,
                    "userName": inst.role
                },
                "attributes": {"creationDate": format_time(created), "mfaAuthenticated": "false"},
                "ec2RoleDelivery": "2.0"
            }
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn role_identity(
        &self,
        acct: usize,
        role: &str,
        role_id: &str,
        name: &str,
        key: &str,
        created: i64,
        invoked_by: Option<&str>,
    ) -> Value {
        let a = ORGANIZATION[acct];
        let mut v = json!({
            "type": "AssumedRole",
            "principalId": format!("{role_id}:{name}"),
            "arn": format!("arn:aws:sts::{a}:assumed-role/{role}/{name}"),
            "accountId": a,
            "accessKeyId": key,
            "sessionContext": {
                "sessionIssuer": {
                    "type": "Role",
                    "principalId": role_id,
                    "arn": format!("arn:aws:iam::{a}:role/{role}"),
                    "accountId": a,
                    "userName": role
                },
                "attributes": {"creationDate": format_time(created), "mfaAuthenticated": "false"}
            }
        });
        if let Some(s) = invoked_by {
            v["invokedBy"] = json!(s);
        }
        v
    }

    fn request_for(&mut self, name: &str, instance: Option<&str>) -> Value {
        match name {
            "DescribeInstances" => json!({"instancesSet": {}, "filterSet": {}}),
            "DescribeTags" => {
                json!({"filterSet": {"items": [{"name": "resource-id", "valueSet": {"items": [{"value": instance.unwrap_or("i-0")}]}}]}})
            }
            "GetParameter" => {
                json!({"name": format!("/app/{}/config", self.rng.below(20)), "withDecryption": true})
            }
            "Decrypt" => json!({"encryptionAlgorithm": "SYMMETRIC_DEFAULT"}),
            "GetSecretValue" => json!({"secretId": format!("prod/app/db-{}", self.rng.below(10))}),
            "DescribeLogGroups" => json!({"limit": 50}),
            _ => Value::Null,
        }
    }

    /// Writes one event; returns its id.
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        t: i64,
        acct: usize,
        identity: Value,
        (source, name): (&str, &str),
        origin: &Origin,
        ua: &str,
        request: Value,
        response: Value,
        console: bool,
    ) -> String {
        let event_id = self.rng.uuid();
        let request_id = self.rng.uuid();
        let source_ip = match origin {
            Origin::Ip(ip) | Origin::Vpce { ip, .. } => ip.clone(),
            Origin::Service(s) => (*s).to_string(),
            Origin::Internal => "AWS Internal".into(),
        };
        let ua = match origin {
            Origin::Service(s) => s,
            Origin::Internal => "AWS Internal",
            _ => ua,
        };
        let read_only = name.starts_with("Describe")
            || name.starts_with("Get")
            || name.starts_with("List")
            || name == "Decrypt";
        let mut ev = json!({
            "eventVersion": "1.09",
            "userIdentity": identity,
            "eventTime": format_time(t),
            "eventSource": source,
            "eventName": name,
            "awsRegion": self.region,
            "sourceIPAddress": source_ip,
            "userAgent": ua,
            "requestParameters": request,
            "responseElements": response,
            "requestID": request_id,
            "eventID": event_id,
            "readOnly": read_only,
            "eventType": "AwsApiCall",
            "managementEvent": true,
            "recipientAccountId": ORGANIZATION[acct],
            "eventCategory": "Management",
        });
        if matches!(origin, Origin::Ip(_) | Origin::Vpce { .. }) {
            let host = format!(
                "{}.{}.amazonaws.com",
                source.trim_end_matches(".amazonaws.com"),
                self.region
            );
            ev["tlsDetails"] = json!({
                "tlsVersion": "TLSv1.3",
                "cipherSuite": "TLS_AES_128_GCM_SHA256",
                "clientProvidedHostHeader": host
            });
        }
        if let Origin::Vpce { id, account, .. } = origin {
            ev["vpcEndpointId"] = json!(id);
            ev["vpcEndpointAccountId"] = json!(account);
        }
        if console {
            ev["sessionCredentialFromConsole"] = json!("true");
        }
        let seq = self.out.len() as u64;
        self.out.push(Out {
            t,
            acct,
            seq,
            json: ev.to_string(),
        });
        event_id
    }

    fn instance_call(&mut self, inst: &Instance, t: i64, origin: &Origin, call: (&str, &str)) {
        let (created, key) = inst.key_at(t).clone();
        let identity = self.instance_identity(inst, &key, created);
        let req = self.request_for(call.1, Some(&inst.id));
        self.emit(
            t,
            inst.acct,
            identity,
            call,
            origin,
            inst.ua,
            req,
            Value::Null,
            false,
        );
    }

    /// The instance's origin for an ordinary call at `t`.
    fn instance_origin(&mut self, inst: &Instance, t: i64) -> Origin {
        match inst.mode {
            Mode::DualStack if self.rng.chance(0.5) => {
                Origin::Ip(inst.ipv6.clone().expect("dual-stack has IPv6"))
            }
            Mode::Vpce if self.rng.chance(0.5) => {
                let (id, owner) = inst.vpce.clone().expect("endpoint instance has one");
                Origin::Vpce {
                    id,
                    account: ORGANIZATION[owner].to_string(),
                    ip: inst.private_ip.clone(),
                }
            }
            _ => Origin::Ip(inst.ipv4_at(t).to_string()),
        }
    }

    fn random_call(&mut self) -> (&'static str, &'static str) {
        *self.rng.pick(&CALLS)
    }

    fn admin_call(
        &mut self,
        w: &World,
        acct: usize,
        t: i64,
        name: &str,
        request: Value,
        response: Value,
    ) {
        let (key, ip) = &w.admins[acct];
        let a = ORGANIZATION[acct];
        let identity = json!({
            "type": "IAMUser",
            "principalId": format!("AIDA{}", &key[4..]),
            "arn": format!("arn:aws:iam::{a}:user/ops-admin"),
            "accountId": a,
            "accessKeyId": key,
            "userName": "ops-admin"
        });
        self.emit(
            t,
            acct,
            identity,
            ("ec2.amazonaws.com", name),
            &Origin::Ip(ip.clone()),
            ADMIN_UA,
            request,
            response,
            false,
        );
    }

    fn lambda_call(&mut self, f: &LambdaFn, env: &LambdaEnv, t: i64, origin: Origin, ua: &str) {
        let identity = self.role_identity(
            f.acct,
            &f.role,
            &f.role_id,
            &f.name,
            &env.key,
            env.created,
            None,
        );
        let call = *self.rng.pick(&[
            ("dynamodb.amazonaws.com", "DescribeTable"),
            ("ssm.amazonaws.com", "GetParameter"),
            ("kms.amazonaws.com", "Decrypt"),
            ("secretsmanager.amazonaws.com", "GetSecretValue"),
        ]);
        let req = self.request_for(call.1, None);
        self.emit(
            t,
            f.acct,
            identity,
            call,
            &origin,
            ua,
            req,
            Value::Null,
            false,
        );
    }

    fn session_call(&mut self, s: &RoleSession, t: i64, first: bool) {
        let (origin, ua, invoked_by, console) = match s.kind {
            BenignKind::Console => {
                if !first && self.rng.chance(0.4) {
                    let ip = self.any_ip(&AWS_RELAY);
                    (Origin::Ip(ip), CONSOLE_RELAY_UA, None, true)
                } else {
                    (Origin::Ip(s.ip.clone()), s.ua, None, true)
                }
            }
            BenignKind::AwsService if !first && self.rng.chance(0.6) => (
                Origin::Service("cloudformation.amazonaws.com"),
                s.ua,
                Some("cloudformation.amazonaws.com"),
                false,
            ),
            BenignKind::AwsInternal if !first && self.rng.chance(0.4) => {
                (Origin::Internal, s.ua, None, false)
            }
            _ => (Origin::Ip(s.ip.clone()), s.ua, None, false),
        };
        let identity = self.role_identity(
            s.acct, &s.role, &s.role_id, &s.name, &s.key, s.created, invoked_by,
        );
        let call = if first && s.kind == BenignKind::Ecs && self.rng.chance(0.3) {
            ("sts.amazonaws.com", "GetCallerIdentity")
        } else if s.kind == BenignKind::AwsService {
            *self.rng.pick(&[
                ("cloudformation.amazonaws.com", "DescribeStacks"),
                ("ec2.amazonaws.com", "DescribeSecurityGroups"),
                ("iam.amazonaws.com", "GetRole"),
                ("lambda.amazonaws.com", "GetFunction"),
            ])
        } else {
            self.random_call()
        };
        let req = self.request_for(call.1, None);
        self.emit(
            t,
            s.acct,
            identity,
            call,
            &origin,
            ua,
            req,
            Value::Null,
            console,
        );
    }

    /// The events every entity needs for its story, and the attacks.
    fn structural(&mut self, w: &World) {
        let (start, end) = (self.start, self.end);
        for inst in &w.instances {
            // The home: a call from the instance's IPv4 egress shortly after the start.
            let t = start + self.rng.range(0, 120);
            let origin = Origin::Ip(inst.ip.clone());
            let call = self.random_call();
            self.instance_call(inst, t, &origin, call);
            match inst.mode {
                Mode::DualStack => {
                    let t = start + self.rng.range(300, 1800);
                    let origin = Origin::Ip(inst.ipv6.clone().expect("dual-stack has IPv6"));
                    let call = self.random_call();
                    self.instance_call(inst, t, &origin, call);
                }
                Mode::Vpce => {
                    let t = start + self.rng.range(300, 1800);
                    let (id, owner) = inst.vpce.clone().expect("endpoint instance has one");
                    let origin = Origin::Vpce {
                        id,
                        account: ORGANIZATION[owner].to_string(),
                        ip: inst.private_ip.clone(),
                    };
                    let call = self.random_call();
                    self.instance_call(inst, t, &origin, call);
                }
                Mode::Eip => {
                    let (ip, alloc, at) = inst.eip.clone().expect("EIP instance has one");
                    let allocated = at - self.rng.range(10, 300);
                    self.admin_call(
                        w,
                        inst.acct,
                        allocated,
                        "AllocateAddress",
                        json!({"domain": "vpc"}),
                        json!({"publicIp": ip, "allocationId": alloc, "domain": "vpc", "networkBorderGroup": self.region}),
                    );
                    let assoc = format!("eipassoc-0{}", self.rng.hex(16));
                    self.admin_call(
                        w,
                        inst.acct,
                        at,
                        "AssociateAddress",
                        json!({"allocationId": alloc, "instanceId": inst.id, "allowReassociation": false}),
                        json!({"associationId": assoc, "_return": true}),
                    );
                    let t = (at + self.rng.range(120, 600)).min(end - 1);
                    let call = self.random_call();
                    self.instance_call(inst, t, &Origin::Ip(ip), call);
                }
                Mode::StopStart => {
                    let (stop, begin, ip) = inst.restart.clone().expect("restart planned");
                    let items = json!({"instancesSet": {"items": [{"instanceId": inst.id}]}});
                    let mut stop_req = items.clone();
                    stop_req["force"] = json!(false);
                    self.admin_call(w, inst.acct, stop, "StopInstances", stop_req, Value::Null);
                    self.admin_call(w, inst.acct, begin, "StartInstances", items, Value::Null);
                    let t = (begin + self.rng.range(90, 600)).min(end - 1);
                    let call = self.random_call();
                    self.instance_call(inst, t, &Origin::Ip(ip), call);
                }
                _ => {}
            }
        }
        for f in &w.lambdas {
            for env in &f.envs {
                let origin = Origin::Ip(self.any_ip(&LAMBDA_POOL));
                self.lambda_call(f, env, env.first, origin, f.ua);
            }
        }
        for s in &w.sessions {
            self.session_call(s, s.first, true);
            // Make sure the special origins of these kinds appear at least once.
            let t = self.rng.range(s.first + 1, s.until.max(s.first + 2));
            match s.kind {
                BenignKind::AwsService | BenignKind::AwsInternal => {
                    let origin = if s.kind == BenignKind::AwsService {
                        Origin::Service("cloudformation.amazonaws.com")
                    } else {
                        Origin::Internal
                    };
                    let identity = self.role_identity(
                        s.acct,
                        &s.role,
                        &s.role_id,
                        &s.name,
                        &s.key,
                        s.created,
                        (s.kind == BenignKind::AwsService)
                            .then_some("cloudformation.amazonaws.com"),
                    );
                    let call = self.random_call();
                    let req = self.request_for(call.1, None);
                    self.emit(
                        t,
                        s.acct,
                        identity,
                        call,
                        &origin,
                        s.ua,
                        req,
                        Value::Null,
                        false,
                    );
                }
                _ => self.session_call(s, t, false),
            }
        }
        for (i, a) in w.attacks.iter().enumerate() {
            let mut t = a.time;
            for c in 0..a.calls {
                let ua = *self.rng.pick(&ATTACKER_UAS);
                let call = if c == 0
                    && matches!(
                        a.kind,
                        AttackKind::OutsideAws
                            | AttackKind::LambdaOutside
                            | AttackKind::OtherAccount
                    ) {
                    ("sts.amazonaws.com", "GetCallerIdentity")
                } else {
                    *self.rng.pick(&[
                        ("s3.amazonaws.com", "ListBuckets"),
                        ("ec2.amazonaws.com", "DescribeInstances"),
                        ("secretsmanager.amazonaws.com", "ListSecrets"),
                        ("iam.amazonaws.com", "ListRoles"),
                    ])
                };
                let id = match &a.target {
                    Target::Instance(v) => {
                        let inst = &w.instances[*v];
                        let (created, key) = inst.key_at(a.time).clone();
                        let identity = self.instance_identity(inst, &key, created);
                        let req = self.request_for(call.1, None);
                        self.emit(
                            t,
                            inst.acct,
                            identity,
                            call,
                            &a.origin,
                            ua,
                            req,
                            Value::Null,
                            false,
                        )
                    }
                    Target::Lambda(f, e) => {
                        let f = &w.lambdas[*f];
                        let env = &f.envs[*e];
                        let identity = self.role_identity(
                            f.acct,
                            &f.role,
                            &f.role_id,
                            &f.name,
                            &env.key,
                            env.created,
                            None,
                        );
                        let req = self.request_for(call.1, None);
                        self.emit(
                            t,
                            f.acct,
                            identity,
                            call,
                            &a.origin,
                            ua,
                            req,
                            Value::Null,
                            false,
                        )
                    }
                };
                if c == 0 {
                    self.attack_ids[i] = Some(id);
                }
                t += self.rng.range(5, 120);
            }
        }
    }

    /// One ordinary call by a random entity at a random time it is active.
    fn background(&mut self, w: &World) {
        let r = self.rng.unit();
        if r < 0.72 {
            let inst = &w.instances[self.rng.below(w.instances.len() as u64) as usize];
            let spans = inst.active(self.start, self.end);
            let total: i64 = spans.iter().map(|(a, b)| (b - a).max(0)).sum();
            let mut x = self.rng.range(0, total.max(1));
            let mut t = self.start;
            for (a, b) in spans {
                let len = (b - a).max(0);
                if x < len {
                    t = a + x;
                    break;
                }
                x -= len;
            }
            let origin = self.instance_origin(inst, t);
            let call = self.random_call();
            self.instance_call(inst, t, &origin, call);
        } else if r < 0.86 {
            let f = &w.lambdas[self.rng.below(w.lambdas.len() as u64) as usize];
            let env = &f.envs[self.rng.below(f.envs.len() as u64) as usize];
            let t = self.rng.range(env.first, env.until.max(env.first + 1));
            let origin = Origin::Ip(self.any_ip(&LAMBDA_POOL));
            self.lambda_call(f, env, t, origin, f.ua);
        } else {
            let s = &w.sessions[self.rng.below(w.sessions.len() as u64) as usize];
            let t = self.rng.range(s.first, s.until.max(s.first + 1));
            self.session_call(s, t, false);
        }
    }

    fn truth(&self, w: &World) -> Truth {
        let mut attacks = Vec::with_capacity(w.attacks.len());
        for (i, a) in w.attacks.iter().enumerate() {
            let (session, key) = match &a.target {
                Target::Instance(v) => {
                    let inst = &w.instances[*v];
                    (inst.session(), inst.key_at(a.time).1.clone())
                }
                Target::Lambda(f, e) => {
                    let k = w.lambdas[*f].envs[*e].key.clone();
                    (k.clone(), k)
                }
            };
            attacks.push(Attack {
                kind: a.kind,
                session,
                access_key_id: Some(key),
                event_id: self.attack_ids[i].clone().unwrap_or_default(),
                time: format_time(a.time),
                origin: Some(a.origin.display()),
                events: Some(a.calls),
            });
        }
        let mut benign = Vec::new();
        for inst in &w.instances {
            if let Some(kind) = inst.label {
                benign.push(Benign {
                    kind,
                    session: inst.session(),
                });
            }
        }
        for f in &w.lambdas {
            for env in f.envs.iter().filter(|e| !e.victim) {
                benign.push(Benign {
                    kind: BenignKind::Lambda,
                    session: env.key.clone(),
                });
            }
        }
        for s in &w.sessions {
            benign.push(Benign {
                kind: s.kind,
                session: s.key.clone(),
            });
        }
        Truth {
            seed: 0,
            events: self.out.len() as u64,
            start: Some(format_time(self.start)),
            end: Some(format_time(self.end)),
            organization: ORGANIZATION.iter().map(|a| a.to_string()).collect(),
            config: Some("credwatch.toml".into()),
            attacks,
            benign,
        }
    }

    /// Writes the events as CloudTrail S3 objects: one per account and 5-minute window.
    fn write_files(&mut self, out: &Path) -> Result<usize, String> {
        let mut groups: BTreeMap<(usize, i64), Vec<usize>> = BTreeMap::new();
        for (i, e) in self.out.iter().enumerate() {
            groups
                .entry((e.acct, e.t.div_euclid(FILE_SECS)))
                .or_default()
                .push(i);
        }
        let mut files = 0;
        for ((acct, window), mut idx) in groups {
            idx.sort_by_key(|&i| (self.out[i].t, self.out[i].seq));
            let delivered = (window + 1) * FILE_SECS;
            let when = chrono::DateTime::from_timestamp(delivered, 0)
                .ok_or_else(|| format!("time {delivered} out of range"))?;
            let a = ORGANIZATION[acct];
            let dir = out
                .join("AWSLogs")
                .join(a)
                .join("CloudTrail")
                .join(&self.region)
                .join(when.format("%Y/%m/%d").to_string());
            let name = format!(
                "{a}_CloudTrail_{}_{}_{}.json.gz",
                self.region,
                when.format("%Y%m%dT%H%MZ"),
                self.rng.chars(ALNUM, 16)
            );
            let mut text = String::from("{\"Records\":[");
            for (n, &i) in idx.iter().enumerate() {
                if n > 0 {
                    text.push(',');
                }
                text.push_str(&self.out[i].json);
            }
            text.push_str("]}");
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(text.as_bytes())
                .and_then(|()| gz.try_finish())
                .map_err(|e| e.to_string())?;
            write(&dir.join(name), &gz.finish().map_err(|e| e.to_string())?)?;
            files += 1;
        }
        Ok(files)
    }
}
