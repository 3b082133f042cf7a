//! What the EC2 control plane told us about instances: addresses they were just given, and
//! restarts that begin a new home.
//!
//! An instance's credentials may legitimately appear from a new address after `AssociateAddress`
//! (an Elastic IP), `AttachNetworkInterface` or `AssignPrivateIpAddresses`. Those calls name an
//! allocation or a network interface rather than the address, so the book also follows
//! `AllocateAddress`, `CreateNetworkInterface` and `RunInstances` responses to resolve them.
//! `StartInstances` and `RunInstances` reset the instance's lock.
//! API reference: <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_AssociateAddress.html>

use std::net::IpAddr;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::origin::parse_ip;
use crate::event::CloudTrailEvent;

/// The most addresses remembered per instance or interface.
const MAX_ADDRS: usize = 32;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InstanceState {
    /// Time of the last StartInstances / RunInstances.
    pub reset_at: Option<i64>,
    /// Addresses credited to the instance, with the call that credited each.
    pub credits: Vec<(IpAddr, String)>,
    pub touched: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InterfaceState {
    pub instance: Option<String>,
    pub addrs: Vec<IpAddr>,
    pub touched: i64,
}

#[derive(Default)]
pub struct InstanceBook {
    instances: DashMap<String, InstanceState>,
    interfaces: DashMap<String, InterfaceState>,
    allocations: DashMap<String, (IpAddr, i64)>,
}

/// The book as data, for checkpoints.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InstanceSnapshot {
    pub instances: Vec<(String, InstanceState)>,
    pub interfaces: Vec<(String, InterfaceState)>,
    pub allocations: Vec<(String, (IpAddr, i64))>,
}

/// Event names the book learns from; everything else skips it cheaply.
pub fn is_relevant(event_name: &str) -> bool {
    matches!(
        event_name,
        "AllocateAddress"
            | "AssociateAddress"
            | "CreateNetworkInterface"
            | "AttachNetworkInterface"
            | "AssignPrivateIpAddresses"
            | "AssignIpv6Addresses"
            | "RunInstances"
            | "StartInstances"
    )
}

fn s<'v>(v: &'v Value, k: &str) -> Option<&'v str> {
    v.get(k).and_then(Value::as_str)
}

/// `{"items":[...]}` or `{"item":[...]}` or a bare array, as EC2's CloudTrail shapes vary.
fn items(v: Option<&Value>) -> Vec<&Value> {
    let Some(v) = v else { return vec![] };
    let inner = v.get("items").or_else(|| v.get("item")).unwrap_or(v);
    match inner {
        Value::Array(a) => a.iter().collect(),
        Value::Object(_) => vec![inner],
        _ => vec![],
    }
}

/// Every address mentioned in an interface description.
fn interface_addrs(ni: &Value) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut push = |x: Option<&str>| {
        if let Some(a) = x.and_then(parse_ip) {
            if !out.contains(&a) {
                out.push(a);
            }
        }
    };
    push(s(ni, "privateIpAddress"));
    push(ni.get("association").and_then(|a| s(a, "publicIp")));
    for p in items(ni.get("privateIpAddressesSet")) {
        push(s(p, "privateIpAddress"));
        push(p.get("association").and_then(|a| s(a, "publicIp")));
    }
    for p in items(ni.get("ipv6AddressesSet")) {
        push(s(p, "ipv6Address"));
    }
    out
}

