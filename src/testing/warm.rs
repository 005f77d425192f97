//! Warm starts: a test environment is booted once, its VM saved as a store entry (the
//! backend's state file, taken while the agent waits for WAKE, plus what the guest had
//! written to its root disk by then), and every later VM of that environment starts from
//! it instead of booting. The entry's key (`graph::environment_key`) holds everything the
//! saved guest depends on, so recipes that differ only in what runs in the VM (timeout,
//! isolation, number of VMs) share it.
//!
//! The first VM that finds no entry makes it: it boots in full, and once its agent is
//! ready the VM is paused, saved, published, and resumed to serve tests like any other.
//! VMs that want the entry meanwhile wait for it. A state the backend refuses, or one
//! whose files do not match their manifest, is said in one line; that VM boots cold and
//! its state replaces the entry.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::graph::{environment_key, Environment, KeyInputs};
use crate::recipe::{StartMode, VmSpec};
use crate::store::{Entry, KeyLock, Manifest, Staging, Store};
use crate::tools::Tools;
use crate::vm::{Accel, Backend, Launch, RootLayer, Snapshots};

use super::runner::{Artifacts, TestError};

/// The backend's saved state, in the entry.
pub(crate) const STATE: &str = "state";
/// The guest's root disk writes before the save, for a disk root (a qcow2 layer).
pub(crate) const ROOT_LAYER: &str = "root.qcow2";
/// The console of the boot that made the entry.
const BOOT_CONSOLE: &str = "console.log";

/// One test run's view of its environment's entry, shared by its VMs.
pub(crate) struct Warm<'a> {
    store: &'a Store,
    snapshots: &'a dyn Snapshots,
    key: String,
    name: String,
    inputs: serde_json::Value,
    notice: &'a (dyn Fn(&str) + Sync),
    slot: Mutex<Slot>,
    changed: Condvar,
    /// This run replaced the entry once: a second failure turns warm starts off.
    replaced: AtomicBool,
}

enum Slot {
    /// VMs start from this entry. `checked`: one restore this run rehashed it.
    Ready { entry: Entry, checked: bool },
    /// There is none (or it is being replaced: the name it has): the next VM makes it,
    /// under this lock.
    Missing {
        lock: KeyLock,
        replacing: Option<String>,
    },
    /// A VM is making it.
    Making,
    /// VMs boot in full.
    Off,
}

/// Why a VM could not start from the entry.
pub(crate) enum NotLoaded {
    /// The entry's files are not what its manifest says.
    Damaged(String),
    /// The backend would not load the state (its own words are on its stderr).
    Refused(String),
}

impl NotLoaded {
    /// In one line: the mismatch, or the last words on `backend`'s `stderr` ("load of
    /// migration failed: ...") where it said any.
    pub(crate) fn why(self, backend: &str, stderr: &str) -> String {
        match self {
            NotLoaded::Damaged(why) => why,
            NotLoaded::Refused(why) => stderr
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map_or(why, |said| format!("{backend}: {said}")),
        }
    }
}

/// How one VM comes up.
pub(crate) enum Start<'w> {
    /// A full boot.
    Cold,
    /// A full boot, saved into the entry once the agent is ready.
    Save(Saving<'w>),
    /// From the entry's saved state.
    Restore(Restore),
}

/// A VM that makes the entry. Dropped unsaved (the VM never got ready), VMs waiting for
/// the entry boot in full.
pub(crate) struct Saving<'w> {
    warm: &'w Warm<'w>,
    staging: Option<Staging>,
    _lock: KeyLock,
    started: Instant,
    /// Where the VM records its root disk writes (in `work`), for a disk root.
    pub record: Option<PathBuf>,
}

impl Drop for Saving<'_> {
    fn drop(&mut self) {
        if self.staging.is_some() {
            self.warm.turn_off();
        }
    }
}

/// A VM started from the entry.
pub(crate) struct Restore {
    pub state: PathBuf,
    /// The root disk's recorded layer, for a disk root.
    pub layer: Option<PathBuf>,
    /// The entry to rehash while the VM loads, once per run.
    check: Option<Entry>,
}

impl Start<'_> {
    /// Sets `launch` up to start this way, with `control` as its control socket.
    pub(crate) fn configure(&self, launch: &mut Launch, control: &Path) {
        if let Some(root) = launch.root_disk.as_mut() {
            root.layer = self.root_layer();
        }
        if !matches!(self, Start::Cold) {
            launch.control = Some(control.to_path_buf());
        }
        if let Start::Restore(restore) = self {
            launch.incoming = Some(restore.state.clone());
        }
    }

    /// What lies between the root image and a VM that starts this way.
    fn root_layer(&self) -> RootLayer {
        match self {
            Start::Save(Saving {
                record: Some(path), ..
            }) => RootLayer::Record(path.clone()),
            Start::Restore(Restore {
                layer: Some(path), ..
            }) => RootLayer::Replay(path.clone()),
            _ => RootLayer::Throwaway,
        }
    }
}

