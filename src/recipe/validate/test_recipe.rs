//! Test recipes: the kernel, rootfs and bundles they boot, and their `[vm]`, each value
//! checked against what the backend and the guest's arch can do.

use toml::Spanned;

use super::Document;
use crate::recipe::spec::*;
use crate::recipe::{grammar, raw, units, Diagnostic, Result};

impl Document<'_> {
    pub(super) fn test(&self, arch: Arch) -> Result<TestSpec> {
        let raw: raw::Test = self.deserialize()?;
        let timeout = match &raw.timeout {
            Some(t) => units::TEST_TIMEOUT
                .parse(t.get_ref())
                .map_err(|e| self.error(t, e))?,
            None => DEFAULT_TEST_TIMEOUT,
        };
        let vm = &raw.vm;
        let defaults = VmSpec::for_arch(arch);
        let backend = match vm.backend.as_ref().map(|b| b.get_ref().as_str()) {
            None => defaults.backend.clone(),
            Some("qemu") => BackendKind::Qemu,
            Some("bhyve") => BackendKind::Bhyve,
            Some(other) => {
                let b = vm.backend.as_ref().expect("set");
                return Err(
                    Diagnostic::new(self.at(b), format!("unknown backend `{other}`"))
                        .with_help("expected `qemu` or `bhyve`")
                        .into(),
                );
            }
        };
        let net = match vm.net.as_ref().map(|n| n.get_ref().as_str()) {
            None | Some("none") => Network::None,
            Some("user") => Network::User,
            Some(other) => {
                let n = vm.net.as_ref().expect("set");
                return Err(
                    Diagnostic::new(self.at(n), format!("unknown net `{other}`"))
                        .with_help("expected `none` (no network device) or `user` (user-mode NAT)")
                        .into(),
                );
            }
        };
        let start =
            match vm.start.as_ref().map(|s| s.get_ref().as_str()) {
                None | Some("snapshot") => StartMode::Snapshot,
                Some("boot") => StartMode::Boot,
                Some(other) => {
                    let s = vm.start.as_ref().expect("set");
                    return Err(Diagnostic::new(self.at(s), format!("unknown start `{other}`"))
                    .with_help(
                        "expected `snapshot` (restore the booted environment from the store) \
                         or `boot` (boot every VM in full)",
                    )
                    .into());
                }
            };
        let isolation = match vm.isolation.as_ref().map(|i| i.get_ref().as_str()) {
            None | Some("vm") => Isolation::Vm,
            Some("test") => Isolation::Test,
            Some(other) => {
                let i = vm.isolation.as_ref().expect("set");
                return Err(
                    Diagnostic::new(self.at(i), format!("unknown isolation `{other}`"))
                        .with_help(
                            "expected `vm` (tests share their VM) or `test` (a fresh VM per test)",
                        )
                        .into(),
                );
            }
        };
        if let (Arch::Aarch64, BackendKind::Bhyve, Some(b)) = (defaults.arch, &backend, &vm.backend)
        {
            return Err(Diagnostic::new(
                self.at(b),
                "backend = \"bhyve\" runs x86_64 guests; this test is arch = \"aarch64\"",
            )
            .with_help("use backend = \"qemu\" (qemu-system-aarch64)")
            .into());
        }
        if let (Network::User, BackendKind::Bhyve, Some(n)) = (net, &backend, &vm.net) {
            // bhyve's slirp backend lets connections only into the guest on released
            // FreeBSD, and a tap or netgraph NIC needs host setup vmbuild does not do.
            return Err(Diagnostic::new(
                self.at(n),
                "net = \"user\" is not available with backend = \"bhyve\"",
            )
            .with_help("use backend = \"qemu\" for a networked guest, or net = \"none\"")
            .into());
        }
        let memory_mb = match &vm.memory {
            Some(m) => {
                units::MEMORY
                    .parse(m.get_ref())
                    .map_err(|e| self.error(m, e))?
                    >> 20
            }
            None => defaults.memory_mb,
        };
        let count = |v: &Option<Spanned<i64>>, what: &str| -> Result<u32> {
            match v {
                None => Ok(1),
                Some(n) if (1..=256).contains(n.get_ref()) => Ok(*n.get_ref() as u32),
                Some(n) => Err(self.error(n, format!("`{what}` must be between 1 and 256"))),
            }
        };
        // qemu's PCIe root bus has 31 slots; the root disk and the rest need a few.
        const MAX_DISKS: usize = 24;
        if vm.disks.len() > MAX_DISKS {
            return Err(self.error(
                &vm.disks[MAX_DISKS].name,
                format!("at most {MAX_DISKS} scratch disks fit a VM's PCI bus"),
            ));
        }
        let mut disks = Vec::new();
        for d in &vm.disks {
            grammar::disk_name(d.name.get_ref()).map_err(|e| self.error(&d.name, e))?;
            // The guest names each disk in VMBUILD_DISK_<NAME>, with `-` read as `_`.
            let as_variable = |n: &str| n.replace('-', "_");
            if let Some(twin) = disks.iter().find(|k: &&DiskSpec| {
                k.name != *d.name.get_ref() && as_variable(&k.name) == as_variable(d.name.get_ref())
            }) {
                return Err(self.error(
                    &d.name,
                    format!(
                        "disks `{}` and `{}` would both be VMBUILD_DISK_{} in the guest: rename one",
                        twin.name,
                        d.name.get_ref(),
                        as_variable(d.name.get_ref()).to_uppercase()
                    ),
                ));
            }
            if disks.iter().any(|k: &DiskSpec| k.name == *d.name.get_ref()) {
                return Err(self.error(
                    &d.name,
                    format!(
                        "a second disk named `{}`: disk names must differ",
                        d.name.get_ref()
                    ),
                ));
            }
            let size = units::DISK
                .parse(d.size.get_ref())
                .map_err(|e| self.error(&d.size, e))?;
            disks.push(DiskSpec {
                name: d.name.get_ref().clone(),
                size,
            });
        }
        let boot_timeout = match &vm.boot_timeout {
            Some(t) => units::BOOT_TIMEOUT
                .parse(t.get_ref())
                .map_err(|e| self.error(t, e))?,
            None => defaults.boot_timeout,
        };
        if let Some(m) = &vm.machine {
            grammar::machine(m.get_ref()).map_err(|e| self.error(m, e))?;
            // virt is qemu-system-aarch64's machine (and its versions, virt-7.2), the one
            // vmbuild wires aarch64 guests for; the x86_64 machines are not.
            let virt = grammar::is_virt_machine(m.get_ref());
            match (defaults.arch, virt) {
                (Arch::Aarch64, false) => {
                    return Err(Diagnostic::new(
                        self.at(m),
                        format!(
                            "vmbuild boots aarch64 guests on qemu's `virt` machine (or a \
                             version of it, `virt-7.2`), not `{}`",
                            m.get_ref()
                        ),
                    )
                    .with_help("leave `machine` out for `virt`")
                    .into());
                }
                (Arch::X86_64, true) => {
                    return Err(Diagnostic::new(
                        self.at(m),
                        format!("`{}` is qemu's aarch64 machine; this test is x86_64", m.get_ref()),
                    )
                    .with_help("set arch = \"aarch64\" (and in its kernel and rootfs), or leave `machine` out for `q35`")
                    .into());
                }
                _ => {}
            }
        }
        // virt's default interrupt controller (GICv2) routes at most 8 CPUs.
        const VIRT_MAX_CPUS: i64 = 8;
        if let (Arch::Aarch64, Some(cpus)) = (defaults.arch, &vm.cpus) {
            if *cpus.get_ref() > VIRT_MAX_CPUS {
                return Err(self.error(
                    cpus,
                    format!("an aarch64 VM (qemu's virt machine) has at most {VIRT_MAX_CPUS} CPUs"),
                ));
            }
        }
        if let Some(c) = &vm.cmdline {
            if c.get_ref().chars().any(char::is_control) {
                return Err(self.error(c, "the kernel command line cannot hold control characters"));
            }
        }
        Ok(TestSpec {
            kernel: self.reference(&raw.kernel)?,
            rootfs: self.reference(&raw.rootfs)?,
            bundles: raw
                .bundles
                .iter()
                .map(|b| self.reference(b))
                .collect::<Result<_>>()?,
            after: raw
                .after
                .iter()
                .map(|b| self.reference(b))
                .collect::<Result<_>>()?,
            timeout,
            vm: VmSpec {
                arch: defaults.arch,
                backend,
                machine: vm
                    .machine
                    .as_ref()
                    .map_or(defaults.machine.clone(), |m| m.get_ref().clone()),
                memory_mb,
                cpus: count(&vm.cpus, "cpus")?,
                vms: count(&vm.vms, "vms")?,
                disks,
                share_disks: vm.share_disks.unwrap_or(false),
                cmdline: vm
                    .cmdline
                    .as_ref()
                    .map(|c| c.get_ref().clone())
                    .unwrap_or_default(),
                boot_timeout,
                net,
                start,
                isolation,
            },
        })
    }
}
