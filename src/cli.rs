//! The command line: `serve` (default), `setup`, `check` (the self-test itself is in
//! [`crate::check`]), `healthcheck`, `rotate-keys` (in [`crate::rotate`]), and `import`
//! and `export` (in [`crate::migrate`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::app::{App, Backends, shutdown_signal};
use crate::config::{Backend, Settings};
use crate::rotate::{Progress, RotateOptions};

#[derive(Debug, Parser)]
#[command(
    name = "axnt-oauth",
    version,
    about = "Google OAuth connections with encrypted token storage"
)]
pub struct Cli {
    /// A TOML settings file layered over config/default.toml (environment still wins).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the server (the default). Stops gracefully on SIGTERM or SIGINT.
    Serve,
    /// Create what the backend needs, idempotently.
    Setup {
        /// Print the plan without changing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Test configuration, secrets, keys and tables; one line per check.
    Check,
    /// Ask the running server's `/healthz` on the configured listen address; exit 0 when
    /// it answers 200, 1 otherwise. For container health checks (no shell tools needed).
    Healthcheck {
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=60))]
        timeout_secs: u64,
    },
    /// Move every stored token set's data key under the current key (a new KMS key or
    /// alias target, or a new local master key), without decrypting token sets, while
    /// the service runs. Idempotent: run it again to resume. Exit 0 only when a final
    /// pass finds every row under the current key.
    RotateKeys {
        /// Count rows not under the current key; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Embedded mode: retire the current master key (kept readable in
        /// master-keys/) and make a new one, then re-wrap under it.
        #[arg(long)]
        new_local_key: bool,
        /// Rows read per page.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
        page_size: u16,
    },
    /// Store grants made elsewhere (refresh tokens from an application's database or
    /// another service) as connections, from JSON lines, one connection per line
    /// (docs/migrating.md). Never prints a token. Exit 0 when every line is imported
    /// (now or by an earlier run), 2 when some are not (see the report), 130 when
    /// interrupted (run again to go on).
    Import {
        /// The JSON lines; standard input when absent or `-`.
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
        /// Check every line and say what would be done; store nothing.
        #[arg(long)]
        dry_run: bool,
        /// Replace connections that exist (otherwise their lines are skipped).
        #[arg(long)]
        replace: bool,
        /// Redeem each refresh token once (one refresh per line at the provider;
        /// rotation respected), record the scopes the provider reports, and take `sub`
        /// and `email` from it when a line lacks them.
        #[arg(long)]
        verify: bool,
        /// With --verify: store a grant found dead, inactive (otherwise it is only
        /// reported).
        #[arg(long, requires = "verify")]
        keep_dead: bool,
        /// The report of what was done, line by line (appended; read back to resume).
        /// Default: FILE.report.jsonl, or import-report.jsonl for standard input.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// Lines worked on at once.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
        concurrency: u16,
        /// With --verify: refresh tokens redeemed per second at most.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
        rate: u32,
    },
    /// Write the connections out as JSON lines on standard output: metadata only (no
    /// token) by default; with --include-refresh-tokens, lines `import` reads, with
    /// each live connection's refresh token, the whole output encrypted to an age
    /// recipient.
    Export {
        /// Include refresh tokens (needs --recipient).
        #[arg(long, requires = "recipient")]
        include_refresh_tokens: bool,
        /// The age public key (age1…) the output is encrypted to.
        #[arg(long, value_name = "AGE_PUBLIC_KEY", requires = "include_refresh_tokens", value_parser = parse_recipient)]
        recipient: Option<age::x25519::Recipient>,
        /// Only this provider's connections (repeat for several).
        #[arg(long = "provider", value_name = "NAME")]
        providers: Vec<String>,
        /// Only this user's connections (repeat for several).
        #[arg(long = "user", value_name = "USER_ID")]
        users: Vec<String>,
        /// Only connections made with this OAuth client (its client id).
        #[arg(long, value_name = "CLIENT_ID")]
        client: Option<String>,
    },
    /// Lifecycle events: `events replay --since <time>`.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum EventsCommand {
    /// Deliver again every event made since a time to every endpoint in
    /// AXNT_WEBHOOK_URLS (their cursors move back; the running service sends them),
    /// and print them as JSON lines. With --dry-run, only print them.
    Replay {
        /// RFC 3339 time, e.g. 2026-11-26T07:00:00Z (within AXNT_EVENTS_RETENTION_DAYS).
        #[arg(long, value_parser = parse_time)]
        since: chrono::DateTime<chrono::Utc>,
        /// Print the events; move no cursor.
        #[arg(long)]
        dry_run: bool,
    },
}

