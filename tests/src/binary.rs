//! Where the binaries under test live: in the target directory the test executable was built in.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// How deep the staleness check looks into a package's `src/`.
const MAX_SRC_DEPTH: usize = 8;

/// The path of the workspace binary `name` (`proxy` or `shortener`).
///
/// A test executable runs from `target/<profile>/deps/`, and cargo puts the workspace binaries
/// one level up, in `target/<profile>/`.
///
/// # Panics
/// When the binary has not been built: `cargo test -p e2e` does not build other packages.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the running test executable has a path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executables live in target/<profile>/deps/");
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "the `{name}` binary is missing at {}: run `cargo build --workspace` first",
        path.display()
    );
    warn_if_stale(name, &path);
    path
}

/// `cargo test -p e2e` does not rebuild the other packages: says so when a binary is older
/// than its sources, since the tests would then judge old code.
fn warn_if_stale(name: &str, binary: &Path) {
    let sources = workspace_root().join(name).join("src");
    let built = std::fs::metadata(binary).and_then(|m| m.modified()).ok();
    let edited = newest_mtime(&sources, MAX_SRC_DEPTH);
    if let (Some(built), Some(edited)) = (built, edited) {
        if edited > built {
            eprintln!(
                "warning: {} is older than {}: run `cargo build --workspace` to test the current code",
                binary.display(),
                sources.display()
            );
        }
    }
}

/// The workspace directory: the parent of this crate's.
fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

fn newest_mtime(dir: &Path, depth: usize) -> Option<SystemTime> {
    let entries = std::fs::read_dir(dir).ok()?;
    entries
        .flatten()
        .filter_map(|entry| {
            let meta = entry.metadata().ok()?;
            if meta.is_dir() {
                (depth > 0)
                    .then(|| newest_mtime(&entry.path(), depth - 1))
                    .flatten()
            } else {
                meta.modified().ok()
            }
        })
        .max()
}

/// The workspace's reference proxy configuration, `config/proxy.toml`.
pub fn reference_config() -> PathBuf {
    workspace_root().join("config").join("proxy.toml")
}
