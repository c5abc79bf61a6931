//! The JSON files the proxy keeps in `data_dir` (the routing state, the
//! incidents, the error budget): each carries a `version`, is loaded with
//! errors that name the file, and is saved whole through `atomic_file`.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::atomic_file;
use crate::error::ProxyError;

/// What is read before the whole file, so that a file of another version
/// is reported as such rather than as a shape this build does not know.
#[derive(serde::Deserialize)]
struct Header {
    version: u32,
}

/// Reads `path`: `None` when there is no file yet (first start); an error
/// naming the file when it cannot be read, is not JSON of `version`, or
/// does not parse as `T`. `remedy` tells the operator what to do with a
/// corrupt file.
pub async fn load<T: DeserializeOwned>(
    path: &Path,
    version: u32,
    remedy: &str,
) -> Result<Option<T>, ProxyError> {
    let Some(bytes) = atomic_file::read(path)
        .await
        .map_err(|e| problem(path, format!("cannot read: {e}")))?
    else {
        return Ok(None);
    };
    let corrupt = |e: serde_json::Error| problem(path, format!("corrupt ({e}); {remedy}"));
    let header: Header = serde_json::from_slice(&bytes).map_err(corrupt)?;
    if header.version != version {
        return Err(problem(
            path,
            format!(
                "version {} is not {version}, the one this build reads",
                header.version
            ),
        ));
    }
    serde_json::from_slice(&bytes).map(Some).map_err(corrupt)
}

/// Writes `value` to `path` as pretty JSON (operators read these files),
/// atomically and off the runtime. Saves of one path land in the order
/// they were called.
pub async fn save<T: Serialize>(path: &Path, value: &T) -> Result<(), ProxyError> {
    let mut json = serde_json::to_vec_pretty(value)
        .map_err(|e| problem(path, format!("cannot serialize: {e}")))?;
    json.push(b'\n');
    atomic_file::write(path, json)
        .await
        .map_err(|e| problem(path, format!("cannot write: {e}")))
}

fn problem(path: &Path, reason: String) -> ProxyError {
    ProxyError::State {
        path: path.to_path_buf(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        version: u32,
        count: u64,
    }

    const REMEDY: &str = "move it away";

    #[tokio::test]
    async fn round_trips_and_a_missing_file_is_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/sample.json");
        let nothing: Option<Sample> = load(&path, 1, REMEDY).await.expect("no file is fine");
        assert_eq!(nothing, None);

        let sample = Sample {
            version: 1,
            count: 7,
        };
        save(&path, &sample).await.expect("save");

        assert_eq!(load(&path, 1, REMEDY).await.expect("load"), Some(sample));
    }

    #[tokio::test]
    async fn another_version_is_named_before_its_shape_is_checked() {
        // Arrange: a newer build's file, with a field this one does not know.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sample.json");
        std::fs::write(&path, r#"{"version": 2, "count": 1, "extra": true}"#).expect("write");

        // Act
        let err = load::<Sample>(&path, 1, REMEDY)
            .await
            .expect_err("another version");

        // Assert
        let text = err.to_string();
        assert!(
            text.contains("sample.json") && text.contains("version 2 is not 1"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_torn_file_is_corrupt_and_the_error_names_it_and_the_remedy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sample.json");
        for torn in [&br#"{"version": 1, "cou"#[..], b"", br#"{"count": 1}"#] {
            std::fs::write(&path, torn).expect("write");

            let err = load::<Sample>(&path, 1, REMEDY).await.expect_err("torn");

            let text = err.to_string();
            assert!(
                text.contains("sample.json") && text.contains("corrupt") && text.contains(REMEDY),
                "{text}"
            );
        }
    }

    #[tokio::test]
    async fn an_unreadable_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sample.json");
        std::fs::create_dir(&path).expect("a directory where the file should be");

        let err = load::<Sample>(&path, 1, REMEDY)
            .await
            .expect_err("unreadable");

        let text = err.to_string();
        assert!(
            text.contains("sample.json") && text.contains("cannot read"),
            "{text}"
        );
    }
}
