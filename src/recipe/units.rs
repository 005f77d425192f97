//! Units: sizes (`512M`) and durations (`30s`), parsed without overflow, and the range
//! each recipe field accepts, checked once, at parse time. A value outside its range is a
//! recipe error (exit 2), never a panic later or a silent change.

use std::time::Duration;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// The sizes each field accepts.
pub const MEMORY: SizeRange = SizeRange {
    what: "memory",
    min: 32 * MIB,
    max: TIB,
    multiple_of: MIB,
};
pub const DISK: SizeRange = SizeRange {
    what: "a disk size",
    min: MIB,
    max: 64 * TIB,
    multiple_of: 512,
};
/// A bootable disk: its root grows by resize2fs, which a 1 KiB-block file system lets
/// reach about 1000 times its size, and a host's ext4 holds files up to 16 TiB.
pub const BOOT_DISK: SizeRange = SizeRange {
    what: "a disk image size",
    min: 64 * MIB,
    max: 2 * TIB,
    multiple_of: MIB,
};
pub const EXT4_IMAGE: SizeRange = SizeRange {
    what: "an ext4 image size",
    min: 8 * MIB,
    max: 64 * TIB,
    multiple_of: 4 * KIB,
};

/// The durations each field accepts.
pub const TEST_TIMEOUT: DurationRange = DurationRange {
    what: "a test timeout",
    min: Duration::from_secs(1),
    max: Duration::from_secs(7 * 86400),
    whole_seconds: true,
};
pub const BOOT_TIMEOUT: DurationRange = DurationRange {
    what: "a boot timeout",
    min: Duration::from_secs(1),
    max: Duration::from_secs(86400),
    whole_seconds: true,
};
/// Ages (`gc --older-than`): anything from nothing to a century.
pub const AGE: DurationRange = DurationRange {
    what: "an age",
    min: Duration::ZERO,
    max: Duration::from_secs(100 * 365 * 86400),
    whole_seconds: false,
};

pub struct SizeRange {
    pub what: &'static str,
    pub min: u64,
    pub max: u64,
    pub multiple_of: u64,
}

pub struct DurationRange {
    pub what: &'static str,
    pub min: Duration,
    pub max: Duration,
    /// The guest agent counts whole seconds: `1500ms` would silently become 1 s.
    pub whole_seconds: bool,
}

impl SizeRange {
    /// Parses `text` and checks it against the range.
    pub fn parse(&self, text: &str) -> Result<u64, String> {
        let size = parse_size(text)?;
        if size < self.min || size > self.max {
            return Err(format!(
                "`{text}` is out of range: {} must be between {} and {}",
                self.what,
                human_size(self.min),
                human_size(self.max)
            ));
        }
        if !size.is_multiple_of(self.multiple_of) {
            return Err(format!(
                "`{text}` is not a multiple of {}: {} is counted in units of {}",
                human_size(self.multiple_of),
                self.what,
                human_size(self.multiple_of)
            ));
        }
        Ok(size)
    }
}

impl DurationRange {
    /// Parses `text` and checks it against the range.
    pub fn parse(&self, text: &str) -> Result<Duration, String> {
        let d = parse_duration(text)?;
        if d < self.min || d > self.max {
            return Err(format!(
                "`{text}` is out of range: {} must be between {} and {}",
                self.what,
                human_duration(self.min),
                human_duration(self.max)
            ));
        }
        if self.whole_seconds && d.subsec_nanos() != 0 {
            return Err(format!(
                "`{text}` is not a whole number of seconds, which {} is counted in",
                self.what
            ));
        }
        Ok(d)
    }
}

/// A size for a message, rounded: `1.5 GiB`, `300 MiB`.
pub(crate) fn approx_size(n: u64) -> String {
    for (unit, size) in [("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)] {
        if n >= size {
            return format!("{:.1} {unit}", n as f64 / size as f64).replace(".0 ", " ");
        }
    }
    format!("{n} bytes")
}

fn human_size(n: u64) -> String {
    for (unit, size) in [("T", TIB), ("G", GIB), ("M", MIB), ("K", KIB)] {
        if n >= size && n.is_multiple_of(size) {
            return format!("{}{unit}", n / size);
        }
    }
    format!("{n} bytes")
}

fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    for (unit, size) in [("d", 86400), ("h", 3600), ("m", 60)] {
        if s >= size && s.is_multiple_of(size) {
            return format!("{}{unit}", s / size);
        }
    }
    format!("{s}s")
}

