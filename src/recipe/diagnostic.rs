//! Recipe diagnostics: an error that points at a file, line and column and shows the
//! offending text, in the style of cargo's TOML errors.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A position in a recipe file, kept next to every value a later check may complain about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// The text of the whole line, shown under the message.
    pub line_text: String,
    /// How many characters of the line the marker covers.
    pub width: usize,
}

impl Location {
    /// Turns a byte span in `source` into a line/column location (1-based).
    pub fn from_span(file: &Path, source: &str, span: Range<usize>) -> Location {
        let start = span.start.min(source.len());
        let before = &source[..start];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line_end = source[start..]
            .find('\n')
            .map_or(source.len(), |i| start + i);
        let line_text = source[line_start..line_end]
            .trim_end_matches('\r')
            .to_string();
        let column = source[line_start..start].chars().count() + 1;
        let end = span.end.clamp(start, line_end);
        let width = source[start..end].chars().count().max(1);
        Location {
            file: file.to_path_buf(),
            line,
            column,
            line_text,
            width,
        }
    }
}

/// An error in a recipe, shown like a compiler diagnostic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub message: String,
    pub location: Location,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(location: Location, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            message: message.into(),
            location,
            help: None,
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let loc = &self.location;
        let gutter = loc.line.to_string().len();
        writeln!(f, "{}", self.message)?;
        writeln!(
            f,
            "{:gutter$}--> {}:{}:{}",
            "",
            loc.file.display(),
            loc.line,
            loc.column
        )?;
        writeln!(f, "{:gutter$} |", "")?;
        writeln!(f, "{} | {}", loc.line, loc.line_text)?;
        write!(
            f,
            "{:gutter$} | {}{}",
            "",
            " ".repeat(loc.column.saturating_sub(1)),
            "^".repeat(loc.width)
        )?;
        if let Some(help) = &self.help {
            write!(f, "\n{:gutter$} = help: {help}", "")?;
        }
        Ok(())
    }
}

/// The closest candidate to `word`, when it is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_counts_lines_and_columns_from_one() {
        let src = "kind = \"rootfs\"\nformt = \"cpio\"\n";
        let at = src.find("formt").unwrap();
        let loc = Location::from_span(Path::new("r.toml"), src, at..at + 5);
        assert_eq!((loc.line, loc.column, loc.width), (2, 1, 5));
        assert_eq!(loc.line_text, "formt = \"cpio\"");
    }

    #[test]
    fn diagnostic_shows_file_line_column_text_and_help() {
        let src = "a = 1\nbase = \"busybx\"\n";
        let at = src.find("\"busybx\"").unwrap();
        let loc = Location::from_span(Path::new("x.toml"), src, at..at + 8);
        let text = Diagnostic::new(loc, "unknown base `busybx`")
            .with_help("did you mean `busybox`?")
            .to_string();
        assert!(text.contains("--> x.toml:2:8"), "{text}");
        assert!(text.contains("2 | base = \"busybx\""), "{text}");
        assert!(text.contains("^^^^^^^^"), "{text}");
        assert!(text.contains("help: did you mean `busybox`?"), "{text}");
    }

    #[test]
    fn did_you_mean_only_suggests_close_words() {
        assert_eq!(
            did_you_mean("formt", ["format", "files", "base"]),
            Some("format")
        );
        assert_eq!(did_you_mean("zzz", ["format", "files"]), None);
    }
}