impl<'a> Warm<'a> {
    /// The entry VMs with `vm`'s settings booting `artifacts` start from, named `name`
    /// if this run makes it; `None` when they boot in full (`[vm] start = "boot"`, or a
    /// backend without snapshots).
    pub(crate) fn open_for(
        store: &'a Store,
        backend: &'a dyn Backend,
        vm: &VmSpec,
        artifacts: &Artifacts,
        accel: Accel,
        name: &str,
        notice: &'a (dyn Fn(&str) + Sync),
    ) -> Result<Option<Warm<'a>>, TestError> {
        let Some(snapshots) = backend.snapshots() else {
            return Ok(None);
        };
        if vm.start != StartMode::Snapshot {
            return Ok(None);
        }
        let program = backend.program();
        let identity = Tools::new(store.root())
            .identity(program)
            .map_err(TestError::Process)?;
        let environment = Environment {
            vm,
            kernel: &artifacts.kernel.manifest.key,
            rootfs: &artifacts.rootfs.manifest.key,
            bundles: artifacts
                .bundles
                .iter()
                .map(|(name, entry)| (*name, entry.manifest.key.as_str()))
                .collect(),
            hypervisor: (program, identity),
            accel: accel.name(),
        };
        let waiting =
            || notice("another vmbuild is making this environment's snapshot: waiting for it");
        Warm::open(
            store,
            snapshots,
            &environment_key(&environment),
            name,
            &waiting,
            notice,
        )
        .map(Some)
    }

    /// The entry of the environment `inputs` describe (named `name` if this run makes
    /// it). When it is missing, the key's lock is taken now (`waiting` says so if
    /// another vmbuild holds it: that one is making it, and it is reused).
    fn open(
        store: &'a Store,
        snapshots: &'a dyn Snapshots,
        inputs: &KeyInputs,
        name: &str,
        waiting: &dyn Fn(),
        notice: &'a (dyn Fn(&str) + Sync),
    ) -> Result<Warm<'a>, TestError> {
        let key = inputs.key();
        let slot = match store.lookup(&key, name)? {
            Some(entry) => Slot::Ready {
                entry,
                checked: false,
            },
            None => {
                let lock = store.lock(&key, waiting)?;
                match store.lookup(&key, name)? {
                    Some(entry) => Slot::Ready {
                        entry,
                        checked: false,
                    },
                    None => Slot::Missing {
                        lock,
                        replacing: None,
                    },
                }
            }
        };
        Ok(Warm {
            store,
            snapshots,
            key,
            name: name.to_string(),
            inputs: inputs.to_value(),
            notice,
            slot: Mutex::new(slot),
            changed: Condvar::new(),
            replaced: AtomicBool::new(false),
        })
    }

    /// How the next VM starts; waits while another VM of this run makes the entry.
    /// `work` holds the VM's own files; `disk_root`: the VM boots a root disk image.
    pub(crate) fn start(
        &'a self,
        work: &Path,
        vm_name: &str,
        disk_root: Option<&Path>,
    ) -> Result<Start<'a>, TestError> {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match &mut *slot {
                Slot::Ready { entry, checked } => {
                    let layer = entry.path.join(ROOT_LAYER);
                    return Ok(Start::Restore(Restore {
                        state: entry.path.join(STATE),
                        layer: disk_root.map(|_| layer),
                        check: (!*checked).then(|| entry.clone()),
                    }));
                }
                Slot::Making => {
                    slot = self.changed.wait(slot).unwrap_or_else(|e| e.into_inner());
                }
                Slot::Off => return Ok(Start::Cold),
                Slot::Missing { .. } => {
                    let Slot::Missing { lock, replacing } =
                        std::mem::replace(&mut *slot, Slot::Making)
                    else {
                        unreachable!("matched above")
                    };
                    let name = replacing.as_deref().unwrap_or(&self.name);
                    let staging = match self.store.stage(&self.key, name, &lock) {
                        Ok(staging) => staging,
                        Err(e) => {
                            *slot = Slot::Off;
                            self.changed.notify_all();
                            return Err(e.into());
                        }
                    };
                    let record = match disk_root {
                        None => None,
                        Some(image) => {
                            let record = work.join(format!("root-{vm_name}.qcow2"));
                            let _ = fs_err::remove_file(&record);
                            if let Err(why) = self.snapshots.create_overlay(image, &record) {
                                drop(slot);
                                self.give_up(&format!("cannot make its root disk layer: {why}"));
                                return Ok(Start::Cold);
                            }
                            Some(record)
                        }
                    };
                    (self.notice)(if replacing.is_some() {
                        "booting cold to replace the environment's snapshot"
                    } else {
                        "no snapshot of this environment yet: booting it once and saving it; \
                         later VMs start from it"
                    });
                    return Ok(Start::Save(Saving {
                        warm: self,
                        staging: Some(staging),
                        _lock: lock,
                        started: Instant::now(),
                        record,
                    }));
                }
            }
        }
    }

    /// The VM `saving` booted is ready (its agent said READY): saves it into the entry
    /// (a failure is said, and VMs boot in full from then on) and runs it again. `Err`:
    /// the backend could not run it again. `console` is its console so far.
    pub(crate) fn save_and_resume(
        &self,
        saving: Saving,
        control: &Path,
        console: &Path,
        release: &str,
    ) -> Result<(), String> {
        if let Err(why) = self.save(saving, control, console, release) {
            self.save_failed(&why);
        }
        // Saved or not, the VM goes on (a failed save may have paused it).
        self.snapshots.resume(control)
    }

    /// A VM started from the entry: waits until it has loaded the state (checking the
    /// entry's files meanwhile, once per run) and runs it.
    pub(crate) fn resume_restored(
        &self,
        restore: &Restore,
        control: &Path,
        within: Duration,
    ) -> Result<(), NotLoaded> {
        self.loaded(restore, control, within)?;
        self.snapshots.resume(control).map_err(NotLoaded::Refused)
    }

    /// Saves the VM behind `control`, which `saving` booted and whose agent is ready,
    /// and publishes the entry; the VM is left paused. `console` is its console so far.
    fn save(
        &self,
        mut saving: Saving,
        control: &Path,
        console: &Path,
        release: &str,
    ) -> Result<(), String> {
        let boot_seconds = saving.started.elapsed().as_secs_f64();
        let staging = saving.staging.take().expect("saved once");
        let out = staging.out().to_path_buf();
        let saved = Instant::now();
        self.snapshots.save(control, &out.join(STATE))?;
        let save_seconds = saved.elapsed().as_secs_f64();
        let copy = |from: &Path, to: &str| {
            fs_err::copy(from, out.join(to))
                .map(drop)
                .map_err(|e| e.to_string())
        };
        if let Some(record) = &saving.record {
            copy(record, ROOT_LAYER)?;
        }
        copy(console, BOOT_CONSOLE)?;
        let mut manifest = Manifest::new(
            staging.name(),
            "environment",
            &self.key,
            self.inputs.clone(),
        );
        manifest.head.build_seconds = boot_seconds + save_seconds;
        for (field, value) in [
            ("release", serde_json::json!(release)),
            ("boot_seconds", serde_json::json!(boot_seconds)),
            ("save_seconds", serde_json::json!(save_seconds)),
        ] {
            manifest.head.details.insert(field.into(), value);
        }
        let entry = self
            .store
            .publish(staging, manifest)
            .map_err(|e| e.to_string())?;
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        *slot = Slot::Ready {
            entry,
            checked: true,
        };
        self.changed.notify_all();
        Ok(())
    }

    /// The VM that was making the entry could not: VMs boot in full from now on.
    fn save_failed(&self, why: &str) {
        self.give_up(&format!("cannot save the booted environment: {why}"));
    }

    fn give_up(&self, why: &str) {
        (self.notice)(&format!("{why}; VMs boot in full"));
        self.turn_off();
    }

    fn turn_off(&self) {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        *slot = Slot::Off;
        self.changed.notify_all();
    }

    /// Rehashes the entry while the VM loads its state (once per run: the first VM that
    /// restores), then waits until the VM has loaded it.
    fn loaded(&self, restore: &Restore, control: &Path, within: Duration) -> Result<(), NotLoaded> {
        let (loaded, problems) = std::thread::scope(|scope| {
            let check = restore
                .check
                .as_ref()
                .map(|entry| scope.spawn(|| self.store.verify(entry)));
            let loaded = self.snapshots.wait_loaded(control, within);
            let problems = check
                .map(|c| {
                    c.join()
                        .unwrap_or_else(|_| vec!["its check panicked".into()])
                })
                .unwrap_or_default();
            (loaded, problems)
        });
        // Damage explains a refusal; it is what to say.
        if let Some(first) = problems.first() {
            return Err(NotLoaded::Damaged(format!(
                "its files do not match its manifest: {first}"
            )));
        }
        loaded.map_err(NotLoaded::Refused)?;
        if restore.check.is_some() {
            if let Slot::Ready { checked, .. } =
                &mut *self.slot.lock().unwrap_or_else(|e| e.into_inner())
            {
                *checked = true;
            }
        }
        Ok(())
    }

    /// A VM could not start from the entry (`why`): said once; the next VM boots cold and
    /// replaces the entry, unless this run replaced it already (then VMs boot in full).
    pub(crate) fn restore_failed(&self, why: &str, waiting: &dyn Fn()) {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        // Not ready: another VM has dealt with it.
        let Slot::Ready { entry, .. } = &*slot else {
            return;
        };
        let name = entry.manifest.name.clone();
        if self.replaced.swap(true, Ordering::SeqCst) {
            (self.notice)(&format!(
                "the snapshot of this environment cannot be used ({why}), even made anew; \
                 VMs boot in full"
            ));
            *slot = Slot::Off;
            self.changed.notify_all();
            return;
        }
        (self.notice)(&format!(
            "the snapshot of this environment cannot be used ({why}): booting cold and replacing it"
        ));
        *slot = Slot::Making;
        drop(slot);
        let lock = self.store.lock(&self.key, waiting);
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        *slot = match lock {
            Ok(lock) => Slot::Missing {
                lock,
                replacing: Some(name),
            },
            Err(_) => Slot::Off,
        };
        self.changed.notify_all();
    }
}
