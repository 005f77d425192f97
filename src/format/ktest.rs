//! ktest's test files (github.com/koverstreet/ktest). A ktest test is a shell script
//! that declares what its VM needs with commands at its top level:
//!
//! ```sh
//! require-kernel-config EXT4_FS,QUOTA=y
//! config-scratch-devs 4G
//! config-timeout 600
//! config-mem 2G
//! config-cpus 2
//! require-kernel-append quiet
//! ```
//!
//! and whose tests are its `test_*` functions, run one by one by `main "$@"`. `parse` reads
//! those declarations without running the script (a declaration is a line that starts at
//! its first column, as in ktest's own tests), and lists every line it has no vmbuild
//! counterpart for. `library` is the script as the guest sources it: the declarations
//! turned into comments, `main` no longer called, and ktest's `ktest_scratch_dev` set to
//! the VM's scratch disks.

/// What a ktest file declares.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Ktest {
    /// The interpreter of its `#!` line (`/bin/bash` without one, as ktest runs them).
    pub interpreter: String,
    /// Its tests: the names of its `test_NAME` functions, in file order.
    pub tests: Vec<String>,
    /// Kernel options it requires (`CONFIG_NAME`, each `=y` or `=m` in ktest's terms).
    pub kconfig: Vec<String>,
    /// The same with the value asked for, for a kconfig fragment.
    pub fragment: Vec<(String, char)>,
    /// The size of each scratch device, as written (`4G`).
    pub scratch_devs: Vec<Declared<String>>,
    /// Seconds.
    pub timeout: Option<Declared<u64>>,
    /// As written (`2G`).
    pub mem: Option<Declared<String>>,
    pub cpus: Option<Declared<u32>>,
    /// Words for the kernel command line.
    pub kernel_append: Vec<String>,
    /// Lines with no counterpart, and why.
    pub untranslated: Vec<Untranslated>,
    /// The script with its declarations commented out and `main "$@"` dropped.
    body: String,
    /// The names in `tests`.
    seen: std::collections::HashSet<String>,
}

/// A declared value and the line (1-based) it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Declared<T> {
    pub value: T,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Untranslated {
    pub line: usize,
    pub text: String,
    pub why: String,
}

/// Declarations ktest has that vmbuild has no counterpart for, and what to do instead.
const NO_COUNTERPART: &[(&str, &str)] = &[
    ("require-lib", "ktest's libraries are not shipped with vmbuild: put what the tests need in the bundle"),
    ("require-git", "vmbuild fetches nothing at test time: vendor the repository, or build it in a bundle's [build]"),
    ("require-make", "build it in a bundle's [build] (docs/bundles.md)"),
    ("require-file", "put the file in the bundle folder"),
    ("require-build-deb", "list Debian packages in the rootfs recipe's `packages`"),
    ("require-qemu-append", "vmbuild sets qemu's command line itself: use the recipe's [vm] settings"),
    ("config-arch", "set arch = \"aarch64\" in the recipe and its kernel and rootfs for an arm64 guest (x86_64 is the default)"),
    ("config-pmem-devs", "vmbuild has no persistent-memory devices"),
    ("config-scratch-slowdevs", "vmbuild's scratch disks are not rate-limited: add a plain one to [vm] disks by hand"),
    ("config-compiler", "set in the kernel recipe"),
];

