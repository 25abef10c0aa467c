//! Moving in and moving out: `axnt-oauth import` (this module) stores grants made
//! elsewhere from JSON lines, and `axnt-oauth export` ([`export`]) writes them out.
//!
//! An import streams its input (one line in memory per worker; of the others only their
//! connection's key and whether the report has them done), works on a few lines at
//! once, and paces its redeems towards the provider (`--verify`). It keeps a report, one
//! JSON line per input line done (never a token), appended as it goes: a run started
//! again with the same input and report skips what is done, so an interrupted run
//! resumes where it stopped. A line for a connection that exists is skipped unless
//! `--replace`; a line whose refresh token is the stored one is never stored again. The
//! summary is printed at the end (a line of counts on standard error, the same as JSON on
//! standard output), progress on a terminal while it runs.

pub(crate) mod export;

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};

use crate::app::Offline;
use crate::store::flow_log::ClientInfo;
use crate::tokens::{ImportOptions, ImportOutcome, ImportedGrant, TokenError};

/// Longest line read; a longer one is reported malformed and skipped.
const MAX_LINE_BYTES: usize = 64 * 1024;
/// The name the flow log and the audit give the importer.
pub(crate) const CLI_CALLER: &str = "cli";
/// How long the end of a run waits for refreshes, the audit and the flow log.
const CLOSE_WITHIN: Duration = Duration::from_secs(30);

/// An import as the command line asks for it.
pub(crate) struct ImportRun {
    /// The input; standard input when `None`.
    pub(crate) input: Option<PathBuf>,
    pub(crate) options: ImportOptions,
    /// The report: what was done, line by line.
    pub(crate) report: PathBuf,
    /// Lines worked on at once.
    pub(crate) concurrency: usize,
    /// Refresh tokens redeemed per second at most (`--verify`).
    pub(crate) verify_rate: u32,
}

/// One report line: an input line done. Never a token.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Done {
    line: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    provider: Option<String>,
    outcome: LineOutcome,
    /// A malformed or refused line's field and problem, a dead token's cause, or a
    /// failure's problem code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

/// What became of one input line, as the report names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum LineOutcome {
    Stored,
    Replaced,
    Exists,
    Unchanged,
    Duplicate,
    Dead,
    DeadKept,
    WouldStore,
    WouldReplace,
    Malformed,
    Refused,
    Failed,
}

impl LineOutcome {
    fn of(outcome: &ImportOutcome) -> Self {
        match outcome {
            ImportOutcome::Stored {
                replaced: false, ..
            } => Self::Stored,
            ImportOutcome::Stored { replaced: true, .. } => Self::Replaced,
            ImportOutcome::Exists => Self::Exists,
            ImportOutcome::Unchanged { .. } => Self::Unchanged,
            ImportOutcome::Dead { kept: true, .. } => Self::DeadKept,
            ImportOutcome::Dead { kept: false, .. } => Self::Dead,
            ImportOutcome::WouldStore { replaced: false } => Self::WouldStore,
            ImportOutcome::WouldStore { replaced: true } => Self::WouldReplace,
        }
    }

    /// Whether a re-run leaves the line alone. It does the others (`malformed`,
    /// `refused`, `failed`) again, as the input or the settings may have been mended.
    fn is_final(self) -> bool {
        matches!(
            self,
            Self::Stored
                | Self::Replaced
                | Self::Exists
                | Self::Unchanged
                | Self::Duplicate
                | Self::Dead
                | Self::DeadKept
        )
    }
}

/// The counts a run ends with, by outcome.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Summary {
    pub(crate) lines: u64,
    /// Done by an earlier run (in the report): not looked at again.
    pub(crate) already_done: u64,
    pub(crate) stored: u64,
    pub(crate) replaced: u64,
    pub(crate) verified: u64,
    /// A connection exists (no `--replace`).
    pub(crate) exists: u64,
    /// A later line for a connection an earlier line of this input named.
    pub(crate) duplicate: u64,
    pub(crate) malformed: u64,
    /// Well formed but refused: a provider that is not configured, a client that is
    /// not the provider's.
    pub(crate) refused: u64,
    /// `--verify` found the refresh token dead.
    pub(crate) dead: u64,
    /// Could not be done now (the store or the provider away): run again.
    pub(crate) failed: u64,
    pub(crate) would_store: u64,
    pub(crate) would_replace: u64,
    pub(crate) interrupted: bool,
}

impl Summary {
    fn count(&mut self, done: &Done) {
        let count = match done.outcome {
            LineOutcome::Stored => &mut self.stored,
            LineOutcome::Replaced => &mut self.replaced,
            LineOutcome::Exists | LineOutcome::Unchanged => &mut self.exists,
            LineOutcome::Duplicate => &mut self.duplicate,
            LineOutcome::Malformed => &mut self.malformed,
            LineOutcome::Refused => &mut self.refused,
            LineOutcome::Dead | LineOutcome::DeadKept => &mut self.dead,
            LineOutcome::WouldStore => &mut self.would_store,
            LineOutcome::WouldReplace => &mut self.would_replace,
            LineOutcome::Failed => &mut self.failed,
        };
        *count += 1;
    }

