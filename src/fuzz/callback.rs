//! The callback through the real router, on an embedded store: whatever the query,
//! cookie and `state`, the answer is never a 5xx, and no flow-log item is written
//! unless `state` is authentic, unexpired and bound to the browser's cookie.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chrono::Utc;
use parking_lot::Mutex;
use tower::ServiceExt;

use super::{Input, Mutation, STATE_KEY, sealer, session};
use crate::app::{App, Backends};
use crate::config::Settings;
use crate::crypto::{b64, random_token};
use crate::ids::FlowId;
use crate::oauth::flow::{FlowState, Purpose, binding_cookie_name, new_binding};

/// An app on an embedded store in `dir`, its router, and a view of its flow log.
pub(crate) struct Harness {
    runtime: tokio::runtime::Runtime,
    router: Router,
    db: Mutex<rusqlite::Connection>,
}

impl Harness {
    /// Builds the app as `serve` would, with the harness's state key, a provider that
    /// cannot be reached (no case here may need it) and one allowed return origin.
    pub(crate) fn in_dir(dir: &Path) -> Self {
        let env = [
            ("AXNT_DATA_DIR", dir.display().to_string()),
            ("AXNT_PUBLIC_BASE_URL", "http://127.0.0.1:9".into()),
            ("AXNT_GOOGLE_ISSUER", "http://127.0.0.1:9".into()),
            ("AXNT_GOOGLE_CLIENT_ID", "client".into()),
            ("AXNT_GOOGLE_CLIENT_SECRET", "secret".into()),
            ("AXNT_API_KEYS", "fuzz-api-key-0000000001".into()),
            ("AXNT_STATE_KEY", b64(&STATE_KEY)),
            ("AXNT_ALLOWED_RETURN_URLS", "https://app.example.com".into()),
        ]
        .map(|(name, value)| (name.to_string(), value));
        let settings = Settings::load(None, env).expect("harness settings");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let router = runtime.block_on(async {
            let backends = Backends::open(&settings).await.expect("embedded backends");
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("a port");
            let app = App::with_listener(settings, backends, listener)
                .await
                .expect("the app builds");
            app.router()
        });
        let db = rusqlite::Connection::open(dir.join("axnt-oauth.db")).expect("the database");
        Self {
            runtime,
            router,
            db: Mutex::new(db),
        }
    }

    fn flow_log_items(&self) -> i64 {
        self.db
            .lock()
            .query_row("SELECT COUNT(*) FROM flow_logs", [], |row| row.get(0))
            .expect("counting flow-log items")
    }

    /// One callback request shaped by `data`, and its properties. Returns whether it
    /// was a genuine callback (one that may write to the flow log).
    pub(crate) fn check(&self, data: &[u8]) -> bool {
        let case = Case::from_input(&mut Input(data));
        let Some(request) = case.request() else {
            return false;
        };
        let before = self.flow_log_items();
        let response = self
            .runtime
            .block_on(self.router.clone().oneshot(request))
            .expect("the router answers");
        let written = self.flow_log_items() - before;
        let status = response.status();
        assert!(!status.is_server_error(), "{case:?} answered {status}");
        if case.genuine() {
            assert!(written > 0, "{case:?} logged nothing ({status})");
            assert!(
                status == StatusCode::FOUND || status.is_client_error(),
                "{case:?} answered {status}"
            );
        } else {
            assert_eq!(written, 0, "{case:?} wrote to the flow log ({status})");
        }
        case.genuine()
    }
}

/// What the callback is sent.
#[derive(Debug)]
struct Case {
    provider: String,
    state: StateParam,
    /// The binding cookie: absent, the right value, or another.
    cookie: Option<String>,
    code: Option<String>,
    error: Option<String>,
    /// Appended to the query as it is (percent-encoded where a URI needs it).
    raw: String,
}

#[derive(Debug)]
enum StateParam {
    Absent,
    Arbitrary(String),
    /// A `state` this service sealed, for the binding value `binding`.
    Sealed {
        text: String,
        binding: String,
        flow_id: FlowId,
        expired: bool,
        mutated: bool,
    },
    /// A connect link's `session` presented as `state`.
    Session(String),
}

