//! Group commit: one thread owns RocksDB writes and shares each WAL fsync among every request
//! that arrived while the previous sync was running.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use rocksdb::{WriteBatch, WriteOptions, DB};
use tokio::sync::oneshot;

use super::SpoolError;

/// Most requests merged into one synced batch.
const MAX_GROUP: usize = 4096;
/// Most bytes merged into one synced batch.
const MAX_GROUP_BYTES: usize = 64 * 1024 * 1024;

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
    done: oneshot::Sender<Result<(), String>>,
}

struct Inner {
    tx: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
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
    /// Writes `ops` atomically with `sync = true`; resolves once the WAL is on disk.
    pub(crate) async fn write(&self, ops: Vec<Op>) -> Result<(), SpoolError> {
        let (done, wait) = oneshot::channel();
        let tx = self.0.tx.as_ref().ok_or(SpoolError::Closed)?;
        tx.send(Request { ops, done })
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
}

/// Starts the writer thread for `db`.
pub(crate) fn start(db: Arc<DB>) -> std::io::Result<Handle> {
    let (tx, rx) = mpsc::channel::<Request>();
    let thread = std::thread::Builder::new()
        .name("spool-writer".into())
        .spawn(move || run(&db, &rx))?;
    Ok(Handle(Arc::new(Inner {
        tx: Some(tx),
        thread: Some(thread),
    })))
}

fn run(db: &DB, rx: &mpsc::Receiver<Request>) {
    let mut options = WriteOptions::default();
    options.set_sync(true);
    while let Ok(first) = rx.recv() {
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
        let result = write_group(db, &mut group, &options);
        tracing::trace!(requests = group.len(), bytes, "spool group commit");
        for request in group {
            let _ = request.done.send(result.clone());
        }
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
