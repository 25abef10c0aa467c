//! Assembly: the secrets loaded (the one dependency start-up waits for), then the
//! services wired over them and their background jobs started.

use super::*;

/// The secrets as loaded: the service's, and each provider's OAuth client that is not
/// in it.
pub(crate) struct LoadedSecrets {
    pub(crate) service: Arc<SecretsCache>,
    pub(crate) clients: Vec<(String, Arc<SecretsCache>)>,
}

impl LoadedSecrets {
    /// Where `provider`'s OAuth client is: its own source, else the service secret.
    pub(crate) fn of(&self, provider: &str) -> &Arc<SecretsCache> {
        self.clients
            .iter()
            .find(|(name, _)| name == provider)
            .map_or(&self.service, |(_, cache)| cache)
    }
}

/// Loads the secrets (the one dependency start-up calls: Secrets Manager in aws mode).
pub(super) async fn load_secrets(
    settings: &Settings,
    backends: &Backends,
) -> Result<LoadedSecrets, StartupError> {
    let service = SecretsCache::load(
        backends.secrets.clone(),
        client_override(settings),
        backends.callers.clone(),
    )
    .await?;
    let mut clients = Vec::with_capacity(backends.client_sources.len());
    for client in &backends.client_sources {
        clients.push((
            client.provider.clone(),
            SecretsCache::load(
                Arc::clone(&client.source),
                client.over.clone(),
                CallerList::default(),
            )
            .await?,
        ));
    }
    Ok(LoadedSecrets { service, clients })
}

/// The configured providers over their clients' secrets, in the order
/// `AXNT_PROVIDERS` lists them.
pub(crate) fn build_providers(
    settings: &Settings,
    secrets: &LoadedSecrets,
) -> Result<Providers, StartupError> {
    let mut providers = Vec::with_capacity(settings.providers.len());
    for entry in &settings.providers {
        let provider = OidcProvider::new(
            ProviderConfig::from_entry(entry)?,
            Arc::clone(secrets.of(&entry.name)),
            ProviderLimits::from_settings(settings),
        )?;
        providers.push(Arc::new(provider));
    }
    Ok(Providers::new(providers))
}

