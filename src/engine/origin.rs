//! Where a call came from: every event gets a typed [`Origin`].
//!
//! `sourceIPAddress` holds an address, a service name (`ec2.amazonaws.com`), `AWS Internal`, or,
//! in anonymised or hostile data, anything at all. Strict parsing: `075.050.255.67` (leading zeros)
//! is not an address; it is kept as an opaque value and counted.
//! <https://docs.aws.amazon.com/awscloudtrail/latest/userguide/cloudtrail-event-reference-record-contents.html>

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::event::CloudTrailEvent;

/// The class of an origin, for metrics and evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OriginClass {
    PublicIp,
    PrivateIp,
    VpcEndpoint,
    AwsService,
    AwsInternal,
    Opaque,
    Missing,
}

impl OriginClass {
    /// The class named by [`OriginClass::as_str`] (`Missing` for anything else).
    pub fn parse(s: &str) -> OriginClass {
        OriginClass::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .unwrap_or(OriginClass::Missing)
    }

    pub const ALL: [OriginClass; 7] = [
        OriginClass::PublicIp,
        OriginClass::PrivateIp,
        OriginClass::VpcEndpoint,
        OriginClass::AwsService,
        OriginClass::AwsInternal,
        OriginClass::Opaque,
        OriginClass::Missing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OriginClass::PublicIp => "public_ip",
            OriginClass::PrivateIp => "private_ip",
            OriginClass::VpcEndpoint => "vpc_endpoint",
            OriginClass::AwsService => "aws_service",
            OriginClass::AwsInternal => "aws_internal",
            OriginClass::Opaque => "opaque",
            OriginClass::Missing => "missing",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// A typed origin, borrowing from the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin<'a> {
    PublicIp(IpAddr),
    PrivateIp(IpAddr),
    /// A call through an interface or gateway VPC endpoint; `addr` is the caller's private address.
    VpcEndpoint {
        id: &'a str,
        account: Option<&'a str>,
        addr: Option<IpAddr>,
    },
    /// An AWS service acting on the principal's behalf (`*.amazonaws.com`, `invokedBy`).
    AwsService(&'a str),
    AwsInternal,
    /// Not an address: kept as the raw value.
    Opaque(&'a str),
    Missing,
}

impl Origin<'_> {
    pub fn class(&self) -> OriginClass {
        match self {
            Origin::PublicIp(_) => OriginClass::PublicIp,
            Origin::PrivateIp(_) => OriginClass::PrivateIp,
            Origin::VpcEndpoint { .. } => OriginClass::VpcEndpoint,
            Origin::AwsService(_) => OriginClass::AwsService,
            Origin::AwsInternal => OriginClass::AwsInternal,
            Origin::Opaque(_) => OriginClass::Opaque,
            Origin::Missing => OriginClass::Missing,
        }
    }

    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Origin::PublicIp(a) | Origin::PrivateIp(a) => Some(*a),
            Origin::VpcEndpoint { addr, .. } => *addr,
            _ => None,
        }
    }
}

impl fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::PublicIp(a) | Origin::PrivateIp(a) => write!(f, "{a}"),
            Origin::VpcEndpoint { id, account, addr } => {
                write!(f, "{id}@{}", account.unwrap_or("unknown-account"))?;
                if let Some(a) = addr {
                    write!(f, " ({a})")?;
                }
                Ok(())
            }
            Origin::AwsService(s) | Origin::Opaque(s) => f.write_str(s),
            Origin::AwsInternal => f.write_str("AWS Internal"),
            Origin::Missing => f.write_str("-"),
        }
    }
}

/// Parses an address strictly; IPv4-mapped IPv6 (`::ffff:1.2.3.4`) becomes IPv4.
pub fn parse_ip(raw: &str) -> Option<IpAddr> {
    raw.parse::<IpAddr>().ok().map(|a| a.to_canonical())
}

/// Addresses that are not routable on the internet: RFC 1918, shared (CGNAT), loopback,
/// link-local, unique-local IPv6.
pub fn is_private(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => is_private_v4(a),
        IpAddr::V6(a) => is_private_v6(a),
    }
}

fn is_private_v4(a: Ipv4Addr) -> bool {
    let o = a.octets();
    a.is_private()
        || a.is_loopback()
        || a.is_link_local()
        || a.is_unspecified()
        || (o[0] == 100 && (o[1] & 0xc0) == 64)
}

