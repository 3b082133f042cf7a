//! Reading the inventory from EC2: every configured account (the running credentials' own, and
//! one per `role_arns` entry through STS `AssumeRole`) in every configured region.
//!
//! Calls, all read-only:
//! - STS `GetCallerIdentity` (the own account's id):
//!   <https://docs.aws.amazon.com/STS/latest/APIReference/API_GetCallerIdentity.html>
//! - STS `AssumeRole` (session name `credwatch-inventory`, `ExternalId` when configured):
//!   <https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRole.html>
//! - EC2 `DescribeInstances`:
//!   <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeInstances.html>
//! - EC2 `DescribeAddresses`:
//!   <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeAddresses.html>
//! - EC2 `DescribeNatGateways`:
//!   <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeNatGateways.html>
//! - EC2 `DescribeVpcs`:
//!   <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeVpcs.html>
//! - EC2 `DescribeSubnets`:
//!   <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeSubnets.html>
//! - EC2 `DescribeVpcEndpoints`:
//!   <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeVpcEndpoints.html>
//!
//! Every paginated call is read to its end through the SDK's paginators (`MaxResults` =
//! [`FetchOptions::page_size`]); `DescribeAddresses` has no pagination.
//!
//! Throttling and server errors: the SDK's *standard* retry mode does the backoff. It retries
//! throttling error codes (`RequestLimitExceeded`, `Throttling`, … — aws-runtime's
//! `THROTTLING_ERRORS`), HTTP 500/502/503/504 and transient connection errors, with exponential
//! backoff and full jitter, at most [`MAX_ATTEMPTS`] attempts per call
//! (<https://docs.aws.amazon.com/sdkref/latest/guide/feature-retry-behavior.html>). What still
//! fails after that fails its account and region only.
//!
//! Failure is per account and region: one that cannot be read (access denied, the role cannot be
//! assumed, the region is unreachable) keeps the data of its previous read, gets `error` set and
//! a warning naming the account and region; the others are read as usual.
//!
//! Credentials of an assumed role are kept between refreshes and assumed again when they are
//! within [`RENEW_BEFORE`] of their expiry (STS sessions last an hour by default), so a refresh
//! every 15 minutes calls `AssumeRole` about once an hour per role.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::identity::IdentityCache;
use aws_config::retry::RetryConfig;
use aws_config::sts::AssumeRoleProvider;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::error::DisplayErrorContext;
use aws_sdk_ec2::types::{
    Instance, NatGatewayState, SubnetCidrBlockStateCode, VpcCidrBlockStateCode,
};
use aws_sdk_sts::config::{Credentials, ProvideCredentials, SharedCredentialsProvider};
use ipnet::IpNet;
use tokio::sync::{Mutex, Semaphore};

use super::model::{
    AccountRegion, ElasticIpRec, EndpointRec, InstanceRec, InventorySnapshot, NatGatewayRec,
    NetworkRec,
};
use crate::config::InventoryConfig;

/// The `RoleSessionName` of every `AssumeRole` call (it shows in the member accounts'
/// CloudTrail as `assumed-role/<role>/credwatch-inventory`).
pub const SESSION_NAME: &str = "credwatch-inventory";
/// Attempts per call, the first included (the SDK's standard retry mode; its default is 3).
pub const MAX_ATTEMPTS: u32 = 5;
/// Assumed credentials this close to their expiry are replaced before a refresh uses them.
pub const RENEW_BEFORE: Duration = Duration::from_secs(10 * 60);
/// The account name used for the own account while its id is unknown (`GetCallerIdentity`
/// failed before it ever succeeded).
pub const UNKNOWN_OWN_ACCOUNT: &str = "own-account";

/// How the reads are made; [`Default`] is what the service uses.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Retries of every STS and EC2 call.
    pub retry: RetryConfig,
    /// `MaxResults` of the paginated Describe calls (EC2 accepts 5 to 1000).
    pub page_size: i32,
    /// Account-regions read at the same time (each makes its six Describe calls at once).
    pub concurrency: usize,
    /// Timeout of one attempt of one call.
    pub attempt_timeout: Duration,
    /// Timeout of one call, retries included.
    pub call_timeout: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            retry: RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS),
            page_size: 1000,
            concurrency: 8,
            attempt_timeout: Duration::from_secs(30),
            call_timeout: Duration::from_secs(120),
        }
    }
}