fn parse_recipient(text: &str) -> Result<age::x25519::Recipient, String> {
    text.parse()
        .map_err(|e| format!("not an age public key (age1…, as age-keygen prints it): {e}"))
}

fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("not an RFC 3339 time (2026-11-26T07:00:00Z): {e}"))
}

/// Runs the chosen command; returns the process exit code.
pub async fn run(cli: Cli, settings: Settings) -> anyhow::Result<i32> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(settings).await,
        Command::Setup { dry_run } => setup(settings, dry_run).await,
        Command::Check => Ok(crate::check::check(settings).await),
        Command::Healthcheck { timeout_secs } => {
            Ok(healthcheck(&settings, Duration::from_secs(timeout_secs)).await)
        }
        Command::RotateKeys {
            dry_run,
            new_local_key,
            page_size,
        } => {
            let options = RotateOptions {
                dry_run,
                new_local_key,
                page_size: usize::from(page_size),
            };
            rotate_keys(settings, &options).await
        }
        Command::Events {
            command: EventsCommand::Replay { since, dry_run },
        } => replay(settings, since, dry_run).await,
        Command::Import {
            file,
            dry_run,
            replace,
            verify,
            keep_dead,
            report,
            concurrency,
            rate,
        } => {
            let report = report.unwrap_or_else(|| match &file {
                Some(path) if path.as_os_str() != "-" => {
                    let mut name = path.as_os_str().to_owned();
                    name.push(".report.jsonl");
                    PathBuf::from(name)
                }
                _ => PathBuf::from("import-report.jsonl"),
            });
            let run = crate::migrate::ImportRun {
                input: file,
                options: crate::tokens::ImportOptions {
                    replace,
                    verify,
                    keep_dead,
                    dry_run,
                },
                report,
                concurrency: usize::from(concurrency),
                verify_rate: rate,
            };
            crate::migrate::import(settings, run).await
        }
        Command::Export {
            include_refresh_tokens: _,
            recipient,
            providers,
            users,
            client,
        } => {
            let run = crate::migrate::export::ExportRun {
                providers,
                users,
                client,
                recipient,
            };
            crate::migrate::export::export(settings, run).await
        }
    }
}

async fn replay(
    settings: Settings,
    since: chrono::DateTime<chrono::Utc>,
    dry_run: bool,
) -> anyhow::Result<i32> {
    let backends = Backends::open(&settings).await?;
    let store = backends.tokens;
    let mut after = crate::store::event_bound(since.timestamp_millis());
    let until = crate::store::event_bound(chrono::Utc::now().timestamp_millis());
    let mut count = 0usize;
    loop {
        let page = store.events_between(&after, &until, 500).await?;
        let Some(last) = page.last() else { break };
        after = last.id.clone();
        for e in page.iter().filter(|e| e.kind != crate::events::PROBE_KIND) {
            count += 1;
            println!(
                "{}",
                serde_json::json!({
                    "id": e.id,
                    "type": e.kind,
                    "timestamp": e.timestamp.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    "data": e.data,
                })
            );
        }
    }
    if dry_run {
        eprintln!("{count} events since {since} (dry run: no endpoint's cursor moved)");
        return Ok(0);
    }
    if settings.webhooks.urls.is_empty() {
        eprintln!(
            "{count} events since {since}; no AXNT_WEBHOOK_URLS, so nothing to deliver again"
        );
        return Ok(0);
    }
    for (id, outcome) in
        crate::webhooks::rewind(store.as_ref(), &settings.webhooks.urls, since).await
    {
        match outcome {
            Ok(()) => {
                eprintln!("endpoint {id}: {count} events since {since} will be delivered again")
            }
            Err(e) => {
                eprintln!("endpoint {id}: could not move its cursor: {e}");
                return Ok(1);
            }
        }
    }
    Ok(0)
}

/// `GET /healthz` on the public listener. A wildcard listen address (`0.0.0.0:8080` in
/// the image) is asked on the loopback address of the same family.
async fn healthcheck(settings: &Settings, timeout: Duration) -> i32 {
    let mut addr = settings.server.listen_addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    let url = format!("http://{addr}/healthz");
    let answer = match reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
    {
        Ok(client) => client.get(&url).send().await,
        Err(e) => {
            println!("unhealthy: cannot build an HTTP client: {e}");
            return 1;
        }
    };
    match answer {
        Ok(response) if response.status() == reqwest::StatusCode::OK => {
            println!("healthy: {url} answered 200");
            0
        }
        Ok(response) => {
            println!("unhealthy: {url} answered {}", response.status());
            1
        }
        Err(e) => {
            println!("unhealthy: {url}: {}", failure_kind(&e));
            1
        }
    }
}

