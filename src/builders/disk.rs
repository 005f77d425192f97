//! Bootable disks: a GPT image whose EFI system partition holds a unified kernel image
//! (the kernel recipe's bzImage, stage 1 with the guest agent, the root disk's modules and
//! the command line, in one EFI binary made from Debian's systemd-boot-efi stub with
//! objcopy) at the removable-media path, and whose root partition is the rootfs recipe's
//! ext4 image. Nothing is mounted: the table is written here (`format::gpt`), the FAT by
//! mkfs.fat and mtools at the partition's offset, the ext4 image's data copied in place.
//! GUIDs come from the key and every tool's clock is pinned, so the same inputs give the
//! same bytes.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Map, Value};

use super::{io_err, unpack_deb, BuildContext, BuildError};
use crate::format::disk::{
    QCOW2_IMAGE, RAW_IMAGE, ROOT_PARTITION, STUB_PACKAGE, STUB_PATH, UKI_PATH,
};
use crate::format::gpt::{self, Partition, ALIGN, ESP_TYPE, ROOT_X86_64_TYPE};
use crate::format::guest::{self, BOOT_PATH, EXT4_ROOT_MODULES};
use crate::format::kconfig::read_config;
use crate::format::modules::{self, ModulesError};
use crate::format::{pe, rootfs as layout};
use crate::process;
use crate::recipe::units::approx_size;
use crate::recipe::{Arch, BootDiskSpec, ImageFormat};

/// The smallest ESP: firmware wants FAT32, which needs 65525 clusters (32 MiB of
/// 512-byte ones); 64 MiB leaves room for a second kernel image, as installers expect.
const MIN_ESP: u64 = 64 << 20;
/// Room on the ESP beyond the UKI.
const ESP_SLACK: u64 = 16 << 20;
/// The time every ESP file and folder carries (1980-01-01, FAT's epoch).
const FAT_EPOCH: u64 = 315_532_800;

/// How many times its size `resize2fs` may grow a root image (mke2fs leaves room for
/// 1024 times; some of it goes to the file system's own growth).
const GROWTH: u64 = 512;

/// How much of a kernel image its boot and PE headers are read from.
const KERNEL_HEAD: usize = 64 << 10;

/// Where a disk's partitions lie, before anything is written.
struct Layout {
    esp: Partition,
    root: Partition,
    size: u64,
}

