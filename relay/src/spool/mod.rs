//! The durable queue: RocksDB column families for bodies, queue entries and the due-time schedule.
//!
//! Invariant: every write goes through the group-commit writer. A new message is written with
//! [`Durability::Now`], so when [`Spool::insert`] returns it is in a fsynced WAL and the client
//! may hear `250`. A delivery's outcome is written with [`Durability::Soon`]: in the WAL at
//! once, on disk within 100 ms; a power failure in between can only make the relay try
//! again what it already delivered (at-least-once), never lose a message.

mod id;
pub(crate) mod scheduler;
mod state;
mod writer;

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, Direction, IteratorMode, Options,
    ReadOptions, DB,
};
use serde::{Deserialize, Serialize};

use crate::smtp::{Mailbox, ReversePath};

pub use id::MessageId;
pub(crate) use state::PluginState;
pub(crate) use writer::{Durability, Op};

/// All memtables together (RocksDB flushes the largest when they pass it). With the block
/// cache this is most of what a deep queue adds to the relay's memory: 32 + 16 MiB kept the
/// relay within 1.31x of its empty-queue RSS at 1M queued messages, with an unchanged accept
/// rate (bench/growth.sh); 64 + 32 MiB gave 2.06x.
const MEMTABLE_BUDGET: usize = 32 * 1024 * 1024;
/// WAL size past which RocksDB flushes the column families that keep old WAL files alive.
const MAX_WAL_BYTES: u64 = 256 * 1024 * 1024;
/// The block cache shared by every column family, table indexes and filters included.
const BLOCK_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// Table options with `cache` for data, index and filter blocks, so the memory tables take is
/// bounded by the cache, not by how many tables the queue fills.
pub(super) fn table_options(cache: &Cache) -> BlockBasedOptions {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_cache_index_and_filter_blocks(true);
    // The newest tables are read most (new messages, due keys): keep theirs resident.
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    table
}

/// Bytes of memory RocksDB uses for the spool, by kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpoolMemory {
    /// Memtables of every column family (bounded by the memtable budget).
    pub memtables: u64,
    /// Table readers outside the block cache.
    pub table_readers: u64,
    /// The shared block cache: data, index and filter blocks.
    pub block_cache: u64,
}

/// Column family names; one per purpose (DESIGN.md, "The spool").
pub(crate) const CF_BODY: &str = "body";
pub(crate) const CF_QUEUE: &str = "queue";
pub(crate) const CF_SCHEDULE: &str = "schedule";
const CF_META: &str = "meta";
pub(crate) const CF_PLUGIN_STATE: &str = "plugin_state";
const SCHEMA_KEY: &[u8] = b"schema";
const SCHEMA_VERSION: &[u8] = b"1";

/// A spool operation that failed; the SMTP side turns it into `451 4.3.0` or `452 4.3.1`.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The file system is full (ENOSPC) or below `min_free_space`.
    #[error("spool storage is full: {0}")]
    Full(String),
    /// RocksDB could not open the database.
    #[error("cannot open spool at {path}: {reason}")]
    Open {
        /// The database directory.
        path: PathBuf,
        /// RocksDB's explanation.
        reason: String,
    },
    /// A read or write failed.
    #[error("spool I/O failed: {0}")]
    Io(String),
    /// A stored record could not be decoded.
    #[error("spool record for {id} is corrupt: {reason}")]
    Corrupt {
        /// The message whose record is bad.
        id: MessageId,
        /// What was wrong with it.
        reason: String,
    },
    /// The writer thread has stopped (the relay is shutting down).
    #[error("spool writer has stopped")]
    Closed,
}

impl SpoolError {
    pub(crate) fn from_rocks(err: rocksdb::Error) -> SpoolError {
        let text = err.into_string();
        if text.contains("No space left on device") || text.contains("ENOSPC") {
            SpoolError::Full(text)
        } else {
            SpoolError::Io(text)
        }
    }
}

/// Per-recipient delivery state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RcptState {
    /// Not yet tried.
    Pending,
    /// Failed temporarily; try again at `next_ms` (Unix milliseconds).
    Deferred {
        /// When the next attempt is due.
        next_ms: u64,
    },
    /// Accepted by the remote side. Never sent again.
    Delivered,
    /// Failed permanently (or expired); a DSN went to the sender if there was one.
    Bounced,
}

