//! The inventory: the organisation's own addresses, read from EC2 in every configured account
//! and region, so that an origin that is ours is known as ours.
//! STUB: the live handle; reading from EC2 lands with the inventory work.

pub mod model;

use std::sync::{Arc, RwLock};

pub use model::{AccountRegion, InventorySnapshot, Owner};

/// The inventory in use, replaced on every refresh.
#[derive(Default)]
pub struct Inventory {
    current: RwLock<Arc<InventorySnapshot>>,
}

impl Inventory {
    pub fn new(s: InventorySnapshot) -> Inventory {
        Inventory {
            current: RwLock::new(Arc::new(s)),
        }
    }

    /// The snapshot in use (cheap: an `Arc`).
    pub fn snapshot(&self) -> Arc<InventorySnapshot> {
        self.current.read().expect("inventory lock").clone()
    }

    /// Replaces the snapshot in use.
    pub fn replace(&self, s: InventorySnapshot) {
        *self.current.write().expect("inventory lock") = Arc::new(s);
    }
}
