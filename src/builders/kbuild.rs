//! The kernel build folder's memory. Builds are out of tree in a folder kept per source
//! under `<store>/kbuild/`, so make only recompiles what changed. Make decides by
//! timestamps, which a content change can hide: `rsync -a`, `cp -p`, `tar x` or a
//! checkout can give an edited file an mtime older than its object. The folder therefore
//! records the listing of the sources it was last built from (`.vmbuild-sources`), when
//! make last returned, and which changed files no build has yet completed with
//! (`.vmbuild-state.json`). Before the next build, every such file, and every file whose
//! content changed since, is touched (mtime := now) when its mtime is not newer than make's
//! last return, so make sees it; a file added beside others of its name (a header that may
//! shadow another in the include path) touches those too. When vmbuild cannot be sure (no
//! record, a compile that was killed midway, a changed symlink, a file it cannot touch),
//! the folder is emptied and the kernel built clean.
//!
//! The record also remembers what the `.config` was made from (config base, fragments,
//! make flags, compiler, and every file Kconfig reads): when none of it changed and the
//! `.config` is as it was left, configuring is skipped.
//!
//! The folder is a cache, never an input: emptying it gives the same kernel.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{io_err, BuildError};
use crate::hashing::{self, Change, Listing};

const STATE: &str = ".vmbuild-state.json";
const SOURCES: &str = ".vmbuild-sources";

/// What the folder remembers of its last build.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    /// Digest of the source listing the last build started from (local trees only).
    sources: Option<String>,
    /// When make last returned from compiling, in nanoseconds since the epoch: every
    /// object in the folder is older.
    ended_ns: i128,
    /// Files that changed since a build last completed: touched again until one does (a
    /// failed build may not have recompiled them).
    #[serde(default)]
    pending: Vec<String>,
    /// False while make compiles: a folder left so was killed midway, and may hold
    /// half-written objects newer than their sources (Kbuild deletes those when a command
    /// fails, not when make is SIGKILLed).
    finished: bool,
    /// Digest of what the `.config` was made from, and of the `.config` it gave.
    config_inputs: Option<String>,
    config_sha256: Option<String>,
}

impl Default for State {
    fn default() -> State {
        State {
            sources: None,
            ended_ns: 0,
            pending: Vec::new(),
            finished: true,
            config_inputs: None,
            config_sha256: None,
        }
    }
}

/// A kernel build folder, held under its lock for one build.
pub(crate) struct BuildFolder {
    path: PathBuf,
    state: State,
}

