//! Property tests over the fuzz targets' entry points, in the normal suite: arbitrary
//! bytes through every entry point, and structured inputs (sessions, mutations, JSON
//! documents, URLs) for the properties random bytes reach too rarely.
//!
//! Case counts are kept low enough that the whole set adds a few seconds to
//! `cargo test`; `PROPTEST_CASES=20000 cargo test --lib fuzz::` runs more.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::Value;

use super::*;

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..512)
}

/// `default` cases, or `PROPTEST_CASES` when set (an explicit count would hide it).
pub(super) fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

fn config(default: u32) -> ProptestConfig {
    ProptestConfig::with_cases(cases(default))
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn sealed_values_hold_for_any_bytes(data in bytes()) {
        sealed_state(&data);
    }

    #[test]
    fn envelopes_hold_for_any_bytes(data in bytes()) {
        envelope(&data);
    }

    #[test]
    fn secret_documents_hold_for_any_bytes(data in bytes()) {
        secret_document(&data);
    }

    #[test]
    fn return_urls_hold_for_any_bytes(data in bytes()) {
        return_url(&data);
    }

    #[test]
    fn identifiers_hold_for_any_bytes(data in bytes()) {
        identifiers(&data);
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        any::<usize>().prop_map(|len| Mutation::Truncate { len }),
        vec(any::<u8>(), 1..8).prop_map(|with| Mutation::Extend { with }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, with)| Mutation::Replace { at, with }),
    ]
}

/// JSON of any shape near the secret's layout; every string is marked at both ends,
/// and some hold the words serde's messages are cut at.
fn planted_json() -> impl Strategy<Value = Value> {
    let text = prop_oneof![
        "[ -~]{0,16}",
        Just(", expected ".to_string()),
        Just(" at line 1".to_string()),
        Just("\", expected a string".to_string()),
    ]
    .prop_map(|middle| Value::from(format!("{MARKER}{middle}{MARKER}")));
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        text,
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..5).prop_map(Value::Array),
            vec((select(SECRET_FIELDS.to_vec()), inner), 0..6).prop_map(|pairs| {
                Value::Object(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

/// Return URLs near the allow-list: its hosts and paths with anything appended.
fn near_allowed_url() -> impl Strategy<Value = String> {
    (
        select(vec![
            "https://", "http://", "HTTPS://", "https:", "https:/", "//",
        ]),
        select(vec!["", "u@", "app.example.com@", "u:p@"]),
        select(vec![
            "app.example.com",
            "APP.EXAMPLE.COM",
            "app.example.com.",
            "app.example.com:443",
            "app.example.com:8443",
            "127.0.0.1:3000",
            "127.0.0.1:3000.evil.test",
            "0177.0.0.1:3000",
            "[::ffff:127.0.0.1]:3000",
        ]),
        select(vec![
            "",
            "/",
            "/settings",
            "/settings/",
            "/done",
            "/done/",
            "/doneX",
        ]),
        "[ -~]{0,24}",
    )
        .prop_map(|(scheme, user, host, path, rest)| format!("{scheme}{user}{host}{path}{rest}"))
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn any_session_round_trips_and_any_mutation_is_refused(
        user_id in any::<String>(),
        flow_id in "[ -~]{0,40}",
        scopes in vec(any::<String>(), 0..4),
        mutation in mutation(),
    ) {
        let sealer = sealer();
        let session = session(&user_id, &flow_id, &scopes, None);
        check_sealed(&sealer, Purpose::ConnectSession, &session, &mutation);
        check_sealed(&sealer, Purpose::AuthorizationState, &session.largest_state(), &mutation);
    }

    #[test]
    fn a_secret_error_never_quotes_the_secret(document in planted_json()) {
        check_planted_document(&document.to_string());
    }

    #[test]
    fn only_allowed_return_urls_pass_and_stay_allowed(candidate in near_allowed_url()) {
        check_return_url(&candidate);
    }

    #[test]
    fn any_text_as_a_return_url(candidate in any::<String>()) {
        check_return_url(&candidate);
    }
}

#[test]
fn the_near_allowed_urls_do_pass_sometimes() {
    // The properties above say something only if some candidates pass.
    for candidate in [
        "https://app.example.com/x?y=1",
        "https://app.example.com:8443/settings/x",
        "http://127.0.0.1:3000/done/x",
    ] {
        assert!(return_urls().check(candidate).is_some(), "{candidate}");
        check_return_url(candidate);
    }
}

#[test]
fn every_mutation_changes_a_sealed_value() {
    let sealer = sealer();
    let text = sealer
        .seal(Purpose::ConnectSession, &session("u", "f", &[], None))
        .expect("seal");
    for mutation in [
        Mutation::FlipBit { at: 0, bit: 0 },
        Mutation::FlipBit { at: 9999, bit: 7 },
        Mutation::Truncate { len: 1 },
        Mutation::Extend { with: vec![0, 1] },
        Mutation::Replace { at: 3, with: 0xff },
    ] {
        assert_ne!(mutation.apply(&text), text, "{mutation:?}");
    }
}
