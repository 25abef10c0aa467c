//! The OpenAPI document of the internal API and the probes: generated from the
//! handlers' annotations and the types they read and answer, served at
//! `GET /openapi.json` (no key: it describes the API, it reveals nothing), and checked in
//! as `docs/openapi.json`, which a test keeps equal to what the code generates.
//!
//! Error answers come from one table, [`ERRORS`]: per operation, each status and the
//! problem `code`s it can carry, documented as the `Problem` schema with `code`
//! narrowed to those values. A unit test checks every listed code against
//! `Error::status` and `Error::code`, so the document cannot name a code the service
//! does not have, or under another status; the schemathesis test checks the live
//! answers against it.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Components, PathItem, Ref, RefOr};
use utoipa::{Modify, OpenApi};

use super::{AppState, Route, api, probes};
use crate::error::{Error, Problem};

/// `GET /openapi.json`.
pub(in crate::http) const OPENAPI_JSON: Route = Route::get("/openapi.json", &[200]);

pub(crate) fn router() -> Router<AppState> {
    Router::new().route(OPENAPI_JSON.template, get(openapi_json))
}

/// `GET /openapi.json` → the document (the same bytes as `docs/openapi.json`).
async fn openapi_json() -> Result<Response, Error> {
    static DOCUMENT: OnceLock<Option<String>> = OnceLock::new();
    let body = DOCUMENT
        .get_or_init(|| document_json().ok())
        .clone()
        .ok_or_else(|| Error::Internal("the OpenAPI document did not serialize".into()))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The document as `docs/openapi.json` holds it: pretty-printed, with a final newline.
pub(crate) fn document_json() -> Result<String, serde_json::Error> {
    let mut json = ApiDoc::openapi().to_pretty_json()?;
    json.push('\n');
    Ok(json)
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "axnt-oauth",
        description = "The internal API: services of the application create connect links for \
            their users and read the users' valid access tokens, connections, flow logs, the \
            audit trail of token reads and the lifecycle events feed. \
            Every `/v1` route needs `Authorization: Bearer <API key>`. Errors are RFC 9457 \
            `application/problem+json` with a stable `code`; each operation lists the codes \
            each status can carry. A method a path does not list is answered 405 \
            `method_not_allowed`, a path not listed here 404 `not_found` (both problems). \
            No answer may be cached (`Cache-Control: no-store`)."
    ),
    paths(
        api::connect_sessions::create_connect_session,
        api::connect_sessions::confirm_connect_session,
        api::tokens::get_token,
        api::connections::list_connections,
        api::connections::list_all_connections,
        api::logs::list_audit,
        api::events::list_events,
        api::connections::delete_connection,
        api::import::import_connections,
        api::whoami::whoami,
        api::logs::list_flow_logs,
        super::risc::receive,
        probes::healthz,
        probes::readyz,
    ),
    components(schemas(Problem, crate::events::WebhookPayload)),
    modifiers(&BearerKey, &ErrorAnswers, &EventWebhook),
    tags(
        (name = "internal", description = "For the application's services; needs an API key"),
        (name = "probes", description = "For the orchestrator; no key"),
        (name = "provider", description = "For the OAuth provider (Google's security events); no key, the token is signed"),
    ),
)]
struct ApiDoc;

/// The webhook every lifecycle event is POSTed as, to each of `AXNT_WEBHOOK_URLS`.
struct EventWebhook;

impl Modify for EventWebhook {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
        use utoipa::openapi::request_body::RequestBodyBuilder;
        use utoipa::openapi::{PathsBuilder, Required};
        let header = |name: &str, description: &str| {
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Header)
                .required(Required::True)
                .description(Some(description))
                .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                .build()
        };
        let operation = OperationBuilder::new()
            .operation_id(Some("connection_event"))
            .summary(Some("A lifecycle event, signed as Standard Webhooks sign"))
            .description(Some(
                "POSTed to each endpoint in AXNT_WEBHOOK_URLS, at least once, in order per \
                 connection. Verify webhook-signature: base64 HMAC-SHA256 of \
                 `{webhook-id}.{webhook-timestamp}.{body}` under the bytes of the secret \
                 (AXNT_WEBHOOK_SECRET, `whsec_` + base64), prefixed `v1,`.",
            ))
            .parameters(Some([
                header(
                    "webhook-id",
                    "The event's id (also the feed's); de-duplicate on it",
                ),
                header("webhook-timestamp", "Epoch seconds of this attempt"),
                header(
                    "webhook-signature",
                    "`v1,` + base64 HMAC-SHA256 (space-separated list)",
                ),
            ]))
            .request_body(Some(
                RequestBodyBuilder::new()
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("WebhookPayload")))
                            .build(),
                    )
                    .required(Some(Required::True))
                    .build(),
            ))
            .response(
                "2XX",
                ResponseBuilder::new()
                    .description("Delivered; any other answer (or none in time) is retried")
                    .build(),
            )
            .build();
        openapi.webhooks = Some(
            PathsBuilder::new()
                .path(
                    "connectionEvent",
                    PathItem::new(HttpMethod::Post, operation),
                )
                .build(),
        );
    }
}

