//! Connections or streams open at once per caller address: one caller cannot take what a
//! server shares with every other (the proxy's admin port, the agent's discovery streams).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

/// At most `max` held at once per address.
#[derive(Clone)]
pub struct PerAddress {
    max: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One held for its address until dropped.
pub struct Held {
    quota: PerAddress,
    ip: IpAddr,
}

impl PerAddress {
    pub fn new(max: usize) -> Self {
        PerAddress {
            max,
            open: Default::default(),
        }
    }

    /// One more for `ip`, unless it holds `max` already.
    pub fn take(&self, ip: IpAddr) -> Option<Held> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Held {
            quota: self.clone(),
            ip,
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut open = self.quota.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;

    #[test]
    fn each_address_has_its_own_count_given_back_on_drop() {
        let q = PerAddress::new(2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let one = q.take(a).unwrap();
        let _two = q.take(a).unwrap();
        assert!(q.take(a).is_none());
        assert!(q.take(b).is_some());
        drop(one);
        assert!(q.take(a).is_some());
        assert!(
            q.open.lock().unwrap().get(&b).is_none(),
            "b's entry went with its last"
        );
    }
}
