//! Signing of uploaded entries, the way Nix signs its binary caches: ed25519 keys named
//! `NAME:BASE64`, a secret key file for writers, a list of trusted public keys for
//! readers. The key formats are Nix's (`nix key generate-secret` keys work).
//!
//! What is signed binds the entry's key to its manifest's hash:
//! `vmbuild-entry-v1\n<key>\n<sha256 of manifest.json>\n`. The manifest holds every
//! output's hash, so one signature covers all of the entry's bytes.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ring::signature::{self, Ed25519KeyPair, KeyPair};

/// A writer's key.
pub struct SecretKey {
    name: String,
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({}:...)", self.name)
    }
}

/// A key readers trust.
#[derive(Debug, Clone)]
pub struct PublicKey {
    name: String,
    bytes: Vec<u8>,
}

/// The text signed for the entry `key` whose manifest hashes to `manifest_sha256`.
pub(crate) fn message(key: &str, manifest_sha256: &str) -> Vec<u8> {
    format!("vmbuild-entry-v1\n{key}\n{manifest_sha256}\n").into_bytes()
}

fn split<'a>(text: &'a str, what: &str) -> Result<(&'a str, Vec<u8>), String> {
    let text = text.trim();
    let (name, data) = text
        .split_once(':')
        .filter(|(name, _)| !name.is_empty())
        .ok_or_else(|| format!("not a {what}: expected NAME:BASE64"))?;
    let bytes = BASE64
        .decode(data)
        .map_err(|e| format!("not a {what}: the part after `{name}:` is not base64 ({e})"))?;
    Ok((name, bytes))
}

impl SecretKey {
    /// A new key named `name`: the secret key's text and the public key's.
    pub fn generate(name: &str) -> Result<(String, String), String> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        if name.is_empty() || !name.chars().all(allowed) {
            return Err(format!(
                "`{name}` cannot name a key: use letters, digits, dots, dashes and underscores"
            ));
        }
        let mut seed = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
            .map_err(|_| "the system's random source failed".to_string())?;
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|e| format!("make a key from the seed: {e}"))?;
        let public = pair.public_key().as_ref().to_vec();
        let secret = [seed.as_slice(), &public].concat();
        Ok((
            format!("{name}:{}", BASE64.encode(secret)),
            format!("{name}:{}", BASE64.encode(public)),
        ))
    }

    /// Reads a secret key's text (`NAME:BASE64` of the 32-byte seed and 32-byte public key).
    pub fn parse(text: &str) -> Result<SecretKey, String> {
        let (name, bytes) = split(text, "secret key")?;
        if bytes.len() != 64 {
            return Err(format!(
                "not a secret key: an ed25519 secret key is 64 bytes, this one is {}",
                bytes.len()
            ));
        }
        let pair = Ed25519KeyPair::from_seed_and_public_key(&bytes[..32], &bytes[32..])
            .map_err(|_| "not a secret key: its public half does not match its secret half")?;
        Ok(SecretKey {
            name: name.to_string(),
            pair,
        })
    }

    /// Its public half.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            bytes: self.pair.public_key().as_ref().to_vec(),
        }
    }

    /// `NAME:BASE64` of the signature of `message`.
    pub fn sign(&self, message: &[u8]) -> String {
        let signature = self.pair.sign(message);
        format!("{}:{}", self.name, BASE64.encode(signature.as_ref()))
    }
}

impl PublicKey {
    /// Reads `NAME:BASE64` (the parser `vmbuild.toml`'s `trusted_keys` are checked with).
    pub fn parse(text: &str) -> Result<PublicKey, String> {
        let (name, bytes) = crate::recipe::parse_public_key(text)?;
        Ok(PublicKey { name, bytes })
    }
}

/// Checks the signatures (`NAME:BASE64` lines) of `message` against `trusted`: the name
/// of the first trusted key that signed it, or why none did.
pub(crate) fn verify(
    signatures: &str,
    message: &[u8],
    trusted: &[PublicKey],
) -> Result<String, String> {
    let mut seen = Vec::new();
    for line in signatures.lines().filter(|l| !l.trim().is_empty()) {
        let Ok((name, signature)) = split(line, "signature") else {
            seen.push("an unreadable signature".to_string());
            continue;
        };
        let named: Vec<&PublicKey> = trusted.iter().filter(|k| k.name == name).collect();
        if named.is_empty() {
            seen.push(format!("a signature by `{name}`, which is not trusted"));
            continue;
        }
        // Keys are renewed under the same name now and then: any of them will do.
        let matches = named.iter().any(|key| {
            signature::UnparsedPublicKey::new(&signature::ED25519, &key.bytes)
                .verify(message, &signature)
                .is_ok()
        });
        match matches {
            true => return Ok(name.to_string()),
            false => seen.push(format!("a signature by `{name}` that does not match")),
        }
    }
    Err(match seen.is_empty() {
        true => "it is not signed".to_string(),
        false => format!("it has {}", seen.join(", ")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_with_the_trusted_key_only() {
        let (secret, public) = SecretKey::generate("ci-1").unwrap();
        let (_, other_public) = SecretKey::generate("ci-1").unwrap();
        let key = SecretKey::parse(&secret).unwrap();
        let trusted = [PublicKey::parse(&public).unwrap()];
        let message = message(&"a".repeat(64), &"b".repeat(64));
        let signature = key.sign(&message);
        assert_eq!(verify(&signature, &message, &trusted).unwrap(), "ci-1");

        let tampered = message.iter().map(|b| b ^ 1).collect::<Vec<_>>();
        let why = verify(&signature, &tampered, &trusted).unwrap_err();
        assert!(why.contains("does not match"), "{why}");
        let why = verify(
            &signature,
            &message,
            &[PublicKey::parse(&other_public).unwrap()],
        );
        assert!(why.unwrap_err().contains("does not match"));
        let why = verify("", &message, &trusted).unwrap_err();
        assert_eq!(why, "it is not signed");
        let (stranger, _) = SecretKey::generate("stranger").unwrap();
        let why = verify(
            &SecretKey::parse(&stranger).unwrap().sign(&message),
            &message,
            &trusted,
        );
        assert!(why
            .unwrap_err()
            .contains("`stranger`, which is not trusted"));

        assert!(SecretKey::parse(&public).unwrap_err().contains("64 bytes"));
        assert!(PublicKey::parse("x:!!").unwrap_err().contains("not base64"));
        assert!(SecretKey::generate("a:b").is_err());
    }
}