/// One role to assume, with the credentials it gave last.
struct Role {
    arn: String,
    /// The account in the ARN (`arn:aws:iam::<account>:role/<name>`).
    account: String,
    provider: AssumeRoleProvider,
    cached: Mutex<Option<Credentials>>,
}

impl Role {
    /// The role's credentials: the cached ones unless they expire within [`RENEW_BEFORE`].
    async fn credentials(&self) -> Result<Credentials, String> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            if still_fresh(c.expiry(), SystemTime::now()) {
                return Ok(c.clone());
            }
        }
        match self.provider.provide_credentials().await {
            Ok(c) => {
                *cached = Some(c.clone());
                Ok(c)
            }
            Err(e) => {
                *cached = None;
                Err(format!(
                    "AssumeRole {}: {}",
                    self.arn,
                    DisplayErrorContext(&e)
                ))
            }
        }
    }
}

/// Whether credentials expiring at `expiry` may still be used at `now` (not within
/// [`RENEW_BEFORE`] of their expiry; credentials without an expiry always may).
fn still_fresh(expiry: Option<SystemTime>, now: SystemTime) -> bool {
    expiry.is_none_or(|exp| exp > now + RENEW_BEFORE)
}

/// One account and region to read: (account, region, the read's outcome once it is known).
type Slot = (String, String, Option<Result<AccountRegion, String>>);

/// The account of an IAM role ARN (`arn:aws:iam::<account>:role/<name>`), else the ARN itself.
pub fn role_account(arn: &str) -> String {
    match arn.split(':').nth(4) {
        Some(a) if !a.is_empty() => a.to_string(),
        _ => arn.to_string(),
    }
}

/// Reads the inventory; keeps what it needs between reads (the own account's id, assumed roles'
/// credentials).
pub struct Fetcher {
    base: SdkConfig,
    own_account: bool,
    own_id: Mutex<Option<String>>,
    roles: Vec<Arc<Role>>,
    regions: Vec<String>,
    opts: FetchOptions,
}

/// The SDK configuration of the running credentials: the SDK's default chain (environment,
/// profile, web identity, ECS, instance metadata), `endpoint_url` when set, and the first of
/// `regions` when the chain names no region (STS is called there).
pub async fn base_sdk_config(cfg: &InventoryConfig) -> SdkConfig {
    let mut loader =
        aws_config::defaults(BehaviorVersion::latest()).timeout_config(crate::kinesis::timeouts());
    if let Some(u) = &cfg.endpoint_url {
        loader = loader.endpoint_url(u);
    }
    let conf = loader.load().await;
    match (conf.region(), cfg.regions.first()) {
        (None, Some(r)) => conf.into_builder().region(Region::new(r.clone())).build(),
        _ => conf,
    }
}

impl Fetcher {
    /// A fetcher using the SDK's default credentials chain (see [`base_sdk_config`]).
    pub async fn from_config(cfg: &InventoryConfig) -> Fetcher {
        Fetcher::new(base_sdk_config(cfg).await, cfg, FetchOptions::default()).await
    }

