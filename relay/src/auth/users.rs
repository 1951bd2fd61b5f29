//! The users file: who may log in with SMTP AUTH, password verification, and the atomic edits
//! behind `relay user`.
//!
//! # Format
//!
//! UTF-8 text, one user a line as `NAME:HASH`, where HASH is an argon2 PHC string such as
//! `$argon2id$v=19$m=19456,t=2,p=1$SALT$HASH` (what `relay user add` writes). Blank lines and
//! lines starting with `#` are ignored; whitespace around a line is ignored. A NAME is 1 to 254
//! bytes with no whitespace, no control characters and no `:` (so `app@example.com` works);
//! names are compared exactly, case included. A name may appear once.
//!
//! # Reloading
//!
//! [`Users::watch`] looks at the file every second (size, mtime, ctime, inode; then a SHA-256 of
//! the content, as the plugin watcher does). A valid new version replaces the table
//! (`users_reloaded`); an invalid one is refused (`users_refused`, naming file, line and reason)
//! and the previous table stays; a removed file keeps the previous table (`users_file_missing`).

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{Output, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, Params};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

/// The longest user name in bytes: the longest email address (RFC 5321 4.5.3.1.3 less `<>`).
pub const MAX_NAME_LEN: usize = 254;

/// The highest argon2 memory cost a hash may ask for, in KiB (256 MiB). Every verification
/// allocates this much, so a typo such as `m=19456000` would otherwise take the relay down.
pub const MAX_MEMORY_KIB: u32 = 256 * 1024;

/// The highest argon2 time cost (passes) a hash may ask for.
pub const MAX_PASSES: u32 = 32;

/// How long a successful verification is remembered, so that an application opening one
/// session per message does not pay for argon2 every time.
const CACHE_TTL: Duration = Duration::from_secs(10 * 60);

/// How often the watcher looks at the file.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The salt of the dummy hash that unknown users are verified against (any fixed value works:
/// the result is thrown away).
const DUMMY_SALT: &[u8; 16] = b"relay-dummy-salt";

/// A user name as the users file allows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserName(String);

impl UserName {
    /// Checks a name: 1 to [`MAX_NAME_LEN`] bytes, no whitespace, control characters or `:`.
    pub fn parse(name: &str) -> Result<UserName, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong(name.len()));
        }
        if name.chars().any(char::is_whitespace) {
            return Err(NameError::Whitespace(name.to_string()));
        }
        if name.chars().any(char::is_control) {
            return Err(NameError::Control(name.to_string()));
        }
        if name.contains(':') {
            return Err(NameError::Colon(name.to_string()));
        }
        Ok(UserName(name.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a user name is not allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("user name is empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`] bytes.
    #[error("user name is {0} bytes long (at most 254)")]
    TooLong(usize),
    /// The name contains a space, tab or other whitespace.
    #[error("user name {0:?} contains whitespace")]
    Whitespace(String),
    /// The name contains a control character.
    #[error("user name {0:?} contains a control character")]
    Control(String),
    /// The name contains `:`, which separates the name from the hash.
    #[error("user name {0:?} contains ':'")]
    Colon(String),
}

/// Why a line of the users file is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// The file is not UTF-8 (from this line on).
    #[error("not UTF-8 text")]
    NotUtf8,
    /// The line has no `:`.
    #[error("expected NAME:HASH (e.g. app@example.com:$argon2id$v=19$m=19456,t=2,p=1$...)")]
    NoColon,
    /// The name is not allowed.
    #[error("{0}")]
    Name(NameError),
    /// The name was already on an earlier line.
    #[error("{name:?} is listed twice (first on line {first})")]
    Duplicate {
        /// The name.
        name: String,
        /// The line it first appeared on.
        first: usize,
    },
    /// The hash is not an argon2 PHC string.
    #[error("not an argon2 hash (expected $argon2id$v=19$...; `relay user add` writes one)")]
    NotArgon2,
    /// The hash is argon2 but malformed (parameters, salt or output).
    #[error("malformed argon2 hash: {0}")]
    BadHash(String),
    /// The hash asks for more memory or passes than the relay allows.
    #[error("argon2 cost too high: {0}")]
    CostTooHigh(String),
}

/// What can go wrong loading or editing the users file. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// The file could not be read (or does not exist where it must).
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The users file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A line is invalid.
    #[error("{}:{line}: {problem}", path.display())]
    Invalid {
        /// The users file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// What is wrong with it.
        problem: LineError,
    },
    /// The new version could not be written.
    #[error("{}: {action}: {source}", path.display())]
    Write {
        /// The users file.
        path: PathBuf,
        /// The step that failed (e.g. "cannot create the temporary file").
        action: String,
        /// Why.
        source: io::Error,
    },
    /// `remove` of a name that is not in the file.
    #[error("{}: no user {name:?}", path.display())]
    UnknownUser {
        /// The users file.
        path: PathBuf,
        /// The name asked for.
        name: String,
    },
    /// The password could not be hashed (for example, the OS random source failed).
    #[error("{}: {source}", path.display())]
    Hash {
        /// The users file.
        path: PathBuf,
        /// Why.
        source: HashError,
    },
}

