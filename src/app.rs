//! The assembled pipeline: [`App`] holds every part a request needs, built once at
//! start ([`crate::wiring`]) and shared by reference. [`AppOptions`] holds the
//! `channels.whatsapp` settings and their defaults, in one place.
//!
//! The parts, in the order a POST meets them: the HTTP edge
//! ([`crate::webhook::edge`]: routing, signature, status codes), the payload walk
//! ([`crate::webhook::walk`]), sender identity and allow policy
//! ([`crate::webhook::identity`]), and the turn runner ([`crate::turn`]: claim,
//! engine, split, send, progress), which does not know it was called from HTTP.

use std::sync::Arc;
use std::time::Duration;

use crate::config::TurnMode;
use crate::domain::{AllowList, Clock, Rotating, Secret};
use crate::engine::Engine;
use crate::format::Format;
use crate::graph::Messenger;
use crate::metrics::{MeteredMessenger, Metrics};
use crate::queue::{LocalQueue, SqsQueue};
use crate::secrets::SecretsRefresher;

use crate::split::MAX_PART_UTF16;
use crate::state::SessionStore;
use crate::turn::{Accepted, Outcome, TurnOptions, TurnRunner};
use crate::webhook::identity::SenderPolicy;
use crate::webhook::rapid_fire::SenderQueues;

/// The handler's settings, taken from `channels.whatsapp`.
#[derive(Debug, Clone)]
pub struct AppOptions {
    pub phone_number_id: String,
    /// Read at each use: rotated in place when secrets come from Secrets Manager.
    pub verify_token: Rotating<Secret>,
    /// Every secret that may have signed a POST (the rotation list); shared with the
    /// turn runner, which signs approval buttons with it.
    pub app_secrets: Rotating<Vec<Secret>>,
    pub allowed_numbers: AllowList,
    /// Username users let in by their business-scoped user id.
    pub allowed_user_ids: Vec<String>,
    /// Quote the user's message in the first part of the reply.
    pub reply_threading: bool,
    /// How the engine's Markdown is rendered.
    pub format: Format,
    pub read_receipts: bool,
    pub unsupported_reply: bool,
    /// How long a message waits for another message of the same sender to be answered
    /// before the delivery is answered 503.
    pub sender_wait: Duration,
    /// Longest reply part, in UTF-16 code units.
    pub max_part_units: usize,
    /// How long a sender's first text waits for quick follow-up lines to join its
    /// turn (in this process); zero: only lines that arrive during a turn are combined.
    pub combine_window: Duration,
    /// Ask Tier 3 approvals with Approve / Deny buttons in WhatsApp (signed with the
    /// app secret); off: a text notice says to approve in the OpenParallax app.
    pub tier3_from_whatsapp: bool,
}

impl AppOptions {
    /// The defaults of `channels.whatsapp` for one phone number: everyone allowed,
    /// WhatsApp formatting, read receipts and the non-text notice on, no threading, no
    /// combine window. The config starts from these, so each default lives here only.
    pub fn new(phone_number_id: &str, verify_token: Secret, app_secrets: Vec<Secret>) -> Self {
        AppOptions {
            phone_number_id: phone_number_id.to_string(),
            verify_token: Rotating::new(verify_token),
            app_secrets: Rotating::new(app_secrets),
            allowed_numbers: AllowList::default(),
            allowed_user_ids: Vec::new(),
            reply_threading: false,
            format: Format::WhatsApp,
            read_receipts: true,
            unsupported_reply: true,
            sender_wait: Duration::from_secs(5),
            max_part_units: MAX_PART_UTF16,
            combine_window: Duration::ZERO,
            tier3_from_whatsapp: false,
        }
    }

    fn turn_options(&self) -> TurnOptions {
        TurnOptions {
            reply_threading: self.reply_threading,
            format: self.format,
            read_receipts: self.read_receipts,
            sender_wait: self.sender_wait,
            max_part_units: self.max_part_units,
            approval_keys: if self.tier3_from_whatsapp {
                self.app_secrets.clone()
            } else {
                Rotating::new(Vec::new())
            },
        }
    }
}

