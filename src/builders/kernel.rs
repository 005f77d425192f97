//! Kernels: prebuilt (a Debian image package, a URL or a local file) or built from
//! source with the kernel's own make (see `kernel_source`). Outputs: the image
//! (`Arch::kernel_image`: `bzImage`, or `Image` for aarch64), `config`, `System.map`, and
//! `modules/<release>/` when the kernel has modules.

use std::path::Path;

use serde_json::{json, Map, Value};

use super::{copy_tree, io_err, unpack_deb, BuildContext, BuildError};
use crate::fetch::http;
use crate::recipe::{Arch, Fetch, KernelSpec};

pub fn build(
    spec: &KernelSpec,
    arch: Arch,
    ctx: &BuildContext,
    out: &Path,
) -> Result<Map<String, Value>, BuildError> {
    match spec {
        KernelSpec::Prebuilt(fetch) => prebuilt(fetch, arch, ctx, out),
        KernelSpec::FromSource { .. } => {
            crate::builders::kernel_source::build(spec, arch, ctx, out)
        }
    }
}

fn prebuilt(
    fetch: &Fetch,
    arch: Arch,
    ctx: &BuildContext,
    out: &Path,
) -> Result<Map<String, Value>, BuildError> {
    let mut details = Map::new();
    let image = out.join(arch.kernel_image());
    match fetch {
        Fetch::Deb { package, .. } => {
            let pin = ctx.lock.pin_for(package, arch, true)?;
            let unpacked = ctx.work.join("deb");
            unpack_deb(&pin, &unpacked, ctx)?;
            let release = install_debian_image(&unpacked, &image, out)?;
            details.insert("release".into(), json!(release));
            details.insert(
                "package".into(),
                json!(format!("{}={}", pin.package, pin.version)),
            );
        }
        Fetch::Url { url, sha256 } => {
            (ctx.progress)(&format!("downloading {url}"));
            let file = http::download(url, sha256, &ctx.store.downloads())?;
            copy_tree(&file, &image)?;
        }
        Fetch::Path(path) => copy_tree(path, &image)?,
    }
    Ok(details)
}

/// Moves a Debian `linux-image-*` package's kernel (to `image`), config, System.map and
/// modules into `out`. Returns the kernel release (e.g. `6.1.0-56-amd64`).
fn install_debian_image(unpacked: &Path, image: &Path, out: &Path) -> Result<String, BuildError> {
    let boot = unpacked.join("boot");
    let vmlinuz = fs_err::read_dir(&boot)
        .map_err(io_err("read", &boot))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("vmlinuz-"))
        .ok_or_else(|| {
            BuildError::Invalid(
                "the package holds no boot/vmlinuz-*: is it a linux-image package?".into(),
            )
        })?;
    let release = vmlinuz["vmlinuz-".len()..].to_string();
    let moves = [
        (boot.join(&vmlinuz), image.to_path_buf()),
        (boot.join(format!("config-{release}")), out.join("config")),
        (
            boot.join(format!("System.map-{release}")),
            out.join("System.map"),
        ),
        (
            unpacked.join("lib/modules").join(&release),
            out.join("modules").join(&release),
        ),
    ];
    for (from, to) in moves {
        if from.exists() {
            if let Some(parent) = to.parent() {
                fs_err::create_dir_all(parent).map_err(io_err("create", parent))?;
            }
            fs_err::rename(&from, &to).map_err(io_err("move into the entry", &to))?;
        }
    }
    Ok(release)
}
