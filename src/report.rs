//! Progress events. The core emits them; only `cli` renders them (plain timestamped lines
//! or progress bars on a terminal).

use crate::testing::TestResult;

#[derive(Debug)]
pub enum Event<'a> {
    /// An entry was found in the store; no work done.
    Cached {
        name: &'a str,
        kind: &'a str,
        path: &'a std::path::Path,
    },
    Started {
        name: &'a str,
        kind: &'a str,
    },
    /// What a running build is doing now.
    Progress {
        name: &'a str,
        line: &'a str,
    },
    /// Another vmbuild holds this entry's lock.
    Waiting {
        name: &'a str,
    },
    Built {
        name: &'a str,
        kind: &'a str,
        seconds: f64,
    },
    /// Something the user should know once (e.g. KVM unavailable, using TCG).
    Notice(&'a str),
    Booting {
        recipe: &'a str,
        accel: &'a str,
        vms: u32,
    },
    TestFinished {
        recipe: &'a str,
        result: &'a TestResult,
        cached: bool,
    },
    /// A verbose detail: a command line, a key decision.
    Detail(&'a str),
}

pub trait Reporter: Sync {
    fn event(&self, event: Event);
}

/// A reporter that drops everything (library use, tests).
pub struct Silent;

impl Reporter for Silent {
    fn event(&self, _: Event) {}
}
