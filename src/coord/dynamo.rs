//! The thin DynamoDB layer: the lease table (KCL v2 attribute names) and the state table
//! (first origin per session, claims of findings). Every decision is made in [`super::lease`]
//! or by the engine; this file only turns them into conditional writes and reads.
//! API: <https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_UpdateItem.html>

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TableStatus, TimeToLiveSpecification,
};
use aws_sdk_dynamodb::Client;

use super::lease::{Lease, Renewal};
use crate::engine::store::{HomeEvidence, HomeTag};

/// A DynamoDB item.
pub type Item = HashMap<String, AttributeValue>;

const LEASE_KEY: &str = "leaseKey";
const STATE_KEY: &str = "pk";
/// The control-plane log's entry counter.
const CONTROL_HEAD: &str = "ec2log#head";
/// The state table's TTL attribute (epoch seconds).
pub const TTL_ATTRIBUTE: &str = "ttl";
/// Items outlive the session they describe by this much before DynamoDB may delete them.
const TTL_SLACK_SECS: i64 = 3600;
/// Claims outlive the stream's retention (at most 365 days; 7 is the longest usual setting), so
/// that records read again after a lease changes hands never report twice.
const CLAIM_TTL_SECS: i64 = 8 * 24 * 3600;

/// Calls made, by table and operation, for the metrics (and the calls-per-event benchmark).
#[derive(Debug, Default)]
pub struct CallCounts {
    pub lease_reads: AtomicU64,
    pub lease_writes: AtomicU64,
    pub state_reads: AtomicU64,
    pub state_writes: AtomicU64,
    /// Conditional writes whose condition failed (lost races: expected, not errors).
    pub conditional_failures: AtomicU64,
    pub errors: AtomicU64,
}

/// A conditional write's outcome when it did not fail for another reason.
enum Written<T, E> {
    Yes(T),
    /// The condition failed: a race decided by DynamoDB (the error carries the item, when asked).
    ConditionFailed(Box<SdkError<E>>),
}

impl CallCounts {
    /// Sorts a conditional write's result and counts it; any failure but the condition's is an
    /// error naming `what`.
    fn conditional<T, E>(
        &self,
        res: Result<T, SdkError<E>>,
        what: impl FnOnce() -> String,
    ) -> anyhow::Result<Written<T, E>>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        match res {
            Ok(out) => Ok(Written::Yes(out)),
            Err(e) if is_conditional_failure(&e) => {
                self.conditional_failures.fetch_add(1, Relaxed);
                Ok(Written::ConditionFailed(Box::new(e)))
            }
            Err(e) => {
                self.errors.fetch_add(1, Relaxed);
                Err(anyhow::anyhow!("{}: {}", what(), describe(&e)))
            }
        }
    }
}

fn describe<E: std::error::Error + 'static, R: std::fmt::Debug>(e: &SdkError<E, R>) -> String {
    DisplayErrorContext(e).to_string()
}

fn is_conditional_failure<E: ProvideErrorMetadata>(e: &SdkError<E>) -> bool {
    e.as_service_error()
        .and_then(|s| s.code())
        .is_some_and(|c| c == "ConditionalCheckFailedException")
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_string())
}

fn n(v: impl std::fmt::Display) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn get_s<'a>(item: &'a Item, k: &str) -> Option<&'a str> {
    item.get(k).and_then(|v| v.as_s().ok()).map(String::as_str)
}

fn get_n(item: &Item, k: &str) -> Option<i64> {
    item.get(k)
        .and_then(|v| v.as_n().ok())
        .and_then(|t| t.parse().ok())
}

/// Creates a table keyed by one string attribute if it does not exist, and waits until it is
/// active. Without `create`, a missing table is an error naming the option.
async fn ensure_table(
    client: &Client,
    table: &str,
    key: &str,
    create: bool,
    option: &str,
) -> anyhow::Result<bool> {
    match client.describe_table().table_name(table).send().await {
        Ok(_) => return Ok(false),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) => {}
        Err(e) => anyhow::bail!("{option} {table}: DescribeTable: {}", describe(&e)),
    }
    if !create {
        anyhow::bail!(
            "{option} {table}: the table does not exist (and coordination.create_tables is false)"
        );
    }
    let res = client
        .create_table()
        .table_name(table)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(key)
                .attribute_type(ScalarAttributeType::S)
                .build()?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(key)
                .key_type(KeyType::Hash)
                .build()?,
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await;
    match res {
        Ok(_) => {}
        // Another worker created it first.
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_in_use_exception()) => {}
        Err(e) => anyhow::bail!("{option} {table}: CreateTable: {}", describe(&e)),
    }
    for _ in 0..120 {
        let d = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{option} {table}: DescribeTable: {}", describe(&e)))?;
        if d.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
            tracing::info!(table, "created table");
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("{option} {table}: not ACTIVE after a minute")
}

