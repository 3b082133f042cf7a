//! A CloudTrail event builder for the engine-level tests: start from a kind, then adjust fields.
//! Event ids are unique per thread; `t` is kept beside the JSON for sorting.

use std::cell::Cell;

use serde_json::{json, Value};

pub const ACCT: &str = "111122223333";
pub const T0: i64 = 1_722_587_000; // 2024-08-02T08:23:20Z

/// The findings `engine` gives for `events` read in this order, everything settled at the end
/// (as `hunt` does).
pub fn judge_with(
    engine: &credwatch::engine::Engine,
    events: &[Ev],
) -> Vec<credwatch::finding::Finding> {
    let mut out = Vec::new();
    for (i, e) in events.iter().enumerate() {
        out.extend(
            engine
                .process_json(
                    &e.text(),
                    credwatch::engine::Position {
                        prefix: "test",
                        index: i,
                    },
                )
                .expect("event parses"),
        );
    }
    out.extend(engine.settle(credwatch::settle::SettleAt::END));
    out
}

pub fn time(t: i64) -> String {
    credwatch::event::format_time(t)
}

thread_local! {
    static NEXT: Cell<u64> = const { Cell::new(0) };
}

/// A CloudTrail event (as `tests/scenarios.rs` builds them), with its time for sorting.
#[derive(Clone, Debug)]
pub struct Ev {
    pub json: Value,
    pub t: i64,
}

impl Ev {
    pub fn base(name: &str, source: &str, t: i64, ip: &str) -> Ev {
        let n = NEXT.with(|c| {
            let v = c.get() + 1;
            c.set(v);
            v
        });
        Ev {
            json: json!({
                "eventVersion": "1.08",
                "eventID": format!("00000000-0000-4000-8000-{n:012}"),
                "eventTime": time(t),
                "eventName": name,
                "eventSource": source,
                "awsRegion": "us-east-1",
                "sourceIPAddress": ip,
                "userAgent": "aws-cli/2.15",
                "recipientAccountId": ACCT,
                "userIdentity": {"type": "IAMUser", "accountId": ACCT, "accessKeyId": "AKIAUSER", "arn": format!("arn:aws:iam::{ACCT}:user/alice")},
            }),
            t,
        }
    }

    /// A call with an EC2 instance-profile credential `key`, issued at `issued`.
    pub fn ec2_issued(key: &str, instance: &str, ip: &str, t: i64, issued: i64) -> Ev {
        Ev::base("DescribeInstances", "ec2.amazonaws.com", t, ip).identity(json!({
            "type": "AssumedRole",
            "principalId": format!("AROAEXAMPLE:{instance}"),
            "arn": format!("arn:aws:sts::{ACCT}:assumed-role/app-role/{instance}"),
            "accountId": ACCT,
            "accessKeyId": key,
            "sessionContext": {
                "sessionIssuer": {"type": "Role", "arn": format!("arn:aws:iam::{ACCT}:role/app-role"), "userName": "app-role"},
                "attributes": {"creationDate": time(issued), "mfaAuthenticated": "false"},
                "ec2RoleDelivery": "2.0"
            }
        }))
    }

    pub fn ec2(key: &str, instance: &str, ip: &str, t: i64) -> Ev {
        Ev::ec2_issued(key, instance, ip, t, T0 - 600)
    }

    /// A call with an assumed-role credential (a Lambda function's, with the runtime's agent).
    pub fn role(key: &str, session: &str, ip: &str, t: i64) -> Ev {
        Ev::role_of("deployer", key, session, ip, t)
    }

    /// [`Ev::role`] for a role named `role` (a Lambda function's, say).
    pub fn role_of(role: &str, key: &str, session: &str, ip: &str, t: i64) -> Ev {
        Ev::base("ListBuckets", "s3.amazonaws.com", t, ip).identity(json!({
            "type": "AssumedRole",
            "arn": format!("arn:aws:sts::{ACCT}:assumed-role/{role}/{session}"),
            "accountId": ACCT,
            "accessKeyId": key,
            "sessionContext": {"attributes": {"creationDate": time(T0 - 60)}}
        }))
    }

    /// The `AssumeRole` by which `service` (`ec2.amazonaws.com`, `ecs-tasks.amazonaws.com`,
    /// `lambda.amazonaws.com`) issued `key` to the workload `session`, valid until `expires`.
    pub fn issuance(
        service: &str,
        role: &str,
        session: &str,
        key: &str,
        t: i64,
        expires: i64,
    ) -> Ev {
        Ev::base("AssumeRole", "sts.amazonaws.com", t, service)
            .ua(service)
            .identity(json!({"type": "AWSService", "invokedBy": service}))
            .set(
                "requestParameters",
                json!({"roleArn": format!("arn:aws:iam::{ACCT}:role/{role}"), "roleSessionName": session}),
            )
            .set(
                "responseElements",
                json!({
                    "credentials": {"accessKeyId": key, "sessionToken": "redacted", "expiration": time(expires)},
                    "assumedRoleUser": {"arn": format!("arn:aws:sts::{ACCT}:assumed-role/{role}/{session}")}
                }),
            )
    }

    pub fn associate_ip(ip: &str, instance: &str, t: i64) -> Ev {
        Ev::base("AssociateAddress", "ec2.amazonaws.com", t, "198.51.100.7").set(
            "requestParameters",
            json!({"publicIp": ip, "instanceId": instance}),
        )
    }

    pub fn allocate(ip: &str, allocation: &str, t: i64) -> Ev {
        Ev::base("AllocateAddress", "ec2.amazonaws.com", t, "198.51.100.7").set(
            "responseElements",
            json!({"publicIp": ip, "allocationId": allocation, "domain": "vpc"}),
        )
    }

    pub fn associate_allocation(allocation: &str, instance: &str, t: i64) -> Ev {
        Ev::base("AssociateAddress", "ec2.amazonaws.com", t, "198.51.100.7").set(
            "requestParameters",
            json!({"allocationId": allocation, "instanceId": instance}),
        )
    }

    pub fn start(instance: &str, t: i64) -> Ev {
        Ev::base("StartInstances", "ec2.amazonaws.com", t, "198.51.100.7").set(
            "requestParameters",
            json!({"instancesSet": {"items": [{"instanceId": instance}]}}),
        )
    }

    pub fn identity(mut self, id: Value) -> Ev {
        self.json["userIdentity"] = id;
        self
    }
    pub fn set(mut self, k: &str, v: Value) -> Ev {
        self.json[k] = v;
        self
    }
    pub fn name(self, source: &str, name: &str) -> Ev {
        self.set("eventSource", json!(source))
            .set("eventName", json!(name))
    }
    pub fn ua(self, ua: &str) -> Ev {
        self.set("userAgent", json!(ua))
    }
    pub fn region(self, region: &str) -> Ev {
        self.set("awsRegion", json!(region))
    }
    pub fn id(&self) -> &str {
        self.json["eventID"].as_str().unwrap()
    }
    pub fn text(&self) -> String {
        self.json.to_string()
    }
}
