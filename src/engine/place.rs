//! Where an origin is, for the session that called from it: outside AWS, in AWS but not ours
//! (another account's instance), ours and this workload's, ours but another workload's (a
//! pivot within the organisation), or a private address.
//!
//! AWS's published ranges ([`crate::placement`]) say whether an address is AWS's; the
//! inventory ([`crate::inventory`]) says whether it is ours, and whose. For an instance session,
//! an address is this workload's when it is the instance's own (any interface, an associated
//! Elastic IP), or a NAT gateway or IPv6 block of the instance's VPC; when the instance itself is
//! not in the inventory (launched since the last refresh), a NAT gateway or IPv6 block of the
//! session's own account. For any other session (Lambda, ECS, an assumed role), every address of
//! the organisation's inventory is its own: nothing in EC2 says which workload runs where.

use std::fmt;
use std::net::IpAddr;

use crate::engine::origin::is_private;
use crate::inventory::Owner;
use crate::placement::AwsRange;

/// The place of one address, for one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// In none of AWS's published ranges, and not ours.
    OutsideAws,
    /// In AWS's ranges, not in the inventory.
    Aws(AwsRange),
    /// In the inventory: `owner` names the resource; `this_workload` when it is the session's.
    Ours {
        owner: String,
        this_workload: bool,
    },
    Private,
}

impl Place {
    /// The kind, for evidence and metrics: `outside_aws`, `aws`, `ours`, `ours_other`, `private`.
    pub fn kind(&self) -> &'static str {
        match self {
            Place::OutsideAws => "outside_aws",
            Place::Aws(_) => "aws",
            Place::Ours {
                this_workload: true,
                ..
            } => "ours",
            Place::Ours { .. } => "ours_other",
            Place::Private => "private",
        }
    }

    pub fn is_outside_aws(&self) -> bool {
        matches!(self, Place::OutsideAws)
    }

    pub fn is_own(&self) -> bool {
        matches!(
            self,
            Place::Ours {
                this_workload: true,
                ..
            }
        )
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::OutsideAws => f.write_str("outside AWS"),
            Place::Aws(r) => write!(f, "AWS {} {} ({})", r.service, r.region, r.prefix),
            Place::Ours {
                owner,
                this_workload: true,
            } => write!(f, "ours: {owner}"),
            Place::Ours { owner, .. } => write!(f, "ours, another workload's: {owner}"),
            Place::Private => f.write_str("private"),
        }
    }
}

/// The session an address is judged for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Workload<'a> {
    pub account: Option<&'a str>,
    /// Lower-case instance id of an instance session.
    pub instance: Option<&'a str>,
}

/// The place of `addr` for `who`, from the inventory's owners of it and AWS's ranges.
pub fn place(
    addr: IpAddr,
    who: Workload<'_>,
    owners: &[Owner<'_>],
    instance_vpc: Option<&str>,
    aws: Option<AwsRange>,
) -> Place {
    if let Some(first) = owners.first() {
        let own = |o: &Owner<'_>| match who.instance {
            None => true,
            Some(i) => {
                if o.instance().is_some_and(|x| x.eq_ignore_ascii_case(i)) {
                    return true;
                }
                match o {
                    Owner::Instance { .. } | Owner::ElasticIp { .. } => false,
                    Owner::NatGateway { .. } | Owner::Ipv6Block { .. } => match instance_vpc {
                        Some(v) => o.vpc() == Some(v),
                        None => Some(o.account()) == who.account,
                    },
                }
            }
        };
        return match owners.iter().find(|o| own(o)) {
            Some(o) => Place::Ours {
                owner: o.to_string(),
                this_workload: true,
            },
            None => Place::Ours {
                owner: first.to_string(),
                this_workload: false,
            },
        };
    }
    if is_private(addr) {
        return Place::Private;
    }
    match aws {
        Some(r) => Place::Aws(r),
        None => Place::OutsideAws,
    }
}
