//! Test bundles: a folder of test scripts packed for the guest as a cpio placed under
//! `/vmbuild/bundles/<name>/`, with `tests.json` listing each test and what its header
//! declares (timeout, kconfig options, disks), for the host side of the test phase. The
//! folder is the recipe's `tests`, or what its `[build]` command wrote (`bundle_build`),
//! whose log then joins the entry as `build.log`.

use std::path::Path;

use serde_json::{json, Map, Value};

use super::buildlog::BUILD_LOG;
use super::{bundle_build, io_err, BuildContext, BuildError};
use crate::format::bundle::{discover, shared_digest, BUNDLE_CPIO, SHARED_SHA256, TESTS_JSON};
use crate::format::cpio::CpioWriter;
use crate::recipe::{units, BundleSpec};

pub fn build(
    name: &str,
    spec: &BundleSpec,
    ctx: &BuildContext,
    out: &Path,
) -> Result<Map<String, Value>, BuildError> {
    match spec {
        BundleSpec::Folder(tests) => pack(name, tests, out, &tests.display().to_string()),
        BundleSpec::Build(build) => {
            let (tests, log) = bundle_build::run(build, ctx)?;
            let details = pack(
                name,
                &tests,
                out,
                "$VMBUILD_OUT, the [build] command's output",
            )?;
            log.finish(&out.join(BUILD_LOG))?;
            Ok(details)
        }
    }
}

/// Discovers the tests in `tests` and packs the folder into `out`; `described` names the
/// folder for the user.
fn pack(
    name: &str,
    tests_dir: &Path,
    out: &Path,
    described: &str,
) -> Result<Map<String, Value>, BuildError> {
    // A header's timeout has the recipe's range: whole seconds, 1 s to 7 days.
    let timeout = |text: &str| units::TEST_TIMEOUT.parse(text);
    let tests = discover(tests_dir, &timeout).map_err(BuildError::BadInput)?;
    if tests.is_empty() {
        return Err(BuildError::Invalid(format!(
            "bundle `{name}`: no executable files in {described} (a test is an executable file at its top; chmod +x it)"
        )));
    }
    let json_path = out.join(TESTS_JSON);
    let text = serde_json::to_vec_pretty(&tests).expect("tests serialize");
    fs_err::write(&json_path, text).map_err(io_err("write", &json_path))?;

    let cpio_path = out.join(BUNDLE_CPIO);
    let file = fs_err::File::create(&cpio_path).map_err(io_err("create", &cpio_path))?;
    let mut cpio = CpioWriter::new(file);
    let prefix = format!("/vmbuild/bundles/{name}");
    let write = |cpio: &mut CpioWriter<fs_err::File>| -> std::io::Result<()> {
        cpio.dir("/vmbuild", 0o755)?;
        cpio.dir("/vmbuild/bundles", 0o755)?;
        cpio.dir(&prefix, 0o755)?;
        cpio.tree(tests_dir, &prefix)
    };
    write(&mut cpio).map_err(io_err("write", &cpio_path))?;
    cpio.finish().map_err(io_err("write", &cpio_path))?;
    let tree = crate::hashing::hash_tree(tests_dir, |_| true)
        .map_err(io_err("hash the bundle folder", tests_dir))?;
    Ok(Map::from_iter([
        ("tests".to_string(), json!(tests.len())),
        (
            SHARED_SHA256.to_string(),
            json!(shared_digest(&tree, &tests)),
        ),
    ]))
}
