//! What the inventory holds: per account and region, the addresses and networks EC2 lists, and
//! the lookups the engine asks of them.
//!
//! Shapes follow EC2's Describe* responses, reduced to what explains an origin:
//! <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeInstances.html>,
//! `DescribeAddresses`, `DescribeNatGateways`, `DescribeVpcs`, `DescribeSubnets`,
//! `DescribeVpcEndpoints`.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// One instance and every address it has (public and private IPv4, IPv6), on any interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRec {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub public_ipv4: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub private_ipv4: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipv6: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// An Elastic IP: allocated to the account, maybe associated with an instance or interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElasticIpRec {
    pub public_ip: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_interface_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<IpAddr>,
}

/// A NAT gateway and its public (and private) addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatGatewayRec {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub public_ips: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub private_ips: Vec<IpAddr>,
}

/// A VPC's (or a subnet's) IPv6 blocks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRec {
    /// `vpc-…` or `subnet-…`.
    pub id: String,
    /// The VPC of a subnet (the VPC's own id for a VPC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipv6_cidrs: Vec<IpNet>,
}

/// A VPC endpoint of ours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRec {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
}

/// Everything read from one account in one region, at one time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRegion {
    pub account: String,
    pub region: String,
    /// When this was read (seconds since the epoch).
    pub refreshed_at: i64,
    /// Set when the last read failed (what is here is then from the read before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub instances: Vec<InstanceRec>,
    #[serde(default)]
    pub elastic_ips: Vec<ElasticIpRec>,
    #[serde(default)]
    pub nat_gateways: Vec<NatGatewayRec>,
    #[serde(default)]
    pub vpcs: Vec<NetworkRec>,
    #[serde(default)]
    pub subnets: Vec<NetworkRec>,
    #[serde(default)]
    pub endpoints: Vec<EndpointRec>,
}

impl AccountRegion {
    /// Resources held (instances, Elastic IPs, NAT gateways, VPCs, subnets, endpoints).
    pub fn len(&self) -> usize {
        self.instances.len()
            + self.elastic_ips.len()
            + self.nat_gateways.len()
            + self.vpcs.len()
            + self.subnets.len()
            + self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What owns an address, as the inventory knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner<'a> {
    Instance {
        rec: &'a InstanceRec,
        at: &'a AccountRegion,
    },
    ElasticIp {
        rec: &'a ElasticIpRec,
        at: &'a AccountRegion,
    },
    NatGateway {
        rec: &'a NatGatewayRec,
        at: &'a AccountRegion,
    },
    /// An IPv6 block of a VPC or subnet.
    Ipv6Block {
        rec: &'a NetworkRec,
        cidr: IpNet,
        at: &'a AccountRegion,
    },
}

impl Owner<'_> {
    pub fn account(&self) -> &str {
        match self {
            Owner::Instance { at, .. }
            | Owner::ElasticIp { at, .. }
            | Owner::NatGateway { at, .. }
            | Owner::Ipv6Block { at, .. } => &at.account,
        }
    }

    /// The VPC the owner is in, when known.
    pub fn vpc(&self) -> Option<&str> {
        match self {
            Owner::Instance { rec, .. } => rec.vpc_id.as_deref(),
            Owner::ElasticIp { .. } => None,
            Owner::NatGateway { rec, .. } => rec.vpc_id.as_deref(),
            Owner::Ipv6Block { rec, .. } => rec.vpc_id.as_deref().or(Some(rec.id.as_str())),
        }
    }

    /// The instance the address belongs to, when it is one instance's.
    pub fn instance(&self) -> Option<&str> {
        match self {
            Owner::Instance { rec, .. } => Some(&rec.id),
            Owner::ElasticIp { rec, .. } => rec.instance_id.as_deref(),
            _ => None,
        }
    }
}