/// The lease item attributes where the owner publishes the shard's event-time watermark.
const WATERMARK: &str = "credwatchWatermark";
const IDLE: &str = "credwatchIdle";

/// `SET` clauses and values that publish a watermark, when there is one.
fn mark_values(mark: Option<(i64, bool)>) -> (&'static str, Vec<(&'static str, AttributeValue)>) {
    match mark {
        Some((w, idle)) => (
            ", credwatchWatermark = :wm, credwatchIdle = :idle",
            vec![(":wm", n(w)), (":idle", AttributeValue::Bool(idle))],
        ),
        None => ("", vec![]),
    }
}

/// The lease table.
pub struct LeaseTable {
    client: Client,
    table: String,
    pub calls: std::sync::Arc<CallCounts>,
}

/// A lease item as read back (`None`: not a lease). Items come from a shared table that other
/// workers, and people, write: never trusted (fuzzed in `fuzz/`).
pub fn lease_from(item: &Item) -> Option<Lease> {
    Some(Lease {
        key: get_s(item, LEASE_KEY)?.to_string(),
        owner: get_s(item, "leaseOwner").map(str::to_string),
        counter: get_n(item, "leaseCounter").unwrap_or(0) as u64,
        checkpoint: get_s(item, "checkpoint")
            .unwrap_or("TRIM_HORIZON")
            .to_string(),
        sub_sequence: get_n(item, "checkpointSubSequenceNumber").unwrap_or(0) as u64,
        owner_switches: get_n(item, "ownerSwitchesSinceCheckpoint").unwrap_or(0) as u64,
        parents: item
            .get("parentShardIds")
            .and_then(|v| v.as_ss().ok())
            .cloned()
            .unwrap_or_default(),
        watermark: get_n(item, WATERMARK).map(|w| {
            let idle = item.get(IDLE).and_then(|v| v.as_bool().ok()).copied();
            (w, idle.unwrap_or(false))
        }),
    })
}

impl LeaseTable {
    pub async fn open(
        client: Client,
        table: &str,
        create: bool,
        calls: std::sync::Arc<CallCounts>,
    ) -> anyhow::Result<LeaseTable> {
        ensure_table(
            &client,
            table,
            LEASE_KEY,
            create,
            "coordination.lease_table",
        )
        .await?;
        Ok(LeaseTable {
            client,
            table: table.to_string(),
            calls,
        })
    }

