//! etcd backend: the trait's semantics are etcd's own — revisions, compare-and-swap
//! transactions on mod_revision, prefix watches with prev_kv, compaction → Expired.

use std::sync::{
    atomic::{AtomicI64, Ordering},
    Arc,
};

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, KeyValue, PutOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use futures::StreamExt;

use crate::{Event, Revision, Store, StoreError, Stored, WatchStream};

#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    history: i64,
    compacted: Arc<AtomicI64>,
}

/// Largest etcd response accepted (a page of big objects; gRPC's default is 4 MiB).
const MAX_RESPONSE: usize = 64 * 1024 * 1024;

/// The first key after every key that starts with `prefix` (etcd's range end for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn be(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn stored(kv: &KeyValue) -> Stored {
    Stored {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    }
}

impl EtcdStore {
    pub async fn connect(endpoints: &[String], history: i64) -> Result<Self, StoreError> {
        let client = Client::connect(endpoints, None).await.map_err(be)?;
        Ok(EtcdStore {
            client,
            history,
            compacted: Arc::new(AtomicI64::new(0)),
        })
    }

    /// Compacts history older than the window, in steps of 10% of it.
    async fn maybe_compact(&self, rev: Revision) {
        let done = self.compacted.load(Ordering::Relaxed);
        if rev - done > self.history + self.history / 10 {
            let to = rev - self.history;
            if self.compacted.fetch_max(to, Ordering::Relaxed) < to {
                if let Err(e) = self.client.kv_client().compact(to, None).await {
                    tracing::warn!(error = %e, "etcd compaction");
                }
            }
        }
    }

    /// Why a conditional transaction failed: the object is missing or has moved on.
    fn failure(
        key: &str,
        expected: Option<Revision>,
        resp: &etcd_client::TxnResponse,
    ) -> StoreError {
        let current = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().map(stored),
            _ => None,
        });
        match (current, expected) {
            (None, _) => StoreError::NotFound {
                key: key.to_string(),
            },
            (Some(cur), Some(e)) => StoreError::Conflict {
                key: key.to_string(),
                expected: e,
                actual: cur.mod_revision,
            },
            (Some(_), None) => StoreError::Backend(format!("transaction on {key} failed")),
        }
    }

    fn guard(key: &str, expected: Option<Revision>) -> Compare {
        match expected {
            Some(e) => Compare::mod_revision(key, CompareOp::Equal, e),
            None => Compare::create_revision(key, CompareOp::Greater, 0),
        }
    }
}

fn header_rev(h: Option<&etcd_client::ResponseHeader>) -> Revision {
    h.map(|h| h.revision()).unwrap_or_default()
}

