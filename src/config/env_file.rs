//! The `.env` file in the working directory, as the operator's setup document tells
//! operators to write one (`DYNAMODB_OAUTH_TABLE=…`).
//!
//! Parsing is `dotenvy`'s (quotes, `export`, comments, `${VAR}` substitution). What this
//! module adds is the policy: a variable already set in the environment wins, the first
//! occurrence in the file wins, the whole file is parsed before anything is applied (a
//! malformed line changes nothing), and an error names the line, never its content: a
//! `.env` line is often a secret.

use std::fmt;
use std::path::{Path, PathBuf};

/// The file name looked for in the working directory.
pub const FILE_NAME: &str = ".env";

/// What loading the file did, for one log line once logging is up.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct EnvFileReport {
    /// The file read, if there was one.
    pub path: Option<PathBuf>,
    /// Names taken from the file (never values).
    pub applied: Vec<String>,
    /// Names the file also sets but the environment already had.
    pub kept_from_environment: Vec<String>,
}

/// A `.env` that exists but cannot be used. The message names the file and line only.
#[derive(Debug)]
pub struct EnvFileError {
    path: PathBuf,
    line: Option<usize>,
    reason: &'static str,
}

impl fmt::Display for EnvFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{} line {line}: {}", self.path.display(), self.reason),
            None => write!(f, "{}: {}", self.path.display(), self.reason),
        }
    }
}

impl std::error::Error for EnvFileError {}

/// Reads `.env` from `dir` into the process environment, without replacing a variable
/// that is already set. No file is not an error.
///
/// Call it before any thread starts (first thing in `main`): it sets process-wide
/// environment variables, which the AWS SDK also reads.
pub fn load_from(dir: &Path) -> Result<EnvFileReport, EnvFileError> {
    let path = dir.join(FILE_NAME);
    let vars = match parse(&path)? {
        Some(vars) => vars,
        None => return Ok(EnvFileReport::default()),
    };
    let mut report = EnvFileReport {
        path: Some(path),
        ..EnvFileReport::default()
    };
    for (name, value) in vars {
        if std::env::var_os(&name).is_some() {
            report.kept_from_environment.push(name);
            continue;
        }
        // SAFETY: `main` calls this before the runtime or any other thread exists, so
        // nothing reads the environment concurrently.
        unsafe { std::env::set_var(&name, value) };
        report.applied.push(name);
    }
    Ok(report)
}

/// The file's variables in order, first occurrence of each name only; `None` when the
/// file does not exist.
fn parse(path: &Path) -> Result<Option<Vec<(String, String)>>, EnvFileError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(EnvFileError {
                path: path.to_path_buf(),
                line: None,
                reason: if e.kind() == std::io::ErrorKind::InvalidData {
                    "not UTF-8 text"
                } else {
                    "cannot be read"
                },
            });
        }
    };
    let mut vars: Vec<(String, String)> = Vec::new();
    for item in dotenvy::from_read_iter(text.as_bytes()) {
        match item {
            Ok((name, value)) => {
                if !vars.iter().any(|(seen, _)| *seen == name) {
                    vars.push((name, value));
                }
            }
            Err(dotenvy::Error::LineParse(bad, _)) => {
                return Err(EnvFileError {
                    path: path.to_path_buf(),
                    line: line_of(&text, &bad),
                    reason: "not a NAME=value line (the line is not shown: it may hold a secret)",
                });
            }
            Err(_) => {
                return Err(EnvFileError {
                    path: path.to_path_buf(),
                    line: None,
                    reason: "cannot be parsed",
                });
            }
        }
    }
    Ok(Some(vars))
}

/// The 1-based line where the logical line `bad` (as dotenvy hands it back) starts.
fn line_of(text: &str, bad: &str) -> Option<usize> {
    let needle = bad.trim_end_matches(['\r', '\n']);
    let first = needle.lines().next().filter(|l| !l.trim().is_empty())?;
    text.lines()
        .position(|line| line == first)
        .map(|index| index + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Option<Vec<(String, String)>>, EnvFileError> {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(FILE_NAME), text).expect("write");
        parse(&dir.path().join(FILE_NAME))
    }

    #[test]
    fn reads_the_setup_documents_file_with_comments_quotes_and_export() {
        let vars = parse_text(
            "# tables\nDYNAMODB_OAUTH_TABLE=oauth-tokens\nexport DYNAMODB_OAUTH_LOGS_TABLE=\"oauth logs\"\n\nAXNT_BACKEND='aws'\nAXNT_BACKEND=embedded\n",
        )
        .expect("parses")
        .expect("file exists");
        assert_eq!(
            vars,
            vec![
                ("DYNAMODB_OAUTH_TABLE".into(), "oauth-tokens".into()),
                ("DYNAMODB_OAUTH_LOGS_TABLE".into(), "oauth logs".into()),
                ("AXNT_BACKEND".into(), "aws".into()),
            ],
            "first occurrence wins"
        );
    }

    #[test]
    fn a_malformed_line_is_named_by_number_and_never_shown() {
        let e = parse_text("A=1\n# fine\nthis line planted-secret-7 is wrong\nB=2\n")
            .expect_err("malformed");
        let message = e.to_string();
        assert!(message.contains("line 3"), "{message}");
        assert!(!message.contains("planted-secret-7"), "{message}");
    }

    #[test]
    fn no_file_is_not_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            load_from(dir.path()).expect("no file"),
            EnvFileReport::default()
        );
    }
}