    /// Whether every line was imported, found imported, or would be.
    pub(crate) fn complete(&self) -> bool {
        self.malformed + self.refused + self.dead + self.failed == 0 && !self.interrupted
    }

    fn line(&self) -> String {
        format!(
            "{} lines: {} stored, {} replaced ({} verified), {} already connected, {} duplicate, {} malformed, {} refused, {} dead, {} failed, {} done before{}{}",
            self.lines,
            self.stored,
            self.replaced,
            self.verified,
            self.exists,
            self.duplicate,
            self.malformed,
            self.refused,
            self.dead,
            self.failed,
            self.already_done,
            if self.would_store + self.would_replace > 0 {
                format!(
                    "; dry run: {} would be stored, {} would replace",
                    self.would_store, self.would_replace
                )
            } else {
                String::new()
            },
            if self.interrupted {
                "; interrupted: run again to go on"
            } else {
                ""
            },
        )
    }
}

/// Runs an import; returns the process exit code: 0 when every line is imported (or
/// was before), 2 when some are not (see the report), 130 when interrupted.
pub(crate) async fn import(
    settings: crate::config::Settings,
    run: ImportRun,
) -> anyhow::Result<i32> {
    let input: Box<dyn AsyncRead + Unpin + Send> = match &run.input {
        Some(path) if path.as_os_str() != "-" => Box::new(
            tokio::fs::File::open(path)
                .await
                .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?,
        ),
        _ => Box::new(tokio::io::stdin()),
    };
    let done_before = read_report(&run.report).await?;
    let services = Offline::open(settings).await?;
    let report = if run.options.dry_run {
        None
    } else {
        Some(tokio::sync::Mutex::new(
            tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&run.report)
                .await
                .map_err(|e| {
                    anyhow::anyhow!("cannot write the report {}: {e}", run.report.display())
                })?,
        ))
    };
    let summary = Arc::new(Mutex::new(Summary::default()));
    let progress = std::io::stderr()
        .is_terminal()
        .then(|| spawn_progress(Arc::clone(&summary)));
    let stop = tokio_util::sync::CancellationToken::new();
    let interrupt = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\nstopping after the lines in progress (Ctrl-C again to stop now)");
                stop.cancel();
            }
            // A second Ctrl-C stops at once; the report holds what was done, and a
            // line in progress is found imported (or not) by the next run.
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        })
    };
    let context = Context {
        services: &services,
        options: run.options,
        done_before: &done_before,
        seen: Mutex::new(HashMap::new()),
        pace: Pace::new(run.verify_rate),
        summary: &summary,
    };
    let lines = numbered_lines(input, stop.clone());
    let work = lines.for_each_concurrent(run.concurrency.max(1), |(number, line)| {
        let summary = &summary;
        let report = &report;
        let context = &context;
        async move {
            if line.as_ref().is_ok_and(|text| text.trim().is_empty()) {
                return;
            }
            summary.lock().lines += 1;
            let done = match line {
                Err(problem) => Some(malformed(number, "line", &problem)),
                Ok(text) => context.import_line(number, &text).await,
            };
            let Some(done) = done else { return };
            summary.lock().count(&done);
            if let Some(report) = report {
                let mut file = report.lock().await;
                if let Err(e) = append(&mut file, &done).await {
                    tracing::error!(error = %e, line = number, "writing the import report failed; the next run imports this line again");
                }
            }
        }
    });
    work.await;
    interrupt.abort();
    if let Some(progress) = progress {
        progress.abort();
        eprintln!();
    }
    if let Some(report) = &report
        && let Err(e) = report.lock().await.sync_all().await
    {
        tracing::error!(error = %e, "syncing the import report failed");
    }
    let closed = services.close(CLOSE_WITHIN).await;
    let mut summary = std::mem::take(&mut *summary.lock());
    summary.interrupted = stop.is_cancelled();
    eprintln!("{}", summary.line());
    if !run.options.dry_run {
        eprintln!("report: {}", run.report.display());
    }
    println!("{}", serde_json::to_string(&summary)?);
    if !closed {
        eprintln!(
            "not everything was written before the deadline (see the log); run again to check"
        );
    }
    Ok(if summary.interrupted {
        130
    } else if !closed {
        1
    } else if summary.complete() {
        0
    } else {
        2
    })
}