impl Store for EtcdStore {
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Stored, StoreError> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value.clone(), None)]);
        let resp = self.client.kv_client().txn(txn).await.map_err(be)?;
        if !resp.succeeded() {
            return Err(StoreError::AlreadyExists {
                key: key.to_string(),
            });
        }
        let rev = header_rev(resp.header());
        self.maybe_compact(rev).await;
        Ok(Stored {
            key: key.to_string(),
            value,
            create_revision: rev,
            mod_revision: rev,
        })
    }

    async fn get(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        let resp = self.client.kv_client().get(key, None).await.map_err(be)?;
        Ok(resp.kvs().first().map(stored))
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<Revision>,
    ) -> Result<Stored, StoreError> {
        let txn = Txn::new()
            .when([Self::guard(key, expected)])
            .and_then([TxnOp::put(
                key,
                value.clone(),
                Some(PutOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.client.kv_client().txn(txn).await.map_err(be)?;
        if !resp.succeeded() {
            return Err(Self::failure(key, expected, &resp));
        }
        let rev = header_rev(resp.header());
        let create_revision = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Put(p) => p.prev_key().map(|kv| kv.create_revision()),
                _ => None,
            })
            .unwrap_or(rev);
        self.maybe_compact(rev).await;
        Ok(Stored {
            key: key.to_string(),
            value,
            create_revision,
            mod_revision: rev,
        })
    }

    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<(Stored, Revision), StoreError> {
        let txn = Txn::new()
            .when([Self::guard(key, expected)])
            .and_then([TxnOp::delete(
                key,
                Some(etcd_client::DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.client.kv_client().txn(txn).await.map_err(be)?;
        if !resp.succeeded() {
            return Err(Self::failure(key, expected, &resp));
        }
        let rev = header_rev(resp.header());
        let last = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Delete(d) => d.prev_kvs().first().map(stored),
                _ => None,
            })
            .ok_or_else(|| StoreError::NotFound {
                key: key.to_string(),
            })?;
        self.maybe_compact(rev).await;
        Ok((last, rev))
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<Stored>, Revision), StoreError> {
        // Pages at one revision: a single response for 10k objects passes gRPC's 4 MiB
        // default, and a page this size stays far below it for ordinary objects.
        const PAGE: i64 = 500;
        let end = prefix_end(prefix.as_bytes());
        let mut kv = self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_RESPONSE);
        let mut items: Vec<Stored> = Vec::new();
        let mut start = prefix.as_bytes().to_vec();
        let mut rev = 0;
        loop {
            let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if rev > 0 {
                opts = opts.with_revision(rev);
            }
            let resp = kv.get(start.clone(), Some(opts)).await.map_err(be)?;
            if rev == 0 {
                rev = header_rev(resp.header());
            }
            items.extend(resp.kvs().iter().map(stored));
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        items.sort_by(|a, b| a.key.cmp(&b.key));
        Ok((items, rev))
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        // etcd refuses a compacted start revision only in a second watch message; a historical
        // read at the same revision answers it up front, deterministically.
        if after > 0 {
            let probe = GetOptions::new().with_revision(after + 1).with_count_only();
            if let Err(e) = self.client.kv_client().get(prefix, Some(probe)).await {
                let msg = e.to_string();
                if msg.contains("compacted") {
                    return Err(StoreError::Expired {
                        requested: after,
                        oldest: self.compacted.load(Ordering::Relaxed) + 1,
                    });
                }
                if !msg.contains("future revision") {
                    return Err(be(e));
                }
            }
        }
        let opts = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(after + 1);
        let mut stream = self
            .client
            .watch_client()
            .watch(prefix, Some(opts))
            .await
            .map_err(be)?;
        // The first response confirms the watch, or says the start revision is compacted.
        let first = stream
            .message()
            .await
            .map_err(be)?
            .ok_or_else(|| be("watch closed at start"))?;
        if first.canceled() || first.compact_revision() > 0 {
            return Err(StoreError::Expired {
                requested: after,
                oldest: first.compact_revision(),
            });
        }
        let mut pending: Vec<Result<Event, StoreError>> = convert(&first);
        let s = futures::stream::poll_fn(move |cx| loop {
            if !pending.is_empty() {
                return std::task::Poll::Ready(Some(pending.remove(0)));
            }
            match futures::ready!(stream.poll_next_unpin(cx)) {
                None => return std::task::Poll::Ready(None),
                Some(Err(e)) => return std::task::Poll::Ready(Some(Err(be(e)))),
                Some(Ok(resp)) => {
                    if resp.canceled() {
                        let err = if resp.compact_revision() > 0 {
                            StoreError::Expired {
                                requested: after,
                                oldest: resp.compact_revision(),
                            }
                        } else {
                            be(format!("watch canceled: {}", resp.cancel_reason()))
                        };
                        return std::task::Poll::Ready(Some(Err(err)));
                    }
                    pending = convert(&resp);
                }
            }
        });
        Ok(Box::pin(s))
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        let resp = self
            .client
            .kv_client()
            .get("/", Some(GetOptions::new().with_count_only()))
            .await
            .map_err(be)?;
        Ok(header_rev(resp.header()))
    }
}

fn convert(resp: &etcd_client::WatchResponse) -> Vec<Result<Event, StoreError>> {
    resp.events()
        .iter()
        .filter_map(|e| {
            let kv = e.kv()?;
            Some(Ok(match e.event_type() {
                EventType::Put => Event::Put {
                    object: stored(kv),
                    prev: e.prev_kv().map(|p| p.value().to_vec()),
                },
                EventType::Delete => {
                    let prev = e.prev_kv();
                    Event::Delete {
                        object: Stored {
                            key: String::from_utf8_lossy(kv.key()).into_owned(),
                            value: prev.map(|p| p.value().to_vec()).unwrap_or_default(),
                            create_revision: prev.map(|p| p.create_revision()).unwrap_or_default(),
                            mod_revision: kv.mod_revision(),
                        },
                        revision: kv.mod_revision(),
                    }
                }
            }))
        })
        .collect()
}