    /// Every lease, with a strongly consistent scan.
    pub async fn scan(&self) -> anyhow::Result<Vec<Lease>> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            self.calls.lease_reads.fetch_add(1, Relaxed);
            let resp = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| {
                    self.calls.errors.fetch_add(1, Relaxed);
                    anyhow::anyhow!("scanning {}: {}", self.table, describe(&e))
                })?;
            out.extend(resp.items().iter().filter_map(lease_from));
            match resp.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Creates a lease unless one exists for the shard. Returns whether it was created.
    pub async fn create(&self, l: &Lease) -> anyhow::Result<bool> {
        let mut item: Item = HashMap::from([
            (LEASE_KEY.to_string(), s(&l.key)),
            ("leaseCounter".to_string(), n(l.counter)),
            ("checkpoint".to_string(), s(&l.checkpoint)),
            ("checkpointSubSequenceNumber".to_string(), n(l.sub_sequence)),
            (
                "ownerSwitchesSinceCheckpoint".to_string(),
                n(l.owner_switches),
            ),
        ]);
        if !l.parents.is_empty() {
            item.insert(
                "parentShardIds".to_string(),
                AttributeValue::Ss(l.parents.clone()),
            );
        }
        self.calls.lease_writes.fetch_add(1, Relaxed);
        let res = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(leaseKey)")
            .send()
            .await;
        let what = || format!("creating lease {} in {}", l.key, self.table);
        Ok(matches!(
            self.calls.conditional(res, what)?,
            Written::Yes(_)
        ))
    }

    /// One conditional UpdateItem on `leaseCounter` (and the owner, for renewals and
    /// checkpoints); `Renewal::Lost` when the condition fails.
    async fn update(
        &self,
        key: &str,
        expression: &str,
        condition: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> Renewal {
        self.calls.lease_writes.fetch_add(1, Relaxed);
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(LEASE_KEY, s(key))
            .update_expression(expression)
            .condition_expression(condition)
            .return_values(ReturnValue::UpdatedNew);
        for (k, v) in values {
            req = req.expression_attribute_values(k, v);
        }
        let what = || format!("lease {key} in {}", self.table);
        match self.calls.conditional(req.send().await, what) {
            Ok(Written::Yes(out)) => Renewal::Renewed(
                out.attributes()
                    .and_then(|a| get_n(a, "leaseCounter"))
                    .unwrap_or(0) as u64,
            ),
            Ok(Written::ConditionFailed(_)) => Renewal::Lost,
            Err(e) => {
                tracing::warn!(error = %e, "lease write failed");
                Renewal::Failed
            }
        }
    }

    /// Takes a lease read with counter `counter` (unowned, expired, or stolen).
    pub async fn take(&self, key: &str, counter: u64, me: &str, from: Option<&str>) -> Renewal {
        let switch = if from == Some(me) { 0 } else { 1 };
        self.update(
            key,
            "SET leaseOwner = :me, leaseCounter = :next, ownerSwitchesSinceCheckpoint = if_not_exists(ownerSwitchesSinceCheckpoint, :zero) + :switch",
            "leaseCounter = :c",
            vec![
                (":me", s(me)),
                (":c", n(counter)),
                (":next", n(counter + 1)),
                (":zero", n(0)),
                (":switch", n(switch)),
            ],
        )
        .await
    }

    /// A write to a lease this worker holds (read at `counter`), bumping the counter.
    async fn held(
        &self,
        key: &str,
        counter: u64,
        me: &str,
        expression: &str,
        mut values: Vec<(&str, AttributeValue)>,
    ) -> Renewal {
        values.extend([
            (":me", s(me)),
            (":c", n(counter)),
            (":next", n(counter + 1)),
        ]);
        self.update(
            key,
            expression,
            "leaseCounter = :c AND leaseOwner = :me",
            values,
        )
        .await
    }

    /// Renews a held lease, publishing the shard's watermark when given.
    pub async fn renew(
        &self,
        key: &str,
        counter: u64,
        me: &str,
        mark: Option<(i64, bool)>,
    ) -> Renewal {
        let (set, values) = mark_values(mark);
        self.held(
            key,
            counter,
            me,
            &format!("SET leaseCounter = :next{set}"),
            values,
        )
        .await
    }

    /// Writes a checkpoint into a held lease (which renews it too).
    pub async fn checkpoint(
        &self,
        key: &str,
        counter: u64,
        me: &str,
        checkpoint: &str,
        mark: Option<(i64, bool)>,
    ) -> Renewal {
        let (set, mut values) = mark_values(mark);
        values.extend([(":cp", s(checkpoint)), (":zero", n(0))]);
        self.held(
            key,
            counter,
            me,
            &format!("SET leaseCounter = :next, checkpoint = :cp, checkpointSubSequenceNumber = :zero, ownerSwitchesSinceCheckpoint = :zero{set}"),
            values,
        )
        .await
    }

    /// Gives a held lease up (at shutdown) so another worker can take it at once.
    pub async fn release(&self, key: &str, counter: u64, me: &str) -> Renewal {
        self.held(
            key,
            counter,
            me,
            "REMOVE leaseOwner SET leaseCounter = :next",
            vec![],
        )
        .await
    }
}

/// What the state table answered to a proposed first origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposed {
    /// The proposal is now the session's first origin.
    pub won: bool,
    /// The session's first origin after the call.
    pub current: HomeEvidence,
    /// What the proposal replaced (it won), if anything.
    pub previous: Option<HomeEvidence>,
}

/// The state table: the authority on each session's first origin, and on which worker reports
/// a finding.
pub struct StateTable {
    client: Client,
    table: String,
    pub calls: std::sync::Arc<CallCounts>,
    /// How long to wait for another worker's claim on the same event to be marked reported.
    pub claim_patience: Duration,
}

