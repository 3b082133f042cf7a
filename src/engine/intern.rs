//! A reference-counted string interner, so a tracked session holds a 4-byte id instead of a
//! user agent or an unusual origin. Strings whose last reference is released are freed, so
//! memory follows the live sessions, not everything ever seen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Id 0 means "no string".
pub const NONE: u32 = 0;

#[derive(Default)]
struct Inner {
    ids: HashMap<Arc<str>, u32>,
    /// Slot per id: the string and its reference count. Slot 0 is never used.
    slots: Vec<Option<(Arc<str>, u32)>>,
    free: Vec<u32>,
}

/// Thread-safe; lock order: callers may hold a DashMap shard lock while calling in, never the reverse.
#[derive(Default)]
pub struct Interner {
    inner: Mutex<Inner>,
}

impl Interner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means another thread panicked mid-update of plain counters.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a reference to `s`, interning it if new.
    pub fn acquire(&self, s: &str) -> u32 {
        if s.is_empty() {
            return NONE;
        }
        let mut g = self.lock();
        if let Some(&id) = g.ids.get(s) {
            if let Some(Some(slot)) = g.slots.get_mut(id as usize) {
                slot.1 += 1;
            }
            return id;
        }
        if g.slots.is_empty() {
            g.slots.push(None);
        }
        let text: Arc<str> = Arc::from(s);
        let id = match g.free.pop() {
            Some(id) => {
                g.slots[id as usize] = Some((text.clone(), 1));
                id
            }
            None => {
                g.slots.push(Some((text.clone(), 1)));
                (g.slots.len() - 1) as u32
            }
        };
        g.ids.insert(text, id);
        id
    }

    /// The id of `s` if it is interned, without taking a reference.
    pub fn lookup(&self, s: &str) -> Option<u32> {
        self.lock().ids.get(s).copied()
    }

    /// Drops one reference; the string is freed with its last one.
    pub fn release(&self, id: u32) {
        if id == NONE {
            return;
        }
        let mut g = self.lock();
        let freed = match g.slots.get_mut(id as usize) {
            Some(Some(slot)) => {
                slot.1 -= 1;
                (slot.1 == 0).then(|| slot.0.clone())
            }
            _ => None,
        };
        if let Some(text) = freed {
            g.ids.remove(&text);
            g.slots[id as usize] = None;
            g.free.push(id);
        }
    }

    pub fn get(&self, id: u32) -> Option<Arc<str>> {
        if id == NONE {
            return None;
        }
        match self.lock().slots.get(id as usize) {
            Some(Some((s, _))) => Some(s.clone()),
            _ => None,
        }
    }

    /// Number of live strings.
    pub fn len(&self) -> usize {
        self.lock().ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_freed_with_their_last_reference() {
        let i = Interner::default();
        let a = i.acquire("curl/8");
        let b = i.acquire("curl/8");
        assert_eq!(a, b);
        assert_eq!(i.get(a).as_deref(), Some("curl/8"));
        i.release(a);
        assert_eq!(i.len(), 1);
        i.release(b);
        assert_eq!(i.len(), 0);
        assert_eq!(i.get(a), None);
        let c = i.acquire("boto3");
        assert_eq!(c, a, "freed ids are reused");
        assert_eq!(i.acquire(""), NONE);
    }
}