impl Case {
    fn from_input(input: &mut Input<'_>) -> Self {
        let provider = match input.below(4) {
            0 => input.text(12),
            _ => "google".to_string(),
        };
        let flow_id = FlowId::new();
        let sealer = sealer();
        let state = match input.below(5) {
            0 => StateParam::Absent,
            1 => StateParam::Arbitrary(input.text(64)),
            2 => StateParam::Session(
                sealer
                    .seal(Purpose::ConnectSession, &session("u", &flow_id, &[], None))
                    .expect("sealing a session"),
            ),
            mode => {
                let (binding, hash) = new_binding();
                let expired = input.below(4) == 0;
                let mut flow: FlowState = session("u", &flow_id, &[], None).largest_state();
                flow.binding_hash = hash;
                flow.return_to = super::return_urls().check("https://app.example.com/done");
                flow.expires_at = Utc::now().timestamp() + if expired { -60 } else { 600 };
                let sealed = sealer
                    .seal(Purpose::AuthorizationState, &flow)
                    .expect("sealing a state");
                let mutated = mode == 3;
                let text = if mutated {
                    Mutation::from_input(input).apply(&sealed)
                } else {
                    sealed.clone()
                };
                StateParam::Sealed {
                    mutated: mutated && text != sealed,
                    text,
                    binding,
                    flow_id,
                    expired,
                }
            }
        };
        let cookie = match (input.below(3), &state) {
            (0, _) => None,
            (1, StateParam::Sealed { binding, .. }) => Some(binding.clone()),
            // Any other value a cookie header can carry.
            _ => Some(
                input
                    .text(43)
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
                    .collect(),
            ),
        };
        let code = (input.byte() & 1 == 1).then(|| input.text(32));
        let error = match input.below(3) {
            0 => None,
            1 => Some("access_denied".to_string()),
            _ => Some(input.text(70)),
        };
        let raw = input.text(64);
        let mut case = Self {
            provider,
            state,
            cookie,
            code,
            error,
            raw,
        };
        // A genuine callback with a code and no error would exchange the code with
        // the provider: a network call, not what this harness checks. With an error it
        // ends before that, after logging.
        if case.genuine() && case.count("error") == 0 {
            case.error = Some("access_denied".into());
        }
        case
    }

    /// Whether `state` is authentic, unexpired and bound to the cookie sent, for this
    /// provider: the only callbacks that may write to the flow log.
    fn genuine(&self) -> bool {
        match &self.state {
            StateParam::Sealed {
                binding,
                expired,
                mutated,
                ..
            } => {
                !expired
                    && !mutated
                    && self.cookie.as_deref() == Some(binding.as_str())
                    && self.provider == "google"
                    && self.count("state") == 1
                    && self.count("code") <= 1
                    && self.count("error") <= 1
            }
            _ => false,
        }
    }

    /// How often `name` is in the query (the query extractor refuses repeats).
    fn count(&self, name: &str) -> usize {
        url::form_urlencoded::parse(self.query().as_bytes())
            .filter(|(key, _)| key == name)
            .count()
    }

    fn raw_query(&self) -> String {
        url::form_urlencoded::byte_serialize(self.raw.as_bytes())
            .collect::<String>()
            .replace("%3D", "=")
            .replace("%26", "&")
    }

    fn query(&self) -> String {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        if let StateParam::Arbitrary(text)
        | StateParam::Session(text)
        | StateParam::Sealed { text, .. } = &self.state
        {
            query.append_pair("state", text);
        }
        if let Some(code) = &self.code {
            query.append_pair("code", code);
        }
        if let Some(error) = &self.error {
            query.append_pair("error", error);
        }
        let mut query = query.finish();
        let raw = self.raw_query();
        if !raw.is_empty() {
            query.push('&');
            query.push_str(&raw);
        }
        query
    }

    fn request(&self) -> Option<Request<Body>> {
        let provider: String =
            url::form_urlencoded::byte_serialize(self.provider.as_bytes()).collect();
        let uri = format!("/oauth/{provider}/callback?{}", self.query());
        let mut request = Request::get(uri);
        if let Some(value) = &self.cookie {
            let flow_id = match &self.state {
                StateParam::Sealed { flow_id, .. } => flow_id.clone(),
                _ => FlowId::new(),
            };
            request = request.header(
                header::COOKIE,
                format!("{}={}", binding_cookie_name(&flow_id), value),
            );
        }
        request.body(Body::empty()).ok()
    }
}

/// The harness the fuzz target shares across runs, in a fresh directory under the
/// system's temporary directory (left there: it holds the flow log a crash wrote).
fn shared() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let dir: PathBuf =
            std::env::temp_dir().join(format!("axnt-oauth-fuzz-{}", random_token(6)));
        std::fs::create_dir_all(&dir).expect("the harness's directory");
        Harness::in_dir(&dir)
    })
}

/// The callback: never a 5xx, and nothing in the flow log before `state` and the
/// browser's cookie check out.
pub fn callback(data: &[u8]) {
    shared().check(data);
}

#[cfg(test)]
mod tests {
    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    use super::*;

    /// One app for all cases (building it per case would dominate the time), so the
    /// runner is driven by hand rather than by `proptest!`.
    #[test]
    fn callbacks_answer_no_5xx_and_log_only_genuine_flows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let harness = Harness::in_dir(dir.path());
        let mut runner = TestRunner::new(Config {
            source_file: Some(file!()),
            ..Config::with_cases(crate::fuzz::proptests::cases(128))
        });
        let genuine = std::cell::Cell::new(0);
        let result = runner.run(&vec(any::<u8>(), 0..256), |data| {
            if harness.check(&data) {
                genuine.set(genuine.get() + 1);
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
        // The property says something only if genuine callbacks were among the cases
        // and were seen writing.
        assert!(genuine.get() > 0, "no genuine callback among the cases");
    }
}
