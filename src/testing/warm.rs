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
//! its state replaces the entry. Snapshots only ever save time: whatever goes wrong with
//! them (a store that cannot stage, a save that fails), VMs boot in full.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::capture::CappedWriter;
use super::runner::Artifacts;
use crate::format::guest;
use crate::graph::{environment_key, Environment, KeyInputs};
use crate::recipe::{StartMode, VmSpec};
use crate::store::{Entry, KeyLock, Manifest, Staging, Store};
use crate::tools::Tools;
use crate::vm::{
    self, Accel, Backend, ImageFormat, Launch, RootLayer, SavedState, Snapshots, StateCodec,
};

/// The guest's root disk writes before the save, for a disk root (a copy-on-write layer
/// in the backend's format).
pub(crate) const ROOT_LAYER: &str = "root.layer";
/// The console of the boot that made the entry.
const BOOT_CONSOLE: &str = "console.log";
/// The least time a VM gets to load a saved state (several VMs loading at once share the
/// host's cores): a slow load is not a refusal.
const LOAD_WITHIN: Duration = Duration::from_secs(60);
const WAITING: &str = "another vmbuild is making this environment's snapshot: waiting for it";

/// The entry name of the environment of `name` (a test recipe, or what `run` and `shell`
/// boot).
pub(crate) fn entry_name(name: &str) -> String {
    format!("env-{name}")
}

/// What an environment's VMs boot: the keys of the entries, and how they start.
pub(crate) struct Booted<'a> {
    pub kernel: &'a str,
    pub rootfs: &'a str,
    /// Each bundle's name and key.
    pub bundles: Vec<(&'a str, &'a str)>,
    /// The rootfs is a bootable disk, started by the backend's firmware.
    pub through_firmware: bool,
}

/// The key inputs of the environment VMs with `vm`'s settings start from, booting
/// `booted`; `None` when they boot in full (`[vm] start = "boot"`, or a backend without
/// snapshots). `Err`: the backend's identity (or its firmware's) is unknown.
pub(crate) fn environment_inputs(
    vm: &VmSpec,
    booted: Booted,
    backend: &dyn Backend,
    accel: Accel,
    tools: &Tools,
) -> Result<Option<KeyInputs>, String> {
    let Booted {
        kernel,
        rootfs,
        bundles,
        through_firmware,
    } = booted;
    if vm.start != StartMode::Snapshot || backend.snapshots().is_none() {
        return Ok(None);
    }
    let program = backend.program();
    let identity = tools.identity(program).map_err(|e| e.to_string())?;
    // A VM booted through firmware keeps it in its memory: its code is in the state.
    let firmware = match through_firmware {
        true => {
            let code = backend.firmware()?.code;
            Some(tools.file_digest(&code).map_err(|e| e.to_string())?)
        }
        false => None,
    };
    Ok(Some(environment_key(&Environment {
        vm,
        // The whole line the guest boots with, host limits included (`rdinit=` follows
        // from the rootfs, which is keyed).
        cmdline: guest::cmdline(backend.guest_ports(), "", &vm.cmdline),
        kernel,
        rootfs,
        bundles,
        hypervisor: (program, identity),
        firmware,
        accel: accel.name(),
        // Under KVM the guest runs on the host's CPU and sees its features.
        host_cpu: (accel == Accel::Kvm).then(vm::host_cpu),
    })))
}

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
    /// VMs start from this entry.
    Ready { entry: Entry, check: Check },
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

/// Rehashing the entry, once per run, by the first VM that restores; the others wait
/// for its answer.
#[derive(PartialEq)]
enum Check {
    Due,
    Running,
    Done,
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

/// A VM that makes the entry. Dropped before its entry is published (the VM never got
/// ready, or its save failed), VMs waiting for the entry boot in full.
pub(crate) struct Saving<'w> {
    warm: &'w Warm<'w>,
    staging: Option<Staging>,
    _lock: KeyLock,
    started: Instant,
    /// Where the VM records its root disk writes (in `work`), for a disk root.
    record: Option<PathBuf>,
    published: bool,
}

impl Drop for Saving<'_> {
    fn drop(&mut self) {
        if !self.published {
            self.warm.turn_off();
        }
    }
}

/// A VM started from the entry.
pub(crate) struct Restore {
    entry: Entry,
    state: SavedState,
    /// The root disk's recorded layer, for a disk root.
    layer: Option<PathBuf>,
    /// This VM rehashes the entry while it loads.
    check: bool,
}