/// One recipient of a queued message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecipientEntry {
    /// The forward path.
    pub addr: Mailbox,
    /// Where delivery stands.
    pub state: RcptState,
    /// Attempts made so far.
    pub attempts: u32,
    /// The last reply or error, for logs and DSNs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reply: Option<String>,
}

impl RecipientEntry {
    /// True when nothing more will happen to this recipient.
    pub fn is_final(&self) -> bool {
        matches!(self.state, RcptState::Delivered | RcptState::Bounced)
    }

    /// True when an attempt is due at `now_ms`.
    pub fn is_due(&self, now_ms: u64) -> bool {
        match self.state {
            RcptState::Pending => true,
            RcptState::Deferred { next_ms } => next_ms <= now_ms,
            RcptState::Delivered | RcptState::Bounced => false,
        }
    }
}

/// The envelope and delivery state of a queued message (the `queue` column family).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueEntry {
    /// Envelope sender (`<>` for DSNs).
    pub mail_from: ReversePath,
    /// When the message was accepted (Unix milliseconds).
    pub arrival_ms: u64,
    /// Body size in bytes as stored.
    pub size: u64,
    /// The submitting client's address (our own host for DSNs).
    pub client: Option<IpAddr>,
    /// The body has 8-bit content (send BODY=8BITMIME).
    pub eight_bit: bool,
    /// The envelope or headers need SMTPUTF8.
    pub smtputf8: bool,
    /// The key this message currently has in the schedule (Unix milliseconds).
    pub due_ms: u64,
    /// Recipients with their states, in RCPT order.
    pub recipients: Vec<RecipientEntry>,
    /// key=value labels set by plugins in on_data; choose_ip and on_bounce see them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<(String, String)>,
}

impl QueueEntry {
    /// True when every recipient is delivered or bounced.
    pub fn is_done(&self) -> bool {
        self.recipients.iter().all(RecipientEntry::is_final)
    }

    /// Earliest time a non-final recipient is due, if any.
    pub fn next_due_ms(&self) -> Option<u64> {
        self.recipients
            .iter()
            .filter_map(|r| match r.state {
                RcptState::Pending => Some(0),
                RcptState::Deferred { next_ms } => Some(next_ms),
                _ => None,
            })
            .min()
    }
}

/// A message about to be queued: envelope plus the exact bytes to deliver.
pub struct NewMessage<'a> {
    /// Envelope sender.
    pub mail_from: ReversePath,
    /// Envelope recipients.
    pub recipients: Vec<Mailbox>,
    /// Trace header(s) to put in front of the body (e.g. our `Received:`), CRLF-terminated.
    pub prefix: &'a [u8],
    /// The message as received.
    pub body: &'a [u8],
    /// Client address, if it came over SMTP.
    pub client: Option<IpAddr>,
    /// 8-bit content.
    pub eight_bit: bool,
    /// Needs SMTPUTF8.
    pub smtputf8: bool,
    /// Plugin tags to keep with the message.
    pub tags: Vec<(String, String)>,
}

/// What a scan of the schedule found.
pub(crate) struct DueScan {
    /// Messages due now that are not in flight, oldest first.
    pub due: Vec<MessageId>,
    /// True when `limit` was hit and more due entries may remain.
    pub more: bool,
    /// Due time of the first entry in the future, if any.
    pub next_due_ms: Option<u64>,
    /// Due time of the first live entry seen (a safe lower bound for the next scan).
    pub first_seen_ms: Option<u64>,
}

/// The RocksDB-backed queue. Cheap to clone.
#[derive(Clone)]
pub struct Spool {
    db: Arc<DB>,
    writer: writer::Handle,
    path: PathBuf,
    min_free_space: u64,
}

