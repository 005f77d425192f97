//! `vmbuild push`, `vmbuild pull` and `vmbuild keygen`: explicit transfers to and from the
//! remote cache (builds and tests do them on their own), and a key to sign uploads with.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::{open_engine, render::Renderer, Global};
use crate::engine::{Error, NamedKey};
use crate::store::remote::keys::SecretKey;
use crate::store::Upload;

#[derive(Args)]
pub struct TransferArgs {
    /// Recipe names (recipes/NAME.toml) or paths to .toml files; what they need is
    /// transferred too
    #[arg(required = true, value_name = "RECIPE")]
    recipes: Vec<String>,
}

#[derive(Args)]
pub struct KeygenArgs {
    /// The key's name, written before each signature (`ci-1`, `cache.example.org-1`)
    name: String,
    /// Where to write the secret key (created, mode 0600; refused if it exists)
    #[arg(value_name = "FILE")]
    secret_file: PathBuf,
}

fn no_remote(verb: &str) -> Error {
    Error::Usage(format!(
        "nothing to {verb}: no remote cache is set\n  help: pass --remote-cache URL, set \
         VMBUILD_REMOTE_CACHE, or add remote_cache = \"http://...\" to vmbuild.toml"
    ))
}

/// Uploads every entry of the recipes' closure that the local store holds. Exit 4 when
/// the server failed some (said in notes), 3 when some entry here is damaged.
pub fn push(global: &Global, reporter: &Renderer, args: TransferArgs) -> Result<i32, Error> {
    let engine = open_engine(global, reporter, false)?;
    match engine.store.remote() {
        Some(remote) if remote.writable() => {}
        Some(remote) => {
            return Err(Error::Usage(format!(
                "the remote cache {} is set to read only here (--remote read, or remote = \"read\" \
                 in vmbuild.toml): nothing pushed",
                remote.url()
            )))
        }
        None => return Err(no_remote("push")),
    }
    let plan = engine.plan(&args.recipes)?;
    let (mut sent, mut present, mut absent, mut damaged, mut failed) = (0, 0, 0, 0, 0);
    let mut keys = engine.recipe_keys(&plan);
    keys.extend(engine.case_keys(&plan)?);
    for key in keys {
        let Some(entry) = engine.store.lookup_local(&key.key, &key.name)? else {
            absent += 1;
            continue;
        };
        // What goes to others is checked in full first: a reader would refuse it anyway.
        let problems = engine.store.verify(&entry);
        if let Some(first) = problems.first() {
            eprintln!("not pushed: {} is damaged ({first})", entry.path.display());
            damaged += 1;
            continue;
        }
        match engine.store.push(&entry)? {
            Upload::Sent => sent += 1,
            Upload::Present => present += 1,
            Upload::NotShared => {}
            Upload::Failed => failed += 1,
        }
    }
    eprintln!(
        "{sent} entries pushed, {present} already there, {absent} not built here, \
         {damaged} damaged, {failed} failed"
    );
    Ok(match (failed, damaged) {
        (0, 0) => 0,
        (0, _) => 3,
        _ => 4,
    })
}

/// Downloads every entry of the recipes' closure the remote cache holds and the local
/// store does not; prints the path of each entry the store now has. Exit 4 when the
/// server could not be reached or an entry of its was refused (corrupt, unsigned);
/// entries it lacks are listed, not an error.
pub fn pull(global: &Global, reporter: &Renderer, args: TransferArgs) -> Result<i32, Error> {
    let engine = open_engine(global, reporter, false)?;
    if engine.store.remote().is_none() {
        return Err(no_remote("pull"));
    }
    let plan = engine.plan(&args.recipes)?;
    let (mut here, mut missing) = (0, Vec::new());
    let mut found = |key: NamedKey| -> Result<(), Error> {
        let waiting = || eprintln!("waiting for another vmbuild making {}", key.name);
        match engine
            .store
            .lookup_waiting(&key.key, &key.name, key.kind, waiting)?
        {
            Some(entry) => {
                here += 1;
                println!("{}", entry.path.display());
            }
            None => missing.push(key.name),
        }
        Ok(())
    };
    for key in engine.recipe_keys(&plan) {
        found(key)?;
    }
    // The tests' own keys come from their bundles, which are here now if anywhere.
    for key in engine.case_keys(&plan)? {
        found(key)?;
    }
    eprintln!(
        "{here} entries here, {} not in the remote cache{}",
        missing.len(),
        match missing.is_empty() {
            true => String::new(),
            false => format!(" ({})", missing.join(", ")),
        }
    );
    // A server that is down, or whose entries were refused (said in notes), is a
    // failure of the warm-up this command is for.
    let failed = engine.store.remote().is_some_and(|r| {
        r.is_down() || r.traffic.refused.load(std::sync::atomic::Ordering::Relaxed) > 0
    });
    Ok(if failed { 4 } else { 0 })
}

/// Makes an ed25519 key pair: the secret key into a new file, the public key on stdout.
pub fn keygen(args: KeygenArgs) -> Result<i32, Error> {
    use fs_err::os::unix::fs::OpenOptionsExt;
    let (secret, public) = SecretKey::generate(&args.name).map_err(Error::Usage)?;
    let mut file = fs_err::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&args.secret_file)
        .map_err(|e| Error::Usage(e.to_string()))?;
    file.write_all(format!("{secret}\n").as_bytes())
        .map_err(|e| Error::Usage(e.to_string()))?;
    println!("{public}");
    eprintln!(
        "secret key written to {}; sign uploads with --signing-key {0} (or signing_key in \
         vmbuild.toml), and trust them with --trusted-key {public} (or trusted_keys)",
        args.secret_file.display()
    );
    Ok(0)
}
