//! `vmbuild record` and `vmbuild compare` through the real binary, with no VM: the
//! results entries they read are written into the temp store by hand, as a test run
//! would leave them (`manifest.json` and `results.json` in `<key>-<name>/`).

mod common;

use common::TestProject;
use serde_json::{json, Value};

/// Publishes a results entry of `smoke` by hand, `created` seconds after the epoch (the
/// most recent one is what `record` takes: these keys are not the recipe's current one).
fn results_entry(p: &TestProject, key_digit: char, created: u64, tests: &[(&str, &str, f64)]) {
    let key: String = std::iter::repeat_n(key_digit, 64).collect();
    let dir = p.cache.join(format!("{key}-smoke"));
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = json!({
        "schema": 1,
        "name": "smoke",
        "kind": "test",
        "key": key,
        "status": "failed",
        "created": created,
        "build_seconds": 1.0,
        "host": "test",
        "details": {},
        "inputs": {},
        "outputs": {},
    });
    let tests: Vec<Value> = tests
        .iter()
        .map(|(name, status, duration)| {
            json!({"name": name, "status": status, "duration": duration, "log": format!("tests/{name}.log")})
        })
        .collect();
    let results = json!({
        "recipe": "smoke",
        "key": key,
        "accel": "tcg",
        "kernel_release": "6.1.0",
        "tests": tests,
    });
    let write = |file: &str, value: &Value| {
        std::fs::write(dir.join(file), serde_json::to_vec_pretty(value).unwrap()).unwrap()
    };
    write("manifest.json", &manifest);
    write("results.json", &results);
}