fn is_private_v6(a: Ipv6Addr) -> bool {
    let s = a.segments();
    a.is_loopback() || a.is_unspecified() || (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfe80
}

/// The origin of one event.
pub fn classify<'a>(ev: &'a CloudTrailEvent<'a>) -> Origin<'a> {
    let src = ev.source_ip_address.as_deref().map(str::trim).unwrap_or("");
    let invoked_by = ev.user_identity.invoked_by.as_deref().unwrap_or("");
    if src.eq_ignore_ascii_case("AWS Internal") || invoked_by.eq_ignore_ascii_case("AWS Internal") {
        return Origin::AwsInternal;
    }
    if let Some(id) = ev.vpc_endpoint_id.as_deref().filter(|v| !v.is_empty()) {
        return Origin::VpcEndpoint {
            id,
            account: ev
                .vpc_endpoint_account_id
                .as_deref()
                .filter(|v| !v.is_empty()),
            addr: parse_ip(src),
        };
    }
    if !invoked_by.is_empty() {
        return Origin::AwsService(invoked_by);
    }
    if src.is_empty() {
        return Origin::Missing;
    }
    if let Some(addr) = parse_ip(src) {
        return if is_private(addr) {
            Origin::PrivateIp(addr)
        } else {
            Origin::PublicIp(addr)
        };
    }
    if src.ends_with(".amazonaws.com") || src.ends_with(".amazonaws.com.cn") {
        return Origin::AwsService(src);
    }
    Origin::Opaque(src)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin_of(fields: &str) -> (OriginClass, String) {
        let json = format!(r#"{{"eventTime":"2024-01-01T00:00:00Z","eventName":"X",{fields}}}"#);
        let ev = CloudTrailEvent::parse(&json).unwrap();
        let o = classify(&ev);
        (o.class(), o.to_string())
    }

    #[test]
    fn origins_are_classified() {
        use OriginClass::*;
        let cases: &[(&str, OriginClass, &str)] = &[
            (
                r#""sourceIPAddress":"18.236.253.47""#,
                PublicIp,
                "18.236.253.47",
            ),
            (r#""sourceIPAddress":"10.1.2.3""#, PrivateIp, "10.1.2.3"),
            (r#""sourceIPAddress":"100.64.0.1""#, PrivateIp, "100.64.0.1"),
            (
                r#""sourceIPAddress":"2600:1f18::1""#,
                PublicIp,
                "2600:1f18::1",
            ),
            (r#""sourceIPAddress":"fd00::1""#, PrivateIp, "fd00::1"),
            (
                r#""sourceIPAddress":"::ffff:54.1.2.3""#,
                PublicIp,
                "54.1.2.3",
            ),
            (
                r#""sourceIPAddress":"::ffff:10.0.0.1""#,
                PrivateIp,
                "10.0.0.1",
            ),
            (
                r#""sourceIPAddress":"075.050.255.67""#,
                Opaque,
                "075.050.255.67",
            ),
            (
                r#""sourceIPAddress":"REDACTED_SOURCE_IP""#,
                Opaque,
                "REDACTED_SOURCE_IP",
            ),
            (r#""sourceIPAddress":"245.1.2.3""#, PublicIp, "245.1.2.3"),
            (
                r#""sourceIPAddress":"AWS Internal""#,
                AwsInternal,
                "AWS Internal",
            ),
            (
                r#""sourceIPAddress":"ec2.amazonaws.com""#,
                AwsService,
                "ec2.amazonaws.com",
            ),
            (
                r#""sourceIPAddress":"1.2.3.4","userIdentity":{"invokedBy":"cloudformation.amazonaws.com"}"#,
                AwsService,
                "cloudformation.amazonaws.com",
            ),
            (
                r#""sourceIPAddress":"10.0.0.5","vpcEndpointId":"vpce-1","vpcEndpointAccountId":"111122223333""#,
                VpcEndpoint,
                "vpce-1@111122223333 (10.0.0.5)",
            ),
            ("\"awsRegion\":\"x\"", Missing, "-"),
        ];
        for (fields, class, text) in cases {
            let (c, t) = origin_of(fields);
            assert_eq!((c, t.as_str()), (*class, *text), "for {fields}");
        }
    }
}
