//! `vmbuild import ktest FILE`: a ktest test (format::ktest) as a test recipe, a bundle
//! recipe and the bundle's folder, in the current project. What does not translate is
//! listed, and written at the top of the recipe. The recipe is loaded like any other
//! before the command succeeds; if it does not load, nothing is left behind.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::{open_engine, render::Renderer, Global};
use crate::engine::Error;
use crate::format::ktest::{self, Ktest};

pub const EXAMPLES: &str = "\
Examples:
  vmbuild import ktest ~/ktest/tests/fs/ext4.ktest            # recipes/ext4.toml, tests/ext4/
  vmbuild import ktest --kernel my-kernel --name ext4-quick ext4.ktest
  vmbuild test ext4

Each test_NAME function becomes a test NAME. require-kernel-config, config-scratch-devs,
config-timeout, config-mem, config-cpus and require-kernel-append become the tests' headers
and the recipe's [vm] settings; the kernel options are also written as a kconfig fragment
(modules/kconfig/NAME-ktest.config) to add to a kernel recipe built from source. Every other
declaration is listed, with what to do instead.";

#[derive(Subcommand)]
pub enum ImportCommand {
    /// A ktest test file (koverstreet/ktest's format)
    #[command(after_help = EXAMPLES)]
    Ktest(KtestArgs),
}

#[derive(Args)]
pub struct ImportArgs {
    #[command(subcommand)]
    what: ImportCommand,
}

#[derive(Args)]
pub struct KtestArgs {
    /// The ktest test file
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// The test recipe's name [default: the file's name without .ktest or .sh]
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// The kernel recipe the tests boot
    #[arg(long, value_name = "RECIPE", default_value = "debian-kernel")]
    kernel: String,
    /// The rootfs recipe the tests boot [default: busybox-rootfs for a /bin/sh script,
    /// else debian-rootfs, which has bash]
    #[arg(long, value_name = "RECIPE")]
    rootfs: Option<String>,
    /// Replace files an earlier import wrote
    #[arg(long)]
    force: bool,
}

pub fn run(global: &Global, reporter: &Renderer, args: ImportArgs) -> Result<i32, Error> {
    let ImportCommand::Ktest(args) = args.what;
    let text = fs_err::read_to_string(&args.file)
        .map_err(|e| Error::Usage(format!("read the ktest file: {e}")))?;
    let test =
        ktest::parse(&text).map_err(|e| Error::Usage(format!("{}: {e}", args.file.display())))?;
    let name = match &args.name {
        Some(name) => name.clone(),
        None => name_of(&args.file),
    };
    // Before any path is made of it.
    crate::recipe::grammar::recipe_name(&name).map_err(|e| Error::Usage(format!("--name: {e}")))?;
    if test.tests.iter().any(|t| *t == format!("{name}.ktest")) {
        return Err(Error::Usage(format!(
            "{}: a test named `{name}.ktest` would take the place of the file its tests share",
            args.file.display()
        )));
    }
    let engine = open_engine(global, reporter, false)?;
    let root = engine.project.root.clone();
    let rootfs = args.rootfs.clone().unwrap_or_else(|| {
        match test.interpreter.ends_with("/sh") {
            true => "busybox-rootfs",
            false => "debian-rootfs",
        }
        .to_string()
    });
    let files = files_for(&test, &args, &name, &rootfs);
    let folder = root.join("tests").join(&name);
    // What is there already: refused, unless --force and an earlier import wrote it.
    let mut before = Vec::new();
    for (path, _, _) in &files {
        let path = root.join(path);
        match fs_err::read(&path) {
            Ok(old) if args.force && written_by_import(&old) => before.push((path, Some(old))),
            Ok(_) if args.force => {
                return Err(Error::Usage(format!(
                    "{} exists and `vmbuild import` did not write it: not replaced",
                    path.display()
                )))
            }
            Ok(_) => {
                return Err(Error::Usage(format!(
                    "{} exists: import under another --name, or replace it with --force",
                    path.display()
                )))
            }
            Err(_) if path.symlink_metadata().is_ok() => {
                return Err(Error::Usage(format!(
                    "{} exists and is not a file",
                    path.display()
                )))
            }
            Err(_) => before.push((path, None)),
        }
    }
    // Runners of an earlier import whose tests are gone, so that they do not run.
    let stale: Vec<(PathBuf, Vec<u8>)> = fs_err::read_dir(&folder)
        .map(|dir| {
            dir.flatten()
                .map(|e| e.path())
                .filter(|p| !before.iter().any(|(b, _)| b == p))
                .filter_map(|p| fs_err::read(&p).ok().map(|old| (p, old)))
                .filter(|(_, old)| written_by_import(old))
                .collect()
        })
        .unwrap_or_default();
    let rollback = |why: Error| -> Error {
        for (path, old) in &before {
            let _ = match old {
                Some(old) => fs_err::write(path, old),
                None => fs_err::remove_file(path),
            };
        }
        for (path, old) in &stale {
            let _ = write(path, old, true);
        }
        for dir in [folder.clone(), root.join("modules/kconfig")] {
            let _ = fs_err::remove_dir(dir);
        }
        why
    };
    for (path, _) in &stale {
        fs_err::remove_file(path).map_err(|e| rollback(Error::Usage(e.to_string())))?;
    }
    for (path, text, executable) in &files {
        write(&root.join(path), text, *executable).map_err(rollback)?;
    }
    // The recipe loads, with its kernel and rootfs, or everything is as it was.
    engine.plan(std::slice::from_ref(&name)).map_err(rollback)?;
    for (path, _, _) in &files {
        println!("{}", root.join(path).display());
    }
    if !test.untranslated.is_empty() {
        eprintln!("not translated ({} lines):", test.untranslated.len());
        for u in &test.untranslated {
            eprintln!("  line {}: {}: {}", u.line, u.text, u.why);
        }
    }
    eprintln!(
        "{} tests imported; run them with: vmbuild test {name}",
        test.tests.len()
    );
    Ok(0)
}