    /// A fetcher for `cfg`'s accounts and regions, calling with `base`'s credentials (tests pass
    /// static ones), endpoint and region (for STS); retries and timeouts are `opts`'.
    pub async fn new(base: SdkConfig, cfg: &InventoryConfig, opts: FetchOptions) -> Fetcher {
        let mut base = base
            .into_builder()
            .retry_config(opts.retry.clone())
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_attempt_timeout(opts.attempt_timeout)
                    .operation_timeout(opts.call_timeout)
                    .build(),
            )
            .build();
        if base.region().is_none() {
            if let Some(r) = cfg.regions.first() {
                base = base.into_builder().region(Region::new(r.clone())).build();
            }
        }
        if let Some(u) = &cfg.endpoint_url {
            if base.endpoint_url().is_none() {
                base = base.into_builder().endpoint_url(u).build();
            }
        }
        let mut roles = Vec::with_capacity(cfg.role_arns.len());
        for arn in &cfg.role_arns {
            let mut b = AssumeRoleProvider::builder(arn.clone())
                .session_name(SESSION_NAME)
                .configure(&base);
            if let Some(id) = &cfg.external_id {
                b = b.external_id(id.clone());
            }
            roles.push(Arc::new(Role {
                arn: arn.clone(),
                account: role_account(arn),
                provider: b.build().await,
                cached: Mutex::new(None),
            }));
        }
        Fetcher {
            base,
            own_account: cfg.own_account,
            own_id: Mutex::new(None),
            roles,
            regions: cfg.regions.clone(),
            opts,
        }
    }

    /// The own account's id (STS `GetCallerIdentity`, asked once and then remembered).
    async fn own_id(&self) -> Result<String, String> {
        let mut id = self.own_id.lock().await;
        if let Some(a) = id.as_ref() {
            return Ok(a.clone());
        }
        let out = aws_sdk_sts::Client::new(&self.base)
            .get_caller_identity()
            .send()
            .await
            .map_err(|e| format!("GetCallerIdentity: {}", DisplayErrorContext(&e)))?;
        let a = out
            .account()
            .filter(|a| !a.is_empty())
            .ok_or("GetCallerIdentity: no account in the answer")?
            .to_string();
        *id = Some(a.clone());
        Ok(a)
    }

    /// Reads every account and region once. A part that fails keeps its data from `previous`
    /// (same account and region) with `error` set; the parts come in configuration order (own
    /// account first, then the roles; regions in order).
    pub async fn read(&self, previous: &InventorySnapshot) -> InventorySnapshot {
        // (account, SDK config of its credentials, or why there are none)
        let mut accounts: Vec<(String, Result<SdkConfig, String>)> = Vec::new();
        let mut own = None;
        if self.own_account {
            match self.own_id().await {
                Ok(a) => {
                    own = Some(a.clone());
                    accounts.push((a, Ok(self.base.clone())));
                }
                Err(e) => accounts.push((UNKNOWN_OWN_ACCOUNT.to_string(), Err(e))),
            }
        }
        for role in &self.roles {
            if own.as_deref() == Some(role.account.as_str()) {
                tracing::warn!(
                    role = %role.arn,
                    account = %role.account,
                    "inventory: the role is in the own account, which is read already; skipping it"
                );
                continue;
            }
            if accounts.iter().any(|(a, _)| *a == role.account) {
                tracing::warn!(
                    role = %role.arn,
                    account = %role.account,
                    "inventory: another role reads this account already; skipping it"
                );
                continue;
            }
            // Fixed credentials need no identity cache (and a shared one would keep an entry
            // for every refresh's new provider).
            let conf = role.credentials().await.map(|c| {
                self.base
                    .clone()
                    .into_builder()
                    .credentials_provider(SharedCredentialsProvider::new(c))
                    .identity_cache(IdentityCache::no_cache())
                    .build()
            });
            accounts.push((role.account.clone(), conf));
        }

        let prev: HashMap<(&str, &str), &AccountRegion> = previous
            .parts
            .iter()
            .map(|p| ((p.account.as_str(), p.region.as_str()), p))
            .collect();
        let limit = Arc::new(Semaphore::new(self.opts.concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        let mut slots: Vec<Slot> = Vec::new();
        for (account, conf) in &accounts {
            for region in &self.regions {
                let slot = slots.len();
                match conf {
                    Err(e) => slots.push((account.clone(), region.clone(), Some(Err(e.clone())))),
                    Ok(conf) => {
                        slots.push((account.clone(), region.clone(), None));
                        let (conf, account, region) =
                            (conf.clone(), account.clone(), region.clone());
                        let (limit, page) = (limit.clone(), self.opts.page_size);
                        tasks.spawn(async move {
                            let _permit = limit.acquire_owned().await;
                            (slot, read_region(&conf, &account, &region, page).await)
                        });
                    }
                }
            }
        }
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok((slot, res)) => slots[slot].2 = Some(res),
                Err(e) => tracing::error!(error = %e, "inventory: a read task failed"),
            }
        }

        let parts = slots
            .into_iter()
            .map(|(account, region, res)| {
                let res = res.unwrap_or_else(|| Err("the read did not finish".to_string()));
                match res {
                    Ok(part) => part,
                    Err(e) => {
                        tracing::warn!(
                            account = %account,
                            region = %region,
                            error = %e,
                            "inventory: reading the account and region failed; keeping its previous data"
                        );
                        let mut part = prev
                            .get(&(account.as_str(), region.as_str()))
                            .map(|p| (*p).clone())
                            .unwrap_or_else(|| AccountRegion {
                                account,
                                region,
                                ..AccountRegion::default()
                            });
                        part.error = Some(e);
                        part
                    }
                }
            })
            .collect();
        InventorySnapshot::new(parts)
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn ip(s: Option<&str>) -> Option<IpAddr> {
    s.and_then(|s| s.parse().ok())
}

fn push_unique(v: &mut Vec<IpAddr>, a: Option<IpAddr>) {
    if let Some(a) = a {
        if !v.contains(&a) {
            v.push(a);
        }
    }
}

/// Everything of one account in one region.
async fn read_region(
    conf: &SdkConfig,
    account: &str,
    region: &str,
    page: i32,
) -> Result<AccountRegion, String> {
    let ec2 = aws_sdk_ec2::Client::from_conf(
        aws_sdk_ec2::config::Builder::from(conf)
            .region(Region::new(region.to_string()))
            .build(),
    );
    let started = now_secs();
    let (instances, elastic_ips, nat_gateways, vpcs, subnets, endpoints) = tokio::try_join!(
        instances(&ec2, page),
        elastic_ips(&ec2),
        nat_gateways(&ec2, page),
        vpcs(&ec2, page),
        subnets(&ec2, page),
        endpoints(&ec2, page),
    )?;
    Ok(AccountRegion {
        account: account.to_string(),
        region: region.to_string(),
        refreshed_at: started,
        error: None,
        instances,
        elastic_ips,
        nat_gateways,
        vpcs,
        subnets,
        endpoints,
    })
}

fn failed<E>(call: &str, e: E) -> String
where
    E: std::error::Error + 'static,
{
    format!("{call}: {}", DisplayErrorContext(&e))
}

/// One instance's addresses: the instance's own fields and every network interface's
/// (primary and secondary private IPv4, their public associations, IPv6).
pub(crate) fn instance_rec(i: &Instance) -> Option<InstanceRec> {
    let id = i.instance_id()?.to_string();
    let (mut public, mut private, mut v6) = (Vec::new(), Vec::new(), Vec::new());
    push_unique(&mut public, ip(i.public_ip_address()));
    push_unique(&mut private, ip(i.private_ip_address()));
    push_unique(&mut v6, ip(i.ipv6_address()));
    for ni in i.network_interfaces() {
        push_unique(
            &mut public,
            ip(ni.association().and_then(|a| a.public_ip())),
        );
        push_unique(&mut private, ip(ni.private_ip_address()));
        for p in ni.private_ip_addresses() {
            push_unique(&mut private, ip(p.private_ip_address()));
            push_unique(&mut public, ip(p.association().and_then(|a| a.public_ip())));
        }
        for a in ni.ipv6_addresses() {
            push_unique(&mut v6, ip(a.ipv6_address()));
        }
    }
    Some(InstanceRec {
        id,
        vpc_id: i.vpc_id().map(str::to_string),
        public_ipv4: public,
        private_ipv4: private,
        ipv6: v6,
        state: i
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_string()),
    })
}

