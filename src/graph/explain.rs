//! Explaining cache misses: a diff of two entries' key inputs, as dotted paths; for a
//! local source tree, the files that changed (from the trees' kept listings).

use std::path::Path;

use serde_json::Value;

use crate::hashing::{self, Listing};

/// At most this many changed files of a source tree are named.
const MAX_FILES_NAMED: usize = 20;

/// Why inputs `new` differ from `old`: `diff_inputs`' lines, then, when a local source
/// tree changed, a line per changed file (`  M init/main.c`), capped, from the listings
/// kept in `trees_dir`.
pub(crate) fn explain_change(old: &Value, new: &Value, trees_dir: &Path) -> Vec<String> {
    let mut lines = diff_inputs(old, new);
    let tree = |v: &Value| super::key::tree_digest(v).map(str::to_string);
    if let (Some(a), Some(b)) = (tree(old), tree(new)) {
        if a != b {
            match (Listing::load(trees_dir, &a), Listing::load(trees_dir, &b)) {
                (Some(a), Some(b)) => {
                    let changes = hashing::changes(&a, &b);
                    lines.push(format!("source files changed: {}", changes.len()));
                    for (rel, change) in changes.iter().take(MAX_FILES_NAMED) {
                        lines.push(format!("  {} {rel}", change.letter()));
                    }
                    if changes.len() > MAX_FILES_NAMED {
                        lines.push(format!(
                            "  ... and {} more",
                            changes.len() - MAX_FILES_NAMED
                        ));
                    }
                }
                _ => lines.push(
                    "source files changed: the listing of the earlier tree is no longer kept"
                        .into(),
                ),
            }
        }
    }
    lines
}

/// Lines like `recipe.files./etc/motd.sha256: 1f2e.. -> 9a8b..` for every leaf that differs.
pub fn diff_inputs(old: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk("", old, new, &mut out);
    out
}

fn short(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.chars().count() > 72 {
        format!("{}...", s.chars().take(69).collect::<String>())
    } else {
        s
    }
}

fn walk(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                match b.get(k) {
                    Some(vb) => walk(&join(k), va, vb, out),
                    None => out.push(format!("{}: removed (was {})", join(k), short(va))),
                }
            }
            for (k, vb) in b {
                if !a.contains_key(k) {
                    out.push(format!("{}: added ({})", join(k), short(vb)));
                }
            }
        }
        (a, b) if a != b => out.push(format!("{path}: {} -> {}", short(a), short(b))),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_changed_added_and_removed_inputs() {
        let old =
            json!({"recipe": {"files": {"/etc/motd": {"sha256": "aa"}}, "format": "cpio"}, "x": 1});
        let new =
            json!({"recipe": {"files": {"/etc/motd": {"sha256": "bb"}}, "format": "cpio"}, "y": 2});
        let diff = diff_inputs(&old, &new);
        assert_eq!(
            diff,
            vec![
                "recipe.files./etc/motd.sha256: aa -> bb".to_string(),
                "x: removed (was 1)".to_string(),
                "y: added (2)".to_string(),
            ]
        );
    }

    #[test]
    fn a_changed_tree_names_its_changed_files() {
        let dir = tempfile::tempdir().unwrap();
        let listing = |text: &str| Listing {
            digest: hashing::sha256_hex(text.as_bytes()),
            text: text.to_string(),
        };
        let a = listing("Makefile\0f:aa:1\ninit/main.c\0f:bb:2\n");
        let b = listing("Makefile\0f:aa:1\ninit/main.c\0f:cc:2\n");
        a.save(dir.path()).unwrap();
        b.save(dir.path()).unwrap();
        let inputs = |d: &str| json!({"recipe": {"source": {"tree": d}}});
        let lines = explain_change(&inputs(&a.digest), &inputs(&b.digest), dir.path());
        assert_eq!(lines[1..], ["source files changed: 1", "  M init/main.c"]);
        std::fs::remove_file(dir.path().join(&a.digest)).unwrap();
        let lines = explain_change(&inputs(&a.digest), &inputs(&b.digest), dir.path());
        assert!(lines[1].contains("no longer kept"), "{lines:?}");
    }
}