/// What every file an import writes says in its first lines.
const MARKER: &str = "`vmbuild import ktest`";

/// Whether `text` is a file an import wrote.
fn written_by_import(text: &[u8]) -> bool {
    let head = &text[..text.len().min(512)];
    String::from_utf8_lossy(head).contains(MARKER)
}

/// `ext4.ktest` -> `ext4`; characters a recipe name cannot have become `-`.
fn name_of(file: &Path) -> String {
    let stem = file
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = stem
        .strip_suffix(".ktest")
        .or_else(|| stem.strip_suffix(".sh"))
        .unwrap_or(&stem);
    let name: String = stem
        .chars()
        .map(
            |c| match c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                true => c,
                false => '-',
            },
        )
        .collect();
    match name.trim_matches('-') {
        "" => "ktest".into(),
        name => name.to_string(),
    }
}

/// Each file to write: its path under the project root, its text, whether it runs.
fn files_for(
    test: &Ktest,
    args: &KtestArgs,
    name: &str,
    rootfs: &str,
) -> Vec<(PathBuf, String, bool)> {
    let bundle = format!("{name}-tests");
    let folder = PathBuf::from("tests").join(name);
    let library = format!("{name}.ktest");
    let fragment = PathBuf::from("modules/kconfig").join(format!("{name}-ktest.config"));
    // Written into comments: one line, whatever the path holds.
    let source: String = args
        .file
        .display()
        .to_string()
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    let mut files = vec![
        (
            PathBuf::from("recipes").join(format!("{name}.toml")),
            test_recipe(test, &source, &args.kernel, rootfs, &bundle, &fragment),
            false,
        ),
        (
            PathBuf::from("recipes").join(format!("{bundle}.toml")),
            format!(
                "# The tests of {source}, imported by `vmbuild import ktest`.\nkind = \"bundle\"\ntests = \"../tests/{name}\"\n"
            ),
            false,
        ),
        (folder.join(&library), test.library(), false),
    ];
    for t in &test.tests {
        files.push((folder.join(t), test.runner(t, &library), true));
    }
    if !test.kconfig.is_empty() {
        let mut text =
            format!("# The kernel options {source} requires (ktest's require-kernel-config), imported by `vmbuild import ktest`.\n");
        for (option, value) in &test.fragment {
            text.push_str(&format!("{option}={value}\n"));
        }
        files.push((fragment, text, false));
    }
    files
}

fn test_recipe(
    test: &Ktest,
    source: &str,
    kernel: &str,
    rootfs: &str,
    bundle: &str,
    fragment: &Path,
) -> String {
    // Values written by toml, so that any text is quoted right; keys in the order the
    // shipped recipes use.
    let line = |key: &str, value: toml::Value| format!("{key} = {value}\n");
    let mut body = String::new();
    body.push_str(&line("kind", "test".into()));
    body.push_str(&line("kernel", kernel.into()));
    body.push_str(&line("rootfs", rootfs.into()));
    body.push_str(&line("bundles", vec![toml::Value::from(bundle)].into()));
    if let Some(timeout) = &test.timeout {
        body.push_str(&line("timeout", format!("{}s", timeout.value).into()));
    }
    let mut vm = String::new();
    if let Some(mem) = &test.mem {
        vm.push_str(&line("memory", mem.value.clone().into()));
    }
    if let Some(cpus) = &test.cpus {
        vm.push_str(&line("cpus", i64::from(cpus.value).into()));
    }
    if !test.scratch_devs.is_empty() {
        let disks: Vec<toml::Value> = test
            .scratch_devs
            .iter()
            .enumerate()
            .map(|(n, dev)| {
                let mut disk = toml::map::Map::new();
                disk.insert("name".into(), format!("scratch{n}").into());
                disk.insert("size".into(), dev.value.clone().into());
                toml::Value::Table(disk)
            })
            .collect();
        vm.push_str(&line("disks", disks.into()));
    }
    if !test.kernel_append.is_empty() {
        vm.push_str(&line("cmdline", test.kernel_append.join(" ").into()));
    }
    if !vm.is_empty() {
        body.push_str("\n[vm]\n");
        body.push_str(&vm);
    }
    let mut text = format!("# Imported from {source} by `vmbuild import ktest`.\n");
    if !test.kconfig.is_empty() {
        text.push_str(&format!(
            "# Its tests are skipped on a kernel without {}: a kernel built from source gets them\n\
             # from the fragment {} (add it to the kernel recipe's [config] fragments).\n",
            test.kconfig.join(", "),
            fragment.display()
        ));
    }
    if !test.untranslated.is_empty() {
        text.push_str("# Not translated:\n");
        for u in &test.untranslated {
            let line = format!("line {}: {}: {}", u.line, u.text, u.why);
            text.push_str(&format!("#   {}\n", line.replace(['\n', '\r'], " ")));
        }
    }
    text.push_str(&body);
    text
}

fn write(path: &Path, text: impl AsRef<[u8]>, executable: bool) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let io = |e: std::io::Error| Error::Usage(format!("write {}: {e}", path.display()));
    if let Some(parent) = path.parent() {
        fs_err::create_dir_all(parent).map_err(io)?;
    }
    fs_err::write(path, text).map_err(io)?;
    let mode = if executable { 0o755 } else { 0o644 };
    fs_err::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)
}