pub fn build(
    spec: &BootDiskSpec,
    ctx: &BuildContext,
    out: &Path,
) -> Result<Map<String, Value>, BuildError> {
    let kernel = ctx.dep(&spec.kernel.name)?;
    let rootfs = ctx.dep(&spec.rootfs.name)?;
    let root_image = rootfs.path.join(layout::EXT4);
    let busybox_file = rootfs.path.join(layout::BOOT_BUSYBOX);
    if !root_image.is_file() {
        return Err(BuildError::BadInput(format!(
            "rootfs `{}` has no ext4 image: a disk's root partition is one; set format = \"ext4\" \
             in its recipe",
            spec.rootfs.name
        )));
    }
    if !busybox_file.is_file() {
        return Err(BuildError::BadInput(format!(
            "rootfs `{}` has no {} beside its image: rebuild it (`vmbuild build -f {}`)",
            spec.rootfs.name,
            layout::BOOT_BUSYBOX,
            spec.rootfs.name
        )));
    }
    let bz_image = kernel.path.join(Arch::X86_64.kernel_image());
    // The headers are in the first pages; objcopy reads the rest.
    let mut kernel_head = Vec::with_capacity(KERNEL_HEAD);
    use std::io::Read;
    fs_err::File::open(&bz_image)
        .and_then(|f| f.take(KERNEL_HEAD as u64).read_to_end(&mut kernel_head))
        .map_err(io_err("read", &bz_image))?;
    pe::check_efi_stub_kernel(&kernel_head).map_err(|why| {
        BuildError::BadInput(format!(
            "kernel `{}` cannot be started by UEFI firmware: {why}",
            spec.kernel.name
        ))
    })?;
    // Firmware starts the stub, which needs the kernel's EFI stub; stage 1 then finds its
    // root by the GPT, which the kernel must read itself.
    if let Ok(config) = read_config(&kernel.path.join("config")) {
        let missing: Vec<&str> = ["CONFIG_EFI_STUB", "CONFIG_EFI_PARTITION"]
            .into_iter()
            .filter(|option| config.get(*option).map(String::as_str) != Some("y"))
            .collect();
        if !missing.is_empty() {
            return Err(BuildError::BadInput(format!(
                "kernel `{}` cannot boot from a GPT disk through UEFI firmware: its config lacks \
                 {}=y",
                spec.kernel.name,
                missing.join("=y, ")
            )));
        }
    }

    // Stage 1, the agent and the root disk's modules: the initramfs ext4 roots boot with,
    // without the bundles (those come on a disk of their own at test time).
    (ctx.progress)("making the unified kernel image");
    let busybox = fs_err::read(&busybox_file).map_err(io_err("read", &busybox_file))?;
    let mut initrd = modules::layer(
        &spec.kernel.name,
        &kernel.path,
        kernel.detail("release"),
        &EXT4_ROOT_MODULES,
    )
    .map_err(|e| match e {
        ModulesError::Compressed(why) => BuildError::BadInput(why),
        ModulesError::Io(e) => BuildError::Io(e),
    })?;
    initrd.extend(guest::archive(Some(&busybox), true)?);
    let mut extra = format!("vmbuild.rootpart={ROOT_PARTITION}");
    if !spec.cmdline.is_empty() {
        extra = format!("{extra} {}", spec.cmdline);
    }
    let cmdline = guest::cmdline(guest::GuestPorts::SERIAL, BOOT_PATH, &extra);
    let uki = ctx.work.join("uki.efi");
    make_uki(ctx, &bz_image, &initrd, &cmdline, &uki)?;
    let uki_size = fs_err::metadata(&uki).map_err(io_err("read", &uki))?.len();

    let seed = crate::hashing::sha256_hex(ctx.inputs.to_string().as_bytes());
    let root_size = fs_err::metadata(&root_image)
        .map_err(io_err("read", &root_image))?
        .len();
    let plan = plan(spec, &seed, uki_size, root_size, &spec.rootfs.name)?;

    (ctx.progress)("writing the partitions");
    let image = out.join(RAW_IMAGE);
    let disk = fs_err::File::create(&image).map_err(io_err("create", &image))?;
    disk.set_len(plan.size).map_err(io_err("size", &image))?;
    let table = gpt::table(
        &gpt::guid_from(format!("{seed} disk").as_bytes()),
        &[plan.esp.clone(), plan.root.clone()],
        plan.size,
    );
    use std::os::unix::fs::FileExt;
    disk.file()
        .write_all_at(&table.head, 0)
        .and_then(|()| {
            disk.file()
                .write_all_at(&table.tail, plan.size - table.tail.len() as u64)
        })
        .map_err(io_err("write", &image))?;
    write_esp(&image, &plan.esp, &seed, &uki)?;
    if plan.root.size > root_size {
        // The file system grows to fill its partition: on a copy, as resize2fs cannot
        // work at an offset.
        let grown = ctx.work.join("root.ext4");
        let copy = fs_err::File::create(&grown).map_err(io_err("create", &grown))?;
        copy.set_len(root_size).map_err(io_err("size", &grown))?;
        crate::fsio::copy_data_at(&root_image, &copy, 0).map_err(io_err("copy to", &grown))?;
        drop(copy);
        process::run(
            Command::new("resize2fs")
                .arg("-f")
                .arg(&grown)
                .arg(format!("{}K", plan.root.size >> 10))
                .env("E2FSPROGS_FAKE_TIME", "1"),
        )?;
        crate::fsio::copy_data_at(&grown, &disk, plan.root.start)
            .map_err(io_err("write", &image))?;
    } else {
        crate::fsio::copy_data_at(&root_image, &disk, plan.root.start)
            .map_err(io_err("write", &image))?;
    }
    drop(disk);
    let file = match spec.format {
        ImageFormat::Raw => RAW_IMAGE,
        ImageFormat::Qcow2 => {
            (ctx.progress)("converting to qcow2");
            let qcow2 = out.join(QCOW2_IMAGE);
            process::run(
                Command::new("qemu-img")
                    .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
                    .arg(&image)
                    .arg(&qcow2),
            )?;
            fs_err::remove_file(&image).map_err(io_err("remove", &image))?;
            QCOW2_IMAGE
        }
    };
    let partition = |number: u32, p: &Partition| {
        json!({
            "number": number,
            "name": p.name,
            "type": p.type_guid,
            "uuid": gpt::guid_text(&p.guid),
            "start": p.start,
            "size": p.size,
        })
    };
    let mut details = Map::new();
    details.insert("image".into(), json!(file));
    details.insert("size".into(), json!(plan.size));
    details.insert(
        "partitions".into(),
        json!([
            partition(1, &plan.esp),
            partition(ROOT_PARTITION, &plan.root)
        ]),
    );
    details.insert("kernel_key".into(), json!(kernel.manifest.key));
    details.insert("cmdline".into(), json!(cmdline));
    Ok(details)
}

