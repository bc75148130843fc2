//! One batch of queued jobs, from whichever queue delivered it (an SQS event on
//! Lambda, the SQS poller or the in-process queue in `serve`): group the jobs by
//! sender, run each sender's turns in order and the senders at once, and say which
//! jobs are settled (to delete) and which must come again.

use futures_util::future::join_all;
use tokio::time::Instant;

use super::{Job, MAX_ATTEMPTS};
use crate::turn::{Accepted, Delivery, Outcome, TurnRunner};

/// One delivered job.
#[derive(Debug, Clone)]
pub struct Delivered<'a> {
    /// The job's JSON.
    pub body: &'a str,
    /// How often the queue delivered it, this time included.
    pub receive_count: u32,
}

/// A readable job: its place in the batch, the message, its receive count.
type Readable = (usize, Accepted, u32);

/// Run a batch; `true` per job that is settled (answered, or given up with the user
/// told, or unreadable), `false` per job to deliver again. Jobs come in queue order;
/// per sender, the first one not settled stops that sender's jobs. `start_by`: no
/// turn starts after it (the function would be cut off mid-turn).
pub async fn run_batch(
    runner: &TurnRunner,
    jobs: &[Delivered<'_>],
    start_by: Option<Instant>,
) -> Vec<bool> {
    let mut settled = vec![true; jobs.len()];
    let mut groups: Vec<(String, Vec<Readable>)> = Vec::new();
    for (index, job) in jobs.iter().enumerate() {
        let message = match Job::parse(job.body) {
            Ok(message) => message,
            Err(e) => {
                // Retrying cannot make it readable; its text is not logged.
                tracing::error!(error = %e, "dropped an unreadable queued job");
                continue;
            }
        };
        let entry = (index, message, job.receive_count);
        match groups.iter_mut().find(|(key, _)| *key == entry.1.state_key) {
            Some((_, group)) => group.push(entry),
            None => groups.push((entry.1.state_key.clone(), vec![entry])),
        }
    }
    let runs = groups.iter().map(|(_, group)| async move {
        let messages: Vec<&Accepted> = group.iter().map(|(_, m, _)| m).collect();
        // The head of a sender's jobs is the one that kept failing (the rest wait
        // behind it in FIFO order): its deliveries decide whether this is the last try.
        let last = group[0].2 >= MAX_ATTEMPTS;
        let outcomes = runner
            .answer_in_order(&messages, Delivery::Queued { last, start_by })
            .await;
        group
            .iter()
            .zip(outcomes)
            .map(|((index, _, _), outcome)| (*index, outcome == Outcome::Settled))
            .collect::<Vec<_>>()
    });
    for (index, done) in join_all(runs).await.into_iter().flatten() {
        settled[index] = done;
    }
    settled
}