impl InstanceBook {
    /// Learns from one successful EC2 event at time `t`.
    pub fn observe(&self, ev: &CloudTrailEvent<'_>, t: i64) {
        if !ev.succeeded() || !is_relevant(ev.event_name()) {
            return;
        }
        let req: Value = ev.request().unwrap_or(Value::Null);
        let resp: Value = ev.response().unwrap_or(Value::Null);
        let call = format!("{} {}", ev.event_name(), ev.event_id());
        match ev.event_name() {
            "AllocateAddress" => {
                if let (Some(id), Some(ip)) = (
                    s(&resp, "allocationId"),
                    s(&resp, "publicIp").and_then(parse_ip),
                ) {
                    self.allocations.insert(id.to_string(), (ip, t));
                }
            }
            "AssociateAddress" => {
                let ip = s(&req, "publicIp").and_then(parse_ip).or_else(|| {
                    s(&req, "allocationId").and_then(|a| self.allocations.get(a).map(|e| e.0))
                });
                let instance = s(&req, "instanceId")
                    .map(str::to_ascii_lowercase)
                    .or_else(|| {
                        s(&req, "networkInterfaceId")
                            .and_then(|n| self.interfaces.get(n).and_then(|i| i.instance.clone()))
                    });
                if let Some(eni) = s(&req, "networkInterfaceId") {
                    if let Some(ip) = ip {
                        self.add_interface_addrs(eni, None, &[ip], t);
                    }
                }
                if let (Some(i), Some(ip)) = (instance, ip) {
                    self.credit(&i, &[ip], &call, t);
                }
            }
            "CreateNetworkInterface" => {
                if let Some(ni) = resp.get("networkInterface") {
                    if let Some(id) = s(ni, "networkInterfaceId") {
                        let addrs = interface_addrs(ni);
                        self.add_interface_addrs(id, None, &addrs, t);
                    }
                }
            }
            "AttachNetworkInterface" => {
                if let (Some(eni), Some(i)) = (s(&req, "networkInterfaceId"), s(&req, "instanceId"))
                {
                    let i = i.to_ascii_lowercase();
                    let addrs = self.add_interface_addrs(eni, Some(&i), &[], t);
                    self.credit(&i, &addrs, &call, t);
                }
            }
            "AssignPrivateIpAddresses" | "AssignIpv6Addresses" => {
                let Some(eni) = s(&req, "networkInterfaceId") else {
                    return;
                };
                let mut addrs = Vec::new();
                for set in ["privateIpAddressesSet", "ipv6Addresses", "ipv6AddressesSet"] {
                    for p in items(req.get(set)) {
                        for k in ["privateIpAddress", "ipv6Address"] {
                            if let Some(a) = s(p, k).and_then(parse_ip) {
                                addrs.push(a);
                            }
                        }
                        if let Some(a) = p.as_str().and_then(parse_ip) {
                            addrs.push(a);
                        }
                    }
                }
                for set in ["assignedPrivateIpAddressesSet", "assignedIpv6Addresses"] {
                    for p in items(resp.get(set)) {
                        if let Some(a) = s(p, "privateIpAddress").and_then(parse_ip) {
                            addrs.push(a);
                        }
                        if let Some(a) = p.as_str().and_then(parse_ip) {
                            addrs.push(a);
                        }
                    }
                }
                let all = self.add_interface_addrs(eni, None, &addrs, t);
                let instance = self.interfaces.get(eni).and_then(|i| i.instance.clone());
                if let Some(i) = instance {
                    let fresh: Vec<IpAddr> =
                        all.into_iter().filter(|a| addrs.contains(a)).collect();
                    self.credit(&i, &fresh, &call, t);
                }
            }
            "RunInstances" => {
                for inst in items(resp.get("instancesSet")) {
                    let Some(i) = s(inst, "instanceId").map(str::to_ascii_lowercase) else {
                        continue;
                    };
                    self.reset(&i, t);
                    for ni in items(inst.get("networkInterfaceSet")) {
                        if let Some(eni) = s(ni, "networkInterfaceId") {
                            self.add_interface_addrs(eni, Some(&i), &interface_addrs(ni), t);
                        }
                    }
                }
            }
            "StartInstances" => {
                for inst in items(req.get("instancesSet")) {
                    if let Some(i) = s(inst, "instanceId") {
                        self.reset(&i.to_ascii_lowercase(), t);
                    }
                }
            }
            _ => {}
        }
    }

    fn reset(&self, instance: &str, t: i64) {
        let mut e = self.instances.entry(instance.to_string()).or_default();
        e.reset_at = Some(e.reset_at.map_or(t, |r| r.max(t)));
        e.touched = e.touched.max(t);
    }

    fn credit(&self, instance: &str, addrs: &[IpAddr], call: &str, t: i64) {
        if addrs.is_empty() {
            return;
        }
        let mut e = self.instances.entry(instance.to_string()).or_default();
        for a in addrs {
            if !e.credits.iter().any(|(x, _)| x == a) && e.credits.len() < MAX_ADDRS {
                e.credits.push((*a, call.to_string()));
            }
        }
        e.touched = e.touched.max(t);
    }

    /// Adds addresses (and the owning instance) to an interface; returns all its addresses.
    fn add_interface_addrs(
        &self,
        eni: &str,
        instance: Option<&str>,
        addrs: &[IpAddr],
        t: i64,
    ) -> Vec<IpAddr> {
        let mut e = self.interfaces.entry(eni.to_string()).or_default();
        if let Some(i) = instance {
            e.instance = Some(i.to_string());
        }
        for a in addrs {
            if !e.addrs.contains(a) && e.addrs.len() < MAX_ADDRS {
                e.addrs.push(*a);
            }
        }
        e.touched = e.touched.max(t);
        e.addrs.clone()
    }

    /// The call that credited `addr` to `instance`, if any.
    pub fn credit_for(&self, instance: &str, addr: IpAddr) -> Option<String> {
        let e = self.instances.get(instance)?;
        e.credits
            .iter()
            .find(|(a, _)| *a == addr)
            .map(|(_, c)| c.clone())
    }