impl Restore {
    /// Writes the console of the boot that made the entry to `console`, then a line
    /// saying this VM started from it: a restored VM's console is its boot's too.
    pub(crate) fn write_boot_console<W: Write>(&self, console: &mut CappedWriter<W>) {
        let saved = fs_err::read(self.entry.path.join(BOOT_CONSOLE)).unwrap_or_default();
        for line in String::from_utf8_lossy(&saved).lines() {
            let _ = console.write_line(line);
        }
        let _ = console.write_line(&format!(
            "vmbuild: this VM started from the snapshot {}",
            self.entry.path.display()
        ));
    }
}

impl Start<'_> {
    /// Sets `launch` up to start this way, with `control` as its control socket.
    pub(crate) fn configure(&self, launch: &mut Launch, control: &Path) {
        if let Some(root) = launch.root_disk.as_mut() {
            root.layer = match self {
                Start::Save(Saving {
                    record: Some(path), ..
                }) => RootLayer::Record(path.clone()),
                Start::Restore(Restore {
                    layer: Some(path), ..
                }) => RootLayer::Replay(path.clone()),
                _ => RootLayer::Throwaway,
            };
        }
        if !matches!(self, Start::Cold) {
            launch.control = Some(control.to_path_buf());
        }
        if let Start::Restore(restore) = self {
            launch.incoming = Some(restore.state.clone());
        }
    }
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

/// What a stat says of every file of `entry` (name, size, mtime, ctime, inode): any write
/// to one, or its replacement, changes it (ctime cannot be set back).
fn stamps(entry: &Entry) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let mut files: Vec<String> = fs_err::read_dir(&entry.path)
        .ok()?
        .flatten()
        .map(|f| {
            let meta = f.metadata().ok()?;
            Some(format!(
                "{} {} {}.{} {}.{} {}",
                f.file_name().to_string_lossy(),
                meta.len(),
                meta.mtime(),
                meta.mtime_nsec(),
                meta.ctime(),
                meta.ctime_nsec(),
                meta.ino()
            ))
        })
        .collect::<Option<_>>()?;
    files.sort();
    Some(files.join("\n"))
}

/// Where a passed rehash of the entry under `key` is remembered, with the stamps its
/// files had: a later run whose stamps agree need not rehash 88 MB.
fn checked_file(store: &Store, key: &str) -> PathBuf {
    store
        .statcache_dir()
        .join(format!("environment-{key}.checked"))
}

/// Whether `entry` was rehashed and its files have not changed since.
fn checked_before(store: &Store, entry: &Entry) -> bool {
    let remembered = fs_err::read_to_string(checked_file(store, &entry.manifest.key)).ok();
    remembered.is_some() && remembered == stamps(entry)
}

/// Remembers that `entry` passed a rehash (best effort: a miss costs a rehash).
fn remember_checked(store: &Store, entry: &Entry) {
    let Some(stamps) = stamps(entry) else {
        return;
    };
    let file = checked_file(store, &entry.manifest.key);
    let tmp = file.with_extension(format!("tmp.{}", std::process::id()));
    let _ = fs_err::create_dir_all(store.statcache_dir());
    if fs_err::write(&tmp, stamps).is_ok() {
        let _ = fs_err::rename(&tmp, &file);
    }
}

/// The same published entry (a replacement has the same path, not the same manifest).
fn same_entry(a: &Entry, b: &Entry) -> bool {
    a.path == b.path
        && a.manifest.created == b.manifest.created
        && a.manifest.build_seconds == b.manifest.build_seconds
}

