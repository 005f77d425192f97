//! Kernel `.config` files and kconfig fragments: `CONFIG_X=value` lines and
//! `# CONFIG_X is not set` comments. The kernel builder checks fragments against the final
//! config with it; the test phase skips tests whose `kconfig=` needs the kernel lacks.

use std::collections::BTreeMap;
use std::path::Path;

/// `CONFIG_X` -> value (`y`, `m`, `"text"`, `n` for "is not set") of a config file.
pub(crate) fn read_config(path: &Path) -> std::io::Result<BTreeMap<String, String>> {
    Ok(parse_config(&fs_err::read_to_string(path)?))
}

pub(crate) fn parse_config(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("# ") {
                let name = rest.strip_suffix(" is not set")?;
                return name
                    .starts_with("CONFIG_")
                    .then(|| (name.to_string(), "n".to_string()));
            }
            let (name, value) = line.split_once('=')?;
            name.starts_with("CONFIG_")
                .then(|| (name.to_string(), value.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parsing_reads_set_and_unset_options() {
        let cfg = parse_config("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x y\"\n# comment\n");
        assert_eq!(cfg["CONFIG_A"], "y");
        assert_eq!(cfg["CONFIG_B"], "n");
        assert_eq!(cfg["CONFIG_C"], "\"x y\"");
        assert_eq!(cfg.len(), 3);
    }
}
