//! Moving in and out through the binary, as an operator runs it: `axnt-oauth import`
//! over thousands of lines of every kind (interrupted, resumed, run again), `--verify`
//! against a rotating provider, and `axnt-oauth export`, whose encrypted output opens
//! with the recipient's age key and imports into another instance.

on_every_backend!(
    mixed_lines_import_resume_and_run_again_to_no_change,
    an_export_opens_with_the_recipients_key_and_imports_elsewhere,
);

use std::collections::{BTreeMap, HashMap};
use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::cli::command;
use crate::support::fake_provider::Profile;
use crate::support::{Backend, FakeProvider, TestApp, contains};

/// The binary with the instance's settings (same store, keys and providers), logging
/// at `info` so ten thousand lines do not log a book.
fn cli(app: &TestApp, dir: &Path) -> Command {
    let mut cmd = command(dir);
    for (k, v) in &app.base_env {
        cmd.env(k, v);
    }
    cmd.env("AXNT_DATA_DIR", app.data_dir.path())
        .env("AXNT_LOG", "info")
        .env("AXNT_LISTEN_ADDR", "127.0.0.1:0")
        .env("AXNT_ADMIN_LISTEN_ADDR", "127.0.0.1:0");
    cmd
}

/// Runs `cmd` to its end off the runtime (the fake provider answers on it meanwhile);
/// its exit code, standard output and standard error.
async fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = output(cmd).await;
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

async fn output(cmd: &mut Command) -> Output {
    let mut cmd = std::mem::replace(cmd, Command::new("true"));
    tokio::task::spawn_blocking(move || cmd.output().expect("run the binary"))
        .await
        .expect("the run ends")
}

/// The JSON summary an import prints as its last line of standard output.
fn summary(stdout: &str) -> Value {
    let last = stdout.lines().last().expect("a summary line");
    serde_json::from_str(last).expect("the summary is JSON")
}

/// Every row of the tokens table: (user, provider) → version.
async fn versions(app: &TestApp) -> BTreeMap<(String, String), u64> {
    let mut all = BTreeMap::new();
    let mut after = None;
    loop {
        let page = app.store.scan(after.as_ref(), 1000).await.expect("scan");
        for row in page.rows {
            all.insert((row.user_id, row.provider), row.version);
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return all,
        }
    }
}

/// The last outcome the report gives each line.
fn report_outcomes(path: &Path) -> BTreeMap<u64, String> {
    let text = std::fs::read_to_string(path).expect("the report");
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a report line is JSON"))
        .map(|v| {
            (
                v["line"].as_u64().expect("line"),
                v["outcome"].as_str().expect("outcome").to_string(),
            )
        })
        .collect()
}

fn count(outcomes: &BTreeMap<u64, String>, outcome: &str) -> usize {
    outcomes.values().filter(|o| *o == outcome).count()
}

/// What the provider minted for the good lines: the prefix every such token starts
/// with (searched for in every output), from one of them.
fn token_prefix(token: &str) -> String {
    let cut = token
        .rfind('-')
        .expect("the fake's tokens are rt-<prefix>-<n>");
    token[..=cut].to_string()
}

/// The lines of a mixed import: good (refresh tokens the provider knows), later lines
/// for connections an earlier line named, malformed, and dead tokens.
struct Mix {
    good: usize,
    duplicates: usize,
    malformed: usize,
    dead: usize,
}

impl Mix {
    /// `total` lines: 90 % good, 4 % duplicates, 3 % malformed, 3 % dead.
    fn of(total: usize) -> Self {
        let (duplicates, malformed, dead) = (total * 4 / 100, total * 3 / 100, total * 3 / 100);
        Self {
            good: total - duplicates - malformed - dead,
            duplicates,
            malformed,
            dead,
        }
    }

    fn total(&self) -> usize {
        self.good + self.duplicates + self.malformed + self.dead
    }
}
/// What the provider granted; the lines claim less, and `--verify` records the truth.
const GRANTED: &str = "openid email https://www.googleapis.com/auth/drive.readonly";
/// Lines of the aws run: moto answers one call at a time, about 20 ms each, and a
/// verified line makes about a dozen (the row, the lease, the new tokens, the event,
/// the flow log and the audit), so ten thousand would take most of an hour there.
const AWS_LINES: usize = 1_000;

/// A string planted in malformed lines where a value would be quoted.
const PLANTED: &str = "PLANTED-SECRET-1//0gAAAA";

