//! Built plugin components for the end-to-end tests, and installing them into a relay's
//! plugin directory the way an operator should (write, then rename).

use std::path::{Path, PathBuf};

/// The build output directory the tests run from (`CARGO_TARGET_DIR`, else derived from the
/// test executable's path).
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            // <target>/debug/deps/e2e-xxxx -> <target>
            let exe = std::env::current_exe().unwrap_or_default();
            exe.ancestors()
                .nth(3)
                .map(Path::to_path_buf)
                .unwrap_or_default()
        }
    }
}

/// A compiled-plugin cache shared by the test relays and kept between runs (beside the build
/// output), so tests do not recompile the same plugins again and again.
pub fn cache_dir() -> PathBuf {
    target_dir().join("relay-tests-plugin-cache")
}

/// The `.wasm` component of plugin crate `crate_name` (e.g. "content-policy"), built by
/// `make plugins` into `<target>/wasm32-wasip2/release/`.
pub fn wasm(crate_name: &str) -> PathBuf {
    let file = format!("{}.wasm", crate_name.replace('-', "_"));
    let path = target_dir()
        .join("wasm32-wasip2")
        .join("release")
        .join(&file);
    assert!(
        path.exists(),
        "plugin {} not found: run `make plugins` (cargo build --release --target wasm32-wasip2 -p {crate_name})",
        path.display()
    );
    path
}

/// Copies plugin `crate_name` into `dir` as `<name>.wasm` (name = the plugin's config name),
/// via a temporary file and a rename, so the relay never reads half a file.
pub fn install(crate_name: &str, dir: &Path, name: &str) {
    std::fs::create_dir_all(dir).expect("plugin dir");
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::copy(wasm(crate_name), &tmp).expect("copy plugin");
    std::fs::rename(&tmp, dir.join(format!("{name}.wasm"))).expect("rename plugin");
}

/// Removes plugin `name` from `dir`.
pub fn remove(dir: &Path, name: &str) {
    std::fs::remove_file(dir.join(format!("{name}.wasm"))).expect("remove plugin");
}