/// The schemes the `/v1` operations name, as alternatives: `bearerAuth` (an API key),
/// `workloadToken` (an OIDC caller's JWT) and `awsIam` (an IAM caller's signed
/// `sts:GetCallerIdentity`).
struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityRequirement};
        let components = openapi.components.get_or_insert_with(Components::new);
        components.add_security_scheme(
            "bearerAuth",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "One of the configured API keys (AXNT_API_KEYS, AXNT_CALLERS apiKey)",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "workloadToken",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A workload token (RS256 or ES256 JWT) from the issuer of an AXNT_CALLERS oidc caller, for its audience, carrying its bound claims",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "awsIam",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "`AWS-IAM ` and the base64 of {\"method\", \"url\", \"headers\", \"body\"}: an sts:GetCallerIdentity request signed (SigV4) for this service's STS endpoint with X-Axnt-Server-Id (AXNT_IAM_SERVER_ID) among its signed headers, by the role or user of an AXNT_CALLERS iamArn caller",
            ))),
        );
        // Wherever an API key is asked for, the other kinds of caller may call too.
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                let Some(security) = operation.security.as_mut() else {
                    continue;
                };
                let names_key = serde_json::to_value(&*security)
                    .is_ok_and(|v| v.to_string().contains("\"bearerAuth\""));
                if names_key {
                    security.push(SecurityRequirement::new(
                        "workloadToken",
                        Vec::<String>::new(),
                    ));
                    security.push(SecurityRequirement::new("awsIam", Vec::<String>::new()));
                }
            }
        }
    }
}