/// Reads a home stored under `prefix` (`""` for the session's first origin, `"prev"` for the
/// origin it displaced).
pub fn home_from(item: &Item, prefix: &str) -> Option<HomeEvidence> {
    let k = |name: &str| {
        if prefix.is_empty() {
            name.to_string()
        } else {
            let mut c = name.chars();
            let first = c.next().map(|f| f.to_ascii_uppercase()).unwrap_or_default();
            format!("{prefix}{first}{}", c.as_str())
        }
    };
    let tag = get_n(item, &k("homeTag"))? as u8;
    if tag == 0 {
        return None;
    }
    // `userAgent` holds the first event's profile: user agent, event source, name, access key.
    let mut h = HomeEvidence {
        tag: HomeTag::from_bits(tag),
        origin: get_s(item, &k("home"))?.to_string(),
        event_id: get_s(item, &k("eventId")).unwrap_or_default().to_string(),
        time: get_n(item, &k("firstTime"))?,
        user_agent: String::new(),
        class: get_n(item, &k("credentialClass")).unwrap_or(0) as u8,
        expires: get_n(item, &k("expiresAt"))?,
        event_source: None,
        event_name: None,
        access_key_id: None,
        error_code: None,
    };
    h.set_profile(get_s(item, &k("userAgent")).unwrap_or_default());
    Some(h)
}

impl StateTable {
    pub async fn open(
        client: Client,
        table: &str,
        create: bool,
        calls: std::sync::Arc<CallCounts>,
    ) -> anyhow::Result<StateTable> {
        let created = ensure_table(
            &client,
            table,
            STATE_KEY,
            create,
            "coordination.state_table",
        )
        .await?;
        if created {
            let res = client
                .update_time_to_live()
                .table_name(table)
                .time_to_live_specification(
                    TimeToLiveSpecification::builder()
                        .enabled(true)
                        .attribute_name(TTL_ATTRIBUTE)
                        .build()?,
                )
                .send()
                .await;
            if let Err(e) = res {
                tracing::warn!(table, error = %describe(&e), "could not enable TTL on the state table; expired sessions will stay");
            }
        }
        Ok(StateTable {
            client,
            table: table.to_string(),
            calls,
            claim_patience: Duration::from_secs(10),
        })
    }

