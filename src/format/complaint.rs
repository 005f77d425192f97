//! What the workload tools vmbuild ships recipes for say when they fail, picked out of a
//! failed test's output for its reason: fio's `fio:` lines and verify errors
//! (`crc32c: verify failed at file ...`, `verify: bad magic header ...`), and stress-ng's
//! `fail:` and `error:` lines.

/// At most this many lines make a reason.
const MAX_LINES: usize = 3;

/// The tool's own complaint in `output`, its lines joined with `; `.
pub(crate) fn complaint(output: &str) -> Option<String> {
    let lines: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.starts_with("fio: ")
                || l.starts_with("verify: ")
                || l.contains("verify failed")
                || (l.starts_with("stress-ng: ")
                    && (l.contains(" fail: ") || l.contains(" error: ")))
        })
        .take(MAX_LINES)
        .collect();
    (!lines.is_empty()).then(|| lines.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fio_and_stress_ng_complaints_are_picked_out() {
        let fio = "x\ncrc32c: verify failed at file /dev/vdb offset 8192, length 4096\n       Expected CRC: 1\nfio: pid=9, err=84/file:io_u.c:2166, func=io_u_queued_complete, error=Invalid or incomplete multibyte or wide character\n";
        let said = complaint(fio).expect("fio complained");
        assert!(
            said.starts_with("crc32c: verify failed at file /dev/vdb"),
            "{said}"
        );
        assert!(said.contains("err=84"), "{said}");
        let stress = "stress-ng: info:  [147] dispatching hogs: 1 vm\nstress-ng: fail:  [150] vm: detected 3 bit errors while stressing memory\n";
        assert_eq!(
            complaint(stress).as_deref(),
            Some("stress-ng: fail:  [150] vm: detected 3 bit errors while stressing memory")
        );
        assert_eq!(complaint("all good\nstress-ng: info: fine\n"), None);
    }
}
