//! The plugin directory: the initial load and the watcher that hot-reloads it.
//!
//! Every `poll_interval` the watcher lists `<dir>/*.wasm`. A file whose size, mtime or inode
//! changed is read fully and hashed; a new hash is loaded. A file that fails to load is refused
//! (`plugin_refused`) and the previous version of that plugin stays active; a removed file
//! unloads its plugin. When anything changed, a new [`PluginSet`] is swapped in; sets already
//! handed out are untouched.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use super::plugin::{self, sha256_hex, Candidate, LoadedPlugin};
use super::runtime::Runtime;
use super::{PluginSet, PolicyError, PolicySettings, Shared};

/// What identifies a file version cheaply, before hashing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode: meta.ino(),
        }
    }
}

/// What the loader knows about one plugin name.
#[derive(Default)]
struct Known {
    /// The stamp of the file last looked at.
    stamp: Stamp,
    /// The active version, if one loaded.
    plugin: Option<Arc<LoadedPlugin>>,
    /// The hash of the last refused version, so it is not retried (and logged) every poll.
    refused: Option<String>,
}

/// Loads the directory and keeps track of what is loaded.
pub(super) struct Loader {
    runtime: Arc<Runtime>,
    settings: PolicySettings,
    known: BTreeMap<String, Known>,
}

/// The plugin name of a path: the stem of a `*.wasm` file whose name does not start with `.`.
fn plugin_name(path: &Path) -> Option<String> {
    if path.extension()? != "wasm" {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    (!stem.is_empty() && !stem.starts_with('.')).then(|| stem.to_string())
}

impl Loader {
    /// A loader with nothing loaded yet.
    pub fn new(runtime: Arc<Runtime>, settings: PolicySettings) -> Loader {
        Loader {
            runtime,
            settings,
            known: BTreeMap::new(),
        }
    }

    /// Looks at the directory once and loads, replaces or unloads plugins; true when the set
    /// changed. An unreadable directory changes nothing.
    pub fn scan(&mut self) -> bool {
        let dir = self.settings.dir.clone();
        let listing = std::fs::read_dir(&dir).and_then(|entries| {
            entries
                .map(|entry| entry.map(|e| e.path()))
                .collect::<Result<Vec<PathBuf>, _>>()
        });
        let mut paths = match listing {
            Ok(paths) => paths,
            Err(err) => {
                tracing::warn!(event = "plugin_dir_unreadable", dir = %dir.display(), error = %err, "cannot list the plugin directory; keeping the current plugins");
                return false;
            }
        };
        paths.sort();
        let mut seen = BTreeSet::new();
        let mut changed = false;
        for path in paths {
            let Some(name) = plugin_name(&path) else {
                continue;
            };
            let meta = match std::fs::metadata(&path) {
                Ok(meta) => meta,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(_) => {
                    // Unreadable for now: keep whatever is loaded under this name.
                    seen.insert(name);
                    continue;
                }
            };
            if !meta.is_file() {
                continue;
            }
            seen.insert(name.clone());
            let stamp = Stamp::of(&meta);
            if self.known.get(&name).is_some_and(|k| k.stamp == stamp) {
                continue;
            }
            changed |= self.consider(&name, &path, stamp);
        }
        let gone: Vec<String> = self
            .known
            .keys()
            .filter(|name| !seen.contains(*name))
            .cloned()
            .collect();
        for name in gone {
            if let Some(Known {
                plugin: Some(plugin),
                ..
            }) = self.known.remove(&name)
            {
                tracing::info!(event = "plugin_unloaded", plugin = %name, file = %plugin.file.display(), "plugin file removed; plugin unloaded");
                changed = true;
            }
        }
        changed
    }

    /// Reads, hashes and (if new) loads one file; true when the active version changed.
    fn consider(&mut self, name: &str, path: &Path, stamp: Stamp) -> bool {
        let known = self.known.entry(name.to_string()).or_default();
        known.stamp = stamp;
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(source) => {
                let err = PolicyError::Io {
                    path: path.to_path_buf(),
                    source,
                };
                tracing::warn!(event = "plugin_refused", plugin = %name, file = %path.display(), reason = %err, kept_previous = known.plugin.is_some(), "plugin file refused");
                return false;
            }
        };
        let hash = sha256_hex(&bytes);
        if known.plugin.as_ref().is_some_and(|p| p.hash == hash)
            || known.refused.as_deref() == Some(hash.as_str())
        {
            return false;
        }
        let table = self.settings.plugins.get(name).cloned().unwrap_or_default();
        let candidate = Candidate {
            name,
            file: path,
            bytes: &bytes,
            hash: hash.clone(),
            table,
        };
        match plugin::load(&self.runtime, candidate) {
            Ok((plugin, stats)) => {
                tracing::info!(
                    event = "plugin_loaded",
                    plugin = %name,
                    file = %path.display(),
                    declared_name = %plugin.info.name,
                    version = %plugin.info.version,
                    hooks = ?plugin.hook_names(),
                    priority = plugin.priority,
                    sha256 = %hash,
                    cache_hit = ?stats.cache_hit,
                    compile_ms = stats.compile.as_secs_f64() * 1000.0,
                    replaced = known.plugin.is_some(),
                    "plugin loaded"
                );
                known.plugin = Some(Arc::new(plugin));
                known.refused = None;
                true
            }
            Err(err) => {
                tracing::warn!(
                    event = "plugin_refused",
                    plugin = %name,
                    file = %path.display(),
                    reason = %err,
                    kept_previous = known.plugin.is_some(),
                    "plugin file refused"
                );
                known.refused = Some(hash);
                false
            }
        }
    }

    /// The loaded plugins as a set, ordered by priority, then name.
    pub fn build_set(&self) -> PluginSet {
        let mut plugins: Vec<Arc<LoadedPlugin>> = self
            .known
            .values()
            .filter_map(|k| k.plugin.clone())
            .collect();
        plugins.sort_by(|a, b| {
            a.priority
                .cmp(&b.priority)
                .then_with(|| a.name.cmp(&b.name))
        });
        PluginSet::new(plugins, self.settings.fallback)
    }
}

/// Starts the watcher thread; it stops when `stop` is set or the [`super::Policy`] is gone.
pub(super) fn spawn(
    mut loader: Loader,
    shared: Weak<Shared>,
    stop: Arc<AtomicBool>,
    interval: Duration,
) -> Result<(), PolicyError> {
    let dir = loader.settings.dir.clone();
    std::thread::Builder::new()
        .name("relay-plugin-watch".to_string())
        .spawn(move || loop {
            std::thread::sleep(interval);
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let scanned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loader.scan()));
            match scanned {
                Ok(false) => {}
                Ok(true) => {
                    let Some(shared) = shared.upgrade() else {
                        break;
                    };
                    let set = loader.build_set();
                    tracing::info!(event = "plugins_reloaded", plugins = ?set.names(), "plugin set replaced");
                    shared.replace(set);
                }
                Err(_) => {
                    tracing::error!(event = "plugin_watch_error", dir = %loader.settings.dir.display(), "the plugin watcher panicked while scanning; it will retry");
                }
            }
        })
        .map(|_| ())
        .map_err(|source| PolicyError::Io { path: dir, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_visible_wasm_files_are_plugins() {
        assert_eq!(
            plugin_name(Path::new("d/rate-limit.wasm")).as_deref(),
            Some("rate-limit")
        );
        assert_eq!(plugin_name(Path::new("d/x.wasm.tmp")), None);
        assert_eq!(plugin_name(Path::new("d/.x.wasm")), None);
        assert_eq!(plugin_name(Path::new("d/readme.txt")), None);
    }
}