impl fmt::Display for Owner<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Instance { rec, at } => {
                write!(f, "instance {}", rec.id)?;
                if let Some(v) = &rec.vpc_id {
                    write!(f, " of {v}")?;
                }
                write!(f, " in {} ({})", at.account, at.region)
            }
            Owner::ElasticIp { rec, at } => {
                write!(
                    f,
                    "Elastic IP {}",
                    rec.allocation_id.as_deref().unwrap_or("(no allocation id)")
                )?;
                match (&rec.instance_id, &rec.network_interface_id) {
                    (Some(i), _) => write!(f, " associated with {i}")?,
                    (None, Some(n)) => write!(f, " associated with {n}")?,
                    (None, None) => write!(f, " (not associated)")?,
                }
                write!(f, " in {} ({})", at.account, at.region)
            }
            Owner::NatGateway { rec, at } => {
                write!(f, "NAT gateway {}", rec.id)?;
                if let Some(v) = &rec.vpc_id {
                    write!(f, " of {v}")?;
                }
                write!(f, " in {} ({})", at.account, at.region)
            }
            Owner::Ipv6Block { rec, cidr, at } => {
                write!(f, "IPv6 block {cidr} of {}", rec.id)?;
                if let Some(v) = rec.vpc_id.as_deref().filter(|v| *v != rec.id) {
                    write!(f, " ({v})")?;
                }
                write!(f, " in {} ({})", at.account, at.region)
            }
        }
    }
}

/// Where one address appears: (account-region index, kind, index within it).
#[derive(Debug, Clone, Copy)]
enum Slot {
    Instance(usize, usize),
    ElasticIp(usize, usize),
    NatGateway(usize, usize),
}

/// The whole inventory at one time, with its lookup indexes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InventorySnapshot {
    pub parts: Vec<AccountRegion>,
    #[serde(skip)]
    index: Index,
}

/// An IPv6 block in the index: (block, part, is_subnet, network index).
type BlockSlot = (IpNet, usize, bool, usize);

#[derive(Debug, Clone, Default)]
struct Index {
    by_addr: HashMap<IpAddr, Vec<Slot>>,
    /// IPv6 blocks by (prefix length, network bits): (block, part, is_subnet, network index).
    blocks: HashMap<(u8, u128), Vec<BlockSlot>>,
    /// The prefix lengths present, longest first (a lookup is one probe per length).
    block_lens: Vec<u8>,
    endpoints: HashMap<String, (usize, usize)>,
    instances: HashMap<String, (usize, usize)>,
    allocations: HashMap<String, IpAddr>,
}

impl PartialEq for InventorySnapshot {
    fn eq(&self, other: &Self) -> bool {
        self.parts == other.parts
    }
}

impl InventorySnapshot {
    /// A snapshot of these parts, indexed.
    pub fn new(parts: Vec<AccountRegion>) -> InventorySnapshot {
        let mut s = InventorySnapshot {
            parts,
            index: Index::default(),
        };
        s.reindex();
        s
    }

