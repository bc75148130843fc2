//! In-process queue of rapid-fire messages: while one request answers a sender, the
//! requests that bring more messages of that sender hand them over and wait, and the
//! next turn answers them together.
//!
//! One request at a time *leads* a sender: it answers its own messages plus those
//! handed over meanwhile, tells each waiting request how its messages ended, and then
//! passes the lead to the next waiting request, if any, so no request's answer waits
//! for turns that came after it. Across processes (Lambda instances) there is nothing
//! to hand over: the store's sender lease and waiting list keep those in order.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::oneshot;

/// Per-sender queues of waiting requests, keyed by the sender's state key.
pub struct SenderQueues<T, O> {
    queues: Mutex<HashMap<String, Vec<Waiter<T, O>>>>,
}

/// A request waiting for its messages (`items`) to be answered.
pub struct Waiter<T, O> {
    pub items: Vec<T>,
    pub reply: Reply<T, O>,
}

/// Where a waiting request is told how its messages ended.
pub struct Reply<T, O>(oneshot::Sender<Wake<T, O>>);

/// What a waiting request is woken with.
pub enum Wake<T, O> {
    /// Its messages were answered with this outcome.
    Answered(O),
    /// It leads now: its own messages come back with those handed over after them.
    Lead {
        items: Vec<T>,
        others: Vec<Waiter<T, O>>,
    },
}

/// The result of [`SenderQueues::join`].
pub enum Joined<'q, T, O> {
    /// Nobody answers this sender in this process: the caller leads.
    Lead(Leader<'q, T, O>, Vec<T>),
    /// Another request leads: wait to be told.
    Wait(oneshot::Receiver<Wake<T, O>>),
}

impl<T, O> Default for SenderQueues<T, O> {
    fn default() -> Self {
        SenderQueues {
            queues: Mutex::new(HashMap::new()),
        }
    }
}

impl<T, O> SenderQueues<T, O> {
    /// Lead `key` if nobody does, else queue `items` behind the current leader.
    pub fn join(&self, key: &str, items: Vec<T>) -> Joined<'_, T, O> {
        let Ok(mut queues) = self.queues.lock() else {
            // A poisoned lock only means a panic elsewhere: answer alone, unqueued.
            return Joined::Lead(self.leader(key, false), items);
        };
        match queues.get_mut(key) {
            Some(waiting) => {
                let (reply, woken) = oneshot::channel();
                waiting.push(Waiter {
                    items,
                    reply: Reply(reply),
                });
                Joined::Wait(woken)
            }
            None => {
                queues.insert(key.to_string(), Vec::new());
                Joined::Lead(self.leader(key, true), items)
            }
        }
    }

    /// The guard of a request that was handed the lead of `key`.
    pub fn resume(&self, key: &str) -> Leader<'_, T, O> {
        self.leader(key, true)
    }

    /// How many requests wait behind a leader, over all senders.
    pub fn waiting(&self) -> usize {
        self.queues
            .lock()
            .map(|q| q.values().map(Vec::len).sum())
            .unwrap_or(0)
    }

    fn leader(&self, key: &str, armed: bool) -> Leader<'_, T, O> {
        Leader {
            queues: self,
            key: key.to_string(),
            armed,
        }
    }
}

impl<T, O> Reply<T, O> {
    pub fn answer(self, outcome: O) {
        // The request may have gone (client hung up): then nobody needs the outcome.
        let _ = self.0.send(Wake::Answered(outcome));
    }
}

/// Held by the request that leads a sender. Dropping it without [`Leader::hand_over`]
/// (the request was cancelled) ends the lead: the waiting requests are woken with an
/// error and answer 500, so Meta redelivers their messages.
pub struct Leader<'q, T, O> {
    queues: &'q SenderQueues<T, O>,
    key: String,
    armed: bool,
}

