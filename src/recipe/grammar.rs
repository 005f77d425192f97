//! The grammar of every recipe value that becomes part of a path or an argument of another
//! program. Checking against the real grammar (not a blacklist) is what keeps a value from
//! being read as an option (`--foo`), a path (`../x`) or a second field (`a,b`).

/// A recipe name: it names a store folder (`<key>-<name>`) and a folder in the guest.
pub fn recipe_name(name: &str) -> Result<(), String> {
    let ok = (1..=100).contains(&name.len())
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
    ok.then_some(()).ok_or_else(|| {
        format!(
            "`{}` is not a recipe name: use letters, digits, `.`, `_`, `+` and `-`, starting \
             with a letter or digit (at most 100)",
            name.escape_debug()
        )
    })
}

/// A scratch disk name: it becomes the drive's serial (`/dev/disk/by-id/virtio-<name>`),
/// which virtio limits to 20 bytes, and a field of qemu's `-drive` option.
pub fn disk_name(name: &str) -> Result<(), String> {
    let ok = (1..=20).contains(&name.len())
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && !name.starts_with("vmbuild")
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b));
    ok.then_some(()).ok_or_else(|| {
        format!(
            "`{}` is not a disk name: use 1 to 20 lowercase letters, digits, `_` and `-`, \
             starting with a letter or digit (names starting with `vmbuild` are vmbuild's own)",
            name.escape_debug()
        )
    })
}

/// A Debian release (suite or codename): `bookworm`, `stable`, `bookworm-backports`.
pub fn debian_release(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    ok.then_some(()).ok_or_else(|| {
        format!(
            "`{}` is not a Debian release name (examples: bookworm, stable, bookworm-backports)",
            name.escape_debug()
        )
    })
}

/// A Debian package name, per Debian policy 5.6.1: lowercase letters, digits, `+`, `-`,
/// `.`; at least two characters; starting with a letter or digit.
pub fn debian_package(name: &str) -> Result<(), String> {
    let ok = (2..=128).contains(&name.len())
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
    ok.then_some(()).ok_or_else(|| {
        format!(
            "`{}` is not a Debian package name (lowercase letters, digits, `+`, `-` and `.`, \
             starting with a letter or digit)",
            name.escape_debug()
        )
    })
}

/// A qemu machine type: `q35`, `pc`, `pc-q35-7.2`, `microvm`.
pub fn machine(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    ok.then_some(()).ok_or_else(|| {
        format!(
            "`{}` is not a machine type (examples: q35, pc, pc-q35-7.2; for aarch64, virt)",
            name.escape_debug()
        )
    })
}

/// Whether `name` is qemu's aarch64 `virt` machine, or a version of it (`virt-7.2`).
pub fn is_virt_machine(name: &str) -> bool {
    let version = |v: &str| {
        v.split_once('.').is_some_and(|(major, minor)| {
            [major, minor]
                .iter()
                .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
    };
    name == "virt" || name.strip_prefix("virt-").is_some_and(version)
}

/// Variables the build sets itself: a recipe that set them could move outputs outside the
/// store or change the build behind the key's back.
const RESERVED_MAKE_VARIABLES: [&str; 7] = [
    "O",
    "KBUILD_OUTPUT",
    "INSTALL_PATH",
    "INSTALL_MOD_PATH",
    "INSTALL_HDR_PATH",
    "MAKEFLAGS",
    "KCONFIG_CONFIG",
];

/// A `make_flags` entry: a variable assignment such as `LLVM=1` or `KCFLAGS=-O2`. Options
/// (`-C`, `-f`, `--eval`) and targets are the build's to choose.
pub fn make_assignment(flag: &str) -> Result<(), String> {
    let Some((name, _value)) = flag.split_once('=') else {
        return Err(format!(
            "`{}` is not a variable assignment (example: LLVM=1): options and targets are \
             vmbuild's to choose",
            flag.escape_debug()
        ));
    };
    let ok = !name.is_empty()
        && !name.as_bytes()[0].is_ascii_digit()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok {
        return Err(format!(
            "`{}` is not a make variable name",
            name.escape_debug()
        ));
    }
    if RESERVED_MAKE_VARIABLES.contains(&name) {
        return Err(format!(
            "`{name}` is set by vmbuild itself (the build folder and outputs live in the store)"
        ));
    }
    Ok(())
}

/// A download address: http or https only.
pub fn url(text: &str) -> Result<(), String> {
    let scheme_ok = text.starts_with("http://") || text.starts_with("https://");
    let clean = !text.chars().any(|c| c.is_whitespace() || c.is_control());
    (scheme_ok && clean).then_some(()).ok_or_else(|| {
        format!(
            "`{}` is not an http:// or https:// address",
            text.escape_debug()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_that_other_programs_would_read_as_options_are_refused() {
        for bad in ["--x", "-a", "", "a,b", "../x", "a/b", "a b", "x\n"] {
            assert!(recipe_name(bad).is_err(), "{bad:?}");
            assert!(disk_name(bad).is_err(), "{bad:?}");
            assert!(debian_release(bad).is_err(), "{bad:?}");
            assert!(debian_package(bad).is_err(), "{bad:?}");
            assert!(machine(bad).is_err(), "{bad:?}");
        }
        assert!(recipe_name("tiny-kernel").is_ok());
        assert!(recipe_name("linux-6.1+rc2").is_ok());
        assert!(disk_name("scratch").is_ok());
        assert!(disk_name("a".repeat(21).as_str()).is_err());
        assert!(debian_release("bookworm-backports").is_ok());
        assert!(debian_package("linux-image-6.1.0-26-amd64").is_ok());
        assert!(debian_package("g++").is_ok());
        assert!(machine("pc-q35-7.2").is_ok());
        assert!(machine("q35,accel=kvm").is_err());
        assert!(make_assignment("LLVM=1").is_ok());
        assert!(make_assignment("KCFLAGS=-O2 -g").is_ok());
        assert!(make_assignment("O=/tmp/elsewhere").is_err());
        assert!(make_assignment("-C").is_err());
        assert!(make_assignment("--eval=x").is_err());
        assert!(url("file:///etc/passwd").is_err());
        assert!(url("https://example.org/linux.tar.xz").is_ok());
    }
}