/// 10,000 lines on the embedded store (1,000 on moto, see [`AWS_LINES`]): good ones
/// (refresh tokens the provider knows), later lines for the same connections, malformed
/// ones and dead tokens, imported with `--verify` against a provider that rotates
/// refresh tokens. The first run is interrupted; the second goes
/// on from its report; the third changes nothing. Every good token is redeemed once,
/// never a rotated one twice, and no output holds a token.
async fn mixed_lines_import_resume_and_run_again_to_no_change(backend: Backend) {
    let mix = Mix::of(match backend {
        Backend::Embedded => 10_000,
        Backend::Aws => AWS_LINES,
    });
    let Mix {
        good,
        duplicates,
        malformed,
        dead,
    } = mix;
    let total = mix.total();
    let provider = FakeProvider::start().await;
    provider.rotate_refresh_tokens(true);
    // On moto, one of its own: a thousand verified lines at concurrency 16 would queue
    // every other test's calls behind them on the suite's (one request at a time).
    let own_moto = match backend {
        Backend::Aws => Some(crate::support::aws::OwnMoto::serial().await),
        Backend::Embedded => None,
    };
    let app = match &own_moto {
        Some(moto) => TestApp::aws_on(moto, &provider, &[]).await,
        None => TestApp::on(backend, &provider, &[]).await,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("grants.jsonl");
    let mut lines = Vec::with_capacity(total);
    let mut good_tokens = HashMap::new();
    for i in 0..good {
        let profile = Profile::for_prefix(&format!("{i:x}"));
        let token = provider.mint_grant(&profile, GRANTED);
        lines.push(json!({
            "userId": format!("user-{i}"),
            "provider": "google",
            "refreshToken": token,
            "scopes": "openid",
            "sub": profile.sub,
            "email": profile.email,
        }));
        good_tokens.insert(format!("user-{i}"), token);
    }
    for i in 0..duplicates {
        lines.push(json!({
            "userId": format!("user-{i}"),
            "provider": "google",
            "refreshToken": format!("dup-{PLANTED}-{i}"),
        }));
    }
    for i in 0..dead {
        lines.push(json!({
            "userId": format!("dead-{i}"),
            "provider": "google",
            "refreshToken": format!("dead-{PLANTED}-{i}"),
        }));
    }
    let mut text: Vec<String> = lines.iter().map(Value::to_string).collect();
    for i in 0..malformed {
        text.push(match i % 3 {
            0 => format!(r#"{{"userId":"bad-{i}","provider":"google","refreshToken":"{PLANTED}","expiresAt":"{PLANTED}"}}"#),
            1 => format!(r#"{{"userId":"bad-{i}","provider":"google","refresh_token":"{PLANTED}"}}"#),
            _ => format!(r#"{{"userId":"bad-{i}","provider":"google","refreshToken":"{PLANTED}""#),
        });
    }
    // Mixed through the file, the same way every run: a fixed shuffle.
    let mut order: Vec<usize> = (0..text.len()).collect();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for i in (1..order.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        order.swap(i, (state % (i as u64 + 1)) as usize);
    }
    // A duplicate must come after its original to be the duplicate: keep the good
    // lines' relative order ahead of theirs by putting every original first among equals.
    let mut file: Vec<&str> = order.iter().map(|&i| text[i].as_str()).collect();
    let first_of = |user: &str, file: &[&str]| {
        file.iter()
            .position(|l| l.contains(&format!("\"userId\":\"{user}\"")))
            .expect("present")
    };
    for i in 0..duplicates {
        let user = format!("user-{i}");
        let original = good_tokens[&user].clone();
        let at_original = file
            .iter()
            .position(|l| l.contains(&original))
            .expect("original");
        let at_first = first_of(&user, &file);
        if at_first != at_original {
            file.swap(at_first, at_original);
        }
    }
    assert_eq!(file.len(), total);
    std::fs::write(&input, file.join("\n") + "\n").expect("write the input");
    let report = dir.path().join("report.jsonl");
    let args = |cmd: &mut Command| {
        cmd.arg("import")
            .arg(&input)
            .args([
                "--verify",
                "--rate",
                "1000",
                "--concurrency",
                "16",
                "--report",
            ])
            .arg(&report);
    };

    // First run: interrupted (SIGINT) once a fifth of the lines are done.
    let mut first = cli(&app, dir.path());
    args(&mut first);
    let mut child = first
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the import");
    // Drained as it runs: a full pipe would stop the import.
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + Duration::from_secs(300);
    while std::fs::read_to_string(&report)
        .map(|t| t.lines().count())
        .unwrap_or(0)
        < total / 5
    {
        assert!(Instant::now() < deadline, "the import made no progress");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the import ended before it was interrupted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let interrupt = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(interrupt.success());
    // Waited for off the runtime: the fake provider answers the refreshes in flight.
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the interrupted import did not end"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let out = out.join().expect("stdout");
    let err = err.join().expect("stderr");
    assert_eq!(status.code(), Some(130), "interrupted: {err}");
    let interrupted = summary(&out);
    assert_eq!(interrupted["interrupted"], true);
    let done_first = report_outcomes(&report).len();
    assert!(
        (total / 5..total).contains(&done_first),
        "{done_first} lines done before the interruption"
    );
    let mut outputs = vec![out, err];

    // Second run: goes on from the report.
    let mut second = cli(&app, dir.path());
    args(&mut second);
    let (code, out, err) = run(&mut second).await;
    assert_eq!(code, 2, "malformed and dead lines remain: {err}");
    let resumed = summary(&out);
    assert!(
        resumed["alreadyDone"].as_u64().expect("alreadyDone") > 0,
        "{resumed}"
    );
    assert_eq!(resumed["interrupted"], false);
    outputs.extend([out, err]);
    let outcomes = report_outcomes(&report);
    assert_eq!(outcomes.len(), total, "every line is in the report");
    let mut histogram: BTreeMap<&str, usize> = BTreeMap::new();
    for outcome in outcomes.values() {
        *histogram.entry(outcome).or_default() += 1;
    }
    let failures: Vec<String> = std::fs::read_to_string(&report)
        .expect("report")
        .lines()
        .filter(|l| l.contains("\"failed\""))
        .take(3)
        .map(str::to_string)
        .collect();
    assert_eq!(histogram.get("failed"), None, "{histogram:?} {failures:?}");
    assert_eq!(count(&outcomes, "stored"), good);
    assert_eq!(count(&outcomes, "duplicate"), duplicates);
    assert_eq!(count(&outcomes, "dead"), dead);
    assert_eq!(count(&outcomes, "malformed"), malformed);

    // Every good line is a connection, verified, holding the provider's rotated refresh
    // token and the scopes the provider granted (the line claimed `openid` only).
    let stored = versions(&app).await;
    assert_eq!(
        stored.len(),
        good,
        "one connection per good line, none for dead ones"
    );
    for user in [
        "user-0",
        &format!("user-{}", good / 2),
        &format!("user-{}", good - 1),
    ] {
        let row = app.stored_row(user).await.expect("stored");
        assert!(!row.grant.unverified && row.is_active, "{user}");
        assert_eq!(
            row.grant.granted_scopes,
            GRANTED.split(' ').map(str::to_string).collect::<Vec<_>>()
        );
        let now_stored = app
            .stored_refresh_token(user)
            .await
            .expect("a refresh token");
        assert_ne!(now_stored, good_tokens[user], "the rotated token is stored");
        assert!(provider.is_refresh_token_valid(&now_stored));
    }
    // One redeem per good line, and no rotated token was ever presented again.
    let mut presented: HashMap<String, usize> = HashMap::new();
    for request in provider
        .token_requests()
        .iter()
        .filter(|r| r.grant_type == "refresh_token")
    {
        if let Some(token) = request.params.get("refresh_token") {
            *presented.entry(token.clone()).or_default() += 1;
        }
    }
    for (user, token) in &good_tokens {
        assert_eq!(
            presented.get(token),
            Some(&1),
            "{user}'s token redeemed once"
        );
    }
    assert_eq!(provider.spent_refresh_tokens_presented(), 0);
    let redeems = provider.refresh_count();

    // A later read serves the verified token without another refresh.
    let read = app.token("user-42").await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(provider.refresh_count(), redeems);

    // Third run: nothing to do, nothing changed.
    let mut third = cli(&app, dir.path());
    args(&mut third);
    let (code, out, err) = run(&mut third).await;
    assert_eq!(code, 2, "{err}");
    let again = summary(&out);
    assert_eq!(again["stored"], 0, "{again}");
    assert_eq!(again["replaced"], 0, "{again}");
    assert_eq!(
        again["alreadyDone"].as_u64(),
        Some((good + duplicates + dead) as u64),
        "{again}"
    );
    assert_eq!(versions(&app).await, stored, "a re-run changes no row");
    assert_eq!(
        provider.refresh_count(),
        redeems,
        "a re-run redeems nothing"
    );
    outputs.extend([out, err]);

    // No token in any output, nor in the report.
    outputs.push(std::fs::read_to_string(&report).expect("report"));
    let minted = token_prefix(&good_tokens["user-0"]);
    for output in &outputs {
        for needle in [minted.as_str(), PLANTED, "dup-", "dead-PLANTED"] {
            assert!(
                !contains(output.as_bytes(), needle),
                "{needle:?} appears in an output"
            );
        }
    }
    app.stop().await;
}

/// An export without tokens holds none; with `--include-refresh-tokens` it is refused
/// without a recipient, and with one it opens with the recipient's age key to the
/// stored refresh tokens, in lines another instance imports and serves.
async fn an_export_opens_with_the_recipients_key_and_imports_elsewhere(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let users = ["mover-1", "mover-2", "mover-3"];
    let mut lines = String::new();
    let mut tokens = HashMap::new();
    for (i, user) in users.iter().enumerate() {
        let profile = Profile::for_prefix(&format!("e{i}"));
        let token = provider.mint_grant(&profile, "openid email");
        lines.push_str(
            &json!({"userId": user, "provider": "google", "refreshToken": token, "sub": profile.sub, "email": profile.email, "scopes": ["openid", "email"]})
                .to_string(),
        );
        lines.push('\n');
        tokens.insert(user.to_string(), token);
    }
    // A provider that is not configured is refused, and nothing is stored for it.
    let unconfigured = provider.mint_grant(&Profile::for_prefix("ee"), "openid");
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        format!(
            "{lines}{}\n",
            json!({"userId": "mover-4", "provider": "dropbox", "refreshToken": unconfigured})
        ),
    )
    .expect("write");
    let (code, out, err) = run(cli(&app, dir.path()).arg("import").arg(&input)).await;
    assert_eq!(code, 2, "a refused line: {err}");
    let imported = summary(&out);
    assert_eq!(
        (imported["stored"].as_u64(), imported["refused"].as_u64()),
        (Some(3), Some(1))
    );
    assert!(
        app.store
            .get("mover-4", "dropbox")
            .await
            .expect("get")
            .is_none()
    );
    assert!(!out.contains(&unconfigured) && !err.contains(&unconfigured));
    // One connection through the flow, whose token the export carries too.
    let connected = app.connect("flow-user").await;
    assert!(connected.status().is_redirection() || connected.status().is_success());
    let flow_token = app
        .stored_refresh_token("flow-user")
        .await
        .expect("the flow's refresh token");
    tokens.insert("flow-user".to_string(), flow_token);

    // Metadata only: every connection, no token.
    let (code, out, err) = run(cli(&app, dir.path()).arg("export")).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 4, "{out}");
    for token in tokens.values() {
        assert!(!out.contains(token.as_str()) && !err.contains(token.as_str()));
    }
    let first: Value = serde_json::from_str(out.lines().next().expect("a line")).expect("JSON");
    assert!(first.get("refreshToken").is_none(), "{first}");

    // Tokens need a recipient.
    let (code, out, _) =
        run(cli(&app, dir.path()).args(["export", "--include-refresh-tokens"])).await;
    assert_ne!(code, 0);
    assert!(out.is_empty());

    // With one: the age file opens with its identity to the stored refresh tokens.
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let (code, _, err) = {
        let Output {
            status,
            stdout,
            stderr,
        } = output(cli(&app, dir.path()).args([
            "export",
            "--include-refresh-tokens",
            "--recipient",
            &recipient,
        ]))
        .await;
        std::fs::write(dir.path().join("out.age"), &stdout).expect("write");
        (
            status.code().unwrap_or(-1),
            stdout,
            String::from_utf8_lossy(&stderr).into_owned(),
        )
    };
    assert_eq!(code, 0, "{err}");
    let sealed = std::fs::read(dir.path().join("out.age")).expect("read");
    for token in tokens.values() {
        assert!(!contains(&sealed, token) && !err.contains(token.as_str()));
    }
    let decryptor = age::Decryptor::new(&sealed[..]).expect("an age file");
    let mut plain = String::new();
    decryptor
        .decrypt(std::iter::once(&identity as &dyn age::Identity))
        .expect("opens with the recipient's key")
        .read_to_string(&mut plain)
        .expect("UTF-8 lines");
    let exported: HashMap<String, String> = plain
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON"))
        .map(|v| {
            (
                v["userId"].as_str().expect("userId").to_string(),
                v["refreshToken"]
                    .as_str()
                    .expect("refreshToken")
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(exported, tokens);

    // The export is in the audit (caller `cli`) and the user's flow log.
    let audit: Value = app
        .api_get("/v1/audit?userId=mover-1")
        .await
        .json()
        .await
        .expect("audit");
    let text = audit.to_string();
    assert!(
        text.contains("exported_with_token") && text.contains("\"cli\""),
        "{audit}"
    );
    assert!(app.steps("mover-1").await.iter().any(|s| s == "exported"));

    // Another instance imports the decrypted file and serves its tokens.
    let plain_file = dir.path().join("moved.jsonl");
    std::fs::write(&plain_file, &plain).expect("write");
    let elsewhere = TestApp::on(Backend::Embedded, &provider, &[]).await;
    let (code, out, err) = run(cli(&elsewhere, dir.path())
        .arg("import")
        .arg(&plain_file)
        .arg("--report")
        .arg(dir.path().join("moved.report")))
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(summary(&out)["stored"], 4);
    for user in tokens.keys() {
        assert_eq!(
            elsewhere.token(user).await.status(),
            StatusCode::OK,
            "{user}"
        );
    }
    elsewhere.stop().await;
    app.stop().await;
}