impl<T, O> Leader<'_, T, O> {
    /// The requests queued so far, to be answered in the leader's next turn.
    pub fn take_waiting(&self) -> Vec<Waiter<T, O>> {
        if !self.armed {
            return Vec::new();
        }
        self.queues
            .queues
            .lock()
            .ok()
            .and_then(|mut q| q.get_mut(&self.key).map(std::mem::take))
            .unwrap_or_default()
    }

    /// The leader is done: pass the lead to the first waiting request that is still
    /// there, with the others queued behind it, or end it when nobody waits.
    pub fn hand_over(mut self) {
        if !self.armed {
            return;
        }
        self.armed = false;
        let Ok(mut queues) = self.queues.queues.lock() else {
            return;
        };
        let mut waiting = match queues.get_mut(&self.key) {
            Some(waiting) if !waiting.is_empty() => std::mem::take(waiting),
            _ => {
                queues.remove(&self.key);
                return;
            }
        };
        while !waiting.is_empty() {
            let next = waiting.remove(0);
            match next.reply.0.send(Wake::Lead {
                items: next.items,
                others: waiting,
            }) {
                Ok(()) => return,
                // That request is gone; its messages go unanswered and Meta redelivers.
                Err(Wake::Lead { others, .. }) => waiting = others,
                Err(Wake::Answered(_)) => return,
            }
        }
        queues.remove(&self.key);
    }
}

impl<T, O> Drop for Leader<'_, T, O> {
    fn drop(&mut self) {
        if self.armed
            && let Ok(mut queues) = self.queues.queues.lock()
        {
            queues.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_request_leads_and_later_ones_queue() {
        let queues = SenderQueues::<u32, &str>::default();
        let Joined::Lead(leader, mine) = queues.join("a", vec![1]) else {
            panic!("the first request must lead");
        };
        assert_eq!(mine, vec![1]);
        let Joined::Wait(mut second) = queues.join("a", vec![2]) else {
            panic!("a second request must wait");
        };
        // Another sender is independent.
        assert!(matches!(queues.join("b", vec![9]), Joined::Lead(..)));
        assert_eq!(queues.waiting(), 1);
        let taken = leader.take_waiting();
        assert_eq!(taken.len(), 1);
        assert_eq!(queues.waiting(), 0);
        for waiter in taken {
            waiter.reply.answer("answered");
        }
        leader.hand_over();
        assert!(matches!(second.try_recv(), Ok(Wake::Answered("answered"))));
        // Nobody waits any more: the next request leads again.
        assert!(matches!(queues.join("a", vec![3]), Joined::Lead(..)));
    }

    #[test]
    fn the_lead_passes_to_the_next_waiting_request_with_the_rest_behind_it() {
        let queues = SenderQueues::<u32, &str>::default();
        let Joined::Lead(leader, _) = queues.join("a", vec![1]) else {
            panic!("lead");
        };
        let Joined::Wait(gone) = queues.join("a", vec![2]) else {
            panic!("wait");
        };
        let Joined::Wait(mut third) = queues.join("a", vec![3]) else {
            panic!("wait");
        };
        let Joined::Wait(mut fourth) = queues.join("a", vec![4]) else {
            panic!("wait");
        };
        drop(gone); // that request was cancelled
        leader.hand_over();
        match third.try_recv() {
            Ok(Wake::Lead { items, others }) => {
                assert_eq!(items, vec![3]);
                assert_eq!(others.iter().map(|w| w.items[0]).collect::<Vec<_>>(), [4]);
            }
            _ => panic!("the third request must lead"),
        }
        assert!(fourth.try_recv().is_err(), "the fourth still waits");
    }

    #[test]
    fn a_cancelled_leader_releases_the_waiting_requests() {
        let queues = SenderQueues::<u32, &str>::default();
        let Joined::Lead(leader, _) = queues.join("a", vec![1]) else {
            panic!("lead");
        };
        let Joined::Wait(mut second) = queues.join("a", vec![2]) else {
            panic!("wait");
        };
        drop(leader);
        assert!(matches!(
            second.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
        assert!(matches!(queues.join("a", vec![3]), Joined::Lead(..)));
    }
}
