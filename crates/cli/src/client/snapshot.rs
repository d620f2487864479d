//! `muster snapshot save FILE` and `muster snapshot restore FILE`: back up
//! the whole registry to a file and restore it onto a fresh server.
//!
//! The file is the server's snapshot document as it answered it
//! (`GET /api/v1/snapshot`), so a restore sends back exactly what was saved.

use super::http::Api;
use super::{decode, json_out};
use anyhow::{Result, anyhow};
use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;
use std::io::Write;
use std::path::Path;

/// The parts of a snapshot document the summary line needs.
#[derive(Debug, Deserialize)]
struct Saved {
    revision: u64,
    keys: Vec<Value>,
}

/// `PUT /api/v1/snapshot`.
#[derive(Debug, Deserialize)]
struct Restored {
    restored: usize,
    revision: u64,
}

pub async fn save(api: &Api, file: &Path, json: bool) -> Result<String> {
    let answer = api.get(&["snapshot"], &[]).await?;
    let bytes = serde_json::to_vec(&answer)?;
    write_atomically(file, &bytes)?;
    if json {
        return Ok(json_out(&serde_json::json!({
            "file": file.display().to_string(),
            "revision": answer.get("revision"),
            "keys": answer.get("keys").and_then(Value::as_array).map_or(0, Vec::len),
        })));
    }
    let saved: Saved = decode(answer)?;
    Ok(format!(
        "saved {} keys at revision {} to {}\n",
        saved.keys.len(),
        saved.revision,
        file.display()
    ))
}

pub async fn restore(api: &Api, file: &Path, json: bool) -> Result<String> {
    let bytes = std::fs::read(file)
        .map_err(|e| anyhow!("cannot read the snapshot {}: {e}", file.display()))?;
    let doc: Value = serde_json::from_slice(&bytes).map_err(|e| {
        anyhow!(
            "{} is not a snapshot (not JSON): {e}; use a file `muster snapshot save` wrote",
            file.display()
        )
    })?;
    let answer = api
        .send(Method::PUT, api.url(&["snapshot"], &[])?, Some(&doc))
        .await?;
    if json {
        return Ok(json_out(&answer));
    }
    let r: Restored = decode(answer)?;
    Ok(format!(
        "restored {} keys from {} (server at revision {})\n",
        r.restored,
        file.display(),
        r.revision
    ))
}

/// Writes `bytes` to a temporary file beside `file`, flushes it to disk and
/// renames it over `file`, so a crash never leaves a half-written snapshot
/// under the name the user asked for.
fn write_atomically(file: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = file
        .file_name()
        .ok_or_else(|| anyhow!("{} names no file", file.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(anyhow!(
            "cannot write the snapshot to {}: {e}",
            file.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_the_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("snap.json");
        std::fs::write(&file, b"old").unwrap();
        write_atomically(&file, b"new").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn atomic_write_into_a_missing_directory_says_where() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("missing").join("snap.json");
        let err = write_atomically(&file, b"x").unwrap_err().to_string();
        assert!(err.contains("snap.json"), "{err}");
    }
}
