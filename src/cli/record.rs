//! `vmbuild record LABEL RECIPE`: names the latest results of a test recipe, so that a
//! later run can be compared with them (`vmbuild compare`). A record is a file of its own,
//! `<cache>/records/<LABEL>.json`, holding a copy of the results: `gc` removing the entry
//! they came from does not lose it.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::{Deserialize, Serialize};

use super::{open_engine, render::Renderer, results, Global};
use crate::engine::Error;
use crate::fsio::io_err;
use crate::store::{Store, StoreError};
use crate::testing::RunResults;

#[derive(Args)]
pub struct RecordArgs {
    /// The record's name: letters, digits, `.`, `_`, `+` and `-` (an existing record of
    /// that name is replaced)
    #[arg(value_name = "LABEL")]
    label: String,
    /// A test recipe name or path
    #[arg(value_name = "RECIPE")]
    recipe: String,
}

/// `records/<label>.json`.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Record {
    pub label: String,
    pub recipe: String,
    /// The results entry the record was taken from (`gc` may since have removed it).
    pub entry: PathBuf,
    /// That entry's key.
    pub key: String,
    /// Seconds since the epoch when the record was made.
    pub recorded_at: u64,
    pub results: RunResults,
}

pub fn run(global: &Global, reporter: &Renderer, args: RecordArgs) -> Result<i32, Error> {
    check_label(&args.label)?;
    let engine = open_engine(global, reporter, false)?;
    let latest = results::latest_results(&engine, &args.recipe)?;
    let record = Record {
        label: args.label,
        recipe: latest.entry.manifest.name.clone(),
        entry: latest.entry.path.clone(),
        key: latest.entry.manifest.key.clone(),
        recorded_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs(),
        results: latest.results,
    };
    let dir = engine.store.records_dir();
    let path = record_path(&dir, &record.label);
    let replaced = path.exists();
    write_atomically(&dir, &path, &record)?;
    println!(
        "recorded {}: {}, {} tests ({})",
        record.label,
        record.recipe,
        record.results.tests.len(),
        path.display()
    );
    if replaced {
        eprintln!("note: replaced the earlier record `{}`", record.label);
    }
    if latest.stale {
        eprintln!(
            "note: these results are for an older version of the inputs (`vmbuild explain {}` shows what changed)",
            record.recipe
        );
    }
    Ok(0)
}

/// A label names a file in the records folder: the rules of recipe names keep it one.
fn check_label(label: &str) -> Result<(), Error> {
    crate::recipe::grammar::recipe_name(label)
        .map_err(|message| Error::Usage(format!("bad record label: {message}")))
}

fn record_path(dir: &Path, label: &str) -> PathBuf {
    dir.join(format!("{label}.json"))
}

/// Writes a temp file beside `path` and renames it over `path`: a reader sees the old
/// record or the new one, never half of one.
fn write_atomically(dir: &Path, path: &Path, record: &Record) -> Result<(), Error> {
    let store_err = |e| Error::Store(StoreError::Io(e));
    fs_err::create_dir_all(dir).map_err(|e| store_err(io_err("create", dir)(e)))?;
    let json = serde_json::to_vec_pretty(record)
        .map_err(|e| store_err(io_err("serialize", path)(std::io::Error::other(e))))?;
    let mut temp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| store_err(io_err("create a temp file in", dir)(e)))?;
    temp.write_all(&json)
        .and_then(|()| temp.as_file().sync_all())
        .map_err(|e| store_err(io_err("write", temp.path())(e)))?;
    temp.persist(path)
        .map_err(|e| store_err(io_err("write", path)(e.error)))?;
    Ok(())
}

/// The record named `label`. An unknown one is a usage error that lists the records
/// there are.
pub(super) fn read(store: &Store, label: &str) -> Result<Record, Error> {
    check_label(label)?;
    let dir = store.records_dir();
    let path = record_path(&dir, label);
    let bytes = match fs_err::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let labels = labels(&dir);
            return Err(Error::Usage(match labels.is_empty() {
                true => format!(
                    "no record `{label}`, and no records yet: make one with `vmbuild record LABEL RECIPE`"
                ),
                false => format!("no record `{label}`: the records are {}", labels.join(", ")),
            }));
        }
        Err(e) => return Err(Error::Store(StoreError::Io(io_err("read", &path)(e)))),
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        Error::Store(StoreError::Io(io_err("read", &path)(
            std::io::Error::other(e),
        )))
    })
}

/// The labels of the records in `dir`, sorted.
fn labels(dir: &Path) -> Vec<String> {
    let mut labels: Vec<String> = fs_err::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|item| {
            let file = item.file_name().to_str()?.to_string();
            let label = file.strip_suffix(".json")?;
            // Not a temp file of a record being written.
            crate::recipe::grammar::recipe_name(label).ok()?;
            Some(label.to_string())
        })
        .collect();
    labels.sort();
    labels
}