/// What every line's import shares.
struct Context<'a> {
    services: &'a Offline,
    options: ImportOptions,
    /// What an earlier run's report says is done: (line, userId, provider).
    done_before: &'a HashSet<(u64, String, String)>,
    /// The first line of this input for each connection.
    seen: Mutex<HashMap<(String, String), u64>>,
    pace: Pace,
    summary: &'a Mutex<Summary>,
}

impl Context<'_> {
    /// Imports one line; `None` for a line an earlier run did.
    async fn import_line(&self, number: u64, text: &str) -> Option<Done> {
        let grant = match ImportedGrant::parse(text) {
            Ok(grant) => grant,
            Err(e) => return Some(malformed(number, &e.field, &e.problem)),
        };
        let key = (grant.user_id.to_string(), grant.provider.clone());
        let first = self.seen.lock().insert(key.clone(), number);
        if self
            .done_before
            .contains(&(number, key.0.clone(), key.1.clone()))
        {
            self.summary.lock().already_done += 1;
            return None;
        }
        let done = |outcome: LineOutcome, detail: Option<String>| Done {
            line: number,
            user_id: Some(key.0.clone()),
            provider: Some(key.1.clone()),
            outcome,
            detail,
        };
        if let Some(first) = first {
            return Some(done(
                LineOutcome::Duplicate,
                Some(format!("line {first} names the same connection")),
            ));
        }
        if self.options.verify && !self.options.dry_run {
            self.pace.wait().await;
        }
        let client = ClientInfo {
            caller: Some(CLI_CALLER.into()),
            ..ClientInfo::default()
        };
        let tokens = &self.services.tokens;
        match tokens
            .import_grant(&grant, self.options, CLI_CALLER, &client)
            .await
        {
            Ok(outcome) => {
                let detail = match &outcome {
                    ImportOutcome::Dead { cause, .. } => Some(cause.clone()),
                    _ => None,
                };
                if let ImportOutcome::Stored { verified: true, .. } = &outcome {
                    self.summary.lock().verified += 1;
                }
                if matches!(
                    outcome,
                    ImportOutcome::Stored { .. } | ImportOutcome::Dead { kept: true, .. }
                ) {
                    self.services.audit.record_action(crate::audit::Read {
                        caller: CLI_CALLER,
                        user_id: &key.0,
                        provider: &key.1,
                        outcome: crate::audit::ReadOutcome::Imported,
                        reason: None,
                        scopes: None,
                        request_id: None,
                    });
                }
                Some(done(LineOutcome::of(&outcome), detail))
            }
            // The line chose the provider's name: it is repeated only when it looks
            // like one (a misaligned column may hold a token).
            Err(TokenError::UnknownProvider(name)) => Some(done(
                LineOutcome::Refused,
                Some(if is_plain_name(&name) {
                    format!("provider {name:?} is not configured (AXNT_PROVIDERS)")
                } else {
                    "provider: not a configured provider (AXNT_PROVIDERS)".to_string()
                }),
            )),
            Err(TokenError::InvalidInput(problem)) => {
                Some(done(LineOutcome::Refused, Some(problem)))
            }
            Err(e) => Some(done(LineOutcome::Failed, Some(e.code().to_string()))),
        }
    }
}

/// Whether `name` looks like a provider's name (lower-case letters, digits, `_`, `-`).
fn is_plain_name(name: &str) -> bool {
    (1..=40).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
}

/// Appends a report line and flushes it, so a run stopped at any point has reported
/// every line it finished.
async fn append(file: &mut tokio::fs::File, done: &Done) -> std::io::Result<()> {
    let mut text = serde_json::to_string(done).map_err(std::io::Error::other)?;
    text.push('\n');
    file.write_all(text.as_bytes()).await?;
    file.flush().await
}

fn malformed(number: u64, field: &str, problem: &str) -> Done {
    Done {
        line: number,
        user_id: None,
        provider: None,
        outcome: LineOutcome::Malformed,
        detail: Some(format!("{field}: {problem}")),
    }
}

/// The input's lines, numbered from 1, until its end or `stop`. A line longer than
/// [`MAX_LINE_BYTES`] or not UTF-8 is an `Err` (its bytes are skipped, never kept).
fn numbered_lines(
    input: Box<dyn AsyncRead + Unpin + Send>,
    stop: tokio_util::sync::CancellationToken,
) -> impl futures_util::Stream<Item = (u64, Result<String, String>)> {
    let reader = BufReader::with_capacity(64 * 1024, input);
    futures_util::stream::unfold(
        (reader, 0u64, stop),
        |(mut reader, number, stop)| async move {
            if stop.is_cancelled() {
                return None;
            }
            let mut bytes = Vec::new();
            let mut too_long = false;
            loop {
                // Ctrl-C ends a wait for input too (a terminal or a pipe that is quiet).
                let read = tokio::select! {
                    read = reader.fill_buf() => read,
                    () = stop.cancelled() => return None,
                };
                let available = match read {
                    Ok(available) => available,
                    Err(e) => {
                        tracing::error!(error = %e, "reading the input failed");
                        return None;
                    }
                };
                if available.is_empty() {
                    if bytes.is_empty() && !too_long {
                        return None;
                    }
                    break;
                }
                let (chunk, ends) = match available.iter().position(|b| *b == b'\n') {
                    Some(i) => (&available[..i], Some(i + 1)),
                    None => (available, None),
                };
                if !too_long && bytes.len() + chunk.len() <= MAX_LINE_BYTES {
                    bytes.extend_from_slice(chunk);
                } else {
                    too_long = true;
                    bytes.clear();
                }
                let consumed = ends.unwrap_or(available.len());
                reader.consume(consumed);
                if ends.is_some() {
                    break;
                }
            }
            let number = number + 1;
            let line = if too_long {
                Err(format!("longer than {MAX_LINE_BYTES} bytes"))
            } else {
                String::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())
            };
            Some(((number, line), (reader, number, stop)))
        },
    )
}

