//! The id of one connect flow: made when a connect link is minted, carried sealed in
//! the link and the state, named by the confirm route, and the key of its flow-log
//! items and held grant.

use serde::Deserialize;

/// A connect flow's id: 1–64 ASCII letters, digits and `-` (a UUID when this service
/// makes it). The one place that says what a flow id may be.
///
/// Deserializing applies the rule (`try_from`), so a path or a sealed session with a bad id is
/// refused before a handler runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub(crate) struct FlowId(String);

/// Why a flow id was refused; names the rule, never the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("flowId must be a flow id from POST /v1/connect-sessions")]
pub(crate) struct InvalidFlowId;

impl FlowId {
    const MAX_LEN: usize = 64;

    /// A new flow's id.
    pub(crate) fn new() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    pub(crate) fn parse(text: impl Into<String>) -> Result<Self, InvalidFlowId> {
        let text = text.into();
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b == b'-';
        if text.is_empty() || text.len() > Self::MAX_LEN || !text.bytes().all(allowed) {
            return Err(InvalidFlowId);
        }
        Ok(Self(text))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

super::text_id!(FlowId, InvalidFlowId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        assert!(FlowId::parse("0190a1b2-c3d4-4e5f-8a9b-0c1d2e3f4a5b").is_ok());
        assert!(FlowId::parse("x".repeat(64)).is_ok());
        assert!(FlowId::parse(FlowId::new().as_str()).is_ok());
        for bad in ["", "a/b", "a b", "a_b", "é", "a.b"] {
            assert_eq!(FlowId::parse(bad), Err(InvalidFlowId), "{bad:?}");
        }
        assert_eq!(FlowId::parse("x".repeat(65)), Err(InvalidFlowId));
        assert!(serde_json::from_str::<FlowId>("\"a/b\"").is_err());
        assert_eq!(
            serde_json::to_string(&FlowId::parse("f-1").expect("valid")).expect("json"),
            "\"f-1\""
        );
    }
}
