//! Entry points for the fuzz targets in `fuzz/` and for the property tests that run
//! them in the normal suite (`fuzz/proptests.rs`): each takes arbitrary bytes, drives
//! one parser of outside input, and panics when one of its properties fails.
//!
//! Compiled only for tests and under `cargo fuzz` (which sets `--cfg fuzzing`): the
//! product carries none of it. The areas are the ones where bytes from outside meet the
//! service: sealed flow values ([`sealed_state`]), envelopes and the stored items that
//! hold them ([`envelope`]), the secret's JSON ([`secret_document`]), return URLs
//! ([`return_url`]), user ids and API keys ([`identifiers`]) and the callback's query
//! through the real router ([`callback`]).

// A harness reports a broken property by panicking; that is its whole job.
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)]

mod callback;
#[cfg(test)]
mod proptests;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{Value, json};
use url::Url;
use zeroize::Zeroizing;

pub use callback::callback;

use crate::callers::ApiKey;
use crate::crypto::local::LocalKeyProvider;
use crate::crypto::{Envelope, EnvelopeCipher, SecretKey, b64url, b64url_decode};
use crate::ids::{FlowId, UserId};
use crate::oauth::flow::{ConnectSession, FlowState, Purpose, SealError, StateSealer};
use crate::oauth::{ReturnUrl, ReturnUrls};
use crate::secrets::parse_secret_document;
use crate::store::dynamodb::connection_from;

/// Planted in every string the harnesses make up: an error message holding it quoted
/// the input.
const MARKER: &str = "planted";

/// Reads the fuzzer's bytes as a sequence of choices; past the end every choice is 0.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((first, rest)) => {
                self.0 = rest;
                *first
            }
            None => 0,
        }
    }

    fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n.max(1)
    }

    fn pick<'b, T>(&mut self, items: &'b [T]) -> &'b T {
        &items[self.below(items.len())]
    }

    /// Up to `max` bytes, the length chosen by the input.
    fn take(&mut self, max: usize) -> &'a [u8] {
        let n = self.below(max + 1).min(self.0.len());
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        taken
    }

    fn text(&mut self, max: usize) -> String {
        String::from_utf8_lossy(self.take(max)).into_owned()
    }
}

/// One runtime for the harnesses' async calls (envelopes, the router).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

// --- sealed flow values -----------------------------------------------------------

/// The state key the harnesses seal under (the callback's app is given it too).
const STATE_KEY: [u8; 32] = [7; 32];

fn sealer() -> StateSealer {
    StateSealer::new(SecretKey::from_slice(&STATE_KEY).expect("32 bytes"))
}

/// A connect session with the given parts, built from the JSON a link carries: the
/// keys sealed links have always held, so fields added with defaults need no change here.
/// An id no link can carry (a session is made only with valid ones) is replaced by a
/// valid one.
fn session(
    user_id: &str,
    flow_id: &str,
    scopes: &[String],
    return_to: Option<&ReturnUrl>,
) -> ConnectSession {
    let user_id = if UserId::parse(user_id).is_ok() {
        user_id
    } else {
        "u"
    };
    let flow_id = if FlowId::parse(flow_id).is_ok() {
        flow_id
    } else {
        "f"
    };
    let mut value =
        json!({ "u": user_id, "p": "google", "f": flow_id, "e": 4_102_444_800_i64, "s": scopes });
    if let Some(url) = return_to {
        value["r"] = json!(url.as_str());
    }
    serde_json::from_value(value).expect("a connect session as links carry it")
}

/// One change to a sealed value's text.
#[derive(Debug, Clone)]
pub(crate) enum Mutation {
    /// Flip one bit of the sealed bytes (nonce, ciphertext or tag), re-encoded.
    FlipBit { at: usize, bit: u8 },
    /// Keep only the first `len` characters.
    Truncate { len: usize },
    /// Append characters (taken modulo the base64url alphabet).
    Extend { with: Vec<u8> },
    /// Replace one character by another of the alphabet (or any byte).
    Replace { at: usize, with: u8 },
}

const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

impl Mutation {
    fn from_input(input: &mut Input<'_>) -> Self {
        let at = usize::from(input.byte()) << 8 | usize::from(input.byte());
        match input.below(4) {
            0 => Self::FlipBit {
                at,
                bit: input.byte(),
            },
            1 => Self::Truncate { len: at },
            2 => Self::Extend {
                with: input.take(8).to_vec(),
            },
            _ => Self::Replace {
                at,
                with: input.byte(),
            },
        }
    }