fn record_file(p: &TestProject, label: &str) -> Value {
    let path = p.cache.join("records").join(format!("{label}.json"));
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

#[test]
fn record_copies_the_latest_results_and_outlives_their_entry() {
    let p = TestProject::new();
    results_entry(&p, 'a', 1000, &[("old", "fail", 1.0)]);
    results_entry(
        &p,
        'b',
        2000,
        &[("boot", "pass", 2.5), ("net", "fail", 0.3)],
    );
    let run = p.run(&["record", "base", "smoke"]).expect(0);
    let path = p.cache.join("records/base.json");
    assert_eq!(
        run.stdout.trim(),
        format!(
            "recorded base: smoke, 2 tests ({})",
            std::fs::canonicalize(&path).unwrap().display()
        )
    );
    // The hand-made entries are not for the recipe's current inputs.
    assert!(
        run.stderr.contains("older version of the inputs"),
        "{}",
        run.stderr
    );
    let record = record_file(&p, "base");
    assert_eq!(record["label"], "base");
    assert_eq!(record["recipe"], "smoke");
    assert_eq!(record["key"], "b".repeat(64));
    assert!(record["entry"].as_str().unwrap().ends_with("-smoke"));
    assert!(record["recorded_at"].as_u64().unwrap() > 2000);
    assert_eq!(record["results"]["tests"][1]["name"], "net");
    assert_eq!(record["results"]["tests"][1]["status"], "fail");
    // No temp file is left beside it.
    let files: Vec<_> = std::fs::read_dir(p.cache.join("records"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files, ["base.json"]);

    // No recipe reaches the hand-made entries: gc removes them, the record stays.
    p.run(&["gc"]).expect(0);
    assert!(p.entries("smoke").is_empty());
    let run = p.run(&["compare", "base", "base"]).expect(0);
    assert!(run.stdout.contains("no status changes"), "{}", run.stdout);

    // Recording a label again replaces it.
    results_entry(&p, 'c', 3000, &[("boot", "pass", 2.0)]);
    let run = p.run(&["record", "base", "smoke"]).expect(0);
    assert!(
        run.stderr.contains("replaced the earlier record `base`"),
        "{}",
        run.stderr
    );
    assert_eq!(record_file(&p, "base")["key"], "c".repeat(64));
}

/// `text`'s lines with their runs of spaces made one: the columns' padding aside.
fn words(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn compare_lists_changes_and_exits_1_only_on_a_regression() {
    let p = TestProject::new();
    results_entry(
        &p,
        'a',
        1000,
        &[
            ("boot", "pass", 2.0),
            ("net", "fail", 1.0),
            ("disk", "pass", 10.0),
            ("gone", "pass", 1.0),
            ("tiny", "pass", 0.01),
        ],
    );
    p.run(&["record", "before", "smoke"]).expect(0);
    results_entry(
        &p,
        'b',
        2000,
        &[
            ("boot", "fail", 2.5),
            ("net", "pass", 1.0),
            ("disk", "pass", 4.0),
            ("new", "pass", 1.0),
            ("tiny", "pass", 0.02),
        ],
    );
    p.run(&["record", "after", "smoke"]).expect(0);

    let run = p.run(&["compare", "before", "after"]).expect(1);
    // `tiny` is under 0.05 s in both and `net` took as long: not among the duration
    // changes.
    assert_eq!(
        words(&run.stdout),
        [
            "before (smoke, 5 tests) -> after (smoke, 5 tests)",
            "status changes:",
            "pass -> fail boot [regressed]",
            "fail -> pass net",
            "removed (pass) gone",
            "added (pass) new",
            "largest duration changes:",
            "-6.00s -60% 10.00s -> 4.00s disk",
            "+0.50s +25% 2.00s -> 2.50s boot",
            "1 regressed, 1 fixed, 1 added, 1 removed, 2 unchanged; 14.0s -> 8.5s in all",
        ],
        "{}",
        run.stdout
    );

    let run = p
        .run(&["compare", "before", "after", "--json", "--top", "1"])
        .expect(1);
    let json: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["regressed"], true);
    assert_eq!(json["a"]["label"], "before");
    assert_eq!(json["b"]["key"], "b".repeat(64));
    assert_eq!(
        json["changes"][0],
        json!({"name": "boot", "before": "pass", "after": "fail", "regressed": true})
    );
    assert_eq!(json["changes"][3]["before"], Value::Null);
    assert_eq!(json["unchanged"], 2);
    assert_eq!(
        json["durations"],
        json!([{"name": "disk", "before": 10.0, "after": 4.0}])
    );

    // Fixed, and a pass that became a skip: changes, no regression.
    results_entry(
        &p,
        'c',
        3000,
        &[
            ("boot", "pass", 2.5),
            ("net", "pass", 1.0),
            ("disk", "pass", 4.0),
            ("new", "skip", 0.0),
            ("tiny", "pass", 0.02),
        ],
    );
    p.run(&["record", "fixed", "smoke"]).expect(0);
    let run = p
        .run(&["compare", "after", "fixed", "--top", "0"])
        .expect(0);
    assert_eq!(
        words(&run.stdout),
        [
            "after (smoke, 5 tests) -> fixed (smoke, 5 tests)",
            "status changes:",
            "fail -> pass boot",
            "pass -> skip new",
            "0 regressed, 1 fixed, 1 changed status otherwise, 3 unchanged; 8.5s -> 7.5s in all",
        ],
        "{}",
        run.stdout
    );
}

#[test]
fn unknown_labels_list_the_records_there_are() {
    let p = TestProject::new();
    let run = p.run(&["compare", "base", "new"]).expect(2);
    assert!(
        run.stderr.contains(
            "no record `base`, and no records yet: make one with `vmbuild record LABEL RECIPE`"
        ),
        "{}",
        run.stderr
    );
    results_entry(&p, 'a', 1000, &[("boot", "pass", 2.0)]);
    p.run(&["record", "v2", "smoke"]).expect(0);
    p.run(&["record", "v1", "smoke"]).expect(0);
    let run = p.run(&["compare", "v1", "v3"]).expect(2);
    assert!(
        run.stderr
            .contains("no record `v3`: the records are v1, v2"),
        "{}",
        run.stderr
    );
}

#[test]
fn labels_must_be_file_names() {
    let p = TestProject::new();
    results_entry(&p, 'a', 1000, &[("boot", "pass", 2.0)]);
    for label in ["../escape", "a/b", ".hidden", ""] {
        let run = p.run(&["record", label, "smoke"]).expect(2);
        assert!(
            run.stderr.contains("bad record label"),
            "{label}: {}",
            run.stderr
        );
        let run = p.run(&["compare", label, "x"]).expect(2);
        assert!(
            run.stderr.contains("bad record label"),
            "{label}: {}",
            run.stderr
        );
    }
    assert!(!p.cache.join("records").exists());
    assert!(!p.path("escape.json").exists());
}

#[test]
fn record_without_results_says_to_run_the_tests_first() {
    let p = TestProject::new();
    let run = p.run(&["record", "base", "smoke"]).expect(2);
    assert!(
        run.stderr
            .contains("no results for `smoke` yet: run `vmbuild test smoke`"),
        "{}",
        run.stderr
    );
    assert!(!p.cache.join("records/base.json").exists());
    let run = p.run(&["record", "base", "no-such-recipe"]).expect(2);
    assert!(run.stderr.contains("no-such-recipe"), "{}", run.stderr);
}

#[test]
fn help_explains_record_and_compare() {
    let p = TestProject::new();
    let run = p.run(&["--help"]).expect(0);
    assert!(run.stdout.contains("record"), "{}", run.stdout);
    assert!(run.stdout.contains("compare"), "{}", run.stdout);
    let run = p.run(&["compare", "--help"]).expect(0);
    for words in ["--top", "--json", "exit 1", "pass -> fail", "0.05 s"] {
        assert!(run.stdout.contains(words), "{words}: {}", run.stdout);
    }
    let run = p.run(&["record", "--help"]).expect(0);
    assert!(run.stdout.contains("records/LABEL.json"), "{}", run.stdout);
}