async fn instances(ec2: &aws_sdk_ec2::Client, page: i32) -> Result<Vec<InstanceRec>, String> {
    let mut out = Vec::new();
    let mut pages = ec2
        .describe_instances()
        .into_paginator()
        .page_size(page)
        .items()
        .send();
    while let Some(r) = pages.next().await {
        let r = r.map_err(|e| failed("DescribeInstances", e))?;
        out.extend(r.instances().iter().filter_map(instance_rec));
    }
    Ok(out)
}

async fn elastic_ips(ec2: &aws_sdk_ec2::Client) -> Result<Vec<ElasticIpRec>, String> {
    let out = ec2
        .describe_addresses()
        .send()
        .await
        .map_err(|e| failed("DescribeAddresses", e))?;
    Ok(out
        .addresses()
        .iter()
        .filter_map(|a| {
            Some(ElasticIpRec {
                public_ip: ip(a.public_ip())?,
                allocation_id: a.allocation_id().map(str::to_string),
                instance_id: a
                    .instance_id()
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
                network_interface_id: a.network_interface_id().map(str::to_string),
                private_ip: ip(a.private_ip_address()),
            })
        })
        .collect())
}

async fn nat_gateways(ec2: &aws_sdk_ec2::Client, page: i32) -> Result<Vec<NatGatewayRec>, String> {
    let mut out = Vec::new();
    let mut pages = ec2
        .describe_nat_gateways()
        .into_paginator()
        .page_size(page)
        .items()
        .send();
    while let Some(n) = pages.next().await {
        let n = n.map_err(|e| failed("DescribeNatGateways", e))?;
        // Deleted and failed gateways stay listed for about an hour and own no address.
        if matches!(
            n.state(),
            Some(NatGatewayState::Deleted | NatGatewayState::Failed)
        ) {
            continue;
        }
        let Some(id) = n.nat_gateway_id() else {
            continue;
        };
        let (mut public, mut private) = (Vec::new(), Vec::new());
        for a in n.nat_gateway_addresses() {
            push_unique(&mut public, ip(a.public_ip()));
            push_unique(&mut private, ip(a.private_ip()));
        }
        out.push(NatGatewayRec {
            id: id.to_string(),
            vpc_id: n.vpc_id().map(str::to_string),
            public_ips: public,
            private_ips: private,
        });
    }
    Ok(out)
}

