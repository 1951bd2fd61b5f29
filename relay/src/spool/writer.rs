//! Group commit: one thread owns RocksDB writes and shares each WAL fsync among every request
//! that arrived while the previous sync was running.
//!
//! A request is either [`Durability::Now`] (on disk when the write returns: a message the
//! client is about to hear `250` for) or [`Durability::Soon`] (in the WAL, so a crash of the
//! process loses nothing, and on disk with the next synced group or within [`SOON`]: the
//! outcome of a delivery, which a power failure may at worst make the relay repeat).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rocksdb::{WriteBatch, WriteOptions, DB};
use tokio::sync::oneshot;

use super::SpoolError;

/// Most requests merged into one synced batch.
const MAX_GROUP: usize = 4096;
/// Most bytes merged into one synced batch.
const MAX_GROUP_BYTES: usize = 64 * 1024 * 1024;

/// Longest time a [`Durability::Soon`] write waits for its fsync.
pub(crate) const SOON: Duration = Duration::from_millis(100);

/// When a write must reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// Synced before the write returns.
    Now,
    /// Written to the WAL before the write returns (safe from a crash of the process); synced
    /// with the next [`Durability::Now`] group, and at the latest [`SOON`] later.
    Soon,
}

/// One write in a batch.
pub(crate) enum Op {
    /// Set `key` to `value` in a column family.
    Put(&'static str, Vec<u8>, Vec<u8>),
    /// Remove `key` from a column family.
    Delete(&'static str, Vec<u8>),
}

impl Op {
    pub(crate) fn put(cf: &'static str, key: Vec<u8>, value: Vec<u8>) -> Op {
        Op::Put(cf, key, value)
    }

    pub(crate) fn delete(cf: &'static str, key: Vec<u8>) -> Op {
        Op::Delete(cf, key)
    }

    fn len(&self) -> usize {
        match self {
            Op::Put(_, k, v) => k.len() + v.len(),
            Op::Delete(_, k) => k.len(),
        }
    }
}

struct Request {
    ops: Vec<Op>,
    durability: Durability,
    done: oneshot::Sender<Result<(), String>>,
}

struct Inner {
    tx: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
    /// WAL fsyncs so far, for tests (operators see `relay_spool_syncs_total`).
    #[cfg_attr(not(test), allow(dead_code))]
    syncs: Arc<AtomicU64>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the thread after it has written what is queued; joining it
        // releases its handle on the database before the spool counts as closed.
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sends write requests to the group-commit thread. Cloning shares the thread.
#[derive(Clone)]
pub(crate) struct Handle(Arc<Inner>);

impl Handle {
    /// Writes `ops` atomically; resolves once they are as durable as `durability` asks.
    pub(crate) async fn write(
        &self,
        ops: Vec<Op>,
        durability: Durability,
    ) -> Result<(), SpoolError> {
        let (done, wait) = oneshot::channel();
        let tx = self.0.tx.as_ref().ok_or(SpoolError::Closed)?;
        tx.send(Request {
            ops,
            durability,
            done,
        })
        .map_err(|_| SpoolError::Closed)?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(text)) if text.contains("No space left on device") => {
                Err(SpoolError::Full(text))
            }
            Ok(Err(text)) => Err(SpoolError::Io(text)),
            Err(_) => Err(SpoolError::Closed),
        }
    }

    /// WAL fsyncs this writer has made.
    #[cfg(test)]
    pub(crate) fn syncs(&self) -> u64 {
        self.0.syncs.load(Ordering::Relaxed)
    }
}

/// Starts the writer thread for `db`.
pub(crate) fn start(db: Arc<DB>) -> std::io::Result<Handle> {
    let (tx, rx) = mpsc::channel::<Request>();
    let syncs = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&syncs);
    let thread = std::thread::Builder::new()
        .name("spool-writer".into())
        .spawn(move || run(&db, &rx, &counted))?;
    Ok(Handle(Arc::new(Inner {
        tx: Some(tx),
        thread: Some(thread),
        syncs,
    })))
}

fn run(db: &DB, rx: &mpsc::Receiver<Request>, syncs: &AtomicU64) {
    let mut synced = WriteOptions::default();
    synced.set_sync(true);
    let unsynced = WriteOptions::default();
    // When the oldest write not yet on disk must be synced at the latest.
    let mut sync_by: Option<Instant> = None;
    loop {
        let first = match sync_by {
            None => match rx.recv() {
                Ok(request) => request,
                Err(_) => break,
            },
            Some(deadline) => {
                match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(request) => request,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        sync_wal(db, syncs);
                        sync_by = None;
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
        };
        let mut bytes: usize = first.ops.iter().map(Op::len).sum();
        let mut group = vec![first];
        while group.len() < MAX_GROUP && bytes < MAX_GROUP_BYTES {
            match rx.try_recv() {
                Ok(next) => {
                    bytes += next.ops.iter().map(Op::len).sum::<usize>();
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        let sync = group.iter().any(|r| r.durability == Durability::Now);
        let result = write_group(db, &mut group, if sync { &synced } else { &unsynced });
        // A synced write's fsync covered every earlier write too; a failed one synced nothing,
        // so earlier unsynced writes keep their deadline.
        let synced_now = sync && result.is_ok();
        if synced_now {
            sync_by = None;
            syncs.fetch_add(1, Ordering::Relaxed);
        } else if sync_by.is_none() && !sync {
            sync_by = Some(Instant::now() + SOON);
        }
        crate::metrics::global().spool_written(group.len(), u64::from(synced_now));
        tracing::trace!(requests = group.len(), bytes, sync, "spool group commit");
        for request in group {
            let _ = request.done.send(result.clone());
        }
    }
    if sync_by.is_some() {
        sync_wal(db, syncs);
    }
}

/// Syncs what the WAL holds; a failure is logged (the writes stay in the OS's cache, so only
/// a power failure could lose them, and a later sync may still succeed).
fn sync_wal(db: &DB, syncs: &AtomicU64) {
    syncs.fetch_add(1, Ordering::Relaxed);
    crate::metrics::global().spool_written(0, 1);
    if let Err(err) = db.flush_wal(true) {
        tracing::error!(event = "spool_sync_failed", error = %err, "syncing the spool's WAL failed");
    }
}

fn write_group(db: &DB, group: &mut [Request], options: &WriteOptions) -> Result<(), String> {
    let mut batch = WriteBatch::default();
    for request in group.iter_mut() {
        for op in request.ops.drain(..) {
            match op {
                Op::Put(cf, key, value) => {
                    let handle = db
                        .cf_handle(cf)
                        .ok_or_else(|| format!("column family {cf} missing"))?;
                    batch.put_cf(handle, key, value);
                }
                Op::Delete(cf, key) => {
                    let handle = db
                        .cf_handle(cf)
                        .ok_or_else(|| format!("column family {cf} missing"))?;
                    batch.delete_cf(handle, key);
                }
            }
        }
    }
    db.write_opt(batch, options).map_err(|e| e.into_string())
}