/// The result of [`Users::verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// The user exists and the password is theirs.
    Ok,
    /// The user does not exist or the password is wrong (deliberately not told apart).
    BadCredentials,
}

/// What [`set_user`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The user is new; `created` when the file did not exist before.
    Added {
        /// The file was created.
        created: bool,
    },
    /// The user existed; the password was replaced.
    Replaced,
}

/// One user line.
#[derive(Debug)]
struct Entry {
    line: usize,
    name: String,
    hash: Arc<str>,
}

/// A parsed, valid users file.
struct Table {
    users: HashMap<String, Arc<str>>,
    /// What unknown users are verified against: the parameters of the first user's hash (so
    /// the time taken looks like a real user's), a fixed salt and an output no password yields.
    dummy: Arc<str>,
}

impl Table {
    fn from_entries(entries: Vec<Entry>) -> Table {
        let dummy = dummy_hash(entries.first().map(|e| &*e.hash));
        Table {
            users: entries.into_iter().map(|e| (e.name, e.hash)).collect(),
            dummy: dummy.into(),
        }
    }
}

/// Parses the file's bytes into its user lines, in file order; the error carries the line.
fn parse_entries(bytes: &[u8]) -> Result<Vec<Entry>, (usize, LineError)> {
    let text = std::str::from_utf8(bytes).map_err(|err| {
        let line = bytes[..err.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        (line, LineError::NotUtf8)
    })?;
    let mut entries: Vec<Entry> = Vec::new();
    let mut first_line: HashMap<&str, usize> = HashMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (name, hash) = trimmed.split_once(':').ok_or((line, LineError::NoColon))?;
        UserName::parse(name).map_err(|e| (line, LineError::Name(e)))?;
        if let Some(&first) = first_line.get(name) {
            return Err((
                line,
                LineError::Duplicate {
                    name: name.to_string(),
                    first,
                },
            ));
        }
        check_hash(hash).map_err(|e| (line, e))?;
        first_line.insert(name, line);
        entries.push(Entry {
            line,
            name: name.to_string(),
            hash: hash.into(),
        });
    }
    Ok(entries)
}

/// Checks that `hash` is an argon2 PHC string the relay can verify against.
fn check_hash(hash: &str) -> Result<(), LineError> {
    let argon2_prefix = ["$argon2id$", "$argon2i$", "$argon2d$"];
    if !argon2_prefix.iter().any(|p| hash.starts_with(p)) {
        return Err(LineError::NotArgon2);
    }
    let parsed = PasswordHash::new(hash).map_err(|e| LineError::BadHash(e.to_string()))?;
    let params = Params::try_from(&parsed).map_err(|e| LineError::BadHash(e.to_string()))?;
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err(LineError::BadHash("no salt or no hash value".into()));
    }
    if params.m_cost() > MAX_MEMORY_KIB {
        return Err(LineError::CostTooHigh(format!(
            "m={} KiB (at most {MAX_MEMORY_KIB})",
            params.m_cost()
        )));
    }
    if params.t_cost() > MAX_PASSES {
        return Err(LineError::CostTooHigh(format!(
            "t={} (at most {MAX_PASSES})",
            params.t_cost()
        )));
    }
    Ok(())
}

/// A hash with the parameters of `like` (default ones when `None` or unusable) that no
/// password verifies against.
fn dummy_hash(like: Option<&str>) -> String {
    let fallback = || {
        let salt = SaltString::encode_b64(DUMMY_SALT).ok();
        salt.and_then(|salt| {
            Argon2::default()
                .hash_password(b"", &salt)
                .ok()
                .map(|h| h.to_string())
        })
        .unwrap_or_default()
    };
    let Some(like) = like.and_then(|h| PasswordHash::new(h).ok()) else {
        return fallback();
    };
    let Ok(salt) = SaltString::encode_b64(DUMMY_SALT) else {
        return fallback();
    };
    let len = like.hash.map_or(Params::DEFAULT_OUTPUT_LEN, |h| h.len());
    let Ok(output) = Output::new(&vec![0u8; len]) else {
        return fallback();
    };
    PasswordHash {
        salt: Some(salt.as_salt()),
        hash: Some(output),
        ..like
    }
    .to_string()
}

/// True when `password` matches the PHC string `hash`. Slow (tens of milliseconds): call it on
/// a blocking thread.
fn argon2_matches(hash: &str, password: &[u8]) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default().verify_password(password, &parsed).is_ok(),
        Err(_) => false,
    }
}

/// Why a password could not be hashed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot hash the password: {0}")]
pub struct HashError(String);

/// Hashes a password with argon2id, the default parameters (m=19456 KiB, t=2, p=1) and a random
/// salt, as a PHC string for the users file.
pub fn hash_password(password: &[u8]) -> Result<String, HashError> {
    let mut salt = [0u8; 16];
    OsRng
        .try_fill_bytes(&mut salt)
        .map_err(|e| HashError(format!("no random salt from the OS: {e}")))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| HashError(e.to_string()))?;
    Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError(e.to_string()))
}

