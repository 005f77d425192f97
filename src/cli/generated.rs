//! `vmbuild completions SHELL` and `vmbuild man`: shell completions and manual pages,
//! generated from the clap definitions, so they list exactly the commands and options
//! this binary takes.

use std::path::PathBuf;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::Cli;
use crate::engine::Error;

#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_name = "SHELL")]
    shell: Shell,
}

#[derive(Args)]
pub struct ManArgs {
    /// Write vmbuild.1 and a page per subcommand (vmbuild-test.1, ...) into DIR instead of
    /// printing vmbuild.1
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

pub fn completions(args: CompletionsArgs) -> Result<i32, Error> {
    let mut cmd = Cli::command();
    // Into memory first: clap_complete panics on a write error (stdout on a full disk).
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "vmbuild", &mut script);
    std::io::Write::write_all(&mut std::io::stdout(), &script)
        .map_err(|e| Error::Usage(format!("write the completion script: {e}")))?;
    Ok(0)
}

pub fn man(args: ManArgs) -> Result<i32, Error> {
    let cmd = Cli::command();
    let written = match &args.dir {
        Some(dir) => fs_err::create_dir_all(dir)
            .and_then(|()| clap_mangen::generate_to(cmd, dir))
            .map_err(|e| format!("write manual pages into {}: {e}", dir.display())),
        None => clap_mangen::Man::new(cmd)
            .render(&mut std::io::stdout())
            .map_err(|e| format!("write the manual page: {e}")),
    };
    written.map(|()| 0).map_err(Error::Usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subcommand_shows_an_example_in_its_help() {
        let cmd = Cli::command();
        for sub in cmd.get_subcommands() {
            let help = sub
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(
                help.contains("Examples:\n  vmbuild "),
                "`vmbuild {} --help` has no example",
                sub.get_name()
            );
        }
    }

    #[test]
    fn completions_and_manual_pages_name_every_subcommand() {
        let mut cmd = Cli::command();
        let names: Vec<String> = cmd
            .get_subcommands()
            .map(|s| s.get_name().to_string())
            .collect();
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "vmbuild", &mut out);
            let script = String::from_utf8(out).unwrap();
            for name in &names {
                assert!(script.contains(name.as_str()), "{shell}: {name}");
            }
            assert!(script.contains("cache-dir"), "{shell}");
        }
        let dir = tempfile::tempdir().unwrap();
        man(ManArgs {
            dir: Some(dir.path().to_path_buf()),
        })
        .unwrap();
        for page in std::iter::once("vmbuild".to_string())
            .chain(names.iter().map(|n| format!("vmbuild-{n}")))
        {
            let text = std::fs::read_to_string(dir.path().join(format!("{page}.1"))).unwrap();
            assert!(text.starts_with(".ie \\n(.g .ds Aq"), "{page}");
            assert!(text.contains(".TH "), "{page}");
        }
    }
}