    /// Addresses credited to an instance (for evidence).
    pub fn credits(&self, instance: &str) -> Vec<IpAddr> {
        self.instances
            .get(instance)
            .map(|e| e.credits.iter().map(|c| c.0).collect())
            .unwrap_or_default()
    }

    pub fn reset_at(&self, instance: &str) -> Option<i64> {
        self.instances.get(instance).and_then(|e| e.reset_at)
    }

    /// Forgets what was last touched before `before`.
    pub fn sweep(&self, before: i64) {
        self.instances.retain(|_, e| e.touched >= before);
        self.interfaces.retain(|_, e| e.touched >= before);
        self.allocations.retain(|_, e| e.1 >= before);
    }

    pub fn len(&self) -> usize {
        self.instances.len() + self.interfaces.len() + self.allocations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn snapshot(&self) -> InstanceSnapshot {
        InstanceSnapshot {
            instances: self
                .instances
                .iter()
                .map(|e| (e.key().clone(), e.value().clone()))
                .collect(),
            interfaces: self
                .interfaces
                .iter()
                .map(|e| (e.key().clone(), e.value().clone()))
                .collect(),
            allocations: self
                .allocations
                .iter()
                .map(|e| (e.key().clone(), *e.value()))
                .collect(),
        }
    }

    pub fn restore(&self, s: &InstanceSnapshot) {
        for (k, v) in &s.instances {
            self.instances.insert(k.clone(), v.clone());
        }
        for (k, v) in &s.interfaces {
            self.interfaces.insert(k.clone(), v.clone());
        }
        for (k, v) in &s.allocations {
            self.allocations.insert(k.clone(), *v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(book: &InstanceBook, name: &str, req: &str, resp: &str) {
        let json = format!(
            r#"{{"eventID":"e-{name}","eventTime":"2024-01-01T00:00:00Z","eventName":"{name}","requestParameters":{req},"responseElements":{resp}}}"#
        );
        book.observe(&CloudTrailEvent::parse(&json).unwrap(), 100);
    }

    #[test]
    fn addresses_are_credited_to_the_instance_they_were_given_to() {
        let book = InstanceBook::default();
        feed(
            &book,
            "AllocateAddress",
            "{}",
            r#"{"publicIp":"54.1.1.1","allocationId":"eipalloc-1"}"#,
        );
        feed(
            &book,
            "AssociateAddress",
            r#"{"allocationId":"eipalloc-1","instanceId":"i-0AB"}"#,
            "{}",
        );
        assert!(book
            .credit_for("i-0ab", "54.1.1.1".parse().unwrap())
            .is_some());

        feed(
            &book,
            "AssociateAddress",
            r#"{"publicIp":"54.2.2.2","instanceId":"i-1"}"#,
            "{}",
        );
        assert!(book
            .credit_for("i-1", "54.2.2.2".parse().unwrap())
            .is_some());
        assert!(book
            .credit_for("i-1", "54.1.1.1".parse().unwrap())
            .is_none());

        feed(
            &book,
            "CreateNetworkInterface",
            "{}",
            r#"{"networkInterface":{"networkInterfaceId":"eni-1","privateIpAddress":"10.0.0.9"}}"#,
        );
        feed(
            &book,
            "AttachNetworkInterface",
            r#"{"networkInterfaceId":"eni-1","instanceId":"i-2"}"#,
            "{}",
        );
        assert!(book
            .credit_for("i-2", "10.0.0.9".parse().unwrap())
            .is_some());

        feed(
            &book,
            "AssignPrivateIpAddresses",
            r#"{"networkInterfaceId":"eni-1","privateIpAddressesSet":{"item":[{"privateIpAddress":"10.0.0.10"}]}}"#,
            "{}",
        );
        assert!(book
            .credit_for("i-2", "10.0.0.10".parse().unwrap())
            .is_some());
    }

    #[test]
    fn start_and_run_reset_the_instance() {
        let book = InstanceBook::default();
        feed(
            &book,
            "StartInstances",
            r#"{"instancesSet":{"items":[{"instanceId":"i-9"}]}}"#,
            "{}",
        );
        assert_eq!(book.reset_at("i-9"), Some(100));
        feed(
            &book,
            "RunInstances",
            "{}",
            r#"{"instancesSet":{"items":[{"instanceId":"i-8"}]}}"#,
        );
        assert_eq!(book.reset_at("i-8"), Some(100));
    }

    #[test]
    fn failed_calls_credit_nothing() {
        let book = InstanceBook::default();
        let json = r#"{"eventTime":"2024-01-01T00:00:00Z","eventName":"AssociateAddress","errorCode":"UnauthorizedOperation","requestParameters":{"publicIp":"54.2.2.2","instanceId":"i-1"}}"#;
        book.observe(&CloudTrailEvent::parse(json).unwrap(), 1);
        assert!(book.credits("i-1").is_empty());
    }
}
