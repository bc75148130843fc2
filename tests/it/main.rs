//! The integration tests, one binary (the AWS SDK and the app are linked once), one
//! module per area, as zero2prod's `tests/api/`. Shared helpers live in [`helpers`]
//! (the wiremock harness), [`moto`] (moto_server for DynamoDB) and
//! [`openparallax_fake`] (a WebSocket server that behaves like the engine); in-process
//! fakes come from the crate's `test-util` feature (`whatsapp_webhook::testing`).
//! `tests/load.rs` stays a binary of its own: `make load` runs it alone, in release.

mod helpers;
mod moto;
mod openparallax_fake;

mod approvals;
mod batch;
mod cli;
mod config_docs;
mod crash_recovery;
mod dynamodb_store;
mod dynamodb_webhook;
mod lambda_events;
mod lambda_proptest;
mod lambda_runtime;
mod metrics;
mod openparallax_engine;
mod openparallax_webhook;
mod payload_proptest;
mod privacy;
mod queued;
mod secrets;
mod serve;
mod webhook;