/// Error statuses, each with the problem codes it can carry.
type Answers = &'static [(u16, &'static [&'static str])];

/// Statuses and codes every `/v1` operation can answer: the key check and its brake
/// run before any handler, any request can run out of time, and while start-up waits
/// for a dependency only the probes are served.
const EVERY_API_ROUTE: Answers = &[
    (401, &["unauthorized"]),
    (403, &["caller_not_allowed"]),
    (408, &["request_timeout"]),
    (429, &["rate_limited"]),
    (503, &["starting", "identity_unavailable"]),
];

/// The store's failures, as any route that reads or writes it can answer them.
const STORE: (u16, &[&str]) = (503, &["store_unavailable", "store_throttled"]);

/// Per operation (its `operationId`), the error statuses and codes it can answer
/// besides [`EVERY_API_ROUTE`] for `/v1` routes. An empty `{provider}` (the path's last
/// segment) matches no route: 404 `not_found`; an empty or otherwise bad `{userId}` is
/// matched and refused: 400 `invalid_request`.
const ERRORS: &[(&str, Answers)] = &[
    (
        "create_connect_session",
        &[
            (
                400,
                &[
                    "invalid_request",
                    "return_url_not_allowed",
                    "unknown_client",
                ],
            ),
            (404, &["unknown_provider", "not_connected"]),
            (413, &["payload_too_large"]),
            (415, &["unsupported_media_type"]),
            (500, &["internal"]),
            STORE,
        ],
    ),
    (
        "confirm_connect_session",
        &[
            (400, &["invalid_request"]),
            (404, &["confirmation_not_found"]),
            (409, &["concurrent_update"]),
            (410, &["confirmation_expired"]),
            (413, &["payload_too_large"]),
            (500, &["stored_tokens_unreadable", "internal"]),
            (
                503,
                &["store_unavailable", "store_throttled", "keys_unavailable"],
            ),
        ],
    ),
    (
        "get_token",
        &[
            (400, &["invalid_request", "return_url_not_allowed"]),
            (403, &["insufficient_scope"]),
            (404, &["not_found", "unknown_provider", "not_connected"]),
            (409, &["reauthorization_required"]),
            (500, &["stored_tokens_unreadable", "internal"]),
            (502, &["provider_error"]),
            (
                503,
                &[
                    "provider_unavailable",
                    "provider_not_configured",
                    "refresh_in_progress",
                    "store_unavailable",
                    "store_throttled",
                    "keys_unavailable",
                    "audit_unavailable",
                ],
            ),
        ],
    ),
    ("list_connections", &[(400, &["invalid_request"]), STORE]),
    (
        "list_all_connections",
        &[(400, &["invalid_request"]), STORE],
    ),
    ("list_audit", &[(400, &["invalid_request"]), STORE]),
    ("list_events", &[(400, &["invalid_request"]), STORE]),
    (
        "receive",
        &[
            (400, &["invalid_security_event"]),
            (
                503,
                &[
                    "provider_unavailable",
                    "provider_not_configured",
                    "store_unavailable",
                    "store_throttled",
                ],
            ),
        ],
    ),
    (
        "delete_connection",
        &[
            (400, &["invalid_request"]),
            (404, &["not_found", "unknown_provider", "not_connected"]),
            (409, &["concurrent_update"]),
            STORE,
        ],
    ),
    (
        "import_connections",
        &[
            (400, &["invalid_request"]),
            (404, &["not_found", "unknown_provider"]),
            (
                409,
                &[
                    "already_connected",
                    "reauthorization_required",
                    "concurrent_update",
                ],
            ),
            (413, &["payload_too_large"]),
            (415, &["unsupported_media_type"]),
            (500, &["stored_tokens_unreadable", "internal"]),
            (502, &["provider_error"]),
            (
                503,
                &[
                    "provider_unavailable",
                    "provider_not_configured",
                    "refresh_in_progress",
                    "store_unavailable",
                    "store_throttled",
                    "keys_unavailable",
                ],
            ),
        ],
    ),
    ("list_flow_logs", &[(400, &["invalid_request"]), STORE]),
    ("whoami", &[]),
    ("healthz", &[]),
    ("readyz", &[]),
];

/// Adds each operation's error answers from [`ERRORS`].
struct ErrorAnswers;

impl Modify for ErrorAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let api_route = path.starts_with("/v1/");
            for operation in operations(item) {
                let id = operation.operation_id.as_deref().unwrap_or_default();
                let own = ERRORS
                    .iter()
                    .find(|(op, _)| *op == id)
                    .map(|(_, errors)| *errors)
                    .unwrap_or_default();
                let common = if api_route { EVERY_API_ROUTE } else { &[] };
                let mut by_status: BTreeMap<u16, Vec<&str>> = BTreeMap::new();
                for (status, codes) in common.iter().chain(own) {
                    by_status.entry(*status).or_default().extend(codes.iter());
                }
                for (status, codes) in by_status {
                    operation
                        .responses
                        .responses
                        .insert(status.to_string(), RefOr::T(problem_answer(status, &codes)));
                }
            }
        }
    }
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// A problem+json answer whose `code` is one of `codes`, with the headers its status
/// brings (`Retry-After` on 429 and 503, `WWW-Authenticate` on 401).
fn problem_answer(status: u16, codes: &[&str]) -> utoipa::openapi::Response {
    let schema = AllOfBuilder::new()
        .item(Ref::from_schema_name("Problem"))
        .item(
            ObjectBuilder::new()
                .property(
                    "code",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .enum_values(Some(codes.iter().copied())),
                )
                .required("code"),
        );
    let reason = axum::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let listed = codes
        .iter()
        .map(|c| format!("`{c}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut answer = ResponseBuilder::new()
        .description(format!("{reason}: `code` is {listed}"))
        .content(
            "application/problem+json",
            ContentBuilder::new().schema(Some(schema)).build(),
        );
    if status == 429 || status == 503 {
        answer = answer.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(0)),
                ))
                .description(Some("Seconds to wait before retrying"))
                .build(),
        );
    }
    if status == 401 {
        answer = answer.header(
            "WWW-Authenticate",
            HeaderBuilder::new()
                .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                .description(Some("`Bearer`"))
                .build(),
        );
    }
    answer.build()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    /// `docs/openapi.json` is what the code generates. `UPDATE_OPENAPI=1 cargo test
    /// openapi` rewrites it.
    #[test]
    fn openapi_document_matches_docs_openapi_json() {
        let generated = document_json().expect("the document serializes");
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
        if std::env::var_os("UPDATE_OPENAPI").is_some_and(|v| v == "1") {
            std::fs::write(&file, &generated).expect("write docs/openapi.json");
            return;
        }
        let checked_in = std::fs::read_to_string(&file).unwrap_or_default();
        let first_difference = checked_in
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(|| "its length".to_string(), |i| format!("line {}", i + 1));
        assert!(
            checked_in == generated,
            "docs/openapi.json differs from the document the code generates, first at \
             {first_difference} (an annotation, a request or answer type, or the error table \
             changed). Regenerate it with `UPDATE_OPENAPI=1 cargo test openapi` and commit it."
        );
    }

    /// Every code the document lists under a status is one `Error` answers with that
    /// status.
    #[test]
    fn every_documented_code_is_an_error_with_that_status() {
        let known: BTreeSet<(u16, &str)> = crate::error::one_of_each()
            .iter()
            .map(|e| (e.status().as_u16(), e.code()))
            .collect();
        for (op, errors) in ERRORS
            .iter()
            .chain([("every /v1 route", EVERY_API_ROUTE)].iter())
        {
            for (status, codes) in errors.iter() {
                for code in codes.iter() {
                    assert!(
                        known.contains(&(*status, *code)),
                        "{op}: error.rs answers no {status} with code {code:?}"
                    );
                }
            }
        }
    }

    /// The table names each documented operation once, and nothing else.
    #[test]
    fn the_error_table_names_the_documented_operations() {
        let doc = ApiDoc::openapi();
        let mut documented: Vec<String> = doc
            .paths
            .paths
            .values()
            .cloned()
            .flat_map(|mut item| {
                operations(&mut item)
                    .filter_map(|o| o.operation_id.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        documented.sort();
        let mut tabled: Vec<String> = ERRORS.iter().map(|(op, _)| op.to_string()).collect();
        tabled.sort();
        assert_eq!(documented, tabled);
    }
}
