//! `credwatch inventory [--config FILE] [--format table|json]`: reads the inventory once (from
//! EC2, or from `[inventory] file`) and prints it.
//!
//! `--format json` prints the [`InventorySnapshot`] itself (pretty), which `[inventory] file`
//! reads back; `--format table` prints, per account and region, a summary line then one line per
//! address, IPv6 block and endpoint: `account region kind id address-or-cidr vpc`.
//!
//! Exit status: 0 when every account and region was read, 1 when some failed (printed with
//! their error), 2 when the command could not run (configuration, no `[inventory]`).

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::ValueEnum;

use super::model::{AccountRegion, InventorySnapshot};
use crate::config::Config;

/// Exit status: every account and region was read.
pub const EXIT_OK: i32 = 0;
/// Exit status: some account and region could not be read (it is printed with its error).
pub const EXIT_PARTIAL: i32 = 1;
/// Exit status: the command could not run.
pub const EXIT_ERROR: i32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InventoryFormat {
    /// For people: a summary per account and region, then one line per address.
    Table,
    /// The inventory as JSON, for `[inventory] file`.
    Json,
}

/// `credwatch inventory`: read the inventory once and print it.
#[derive(Debug, Clone, clap::Args)]
pub struct InventoryArgs {
    /// Configuration file (TOML) with an `[inventory]` section.
    #[arg(long, env = "CREDWATCH_CONFIG")]
    pub config: Option<PathBuf>,
    /// `table` for people, `json` for `[inventory] file`.
    #[arg(
        long,
        env = "CREDWATCH_INVENTORY_FORMAT",
        value_enum,
        default_value = "table"
    )]
    pub format: InventoryFormat,
}

/// What the command prints, and whether every part was read.
#[derive(Debug, Clone)]
pub struct Output {
    pub text: String,
    /// Parts whose last read failed.
    pub failed_parts: usize,
}

/// Loads the configuration, reads the inventory once and renders it. An error when the
/// configuration is bad or has no `[inventory]`, or the inventory file cannot be read.
pub async fn run_to_string(args: &InventoryArgs) -> anyhow::Result<Output> {
    let cfg = Config::load(args.config.as_deref()).map_err(|e| anyhow::anyhow!("config: {e}"))?;
    if !cfg.inventory.enabled() {
        anyhow::bail!(
            "no inventory is configured: set [inventory] regions (and role_arns for member accounts), or [inventory] file"
        );
    }
    let inv = super::load_initial(&cfg.inventory).await?;
    let snap = inv.snapshot();
    Ok(Output {
        text: render(&snap, args.format)?,
        failed_parts: snap.parts.iter().filter(|p| p.error.is_some()).count(),
    })
}

/// Runs `credwatch inventory`; returns the exit status.
pub fn cli(args: InventoryArgs) -> i32 {
    let Some(rt) = crate::cli::runtime() else {
        return EXIT_ERROR;
    };
    match rt.block_on(run_to_string(&args)) {
        Ok(out) => {
            print!("{}", out.text);
            if out.failed_parts > 0 {
                eprintln!(
                    "credwatch: inventory: {} account-region(s) could not be read (see their error)",
                    out.failed_parts
                );
                EXIT_PARTIAL
            } else {
                EXIT_OK
            }
        }
        Err(e) => {
            eprintln!("credwatch: inventory: {e:#}");
            EXIT_ERROR
        }
    }
}

/// The snapshot as `format` (ending with a newline).
pub fn render(snap: &InventorySnapshot, format: InventoryFormat) -> anyhow::Result<String> {
    Ok(match format {
        InventoryFormat::Json => {
            let mut s = serde_json::to_string_pretty(snap)?;
            s.push('\n');
            s
        }
        InventoryFormat::Table => table(snap),
    })
}

fn time(secs: i64) -> String {
    if secs <= 0 {
        return "never".to_string();
    }
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| secs.to_string())
}

fn summary(p: &AccountRegion) -> String {
    let mut s = format!(
        "{} {}: {} instances, {} Elastic IPs, {} NAT gateways, {} VPCs, {} subnets, {} endpoints; refreshed {}",
        p.account,
        p.region,
        p.instances.len(),
        p.elastic_ips.len(),
        p.nat_gateways.len(),
        p.vpcs.len(),
        p.subnets.len(),
        p.endpoints.len(),
        time(p.refreshed_at)
    );
    if let Some(e) = &p.error {
        let _ = write!(s, "; error: {e}");
    }
    s
}

