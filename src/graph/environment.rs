//! The key of a booted test environment: a VM snapshot (`testing::warm`).

use std::collections::BTreeMap;

use serde_json::json;

use super::key::{KeyInputs, KEY_SCHEMA};
use crate::recipe::VmSpec;

/// What a booted test environment (a VM snapshot: `testing::warm`) is made of.
pub(crate) struct Environment<'a> {
    pub vm: &'a VmSpec,
    /// The kernel command line the guest boots with, whole.
    pub cmdline: String,
    pub kernel: &'a str,
    pub rootfs: &'a str,
    /// Each bundle's name (its folder in the guest) and key.
    pub bundles: Vec<(&'a str, &'a str)>,
    /// The program that runs the VM and its identity (`Tools::identity`): another build
    /// of it may lay out its saved state differently.
    pub hypervisor: (&'a str, String),
    /// The sha256 of the UEFI firmware a disk booted through, if it did.
    pub firmware: Option<String>,
    /// `kvm` or `tcg`: how the guest's CPU was run.
    pub accel: &'a str,
    /// Under KVM, the host CPU's identity (`vm::host_cpu`): the guest saw its features.
    pub host_cpu: Option<String>,
}

/// The key of a booted environment: everything the guest's state depends on (kernel,
/// rootfs, bundles and the agent, which its initramfs holds; machine, memory, cpus, disks,
/// net and kernel command line; the hypervisor and the accelerator). Not the timeout, the
/// number of VMs or the isolation: they change what runs in the VM, not the VM.
pub(crate) fn environment_key(env: &Environment) -> KeyInputs {
    let vm = env.vm;
    let mut deps = BTreeMap::new();
    deps.insert("kernel".to_string(), env.kernel.to_string());
    deps.insert("rootfs".to_string(), env.rootfs.to_string());
    for (name, key) in &env.bundles {
        deps.insert(format!("bundle:{name}"), key.to_string());
    }
    let mut tools = BTreeMap::new();
    tools.insert(env.hypervisor.0.to_string(), env.hypervisor.1.clone());
    if let Some(firmware) = &env.firmware {
        tools.insert("firmware".to_string(), firmware.clone());
    }
    if let Some(cpu) = &env.host_cpu {
        tools.insert("host_cpu".to_string(), cpu.clone());
    }
    KeyInputs {
        schema: KEY_SCHEMA,
        kind: "environment",
        arch: vm.arch.name(),
        recipe: json!({
            "bundles": env.bundles.iter().map(|(name, _)| name).collect::<Vec<_>>(),
            "guest_sha256": crate::format::guest::fingerprint(),
            "accel": env.accel,
            "vm": {
                "backend": format!("{:?}", vm.backend).to_lowercase(),
                "machine": vm.machine,
                "memory_mb": vm.memory_mb,
                "cpus": vm.cpus,
                "disks": vm.disks.iter().map(|d| json!({"name": d.name, "size": d.size})).collect::<Vec<_>>(),
                "cmdline": env.cmdline,
                "net": vm.net.name(),
            },
        }),
        deps,
        tools,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::Isolation;

    #[test]
    fn an_environment_is_keyed_by_what_the_saved_guest_depends_on_and_nothing_else() {
        let vm = VmSpec::default();
        let key = |vm: &VmSpec, identity: &str, accel: &str, bundle: &str| {
            environment_key(&Environment {
                vm,
                cmdline: format!("console=ttyS0 {}", vm.cmdline),
                kernel: "k1",
                rootfs: "r1",
                bundles: vec![("smoke-tests", bundle)],
                hypervisor: ("qemu-system-x86_64", identity.to_string()),
                firmware: None,
                accel,
                host_cpu: None,
            })
            .key()
        };
        let base = key(&vm, "QEMU 7.2 sha256:aa", "tcg", "b1");
        assert_eq!(base, key(&vm, "QEMU 7.2 sha256:aa", "tcg", "b1"));
        // Another qemu binary, accelerator or bundle is another saved guest.
        assert_ne!(base, key(&vm, "QEMU 7.2 sha256:bb", "tcg", "b1"));
        assert_ne!(base, key(&vm, "QEMU 7.2 sha256:aa", "kvm", "b1"));
        assert_ne!(base, key(&vm, "QEMU 7.2 sha256:aa", "tcg", "b2"));
        // A guest booted through other firmware carries other code in its memory.
        let through = |firmware: &str| {
            environment_key(&Environment {
                vm: &vm,
                cmdline: String::new(),
                kernel: "k1",
                rootfs: "r1",
                bundles: vec![],
                hypervisor: ("qemu-system-x86_64", "QEMU 7.2".into()),
                firmware: Some(firmware.into()),
                accel: "tcg",
                host_cpu: None,
            })
            .key()
        };
        assert_ne!(through("sha256:f1"), through("sha256:f2"));
        for changed in [
            VmSpec {
                memory_mb: 1024,
                ..VmSpec::default()
            },
            VmSpec {
                cmdline: "quiet".into(),
                ..VmSpec::default()
            },
            VmSpec {
                disks: vec![crate::recipe::DiskSpec {
                    name: "scratch".into(),
                    size: 1 << 30,
                }],
                ..VmSpec::default()
            },
        ] {
            assert_ne!(base, key(&changed, "QEMU 7.2 sha256:aa", "tcg", "b1"));
        }
        // What runs in the VM is not the VM.
        let same = VmSpec {
            vms: 4,
            isolation: Isolation::Test,
            start: crate::recipe::StartMode::Boot,
            boot_timeout: std::time::Duration::from_secs(5),
            ..VmSpec::default()
        };
        assert_eq!(base, key(&same, "QEMU 7.2 sha256:aa", "tcg", "b1"));
        // Another arch is another guest, even with the same parts' keys and settings.
        let arm = VmSpec {
            arch: crate::recipe::Arch::Aarch64,
            ..VmSpec::default()
        };
        let arm_inputs = environment_key(&Environment {
            vm: &arm,
            cmdline: format!("console=ttyS0 {}", arm.cmdline),
            kernel: "k1",
            rootfs: "r1",
            bundles: vec![("smoke-tests", "b1")],
            hypervisor: ("qemu-system-x86_64", "QEMU 7.2 sha256:aa".into()),
            firmware: None,
            accel: "tcg",
            host_cpu: None,
        });
        assert_eq!(arm_inputs.arch, "aarch64");
        assert_ne!(base, arm_inputs.key());
    }
}