/// What an earlier run's report says is done: (line, userId, provider).
async fn read_report(path: &Path) -> anyhow::Result<HashSet<(u64, String, String)>> {
    let text = match tokio::fs::read_to_string(path).await {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => anyhow::bail!("cannot read the report {}: {e}", path.display()),
    };
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str::<Done>(line).ok())
        .filter(|d| d.outcome.is_final())
        .filter_map(|d| Some((d.line, d.user_id?, d.provider?)))
        .collect())
}

/// Prints the counts so far on standard error (a terminal), twice a second.
fn spawn_progress(summary: Arc<Mutex<Summary>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(500));
        loop {
            every.tick().await;
            let line = summary.lock().line();
            eprint!("\r\x1b[2K{line}");
        }
    })
}

/// Redeems at most `per_second`, evenly spaced (no burst), across the workers: the
/// rate limiter the API's limits use.
struct Pace(governor::DefaultDirectRateLimiter);

impl Pace {
    fn new(per_second: u32) -> Self {
        let rate = std::num::NonZeroU32::new(per_second).unwrap_or(std::num::NonZeroU32::MIN);
        Self(governor::RateLimiter::direct(
            governor::Quota::per_second(rate).allow_burst(std::num::NonZeroU32::MIN),
        ))
    }

    async fn wait(&self) {
        self.0.until_ready().await;
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt as _;

    use super::*;

    /// Lines as an input holds them: an over-long one and one not UTF-8 are refused on
    /// their own and reading goes on; a last line without a newline counts; nothing of
    /// a refused line is kept.
    #[tokio::test]
    async fn lines_are_numbered_and_a_bad_one_is_refused_alone() {
        let mut input = b"first\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES + 1));
        input.extend(b"\n\xff\xfe\n\nlast");
        let lines: Vec<(u64, Result<String, String>)> = numbered_lines(
            Box::new(std::io::Cursor::new(input)),
            tokio_util::sync::CancellationToken::new(),
        )
        .collect()
        .await;
        assert_eq!(
            lines,
            [
                (1, Ok("first".to_string())),
                (2, Err(format!("longer than {MAX_LINE_BYTES} bytes"))),
                (3, Err("not UTF-8".to_string())),
                (4, Ok(String::new())),
                (5, Ok("last".to_string())),
            ]
        );
    }

    /// A stop ends the lines at once, whatever the input still holds.
    #[tokio::test]
    async fn a_stop_ends_the_lines() {
        let stop = tokio_util::sync::CancellationToken::new();
        stop.cancel();
        let lines: Vec<_> =
            numbered_lines(Box::new(std::io::Cursor::new(b"a\nb\n".to_vec())), stop)
                .collect()
                .await;
        assert!(lines.is_empty());
    }

    /// A line a run reported as done is skipped by the next only when its outcome is
    /// final; a report line that does not parse is ignored (that line is done again).
    #[tokio::test]
    async fn the_report_names_only_final_lines_as_done() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("report.jsonl");
        std::fs::write(
            &path,
            concat!(
                r#"{"line":1,"userId":"u1","provider":"google","outcome":"stored"}"#,
                "\n",
                r#"{"line":2,"userId":"u2","provider":"google","outcome":"failed","detail":"store_unavailable"}"#,
                "\n",
                r#"{"line":3,"outcome":"malformed","detail":"line: not valid JSON"}"#,
                "\n",
                r#"{"line":4,"userId":"u4","provider":"google","outcome":"dead","detail":"x"}"#,
                "\n",
                "not json\n",
            ),
        )
        .expect("write");
        let done = read_report(&path).await.expect("read");
        let mut done: Vec<_> = done.into_iter().collect();
        done.sort();
        assert_eq!(
            done,
            [
                (1, "u1".to_string(), "google".to_string()),
                (4, "u4".to_string(), "google".to_string())
            ]
        );
    }
}