/// Compares two digests in time independent of where they differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// What identifies a file version cheaply, before reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    inode: u64,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        Stamp {
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            inode: meta.ino(),
        }
    }
}

/// What the watcher knows about the file.
struct Seen {
    /// The stamp last looked at; `None` forces a read.
    stamp: Option<Stamp>,
    /// SHA-256 of the active version.
    active: [u8; 32],
    /// SHA-256 of the last refused version, so it is logged once and not re-parsed every poll.
    refused: Option<[u8; 32]>,
    /// The last problem logged about the file itself (missing, unreadable), to log it once.
    trouble: Option<&'static str>,
}

/// What one look at the file found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Poll {
    /// Nothing new.
    Unchanged,
    /// A new valid version is active, with this many users.
    Reloaded(usize),
    /// The file changed but is invalid or unreadable; the previous table stays.
    Refused,
    /// The file is gone; the previous table stays.
    Missing,
}

/// A successful verification remembered.
struct Cached {
    /// SHA-256 over the process secret and the password.
    digest: [u8; 32],
    /// The hash it was verified against: an entry for an older hash is stale.
    hash: Arc<str>,
    at: Instant,
}

/// The users who may log in: the current table, reloaded when the file changes, and a cache of
/// recent successful verifications.
pub struct Users {
    path: PathBuf,
    table: RwLock<Arc<Table>>,
    cache: Mutex<HashMap<String, Cached>>,
    /// Per-process random key for the cache digests, so the cache never holds a plain hash of
    /// a password.
    secret: [u8; 32],
    /// Bounds concurrent argon2 runs (each allocates m KiB, 19 MiB by default).
    permits: Arc<Semaphore>,
    seen: Mutex<Seen>,
    /// Full argon2 verifications run (for tests and metrics).
    argon2_runs: std::sync::atomic::AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent; a panic elsewhere does not poison it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl Users {
    /// Reads and checks the users file; a missing or invalid file is an error naming it.
    pub fn load(path: &Path) -> Result<Arc<Users>, UsersError> {
        // The stamp is taken before reading: a change in between is seen by the next poll.
        let stamp = fs::metadata(path)
            .map(|m| Stamp::of(&m))
            .map_err(|source| UsersError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        let (bytes, entries) = read_entries(path)?;
        let table = Table::from_entries(entries);
        let count = table.users.len();
        let users = Users::with_table(path, table, stamp, sha256(&bytes));
        tracing::info!(event = "users_loaded", file = %path.display(), users = count, "users file loaded");
        if file_mode(path).is_some_and(|mode| mode & 0o004 != 0) {
            tracing::warn!(event = "users_file_readable", file = %path.display(), "the users file is readable by every local user; chmod 600 it");
        }
        Ok(Arc::new(users))
    }

    fn with_table(path: &Path, table: Table, stamp: Stamp, active: [u8; 32]) -> Users {
        let permits = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(2, 4);
        Users {
            path: path.to_path_buf(),
            table: RwLock::new(Arc::new(table)),
            cache: Mutex::new(HashMap::new()),
            secret: rand::random(),
            permits: Arc::new(Semaphore::new(permits)),
            seen: Mutex::new(Seen {
                stamp: Some(stamp),
                active,
                refused: None,
                trouble: None,
            }),
            argon2_runs: Default::default(),
        }
    }

    /// The users file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many users the active table has.
    pub fn len(&self) -> usize {
        self.current().users.len()
    }

    /// True when nobody can log in.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn current(&self) -> Arc<Table> {
        Arc::clone(&self.table.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Checks a user's password. argon2 runs on a blocking thread, at most 2 to 4 at once
    /// (more wait); an unknown user costs the same as a wrong password. A password verified
    /// within the last 10 minutes against the same hash is accepted from the cache.
    pub async fn verify(&self, user: &str, password: &[u8]) -> Verified {
        self.verify_at(user, password, Instant::now()).await
    }

    async fn verify_at(&self, user: &str, password: &[u8], now: Instant) -> Verified {
        let table = self.current();
        let hash = table.users.get(user).cloned();
        let digest = self.digest(password);
        if let Some(hash) = &hash {
            if self.cache_hit(user, hash, &digest, now) {
                return Verified::Ok;
            }
        }
        // The permit moves into the blocking task: a session that hangs up mid-verification
        // does not free it before argon2 is done with its memory.
        let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await else {
            return Verified::BadCredentials;
        };
        // A burst of sessions of one app all miss the cache at first; while this one waited for a
        // permit, another may have verified the same password, and the cache answers now.
        if let Some(hash) = &hash {
            if self.cache_hit(user, hash, &digest, now) {
                return Verified::Ok;
            }
        }
        self.argon2_runs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let target = hash.clone().unwrap_or_else(|| Arc::clone(&table.dummy));
        let password = password.to_vec();
        let matched = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            argon2_matches(&target, &password)
        })
        .await;
        match (matched, hash) {
            (Ok(true), Some(hash)) => {
                lock(&self.cache).insert(
                    user.to_string(),
                    Cached {
                        digest,
                        hash,
                        at: now,
                    },
                );
                Verified::Ok
            }
            (Ok(_), _) => Verified::BadCredentials,
            (Err(err), _) => {
                tracing::error!(event = "auth_verify_error", error = %err, "password verification failed to run");
                Verified::BadCredentials
            }
        }
    }

    fn digest(&self, password: &[u8]) -> [u8; 32] {
        Sha256::new()
            .chain_update(self.secret)
            .chain_update(password)
            .finalize()
            .into()
    }

    fn cache_hit(&self, user: &str, hash: &Arc<str>, digest: &[u8; 32], now: Instant) -> bool {
        let cache = lock(&self.cache);
        let Some(cached) = cache.get(user) else {
            return false;
        };
        // A different password for a cached user goes on to argon2 like any other: answering
        // it fast would tell who logged in recently.
        cached.hash == *hash
            && now.saturating_duration_since(cached.at) < CACHE_TTL
            && constant_time_eq(&cached.digest, digest)
    }

    /// Full argon2 verifications run so far (cache misses and unknown users), for metrics.
    pub fn argon2_runs(&self) -> u64 {
        self.argon2_runs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Starts a task that looks at the file every second and reloads it when it changed. It
    /// ends when the last `Arc` of these users is dropped. Call it inside a tokio runtime.
    pub fn watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let users = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(users) = users.upgrade() else {
                    break;
                };
                if let Err(err) = tokio::task::spawn_blocking(move || users.poll()).await {
                    tracing::error!(event = "users_watch_error", error = %err, "the users file watcher failed; it will retry");
                }
            }
        })
    }

    /// Looks at the file once and reloads it if its content changed.
    pub(crate) fn poll(&self) -> Poll {
        let mut seen = lock(&self.seen);
        let file = self.path.display();
        let meta = match fs::metadata(&self.path) {
            Ok(meta) => meta,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                seen.stamp = None;
                if seen.trouble != Some("missing") {
                    seen.trouble = Some("missing");
                    tracing::warn!(event = "users_file_missing", file = %file, "the users file is gone; keeping the users loaded before");
                }
                return Poll::Missing;
            }
            Err(err) => {
                seen.stamp = None;
                if seen.trouble != Some("unreadable") {
                    seen.trouble = Some("unreadable");
                    tracing::warn!(event = "users_file_unreadable", file = %file, error = %err, "cannot look at the users file; keeping the users loaded before");
                }
                return Poll::Refused;
            }
        };
        let stamp = Stamp::of(&meta);
        if seen.stamp == Some(stamp) {
            return Poll::Unchanged;
        }
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(err) => {
                if seen.trouble != Some("unreadable") {
                    seen.trouble = Some("unreadable");
                    tracing::warn!(event = "users_file_unreadable", file = %file, error = %err, "cannot read the users file; keeping the users loaded before");
                }
                return Poll::Refused;
            }
        };
        seen.stamp = Some(stamp);
        seen.trouble = None;
        let digest = sha256(&bytes);
        if digest == seen.active {
            return Poll::Unchanged;
        }
        if seen.refused == Some(digest) {
            return Poll::Refused;
        }
        match parse_entries(&bytes) {
            Ok(entries) => {
                let table = Table::from_entries(entries);
                let count = table.users.len();
                *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
                lock(&self.cache).clear();
                seen.active = digest;
                seen.refused = None;
                tracing::info!(event = "users_reloaded", file = %file, users = count, "users file reloaded");
                Poll::Reloaded(count)
            }
            Err((line, problem)) => {
                seen.refused = Some(digest);
                tracing::warn!(event = "users_refused", file = %file, line, reason = %problem, "users file refused; keeping the users loaded before");
                Poll::Refused
            }
        }
    }
}