    pub(crate) fn apply(&self, text: &str) -> String {
        match self {
            Self::FlipBit { at, bit } => {
                let mut bytes = b64url_decode(text).expect("a sealed value is base64url");
                if bytes.is_empty() {
                    return text.to_string();
                }
                let i = at % bytes.len();
                bytes[i] ^= 1 << (bit % 8);
                b64url(&bytes)
            }
            Self::Truncate { len } => text[..len % text.len().max(1)].to_string(),
            Self::Extend { with } => {
                let tail: String = with
                    .iter()
                    .map(|b| char::from(B64URL[usize::from(*b) % 64]))
                    .collect();
                format!("{text}{tail}")
            }
            Self::Replace { at, with } => {
                let mut bytes = text.as_bytes().to_vec();
                if bytes.is_empty() {
                    return text.to_string();
                }
                let i = at % bytes.len();
                bytes[i] = if with & 0x80 == 0 {
                    B64URL[usize::from(*with) % 64]
                } else {
                    *with
                };
                String::from_utf8_lossy(&bytes).into_owned()
            }
        }
    }
}

/// Whether a sealed text opens as any flow value, for any purpose.
fn opens_as_anything(sealer: &StateSealer, text: &str) -> bool {
    [Purpose::ConnectSession, Purpose::AuthorizationState]
        .into_iter()
        .any(|purpose| {
            sealer.open::<ConnectSession>(purpose, text).is_ok()
                || sealer.open::<FlowState>(purpose, text).is_ok()
                || sealer.open::<Value>(purpose, text).is_ok()
        })
}

/// Sealed flow values: arbitrary text never opens; a session and a `state` made from
/// the input round-trip, open only for their own purpose, and are refused after any
/// one mutation.
pub fn sealed_state(data: &[u8]) {
    let sealer = sealer();
    assert!(
        !opens_as_anything(&sealer, &String::from_utf8_lossy(data)),
        "arbitrary input opened as a sealed value"
    );
    let mut input = Input(data);
    let mutation = Mutation::from_input(&mut input);
    let scopes: Vec<String> = (0..input.below(4)).map(|_| input.text(16)).collect();
    let return_to = return_urls().check(&format!("https://app.example.com/{}", input.text(32)));
    let flow_id = input.text(40);
    let user_id = String::from_utf8_lossy(input.0).into_owned();
    let session = session(&user_id, &flow_id, &scopes, return_to.as_ref());
    check_sealed(&sealer, Purpose::ConnectSession, &session, &mutation);
    check_sealed(
        &sealer,
        Purpose::AuthorizationState,
        &session.largest_state(),
        &mutation,
    );
}

fn check_sealed<T>(sealer: &StateSealer, purpose: Purpose, value: &T, mutation: &Mutation)
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let text = match sealer.seal(purpose, value) {
        Ok(text) => text,
        Err(SealError::TooLarge) => return,
        Err(SealError::Invalid) => panic!("sealing a {purpose:?} value failed"),
    };
    let back: T = sealer.open(purpose, &text).expect("a sealed value opens");
    assert_eq!(
        serde_json::to_value(&back).expect("json"),
        serde_json::to_value(value).expect("json"),
        "a {purpose:?} value changed on its way through sealing"
    );
    let other = match purpose {
        Purpose::ConnectSession => Purpose::AuthorizationState,
        Purpose::AuthorizationState => Purpose::ConnectSession,
    };
    assert!(
        sealer.open::<Value>(other, &text).is_err(),
        "a {purpose:?} value opened as {other:?}"
    );
    let mutated = mutation.apply(&text);
    if mutated != text {
        assert!(
            !opens_as_anything(sealer, &mutated),
            "a {purpose:?} value opened after {mutation:?}"
        );
    }
}

// --- envelopes and the items that hold them ----------------------------------------

/// The harness's cipher and one envelope sealed with it for `alice`/`google`.
struct Sealed {
    cipher: EnvelopeCipher,
    envelope: Envelope,
}

const SEALED_TOKENS: &[u8] = br#"{"access_token":"planted-access"}"#;

fn sealed() -> &'static Sealed {
    static SEALED: OnceLock<Sealed> = OnceLock::new();
    SEALED.get_or_init(|| {
        let master = SecretKey::from_slice(&[9; 32]).expect("32 bytes");
        let cipher = EnvelopeCipher::new(Arc::new(LocalKeyProvider::new(master)), "tokens");
        let envelope = runtime()
            .block_on(cipher.seal("alice", "google", SEALED_TOKENS))
            .expect("sealing an envelope");
        Sealed { cipher, envelope }
    })
}

type Item = HashMap<String, AttributeValue>;

