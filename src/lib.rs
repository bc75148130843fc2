//! whatsapp-webhook: the WhatsApp channel of the OpenParallax agent.
//!
//! [`domain`] holds the small shared types and imports no adapter. Ports (traits) sit at
//! every I/O boundary: [`state::SessionStore`], [`engine::Engine`] and
//! [`graph::Messenger`], each with a real and an in-memory implementation.
//! [`app::App`] is the pipeline: the HTTP edge and payload walk in [`webhook`], the
//! turn runner in [`turn`]; [`server`] runs it as a local HTTP server or as a Lambda
//! function, and [`wiring`] builds it from the [`config`].

pub mod app;
pub mod chat;
pub mod commands;
pub mod config;
pub mod domain;
pub mod engine;
pub mod format;
pub mod graph;
pub mod metrics;
pub mod queue;
pub mod secrets;
pub mod server;
pub mod split;
pub mod state;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod turn;
pub mod webhook;
pub mod wiring;