/// Wires the services over loaded secrets and starts their background work. Nothing
/// here calls a dependency, so a failure is a setting to fix, never worth a wait.
pub(super) fn assemble(
    settings: Arc<Settings>,
    backends: Backends,
    loaded: LoadedSecrets,
) -> Result<Running, StartupError> {
    let providers = Arc::new(build_providers(&settings, &loaded)?);
    let secrets = Arc::clone(&loaded.service);
    let state_key = match secrets
        .current()
        .state_key
        .clone()
        .or_else(|| backends.state_key.clone())
    {
        Some(key) => key,
        None if settings.secrets.allow_instance_state_key => {
            tracing::warn!(
                "no state key configured (secret field state_key or AXNT_STATE_KEY): using a per-process key, \
                     so a flow only completes on the instance that started it"
            );
            SecretKey::generate()
        }
        None => {
            return Err(ConfigError {
                    setting: crate::config::env_name("state_key"),
                    reason: "no state key: every instance must seal flows with the same key; put state_key \
                             (base64 of 32 bytes) in the secret or set AXNT_STATE_KEY \
                             (AXNT_ALLOW_INSTANCE_STATE_KEY=true accepts a per-process key, for one instance only)"
                        .into(),
                }
                .into());
        }
    };
    // The two-key window of a state-key rotation: the secret's previous key with
    // the secret's key, the settings' with the settings'.
    let previous_state_key = match secrets.current().state_key {
        Some(_) => secrets.current().previous_state_key.clone(),
        None => backends.previous_state_key.clone(),
    };
    let events = event_rules(&settings, &backends);
    events.warn_if_raised(settings.retention.events_feed_delay);
    if secrets.current().callers.is_empty() {
        tracing::warn!(
            "no API key configured (AXNT_API_KEYS or the secret's api_keys): the internal API rejects every call"
        );
    }
    if !settings.flow.require_confirmation {
        tracing::warn!(
            "AXNT_REQUIRE_CONFIRMATION=false: a connect link stores the grant of whichever account completes it, \
             so a user who forwards his own link can connect a victim's account under his id (forced linking); \
             sessions without expectedEmail or hostedDomain should be confirmed"
        );
    }
    let jobs = Jobs::new();
    if let Some(store) = &backends.expiring {
        store.schedule_purge(&jobs, settings.retention.purge_interval);
    }
    if settings.backend == Backend::Aws {
        let every = settings
            .secrets
            .refresh_interval
            .max(Duration::from_secs(10));
        secrets.schedule_refresh(&jobs, every);
        for (_, client) in &loaded.clients {
            client.schedule_refresh(&jobs, every);
        }
    }
    let provider_names: Vec<String> = settings.providers.iter().map(|p| p.name.clone()).collect();
    let (flow_log, tokens) = token_service(&settings, &backends, providers, events);
    if let Some(every) = settings.refresh.background {
        tokens.schedule_background_refresh(&jobs, every);
    }
    tokens.schedule_cache_sweep(&jobs);
    tokens.schedule_revocation_retries(&jobs, settings.provider.revocation_retry);
    // With the keep-alive off (0 days) the pass still runs, for expiry notices.
    tokens.schedule_keepalive(
        &jobs,
        crate::tokens::KeepAlive {
            idle: settings.refresh.keepalive_idle,
            every: settings.refresh.keepalive_interval,
            per_minute: settings.refresh.keepalive_per_minute,
        },
    );
    if !settings.webhooks.urls.is_empty() {
        let webhooks = crate::webhooks::Webhooks::new(
            crate::webhooks::DeliveryStore::of(&backends.tokens),
            Arc::clone(&secrets),
            delivery_rules(&settings.webhooks),
            events,
        )
        .map_err(|reason| ConfigError {
            setting: crate::config::env_name("webhook_urls"),
            reason,
        })?;
        if !webhooks.has_secret() {
            return Err(ConfigError {
                setting: crate::config::env_name("webhook_secret"),
                reason:
                    "webhook deliveries must be signed: set AXNT_WEBHOOK_SECRET (whsec_ + base64) \
                             or the secret's webhook_secret"
                        .into(),
            }
            .into());
        }
        Arc::new(webhooks).schedule(&jobs);
    }
    let readiness = Readiness::new(
        Arc::clone(&backends.tokens) as Arc<dyn crate::store::Health>,
        Arc::clone(&backends.flow_log),
        Arc::clone(&backends.keys),
        settings
            .providers
            .iter()
            .map(|p| (p.name.clone(), Arc::clone(loaded.of(&p.name))))
            .collect(),
        settings.server.readiness_cache,
    );
    let audit = audit_trail(&settings, &backends);
    audit.schedule_flush(
        &jobs,
        settings.retention.audit_window.min(Duration::from_secs(10)),
    );
    let rate_limits = Arc::new(RateLimits::new(&settings.rate_limit));
    rate_limits.schedule_sweep(&jobs);
    let sealer = Arc::new(StateSealer::new(state_key).with_previous(previous_state_key));
    let connect = Arc::new(crate::connect::ConnectService::new(
        Arc::clone(&tokens),
        Arc::clone(&flow_log),
        Arc::clone(&sealer),
        Arc::clone(&settings),
    ));
    let identity = Arc::new(identity_checks(&settings, &secrets.current().callers)?);
    let state = AppState::new(Services {
        rate_limits,
        return_urls: ReturnUrls::new(&settings.flow.allowed_return_urls),
        trusted_proxies: settings.server.trusted_proxies.clone(),
        settings: Arc::clone(&settings),
        tokens: Arc::clone(&tokens),
        flow_log,
        audit: Arc::clone(&audit),
        sealer,
        connect,
        secrets,
        readiness,
        identity,
        risc: Arc::new(
            crate::oauth::risc::RiscVerifier::new(
                &settings.provider.risc_issuer,
                settings.provider.timeout,
            )
            .map_err(|reason| ConfigError {
                setting: crate::config::env_name("google_risc_issuer"),
                reason,
            })?,
        ),
    });
    if let Some(recorder) = crate::telemetry::metrics() {
        series::register(settings.backend, &provider_names);
        // The recorder keeps every histogram sample until it is drained: by a scrape of
        // /metrics, or here, so memory stays flat when nobody scrapes.
        jobs.run(
            "metrics upkeep",
            crate::jobs::Schedule::every(Duration::from_secs(5)),
            crate::jobs::from_fn(move |_stop| {
                recorder.run_upkeep();
                std::future::ready(())
            }),
        );
    }
    Ok(Running {
        router: http::router(state),
        flow_log: backends.flow_log,
        audit,
        tokens,
        settler: backends.settler,
        jobs,
    })
}

/// The lifecycle events' rules. The feed delay's floor is the store's own write bound:
/// whichever backend it is.
pub(super) fn event_rules(settings: &Settings, backends: &Backends) -> EventRules {
    EventRules::new(
        settings.retention.events_retention,
        settings.retention.events_feed_delay,
        backends.tokens.event_write_bound(),
    )
}

