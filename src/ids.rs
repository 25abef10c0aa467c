//! The ids requests bring, each parsed once where it enters (a path, a body, a sealed
//! link) by the one rule that says what it may be, then carried typed.

/// What every id shares: read, shown and serialized as the text it is (stores, logs
/// and labels take text), and made from text only by its rule (`parse`).
macro_rules! text_id {
    ($id:ident, $invalid:ident) => {
        impl std::ops::Deref for $id {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $id {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl serde::Serialize for $id {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl TryFrom<String> for $id {
            type Error = $invalid;

            fn try_from(text: String) -> Result<Self, $invalid> {
                Self::parse(text)
            }
        }
    };
}
use text_id;

mod flow_id;
mod user_id;

pub(crate) use flow_id::FlowId;
pub(crate) use user_id::UserId;