/// Reads `text`, a ktest test file.
pub(crate) fn parse(text: &str) -> Result<Ktest, String> {
    let mut ktest = Ktest {
        interpreter: "/bin/bash".into(),
        ..Ktest::default()
    };
    let mut body = String::new();
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.lines().enumerate();
    while let Some((n, first)) = lines.next() {
        let number = n + 1;
        if n == 0 {
            if let Some(shebang) = first.strip_prefix("#!") {
                ktest.interpreter = interpreter_of(shebang.trim());
                body.push_str(first);
                body.push('\n');
                continue;
            }
        }
        // A line ending in `\` goes on on the next: one command, read as one line.
        let mut physical = vec![first];
        let mut joined = first.to_string();
        while joined.ends_with('\\') {
            joined.pop();
            let Some((_, next)) = lines.next() else { break };
            physical.push(next);
            joined.push(' ');
            joined.push_str(next);
        }
        match read_line(&mut ktest, number, &joined) {
            Line::Keep => {
                for line in physical {
                    body.push_str(line);
                    body.push('\n');
                }
            }
            // Turned into `:`, a command doing nothing, so that a block it stood in is
            // still one; the original as a comment.
            Line::Declaration => {
                for line in physical {
                    body.push_str(":  # vmbuild import: ");
                    body.push_str(line);
                    body.push('\n');
                }
            }
            Line::Drop => body.push('\n'),
        }
    }
    if ktest.tests.is_empty() {
        return Err("no tests in it: a ktest test file defines functions named test_NAME".into());
    }
    ktest.body = body;
    Ok(ktest)
}

enum Line {
    Keep,
    /// Read into the recipe: kept as a comment.
    Declaration,
    Drop,
}

fn interpreter_of(shebang: &str) -> String {
    let mut words = shebang.split_whitespace();
    match (words.next(), words.next()) {
        // `#!/usr/bin/env bash`: the guest may lack env's folder; the program is what counts.
        (Some(env), Some(_)) if env.ends_with("/env") => {
            // `env -S bash -e`: the first word that is not an option.
            let program = shebang
                .split_whitespace()
                .skip(1)
                .find(|w| !w.starts_with('-'))
                .unwrap_or("bash");
            format!("/bin/{program}")
        }
        (Some(program), _) => program.to_string(),
        (None, _) => "/bin/bash".into(),
    }
}

fn read_line(ktest: &mut Ktest, line: usize, text: &str) -> Line {
    let mut untranslated = |why: &str| {
        ktest.untranslated.push(Untranslated {
            line,
            text: text.trim().to_string(),
            why: why.to_string(),
        });
    };
    // Declarations and functions start at the first column; an indented declaration
    // (in a function or a block) is not read, and does nothing in the guest.
    if text.starts_with(char::is_whitespace) {
        let command = text.split_whitespace().next().unwrap_or_default();
        if is_declaration(command) {
            untranslated("indented (in a function or a block): not read, and a no-op in the guest");
            return Line::Declaration;
        }
        return Line::Keep;
    }
    if let Some(name) = test_function(text) {
        if ktest.seen.insert(name.clone()) {
            ktest.tests.push(name);
        }
        return Line::Keep;
    }
    if function_name(text) == Some("list_tests") {
        untranslated("its tests are its test_* functions: list_tests is not run");
        return Line::Keep;
    }
    let mut words = text.split_whitespace();
    let Some(command) = words.next() else {
        return Line::Keep;
    };
    let args: Vec<&str> = words.take_while(|w| !w.starts_with('#')).collect();
    match command {
        "main" => return Line::Drop,
        "." | "source"
            if args
                .iter()
                .any(|a| a.contains("libs.sh") || a.contains("prelude")) =>
        {
            untranslated("sources ktest's own library, which is not shipped with vmbuild");
            return Line::Declaration;
        }
        _ => {}
    }
    if !is_declaration(command) {
        return Line::Keep;
    }
    let computed = args.iter().any(|a| a.contains('$') || a.contains('`'));
    let args: Vec<&str> = args.iter().map(|a| unquoted(a)).collect();
    if computed {
        untranslated("its value is computed when ktest runs: set it in the recipe by hand");
        return Line::Declaration;
    }
    match command {
        "require-kernel-config" => {
            for option in args
                .iter()
                .flat_map(|a| a.split(','))
                .filter(|o| !o.is_empty())
            {
                match kconfig_option(option) {
                    Ok((name, value)) => {
                        if !ktest.kconfig.contains(&name) {
                            ktest.kconfig.push(name.clone());
                            ktest.fragment.push((name, value));
                        }
                    }
                    Err(why) => ktest.untranslated.push(Untranslated {
                        line,
                        text: text.trim().to_string(),
                        why,
                    }),
                }
            }
        }
        "config-scratch-devs" if args.len() == 1 => ktest.scratch_devs.push(Declared {
            value: args[0].to_string(),
            line,
        }),
        "config-timeout" => match args.as_slice() {
            [secs] if secs.parse::<u64>().is_ok_and(|s| s > 0) => {
                ktest.timeout = Some(Declared {
                    value: secs.parse().unwrap_or_default(),
                    line,
                })
            }
            _ => untranslated("a timeout is a whole number of seconds"),
        },
        "config-mem" if args.len() == 1 => {
            ktest.mem = Some(Declared {
                value: args[0].to_string(),
                line,
            })
        }
        "config-cpus" => match args.as_slice() {
            [n] if n.parse::<u32>().is_ok_and(|n| n > 0) => {
                ktest.cpus = Some(Declared {
                    value: n.parse().unwrap_or(1),
                    line,
                })
            }
            _ => untranslated("a number of CPUs is a whole number"),
        },
        "require-kernel-append" => ktest
            .kernel_append
            .extend(args.iter().map(|a| a.to_string())),
        "config-scratch-devs" | "config-mem" => untranslated("expected one size (4G)"),
        other => {
            let why = NO_COUNTERPART
                .iter()
                .find(|(name, _)| *name == other)
                .map(|(_, why)| why.to_string())
                .unwrap_or_else(|| format!("`{other}` has no vmbuild counterpart"));
            untranslated(&why);
        }
    }
    Line::Declaration
}