/// The partitions: the ESP at 1 MiB, sized for the UKI; the root after it, the ext4
/// image's size, or the rest of a disk of `spec.size`.
fn plan(
    spec: &BootDiskSpec,
    seed: &str,
    uki_size: u64,
    root_size: u64,
    rootfs: &str,
) -> Result<Layout, BuildError> {
    let esp_size = (uki_size + ESP_SLACK).next_multiple_of(ALIGN).max(MIN_ESP);
    let root_start = gpt::first_usable() + esp_size;
    let fitted = gpt::disk_size_for(root_start + root_size.next_multiple_of(ALIGN));
    let size = match spec.size {
        None => fitted,
        Some(asked) if asked < fitted => {
            return Err(BuildError::BadInput(format!(
                "a disk of {} cannot hold its partitions: the ESP takes {}, rootfs `{rootfs}`'s \
                 ext4 image {}, {} in all with the partition tables; make `size` at least {}M, \
                 or leave it out to fit the disk to them",
                approx_size(asked),
                approx_size(esp_size),
                approx_size(root_size),
                approx_size(fitted),
                fitted >> 20
            )))
        }
        // mke2fs reserves room for its group descriptors to grow 1024 times (`resize`),
        // less with large images: past that, resize2fs fails.
        Some(asked) if asked / GROWTH > root_size => {
            return Err(BuildError::BadInput(format!(
                "a disk of {} would grow rootfs `{rootfs}`'s {} ext4 image more than {GROWTH} \
                 times, which its file system cannot: make `size` at most {}M, or give the \
                 rootfs a larger `size`",
                approx_size(asked),
                approx_size(root_size),
                (root_size * GROWTH) >> 20
            )))
        }
        Some(asked) => asked,
    };
    // The root takes what the backup table leaves.
    let root_end = size - ALIGN;
    Ok(Layout {
        esp: Partition {
            name: "esp",
            type_guid: ESP_TYPE,
            guid: gpt::guid_from(format!("{seed} esp").as_bytes()),
            start: gpt::first_usable(),
            size: esp_size,
        },
        root: Partition {
            name: "root-x86-64",
            type_guid: ROOT_X86_64_TYPE,
            guid: gpt::guid_from(format!("{seed} root").as_bytes()),
            start: root_start,
            size: match spec.size {
                None => root_size,
                Some(_) => root_end - root_start,
            },
        },
        size,
    })
}