fn cidr(s: Option<&str>) -> Option<IpNet> {
    s.and_then(|s| s.parse::<IpNet>().ok()).map(|n| n.trunc())
}

async fn vpcs(ec2: &aws_sdk_ec2::Client, page: i32) -> Result<Vec<NetworkRec>, String> {
    let mut out = Vec::new();
    let mut pages = ec2
        .describe_vpcs()
        .into_paginator()
        .page_size(page)
        .items()
        .send();
    while let Some(v) = pages.next().await {
        let v = v.map_err(|e| failed("DescribeVpcs", e))?;
        let Some(id) = v.vpc_id() else {
            continue;
        };
        let ipv6_cidrs = v
            .ipv6_cidr_block_association_set()
            .iter()
            .filter(|a| {
                a.ipv6_cidr_block_state().and_then(|s| s.state())
                    == Some(&VpcCidrBlockStateCode::Associated)
            })
            .filter_map(|a| cidr(a.ipv6_cidr_block()))
            .collect();
        out.push(NetworkRec {
            id: id.to_string(),
            vpc_id: Some(id.to_string()),
            ipv6_cidrs,
        });
    }
    Ok(out)
}

async fn subnets(ec2: &aws_sdk_ec2::Client, page: i32) -> Result<Vec<NetworkRec>, String> {
    let mut out = Vec::new();
    let mut pages = ec2
        .describe_subnets()
        .into_paginator()
        .page_size(page)
        .items()
        .send();
    while let Some(s) = pages.next().await {
        let s = s.map_err(|e| failed("DescribeSubnets", e))?;
        let Some(id) = s.subnet_id() else {
            continue;
        };
        // Every block but those on their way out (or that never came): moto 5.2.5 answers a
        // subnet block's state in a shape the SDK does not know, so "associated only" would
        // drop every block there.
        let ipv6_cidrs = s
            .ipv6_cidr_block_association_set()
            .iter()
            .filter(|a| {
                !matches!(
                    a.ipv6_cidr_block_state().and_then(|s| s.state()),
                    Some(
                        SubnetCidrBlockStateCode::Disassociating
                            | SubnetCidrBlockStateCode::Disassociated
                            | SubnetCidrBlockStateCode::Failing
                            | SubnetCidrBlockStateCode::Failed
                    )
                )
            })
            .filter_map(|a| cidr(a.ipv6_cidr_block()))
            .collect();
        out.push(NetworkRec {
            id: id.to_string(),
            vpc_id: s.vpc_id().map(str::to_string),
            ipv6_cidrs,
        });
    }
    Ok(out)
}