/// `[account, region, kind, id, address-or-cidr, vpc]` rows of one part.
fn rows(p: &AccountRegion) -> Vec<[String; 6]> {
    let dash = || "-".to_string();
    let opt = |o: &Option<String>| o.clone().unwrap_or_else(dash);
    let row = |kind: &str, id: &str, addr: String, vpc: String| {
        [
            p.account.clone(),
            p.region.clone(),
            kind.to_string(),
            id.to_string(),
            addr,
            vpc,
        ]
    };
    let mut out = Vec::new();
    for i in &p.instances {
        let addrs: Vec<_> = i
            .public_ipv4
            .iter()
            .chain(&i.private_ipv4)
            .chain(&i.ipv6)
            .collect();
        if addrs.is_empty() {
            out.push(row("instance", &i.id, dash(), opt(&i.vpc_id)));
        }
        for a in addrs {
            out.push(row("instance", &i.id, a.to_string(), opt(&i.vpc_id)));
        }
    }
    for e in &p.elastic_ips {
        let id = e.allocation_id.as_deref().unwrap_or("-");
        out.push(row("elastic-ip", id, e.public_ip.to_string(), dash()));
    }
    for n in &p.nat_gateways {
        for a in n.public_ips.iter().chain(&n.private_ips) {
            out.push(row("nat-gateway", &n.id, a.to_string(), opt(&n.vpc_id)));
        }
        if n.public_ips.is_empty() && n.private_ips.is_empty() {
            out.push(row("nat-gateway", &n.id, dash(), opt(&n.vpc_id)));
        }
    }
    for (kind, list) in [("vpc", &p.vpcs), ("subnet", &p.subnets)] {
        for n in list {
            if n.ipv6_cidrs.is_empty() {
                out.push(row(kind, &n.id, dash(), opt(&n.vpc_id)));
            }
            for c in &n.ipv6_cidrs {
                out.push(row(kind, &n.id, c.to_string(), opt(&n.vpc_id)));
            }
        }
    }
    for e in &p.endpoints {
        out.push(row("endpoint", &e.id, opt(&e.service_name), opt(&e.vpc_id)));
    }
    out
}

fn table(snap: &InventorySnapshot) -> String {
    const HEAD: [&str; 6] = ["ACCOUNT", "REGION", "KIND", "ID", "ADDRESS/CIDR", "VPC"];
    let all: Vec<(String, Vec<[String; 6]>)> =
        snap.parts.iter().map(|p| (summary(p), rows(p))).collect();
    let mut width = HEAD.map(str::len);
    for (_, rows) in &all {
        for r in rows {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.len());
            }
        }
    }
    let line = |out: &mut String, cells: [&str; 6]| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(width).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$} ");
            }
        }
        out.push_str("  ");
        out.push_str(l.trim_end());
        out.push('\n');
    };
    let mut out = String::new();
    if all.is_empty() {
        out.push_str("(the inventory is empty)\n");
        return out;
    }
    line(&mut out, HEAD);
    for (summary, rows) in &all {
        out.push_str(summary);
        out.push('\n');
        for r in rows {
            line(&mut out, r.each_ref().map(String::as_str));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::model::{ElasticIpRec, EndpointRec, InstanceRec, NetworkRec};

    fn snap() -> InventorySnapshot {
        InventorySnapshot::new(vec![
            AccountRegion {
                account: "123456789012".into(),
                region: "us-east-1".into(),
                refreshed_at: 1_700_000_000,
                instances: vec![InstanceRec {
                    id: "i-1".into(),
                    vpc_id: Some("vpc-1".into()),
                    public_ipv4: vec!["54.1.1.1".parse().unwrap()],
                    private_ipv4: vec!["10.0.0.1".parse().unwrap()],
                    ipv6: vec![],
                    state: Some("running".into()),
                }],
                elastic_ips: vec![ElasticIpRec {
                    public_ip: "34.1.1.1".parse().unwrap(),
                    allocation_id: Some("eipalloc-1".into()),
                    instance_id: None,
                    network_interface_id: None,
                    private_ip: None,
                }],
                vpcs: vec![NetworkRec {
                    id: "vpc-1".into(),
                    vpc_id: Some("vpc-1".into()),
                    ipv6_cidrs: vec!["2600:1f18:1:100::/56".parse().unwrap()],
                }],
                endpoints: vec![EndpointRec {
                    id: "vpce-1".into(),
                    vpc_id: Some("vpc-1".into()),
                    service_name: Some("com.amazonaws.us-east-1.s3".into()),
                }],
                ..AccountRegion::default()
            },
            AccountRegion {
                account: "210987654321".into(),
                region: "us-east-1".into(),
                error: Some("AssumeRole: AccessDenied".into()),
                ..AccountRegion::default()
            },
        ])
    }

    #[test]
    fn the_table_has_a_summary_per_part_and_a_line_per_address() {
        let text = render(&snap(), InventoryFormat::Table).unwrap();
        let expected = [
            "  ACCOUNT      REGION    KIND       ID         ADDRESS/CIDR               VPC",
            "123456789012 us-east-1: 1 instances, 1 Elastic IPs, 0 NAT gateways, 1 VPCs, 0 subnets, 1 endpoints; refreshed 2023-11-14T22:13:20Z",
            "  123456789012 us-east-1 instance   i-1        54.1.1.1                   vpc-1",
            "  123456789012 us-east-1 instance   i-1        10.0.0.1                   vpc-1",
            "  123456789012 us-east-1 elastic-ip eipalloc-1 34.1.1.1                   -",
            "  123456789012 us-east-1 vpc        vpc-1      2600:1f18:1:100::/56       vpc-1",
            "  123456789012 us-east-1 endpoint   vpce-1     com.amazonaws.us-east-1.s3 vpc-1",
            "210987654321 us-east-1: 0 instances, 0 Elastic IPs, 0 NAT gateways, 0 VPCs, 0 subnets, 0 endpoints; refreshed never; error: AssumeRole: AccessDenied",
        ]
        .map(|l| format!("{l}\n"))
        .concat();
        assert_eq!(text, expected);
    }

    #[test]
    fn the_json_reads_back_as_the_same_inventory() {
        let s = snap();
        let text = render(&s, InventoryFormat::Json).unwrap();
        let mut back: InventorySnapshot = serde_json::from_str(&text).unwrap();
        back.reindex();
        assert_eq!(back, s);
        assert_eq!(back.allocation("eipalloc-1"), s.allocation("eipalloc-1"));
    }
}