    /// Rebuilds the lookup indexes (after deserialising or editing `parts`).
    pub fn reindex(&mut self) {
        let mut ix = Index::default();
        for (p, part) in self.parts.iter().enumerate() {
            for (i, rec) in part.instances.iter().enumerate() {
                for a in rec
                    .public_ipv4
                    .iter()
                    .chain(&rec.private_ipv4)
                    .chain(&rec.ipv6)
                {
                    ix.by_addr
                        .entry(a.to_canonical())
                        .or_default()
                        .push(Slot::Instance(p, i));
                }
                ix.instances.insert(rec.id.to_ascii_lowercase(), (p, i));
            }
            for (i, rec) in part.elastic_ips.iter().enumerate() {
                ix.by_addr
                    .entry(rec.public_ip.to_canonical())
                    .or_default()
                    .push(Slot::ElasticIp(p, i));
                if let Some(a) = &rec.allocation_id {
                    ix.allocations
                        .insert(a.clone(), rec.public_ip.to_canonical());
                }
            }
            for (i, rec) in part.nat_gateways.iter().enumerate() {
                for a in rec.public_ips.iter().chain(&rec.private_ips) {
                    ix.by_addr
                        .entry(a.to_canonical())
                        .or_default()
                        .push(Slot::NatGateway(p, i));
                }
            }
            for (subnet, list) in [(false, &part.vpcs), (true, &part.subnets)] {
                for (i, rec) in list.iter().enumerate() {
                    for c in &rec.ipv6_cidrs {
                        if let IpNet::V6(n) = c.trunc() {
                            let key = (n.prefix_len(), u128::from(n.network()));
                            ix.blocks
                                .entry(key)
                                .or_default()
                                .push((IpNet::V6(n), p, subnet, i));
                        }
                    }
                }
            }
            for (i, rec) in part.endpoints.iter().enumerate() {
                ix.endpoints.insert(rec.id.clone(), (p, i));
            }
        }
        let mut lens: Vec<u8> = ix.blocks.keys().map(|k| k.0).collect();
        lens.sort_unstable_by(|a, b| b.cmp(a));
        lens.dedup();
        ix.block_lens = lens;
        self.index = ix;
    }