async fn endpoints(ec2: &aws_sdk_ec2::Client, page: i32) -> Result<Vec<EndpointRec>, String> {
    let mut out = Vec::new();
    let mut pages = ec2
        .describe_vpc_endpoints()
        .into_paginator()
        .page_size(page)
        .items()
        .send();
    while let Some(e) = pages.next().await {
        let e = e.map_err(|e| failed("DescribeVpcEndpoints", e))?;
        let Some(id) = e.vpc_endpoint_id() else {
            continue;
        };
        out.push(EndpointRec {
            id: id.to_string(),
            vpc_id: e.vpc_id().map(str::to_string),
            service_name: e.service_name().map(str::to_string),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::types::{
        InstanceIpv6Address, InstanceNetworkInterface, InstanceNetworkInterfaceAssociation,
        InstancePrivateIpAddress, InstanceState, InstanceStateName,
    };

    #[test]
    fn assumed_credentials_are_renewed_near_their_expiry() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hour = Duration::from_secs(3600);
        assert!(still_fresh(Some(now + hour), now));
        assert!(still_fresh(None, now));
        assert!(!still_fresh(Some(now + RENEW_BEFORE), now));
        assert!(!still_fresh(Some(now - hour), now));
    }

    #[test]
    fn role_accounts() {
        assert_eq!(
            role_account("arn:aws:iam::210987654321:role/x"),
            "210987654321"
        );
        assert_eq!(
            role_account("arn:aws-cn:iam::210987654321:role/a/b"),
            "210987654321"
        );
        assert_eq!(role_account("arn:aws:iam:::role/x"), "arn:aws:iam:::role/x");
    }

    #[test]
    fn an_instance_has_every_address_of_every_interface_once() {
        let assoc = |a: &str| {
            InstanceNetworkInterfaceAssociation::builder()
                .public_ip(a)
                .build()
        };
        let i = Instance::builder()
            .instance_id("i-1")
            .vpc_id("vpc-1")
            .public_ip_address("54.1.1.1")
            .private_ip_address("10.0.0.1")
            .state(
                InstanceState::builder()
                    .name(InstanceStateName::Running)
                    .build(),
            )
            .network_interfaces(
                InstanceNetworkInterface::builder()
                    .association(assoc("54.1.1.1"))
                    .private_ip_address("10.0.0.1")
                    .private_ip_addresses(
                        InstancePrivateIpAddress::builder()
                            .private_ip_address("10.0.0.1")
                            .build(),
                    )
                    .private_ip_addresses(
                        InstancePrivateIpAddress::builder()
                            .private_ip_address("10.0.0.2")
                            .association(assoc("54.2.2.2"))
                            .build(),
                    )
                    .ipv6_addresses(
                        InstanceIpv6Address::builder()
                            .ipv6_address("2600:1f18::1")
                            .build(),
                    )
                    .build(),
            )
            .network_interfaces(
                InstanceNetworkInterface::builder()
                    .private_ip_address("10.0.1.9")
                    .ipv6_addresses(
                        InstanceIpv6Address::builder()
                            .ipv6_address("not an address")
                            .build(),
                    )
                    .build(),
            )
            .build();
        let rec = instance_rec(&i).expect("an id");
        let ips = |v: &[&str]| -> Vec<IpAddr> { v.iter().map(|s| s.parse().unwrap()).collect() };
        assert_eq!(rec.public_ipv4, ips(&["54.1.1.1", "54.2.2.2"]));
        assert_eq!(rec.private_ipv4, ips(&["10.0.0.1", "10.0.0.2", "10.0.1.9"]));
        assert_eq!(rec.ipv6, ips(&["2600:1f18::1"]));
        assert_eq!(rec.state.as_deref(), Some("running"));
        assert!(instance_rec(&Instance::builder().build()).is_none());
    }
}