/// What went wrong, in words an operator reads in `docker inspect`.
fn failure_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "no answer in time"
    } else if e.is_connect() {
        "connection refused or unreachable"
    } else {
        "request failed"
    }
}

async fn rotate_keys(settings: Settings, options: &RotateOptions) -> anyhow::Result<i32> {
    let mut print = |p: &Progress| match p {
        Progress::LocalKeyRotated { old, new } => {
            println!("new local master key {new} is current; {old} retired (still readable)")
        }
        Progress::CurrentKey(key) => println!("current key: {key}"),
        Progress::Page { pass, counts } => println!(
            "pass {pass}: seen {}, re-wrapped {}, already current {}, changed meanwhile {}, failed {}",
            counts.seen,
            counts.rewrapped,
            counts.already_current,
            counts.changed_meanwhile,
            counts.failed
        ),
        Progress::Verify { .. } => {}
    };
    let report = crate::rotate::rotate_keys(&settings, options, &mut print).await?;
    let verified = report.verified;
    let items = format!(
        "{} rows, {} kept revocations, {} held grants",
        verified.rows, verified.revocations, verified.pending_grants
    );
    if options.dry_run && options.new_local_key {
        println!(
            "dry run: a new master key would be made and all {items} re-wrapped under it (nothing changed)"
        );
        return Ok(0);
    }
    if options.dry_run {
        println!(
            "dry run: {} of {items} are not under the current key (nothing changed)",
            report.not_current
        );
        return Ok(0);
    }
    println!(
        "verified: {items}; {} not under the current key",
        report.not_current
    );
    if report.success() {
        Ok(0)
    } else {
        println!(
            "not done: items are still under an old key (written meanwhile by an instance whose data key \
             predates the rotation, or failed above); run rotate-keys again (without --new-local-key) once AXNT_DATA_KEY_MAX_AGE_SECS has passed"
        );
        Ok(1)
    }
}

async fn serve(settings: Settings) -> anyhow::Result<i32> {
    let backend = settings.backend;
    let public = settings.server.public_base_url.clone();
    let app = App::build(settings).await?;
    if let Some(addr) = app.local_addr() {
        tracing::info!(%addr, backend = ?backend, public_base_url = %public, "listening");
    }
    app.run_until_stopped(shutdown_signal()).await?;
    Ok(0)
}

async fn setup(settings: Settings, dry_run: bool) -> anyhow::Result<i32> {
    match settings.backend {
        Backend::Embedded => {
            let dir = &settings.data_dir;
            if dry_run {
                println!("plan (embedded, nothing changed):");
                for (what, path) in [
                    ("data directory (mode 0700)", dir.clone()),
                    ("database (SQLite, WAL)", dir.join("axnt-oauth.db")),
                    ("master key (mode 0600)", dir.join("master.key")),
                    ("state key (mode 0600)", dir.join("state.key")),
                ] {
                    let verb = if path.exists() { "keep  " } else { "create" };
                    println!("  {verb} {what}: {}", path.display());
                }
                return Ok(0);
            }
            let backends = Backends::open(&settings).await?;
            if backends.created.is_empty() {
                println!(
                    "embedded backend already as wanted in {}: nothing changed",
                    dir.display()
                );
            } else {
                for item in &backends.created {
                    println!("created {item}");
                }
            }
            Ok(0)
        }
        Backend::Aws => {
            let report = crate::aws::setup::ensure_tables(&settings, dry_run).await?;
            if dry_run {
                println!("plan (aws, nothing changed):");
                report.changes.iter().for_each(|c| println!("  {c}"));
            } else {
                report.changes.iter().for_each(|c| println!("done: {c}"));
            }
            report.notes.iter().for_each(|n| println!("  {n}"));
            if report.changes.is_empty() {
                println!("aws backend already as wanted: nothing changed");
            }
            println!("not created by setup (run-time policy: deploy/iam-policy.json):");
            for line in crate::aws::setup::other_resources(&settings).await {
                println!("  {line}");
            }
            Ok(0)
        }
    }
}
