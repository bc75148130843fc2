//! Meta's side of the pipeline: the HTTP edge ([`edge`]: routing, verification,
//! signature, status codes), the payload model ([`payload`]) and its walk
//! ([`walk`]), who is let in under which state key ([`identity`]), and the
//! in-process hand-over of a busy sender's requests ([`rapid_fire`]).

pub mod edge;
pub mod identity;
pub mod payload;
pub mod rapid_fire;
pub mod signature;
pub mod verify;
pub mod walk;