/// ktest's declaration commands.
fn is_declaration(command: &str) -> bool {
    command.starts_with("require-") || command.starts_with("config-")
}

/// A word without the quotes around it (`"2G"`, `'a"b'`), as the shell would pass it.
fn unquoted(word: &str) -> &str {
    for quote in ['"', '\''] {
        if let Some(inner) = word.strip_prefix(quote).and_then(|w| w.strip_suffix(quote)) {
            return inner;
        }
    }
    word
}

/// `NAME` of a line `test_NAME()` or `function test_NAME`.
fn test_function(line: &str) -> Option<String> {
    let name = function_name(line)?.strip_prefix("test_")?;
    let valid = !matches!(name, "" | "." | "..")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c));
    valid.then(|| name.to_string())
}

/// The function a line starts to define (`name()`, `name ()`, `function name`).
fn function_name(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("function ").unwrap_or(line).trim_start();
    let end = rest
        .find(|c: char| c == '(' || c.is_whitespace() || c == '{')
        .unwrap_or(rest.len());
    let (name, after) = rest.split_at(end);
    let defines = line.starts_with("function ") || after.trim_start().starts_with("()");
    (defines && !name.is_empty()).then_some(name)
}

/// `EXT4_FS`, `EXT4_FS=y`, `CONFIG_EXT4_FS=m` as `CONFIG_EXT4_FS`; other values are for
/// a kconfig fragment, not a test header.
fn kconfig_option(option: &str) -> Result<(String, char), String> {
    let (name, value) = option.split_once('=').unwrap_or((option, "y"));
    let name = name.strip_prefix("CONFIG_").unwrap_or(name);
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if !valid {
        return Err(format!("`{option}` is not a kernel option"));
    }
    match value {
        "y" => Ok((format!("CONFIG_{name}"), 'y')),
        "m" => Ok((format!("CONFIG_{name}"), 'm')),
        _ => Err(format!(
            "CONFIG_{name}={value}: a test can require an option be y or m; set other values in a kconfig fragment"
        )),
    }
}