    /// Proposes `home` as the first origin of `session`: one conditional PutItem that succeeds
    /// when the session is unknown, expired, or known from a later event that is not a Lambda
    /// runtime home (a runtime home also replaces any outside home). Whatever the outcome, the answer is
    /// the session's first origin as the table now holds it.
    pub async fn propose(
        &self,
        session: &str,
        home: &HomeEvidence,
        runtime_wins: bool,
    ) -> anyhow::Result<Proposed> {
        // A Lambda runtime home is never displaced by an outside origin, however early.
        let condition = if runtime_wins {
            "attribute_not_exists(pk) OR expiresAt < :t OR firstTime > :t OR homeTag <> :runtime"
        } else {
            "attribute_not_exists(pk) OR expiresAt < :t OR (firstTime > :t AND homeTag <> :runtime)"
        };
        // The origin it displaces is kept beside it (`prev…`): a worker that dies between this
        // write and its report leaves the pair for the next owner of the shard to report when
        // it reads the same event again.
        let update = "SET prevHomeTag = if_not_exists(homeTag, :zero), \
             prevHome = if_not_exists(home, :empty), \
             prevEventId = if_not_exists(eventId, :empty), \
             prevFirstTime = if_not_exists(firstTime, :zero), \
             prevExpiresAt = if_not_exists(expiresAt, :zero), \
             prevUserAgent = if_not_exists(userAgent, :empty), \
             prevCredentialClass = if_not_exists(credentialClass, :zero), \
             homeTag = :tag, home = :home, eventId = :event, firstTime = :t, \
             expiresAt = :expires, userAgent = :ua, credentialClass = :class, #ttl = :ttl";
        let req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(STATE_KEY, s(&format!("s#{session}")))
            .update_expression(update)
            .condition_expression(condition)
            .expression_attribute_names("#ttl", TTL_ATTRIBUTE)
            .expression_attribute_values(":t", n(home.time))
            .expression_attribute_values(":runtime", n(HomeTag::LambdaRuntime as u8))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":empty", s("-"))
            .expression_attribute_values(":tag", n(home.tag as u8))
            .expression_attribute_values(":home", s(&home.origin))
            .expression_attribute_values(":event", s(&home.event_id))
            .expression_attribute_values(":expires", n(home.expires))
            .expression_attribute_values(":ua", s(&home.profile()))
            .expression_attribute_values(":class", n(home.class))
            .expression_attribute_values(":ttl", n(home.expires + TTL_SLACK_SECS))
            .return_values(ReturnValue::AllOld)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        self.calls.state_writes.fetch_add(1, Relaxed);
        let what = || format!("proposing a first origin in {}", self.table);
        let e = match self.calls.conditional(req.send().await, what)? {
            Written::Yes(out) => {
                return Ok(Proposed {
                    won: true,
                    current: home.clone(),
                    previous: out.attributes().and_then(|a| home_from(a, "")),
                })
            }
            Written::ConditionFailed(e) => e,
        };
        let returned = match e.as_service_error() {
            Some(aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c)) => {
                c.item().cloned()
            }
            _ => None,
        };
        let pk = format!("s#{session}");
        let item = self
            .returned_or_read(returned, &pk)
            .await?
            .ok_or_else(|| anyhow::anyhow!("session {session}: condition failed but no item"))?;
        let current = home_from(&item, "")
            .ok_or_else(|| anyhow::anyhow!("session {session}: the state item has no home"))?;
        // This very event is the home already: the proposal was made before (by a worker that
        // may not have reported the pair), so answer as it was answered.
        let again = current.event_id == home.event_id && current.time == home.time;
        Ok(Proposed {
            won: again,
            previous: if again {
                home_from(&item, "prev")
            } else {
                None
            },
            current,
        })
    }

    /// The item a failed condition returned, else (not every implementation returns it) read.
    async fn returned_or_read(
        &self,
        returned: Option<Item>,
        pk: &str,
    ) -> anyhow::Result<Option<Item>> {
        match returned {
            Some(i) => Ok(Some(i)),
            None => self.get_item(pk).await,
        }
    }

    /// A session's item, read strongly consistently.
    async fn get_item(&self, pk: &str) -> anyhow::Result<Option<Item>> {
        self.calls.state_reads.fetch_add(1, Relaxed);
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(STATE_KEY, s(pk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| {
                self.calls.errors.fetch_add(1, Relaxed);
                anyhow::anyhow!("reading {}: {}", self.table, describe(&e))
            })?;
        Ok(out.item().cloned())
    }

    /// Claims the right to report a finding: true for exactly one caller per `key` until
    /// `until` (event time); an event at `t` past it may claim the key again (the session it was
    /// about has expired, and this is a new one). `source` is where the triggering event was
    /// read (`shard@sequence#index`): a claim still `claimed` (never marked reported) from the
    /// same source is taken over, since only the shard's new owner reads that event again,
    /// after the claimer died between its claim and its report.
    pub async fn claim(
        &self,
        key: &str,
        until: i64,
        t: i64,
        worker: &str,
        source: &str,
    ) -> anyhow::Result<bool> {
        self.calls.state_writes.fetch_add(1, Relaxed);
        let ttl = until
            .max(chrono::Utc::now().timestamp())
            .saturating_add(CLAIM_TTL_SECS);
        let res = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(STATE_KEY, s(key))
            .item("worker", s(worker))
            .item("status", s("claimed"))
            .item("source", s(source))
            .item("claimUntil", n(until))
            .item(
                "claimedAt",
                s(&chrono::Utc::now()
                    .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                    .to_string()),
            )
            .item(TTL_ATTRIBUTE, n(ttl))
            .condition_expression("attribute_not_exists(pk) OR claimUntil < :t")
            .expression_attribute_values(":t", n(t))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let what = || format!("claiming finding {key} in {}", self.table);
        let err = match self.calls.conditional(res, what)? {
            Written::Yes(_) => return Ok(true),
            Written::ConditionFailed(e) => e,
        };
        let returned = match err.as_service_error() {
            Some(aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c)) => {
                c.item().cloned()
            }
            _ => None,
        };
        let mut item = self.returned_or_read(returned, key).await?;
        // Claimed from this very event and not yet marked reported: either the claimer is
        // writing it now (a worker that lost the shard's lease and has not noticed yet), or it
        // died before reporting. Wait for the mark, up to a lease duration, before taking over.
        let waited = std::time::Instant::now();
        let old = loop {
            let Some(it) = &item else { return Ok(false) };
            let (Some("claimed"), Some(src), Some(old)) = (
                get_s(it, "status"),
                get_s(it, "source"),
                get_s(it, "worker"),
            ) else {
                return Ok(false);
            };
            if src != source {
                return Ok(false);
            }
            if old == worker || waited.elapsed() >= self.claim_patience {
                break old.to_string();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            item = self.get_item(key).await?;
        };
        let old = old.as_str();
        self.calls.state_writes.fetch_add(1, Relaxed);
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(STATE_KEY, s(key))
            .update_expression("SET worker = :me")
            .condition_expression("#st = :claimed AND #src = :src AND worker = :old")
            .expression_attribute_names("#st", "status")
            .expression_attribute_names("#src", "source")
            .expression_attribute_values(":me", s(worker))
            .expression_attribute_values(":claimed", s("claimed"))
            .expression_attribute_values(":src", s(source))
            .expression_attribute_values(":old", s(old))
            .send()
            .await;
        let what = || format!("taking over claim {key} in {}", self.table);
        let taken = matches!(self.calls.conditional(res, what)?, Written::Yes(_));
        if taken {
            tracing::info!(
                key,
                from = old,
                "took over a claim whose report was never marked"
            );
        }
        Ok(taken)
    }

    /// Marks a claim reported (its finding is written and spooled): no one takes it over.
    pub async fn mark_reported(&self, key: &str, worker: &str) -> anyhow::Result<()> {
        self.calls.state_writes.fetch_add(1, Relaxed);
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(STATE_KEY, s(key))
            .update_expression("SET #st = :written")
            .condition_expression("worker = :me")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":me", s(worker))
            .expression_attribute_values(":written", s("reported"))
            .send()
            .await;
        let what = || format!("marking claim {key} reported in {}", self.table);
        self.calls.conditional(res, what).map(|_| ())
    }

    /// Appends a control-plane event to the shared log: `ec2log#head` counts entries, entry `n`
    /// is `ec2log#<n>`.
    pub async fn publish_control(&self, json: &str) -> anyhow::Result<()> {
        self.calls.state_writes.fetch_add(2, Relaxed);
        let head = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(STATE_KEY, s(CONTROL_HEAD))
            .update_expression("ADD n :one")
            .expression_attribute_values(":one", n(1))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(|e| {
                self.calls.errors.fetch_add(1, Relaxed);
                anyhow::anyhow!("control log head in {}: {}", self.table, describe(&e))
            })?;
        let idx = head
            .attributes()
            .and_then(|a| get_n(a, "n"))
            .ok_or_else(|| anyhow::anyhow!("control log head without n"))?;
        let ttl = chrono::Utc::now().timestamp() + CLAIM_TTL_SECS;
        self.client
            .put_item()
            .table_name(&self.table)
            .item(STATE_KEY, s(&format!("ec2log#{idx}")))
            .item("event", s(json))
            .item(TTL_ATTRIBUTE, n(ttl))
            .send()
            .await
            .map_err(|e| {
                self.calls.errors.fetch_add(1, Relaxed);
                anyhow::anyhow!("control log entry in {}: {}", self.table, describe(&e))
            })?;
        Ok(())
    }

    /// The control-plane events after entry `after`, and the last entry read. An entry whose
    /// number is taken but which is not written yet is waited for briefly; one still missing
    /// after that (its writer died between the two calls) is skipped.
    pub async fn control_since(&self, after: u64) -> anyhow::Result<(Vec<String>, u64)> {
        let head = match self.get_item(CONTROL_HEAD).await? {
            Some(item) => get_n(&item, "n").unwrap_or(0) as u64,
            None => 0,
        };
        let mut out = Vec::new();
        let mut at = after;
        while at < head {
            let key = format!("ec2log#{}", at + 1);
            let mut entry = None;
            for attempt in 0..4 {
                if let Some(item) = self.get_item(&key).await? {
                    entry = Some(get_s(&item, "event").unwrap_or_default().to_string());
                    break;
                }
                if attempt < 3 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            match entry {
                Some(e) => out.push(e),
                None => tracing::warn!(entry = %key, "control log entry missing; skipped"),
            }
            at += 1;
        }
        Ok((out, at))
    }
}