impl Spool {
    /// Opens (or creates) the spool at `path`.
    pub fn open(path: &Path, min_free_space: u64) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(path).map_err(|e| SpoolError::Open {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_max_background_jobs(2);
        options.set_keep_log_file_num(4);
        // Memory must not grow with queue depth. RocksDB's defaults let each column family
        // hold two 64 MiB memtables and keep table indexes outside any cache; measured, that
        // took the relay from 30 MiB to 550 MiB while 1M messages were queued. One budget
        // for all memtables, and one block cache that also holds indexes and filters:
        options.set_db_write_buffer_size(MEMTABLE_BUDGET);
        // A column family that is rarely written (meta) would otherwise pin every WAL file
        // until the WAL reached gigabytes, and a restart would replay it all.
        options.set_max_total_wal_size(MAX_WAL_BYTES);
        let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let with_cache = |mut options: Options| {
            options.set_block_based_table_factory(&table_options(&cache));
            options
        };
        let mut body_options = Options::default();
        // Bodies are written once, read once or twice and deleted: keep big values out of
        // compaction rewrites.
        body_options.set_enable_blob_files(true);
        body_options.set_min_blob_size(4096);
        body_options.set_enable_blob_gc(true);
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_BODY, with_cache(body_options)),
            ColumnFamilyDescriptor::new(CF_QUEUE, with_cache(Options::default())),
            ColumnFamilyDescriptor::new(CF_SCHEDULE, with_cache(Options::default())),
            ColumnFamilyDescriptor::new(CF_META, with_cache(Options::default())),
            ColumnFamilyDescriptor::new(CF_PLUGIN_STATE, state::cf_options(&cache)),
        ];
        let db = DB::open_cf_descriptors(&options, path, cfs).map_err(|e| SpoolError::Open {
            path: path.to_path_buf(),
            reason: e.into_string(),
        })?;
        let db = Arc::new(db);
        let spool_path = path.to_path_buf();
        check_schema(&db, &spool_path)?;
        let writer = writer::start(Arc::clone(&db)).map_err(|e| SpoolError::Open {
            path: spool_path.clone(),
            reason: e.to_string(),
        })?;
        Ok(Spool {
            db,
            writer,
            path: spool_path,
            min_free_space,
        })
    }

    /// Queues a message: body, entry and schedule key in one synced write.
    /// Returns only once the write is on disk.
    pub async fn insert(
        &self,
        id: MessageId,
        message: NewMessage<'_>,
    ) -> Result<QueueEntry, SpoolError> {
        let now = now_ms();
        let mut body = Vec::with_capacity(message.prefix.len() + message.body.len());
        body.extend_from_slice(message.prefix);
        body.extend_from_slice(message.body);
        let entry = QueueEntry {
            mail_from: message.mail_from,
            arrival_ms: now,
            size: body.len() as u64,
            client: message.client,
            eight_bit: message.eight_bit,
            smtputf8: message.smtputf8,
            tags: message.tags,
            due_ms: now,
            recipients: message
                .recipients
                .into_iter()
                .map(|addr| RecipientEntry {
                    addr,
                    state: RcptState::Pending,
                    attempts: 0,
                    last_reply: None,
                })
                .collect(),
        };
        let ops = vec![
            Op::put(CF_BODY, id.key().to_vec(), body),
            Op::put(CF_QUEUE, id.key().to_vec(), encode(&entry)?),
            Op::put(CF_SCHEDULE, schedule_key(now, id).to_vec(), Vec::new()),
        ];
        self.commit(ops, Durability::Now).await?;
        Ok(entry)
    }

    /// Writes a group of operations atomically, as durably as `durability` asks (a synced write
    /// shares one fsync with concurrent callers).
    pub(crate) async fn commit(
        &self,
        ops: Vec<Op>,
        durability: Durability,
    ) -> Result<(), SpoolError> {
        self.writer.write(ops, durability).await
    }

    /// Reads a message's queue entry.
    pub fn entry(&self, id: MessageId) -> Result<Option<QueueEntry>, SpoolError> {
        let cf = self.cf(CF_QUEUE)?;
        match self
            .db
            .get_pinned_cf(cf, id.key())
            .map_err(SpoolError::from_rocks)?
        {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| SpoolError::Corrupt {
                        id,
                        reason: e.to_string(),
                    })
            }
        }
    }

    /// Reads a message's stored bytes.
    pub fn body(&self, id: MessageId) -> Result<Option<Vec<u8>>, SpoolError> {
        let cf = self.cf(CF_BODY)?;
        self.db.get_cf(cf, id.key()).map_err(SpoolError::from_rocks)
    }

    /// Operations that replace `old`'s schedule key and entry with `entry`'s (or remove the
    /// message entirely when it is done).
    pub(crate) fn update_ops(
        id: MessageId,
        old_due_ms: u64,
        entry: &QueueEntry,
    ) -> Result<Vec<Op>, SpoolError> {
        let mut ops = vec![Op::delete(
            CF_SCHEDULE,
            schedule_key(old_due_ms, id).to_vec(),
        )];
        if entry.is_done() {
            ops.push(Op::delete(CF_QUEUE, id.key().to_vec()));
            ops.push(Op::delete(CF_BODY, id.key().to_vec()));
        } else {
            ops.push(Op::put(
                CF_SCHEDULE,
                schedule_key(entry.due_ms, id).to_vec(),
                Vec::new(),
            ));
            ops.push(Op::put(CF_QUEUE, id.key().to_vec(), encode(entry)?));
        }
        Ok(ops)
    }

    /// Operations that queue a new, locally generated message (a DSN) in the same batch as others.
    pub(crate) fn new_message_ops(
        mail_from: ReversePath,
        rcpt: Mailbox,
        body: Vec<u8>,
    ) -> Result<(MessageId, u64, Vec<Op>), SpoolError> {
        let id = MessageId::generate();
        let now = now_ms();
        let entry = QueueEntry {
            mail_from,
            arrival_ms: now,
            size: body.len() as u64,
            client: None,
            eight_bit: body.iter().any(|b| *b >= 0x80),
            smtputf8: !rcpt.is_ascii(),
            tags: Vec::new(),
            due_ms: now,
            recipients: vec![RecipientEntry {
                addr: rcpt,
                state: RcptState::Pending,
                attempts: 0,
                last_reply: None,
            }],
        };
        let ops = vec![
            Op::put(CF_BODY, id.key().to_vec(), body),
            Op::put(CF_QUEUE, id.key().to_vec(), encode(&entry)?),
            Op::put(CF_SCHEDULE, schedule_key(now, id).to_vec(), Vec::new()),
        ];
        Ok((id, now, ops))
    }

    /// Finds messages due at `now_ms`, skipping those in flight. Starts at `floor_ms`: every
    /// live schedule key is at or after it, so tombstones of delivered messages are not walked.
    pub(crate) fn scan_due(
        &self,
        now_ms: u64,
        floor_ms: u64,
        limit: usize,
        in_flight: &HashSet<MessageId>,
    ) -> Result<DueScan, SpoolError> {
        let cf = self.cf(CF_SCHEDULE)?;
        let mut read = ReadOptions::default();
        read.set_iterate_lower_bound(floor_ms.to_be_bytes().to_vec());
        let start = floor_ms.to_be_bytes();
        let iter =
            self.db
                .iterator_cf_opt(cf, read, IteratorMode::From(&start, Direction::Forward));
        let mut scan = DueScan {
            due: Vec::new(),
            more: false,
            next_due_ms: None,
            first_seen_ms: None,
        };
        for item in iter {
            let (key, _) = item.map_err(SpoolError::from_rocks)?;
            let Some((due, id)) = parse_schedule_key(&key) else {
                tracing::warn!(event = "spool_bad_key", key = ?key, "ignoring malformed schedule key");
                continue;
            };
            scan.first_seen_ms.get_or_insert(due);
            if due > now_ms {
                scan.next_due_ms = Some(due);
                break;
            }
            if in_flight.contains(&id) {
                continue;
            }
            if scan.due.len() == limit {
                scan.more = true;
                break;
            }
            scan.due.push(id);
        }
        Ok(scan)
    }

    /// What RocksDB holds in memory now, for the metrics.
    pub fn memory(&self) -> SpoolMemory {
        let sum = |property: &str| {
            [CF_BODY, CF_QUEUE, CF_SCHEDULE, CF_META, CF_PLUGIN_STATE]
                .iter()
                .filter_map(|name| self.db.cf_handle(name))
                .filter_map(|cf| self.db.property_int_value_cf(cf, property).ok().flatten())
                .sum()
        };
        SpoolMemory {
            memtables: sum("rocksdb.cur-size-all-mem-tables"),
            table_readers: sum("rocksdb.estimate-table-readers-mem"),
            // One cache serves every column family but the unused default one (asking the
            // database, not a column family, would read the default one's).
            block_cache: self
                .db
                .cf_handle(CF_QUEUE)
                .and_then(|cf| {
                    self.db
                        .property_int_value_cf(cf, "rocksdb.block-cache-usage")
                        .ok()
                        .flatten()
                })
                .unwrap_or(0),
        }
    }

    /// Number of messages in the queue (walks the queue column family; for tools and tests).
    pub fn count(&self) -> Result<usize, SpoolError> {
        let cf = self.cf(CF_QUEUE)?;
        let mut n = 0;
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            item.map_err(SpoolError::from_rocks)?;
            n += 1;
        }
        Ok(n)
    }

    /// True while the spool's file system has at least `min_free_space` bytes free.
    pub fn has_free_space(&self) -> bool {
        if self.min_free_space == 0 {
            return true;
        }
        match rustix::fs::statvfs(&self.path) {
            Ok(st) => st.f_bavail.saturating_mul(st.f_frsize) >= self.min_free_space,
            // Cannot tell: do not refuse mail over it; a real write failure still answers 4xx.
            Err(_) => true,
        }
    }

    /// The plugins' persistent key-value state, stored beside the queue.
    pub(crate) fn plugin_state(&self) -> PluginState {
        PluginState::new(Arc::clone(&self.db))
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, SpoolError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| SpoolError::Io(format!("column family {name} missing")))
    }
}