    /// Everything that owns `addr`: exact addresses first (instances, Elastic IPs, NAT
    /// gateways), then IPv6 blocks, most specific first.
    pub fn owners(&self, addr: IpAddr) -> Vec<Owner<'_>> {
        let addr = addr.to_canonical();
        let mut out = Vec::new();
        if let Some(slots) = self.index.by_addr.get(&addr) {
            for s in slots {
                out.push(match *s {
                    Slot::Instance(p, i) => Owner::Instance {
                        rec: &self.parts[p].instances[i],
                        at: &self.parts[p],
                    },
                    Slot::ElasticIp(p, i) => Owner::ElasticIp {
                        rec: &self.parts[p].elastic_ips[i],
                        at: &self.parts[p],
                    },
                    Slot::NatGateway(p, i) => Owner::NatGateway {
                        rec: &self.parts[p].nat_gateways[i],
                        at: &self.parts[p],
                    },
                });
            }
        }
        if let IpAddr::V6(a) = addr {
            let bits = u128::from(a);
            let hits = self.index.block_lens.iter().filter_map(|&len| {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                self.index.blocks.get(&(len, bits & mask))
            });
            for (net, p, subnet, i) in hits.flatten() {
                {
                    let part = &self.parts[*p];
                    let rec = if *subnet {
                        &part.subnets[*i]
                    } else {
                        &part.vpcs[*i]
                    };
                    out.push(Owner::Ipv6Block {
                        rec,
                        cidr: *net,
                        at: part,
                    });
                }
            }
        }
        out
    }

    /// Whether anything of ours owns `addr` ([`InventorySnapshot::owners`] without building
    /// the list: asked for every event with an address).
    pub fn owns(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        if self.index.by_addr.contains_key(&addr) {
            return true;
        }
        let IpAddr::V6(a) = addr else {
            return false;
        };
        let bits = u128::from(a);
        self.index.block_lens.iter().any(|&len| {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            self.index.blocks.contains_key(&(len, bits & mask))
        })
    }

    /// Whether `account` is one the inventory read.
    pub fn has_account(&self, account: &str) -> bool {
        self.parts.iter().any(|p| p.account == account)
    }

    /// A VPC endpoint of ours, with where it is.
    pub fn endpoint(&self, id: &str) -> Option<(&EndpointRec, &AccountRegion)> {
        let (p, i) = *self.index.endpoints.get(id)?;
        Some((&self.parts[p].endpoints[i], &self.parts[p]))
    }

    /// An instance of ours (id compared in lower case), with where it is.
    pub fn instance(&self, id: &str) -> Option<(&InstanceRec, &AccountRegion)> {
        let (p, i) = *self.index.instances.get(&id.to_ascii_lowercase())?;
        Some((&self.parts[p].instances[i], &self.parts[p]))
    }

    /// The public address of an Elastic IP allocation.
    pub fn allocation(&self, allocation_id: &str) -> Option<IpAddr> {
        self.index.allocations.get(allocation_id).copied()
    }

    /// The accounts read.
    pub fn accounts(&self) -> BTreeSet<&str> {
        self.parts.iter().map(|p| p.account.as_str()).collect()
    }

    /// Resources held, over every account and region.
    pub fn len(&self) -> usize {
        self.parts.iter().map(AccountRegion::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part() -> AccountRegion {
        AccountRegion {
            account: "111122223333".into(),
            region: "us-east-1".into(),
            refreshed_at: 0,
            error: None,
            instances: vec![InstanceRec {
                id: "i-0abc".into(),
                vpc_id: Some("vpc-1".into()),
                public_ipv4: vec!["54.1.2.3".parse().unwrap()],
                private_ipv4: vec!["10.0.0.5".parse().unwrap()],
                ipv6: vec!["2600:1f18:1:100::5".parse().unwrap()],
                state: Some("running".into()),
            }],
            elastic_ips: vec![ElasticIpRec {
                public_ip: "34.1.1.1".parse().unwrap(),
                allocation_id: Some("eipalloc-1".into()),
                instance_id: None,
                network_interface_id: None,
                private_ip: None,
            }],
            nat_gateways: vec![NatGatewayRec {
                id: "nat-1".into(),
                vpc_id: Some("vpc-1".into()),
                public_ips: vec!["52.9.9.9".parse().unwrap()],
                private_ips: vec![],
            }],
            vpcs: vec![NetworkRec {
                id: "vpc-1".into(),
                vpc_id: Some("vpc-1".into()),
                ipv6_cidrs: vec!["2600:1f18:1:100::/56".parse().unwrap()],
            }],
            subnets: vec![],
            endpoints: vec![EndpointRec {
                id: "vpce-1".into(),
                vpc_id: Some("vpc-1".into()),
                service_name: None,
            }],
        }
    }

    #[test]
    fn owners_of_addresses_and_blocks() {
        let s = InventorySnapshot::new(vec![part()]);
        let names = |a: &str| -> Vec<String> {
            s.owners(a.parse().unwrap())
                .iter()
                .map(|o| o.to_string())
                .collect()
        };
        assert_eq!(
            names("54.1.2.3"),
            ["instance i-0abc of vpc-1 in 111122223333 (us-east-1)"]
        );
        assert_eq!(
            names("52.9.9.9"),
            ["NAT gateway nat-1 of vpc-1 in 111122223333 (us-east-1)"]
        );
        assert_eq!(
            names("2600:1f18:1:100::5"),
            [
                "instance i-0abc of vpc-1 in 111122223333 (us-east-1)",
                "IPv6 block 2600:1f18:1:100::/56 of vpc-1 in 111122223333 (us-east-1)"
            ]
        );
        assert_eq!(
            names("::ffff:34.1.1.1"),
            ["Elastic IP eipalloc-1 (not associated) in 111122223333 (us-east-1)"]
        );
        assert!(names("8.8.8.8").is_empty());
        assert_eq!(
            s.allocation("eipalloc-1"),
            Some("34.1.1.1".parse().unwrap())
        );
        assert!(s.endpoint("vpce-1").is_some());
        assert!(s.instance("I-0ABC").is_some());
    }

    #[test]
    fn a_snapshot_round_trips_through_json() {
        let s = InventorySnapshot::new(vec![part()]);
        let text = serde_json::to_string(&s).unwrap();
        let mut back: InventorySnapshot = serde_json::from_str(&text).unwrap();
        back.reindex();
        assert_eq!(back, s);
        assert_eq!(back.owners("54.1.2.3".parse().unwrap()).len(), 1);
    }
}
