//! fio's JSON report (`--output-format=json`), read from a test's output: per job, the
//! IOPS, bandwidth and completion-latency percentiles of each direction that did I/O,
//! and the error fio ended it with. The report may sit among other output (fio's own
//! messages on stderr, the test's lines): it is the first JSON object that carries
//! `"fio version"`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One fio job's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FioJob {
    pub name: String,
    /// fio's error number for the job (0: none), e.g. EILSEQ (84) for a verify failure.
    pub error: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub io: Vec<FioIo>,
}

/// One direction of a job's I/O (`read`, `write`, `trim`), when it did any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FioIo {
    pub direction: String,
    pub iops: f64,
    pub bandwidth_kib_s: f64,
    /// Completion latency percentiles, in microseconds.
    pub clat_p50_us: Option<f64>,
    pub clat_p99_us: Option<f64>,
}

/// The jobs of the first fio JSON report in `output`; empty when there is none.
pub(crate) fn parse(output: &str) -> Vec<FioJob> {
    // The report's first key is `"fio version"`: only the few braces just before a
    // mention can open it, so a huge or cut-off document costs a bounded number of
    // parses (at most 8 mentions, 8 braces each).
    for (mention, _) in output.match_indices("\"fio version\"").take(8) {
        for (start, _) in output[..mention].rmatch_indices('{').take(8) {
            let mut stream =
                serde_json::Deserializer::from_str(&output[start..]).into_iter::<Value>();
            if let Some(Ok(report)) = stream.next() {
                if report.get("fio version").is_some() {
                    return jobs(&report);
                }
            }
        }
    }
    Vec::new()
}

fn jobs(report: &Value) -> Vec<FioJob> {
    let Some(jobs) = report.get("jobs").and_then(Value::as_array) else {
        return Vec::new();
    };
    jobs.iter()
        .map(|job| FioJob {
            name: job
                .get("jobname")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            error: job.get("error").and_then(Value::as_i64).unwrap_or(0),
            io: ["read", "write", "trim"]
                .iter()
                .filter_map(|direction| io(job.get(*direction)?, direction))
                .collect(),
        })
        .collect()
}

fn io(stats: &Value, direction: &str) -> Option<FioIo> {
    let number = |v: Option<&Value>| v.and_then(Value::as_f64);
    if number(stats.get("total_ios")).unwrap_or(0.0) == 0.0 {
        return None;
    }
    let percentile =
        |p: &str| number(stats.get("clat_ns")?.get("percentile")?.get(p)).map(|ns| ns / 1000.0);
    Some(FioIo {
        direction: direction.to_string(),
        iops: number(stats.get("iops")).unwrap_or(0.0),
        bandwidth_kib_s: number(stats.get("bw")).unwrap_or(0.0),
        clat_p50_us: percentile("50.000000"),
        clat_p99_us: percentile("99.000000"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"{
  "fio version" : "fio-3.33",
  "jobs" : [
    {
      "jobname" : "randwrite-verify",
      "error" : 0,
      "read" : { "total_ios" : 8192, "iops" : 3502.35, "bw" : 14009,
                 "clat_ns" : { "percentile" : { "50.000000" : 218112, "99.000000" : 610304 } } },
      "write" : { "total_ios" : 8192, "iops" : 2909.09, "bw" : 11636,
                  "clat_ns" : { "percentile" : { "50.000000" : 280000, "99.000000" : 900000 } } },
      "trim" : { "total_ios" : 0, "iops" : 0.0, "bw" : 0 }
    }
  ]
}"#;

    #[test]
    fn the_report_is_found_among_other_output() {
        let output = format!("starting {{not json}}\n{{\"a\": 1}}\n{REPORT}\nfio: done\n");
        let jobs = parse(&output);
        assert_eq!(jobs.len(), 1);
        let job = &jobs[0];
        assert_eq!(job.name, "randwrite-verify");
        assert_eq!(job.error, 0);
        let directions: Vec<&str> = job.io.iter().map(|i| i.direction.as_str()).collect();
        assert_eq!(directions, ["read", "write"], "trim did no I/O");
        assert_eq!(job.io[0].iops, 3502.35);
        assert_eq!(job.io[0].bandwidth_kib_s, 14009.0);
        assert_eq!(job.io[0].clat_p50_us, Some(218.112));
        assert_eq!(job.io[1].clat_p99_us, Some(900.0));
    }

    #[test]
    fn no_report_no_jobs() {
        assert!(parse("").is_empty());
        assert!(parse("{ broken").is_empty());
        assert!(parse("{\"jobs\": []}").is_empty());
        // A report cut off by the log cap: no figures, and no time spent on each brace.
        let cut = format!("{}{REPORT}", "{".repeat(100_000));
        assert!(parse(&cut[..cut.len() - 10]).is_empty());
        // A cut-off report, then a whole one: the whole one counts.
        let both = format!("{}\n{REPORT}", &REPORT[..REPORT.len() / 2]);
        assert_eq!(parse(&both).len(), 1);
    }
}
