//! whatsapp-webhook: the WhatsApp channel of the OpenParallax agent.
//!
//! Ports (traits) sit at every I/O boundary: [`state::SessionStore`],
//! [`engine::Engine`] and [`graph::Messenger`], each with a real and an in-memory
//! implementation. [`webhook::App`] is the pipeline; [`server`] runs it as a local
//! HTTP server or as a Lambda function.

pub mod app;
pub mod commands;
pub mod config;
pub mod domain;
pub mod engine;
pub mod format;
pub mod graph;
pub mod server;
pub mod split;
pub mod state;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod turn;
pub mod webhook;
pub mod wiring;
