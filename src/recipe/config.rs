//! `vmbuild.toml`: the project's settings, shared by everyone who builds it. Today these
//! are the remote cache's: where it is, whether to write to it, and whose signatures to
//! trust. The command line and environment override each (see `cli`).
//!
//! ```toml
//! remote_cache = "http://cache.example:8080/vmbuild"
//! remote = "read"                 # off | read | readwrite (default when a cache is set)
//! signing_key = "keys/ci.secret"  # writers sign what they upload
//! trusted_keys = ["ci-1:base64..."]
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{Diagnostic, Location, RecipeError, Result, PROJECT_FILE};

/// How vmbuild uses a remote cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RemoteMode {
    /// Not at all.
    Off,
    /// Lookups fall back to it; nothing is uploaded.
    Read,
    /// Lookups fall back to it, and successful builds and all-pass results are uploaded.
    Readwrite,
}

impl std::str::FromStr for RemoteMode {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<RemoteMode, String> {
        match text {
            "off" => Ok(RemoteMode::Off),
            "read" => Ok(RemoteMode::Read),
            "readwrite" => Ok(RemoteMode::Readwrite),
            other => Err(format!("`{other}` is not off, read or readwrite")),
        }
    }
}

/// The settings in `vmbuild.toml`, checked (every path relative to the project root).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProjectConfig {
    pub remote_cache: Option<String>,
    pub remote: Option<RemoteMode>,
    pub signing_key: Option<PathBuf>,
    pub trusted_keys: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    remote_cache: Option<Spanned<String>>,
    remote: Option<RemoteMode>,
    signing_key: Option<PathBuf>,
    #[serde(default)]
    trusted_keys: Vec<Spanned<String>>,
}

impl ProjectConfig {
    /// Reads `<root>/vmbuild.toml`; a project without one has the defaults.
    pub fn load(root: &Path) -> Result<ProjectConfig> {
        let file = root.join(PROJECT_FILE);
        let text = match fs_err::read_to_string(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ProjectConfig::default())
            }
            Err(source) => return Err(RecipeError::Read { path: file, source }),
        };
        let at = |span| Location::from_span(&file, &text, span);
        let raw: RawConfig = toml::from_str(&text)
            .map_err(|e| Diagnostic::new(at(e.span().unwrap_or(0..0)), e.message().trim()))?;
        // The line under a message is shown too: without a password or a secret key.
        if let Some(url) = &raw.remote_cache {
            check_url(url.get_ref()).map_err(|m| {
                let mut location = at(url.span());
                location.line_text = redact(&location.line_text);
                Diagnostic::new(location, m)
            })?;
        }
        for key in &raw.trusted_keys {
            parse_public_key(key.get_ref()).map_err(|m| {
                let mut location = at(key.span());
                location.line_text = "(the line is not shown: it may hold a secret key)".into();
                Diagnostic::new(location, m)
            })?;
        }
        Ok(ProjectConfig {
            remote_cache: raw.remote_cache.map(Spanned::into_inner),
            remote: raw.remote,
            // Only writers hold the key (a missing one is said when uploads would start).
            signing_key: raw.signing_key.map(|p| root.join(p)),
            trusted_keys: raw
                .trusted_keys
                .into_iter()
                .map(Spanned::into_inner)
                .collect(),
        })
    }
}

/// A remote cache's address: `http://` or `https://`, a host, no query or fragment (the
/// protocol appends `/cas/<sha256>` and `/ac/<key>` to it).
pub fn check_url(address: &str) -> std::result::Result<(), String> {
    // Every message shows the address without its password.
    let url = &redact(address);
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("`{url}` is not an http:// or https:// address"))?;
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let host_port = &authority[authority.rfind('@').map_or(0, |at| at + 1)..];
    let (host, port) = match host_port.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("`{url}`: the address in [ ] is not closed"))?;
            (host, after.strip_prefix(':'))
        }
        None => match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        },
    };
    if host.is_empty() {
        return Err(format!("`{url}` names no host"));
    }
    if let Some(port) = port {
        if !port.parse::<u16>().is_ok_and(|p| p > 0) {
            return Err(format!("`{url}`: `{port}` is not a port (1 to 65535)"));
        }
    }
    if let Some(bad) = rest
        .chars()
        .find(|c| matches!(c, '?' | '#') || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "`{url}` holds {bad:?}: a cache address is a base URL without query, fragment or spaces"
        ));
    }
    Ok(())
}

