//! The ids requests bring, each parsed once where it enters (a path, a body, a sealed
//! link) by the one rule that says what it may be, then carried typed.

mod flow_id;
mod user_id;

pub(crate) use flow_id::FlowId;
pub(crate) use user_id::UserId;
