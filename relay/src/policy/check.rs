//! `relay plugin check FILE.wasm`: the load-time checks of one file, outside a running relay.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::plugin::{self, sha256_hex, Candidate};
use super::runtime::{Runtime, RuntimeOptions};
use super::state::MemoryStateStore;
use super::{PluginTable, PolicyError, INTERFACE};

/// What `relay plugin check` found out about a plugin that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginReport {
    /// The file checked.
    pub file: PathBuf,
    /// The plugin name the relay would use (the file stem).
    pub name: String,
    /// The name the plugin gives itself in `describe()`.
    pub declared_name: String,
    /// The plugin's version from `describe()`.
    pub version: String,
    /// The interface version the relay binds (and the plugin is compatible with).
    pub interface: &'static str,
    /// The hooks the plugin implements, in snake_case (`on_rcpt`, ...).
    pub hooks: Vec<&'static str>,
    /// SHA-256 of the file, hex.
    pub sha256: String,
}

impl fmt::Display for PluginReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hooks = if self.hooks.is_empty() {
            "(none)".to_string()
        } else {
            self.hooks.join(", ")
        };
        writeln!(f, "{}: ok", self.file.display())?;
        writeln!(
            f,
            "  name:       {} (declares \"{}\")",
            self.name, self.declared_name
        )?;
        writeln!(f, "  version:    {}", self.version)?;
        writeln!(f, "  interface:  {}", self.interface)?;
        writeln!(f, "  hooks:      {hooks}")?;
        write!(f, "  sha256:     {}", self.sha256)
    }
}

/// Validates a plugin file as the relay would load it: a component, built for a compatible
/// interface version, with satisfiable imports and complete exports, that compiles and whose
/// `describe()` works. Reports its name, version and hooks.
pub fn check_plugin(path: &Path) -> Result<PluginReport, PolicyError> {
    let bytes = std::fs::read(path).map_err(|source| PolicyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let runtime = Arc::new(Runtime::new(
        RuntimeOptions::checking(),
        Arc::new(MemoryStateStore::new()),
    )?);
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("plugin")
        .to_string();
    let sha256 = sha256_hex(&bytes);
    let (plugin, _) = plugin::load(
        &runtime,
        Candidate {
            name: &name,
            file: path,
            bytes: &bytes,
            hash: sha256.clone(),
            table: PluginTable::default(),
        },
    )?;
    Ok(PluginReport {
        file: path.to_path_buf(),
        name,
        declared_name: plugin.info.name.clone(),
        version: plugin.info.version.clone(),
        interface: INTERFACE,
        hooks: plugin.hook_names(),
        sha256,
    })
}

/// Same as [`check_plugin`].
pub fn check_file(path: &Path) -> Result<PluginReport, PolicyError> {
    check_plugin(path)
}
