//! `axnt-oauth check`: the operator's self-test. One line per check, pass or fail
//! with a hint an operator can act on: configuration, the secret, a key round trip,
//! a probe write, read and delete in the tokens table, a write and read in the logs
//! table, and the provider's discovery document. Exit code 0 only when all pass.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use crate::app::{Backends, StartupError};
use crate::config::{Backend, Settings};
use crate::crypto::{Envelope, EnvelopeCipher, random_token};
use crate::events::{EventRules, PROBE_KIND};
use crate::oauth::provider::{OidcProvider, ProviderConfig, ProviderLimits};
use crate::secrets::SecretsCache;
use crate::store::flow_log::SortKeyClock;
use crate::store::{Connection, FlowLogEntry, FlowStep, UserInfo, event_bound};

/// One check's outcome, printed as one line.
struct Outcome {
    name: &'static str,
    result: Result<String, (String, String)>,
}

impl Outcome {
    fn print(&self) {
        match &self.result {
            Ok(detail) => println!("ok    {:<22} {detail}", self.name),
            Err((error, hint)) => println!("FAIL  {:<22} {error} — hint: {hint}", self.name),
        }
    }
}

pub(crate) async fn check(settings: Settings) -> i32 {
    let mut outcomes = vec![Outcome {
        name: "configuration",
        result: Ok(format!(
            "valid: backend {:?}, redirect URI {}",
            settings.backend,
            settings.redirect_uri("google")
        )),
    }];
    let backends = match Backends::open(&settings).await {
        Ok(b) => b,
        Err(e) => {
            outcomes.push(Outcome {
                name: "backends",
                result: Err((e.to_string(), startup_hint(&e))),
            });
            return finish(&outcomes);
        }
    };

    let secrets = SecretsCache::load(
        Arc::clone(&backends.secrets),
        Default::default(),
        Default::default(),
    )
    .await;
    let client_configured = settings.secrets.client_id.is_some()
        || secrets.as_ref().is_ok_and(|s| s.current().client.is_some());
    if settings.backend == Backend::Aws {
        outcomes.push(Outcome {
            name: "secret",
            result: match &secrets {
                Ok(s) => Ok(format!("{}: readable and well formed", s.source_name())),
                Err(e) => Err((e.to_string(), secret_hint(e, &settings))),
            },
        });
    }
    // In aws mode an unreadable secret is reported once, on the "secret" line.
    if settings.backend == Backend::Embedded || secrets.is_ok() {
        outcomes.push(Outcome {
            name: "client credentials",
            result: match (&secrets, client_configured) {
                (Err(e), _) => Err((e.to_string(), secret_hint(e, &settings))),
                (Ok(s), true) => Ok(format!("present ({})", s.source_name())),
                (Ok(s), false) => Err((
                    format!("no client id and secret in {}", s.source_name()),
                    "set AXNT_GOOGLE_CLIENT_ID and AXNT_GOOGLE_CLIENT_SECRET, or store them in the secret".into(),
                )),
            },
        });
    }

    // In aws mode the round trip goes to KMS itself: the data-key cache would answer
    // the Decrypt without asking KMS.
    let keys = match settings.backend {
        Backend::Aws => crate::app::uncached_key_provider(&settings).await,
        Backend::Embedded => Arc::clone(&backends.keys),
    };
    let cipher = EnvelopeCipher::new(Arc::clone(&keys), settings.aws.tokens_table.clone());
    let probe_user = "__axnt_check__";
    let probe_provider = format!("check-{}", random_token(6));
    let sealed = cipher
        .seal(probe_user, &probe_provider, b"round trip")
        .await;
    let round_trip = match &sealed {
        Ok(env) => match cipher.open(probe_user, &probe_provider, env).await {
            Ok(p) if p.as_slice() == b"round trip" => Ok(keys.describe()),
            Ok(_) => Err("decrypted data differs".to_string()),
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(e.to_string()),
    };
    outcomes.push(Outcome {
        name: "key round trip",
        result: round_trip.map_err(|e| {
            (
                e,
                match settings.backend {
                    Backend::Aws => format!(
                        "AXNT_KMS_KEY_ID ({}) must name a key or alias in AWS_REGION, enabled, whose key policy and \
                         the IAM policy allow kms:GenerateDataKey and kms:Decrypt (deploy/iam-policy.json)",
                        settings.aws.kms_key_id
                    ),
                    Backend::Embedded => {
                        "the key must allow GenerateDataKey and Decrypt for this identity".into()
                    }
                },
            )
        }),
    });

    // The table check runs even when the key check failed: a placeholder envelope is
    // enough to prove write, read and delete.
    {
        let envelope = sealed.unwrap_or_else(|_| Envelope {
            v: 1,
            alg: "AES-256-GCM".into(),
            key_id: "check:placeholder".into(),
            edk: String::new(),
            iv: String::new(),
            ct: String::new(),
        });
        let now = Utc::now();
        let row = Connection {
            user_id: probe_user.into(),
            provider: probe_provider.clone(),
            email: None,
            encrypted_tokens: envelope,
            user_info: UserInfo {
                sub: "check".into(),
                ..UserInfo::default()
            },
            created_at: now,
            updated_at: now,
            last_used: now,
            access_token_expires_at: now.timestamp(),
            expires_at: now.timestamp() + 3600,
            is_active: false,
            replaced_account: None,
            grant: Default::default(),
            version: 1,
            refresh: Default::default(),
        };
        let result = async {
            backends
                .tokens
                .put(&row, None, &[])
                .await
                .map_err(|e| ("write", e))?;
            let back = backends
                .tokens
                .get(probe_user, &probe_provider)
                .await
                .map_err(|e| ("read", e))?;
            if back.as_ref().map(|r| r.version) != Some(1) {
                return Err((
                    "read",
                    crate::store::StoreError::Corrupt("probe item did not read back".into()),
                ));
            }
            // The removal carries a probe event, as a connection's removal carries its
            // `connection.deleted`: one transaction over both tables (never served).
            let probe = EventRules {
                retention: Duration::from_secs(3600),
                ..EventRules::default()
            }
            .probe(probe_user, &probe_provider);
            // The store stamps the event as it writes it: it is found between then and
            // now, by its kind and probe key.
            let before = Utc::now().timestamp_millis();
            backends
                .tokens
                .delete(probe_user, &probe_provider, 1, std::slice::from_ref(&probe))
                .await
                .map_err(|e| ("delete with an event", e))?;
            let read = backends
                .tokens
                .events_between(
                    &event_bound(before),
                    &event_bound(Utc::now().timestamp_millis() + 1),
                    1000,
                )
                .await
                .map_err(|e| ("event read", e))?;
            if !read.iter().any(|e| {
                e.kind == PROBE_KIND && e.user_id == probe_user && e.provider == probe_provider
            }) {
                return Err((
                    "event read",
                    crate::store::StoreError::Corrupt("probe event did not read back".into()),
                ));
            }
            Ok(())
        }
        .await;
        outcomes.push(Outcome {
            name: "tokens table",
            result: result
                .map(|()| {
                    format!(
                        "{} and {}: write, read and delete of a probe item, with a probe event",
                        settings.aws.tokens_table, settings.aws.events_table
                    )
                })
                .map_err(|(op, e)| (format!("{op}: {e}"), crate::store::hint(&e))),
        });
    }

    let entry = FlowLogEntry {
        user_id: probe_user.into(),
        timestamp: SortKeyClock::default().next_key(Utc::now()),
        flow_id: "check".into(),
        step: FlowStep::SessionCreated,
        data: serde_json::Map::new(),
        error: None,
        ip_address: None,
        user_agent: Some("axnt-oauth check".into()),
        expires_at: Utc::now().timestamp() + 3600,
    };
    let result = async {
        backends
            .flow_log
            .append(&entry)
            .await
            .map_err(|e| ("write", e))?;
        backends.flow_log.flush().await.map_err(|e| ("write", e))?;
        let items = backends
            .flow_log
            .list(probe_user, 5, None)
            .await
            .map_err(|e| ("read", e))?;
        if !items.iter().any(|i| i.timestamp == entry.timestamp) {
            return Err((
                "read",
                crate::store::StoreError::Corrupt("probe item did not read back".into()),
            ));
        }
        Ok(())
    }
    .await;
    outcomes.push(Outcome {
        name: "logs table",
        result: result
            .map(|()| {
                format!(
                    "{}: write and read of a probe item",
                    settings.aws.logs_table
                )
            })
            .map_err(|(op, e)| (format!("{op}: {e}"), crate::store::hint(&e))),
    });

    if let Ok(secrets) = secrets {
        for entry in &settings.providers {
            let configured = if entry.name == "google" {
                client_configured
            } else {
                entry.client_id.is_some() || entry.secret_id.is_some()
            };
            if configured {
                outcomes.push(discovery(&settings, entry, &secrets).await);
            }
        }
    }
    finish(&outcomes)
}

/// Whether the provider's discovery document (and keys) can be fetched.
async fn discovery(
    settings: &Settings,
    entry: &crate::config::ProviderEntry,
    secrets: &Arc<SecretsCache>,
) -> Outcome {
    let provider = ProviderConfig::from_entry(entry)
        .map_err(|e| (e.to_string(), "fix the provider's settings".to_string()))
        .and_then(|config| {
            let issuer = config.issuer.clone();
            OidcProvider::new(
                config,
                Arc::clone(secrets),
                ProviderLimits::from_settings(settings),
            )
            .map(|p| (p, issuer))
            .map_err(|e| (e.to_string(), "fix the provider's settings".to_string()))
        });
    let result = match provider {
        Ok((provider, _)) if provider.config().profile.endpoints.is_some() => Ok(format!(
            "{}: OAuth 2 endpoints from its settings, nothing to discover",
            entry.name
        )),
        Ok((provider, issuer)) => provider
            .check_discovery()
            .await
            .map(|()| format!("{}: {issuer} answers", entry.name))
            .map_err(|e| {
                (
                    format!("{}: {e}", entry.name),
                    format!(
                        "check {} and outbound HTTPS from this host",
                        entry.setting("issuer")
                    ),
                )
            }),
        Err(e) => Err(e),
    };
    Outcome {
        name: "provider discovery",
        result,
    }
}

fn finish(outcomes: &[Outcome]) -> i32 {
    outcomes.iter().for_each(Outcome::print);
    let failed = outcomes.iter().filter(|o| o.result.is_err()).count();
    if failed == 0 {
        println!("all {} checks passed", outcomes.len());
        0
    } else {
        println!("{failed} of {} checks failed", outcomes.len());
        1
    }
}

/// What to look at when the secret cannot be used.
fn secret_hint(e: &crate::secrets::SecretError, settings: &Settings) -> String {
    use crate::secrets::SecretError;
    match e {
        SecretError::Malformed { .. } => "check the secret's JSON: client_id and client_secret, or Google's downloaded file; state_key base64 of 32 bytes; api_keys a list".into(),
        SecretError::NotFound(_) => format!(
            "create the secret {} in AWS_REGION, or point AXNT_GOOGLE_SECRET_ID at it (see `axnt-oauth setup`)",
            settings.aws.secret_id
        ),
        SecretError::AccessDenied { .. } => "the IAM policy must allow secretsmanager:GetSecretValue and DescribeSecret on the secret (deploy/iam-policy.json)".into(),
        SecretError::Unavailable(_) => "Secrets Manager cannot be reached: check AWS_REGION, AWS_ENDPOINT_URL and the network".into(),
        SecretError::Rejected(_) => "Secrets Manager refused the request: check AWS_REGION and credentials, and that the secret's KMS key is enabled and usable by this role".into(),
    }
}

fn startup_hint(e: &StartupError) -> String {
    match e {
        StartupError::DataDir { .. } => "AXNT_DATA_DIR must be a writable directory".into(),
        StartupError::Store(s) => crate::store::hint(s),
        StartupError::Crypto(_) => "the key file or key service is unusable".into(),
        StartupError::Secret(_) => "check the secret's name, region and JSON".into(),
        StartupError::Aws(_) => "set AWS_REGION (and credentials) as the AWS SDK expects".into(),
        _ => "see the message".into(),
    }
}