/// Where accepted messages go: answered inside the request, or queued.
pub enum Dispatch {
    /// Sync mode: the reply goes out before the webhook answers 200.
    Sync,
    /// Queued mode, `serve` without a queue URL: in-process per-sender queues.
    Local(Arc<LocalQueue>),
    /// Queued mode on an SQS FIFO queue (the worker is this binary too).
    Sqs(SqsQueue),
}

impl Dispatch {
    pub fn mode(&self) -> TurnMode {
        match self {
            Dispatch::Sync => TurnMode::Sync,
            Dispatch::Local(_) | Dispatch::Sqs(_) => TurnMode::Queued,
        }
    }
}

/// Everything a request needs, built once at start and shared by reference.
pub struct App {
    pub(crate) options: AppOptions,
    pub(crate) senders: SenderPolicy,
    pub(crate) turns: Arc<TurnRunner>,
    pub(crate) dispatch: Dispatch,
    /// Requests waiting while another request of this process answers their sender.
    pub(crate) rapid_fire: SenderQueues<Accepted, Outcome>,
    /// Longest a sync turn may take (engine timeout plus sending): in Lambda, a sync
    /// POST stops starting senders' turns with less left ([`crate::webhook::edge::sync_start_by`]).
    sync_turn_budget: Duration,
    /// Re-reads the Secrets Manager secret when its TTL has passed; `None`: the
    /// secrets came from the environment and never change.
    secrets: Option<SecretsRefresher>,
    /// This app's metrics (shared with the turn runner and the metered messenger).
    pub(crate) metrics: Arc<Metrics>,
}

impl App {
    pub fn new(
        options: AppOptions,
        store: Arc<dyn SessionStore>,
        engine: Arc<dyn Engine>,
        messenger: Arc<dyn Messenger>,
        clock: Clock,
    ) -> Self {
        let metrics = Arc::new(Metrics::default());
        // Every send is counted, whoever sends it (turns, notices, approvals).
        let messenger: Arc<dyn Messenger> =
            Arc::new(MeteredMessenger::new(messenger, metrics.clone()));
        App {
            senders: SenderPolicy::new(
                options.allowed_numbers.clone(),
                options.allowed_user_ids.clone(),
                store.clone(),
                clock.clone(),
            ),
            turns: Arc::new(TurnRunner::new(
                options.turn_options(),
                store,
                engine,
                messenger,
                clock,
                metrics.clone(),
            )),
            rapid_fire: SenderQueues::default(),
            dispatch: Dispatch::Sync,
            sync_turn_budget: Duration::from_secs(
                crate::config::DEFAULT_ENGINE_TIMEOUT_SECS + crate::config::SYNC_SEND_MARGIN_SECS,
            ),
            secrets: None,
            options,
            metrics,
        }
    }

    /// Secrets from Secrets Manager: read again at the start of a delivery or batch
    /// once `refresher`'s TTL has passed.
    pub fn with_secrets(mut self, refresher: SecretsRefresher) -> Self {
        self.secrets = Some(refresher);
        self
    }

    /// Read the secrets again if they are due (cheap when they are not). Called where
    /// a delivery or an SQS batch starts, before any secret is used.
    pub async fn refresh_secrets(&self) {
        if let Some(refresher) = &self.secrets {
            refresher.refresh_if_due().await;
        }
    }

    /// Where accepted messages go (sync unless set); built from the turn runner,
    /// which queue workers share.
    pub fn with_dispatch(mut self, dispatch: impl FnOnce(Arc<TurnRunner>) -> Dispatch) -> Self {
        self.dispatch = dispatch(self.turns.clone());
        self
    }

    /// The longest a sync turn may take (the engine timeout plus sending; by default
    /// that of the default engine timeout).
    pub fn with_sync_turn_budget(mut self, budget: Duration) -> Self {
        self.sync_turn_budget = budget;
        self
    }

    pub fn sync_turn_budget(&self) -> Duration {
        self.sync_turn_budget
    }

    pub fn dispatch(&self) -> &Dispatch {
        &self.dispatch
    }

    /// This app's metrics: EMF lines in Lambda, `/metrics` in `serve` when enabled.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The turn runner (the queue workers share it).
    pub fn turns(&self) -> &Arc<TurnRunner> {
        &self.turns
    }

    /// How many requests wait, in this process, for a turn of their sender to end
    /// (observability and tests).
    pub fn waiting_requests(&self) -> usize {
        self.rapid_fire.waiting()
    }
}