impl<'a> Warm<'a> {
    /// The entry in `store` (`None`: no store, VMs boot in full) VMs with `vm`'s
    /// settings booting `artifacts` start from, named
    /// `entry_name(name)` if this run makes it; `None` when they boot in full. When it
    /// is missing, the key's lock is taken now (another vmbuild making it is waited for,
    /// and said so). A store or backend that cannot do it is said, and VMs boot in full.
    pub(crate) fn open_for(
        store: Option<&'a Store>,
        backend: &'a dyn Backend,
        vm: &VmSpec,
        artifacts: &Artifacts,
        accel: Accel,
        name: &str,
        notice: &'a (dyn Fn(&str) + Sync),
    ) -> Option<Warm<'a>> {
        let store = store?;
        let snapshots = backend.snapshots()?;
        let bundles = artifacts
            .bundles
            .iter()
            .map(|(name, entry)| (*name, entry.manifest.key.as_str()))
            .collect();
        let inputs = environment_inputs(
            vm,
            Booted {
                kernel: &artifacts.kernel.manifest.key,
                rootfs: &artifacts.rootfs.manifest.key,
                bundles,
                through_firmware: artifacts.rootfs.manifest.kind == crate::format::disk::KIND,
            },
            backend,
            accel,
            &Tools::new(store.root()),
        );
        let config = crate::format::kconfig::read_config(&artifacts.kernel.path.join("config"));
        let saved = inputs.as_ref().is_ok_and(Option::is_some);
        if saved && !backend.generation_id(&vm.machine) {
            notice(&format!(
                "a `{}` VM has no VM generation ID here: VMs started from one snapshot share \
                 their random state until the kernel reseeds itself; set [vm] start = \"boot\" \
                 where that matters",
                vm.machine
            ));
        } else if let Ok(config) = config {
            if saved
                && !matches!(
                    config.get("CONFIG_VMGENID").map(String::as_str),
                    Some("y" | "m")
                )
            {
                notice(&format!(
                    "kernel `{}` has no CONFIG_VMGENID (and ACPI): VMs started from one snapshot \
                     share their random state until the kernel reseeds itself; add \
                     CONFIG_ACPI=y and CONFIG_VMGENID=y, or set [vm] start = \"boot\"",
                    artifacts.kernel.manifest.name
                ));
            }
        }
        let opened = match inputs {
            Ok(None) => return None,
            Ok(Some(inputs)) => Warm::open(store, snapshots, &inputs, name, notice),
            Err(e) => Err(e),
        };
        // A damaged entry the lookups passed over (it is replaced): said once.
        let mut damage = store.take_notices();
        damage.dedup();
        for line in damage {
            notice(&line);
        }
        match opened {
            Ok(warm) => Some(warm),
            Err(why) => {
                notice(&format!("cannot use snapshots ({why}); VMs boot in full"));
                None
            }
        }
    }

    fn open(
        store: &'a Store,
        snapshots: &'a dyn Snapshots,
        inputs: &KeyInputs,
        name: &str,
        notice: &'a (dyn Fn(&str) + Sync),
    ) -> Result<Warm<'a>, String> {
        let key = inputs.key();
        let name = entry_name(name);
        let err = |e: crate::store::StoreError| e.to_string();
        let ready = |entry: Entry| Slot::Ready {
            check: match checked_before(store, &entry) {
                true => Check::Done,
                false => Check::Due,
            },
            entry,
        };
        let slot = match store.lookup_local(&key, &name).map_err(err)? {
            Some(entry) => ready(entry),
            None => {
                let lock = store.lock(&key, || notice(WAITING)).map_err(err)?;
                match store.lookup_local(&key, &name).map_err(err)? {
                    Some(entry) => ready(entry),
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
            name,
            inputs: inputs.to_value(),
            notice,
            slot: Mutex::new(slot),
            changed: Condvar::new(),
            replaced: AtomicBool::new(false),
        })
    }

    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How the next VM starts; waits while another VM of this run makes the entry or
    /// checks it. `work` holds the VM's own files; `disk_root`: the image it boots as
    /// its root disk.
    pub(crate) fn start(
        &'a self,
        work: &Path,
        vm_name: &str,
        disk_root: Option<(&Path, ImageFormat)>,
    ) -> Start<'a> {
        let mut slot = self.slot();
        loop {
            match &mut *slot {
                Slot::Ready { check, .. } if *check == Check::Running => {}
                Slot::Ready { entry, check } => {
                    let codec = StateCodec::of_entry(&entry.path);
                    if !codec.on_this_host() {
                        // Not a damaged entry: this host cannot read it. Left as it is.
                        drop(slot);
                        self.give_up(
                            "the environment's snapshot is zstd-compressed and zstd is not \
                             installed (apt-get install zstd)",
                        );
                        return Start::Cold;
                    }
                    let first = *check == Check::Due;
                    if first {
                        *check = Check::Running;
                    }
                    return Start::Restore(Restore {
                        state: SavedState {
                            path: entry.path.join(codec.file_name()),
                            codec,
                        },
                        layer: disk_root.map(|_| entry.path.join(ROOT_LAYER)),
                        entry: entry.clone(),
                        check: first,
                    });
                }
                Slot::Making => {}
                Slot::Off => return Start::Cold,
                Slot::Missing { .. } => {
                    let Slot::Missing { lock, replacing } =
                        std::mem::replace(&mut *slot, Slot::Making)
                    else {
                        unreachable!("matched above")
                    };
                    drop(slot);
                    return self.saving(lock, replacing, work, vm_name, disk_root);
                }
            }
            slot = self.changed.wait(slot).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The VM that makes the entry (the slot says `Making`).
    fn saving(
        &'a self,
        lock: KeyLock,
        replacing: Option<String>,
        work: &Path,
        vm_name: &str,
        disk_root: Option<(&Path, ImageFormat)>,
    ) -> Start<'a> {
        let name = replacing.as_deref().unwrap_or(&self.name);
        let staging = match self.store.stage(&self.key, name, &lock) {
            Ok(staging) => staging,
            Err(e) => {
                self.give_up(&format!("cannot stage the environment's snapshot: {e}"));
                return Start::Cold;
            }
        };
        let record = match disk_root {
            None => None,
            Some((image, format)) => {
                let record = work.join(format!("root-{vm_name}.layer"));
                let _ = fs_err::remove_file(&record);
                if let Err(why) = self.snapshots.create_overlay(image, format, &record) {
                    self.give_up(&format!("cannot make its root disk layer: {why}"));
                    return Start::Cold;
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
        Start::Save(Saving {
            warm: self,
            staging: Some(staging),
            _lock: lock,
            started: Instant::now(),
            record,
            published: false,
        })
    }

    /// The VM `saving` booted is ready (its agent said READY): saves it into the entry
    /// (a failure is said, and VMs boot in full from then on) and runs it again. `Err`:
    /// the backend could not run it again. `console` is its console so far.
    pub(crate) fn save_and_resume(
        &self,
        mut saving: Saving,
        control: &Path,
        console: &Path,
        release: &str,
    ) -> Result<(), String> {
        match self.save(&mut saving, control, console, release) {
            Ok(entry) => {
                // Its files are the ones just hashed into its manifest.
                remember_checked(self.store, &entry);
                *self.slot() = Slot::Ready {
                    entry,
                    check: Check::Done,
                };
                saving.published = true;
                self.changed.notify_all();
            }
            Err(why) => self.give_up(&format!("cannot save the booted environment: {why}")),
        }
        // Saved or not, the VM goes on (a failed save may have paused it).
        self.snapshots.resume(control)
    }

    /// Saves the VM behind `control` into `saving`'s staging folder and publishes it;
    /// the VM is left paused.
    fn save(
        &self,
        saving: &mut Saving,
        control: &Path,
        console: &Path,
        release: &str,
    ) -> Result<Entry, String> {
        let boot_seconds = saving.started.elapsed().as_secs_f64();
        let staging = saving.staging.take().expect("saved once");
        let out = staging.out().to_path_buf();
        let saved = Instant::now();
        let codec = StateCodec::for_saving();
        let state = SavedState {
            path: out.join(codec.file_name()),
            codec,
        };
        self.snapshots.save(control, &state)?;
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
        self.store
            .publish(staging, manifest)
            .map_err(|e| e.to_string())
    }

    fn give_up(&self, why: &str) {
        (self.notice)(&format!("{why}; VMs boot in full"));
        self.turn_off();
    }

    fn turn_off(&self) {
        *self.slot() = Slot::Off;
        self.changed.notify_all();
    }

    /// A VM started from the entry: waits until it has loaded the state (rehashing the
    /// entry meanwhile, if it is the run's first) and runs it.
    pub(crate) fn resume_restored(
        &self,
        restore: &Restore,
        control: &Path,
        within: Duration,
    ) -> Result<(), NotLoaded> {
        let (loaded, problems) = std::thread::scope(|scope| {
            let check = restore
                .check
                .then(|| scope.spawn(|| self.store.verify(&restore.entry)));
            let loaded = self.snapshots.wait_loaded(control, within.max(LOAD_WITHIN));
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
        if restore.check {
            remember_checked(self.store, &restore.entry);
            if let Slot::Ready { entry, check } = &mut *self.slot() {
                if same_entry(entry, &restore.entry) {
                    *check = Check::Done;
                }
            }
            self.changed.notify_all();
        }
        loaded.map_err(NotLoaded::Refused)?;
        self.snapshots.resume(control).map_err(NotLoaded::Refused)
    }

    /// The VM `restore` started could not start from its entry (`why`): said once; the
    /// next VM boots cold and replaces the entry, unless this run replaced it already
    /// (then VMs boot in full). Another vmbuild may replace it first: then that one's is
    /// used.
    pub(crate) fn restore_failed(&self, restore: &Restore, why: &str) {
        let mut slot = self.slot();
        match &*slot {
            Slot::Ready { entry, .. } if same_entry(entry, &restore.entry) => {}
            // Another VM of this run has dealt with this entry already.
            _ => return,
        }
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
        let name = restore.entry.manifest.name.clone();
        let next = match self.store.lock(&self.key, || (self.notice)(WAITING)) {
            Err(_) => Slot::Off,
            Ok(lock) => match self.store.lookup_local(&self.key, &name) {
                // Replaced by another vmbuild while we waited.
                Ok(Some(entry)) if !same_entry(&entry, &restore.entry) => Slot::Ready {
                    entry,
                    check: Check::Due,
                },
                _ => Slot::Missing {
                    lock,
                    replacing: Some(name),
                },
            },
        };
        *self.slot() = next;
        self.changed.notify_all();
    }
}