/// The UKI: the stub with `.cmdline`, `.initrd` and `.linux` sections added after its
/// own, page-aligned, its clock-given header fields pinned.
fn make_uki(
    ctx: &BuildContext,
    bz_image: &Path,
    initrd: &[u8],
    cmdline: &str,
    uki: &Path,
) -> Result<(), BuildError> {
    let pin = ctx.lock.pin_for(STUB_PACKAGE, Arch::X86_64, false)?;
    let unpacked = ctx.work.join("stub");
    unpack_deb(&pin, &unpacked, ctx)?;
    let stub = unpacked.join(STUB_PATH);
    let stub_bytes = fs_err::read(&stub).map_err(io_err("read", &stub))?;
    let placement = pe::placement(&stub_bytes)
        .map_err(|why| BuildError::Invalid(format!("{}: {why}", stub.display())))?;
    let cmdline_file = ctx.work.join("cmdline");
    fs_err::write(&cmdline_file, format!("{cmdline}\0")).map_err(io_err("write", &cmdline_file))?;
    let initrd_file = ctx.work.join("initrd.cpio");
    fs_err::write(&initrd_file, initrd).map_err(io_err("write", &initrd_file))?;
    let mut command = Command::new("objcopy");
    let mut at = placement.start;
    for (section, file) in [
        (".cmdline", cmdline_file.as_path()),
        (".initrd", initrd_file.as_path()),
        (".linux", bz_image),
    ] {
        let len = fs_err::metadata(file).map_err(io_err("read", file))?.len();
        command
            .arg("--add-section")
            .arg(format!("{section}={}", file.display()))
            .arg("--change-section-vma")
            .arg(format!("{section}={at:#x}"));
        at = (at + len).next_multiple_of(placement.align);
    }
    command.arg(&stub).arg(uki);
    process::run(&mut command)?;
    let mut bytes = fs_err::read(uki).map_err(io_err("read", uki))?;
    pe::pin_timestamp(&mut bytes)
        .map_err(|why| BuildError::Invalid(format!("{}: {why}", uki.display())))?;
    fs_err::write(uki, bytes).map_err(io_err("write", uki))?;
    Ok(())
}

/// A FAT32 file system in `esp`'s place in `image`, holding the UKI at `UKI_PATH`.
fn write_esp(image: &Path, esp: &Partition, seed: &str, uki: &Path) -> Result<(), BuildError> {
    let file = fs_err::File::options()
        .write(true)
        .open(uki)
        .map_err(io_err("open", uki))?;
    file.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(FAT_EPOCH))
        .map_err(io_err("set the time of", uki))?;
    drop(file);
    let volume_id = &seed[..8];
    process::run(
        Command::new("mkfs.fat")
            .args([
                "--invariant",
                "-F",
                "32",
                "-s",
                "1",
                "-n",
                "ESP",
                "-i",
                volume_id,
            ])
            .arg(format!("--offset={}", esp.start / gpt::SECTOR))
            .arg(image)
            .arg((esp.size >> 10).to_string()),
    )?;
    // mtools addresses the partition as `image@@offset`, and would split a path holding
    // `@@` there: it runs in the image's folder and names the file alone. Its own config
    // files and the clock stay out.
    let folder = image.parent().unwrap_or(Path::new("."));
    let file_name = image.file_name().unwrap_or_default().to_string_lossy();
    let target = format!("{file_name}@@{}", esp.start);
    let uki = std::path::absolute(uki).map_err(io_err("find", uki))?;
    let mtools = |tool: &str| {
        let mut command = Command::new(tool);
        command
            .current_dir(folder)
            .env("MTOOLSRC", "/dev/null")
            .env("MTOOLS_SKIP_CHECK", "1")
            .env("SOURCE_DATE_EPOCH", FAT_EPOCH.to_string())
            // FAT keeps local time: the host's zone would change the bytes.
            .env("TZ", "UTC")
            .arg("-i")
            .arg(&target);
        command
    };
    let dirs: Vec<String> = {
        let parts: Vec<&str> = UKI_PATH.split('/').collect();
        (1..parts.len())
            .map(|n| format!("::{}", parts[..n].join("/")))
            .collect()
    };
    process::run(mtools("mmd").args(&dirs))?;
    process::run(
        mtools("mcopy")
            .arg("-m")
            .arg(&uki)
            .arg(format!("::{UKI_PATH}")),
    )?;
    Ok(())
}