fn check_schema(db: &DB, path: &Path) -> Result<(), SpoolError> {
    let cf = db.cf_handle(CF_META).ok_or_else(|| SpoolError::Open {
        path: path.to_path_buf(),
        reason: "meta column family missing".into(),
    })?;
    match db.get_cf(cf, SCHEMA_KEY).map_err(SpoolError::from_rocks)? {
        None => db
            .put_cf(cf, SCHEMA_KEY, SCHEMA_VERSION)
            .map_err(SpoolError::from_rocks),
        Some(v) if v == SCHEMA_VERSION => Ok(()),
        Some(v) => Err(SpoolError::Open {
            path: path.to_path_buf(),
            reason: format!(
                "spool schema version {} is not supported by this relay (expects {})",
                String::from_utf8_lossy(&v),
                String::from_utf8_lossy(SCHEMA_VERSION)
            ),
        }),
    }
}

fn encode(entry: &QueueEntry) -> Result<Vec<u8>, SpoolError> {
    serde_json::to_vec(entry).map_err(|e| SpoolError::Io(format!("encoding queue entry: {e}")))
}

/// Schedule keys sort by due time: 8 bytes big-endian milliseconds, then the message id.
pub(crate) fn schedule_key(due_ms: u64, id: MessageId) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&due_ms.to_be_bytes());
    key[8..].copy_from_slice(&id.key());
    key
}

