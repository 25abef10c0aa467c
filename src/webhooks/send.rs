//! One signed delivery: the POST of one event to one endpoint, signed as Standard
//! Webhooks sign, and what came of it.

use super::*;
use crate::events::WebhookPayload;

/// What one attempt came to.
pub(super) enum Attempt {
    Delivered,
    Failed(String),
}

impl Webhooks {
    /// One signed POST of `event`.
    pub(super) async fn attempt(&self, endpoint: &Endpoint, event: &Event) -> Attempt {
        let Some(secret) = self.secret() else {
            count(endpoint, Delivery::Failed);
            return Attempt::Failed(
                "no webhook secret (AXNT_WEBHOOK_SECRET or the secret's webhook_secret)".into(),
            );
        };
        let body = match serde_json::to_vec(&WebhookPayload::of(event)) {
            Ok(body) => body,
            Err(e) => {
                count(endpoint, Delivery::Failed);
                return Attempt::Failed(format!("the event does not serialize: {e}"));
            }
        };
        let timestamp = Utc::now().timestamp();
        let signature = secret.sign(&event.id, timestamp, &body);
        let sent = self
            .client
            .post(endpoint.url.clone())
            .header("content-type", "application/json")
            .header("webhook-id", &event.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {
                count(endpoint, Delivery::Delivered);
                Attempt::Delivered
            }
            Ok(r) => {
                count(endpoint, Delivery::Failed);
                Attempt::Failed(format!("answered {}", r.status().as_u16()))
            }
            Err(e) => {
                count(endpoint, Delivery::Failed);
                // Without the URL: it may carry the receiver's own token.
                Attempt::Failed(e.without_url().to_string())
            }
        }
    }
}
