//! The node's discovery streams, shared among their callers (each a pod's address) by
//! max-min fairness. A caller may hold [`Streams`]' per-caller bound, and all of them the
//! node's bound; when the node's are all taken, a caller holding fewer than its fair share
//! (the node's bound over the callers holding streams, it included) still gets one: the
//! newest stream of the caller holding the most is ended for it. So no set of pods — each
//! with a mesh certificate, asking the agent themselves — can keep another pod's proxy from
//! discovering: it is refused only once it holds its share.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use tokio::sync::Notify;

#[derive(Clone)]
pub struct Streams {
    max: usize,
    per_caller: usize,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// Each caller's streams, oldest first: an id, and how to end it.
    by_caller: HashMap<IpAddr, Vec<(u64, Arc<Notify>)>>,
    total: usize,
    next: u64,
}

/// One stream's place, given back when dropped.
pub struct Held {
    streams: Streams,
    ip: IpAddr,
    id: u64,
    ended: Arc<Notify>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{0} discovery streams are open from {1}")]
    Caller(usize, IpAddr),
    #[error("the node's {0} discovery streams are open, and {1} holds its share")]
    Node(usize, IpAddr),
}

impl Streams {
    pub fn new(max: usize, per_caller: usize) -> Self {
        Streams {
            max,
            per_caller,
            state: Default::default(),
        }
    }

    /// A stream for `ip`, or why not; may end another caller's (see the module's doc).
    pub fn take(&self, ip: IpAddr) -> Result<Held, Refused> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mine = s.by_caller.get(&ip).map_or(0, Vec::len);
        if mine >= self.per_caller {
            return Err(Refused::Caller(self.per_caller, ip));
        }
        if s.total >= self.max {
            let callers = s.by_caller.len() + usize::from(mine == 0);
            let share = self.max / callers.max(1);
            // The caller holding the most, and how many.
            let heaviest = s
                .by_caller
                .iter()
                .map(|(c, v)| (*c, v.len()))
                .max_by_key(|(_, n)| *n);
            match heaviest {
                // Taking one from a caller only one ahead would just swap who is short.
                Some((heavy, n)) if mine < share && n > share && n > mine + 1 => {
                    if let Some(v) = s.by_caller.get_mut(&heavy) {
                        if let Some((_, end)) = v.pop() {
                            end.notify_one();
                        }
                        if v.is_empty() {
                            s.by_caller.remove(&heavy);
                        }
                    }
                    s.total -= 1;
                }
                _ => return Err(Refused::Node(self.max, ip)),
            }
        }
        let id = s.next;
        s.next += 1;
        let ended = Arc::new(Notify::new());
        s.by_caller.entry(ip).or_default().push((id, ended.clone()));
        s.total += 1;
        Ok(Held {
            streams: self.clone(),
            ip,
            id,
            ended,
        })
    }
}

impl Held {
    /// Resolves once the stream was ended for another caller's (its place is already given).
    pub async fn ended(&self) {
        self.ended.notified().await;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut s = self.streams.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(v) = s.by_caller.get_mut(&self.ip) else {
            return;
        };
        // Not there: it was ended for another's, and already given back.
        let Some(i) = v.iter().position(|(id, _)| *id == self.id) else {
            return;
        };
        v.remove(i);
        if v.is_empty() {
            s.by_caller.remove(&self.ip);
        }
        s.total -= 1;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn a_caller_under_its_share_takes_from_the_heaviest() {
        let q = Streams::new(8, 6);
        let (a, b, c) = (ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3"));
        let mut held_a: Vec<Held> = (0..6).map(|_| q.take(a).unwrap()).collect();
        assert_eq!(q.take(a).err(), Some(Refused::Caller(6, a)));
        let _b: Vec<Held> = (0..2).map(|_| q.take(b).unwrap()).collect();
        // Full. c's share is 8 / 3 = 2: its two come from a, the newest first.
        let c1 = q.take(c).unwrap();
        let _c2 = q.take(c).unwrap();
        assert_eq!(q.take(c).err(), Some(Refused::Node(8, c)));
        // b holds its share too: refused, not taking from a (a holds 4, b 2).
        assert_eq!(q.take(b).err(), Some(Refused::Node(8, b)));
        let newest = held_a.pop().unwrap();
        let second = held_a.pop().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), newest.ended())
            .await
            .unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), second.ended())
            .await
            .unwrap();
        // Their drops give nothing back twice.
        drop((newest, second));
        assert_eq!(q.state.lock().unwrap().total, 8);
        assert_eq!(q.take(c).err(), Some(Refused::Node(8, c)));
        // A stream given back is free for anyone.
        drop(c1);
        assert!(q.take(b).is_ok());
    }
}
