//! Replacing a small file so that a crash leaves the old or the new
//! content, never a torn one (temp file, fsync, rename, fsync of the
//! folder), and reading it back; both on tokio's blocking pool, never on a
//! runtime worker thread, which is serving users.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Replaces `path`'s content with `bytes`, off the runtime. When writes of
/// one path overlap, the file ends with the bytes of the last one called:
/// a caller that stops waiting (its future dropped) leaves its write queued
/// on the blocking pool, and that older write must not land after a newer one.
pub async fn write(path: &Path, bytes: Vec<u8>) -> std::io::Result<()> {
    let order = order_of(path);
    let request = order.requested.fetch_add(1, Ordering::Relaxed) + 1;
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || write_in_order(&order, request, &path, &bytes))
        .await
        .map_err(std::io::Error::other)?
}

/// Reads a file that may not exist yet (`None` on first start), off the runtime.
pub async fn read(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match tokio::fs::read(path).await {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The writes requested and done for one path.
#[derive(Default)]
struct WriteOrder {
    /// The number of the last write called; numbers only grow.
    requested: AtomicU64,
    /// The number of the write whose bytes the file holds. The lock also
    /// keeps two writes of the path apart: they would share the temp file.
    written: Mutex<u64>,
}

/// One `WriteOrder` per path written in this process (a handful: the state
/// file, the incidents, the budget).
static ORDERS: Mutex<BTreeMap<PathBuf, Arc<WriteOrder>>> = Mutex::new(BTreeMap::new());

fn order_of(path: &Path) -> Arc<WriteOrder> {
    let mut orders = ORDERS
        .lock()
        .expect("the write-order lock is never poisoned: no panics under it");
    Arc::clone(orders.entry(path.to_path_buf()).or_default())
}

/// Blocking: writes `bytes` as write number `request`, unless a later write
/// already replaced the file.
fn write_in_order(
    order: &WriteOrder,
    request: u64,
    path: &Path,
    bytes: &[u8],
) -> std::io::Result<()> {
    let mut written = order
        .written
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if *written > request {
        return Ok(());
    }
    replace(path, bytes)?;
    *written = request;
    Ok(())
}

/// Blocking: the atomic replacement itself.
fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename is durable only once the directory entry is.
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replaces_the_content_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/file.json");
        assert_eq!(read(&path).await.expect("absent is fine"), None);
        write(&path, b"one".to_vec()).await.expect("first write");
        write(&path, b"two".to_vec()).await.expect("second write");
        assert_eq!(read(&path).await.expect("read"), Some(b"two".to_vec()));
        assert!(!temp_path(&path).exists());
    }

    #[test]
    fn a_write_that_runs_after_a_later_one_does_not_replace_it() {
        // Arrange: two writes called in order, run by the pool in reverse.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        let order = WriteOrder::default();
        let first = order.requested.fetch_add(1, Ordering::Relaxed) + 1;
        let second = order.requested.fetch_add(1, Ordering::Relaxed) + 1;

        // Act
        write_in_order(&order, second, &path, b"second").expect("second");
        write_in_order(&order, first, &path, b"first").expect("first");

        // Assert
        assert_eq!(std::fs::read(&path).expect("read"), b"second");
    }

    #[tokio::test]
    async fn a_read_error_other_than_absence_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A directory cannot be read as a file.
        let result = read(dir.path()).await;
        assert!(result.is_err(), "{result:?}");
    }
}
