//! Several `credwatch run` processes on one stream: shard leases in the Kinesis Client Library's
//! table layout ([`lease`], [`dynamo`]), and a two-level session store where the local map is a
//! cache and a DynamoDB table is the authority on each session's first origin ([`SharedState`]).

pub mod dynamo;
pub mod lease;

use std::sync::Arc;

use crate::engine::store::HomeEvidence;
use crate::engine::Authority;

use self::dynamo::{Proposed, StateTable};

/// The engine's view of the state table. The engine is synchronous (it runs inside the decode
/// loop, under no lock); a call parks this runtime thread with `block_in_place` while other
/// tasks move to the remaining threads. Only new sessions and candidate second origins call.
pub struct SharedState {
    pub table: Arc<StateTable>,
    handle: tokio::runtime::Handle,
}

impl SharedState {
    /// Needs a multi-threaded runtime (the `run` command's).
    pub fn new(table: Arc<StateTable>) -> anyhow::Result<SharedState> {
        let handle = tokio::runtime::Handle::current();
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            anyhow::bail!("the shared session store needs a multi-threaded runtime");
        }
        Ok(SharedState { table, handle })
    }

    /// Runs one call to the table from the engine's synchronous code: this runtime thread
    /// hands its work to another while it waits. Never call it holding a lock that runtime
    /// threads may wait on.
    fn wait<T>(
        &self,
        call: impl std::future::Future<Output = anyhow::Result<T>>,
    ) -> Result<T, String> {
        tokio::task::block_in_place(|| self.handle.block_on(call)).map_err(|e| format!("{e:#}"))
    }
}

impl Authority for SharedState {
    fn propose(
        &self,
        session: &str,
        home: &HomeEvidence,
        runtime_wins: bool,
    ) -> Result<Proposed, String> {
        self.wait(self.table.propose(session, home, runtime_wins))
    }

    fn publish_control(&self, json: &str) -> Result<(), String> {
        self.wait(self.table.publish_control(json))
    }

    fn control_since(&self, after: u64) -> Result<(Vec<String>, u64), String> {
        self.wait(self.table.control_since(after))
    }
}

/// The state table's conditional write, in memory: the reference model of the protocol, for
/// tests that run several engines in one process.
#[derive(Default)]
pub struct MemoryAuthority {
    /// Session -> (first origin, the origin it displaced).
    homes:
        std::sync::Mutex<std::collections::HashMap<String, (HomeEvidence, Option<HomeEvidence>)>>,
    /// When set, every call fails (an unreachable table).
    pub down: std::sync::atomic::AtomicBool,
    control: std::sync::Mutex<Vec<String>>,
}

impl MemoryAuthority {
    fn reachable(&self) -> Result<(), String> {
        if self.down.load(std::sync::atomic::Ordering::Relaxed) {
            return Err("state table unreachable".into());
        }
        Ok(())
    }
}

impl Authority for MemoryAuthority {
    fn propose(
        &self,
        session: &str,
        home: &HomeEvidence,
        runtime_wins: bool,
    ) -> Result<Proposed, String> {
        self.reachable()?;
        let mut homes = self.homes.lock().unwrap_or_else(|p| p.into_inner());
        let entry = homes.get(session).cloned();
        let cur = entry.as_ref().map(|(h, _)| h.clone());
        let wins = match &cur {
            None => true,
            Some(c) => {
                let runtime = c.tag == crate::engine::store::HomeTag::LambdaRuntime;
                c.expires < home.time
                    || if runtime_wins {
                        c.time > home.time || !runtime
                    } else {
                        c.time > home.time && !runtime
                    }
            }
        };
        if wins {
            homes.insert(session.to_string(), (home.clone(), cur.clone()));
            return Ok(Proposed {
                won: true,
                current: home.clone(),
                previous: cur,
            });
        }
        let (current, prev) = entry.expect("a failed condition means an item");
        // The same event proposed again (read again by a shard's next owner).
        let again = current.event_id == home.event_id && current.time == home.time;
        Ok(Proposed {
            won: again,
            current,
            previous: if again { prev } else { None },
        })
    }

    fn publish_control(&self, json: &str) -> Result<(), String> {
        self.reachable()?;
        self.control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(json.to_string());
        Ok(())
    }

    fn control_since(&self, after: u64) -> Result<(Vec<String>, u64), String> {
        self.reachable()?;
        let log = self.control.lock().unwrap_or_else(|p| p.into_inner());
        let from = (after as usize).min(log.len());
        Ok((log[from..].to_vec(), log.len() as u64))
    }
}