/// A stored connection as the tokens table holds it, carrying `envelope`.
fn stored_item(envelope: &Envelope) -> Item {
    let value = json!({
        "userId": "alice",
        "provider": "google",
        "email": "alice@example.com",
        "encryptedTokens": envelope,
        "userInfo": { "sub": "1", "emailVerified": true },
        "createdAt": "2025-01-02T03:04:05.678Z",
        "updatedAt": "2025-01-02T03:04:06.000Z",
        "lastUsed": "2025-01-02T03:04:07.009Z",
        "accessTokenExpiresAt": 10,
        "expiresAt": 20,
        "isActive": true,
        "version": 3,
        "refreshLeaseAttempt": "attempt-1",
        "refreshLeaseUntil": 1_790_000_000_123_i64,
    });
    serde_dynamo::to_item(value).expect("an item")
}

/// An attribute value of any kind; its strings carry [`MARKER`].
fn attribute(input: &mut Input<'_>, depth: usize) -> AttributeValue {
    let kinds = if depth == 0 { 7 } else { 9 };
    match input.below(kinds) {
        0 => AttributeValue::S(format!("{MARKER}-{}-{MARKER}", input.text(12))),
        1 => AttributeValue::N(
            input
                .pick(&["0", "-1", "1.5", "1e400", "9223372036854775808", "x", ""])
                .to_string(),
        ),
        2 => AttributeValue::B(input.take(16).to_vec().into()),
        3 => AttributeValue::Bool(input.byte() & 1 == 1),
        4 => AttributeValue::Null(true),
        5 => AttributeValue::Ss(vec![
            format!("{MARKER}-a"),
            format!("{MARKER}-{}", input.text(8)),
        ]),
        6 => AttributeValue::Ns(vec!["1".into(), "2".into()]),
        7 => AttributeValue::L(
            (0..input.below(3))
                .map(|_| attribute(input, depth - 1))
                .collect(),
        ),
        _ => AttributeValue::M(
            (0..input.below(3))
                .map(|_| {
                    (
                        input.pick(&ATTRIBUTES).to_string(),
                        attribute(input, depth - 1),
                    )
                })
                .collect(),
        ),
    }
}

/// The tokens table's attribute names and the envelope's, where a change matters.
const ATTRIBUTES: [&str; 22] = [
    "userId",
    "provider",
    "email",
    "encryptedTokens",
    "userInfo",
    "createdAt",
    "updatedAt",
    "lastUsed",
    "accessTokenExpiresAt",
    "expiresAt",
    "isActive",
    "version",
    "refreshLeaseAttempt",
    "refreshLeaseUntil",
    "refreshRetryAt",
    "inactiveCause",
    "v",
    "alg",
    "keyId",
    "edk",
    "iv",
    "ct",
];

/// Changes one attribute of `item` (at the top or inside `encryptedTokens`): removed,
/// replaced by any value, or a string of it changed by one character.
fn mutate_item(item: &mut Item, input: &mut Input<'_>) {
    let name = input.pick(&ATTRIBUTES).to_string();
    let target = if input.byte() & 1 == 0 {
        item
    } else {
        match item.get_mut("encryptedTokens") {
            Some(AttributeValue::M(envelope)) => envelope,
            _ => return,
        }
    };
    match input.below(3) {
        0 => {
            target.remove(&name);
        }
        1 => {
            let value = attribute(input, 2);
            target.insert(name, value);
        }
        _ => {
            if let Some(AttributeValue::S(text)) = target.get_mut(&name) {
                let mutation = Mutation::Replace {
                    at: usize::from(input.byte()),
                    with: input.byte(),
                };
                *text = mutation.apply(text);
            }
        }
    }
}

/// Envelopes: a stored item with one attribute changed either reads back (and then its
/// envelope opens only if it is the row's own, unchanged) or fails with an error that
/// names the attribute without quoting it; an envelope parsed from the input never opens.
pub fn envelope(data: &[u8]) {
    let Sealed { cipher, envelope } = sealed();
    let mut item = stored_item(envelope);
    let mut input = Input(data);
    for _ in 0..=input.below(2) {
        mutate_item(&mut item, &mut input);
    }
    match connection_from(&item) {
        Err(e) => assert!(!e.to_string().contains(MARKER), "{e}"),
        Ok(row) => {
            let opened =
                runtime().block_on(cipher.open(&row.user_id, &row.provider, &row.encrypted_tokens));
            let own = row.user_id == "alice"
                && row.provider == "google"
                && row.encrypted_tokens == *envelope;
            match opened {
                Ok(plain) => {
                    assert!(
                        own,
                        "a changed envelope or row opened: {:?}",
                        row.encrypted_tokens
                    );
                    assert_eq!(plain.as_slice(), SEALED_TOKENS);
                }
                // The error may name the envelope's `keyId` or `alg`: not secrets.
                Err(e) => assert!(!own, "the row's own envelope did not open: {e}"),
            }
        }
    }
    if let Ok(parsed) = serde_json::from_slice::<Envelope>(data)
        && parsed != *envelope
    {
        let opened = runtime().block_on(cipher.open("alice", "google", &parsed));
        assert!(opened.is_err(), "an envelope from the input opened");
    }
}