/// Splits `12G` into (12, "G"); the number must be plain decimal digits.
fn split_number(text: &str) -> Option<(u64, &str)> {
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    Some((num.parse().ok()?, unit.trim()))
}

/// Parses sizes such as `512M`, `1G`, `64K` or a plain number of bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (n, unit) =
        split_number(text).ok_or_else(|| format!("`{text}` is not a size (examples: 512M, 1G)"))?;
    let shift = match unit.trim_end_matches(['B', 'b', 'i']) {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        _ => return Err(format!("`{text}` has an unknown unit (use K, M, G or T)")),
    };
    n.checked_shl(shift)
        .filter(|v| v >> shift == n)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// Parses durations such as `30s`, `5m`, `1h`, `7d`, `500ms`, or a plain number of
/// seconds. Values too large for the clock are errors, not panics.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (n, unit) = split_number(text)
        .ok_or_else(|| format!("`{text}` is not a duration (examples: 30s, 5m)"))?;
    let seconds_per = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => {
            return Err(format!(
                "`{text}` has an unknown unit (use ms, s, m, h or d)"
            ))
        }
    };
    n.checked_mul(seconds_per)
        // Far beyond any range a field accepts, and safe to add to any clock.
        .filter(|s| *s <= 1000 * 365 * 86400)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{text}` is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("1X").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-1M").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("18446744073709551615d").is_err());
        assert!(parse_duration("99999999999999d").is_err());
    }

    #[test]
    fn ranges_are_checked_with_their_limits_named() {
        assert!(TEST_TIMEOUT
            .parse("0s")
            .unwrap_err()
            .contains("between 1s and 7d"));
        assert!(TEST_TIMEOUT.parse("1500ms").unwrap_err().contains("whole"));
        assert_eq!(TEST_TIMEOUT.parse("2000ms"), Ok(Duration::from_secs(2)));
        assert!(MEMORY
            .parse("1K")
            .unwrap_err()
            .contains("between 32M and 1T"));
        assert!(MEMORY
            .parse("100000K")
            .unwrap_err()
            .contains("multiple of 1M"));
        assert_eq!(MEMORY.parse("1G"), Ok(1 << 30));
        assert!(DISK.parse("0").is_err());
        assert!(EXT4_IMAGE.parse("1K").is_err());
        assert_eq!(AGE.parse("0s"), Ok(Duration::ZERO));
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic_and_ranges_hold(text in "\\PC{0,24}") {
            let _ = parse_size(&text);
            let _ = parse_duration(&text);
            if let Ok(d) = TEST_TIMEOUT.parse(&text) {
                proptest::prop_assert!((TEST_TIMEOUT.min..=TEST_TIMEOUT.max).contains(&d));
                // Safe to add to any clock.
                proptest::prop_assert!(std::time::Instant::now().checked_add(d).is_some());
            }
            if let Ok(m) = MEMORY.parse(&text) {
                proptest::prop_assert!((MEMORY.min..=MEMORY.max).contains(&m) && m.is_multiple_of(MIB));
            }
        }

        #[test]
        fn numbers_with_units_round_trip(n in 0u64..1_000_000, unit in 0usize..5) {
            let (suffix, factor) = [("", 1u64), ("K", KIB), ("M", MIB), ("G", GIB), ("T", TIB)][unit];
            proptest::prop_assert_eq!(parse_size(&format!("{n}{suffix}")), Ok(n * factor));
            let (suffix, secs) = [("s", 1u64), ("m", 60), ("h", 3600), ("d", 86400), ("", 1)][unit];
            proptest::prop_assert_eq!(
                // Durations are capped at a thousand years.
                parse_duration(&format!("{}{suffix}", n % 300_000)),
                Ok(Duration::from_secs(n % 300_000 * secs))
            );
        }
    }
}
