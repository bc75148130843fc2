//! The webhook: Meta's verification GET, signed POSTs, the payload model and the
//! pipeline that answers each message.

pub mod handler;
pub mod payload;
pub mod rapid_fire;
pub mod signature;
pub mod verify;

pub use handler::{App, AppOptions, Clock};