/// The steps of [`write_atomically`] between creating the temporary file and the rename; an
/// error says which step failed.
fn fill_and_rename(
    file: &mut fs::File,
    text: &str,
    mode: u32,
    existing: Option<&fs::Metadata>,
    temp: &Path,
    target: &Path,
) -> Result<(), (String, io::Error)> {
    fn step(action: &'static str) -> impl Fn(io::Error) -> (String, io::Error) {
        move |e| (action.to_string(), e)
    }
    file.write_all(text.as_bytes())
        .map_err(step("cannot write the temporary file"))?;
    // The umask may have taken bits away from an existing file's mode.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(step("cannot set the mode"))?;
    if let Some(meta) = existing {
        let ours = file
            .metadata()
            .map_err(step("cannot stat the temporary file"))?;
        if (ours.uid(), ours.gid()) != (meta.uid(), meta.gid()) {
            std::os::unix::fs::fchown(&*file, Some(meta.uid()), Some(meta.gid())).map_err(|e| {
                (
                    format!(
                        "cannot keep the owner {}:{} (run as that user or root)",
                        meta.uid(),
                        meta.gid()
                    ),
                    e,
                )
            })?;
        }
    }
    file.sync_all()
        .map_err(step("cannot sync the temporary file"))?;
    fs::rename(temp, target).map_err(step("cannot replace the file"))
}

