//! Between refreshes, the stream keeps the inventory current: a VPC endpoint or a NAT gateway
//! created in one of our accounts is ours from its `CreateVpcEndpoint` / `CreateNatGateway`
//! event on, not from the next refresh. (Addresses given to instances are the instance book's:
//! `AssociateAddress` joined with the inventory's allocations, see `engine::instances`.)
//!
//! EC2 writes its responses into CloudTrail in more than one shape (`{"CreateVpcEndpointResponse":
//! {"vpcEndpoint": {...}}}`, or the object itself), so the fields are looked for at any depth.
//! <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateVpcEndpoint.html>,
//! <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateNatGateway.html>

use std::net::IpAddr;

use serde_json::Value;

use super::model::{AccountRegion, EndpointRec, NatGatewayRec};
use super::{Inventory, InventorySnapshot};
use crate::event::CloudTrailEvent;

/// Event names the inventory learns from.
pub fn observes(event_name: &str) -> bool {
    matches!(event_name, "CreateVpcEndpoint" | "CreateNatGateway")
}

/// The first string value of `key` at any depth.
fn find<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    match v {
        Value::Object(m) => m
            .get(key)
            .and_then(Value::as_str)
            .or_else(|| m.values().find_map(|x| find(x, key))),
        Value::Array(a) => a.iter().find_map(|x| find(x, key)),
        _ => None,
    }
}

/// Every string value of `key` at any depth.
fn find_all<'v>(v: &'v Value, key: &str, out: &mut Vec<&'v str>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match x.as_str() {
                    Some(s) if k == key => out.push(s),
                    _ => find_all(x, key, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| find_all(x, key, out)),
        _ => {}
    }
}

impl Inventory {
    /// Learns from a successful `CreateVpcEndpoint` / `CreateNatGateway` of an inventoried
    /// account. Returns whether it learnt something.
    pub fn observe(&self, ev: &CloudTrailEvent<'_>) -> bool {
        if !observes(ev.event_name()) || !ev.succeeded() {
            return false;
        }
        let Some(resp) = ev.response::<Value>() else {
            return false;
        };
        let account = ev
            .recipient_account_id
            .as_deref()
            .or(ev.account_id())
            .unwrap_or("")
            .to_string();
        let region = ev.aws_region.as_deref().unwrap_or("").to_string();
        let snap = self.snapshot();
        // Only accounts we read: an event of another account's trail says nothing of ours.
        if !snap.has_account(&account) {
            return false;
        }
        let vpc_id = find(&resp, "vpcId").map(str::to_string);
        let mut parts = snap.parts.clone();
        let part = match parts
            .iter()
            .position(|p| p.account == account && p.region == region)
        {
            Some(i) => &mut parts[i],
            None => {
                parts.push(AccountRegion {
                    account,
                    region,
                    ..AccountRegion::default()
                });
                parts.last_mut().expect("just pushed")
            }
        };
        match ev.event_name() {
            "CreateVpcEndpoint" => {
                let Some(id) = find(&resp, "vpcEndpointId") else {
                    return false;
                };
                if snap.endpoint(id).is_some() {
                    return false;
                }
                part.endpoints.push(EndpointRec {
                    id: id.to_string(),
                    vpc_id,
                    service_name: find(&resp, "serviceName").map(str::to_string),
                });
            }
            _ => {
                let Some(id) = find(&resp, "natGatewayId") else {
                    return false;
                };
                let mut ips = Vec::new();
                find_all(&resp, "publicIp", &mut ips);
                let public_ips: Vec<IpAddr> = ips.iter().filter_map(|s| s.parse().ok()).collect();
                if public_ips.is_empty() {
                    return false;
                }
                part.nat_gateways.push(NatGatewayRec {
                    id: id.to_string(),
                    vpc_id,
                    public_ips,
                    private_ips: vec![],
                });
            }
        }
        self.replace(InventorySnapshot::new(parts));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv() -> Inventory {
        Inventory::new(InventorySnapshot::new(vec![AccountRegion {
            account: "111122223333".into(),
            region: "us-east-1".into(),
            ..AccountRegion::default()
        }]))
    }

    fn event(name: &str, account: &str, resp: &str) -> String {
        format!(
            r#"{{"eventTime":"2024-08-01T00:00:00Z","eventName":"{name}","eventSource":"ec2.amazonaws.com","awsRegion":"us-east-1","recipientAccountId":"{account}","responseElements":{resp}}}"#
        )
    }

    #[test]
    fn endpoints_and_nat_gateways_created_in_the_stream_are_ours_at_once() {
        let i = inv();
        let e = event(
            "CreateVpcEndpoint",
            "111122223333",
            r#"{"CreateVpcEndpointResponse":{"vpcEndpoint":{"vpcEndpointId":"vpce-0new","vpcId":"vpc-1","serviceName":"com.amazonaws.us-east-1.s3"}}}"#,
        );
        assert!(i.observe(&CloudTrailEvent::parse(&e).unwrap()));
        assert_eq!(
            i.snapshot()
                .endpoint("vpce-0new")
                .unwrap()
                .0
                .vpc_id
                .as_deref(),
            Some("vpc-1")
        );
        let n = event(
            "CreateNatGateway",
            "111122223333",
            r#"{"CreateNatGatewayResponse":{"natGateway":{"natGatewayId":"nat-0new","vpcId":"vpc-1","natGatewayAddressSet":{"item":[{"allocationId":"eipalloc-1","publicIp":"52.200.9.9"}]}}}}"#,
        );
        assert!(i.observe(&CloudTrailEvent::parse(&n).unwrap()));
        let owners = i.snapshot().owners("52.200.9.9".parse().unwrap()).len();
        assert_eq!(owners, 1);
    }

    #[test]
    fn another_accounts_events_and_failed_calls_teach_nothing() {
        let i = inv();
        let resp = r#"{"vpcEndpoint":{"vpcEndpointId":"vpce-0x"}}"#;
        let e = event("CreateVpcEndpoint", "999999999999", resp);
        assert!(!i.observe(&CloudTrailEvent::parse(&e).unwrap()));
        let failed = event("CreateVpcEndpoint", "111122223333", resp).replace(
            "\"eventName\"",
            "\"errorCode\":\"UnauthorizedOperation\",\"eventName\"",
        );
        assert!(!i.observe(&CloudTrailEvent::parse(&failed).unwrap()));
        assert!(i.snapshot().endpoint("vpce-0x").is_none());
    }
}