impl Ktest {
    /// The script as each test's runner sources it in the guest: `ktest_scratch_dev` is
    /// the VM's scratch disks (`VMBUILD_DISK_SCRATCH0`, ...), in order.
    pub(crate) fn library(&self) -> String {
        let mut lines = self.body.lines();
        let mut out = String::new();
        if self.body.starts_with("#!") {
            if let Some(shebang) = lines.next() {
                out.push_str(shebang);
                out.push('\n');
            }
        }
        let disks: Vec<String> = (0..self.scratch_devs.len())
            .map(|n| format!("${{VMBUILD_DISK_SCRATCH{n}}}"))
            .collect();
        out.push_str(&format!(
            "# Imported by `vmbuild import ktest`: sourced by each of the tests beside it.\n\
             # ktest's scratch devices are the VM's scratch disks.\n\
             ktest_scratch_dev=\"{}\"\n\
             if [ -n \"${{BASH_VERSION-}}\" ]; then eval 'ktest_scratch_dev=({})'; fi\n",
            disks.join(" "),
            disks.join(" ")
        ));
        for line in lines {
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// The runner of test `name`: vmbuild's header, then the library and the function.
    pub(crate) fn runner(&self, name: &str, library_file: &str) -> String {
        let mut header = Vec::new();
        if let Some(timeout) = &self.timeout {
            header.push(format!("timeout={}s", timeout.value));
        }
        if !self.kconfig.is_empty() {
            header.push(format!("kconfig={}", self.kconfig.join(",")));
        }
        if !self.scratch_devs.is_empty() {
            header.push(format!("disks={}", self.scratch_devs.len()));
        }
        let header = match header.is_empty() {
            true => String::new(),
            false => format!("# vmbuild: {}\n", header.join(" ")),
        };
        format!(
            "#!{interpreter}\n{header}\
             # ktest's test_{name} from {library_file}, imported by `vmbuild import ktest`.\n\
             # As under ktest, the first command that fails fails the test.\n\
             set -e\n\
             . \"$(dirname \"$0\")/{library_file}\"\n\
             test_{name}\n",
            interpreter = self.interpreter
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"#!/usr/bin/env bash
# An ext4 test, in ktest's format.

. $(dirname $(readlink -e "${BASH_SOURCE[0]}"))/test-libs.sh

require-kernel-config EXT4_FS,QUOTA=m
require-kernel-config CONFIG_BLK_DEV_LOOP
require-kernel-config HZ=1000
require-git https://example.org/xfstests.git xfstests
config-scratch-devs 4G
config-scratch-devs 1G
config-timeout 600
config-mem 2G
config-cpus 2
require-kernel-append quiet log_buf_len=8M

test_mkfs()
{
    mkfs.ext4 -F ${ktest_scratch_dev[0]}
    config-timeout 5
}

function test_mount {
    true
}

helper() { :; }

main "$@"
"#;

    #[test]
    fn declarations_become_vmbuild_settings_and_the_rest_is_listed() {
        let k = parse(EXAMPLE).unwrap();
        assert_eq!(k.interpreter, "/bin/bash");
        assert_eq!(k.tests, ["mkfs", "mount"]);
        assert_eq!(
            k.kconfig,
            ["CONFIG_EXT4_FS", "CONFIG_QUOTA", "CONFIG_BLK_DEV_LOOP"]
        );
        let sizes: Vec<&str> = k.scratch_devs.iter().map(|d| d.value.as_str()).collect();
        assert_eq!(sizes, ["4G", "1G"]);
        assert_eq!(k.timeout.as_ref().map(|t| t.value), Some(600));
        assert_eq!(k.mem.as_ref().map(|m| m.value.as_str()), Some("2G"));
        assert_eq!(k.cpus.as_ref().map(|c| c.value), Some(2));
        assert_eq!(k.kernel_append, ["quiet", "log_buf_len=8M"]);
        let lines: Vec<usize> = k.untranslated.iter().map(|u| u.line).collect();
        // The library, HZ=1000, require-git, and the indented config-timeout.
        assert_eq!(lines, [4, 8, 9, 20], "{:?}", k.untranslated);
        assert!(k.untranslated[3].why.contains("indented"));
        assert_eq!(
            k.fragment,
            [
                ("CONFIG_EXT4_FS".to_string(), 'y'),
                ("CONFIG_QUOTA".to_string(), 'm'),
                ("CONFIG_BLK_DEV_LOOP".to_string(), 'y')
            ]
        );
        assert!(k.untranslated[1].why.contains("kconfig fragment"));
        assert!(k.untranslated[2].why.contains("fetches nothing"));
    }

    #[test]
    fn the_library_comments_declarations_out_and_never_calls_main() {
        let k = parse(EXAMPLE).unwrap();
        let library = k.library();
        assert!(library.starts_with("#!/usr/bin/env bash\n"), "{library}");
        assert!(library
            .contains("ktest_scratch_dev=\"${VMBUILD_DISK_SCRATCH0} ${VMBUILD_DISK_SCRATCH1}\""));
        assert!(library.contains(":  # vmbuild import: config-scratch-devs 4G\n"));
        assert!(
            library.contains(":  # vmbuild import:     config-timeout 5\n"),
            "inside a function: a no-op"
        );
        assert!(!library.contains("main \"$@\""));
        let runner = k.runner("mkfs", "ext4.ktest");
        assert!(runner.starts_with(
            "#!/bin/bash\n# vmbuild: timeout=600s kconfig=CONFIG_EXT4_FS,CONFIG_QUOTA,CONFIG_BLK_DEV_LOOP disks=2\n"
        ), "{runner}");
        assert!(runner.ends_with(". \"$(dirname \"$0\")/ext4.ktest\"\ntest_mkfs\n"));
    }

    #[test]
    fn the_library_and_a_runner_run_in_a_posix_shell() {
        let text = "#!/bin/sh\nconfig-scratch-devs 8M\ntest_ok()\n{\n    echo \"disk $ktest_scratch_dev\"\n}\nmain \"$@\"\n";
        let k = parse(text).unwrap();
        assert_eq!(
            run_test_ok(&k, &[("VMBUILD_DISK_SCRATCH0", "/dev/vdb")]),
            "disk /dev/vdb\n"
        );
    }

    /// Runs `k`'s test `ok` under sh, as the guest would (the library beside its runner),
    /// with `env`; its stdout, once it passed.
    fn run_test_ok(k: &Ktest, env: &[(&str, &str)]) -> String {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.ktest"), k.library()).unwrap();
        let runner = dir.path().join("ok");
        std::fs::write(&runner, k.runner("ok", "t.ktest")).unwrap();
        let out = std::process::Command::new("sh")
            .arg(&runner)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn a_file_without_tests_is_refused() {
        assert!(parse("#!/bin/bash\nconfig-timeout 5\n")
            .unwrap_err()
            .contains("test_NAME"));
        assert!(parse("function test_\n").is_err());
    }

    #[test]
    fn continued_and_nested_declarations_leave_a_script_that_runs() {
        let text = "#!/bin/sh\nrequire-kernel-config EXT4_FS,\\\n    QUOTA\nif true; then\nconfig-timeout 9\nfi\nconfig-mem \"1G\"\ntest_ok()\n{\n    echo ran\n}\n";
        let k = parse(text).unwrap();
        assert_eq!(k.kconfig, ["CONFIG_EXT4_FS", "CONFIG_QUOTA"]);
        assert_eq!(k.mem.as_ref().map(|m| m.value.as_str()), Some("1G"));
        assert_eq!(run_test_ok(&k, &[]), "ran\n");
        assert_eq!(
            parse("#!/usr/bin/env -S bash -e\ntest_a() { :; }\n")
                .unwrap()
                .interpreter,
            "/bin/bash"
        );
    }
}