// --- the secret's JSON ---------------------------------------------------------------

/// A JSON value shaped by the input, near the secret's layout; every string is a marker.
fn document(input: &mut Input<'_>, depth: usize) -> Value {
    let kinds = if depth == 0 { 5 } else { 7 };
    match input.below(kinds) {
        // Marked at both ends: a message quoting any part of it shows.
        0 => json!(format!("{MARKER}-{}-{MARKER}", input.text(12))),
        1 => json!(format!("{MARKER}-a, {MARKER}-bbbbbbbbbbbbbbbb")),
        2 => json!(i64::from(input.byte()) - 128),
        3 => json!(input.byte() & 1 == 1),
        4 => Value::Null,
        5 => Value::Array(
            (0..input.below(4))
                .map(|_| document(input, depth - 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..input.below(5))
                .map(|_| {
                    let key = input.pick(&SECRET_FIELDS).to_string();
                    (key, document(input, depth - 1))
                })
                .collect(),
        ),
    }
}

const SECRET_FIELDS: [&str; 9] = [
    "client_id",
    "client_secret",
    "web",
    "installed",
    "state_key",
    "previous_state_key",
    "api_keys",
    "auth_uri",
    "planted_field",
];

/// The secret's JSON: whatever its shape, an error never quotes a value from it (every
/// string the harness makes carries a marker; raw input is checked for the marker too).
pub fn secret_document(data: &[u8]) {
    let raw = String::from_utf8_lossy(data);
    if let Err(e) = parse_secret_document("s", &raw) {
        let message = e.to_string();
        assert!(
            !raw.contains(MARKER) || !message.contains(MARKER),
            "{message}"
        );
        assert!(message.starts_with("secret s is malformed: "), "{message}");
    }
    let mut input = Input(data);
    check_planted_document(&document(&mut input, 3).to_string());
}

/// A secret whose every string carries [`MARKER`]: an error must not hold it.
pub(crate) fn check_planted_document(text: &str) {
    if let Err(e) = parse_secret_document("s", text) {
        let message = e.to_string();
        assert!(!message.contains(MARKER), "{text} → {message}");
    }
}

// --- return URLs -----------------------------------------------------------------------

fn return_urls() -> ReturnUrls {
    let entries = ALLOWED.map(|entry| Url::parse(entry).expect("an allow-list entry"));
    ReturnUrls::new(&entries)
}

/// The harness's allow-list: an origin, a prefix ending in `/` and one that does not.
const ALLOWED: [&str; 3] = [
    "https://app.example.com",
    "https://app.example.com:8443/settings/",
    "http://127.0.0.1:3000/done",
];

/// Whether `url` is allowed, by the documented rule (docs/settings.md) rather than the code's: same scheme,
/// host and port as an entry, and the entry's path itself or below it.
fn allowed_by_rule(url: &Url) -> bool {
    ALLOWED.iter().any(|entry| {
        let entry = Url::parse(entry).expect("an allow-list entry");
        let below = |prefix: &str| {
            let dir = if prefix.ends_with('/') {
                prefix.to_string()
            } else {
                format!("{prefix}/")
            };
            url.path() == prefix || url.path().starts_with(&dir)
        };
        entry.scheme() == url.scheme()
            && entry.host() == url.host()
            && entry.port_or_known_default() == url.port_or_known_default()
            && (entry.path() == "/" || below(entry.path()))
    })
}

/// A candidate return URL: raw input, or one assembled from parts near the allow-list.
fn candidate(data: &[u8]) -> String {
    let mut input = Input(data);
    if input.byte() & 1 == 0 {
        return String::from_utf8_lossy(input.0).into_owned();
    }
    let scheme = input.pick(&["https", "http", "HTTPS", "javascript", "ftp", ""]);
    let user = input.pick(&["", "user@", "user:pw@", "app.example.com@"]);
    let host = input.pick(&[
        "app.example.com",
        "APP.example.com",
        "app.example.com.",
        "app.example.com.evil.test",
        "127.0.0.1",
        "127.1",
        "0x7f.0.0.1",
        "[::1]",
        "evil.test",
        "",
    ]);
    let port = input.pick(&["", ":443", ":8443", ":3000", ":80", ":0", ":99999"]);
    let path = input.pick(&[
        "/",
        "/settings",
        "/settings/",
        "/settings/x",
        "/done",
        "/done/",
        "/done/x",
        "/doneandmore",
        "/settings/../admin",
        "/done/%2e%2e/x",
        "/settings%2fx",
        "\\settings\\x",
        "//evil.test",
        "",
    ]);
    let rest = input.text(32);
    format!("{scheme}://{user}{host}{port}{path}{rest}")
}

/// Return URLs: only URLs the allow-list's rule admits pass, and whatever passes is
/// normalised to a URL that passes again, unchanged, through JSON and with the query
/// the service adds.
pub fn return_url(data: &[u8]) {
    check_return_url(&candidate(data));
}

pub(crate) fn check_return_url(candidate: &str) {
    let urls = return_urls();
    let Some(passed) = urls.check(candidate) else {
        return;
    };
    let url = Url::parse(passed.as_str()).expect("a passed URL parses");
    assert!(
        matches!(url.scheme(), "http" | "https"),
        "{candidate:?} → {url}"
    );
    assert!(
        url.username().is_empty() && url.password().is_none(),
        "{candidate:?} → {url}"
    );
    assert!(url.fragment().is_none(), "{candidate:?} → {url}");
    assert!(allowed_by_rule(&url), "{candidate:?} passed as {url}");
    assert_eq!(
        urls.check(passed.as_str()).as_ref(),
        Some(&passed),
        "{candidate:?}"
    );
    let json = serde_json::to_string(&passed).expect("json");
    let back: ReturnUrl = serde_json::from_str(&json).expect("a return URL from its JSON");
    assert_eq!(back, passed);
    let sent = passed.with_query(&[
        ("status", "connected"),
        ("provider", "google"),
        ("flowId", candidate),
    ]);
    let again = urls
        .check(sent.as_str())
        .expect("the URL the browser is sent to is allowed");
    assert_eq!(Url::parse(again.as_str()).expect("url").path(), url.path());
}

// --- user ids and API keys -------------------------------------------------------------

/// User ids and API keys: an accepted user id is one path segment every route reaches
/// unchanged; JSON and direct parsing agree and errors never quote the value; an API
/// key is accepted by length alone, matches itself only, and never prints.
pub fn identifiers(data: &[u8]) {
    let text = String::from_utf8_lossy(data).into_owned();
    let parsed = UserId::parse(text.clone());
    let from_json = serde_json::from_value::<UserId>(json!(text));
    assert_eq!(parsed.is_ok(), from_json.is_ok(), "{text:?}");
    match parsed {
        Ok(id) => {
            assert_eq!(id.as_str(), text);
            let mut url = Url::parse("http://localhost/v1/users").expect("url");
            url.path_segments_mut()
                .expect("a base URL")
                .push(id.as_str())
                .push("token");
            let reparsed = Url::parse(url.as_str()).expect("the route's URL parses");
            let segments: Vec<&str> = reparsed.path_segments().expect("segments").collect();
            assert_eq!(segments.len(), 4, "{text:?} is not one segment: {reparsed}");
            assert_eq!(percent_decode(segments[2]), text.as_bytes(), "{reparsed}");
        }
        Err(e) => {
            let rule = e.to_string();
            let json_message = from_json.err().map(|e| e.to_string()).unwrap_or_default();
            if text.len() >= 4 && !rule.contains(&text) {
                assert!(!json_message.contains(&text), "{json_message}");
            }
        }
    }
    let key = Zeroizing::new(text);
    match ApiKey::parse(&key) {
        Ok(parsed) => {
            assert!(key.len() >= ApiKey::MIN_LEN);
            assert_eq!(format!("{parsed:?}"), "ApiKey(..)");
            assert!(parsed.is_one_of(std::slice::from_ref(&parsed)));
            let other = ApiKey::parse(&format!("{}x", key.as_str())).expect("longer still");
            assert!(!parsed.is_one_of(&[other]));
        }
        // The error is a unit type naming the rule: it cannot quote the key.
        Err(_) => assert!(key.len() < ApiKey::MIN_LEN),
    }
}

fn percent_decode(segment: &str) -> Vec<u8> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).and_then(|b| hex(*b)),
            bytes.get(i + 2).and_then(|b| hex(*b)),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}
