//! Explaining cache misses: a diff of two entries' key inputs, as dotted paths.

use serde_json::Value;

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
    if s.len() > 72 {
        format!("{}...", &s[..69])
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
}