/// `text` with the password of any `scheme://user:password@` in it hidden.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let authority_end = tail.find(['/', ' ', ')']).unwrap_or(tail.len());
        match tail[..authority_end].rfind('@') {
            Some(end) => {
                let user = tail[..end].split(':').next().unwrap_or_default();
                out.push_str(user);
                out.push_str(":***");
                rest = &tail[end..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

/// A trusted key as Nix writes them: `NAME:BASE64` of a 32-byte ed25519 public key. The
/// name and the key's bytes, or what is wrong.
pub fn parse_public_key(text: &str) -> std::result::Result<(String, Vec<u8>), String> {
    use base64::Engine;
    // What is wrong is said without the key's text: a secret key pasted here by mistake
    // must not end up in a log.
    let (name, key) = text
        .trim()
        .split_once(':')
        .ok_or("a trusted key is NAME:BASE64, and this one has no `:`")?;
    if name.is_empty() {
        return Err("a trusted key is NAME:BASE64, and this one has no name before `:`".into());
    }
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(bytes) if bytes.len() == 32 => Ok((name.to_string(), bytes)),
        Ok(bytes) if bytes.len() == 64 => Err(format!(
            "the key named `{name}` is a secret key (64 bytes): trust the public key `vmbuild \
             keygen` printed, and keep the secret one out of shared files"
        )),
        Ok(bytes) => Err(format!(
            "the key named `{name}` is {} bytes: an ed25519 public key is 32",
            bytes.len()
        )),
        Err(_) => Err(format!(
            "the key named `{name}` is not base64 after its `:`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> std::result::Result<ProjectConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(PROJECT_FILE), text).unwrap();
        ProjectConfig::load(dir.path()).map_err(|e| e.to_string())
    }

    #[test]
    fn settings_load_and_bad_ones_point_at_their_line() {
        let ok = load(
            "remote_cache = \"http://127.0.0.1:8080/c\"\nremote = \"read\"\n\
             trusted_keys = [\"ci:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\"]\n",
        )
        .unwrap();
        assert_eq!(ok.remote_cache.as_deref(), Some("http://127.0.0.1:8080/c"));
        assert_eq!(ok.remote, Some(RemoteMode::Read));
        assert_eq!(ok.trusted_keys.len(), 1);

        let bad = load("remote = \"off\"\nremote_cache = \"ftp://x\"\n").unwrap_err();
        assert!(bad.contains("vmbuild.toml:2:16"), "{bad}");
        assert!(bad.contains("not an http:// or https://"), "{bad}");
        let bad = load("remote_cache = \"http://h/c?x=1\"\n").unwrap_err();
        assert!(bad.contains("without query"), "{bad}");
        for (url, why) in [
            ("http://:80", "names no host"),
            ("http://[::1", "not closed"),
            ("http://127.0.0.1:99999", "not a port"),
            ("https://", "names no host"),
        ] {
            assert!(check_url(url).unwrap_err().contains(why), "{url}");
        }
        for url in [
            "http://[::1]:8080/c",
            "https://u:p@cache.example/v",
            "http://h:1",
        ] {
            check_url(url).unwrap();
        }
        let bad = load("trusted_keys = [\"ci:AAAA\"]\n").unwrap_err();
        assert!(
            bad.contains("is 3 bytes: an ed25519 public key is 32"),
            "{bad}"
        );
        // A secret key pasted as a trusted one is named, not shown, nor is its line.
        let secret = format!("ci:{}", "A".repeat(86) + "==");
        let bad = load(&format!("trusted_keys = [\"{secret}\"]\n")).unwrap_err();
        assert!(bad.contains("is a secret key"), "{bad}");
        assert!(!bad.contains(&"A".repeat(20)), "{bad}");
        let bad = load("remote = \"sometimes\"\n").unwrap_err();
        assert!(bad.contains("vmbuild.toml:1:10"), "{bad}");
        // A key only writers have does not stop anyone else.
        let readers = load("signing_key = \"keys/ci.secret\"\n").unwrap();
        assert!(readers.signing_key.unwrap().ends_with("keys/ci.secret"));
        let bad = load("remote_cache = \"http://ci:hunter2@h:0/c\"\n").unwrap_err();
        assert!(!bad.contains("hunter2"), "{bad}");
        let bad = load("remote_cach = \"http://h\"\n").unwrap_err();
        assert!(bad.contains("unknown field `remote_cach`"), "{bad}");
        assert_eq!(load("").unwrap(), ProjectConfig::default());
    }
}