impl BuildFolder {
    /// Opens the folder; with `fresh` (`-ff`), or when it holds a build vmbuild has no
    /// record of, or one killed while compiling, it is emptied first.
    pub(crate) fn open(
        path: &Path,
        fresh: bool,
        notice: &(dyn Fn(&str) + Sync),
    ) -> Result<BuildFolder, BuildError> {
        fs_err::create_dir_all(path).map_err(io_err("create", path))?;
        let state_path = path.join(STATE);
        let state: Option<State> = fs_err::read(&state_path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let mut folder = BuildFolder {
            path: path.to_path_buf(),
            state: state.clone().unwrap_or_default(),
        };
        let holds_a_build = fs_err::read_dir(path)
            .map_err(io_err("read", path))?
            .next()
            .is_some();
        let reason = if fresh {
            Some("asked for (-ff)")
        } else if holds_a_build && state.is_none() {
            Some("vmbuild has no record of what it was built from")
        } else if state.is_some_and(|s| !s.finished) {
            Some("the last compile in it was interrupted")
        } else {
            None
        };
        if let Some(reason) = reason {
            folder.empty(reason, notice)?;
        }
        Ok(folder)
    }

    fn empty(&mut self, reason: &str, notice: &(dyn Fn(&str) + Sync)) -> Result<(), BuildError> {
        notice(&format!("building from an empty build folder: {reason}"));
        fs_err::remove_dir_all(&self.path).map_err(io_err("empty", &self.path))?;
        fs_err::create_dir_all(&self.path).map_err(io_err("create", &self.path))?;
        self.state = State::default();
        self.save()
    }

    /// Makes sure make sees every source change since the folder's last build, then
    /// records this build as started from `sources` (a local tree's listing; `None` for a
    /// tree that never changes, such as an unpacked source package).
    pub(crate) fn start(
        &mut self,
        tree: &Path,
        sources: Option<&Listing>,
        notice: &(dyn Fn(&str) + Sync),
    ) -> Result<(), BuildError> {
        if let Some(new) = sources {
            let old = self.state.sources.as_ref().and_then(|digest| {
                let text = fs_err::read_to_string(self.path.join(SOURCES)).ok()?;
                let old = Listing {
                    digest: hashing::sha256_hex(text.as_bytes()),
                    text,
                };
                (old.digest == *digest).then_some(old)
            });
            let outcome = match &old {
                // Nothing was built from a recorded tree here since the folder was emptied.
                _ if self.state.sources.is_none() => Ok(Vec::new()),
                None => Err("its record of the sources is missing or damaged".to_string()),
                Some(old) => self.touch_hidden_changes(tree, old, new, notice),
            };
            self.state.pending = match outcome {
                Ok(pending) => pending,
                Err(problem) => {
                    self.empty(&problem, notice)?;
                    Vec::new()
                }
            };
            write_atomically(&self.path.join(SOURCES), new.text.as_bytes())?;
        }
        self.state.sources = sources.map(|s| s.digest.clone());
        self.save()
    }

    /// Touches each file that changed since the last build (or is still pending from a
    /// build that did not complete) yet does not look newer than make's last return.
    /// Ok: the files now pending; Err: why the folder cannot be trusted (it is emptied).
    fn touch_hidden_changes(
        &self,
        tree: &Path,
        old: &Listing,
        new: &Listing,
        notice: &(dyn Fn(&str) + Sync),
    ) -> Result<Vec<String>, String> {
        use std::collections::BTreeSet;
        use std::os::unix::fs::MetadataExt;
        let changes = hashing::changes(old, new);
        let mut changed: BTreeSet<&str> = changes
            .iter()
            .filter(|(_, c)| *c != Change::Removed)
            .map(|(rel, _)| *rel)
            .collect();
        let in_new: BTreeSet<&str> = new.files().map(|(rel, _)| rel).collect();
        changed.extend(
            self.state
                .pending
                .iter()
                .map(String::as_str)
                .filter(|p| in_new.contains(p)),
        );
        // A file added where the include path may find it first shadows its namesakes,
        // which make's dependency records still name: touch them too.
        let added: BTreeSet<&str> = changes
            .iter()
            .filter(|(rel, c)| *c == Change::Added && shadows(rel))
            .map(|(rel, _)| base_name(rel))
            .collect();
        if !added.is_empty() {
            changed.extend(in_new.iter().filter(|rel| added.contains(base_name(rel))));
        }
        let mut touched = Vec::new();
        for rel in &changed {
            let path = tree.join(rel);
            let meta = path
                .symlink_metadata()
                .map_err(|e| format!("{} changed but cannot be read: {e}", path.display()))?;
            if meta.file_type().is_symlink() {
                return Err(format!("the symlink {rel} changed"));
            }
            let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
            if mtime_ns <= self.state.ended_ns {
                touch(&path).map_err(|e| {
                    format!("{rel} changed with an old mtime and cannot be touched: {e}")
                })?;
                touched.push(*rel);
            }
        }
        if !touched.is_empty() {
            notice(&format!(
                "{} changed file(s) carry an mtime older than the last build, touched so make rebuilds them: {}{}",
                touched.len(),
                touched.iter().take(5).copied().collect::<Vec<_>>().join(", "),
                if touched.len() > 5 { ", ..." } else { "" }
            ));
        }
        Ok(changed.into_iter().map(str::to_string).collect())
    }

    /// Marks the folder as being built into (configure steps build host tools there too):
    /// killed before make `returned`, it is emptied next time.
    pub(crate) fn compiling(&mut self) -> Result<(), BuildError> {
        self.state.finished = false;
        self.save()
    }

    /// A make in the folder returned with an exit status: what it left is whole (Kbuild
    /// removes what a failed command half-made), and every file it wrote is older than
    /// now. After a successful compile (`compiled`), no change is pending.
    pub(crate) fn returned(&mut self, compiled: bool) -> Result<(), BuildError> {
        self.state.finished = true;
        self.state.ended_ns = now_ns();
        if compiled {
            self.state.pending.clear();
        }
        self.save()
    }

    /// Whether the `.config` can be kept as it is: made from the same `inputs`, and not
    /// changed since.
    pub(crate) fn config_is_current(&self, inputs: &str) -> bool {
        self.state.config_inputs.as_deref() == Some(inputs)
            && self.state.config_sha256.is_some()
            && self.state.config_sha256 == self.config_sha256()
    }

    /// Records that the `.config` now in the folder was made from `inputs`.
    pub(crate) fn config_made(&mut self, inputs: &str) -> Result<(), BuildError> {
        self.state.config_inputs = Some(inputs.to_string());
        self.state.config_sha256 = self.config_sha256();
        self.save()
    }

    fn config_sha256(&self) -> Option<String> {
        hashing::sha256_file(&self.path.join(".config"))
            .ok()
            .map(|(sha, _)| sha)
    }

    fn save(&self) -> Result<(), BuildError> {
        let bytes = serde_json::to_vec_pretty(&self.state).expect("the state serializes");
        write_atomically(&self.path.join(STATE), &bytes)
    }
}

fn base_name(rel: &str) -> &str {
    rel.rsplit('/').next().unwrap_or(rel)
}

/// Whether an added file can stand in for a namesake elsewhere (a header or other source
/// found through an include path), unlike Kbuild's per-folder Makefiles and Kconfigs.
fn shadows(rel: &str) -> bool {
    let name = base_name(rel);
    !["Makefile", "Kconfig", "Kbuild"]
        .iter()
        .any(|n| name.starts_with(n))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    fs_err::write(&tmp, bytes).map_err(io_err("write", &tmp))?;
    fs_err::rename(&tmp, path).map_err(io_err("write", path))?;
    Ok(())
}

fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// Sets a file's mtime to now, leaving its content and atime alone.
fn touch(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("a NUL in the path"))?;
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
    ];
    // SAFETY: a valid NUL-terminated path and two timespecs, as utimensat(2) wants.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn listing(tree: &Path, cache: &Path) -> Listing {
        hashing::source_tree_listing(tree, &cache.join("c"), &[]).unwrap()
    }

    fn set_mtime(path: &Path, secs: u64) {
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
            .unwrap();
    }

    #[test]
    fn a_change_with_an_old_mtime_is_touched_and_an_unknown_or_interrupted_folder_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("src");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(tree.join("main.c"), "one").unwrap();
        std::fs::write(tree.join("other.c"), "same").unwrap();
        set_mtime(&tree.join("other.c"), 1_000);
        let cache = dir.path().join("statcache");
        let build = dir.path().join("build");
        let quiet = |_: &str| {};
        // The next build: open the folder, start it from the tree as it is now.
        let reopen = || {
            let mut folder = BuildFolder::open(&build, false, &quiet).unwrap();
            folder
                .start(&tree, Some(&listing(&tree, &cache)), &quiet)
                .unwrap();
            folder
        };

        // A folder with objects but no record is emptied.
        std::fs::create_dir_all(&build).unwrap();
        std::fs::write(build.join("main.o"), "stale").unwrap();
        let mut folder = BuildFolder::open(&build, false, &quiet).unwrap();
        assert!(!build.join("main.o").exists());
        folder
            .start(&tree, Some(&listing(&tree, &cache)), &quiet)
            .unwrap();
        folder.compiling().unwrap();
        std::fs::write(build.join("main.o"), "object").unwrap();
        folder.returned(true).unwrap();

        // Content changed, mtime set back: touched. Unchanged files are left alone.
        std::fs::write(tree.join("main.c"), "two").unwrap();
        set_mtime(&tree.join("main.c"), 1_000);
        let mut folder = reopen();
        assert!(std::fs::metadata(tree.join("main.c")).unwrap().mtime() > 1_000);
        assert_eq!(
            std::fs::metadata(tree.join("other.c")).unwrap().mtime(),
            1_000
        );
        assert!(
            build.join("main.o").exists(),
            "an incremental build keeps objects"
        );

        // A failed compile leaves main.c pending: touched again next time, though unchanged.
        folder.compiling().unwrap();
        folder.returned(false).unwrap();
        set_mtime(&tree.join("main.c"), 1_000);
        let mut folder = reopen();
        assert!(std::fs::metadata(tree.join("main.c")).unwrap().mtime() > 1_000);

        // Killed while compiling: emptied next time.
        folder.compiling().unwrap();
        drop(folder);
        let _folder = BuildFolder::open(&build, false, &quiet).unwrap();
        assert!(!build.join("main.o").exists());
    }

    #[test]
    fn the_config_is_current_only_for_the_same_inputs_and_an_untouched_file() {
        let dir = tempfile::tempdir().unwrap();
        let build = dir.path().join("build");
        let mut folder = BuildFolder::open(&build, false, &|_| {}).unwrap();
        std::fs::write(build.join(".config"), "CONFIG_A=y\n").unwrap();
        folder.config_made("inputs-1").unwrap();
        assert!(folder.config_is_current("inputs-1"));
        assert!(!folder.config_is_current("inputs-2"));
        std::fs::write(build.join(".config"), "CONFIG_A=n\n").unwrap();
        assert!(!folder.config_is_current("inputs-1"));
    }
}