fn file_mode(path: &Path) -> Option<u32> {
    fs::metadata(path).ok().map(|m| m.permissions().mode())
}

/// The user names in `path`, in file order.
pub fn list_users(path: &Path) -> Result<Vec<String>, UsersError> {
    let (_, entries) = read_entries(path)?;
    Ok(entries.into_iter().map(|e| e.name).collect())
}

/// Reads and parses the users file: its bytes and its entries, or an error naming it.
fn read_entries(path: &Path) -> Result<(Vec<u8>, Vec<Entry>), UsersError> {
    let bytes = fs::read(path).map_err(|source| UsersError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let entries = parse_entries(&bytes).map_err(|(line, problem)| UsersError::Invalid {
        path: path.to_path_buf(),
        line,
        problem,
    })?;
    Ok((bytes, entries))
}

/// Adds `name` with `password` (hashed with [`hash_password`]), or replaces the password of an
/// existing user in place. Creates the file (mode 0600) when it does not exist. Comments and
/// the other lines are kept as they are.
pub fn set_user(path: &Path, name: &UserName, password: &[u8]) -> Result<Change, UsersError> {
    let hash = hash_password(password).map_err(|source| UsersError::Hash {
        path: path.to_path_buf(),
        source,
    })?;
    let _lock = EditLock::take(path)?;
    let (text, entries, exists) = read_for_edit(path)?;
    let new_line = format!("{}:{hash}", name.as_str());
    let (text, change) = match entries.iter().find(|e| e.name == name.as_str()) {
        Some(entry) => (
            replace_line(&text, entry.line, Some(&new_line)),
            Change::Replaced,
        ),
        None => {
            let mut text = text;
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&new_line);
            text.push('\n');
            (text, Change::Added { created: !exists })
        }
    };
    write_atomically(path, &text)?;
    Ok(change)
}

/// Removes `name` from the file; [`UsersError::UnknownUser`] when it is not there.
pub fn remove_user(path: &Path, name: &str) -> Result<(), UsersError> {
    let _lock = EditLock::take(path)?;
    let (text, entries, _) = read_for_edit(path)?;
    let Some(entry) = entries.iter().find(|e| e.name == name) else {
        return Err(UsersError::UnknownUser {
            path: path.to_path_buf(),
            name: name.to_string(),
        });
    };
    write_atomically(path, &replace_line(&text, entry.line, None))
}

/// The file's text and user lines; an absent file reads as empty (`false`). An invalid file is
/// refused: editing it would hide the mistake the relay is refusing.
fn read_for_edit(path: &Path) -> Result<(String, Vec<Entry>, bool), UsersError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Ok((String::new(), Vec::new(), false));
        }
        Err(source) => {
            return Err(UsersError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let entries = parse_entries(&bytes).map_err(|(line, problem)| UsersError::Invalid {
        path: path.to_path_buf(),
        line,
        problem,
    })?;
    // parse_entries checked that the bytes are UTF-8.
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Ok((text, entries, true))
}

/// `text` with line `line` (from 1) replaced by `with`, or removed when `with` is `None`.
fn replace_line(text: &str, line: usize, with: Option<&str>) -> String {
    let mut out = String::with_capacity(text.len() + 128);
    for (index, raw) in text.split_inclusive('\n').enumerate() {
        if index + 1 != line {
            out.push_str(raw);
            continue;
        }
        if let Some(with) = with {
            out.push_str(with);
            out.push_str(if raw.ends_with("\r\n") { "\r\n" } else { "\n" });
        }
    }
    out
}

/// An exclusive `flock` on the file's directory, so that two `relay user` edits at once do not
/// lose one another's change (the file itself is replaced by rename, so it cannot be locked).
struct EditLock {
    _dir: fs::File,
}

impl EditLock {
    fn take(path: &Path) -> Result<EditLock, UsersError> {
        let dir = directory_of(path);
        let file = fs::File::open(&dir).map_err(|source| UsersError::Write {
            path: path.to_path_buf(),
            action: format!("cannot open the directory {}", dir.display()),
            source,
        })?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
            UsersError::Write {
                path: path.to_path_buf(),
                action: "cannot lock the directory".into(),
                source: e.into(),
            }
        })?;
        Ok(EditLock { _dir: file })
    }
}

