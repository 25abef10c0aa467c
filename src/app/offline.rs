//! The services a command works with while it does not serve (`import`, `export`): the
//! stores, keys, secrets and providers the service assembles, the token service, flow
//! log and audit trail over them; no listener and no periodic job. [`Offline::close`]
//! waits for refreshes still in flight and writes what the audit trail and flow log
//! still hold.

use super::*;

/// The services of a command.
pub(crate) struct Offline {
    pub(crate) tokens: Arc<TokenService>,
    pub(crate) store: Arc<dyn crate::store::TokenStore>,
    pub(crate) cipher: Arc<EnvelopeCipher>,
    pub(crate) flow_log: Arc<FlowRecorder>,
    pub(crate) audit: Arc<crate::audit::AuditTrail>,
    log: Arc<dyn FlowLog>,
    settler: Option<Arc<Settler>>,
}

impl Offline {
    /// Opens the backends the settings name and loads the secrets (once: a command
    /// reports a dependency that is away rather than waiting for it).
    pub(crate) async fn open(settings: Settings) -> Result<Self, StartupError> {
        let settings = Arc::new(settings);
        let backends = Backends::open(&settings).await?;
        let loaded = load_secrets(&settings, &backends).await?;
        let providers = Arc::new(assembly::build_providers(&settings, &loaded)?);
        let events = assembly::event_rules(&settings, &backends);
        let (flow_log, tokens) = assembly::token_service(&settings, &backends, providers, events);
        let audit = assembly::audit_trail(&settings, &backends);
        Ok(Self {
            tokens,
            store: Arc::clone(&backends.tokens),
            cipher: Arc::new(EnvelopeCipher::new(
                Arc::clone(&backends.keys),
                settings.aws.tokens_table.clone(),
            )),
            flow_log,
            audit,
            log: backends.flow_log,
            settler: backends.settler,
        })
    }

    /// Ends the command's work: refreshes in flight store what they redeemed, then the
    /// audit trail and the flow log write what they hold. Returns whether all did
    /// within `within`.
    pub(crate) async fn close(&self, within: Duration) -> bool {
        let started = Instant::now();
        let drained = self.tokens.drain(within).await;
        self.audit
            .close(within.saturating_sub(started.elapsed()))
            .await;
        if let Some(settler) = &self.settler {
            settler
                .close(within.saturating_sub(started.elapsed()))
                .await;
        }
        let flushed = match self.log.flush().await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "flushing flow-log writes failed");
                false
            }
        };
        drained && flushed
    }
}
