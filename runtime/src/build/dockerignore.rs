//! `.dockerignore` matching as the Docker engine does it.
//!
//! Unlike `.gitignore`, a pattern is anchored at the context root (`foo`
//! matches `foo`, not `a/foo`), `**` spans any number of directories, a
//! pattern that matches a directory excludes everything under it, and the
//! last matching pattern wins, `!` re-including.

use regex::Regex;

/// One compiled line.
#[derive(Debug)]
struct Pattern {
    regex: Regex,
    /// Number of path parts, to test a file's parent directories.
    depth: usize,
    exclusion: bool,
}

/// The patterns of one `.dockerignore`.
#[derive(Debug, Default)]
pub(crate) struct DockerIgnore {
    patterns: Vec<Pattern>,
}

/// A `.dockerignore` line that is not a valid pattern.
#[derive(Debug, thiserror::Error)]
#[error("pattern `{line}` cannot be compiled")]
pub struct InvalidPattern {
    line: String,
    source: regex::Error,
}

impl DockerIgnore {
    /// Parses the file's text: `#` comments, blank lines skipped, `!` negates.
    pub(crate) fn parse(text: &str) -> Result<Self, InvalidPattern> {
        let mut patterns = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exclusion, raw) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let cleaned = clean(raw);
            if cleaned.is_empty() {
                continue;
            }
            let regex =
                Regex::new(&to_regex(&cleaned)).map_err(|source| InvalidPattern { line: line.to_owned(), source })?;
            patterns.push(Pattern { depth: cleaned.split('/').count(), regex, exclusion });
        }
        Ok(Self { patterns })
    }

    /// Whether `path` (relative to the context, `/`-separated) is excluded.
    pub(crate) fn excludes(&self, path: &str) -> bool {
        let parents: Vec<&str> = match path.rsplit_once('/') {
            Some((parent, _)) => parent.split('/').collect(),
            None => Vec::new(),
        };
        let mut excluded = false;
        for pattern in &self.patterns {
            // An exclusion can only change an excluded path and an inclusion
            // only an included one.
            if pattern.exclusion != excluded {
                continue;
            }
            let mut hit = pattern.regex.is_match(path);
            if !hit && pattern.depth <= parents.len() {
                hit = pattern.regex.is_match(&parents[..pattern.depth].join("/"));
            }
            if hit {
                excluded = !pattern.exclusion;
            }
        }
        excluded
    }
}

/// Lexical clean-up as Go's `filepath.Clean`, without a leading `/`.
fn clean(pattern: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in pattern.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

fn to_regex(pattern: &str) -> String {
    let mut out = String::from("^");
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                if chars.peek() == Some(&'/') {
                    chars.next();
                }
                if chars.peek().is_none() {
                    out.push_str(".*");
                } else {
                    out.push_str("(.*/)?");
                }
            }
            '*' => out.push_str("[^/]*"),
            '?' => out.push_str("[^/]"),
            '[' => {
                // A character class as Go's filepath.Match writes it, `^` or
                // `!` negating.
                out.push('[');
                if let Some(&next) = chars.peek() {
                    if next == '!' || next == '^' {
                        chars.next();
                        out.push('^');
                    }
                }
                for c in chars.by_ref() {
                    if c == ']' {
                        break;
                    }
                    if c == '\\' || c == '[' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push(']');
            }
            '\\' => {
                if let Some(next) = chars.next() {
                    out.push_str(&regex::escape(&next.to_string()));
                }
            }
            c => out.push_str(&regex::escape(&c.to_string())),
        }
    }
    out.push('$');
    out
}

#[cfg(test)]
mod tests {
    use super::DockerIgnore;

    fn ignore(text: &str) -> DockerIgnore {
        DockerIgnore::parse(text).unwrap()
    }

    #[test]
    fn patterns_are_anchored_at_the_root() {
        let i = ignore("target\n");
        assert!(i.excludes("target"));
        assert!(!i.excludes("src/target"));
    }

    #[test]
    fn a_matching_directory_excludes_its_contents() {
        let i = ignore("target\n");
        assert!(i.excludes("target/debug/app"));
        assert!(!i.excludes("targets/x"));
    }

    #[test]
    fn double_star_spans_directories() {
        let i = ignore("**/*.log\n");
        assert!(i.excludes("a.log"));
        assert!(i.excludes("x/y/z.log"));
        assert!(!i.excludes("x/y/z.txt"));
    }

    #[test]
    fn single_star_stays_in_one_directory() {
        let i = ignore("*.md\n");
        assert!(i.excludes("README.md"));
        assert!(!i.excludes("docs/guide.md"));
    }

    #[test]
    fn the_last_matching_line_wins() {
        let i = ignore("*.md\n!README.md\n");
        assert!(i.excludes("CHANGES.md"));
        assert!(!i.excludes("README.md"));
        let i = ignore("!README.md\n*.md\n");
        assert!(i.excludes("README.md"));
    }

    #[test]
    fn comments_blanks_and_leading_slashes() {
        let i = ignore("# notes\n\n/secret\n./tmp/\n");
        assert!(i.excludes("secret"));
        assert!(i.excludes("tmp/a"));
        assert!(!i.excludes("notes"));
    }

    #[test]
    fn question_mark_and_classes() {
        let i = ignore("file?.txt\nlog[0-9]\n");
        assert!(i.excludes("file1.txt"));
        assert!(!i.excludes("file12.txt"));
        assert!(i.excludes("log7"));
        assert!(!i.excludes("logx"));
    }

    #[test]
    fn dots_are_literal() {
        let i = ignore("a.b\n");
        assert!(!i.excludes("axb"));
    }
}