fn directory_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Replaces `path` with `text` so that a reader sees the old or the new file, never a mix:
/// a temporary file in the same directory, synced, renamed over, and the directory synced.
/// An existing file keeps its mode, owner and group (a root-run `relay user add` must not
/// leave a file the relay's own user cannot read); a new one is 0600.
fn write_atomically(path: &Path, text: &str) -> Result<(), UsersError> {
    // A symlinked users file is edited where it points, and stays a symlink.
    let target = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let existing = fs::metadata(&target).ok();
    let dir = directory_of(&target);
    let file_name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "users".into());
    let temp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let fail = |action: &str, source: io::Error| UsersError::Write {
        path: path.to_path_buf(),
        action: action.to_string(),
        source,
    };
    let mode = existing
        .as_ref()
        .map_or(0o600, |m| m.permissions().mode() & 0o7777);
    let _ = fs::remove_file(&temp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temp)
        .map_err(|e| fail("cannot create the temporary file", e))?;
    let written = fill_and_rename(&mut file, text, mode, existing.as_ref(), &temp, &target);
    if let Err((action, source)) = written {
        let _ = fs::remove_file(&temp);
        return Err(fail(&action, source));
    }
    // The rename is durable once the directory is synced.
    fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| fail("cannot sync the directory", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid hash of "secret" (computed once: argon2 is slow in debug builds).
    fn secret_hash() -> &'static str {
        static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        HASH.get_or_init(|| hash_password(b"secret").expect("hash"))
    }

    fn other_hash() -> &'static str {
        static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        HASH.get_or_init(|| hash_password(b"other").expect("hash"))
    }

    fn parse_err(text: &str) -> (usize, LineError) {
        match parse_entries(text.as_bytes()) {
            Ok(entries) => panic!("expected an error, parsed {entries:?}"),
            Err(err) => err,
        }
    }

    fn temp_users(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("users");
        fs::write(&path, text).expect("write users");
        (dir, path)
    }

    #[test]
    fn parses_names_hashes_comments_and_blank_lines() {
        let text = format!(
            "# relay users\n\napp@example.com:{h}\r\n  bob:{h}  \n# end",
            h = secret_hash()
        );
        let entries = parse_entries(text.as_bytes()).expect("valid");
        let names: Vec<(usize, &str)> = entries.iter().map(|e| (e.line, &*e.name)).collect();
        assert_eq!(names, vec![(3, "app@example.com"), (4, "bob")]);
        assert_eq!(&*entries[1].hash, secret_hash());
    }

    #[test]
    fn a_line_without_a_colon_is_refused_with_its_line() {
        assert_eq!(parse_err("# c\n\nalice\n"), (3, LineError::NoColon));
    }

    #[test]
    fn bad_names_are_refused() {
        let h = secret_hash();
        assert_eq!(
            parse_err(&format!(":{h}\n")),
            (1, LineError::Name(NameError::Empty))
        );
        let long = "a".repeat(255);
        assert_eq!(
            parse_err(&format!("{long}:{h}\n")),
            (1, LineError::Name(NameError::TooLong(255)))
        );
        assert_eq!(
            parse_err(&format!("a b:{h}\n")),
            (1, LineError::Name(NameError::Whitespace("a b".into())))
        );
        assert_eq!(
            parse_err(&format!("a\u{7}b:{h}\n")),
            (1, LineError::Name(NameError::Control("a\u{7}b".into())))
        );
        assert!(UserName::parse(&"a".repeat(254)).is_ok());
        assert_eq!(UserName::parse("a:b"), Err(NameError::Colon("a:b".into())));
    }

    #[test]
    fn a_name_listed_twice_names_both_lines() {
        let h = secret_hash();
        let (line, problem) = parse_err(&format!("bob:{h}\n# x\nbob:{h}\n"));
        assert_eq!(
            (line, &problem),
            (
                3,
                &LineError::Duplicate {
                    name: "bob".into(),
                    first: 1
                }
            )
        );
        assert_eq!(
            problem.to_string(),
            "\"bob\" is listed twice (first on line 1)"
        );
    }

    #[test]
    fn hashes_that_are_not_usable_argon2_are_refused() {
        let bcrypt = "$2y$10$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ01234";
        assert_eq!(
            parse_err(&format!("a:{bcrypt}\n")),
            (1, LineError::NotArgon2)
        );
        assert_eq!(parse_err("a:secret\n"), (1, LineError::NotArgon2));
        assert!(matches!(
            parse_err("a:$argon2id$v=19$m=19456,t=2,p=1$!!$zz\n"),
            (1, LineError::BadHash(_))
        ));
        assert!(matches!(
            parse_err("a:$argon2id$v=19$m=19456,t=2,p=1\n"),
            (1, LineError::BadHash(_))
        ));
        let greedy = secret_hash().replace("m=19456", "m=19456000");
        assert!(matches!(
            parse_err(&format!("a:{greedy}\n")),
            (1, LineError::CostTooHigh(_))
        ));
        let slow = secret_hash().replace("t=2", "t=1000");
        assert!(matches!(
            parse_err(&format!("a:{slow}\n")),
            (1, LineError::CostTooHigh(_))
        ));
    }

    #[test]
    fn non_utf8_is_refused_at_its_line() {
        let mut bytes = b"# ok\n# ok\nb\xffd:x\n".to_vec();
        bytes.extend_from_slice(b"more\n");
        assert_eq!(parse_entries(&bytes).unwrap_err(), (3, LineError::NotUtf8));
    }

    #[test]
    fn load_names_the_file_and_line_of_a_problem_and_a_missing_file() {
        let (_dir, path) = temp_users("# users\nalice:nothash\n");
        let err = Users::load(&path).err().expect("invalid");
        assert_eq!(
            err.to_string(),
            format!(
                "{}:2: not an argon2 hash (expected $argon2id$v=19$...; `relay user add` writes one)",
                path.display()
            )
        );
        let missing = path.with_file_name("nope");
        let err = Users::load(&missing).err().expect("missing");
        assert!(
            err.to_string()
                .starts_with(&format!("{}: cannot read", missing.display())),
            "{err}"
        );
    }

    #[tokio::test]
    async fn verify_accepts_the_right_password_only() {
        let (_dir, path) = temp_users(&format!("alice:{}\n", secret_hash()));
        let users = Users::load(&path).expect("load");
        assert_eq!(users.verify("alice", b"secret").await, Verified::Ok);
        assert_eq!(
            users.verify("alice", b"wrong").await,
            Verified::BadCredentials
        );
        assert_eq!(
            users.verify("Alice", b"secret").await,
            Verified::BadCredentials,
            "names are case-sensitive"
        );
    }

    #[tokio::test]
    async fn an_unknown_user_is_refused_after_a_full_verification() {
        let (_dir, path) = temp_users(&format!("alice:{}\n", secret_hash()));
        let users = Users::load(&path).expect("load");
        let before = users.argon2_runs();
        assert_eq!(
            users.verify("mallory", b"secret").await,
            Verified::BadCredentials
        );
        assert_eq!(users.argon2_runs(), before + 1, "a dummy argon2 ran");
        let dummy = users.current().dummy.clone();
        assert!(
            dummy.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "the dummy has the users' parameters: {dummy}"
        );
    }

    #[test]
    fn the_dummy_hash_takes_the_parameters_of_the_first_user() {
        let like = secret_hash().replace("m=19456,t=2", "m=8192,t=3");
        let dummy = dummy_hash(Some(&like));
        assert!(
            dummy.starts_with("$argon2id$v=19$m=8192,t=3,p=1$"),
            "{dummy}"
        );
        assert!(check_hash(&dummy).is_ok());
        assert!(dummy_hash(None).starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
    }

    #[tokio::test]
    async fn a_repeated_login_is_served_from_the_cache_until_it_expires() {
        let (_dir, path) = temp_users(&format!("alice:{}\n", secret_hash()));
        let users = Users::load(&path).expect("load");
        let now = Instant::now();
        assert_eq!(users.verify_at("alice", b"secret", now).await, Verified::Ok);
        let runs = users.argon2_runs();
        assert_eq!(users.verify_at("alice", b"secret", now).await, Verified::Ok);
        assert_eq!(users.argon2_runs(), runs, "cache hit: no argon2");

        assert_eq!(
            users.verify_at("alice", b"wrong", now).await,
            Verified::BadCredentials
        );
        assert_eq!(
            users.argon2_runs(),
            runs + 1,
            "a wrong password for a cached user still runs argon2"
        );

        let later = now + CACHE_TTL + Duration::from_secs(1);
        assert_eq!(
            users.verify_at("alice", b"secret", later).await,
            Verified::Ok
        );
        assert_eq!(users.argon2_runs(), runs + 2, "expired: argon2 again");
    }

    #[tokio::test]
    async fn a_reload_replaces_the_table_and_invalidates_the_cache() {
        let (_dir, path) = temp_users(&format!("alice:{}\n", secret_hash()));
        let users = Users::load(&path).expect("load");
        assert_eq!(users.verify("alice", b"secret").await, Verified::Ok);
        assert_eq!(users.poll(), Poll::Unchanged);

        fs::write(
            &path,
            format!("alice:{}\nbob:{}\n", other_hash(), secret_hash()),
        )
        .expect("rewrite");
        assert_eq!(users.poll(), Poll::Reloaded(2));
        assert_eq!(users.len(), 2);
        let runs = users.argon2_runs();
        assert_eq!(
            users.verify("alice", b"secret").await,
            Verified::BadCredentials,
            "the cached old password no longer works"
        );
        assert_eq!(users.argon2_runs(), runs + 1);
        assert_eq!(users.verify("alice", b"other").await, Verified::Ok);
        assert_eq!(users.verify("bob", b"secret").await, Verified::Ok);
    }

    #[test]
    fn a_cache_entry_for_an_older_hash_is_not_used() {
        let (_dir, path) = temp_users(&format!("alice:{}\n", secret_hash()));
        let users = Users::load(&path).expect("load");
        let now = Instant::now();
        let digest = users.digest(b"secret");
        lock(&users.cache).insert(
            "alice".into(),
            Cached {
                digest,
                hash: other_hash().into(),
                at: now,
            },
        );
        let current: Arc<str> = secret_hash().into();
        assert!(!users.cache_hit("alice", &current, &digest, now));
        lock(&users.cache).get_mut("alice").expect("entry").hash = current.clone();
        assert!(users.cache_hit("alice", &current, &digest, now));
    }

    #[tokio::test]
    async fn an_invalid_or_removed_file_keeps_the_previous_table() {
        let (_dir, path) = temp_users(&format!("alice:{}\n", secret_hash()));
        let users = Users::load(&path).expect("load");
        fs::write(&path, "alice:broken\n").expect("break");
        assert_eq!(users.poll(), Poll::Refused);
        assert_eq!(
            users.poll(),
            Poll::Unchanged,
            "refused once, not every poll"
        );
        assert_eq!(users.verify("alice", b"secret").await, Verified::Ok);

        fs::remove_file(&path).expect("remove");
        assert_eq!(users.poll(), Poll::Missing);
        assert_eq!(users.verify("alice", b"secret").await, Verified::Ok);

        fs::write(&path, format!("carol:{}\n", secret_hash())).expect("restore");
        assert_eq!(users.poll(), Poll::Reloaded(1));
        assert_eq!(
            users.verify("alice", b"secret").await,
            Verified::BadCredentials
        );
    }

    #[tokio::test]
    async fn watch_reloads_a_changed_file_and_stops_with_the_users() {
        let (_dir, path) = temp_users("");
        let users = Users::load(&path).expect("load");
        assert!(users.is_empty());
        let handle = users.watch();
        fs::write(&path, format!("alice:{}\n", secret_hash())).expect("write");
        let deadline = Instant::now() + Duration::from_secs(10);
        while users.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(users.len(), 1);
        drop(users);
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .expect("the watcher ends when the users are dropped")
            .expect("no panic");
    }

    #[test]
    fn edits_keep_comments_order_and_line_endings() {
        let h = secret_hash();
        let original = format!("# head\nalice:{h}\r\n\n# about bob\nbob:{h}\n# tail");
        let (_dir, path) = temp_users(&original);

        let bob = UserName::parse("bob").expect("name");
        assert_eq!(
            set_user(&path, &bob, b"new").expect("set"),
            Change::Replaced
        );
        let text = fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines[0], "# head");
        assert_eq!(lines[1], format!("alice:{h}\r"));
        assert_eq!(lines[3], "# about bob");
        let new_bob = lines[4].strip_prefix("bob:").expect("bob stays on line 5");
        assert!(argon2_matches(new_bob, b"new"));
        assert_eq!(lines[5], "# tail");

        let carol = UserName::parse("carol@example.com").expect("name");
        assert_eq!(
            set_user(&path, &carol, b"pw").expect("add"),
            Change::Added { created: false }
        );
        assert_eq!(
            list_users(&path).expect("list"),
            vec!["alice", "bob", "carol@example.com"]
        );
        let text = fs::read_to_string(&path).expect("read");
        assert!(
            text.contains("# tail\ncarol@example.com:$argon2id$"),
            "{text}"
        );

        remove_user(&path, "alice").expect("remove");
        let text = fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("# head\n\n# about bob\nbob:"), "{text}");
        assert_eq!(
            list_users(&path).expect("list"),
            vec!["bob", "carol@example.com"]
        );
        let leftovers: Vec<_> = fs::read_dir(path.parent().expect("dir"))
            .expect("list dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(
            leftovers,
            vec![std::ffi::OsString::from("users")],
            "no temp files left"
        );
    }

    #[test]
    fn a_new_file_is_created_private_and_an_existing_mode_is_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("users");
        let alice = UserName::parse("alice").expect("name");
        assert_eq!(
            set_user(&path, &alice, b"pw").expect("add"),
            Change::Added { created: true }
        );
        let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).expect("chmod");
        set_user(&path, &alice, b"pw2").expect("replace");
        assert_eq!(mode(&path), 0o640);
    }

    #[test]
    fn editing_goes_through_a_symlink() {
        let dir = tempfile::tempdir().expect("temp dir");
        let real = dir.path().join("real-users");
        fs::write(&real, "# mine\n").expect("write");
        let link = dir.path().join("users");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let alice = UserName::parse("alice").expect("name");
        set_user(&link, &alice, b"pw").expect("add");
        assert!(fs::symlink_metadata(&link)
            .expect("lstat")
            .file_type()
            .is_symlink());
        assert_eq!(list_users(&real).expect("list"), vec!["alice"]);
    }

    #[test]
    fn removing_an_unknown_user_or_editing_an_invalid_file_is_an_error() {
        let (_dir, path) = temp_users(&format!("alice:{}\n", secret_hash()));
        let err = remove_user(&path, "bob").expect_err("unknown");
        assert_eq!(
            err.to_string(),
            format!("{}: no user \"bob\"", path.display())
        );

        fs::write(&path, "alice:x\n").expect("break");
        let alice = UserName::parse("alice").expect("name");
        let err = set_user(&path, &alice, b"pw").expect_err("invalid");
        assert!(
            matches!(
                err,
                UsersError::Invalid {
                    line: 1,
                    problem: LineError::NotArgon2,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            fs::read_to_string(&path).expect("read"),
            "alice:x\n",
            "untouched"
        );
    }

    #[test]
    fn constant_time_eq_compares_whole_digests() {
        let a = [7u8; 32];
        let mut b = a;
        assert!(constant_time_eq(&a, &b));
        b[31] ^= 1;
        assert!(!constant_time_eq(&a, &b));
    }
}