/// The flow log and the token service over the backends and providers.
pub(super) fn token_service(
    settings: &Settings,
    backends: &Backends,
    providers: Arc<Providers>,
    events: EventRules,
) -> (Arc<FlowRecorder>, Arc<TokenService>) {
    let flow_log = Arc::new(FlowRecorder::new(
        Arc::clone(&backends.flow_log),
        settings.retention.flow_log_retention,
    ));
    let cipher = Arc::new(EnvelopeCipher::new(
        Arc::clone(&backends.keys),
        settings.aws.tokens_table.clone(),
    ));
    let tokens = Arc::new(TokenService::new(
        Arc::clone(&backends.tokens),
        cipher,
        providers,
        Arc::clone(&flow_log),
        TokenPolicy::new(settings, events),
    ));
    (flow_log, tokens)
}

/// The audit trail, its writer started on the current runtime.
pub(super) fn audit_trail(
    settings: &Settings,
    backends: &Backends,
) -> Arc<crate::audit::AuditTrail> {
    Arc::new(crate::audit::AuditTrail::new(
        Arc::clone(&backends.audit_log),
        &crate::audit::AuditRules {
            retention: settings.retention.audit_retention,
            window: settings.retention.audit_window,
            capacity: settings.flow_log.audit_buffer,
            wait: settings.flow_log.audit_wait,
            concurrency: settings.flow_log.write_concurrency,
        },
    ))
}

/// How webhooks are delivered, from the settings.
fn delivery_rules(s: &crate::config::WebhookSettings) -> crate::webhooks::DeliveryRules {
    crate::webhooks::DeliveryRules {
        urls: s.urls.clone(),
        secret: s.secret.clone(),
        allow_private: s.allow_private,
        retry_period: s.retry_period,
        first_backoff: s.first_backoff,
        timeout: s.timeout,
        poll: s.poll,
        circuit_open: s.circuit_open,
    }
}

/// The checks of IAM and OIDC callers. IAM callers need `AXNT_IAM_SERVER_ID`; their
/// signed requests go to `AXNT_IAM_STS_ENDPOINT`, else where the AWS SDK would send an
/// STS call: `AWS_ENDPOINT_URL_STS`, `AWS_ENDPOINT_URL`, or the region's endpoint.
fn identity_checks(
    settings: &Settings,
    callers: &CallerList,
) -> Result<crate::callers::IdentityChecks, StartupError> {
    let timeout = settings.provider.timeout;
    let server_id = settings
        .secrets
        .iam_server_id
        .as_deref()
        .map(str::trim)
        .filter(|id| !id.is_empty());
    let iam = match server_id {
        Some(server_id) => {
            let from_env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
            let endpoint = settings
                .secrets
                .iam_sts_endpoint
                .as_ref()
                .map(url::Url::to_string)
                .or_else(|| from_env("AWS_ENDPOINT_URL_STS"))
                .or_else(|| settings.aws_sdk_env.endpoint_url.clone())
                .or_else(|| from_env("AWS_ENDPOINT_URL"));
            let region = settings
                .aws_sdk_env
                .region
                .clone()
                .or_else(|| from_env("AWS_REGION"))
                .or_else(|| from_env("AWS_DEFAULT_REGION"));
            let sts = match (endpoint, region) {
                (Some(endpoint), _) => crate::aws::sts::endpoint(Some(&endpoint), ""),
                (None, Some(region)) => crate::aws::sts::endpoint(None, &region),
                (None, None) => Err(
                    "IAM callers need an STS endpoint: set AWS_REGION (or AXNT_IAM_STS_ENDPOINT)"
                        .to_string(),
                ),
            }
            .and_then(|sts| {
                crate::callers::iam::IamVerifier::new(sts, server_id.to_string(), timeout)
            })
            .map_err(|reason| ConfigError {
                setting: crate::config::env_name("iam_sts_endpoint"),
                reason,
            })?;
            tracing::info!(sts = %sts.host(), "IAM callers are checked with STS");
            Some(sts)
        }
        // The settings' IAM callers were checked at load; the secret's are here.
        None if callers.has_iam() => {
            return Err(ConfigError {
                setting: crate::config::env_name("iam_server_id"),
                reason: "must be set when a caller has iamArn (the secret's callers name one): \
                         IAM callers sign it in X-Axnt-Server-Id"
                    .into(),
            }
            .into());
        }
        None => None,
    };
    Ok(
        crate::callers::IdentityChecks::new(iam, timeout).map_err(|reason| ConfigError {
            setting: crate::config::env_name("callers"),
            reason,
        })?,
    )
}
