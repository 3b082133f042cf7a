//! What the EC2 control plane told us about instances: addresses they were given, and restarts.
//!
//! An instance's credentials may legitimately appear from a new address after `AssociateAddress`
//! (an Elastic IP), `AttachNetworkInterface` or `AssignPrivateIpAddresses`. Those calls name an
//! allocation or a network interface rather than the address, so the book also follows
//! `AllocateAddress`, `CreateNetworkInterface` and `RunInstances` responses.
//!
//! The book keeps *facts with their event times* and joins them when asked, so it gives the same
//! answer whatever order the events arrived in: an `AssociateAddress` read before the
//! `AllocateAddress` that names its address still credits the address once both are known, and
//! an address counts for a use only if the call that gave it is not later than the use.
//! Allocations and interfaces live until `ReleaseAddress` / `DeleteNetworkInterface` (and a
//! window after, for late events); the whole book is bounded by `detection.max_book_entries`,
//! oldest first, with the evictions counted.
//! API reference: <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_AssociateAddress.html>

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::origin::parse_ip;
use crate::event::CloudTrailEvent;

/// The most facts remembered per instance, interface or list.
const MAX_FACTS: usize = 32;

/// A call that gave something at a time: `"AssociateAddress <eventID>"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Given<T> {
    pub what: T,
    pub time: i64,
    pub call: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InstanceState {
    /// Times of StartInstances / RunInstances, ascending.
    pub resets: Vec<i64>,
    /// Addresses given by name (`AssociateAddress` with `publicIp`).
    pub addrs: Vec<Given<IpAddr>>,
    /// Elastic IP allocations associated with the instance.
    pub allocations: Vec<Given<String>>,
    /// Interfaces attached to the instance (all their addresses count).
    pub attached: Vec<Given<String>>,
    /// Interfaces the instance was launched with (addresses assigned to them later count).
    pub launched: Vec<String>,
    pub touched: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InterfaceState {
    /// Addresses of the interface; `assigned` ones were added after it was created.
    pub addrs: Vec<(Given<IpAddr>, bool)>,
    /// Elastic IP allocations associated with the interface.
    pub allocations: Vec<Given<String>>,
    pub deleted: Option<i64>,
    pub touched: i64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct AllocationState {
    pub ip: Option<IpAddr>,
    pub released: Option<i64>,
    pub touched: i64,
}

#[derive(Default)]
pub struct InstanceBook {
    instances: DashMap<String, InstanceState>,
    interfaces: DashMap<String, InterfaceState>,
    allocations: DashMap<String, AllocationState>,
    /// Entries dropped because the book was full.
    pub evicted: AtomicU64,
    /// Elastic IP allocations the stream never named the address of are looked up here
    /// (an allocation made before the data begins: `AssociateAddress` names no address).
    inventory: std::sync::OnceLock<std::sync::Arc<crate::inventory::Inventory>>,
}

/// The book as data, for checkpoints.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InstanceSnapshot {
    pub instances: Vec<(String, InstanceState)>,
    pub interfaces: Vec<(String, InterfaceState)>,
    #[serde(default)]
    pub allocations: Vec<(String, AllocationState)>,
}

/// Event names the book learns from; everything else skips it cheaply.
pub fn is_relevant(event_name: &str) -> bool {
    matches!(
        event_name,
        "AllocateAddress"
            | "AssociateAddress"
            | "ReleaseAddress"
            | "CreateNetworkInterface"
            | "AttachNetworkInterface"
            | "DeleteNetworkInterface"
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

/// Adds a fact, keeping the earliest time of equal facts (so arrival order does not matter).
fn add<T: PartialEq + Clone>(list: &mut Vec<Given<T>>, what: T, time: i64, call: &str) {
    if let Some(g) = list.iter_mut().find(|g| g.what == what) {
        if time < g.time {
            g.time = time;
            g.call = call.to_string();
        }
        return;
    }
    if list.len() < MAX_FACTS {
        list.push(Given {
            what,
            time,
            call: call.to_string(),
        });
    }
}

impl InstanceBook {
    /// Learns from one successful EC2 event at time `t`. Applying an event twice changes nothing.
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
                    let mut a = self.allocations.entry(id.to_string()).or_default();
                    a.ip = Some(ip);
                    a.touched = a.touched.max(t);
                }
            }
            "AssociateAddress" => {
                let ip = s(&req, "publicIp").and_then(parse_ip);
                let alloc = s(&req, "allocationId");
                if let Some(a) = alloc {
                    let mut e = self.allocations.entry(a.to_string()).or_default();
                    e.touched = e.touched.max(t);
                }
                if let Some(i) = s(&req, "instanceId").map(str::to_ascii_lowercase) {
                    let mut e = self.instances.entry(i).or_default();
                    if let Some(ip) = ip {
                        add(&mut e.addrs, ip, t, &call);
                    }
                    if let Some(a) = alloc {
                        add(&mut e.allocations, a.to_string(), t, &call);
                    }
                    e.touched = e.touched.max(t);
                } else if let Some(eni) = s(&req, "networkInterfaceId") {
                    let mut e = self.interfaces.entry(eni.to_string()).or_default();
                    if let Some(ip) = ip {
                        add_addr(&mut e, ip, t, &call, true);
                    }
                    if let Some(a) = alloc {
                        add(&mut e.allocations, a.to_string(), t, &call);
                    }
                    e.touched = e.touched.max(t);
                }
            }
            "ReleaseAddress" => {
                if let Some(a) = s(&req, "allocationId") {
                    let mut e = self.allocations.entry(a.to_string()).or_default();
                    e.released = Some(e.released.map_or(t, |r| r.min(t)));
                    e.touched = e.touched.max(t);
                }
            }
            "CreateNetworkInterface" => {
                if let Some(ni) = resp.get("networkInterface") {
                    if let Some(id) = s(ni, "networkInterfaceId") {
                        let mut e = self.interfaces.entry(id.to_string()).or_default();
                        for a in interface_addrs(ni) {
                            add_addr(&mut e, a, t, &call, false);
                        }
                        e.touched = e.touched.max(t);
                    }
                }
            }
            "AttachNetworkInterface" => {
                if let (Some(eni), Some(i)) = (s(&req, "networkInterfaceId"), s(&req, "instanceId"))
                {
                    let mut e = self.instances.entry(i.to_ascii_lowercase()).or_default();
                    add(&mut e.attached, eni.to_string(), t, &call);
                    e.touched = e.touched.max(t);
                }
            }
            "DeleteNetworkInterface" => {
                if let Some(eni) = s(&req, "networkInterfaceId") {
                    let mut e = self.interfaces.entry(eni.to_string()).or_default();
                    e.deleted = Some(e.deleted.map_or(t, |d| d.min(t)));
                    e.touched = e.touched.max(t);
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
                            addrs.extend(s(p, k).and_then(parse_ip));
                        }
                        addrs.extend(p.as_str().and_then(parse_ip));
                    }
                }
                for set in ["assignedPrivateIpAddressesSet", "assignedIpv6Addresses"] {
                    for p in items(resp.get(set)) {
                        addrs.extend(s(p, "privateIpAddress").and_then(parse_ip));
                        addrs.extend(p.as_str().and_then(parse_ip));
                    }
                }
                let mut e = self.interfaces.entry(eni.to_string()).or_default();
                for a in addrs {
                    add_addr(&mut e, a, t, &call, true);
                }
                e.touched = e.touched.max(t);
            }
            "RunInstances" => {
                for inst in items(resp.get("instancesSet")) {
                    let Some(i) = s(inst, "instanceId").map(str::to_ascii_lowercase) else {
                        continue;
                    };
                    let mut enis = Vec::new();
                    for ni in items(inst.get("networkInterfaceSet")) {
                        if let Some(eni) = s(ni, "networkInterfaceId") {
                            let mut e = self.interfaces.entry(eni.to_string()).or_default();
                            for a in interface_addrs(ni) {
                                add_addr(&mut e, a, t, &call, false);
                            }
                            e.touched = e.touched.max(t);
                            enis.push(eni.to_string());
                        }
                    }
                    self.reset(&i, t);
                    let mut e = self.instances.entry(i).or_default();
                    for eni in enis {
                        if !e.launched.contains(&eni) && e.launched.len() < MAX_FACTS {
                            e.launched.push(eni);
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

    /// Looks up allocations the stream did not name the address of in `inv`.
    pub fn set_inventory(&self, inv: std::sync::Arc<crate::inventory::Inventory>) {
        let _ = self.inventory.set(inv);
    }

    fn reset(&self, instance: &str, t: i64) {
        let mut e = self.instances.entry(instance.to_string()).or_default();
        if let Err(at) = e.resets.binary_search(&t) {
            e.resets.insert(at, t);
            if e.resets.len() > MAX_FACTS {
                e.resets.remove(0);
            }
        }
        e.touched = e.touched.max(t);
    }

    /// Every address credited to `instance` by a call at or before `at`: `f(addr, time, call)`.
    fn each_credit(&self, instance: &str, at: i64, mut f: impl FnMut(IpAddr, i64, &str)) {
        // Read guards, no copies (this runs for every call of an instance session from a new
        // origin). Lock order: `instances`, then `interfaces` / `allocations`, read only;
        // `observe` never holds one map's entry while it takes another's.
        let Some(inst) = self.instances.get(instance) else {
            return;
        };
        let alloc_ip = |id: &str| {
            self.allocations.get(id).and_then(|a| a.ip).or_else(|| {
                self.inventory
                    .get()
                    .and_then(|inv| inv.snapshot().allocation(id))
            })
        };
        for g in inst.addrs.iter().filter(|g| g.time <= at) {
            f(g.what, g.time, &g.call);
        }
        for g in inst.allocations.iter().filter(|g| g.time <= at) {
            if let Some(ip) = alloc_ip(&g.what) {
                f(ip, g.time, &g.call);
            }
        }
        let mut from_interface = |eni: &str, since: Option<(i64, &str)>| {
            let Some(ni) = self.interfaces.get(eni) else {
                return;
            };
            for (g, assigned) in &ni.addrs {
                match since {
                    // Attached: every address of the interface, from the later of the two calls.
                    Some((ta, call)) => {
                        let (time, call) = if g.time > ta {
                            (g.time, g.call.as_str())
                        } else {
                            (ta, call)
                        };
                        if time <= at {
                            f(g.what, time, call);
                        }
                    }
                    // Launched with it: only what was assigned later.
                    None if *assigned && g.time <= at => f(g.what, g.time, &g.call),
                    None => {}
                }
            }
            for g in &ni.allocations {
                let time = since.map_or(g.time, |(ta, _)| ta.max(g.time));
                if time <= at {
                    if let Some(ip) = alloc_ip(&g.what) {
                        f(ip, time, &g.call);
                    }
                }
            }
        };
        for g in &inst.attached {
            from_interface(&g.what, Some((g.time, &g.call)));
        }
        for eni in &inst.launched {
            from_interface(eni, None);
        }
    }

    /// The call that credited `addr` to `instance` at or before `at` (the earliest), if any.
    pub fn credit_for(&self, instance: &str, addr: IpAddr, at: i64) -> Option<String> {
        let mut best: Option<(i64, String)> = None;
        self.each_credit(instance, at, |a, t, call| {
            if a == addr && best.as_ref().is_none_or(|(bt, _)| t < *bt) {
                best = Some((t, call.to_string()));
            }
        });
        best.map(|(_, c)| c)
    }

    /// Addresses credited to an instance at or before `at` (for evidence), sorted.
    pub fn credits(&self, instance: &str, at: i64) -> Vec<IpAddr> {
        let mut out = Vec::new();
        self.each_credit(instance, at, |a, _, _| out.push(a));
        out.sort();
        out.dedup();
        out
    }

    /// The first restart of `instance` in `(after, upto]`.
    pub fn reset_between(&self, instance: &str, after: i64, upto: i64) -> Option<i64> {
        let e = self.instances.get(instance)?;
        e.resets.iter().copied().find(|r| *r > after && *r <= upto)
    }

    /// The last restart of `instance` at or before `at`.
    pub fn reset_before(&self, instance: &str, at: i64) -> Option<i64> {
        let e = self.instances.get(instance)?;
        e.resets.iter().copied().rev().find(|r| *r <= at)
    }

    /// Forgets released allocations and deleted interfaces whose end is before `horizon`; then,
    /// past `max_entries`, the entries touched longest ago (counted in `evicted`). Returns how
    /// many entries were removed.
    pub fn sweep(&self, horizon: i64, max_entries: usize) -> usize {
        let before = self.len();
        self.allocations
            .retain(|_, a| a.released.is_none_or(|r| r >= horizon));
        self.interfaces
            .retain(|_, i| i.deleted.is_none_or(|d| d >= horizon));
        let len = self.len();
        if len > max_entries {
            let mut touched: Vec<i64> = self
                .instances
                .iter()
                .map(|e| e.touched)
                .chain(self.interfaces.iter().map(|e| e.touched))
                .chain(self.allocations.iter().map(|e| e.touched))
                .collect();
            let cut = len - max_entries;
            let (_, nth, _) = touched.select_nth_unstable(cut - 1);
            let threshold = *nth;
            let mut budget = cut;
            let mut take = |t: i64| {
                let drop = budget > 0 && t <= threshold;
                if drop {
                    budget -= 1;
                }
                !drop
            };
            self.instances.retain(|_, e| take(e.touched));
            self.interfaces.retain(|_, e| take(e.touched));
            self.allocations.retain(|_, e| take(e.touched));
            self.evicted.fetch_add((cut - budget) as u64, Relaxed);
        }
        before - self.len()
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

fn add_addr(e: &mut InterfaceState, a: IpAddr, t: i64, call: &str, assigned: bool) {
    if let Some((g, was_assigned)) = e.addrs.iter_mut().find(|(g, _)| g.what == a) {
        if t < g.time {
            g.time = t;
            g.call = call.to_string();
            *was_assigned = assigned;
        }
        return;
    }
    if e.addrs.len() < MAX_FACTS {
        e.addrs.push((
            Given {
                what: a,
                time: t,
                call: call.to_string(),
            },
            assigned,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_at(book: &InstanceBook, name: &str, req: &str, resp: &str, t: i64) {
        let json = format!(
            r#"{{"eventID":"e-{name}-{t}","eventTime":"2024-01-01T00:00:00Z","eventName":"{name}","requestParameters":{req},"responseElements":{resp}}}"#
        );
        book.observe(&CloudTrailEvent::parse(&json).unwrap(), t);
    }

    fn feed(book: &InstanceBook, name: &str, req: &str, resp: &str) {
        feed_at(book, name, req, resp, 100);
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
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
        assert!(book.credit_for("i-0ab", ip("54.1.1.1"), 100).is_some());

        feed(
            &book,
            "AssociateAddress",
            r#"{"publicIp":"54.2.2.2","instanceId":"i-1"}"#,
            "{}",
        );
        assert!(book.credit_for("i-1", ip("54.2.2.2"), 100).is_some());
        assert!(book.credit_for("i-1", ip("54.1.1.1"), 100).is_none());

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
        assert!(book.credit_for("i-2", ip("10.0.0.9"), 100).is_some());

        feed(
            &book,
            "AssignPrivateIpAddresses",
            r#"{"networkInterfaceId":"eni-1","privateIpAddressesSet":{"item":[{"privateIpAddress":"10.0.0.10"}]}}"#,
            "{}",
        );
        assert!(book.credit_for("i-2", ip("10.0.0.10"), 100).is_some());
    }

    #[test]
    fn a_credit_counts_only_for_uses_at_or_after_the_call() {
        let book = InstanceBook::default();
        feed_at(
            &book,
            "AssociateAddress",
            r#"{"publicIp":"54.2.2.2","instanceId":"i-1"}"#,
            "{}",
            500,
        );
        assert!(book.credit_for("i-1", ip("54.2.2.2"), 499).is_none());
        assert!(book.credit_for("i-1", ip("54.2.2.2"), 500).is_some());
    }

    #[test]
    fn the_book_gives_the_same_credits_whatever_order_the_calls_arrive_in() {
        let calls = [
            (
                "AllocateAddress",
                "{}",
                r#"{"publicIp":"54.1.1.1","allocationId":"eipalloc-1"}"#,
                10,
            ),
            (
                "AssociateAddress",
                r#"{"allocationId":"eipalloc-1","instanceId":"i-1"}"#,
                "{}",
                20,
            ),
            (
                "CreateNetworkInterface",
                "{}",
                r#"{"networkInterface":{"networkInterfaceId":"eni-1","privateIpAddress":"10.0.0.9"}}"#,
                30,
            ),
            (
                "AttachNetworkInterface",
                r#"{"networkInterfaceId":"eni-1","instanceId":"i-1"}"#,
                "{}",
                40,
            ),
        ];
        for order in [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]] {
            let book = InstanceBook::default();
            for i in order {
                let (n, req, resp, t) = calls[i];
                feed_at(&book, n, req, resp, t);
            }
            assert_eq!(
                book.credits("i-1", 100),
                vec![ip("10.0.0.9"), ip("54.1.1.1")],
                "{order:?}"
            );
            assert!(book.credit_for("i-1", ip("10.0.0.9"), 35).is_none());
        }
    }

    #[test]
    fn an_allocation_lives_until_it_is_released_not_for_a_window() {
        let book = InstanceBook::default();
        let day = 86_400;
        feed_at(
            &book,
            "AllocateAddress",
            "{}",
            r#"{"publicIp":"54.1.1.1","allocationId":"eipalloc-1"}"#,
            day,
        );
        book.sweep(3 * day, usize::MAX);
        feed_at(
            &book,
            "AssociateAddress",
            r#"{"allocationId":"eipalloc-1","instanceId":"i-1"}"#,
            "{}",
            3 * day,
        );
        assert!(book
            .credit_for("i-1", ip("54.1.1.1"), 3 * day + 5)
            .is_some());
        feed_at(
            &book,
            "ReleaseAddress",
            r#"{"allocationId":"eipalloc-1"}"#,
            "{}",
            4 * day,
        );
        book.sweep(5 * day, usize::MAX);
        assert!(book
            .credit_for("i-1", ip("54.1.1.1"), 3 * day + 5)
            .is_none());
    }

    #[test]
    fn a_full_book_drops_the_oldest_entries_and_counts_them() {
        let book = InstanceBook::default();
        for i in 0..10 {
            feed_at(
                &book,
                "StartInstances",
                &format!(r#"{{"instancesSet":{{"items":[{{"instanceId":"i-{i}"}}]}}}}"#),
                "{}",
                i,
            );
        }
        book.sweep(0, 4);
        assert_eq!(book.len(), 4);
        assert_eq!(book.evicted.load(Relaxed), 6);
        assert!(book.reset_before("i-9", 100).is_some());
        assert!(book.reset_before("i-0", 100).is_none());
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
        assert_eq!(book.reset_between("i-9", 50, 150), Some(100));
        assert_eq!(book.reset_between("i-9", 100, 150), None);
        feed(
            &book,
            "RunInstances",
            "{}",
            r#"{"instancesSet":{"items":[{"instanceId":"i-8"}]}}"#,
        );
        assert_eq!(book.reset_before("i-8", 100), Some(100));
    }

    #[test]
    fn failed_calls_credit_nothing() {
        let book = InstanceBook::default();
        let json = r#"{"eventTime":"2024-01-01T00:00:00Z","eventName":"AssociateAddress","errorCode":"UnauthorizedOperation","requestParameters":{"publicIp":"54.2.2.2","instanceId":"i-1"}}"#;
        book.observe(&CloudTrailEvent::parse(json).unwrap(), 1);
        assert!(book.credits("i-1", 10).is_empty());
    }
}