fn parse_schedule_key(key: &[u8]) -> Option<(u64, MessageId)> {
    if key.len() != 24 {
        return None;
    }
    let due = u64::from_be_bytes(key[..8].try_into().ok()?);
    let id = MessageId::from_key(&key[8..])?;
    Some((due, id))
}

/// Wall-clock time in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn mailbox(s: &str) -> Mailbox {
        Mailbox::parse(s).expect("valid address")
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn inserted_message_survives_reopen_with_its_recipients_pending() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = runtime().block_on(async {
            let spool = Spool::open(dir.path(), 0).expect("open");
            let id = MessageId::generate();
            spool
                .insert(
                    id,
                    NewMessage {
                        mail_from: ReversePath::Mailbox(mailbox("a@x.test")),
                        recipients: vec![mailbox("b@y.test"), mailbox("c@z.test")],
                        prefix: b"Received: test\r\n",
                        body: b"Subject: hi\r\n\r\nbody\r\n",
                        client: None,
                        eight_bit: false,
                        smtputf8: false,
                        tags: Vec::new(),
                    },
                )
                .await
                .expect("insert");
            id
        });
        let spool = Spool::open(dir.path(), 0).expect("reopen");
        let entry = spool.entry(id).expect("read").expect("present");
        assert_eq!(entry.recipients.len(), 2);
        assert!(entry
            .recipients
            .iter()
            .all(|r| r.state == RcptState::Pending));
        let body = spool.body(id).expect("read").expect("present");
        assert!(body.starts_with(b"Received: test\r\nSubject: hi"));
        let scan = spool
            .scan_due(now_ms() + 1, 0, 10, &HashSet::new())
            .expect("scan");
        assert_eq!(scan.due, vec![id]);
    }

    #[test]
    fn a_synced_write_syncs_before_it_returns_and_a_soon_write_within_the_interval() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path(), 0).expect("open");
        let ops = || {
            Spool::new_message_ops(ReversePath::Null, mailbox("r@x.test"), b"x".to_vec())
                .expect("ops")
        };
        runtime().block_on(async {
            let before = spool.writer.syncs();
            let (now_id, _, now_ops) = ops();
            spool
                .commit(now_ops, Durability::Now)
                .await
                .expect("commit");
            assert_eq!(spool.writer.syncs(), before + 1);
            assert!(spool.entry(now_id).expect("read").is_some());

            let (soon_id, _, soon_ops) = ops();
            let started = std::time::Instant::now();
            spool
                .commit(soon_ops, Durability::Soon)
                .await
                .expect("commit");
            // Readable at once, before any sync.
            assert!(spool.entry(soon_id).expect("read").is_some());
            while spool.writer.syncs() == before + 1 {
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "the soon write was never synced"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert!(
                started.elapsed() >= writer::SOON,
                "synced early: no batching gain"
            );
            // One sync for it, and none after: the writer waits for new writes.
            tokio::time::sleep(writer::SOON * 3).await;
            assert_eq!(spool.writer.syncs(), before + 2);
        });
    }

    #[test]
    fn scan_skips_in_flight_and_reports_the_next_due_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path(), 0).expect("open");
        runtime().block_on(async {
            let mut ids = Vec::new();
            for due in [100u64, 200, 300, 5_000] {
                let (id, _, mut ops) =
                    Spool::new_message_ops(ReversePath::Null, mailbox("r@x.test"), b"x".to_vec())
                        .expect("ops");
                // Move the schedule key to a chosen due time.
                ops.pop();
                ops.push(Op::put(
                    CF_SCHEDULE,
                    schedule_key(due, id).to_vec(),
                    Vec::new(),
                ));
                spool.commit(ops, Durability::Now).await.expect("commit");
                ids.push(id);
            }
            let in_flight: HashSet<_> = [ids[0]].into_iter().collect();
            let scan = spool.scan_due(1_000, 0, 10, &in_flight).expect("scan");
            assert_eq!(scan.due, vec![ids[1], ids[2]]);
            assert_eq!(scan.next_due_ms, Some(5_000));
            assert_eq!(scan.first_seen_ms, Some(100));
            let limited = spool.scan_due(1_000, 0, 1, &in_flight).expect("scan");
            assert_eq!(limited.due, vec![ids[1]]);
            assert!(limited.more);
            let floored = spool
                .scan_due(1_000, 250, 10, &HashSet::new())
                .expect("scan");
            assert_eq!(floored.due, vec![ids[2]]);
        });
    }

    #[test]
    fn done_message_is_removed_entirely() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path(), 0).expect("open");
        runtime().block_on(async {
            let id = MessageId::generate();
            let mut entry = spool
                .insert(
                    id,
                    NewMessage {
                        mail_from: ReversePath::Null,
                        recipients: vec![mailbox("b@y.test")],
                        prefix: b"",
                        body: b"x\r\n",
                        client: None,
                        eight_bit: false,
                        smtputf8: false,
                        tags: Vec::new(),
                    },
                )
                .await
                .expect("insert");
            let old_due = entry.due_ms;
            entry.recipients[0].state = RcptState::Delivered;
            let ops = Spool::update_ops(id, old_due, &entry).expect("ops");
            spool.commit(ops, Durability::Now).await.expect("commit");
            assert!(spool.entry(id).expect("read").is_none());
            assert!(spool.body(id).expect("read").is_none());
            assert_eq!(spool.count().expect("count"), 0);
            let scan = spool
                .scan_due(u64::MAX, 0, 10, &HashSet::new())
                .expect("scan");
            assert!(scan.due.is_empty());
        });
    }

    #[test]
    fn unsupported_schema_version_is_refused_with_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let spool = Spool::open(dir.path(), 0).expect("open");
            let cf = spool.db.cf_handle(CF_META).expect("meta");
            spool.db.put_cf(cf, SCHEMA_KEY, b"99").expect("put");
        }
        let err = Spool::open(dir.path(), 0)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("schema version 99"), "{err}");
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
    }

    #[test]
    fn min_free_space_beyond_the_disk_reports_no_space() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path(), u64::MAX).expect("open");
        assert!(!spool.has_free_space());
        let roomy = Spool::open(&dir.path().join("b"), 1).expect("open");
        assert!(roomy.has_free_space());
    }
}
