//! Group commit: work that arrives while one group is being flushed joins the next
//! group, so one flush serves many requests.
//!
//! A merchant's object uses it for accepted notifications: one queue `sendBatch` and
//! one storage commit (every write after one await is one SQLite transaction) carry
//! every notification that arrived while the previous group was on its way. Under
//! light load a group is one notification and nothing waits; under heavy load groups
//! grow by themselves, which is when fewer commits matter.
//!
//! The request that finds no group in flight leads: it flushes everything waiting,
//! hands each request its result, and passes the lead to the first request that came
//! in meanwhile. Each request leads at most one flush, so none waits for more than the
//! group before its own.

use futures_channel::oneshot;
use std::cell::{Cell, RefCell};
use std::future::Future;

enum Turn<R> {
    Done(R),
    Lead,
}

struct Waiting<T, R> {
    id: u64,
    item: T,
    /// Taken when this request is handed the lead (it then flushes its own item).
    turn: Option<oneshot::Sender<Turn<R>>>,
}

pub struct Groups<T, R> {
    waiting: RefCell<Vec<Waiting<T, R>>>,
    leading: Cell<bool>,
    next_id: Cell<u64>,
}

impl<T, R> Default for Groups<T, R> {
    fn default() -> Self {
        Groups {
            waiting: RefCell::new(Vec::new()),
            leading: Cell::new(false),
            next_id: Cell::new(0),
        }
    }
}

/// Passes the lead on when the leader is done, or dropped half way.
struct HandOver<'a, T, R>(&'a Groups<T, R>);

impl<T, R> Drop for HandOver<'_, T, R> {
    fn drop(&mut self) {
        let mut waiting = self.0.waiting.borrow_mut();
        for entry in waiting.iter_mut() {
            if let Some(turn) = entry.turn.take() {
                if turn.send(Turn::Lead).is_ok() {
                    return;
                }
            }
        }
        // Nobody is listening: the next request to arrive leads whatever is left.
        self.0.leading.set(false);
    }
}

impl<T, R> Groups<T, R> {
    /// Requests waiting for a group.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.waiting.borrow().len()
    }

    /// Adds `item` to the next group and resolves with its result once that group
    /// was flushed. `flush` gets a group's items in arrival order and returns one
    /// result per item. `None`: the request leading the group went away before the
    /// group finished, so nothing is known of this item.
    pub async fn submit<F, Fut>(&self, item: T, flush: F) -> Option<R>
    where
        F: FnOnce(Vec<T>) -> Fut,
        Fut: Future<Output = Vec<R>>,
    {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (turn, mut told) = oneshot::channel();
        self.waiting.borrow_mut().push(Waiting {
            id,
            item,
            turn: Some(turn),
        });
        if self.leading.get() {
            match (&mut told).await {
                Ok(Turn::Done(result)) => return Some(result),
                Ok(Turn::Lead) => {}
                Err(_) => return None,
            }
        } else {
            self.leading.set(true);
        }
        let hand_over = HandOver(self);
        let group = std::mem::take(&mut *self.waiting.borrow_mut());
        let own = group.iter().position(|entry| entry.id == id);
        let (items, turns): (Vec<T>, Vec<_>) = group
            .into_iter()
            .map(|entry| (entry.item, entry.turn))
            .unzip();
        let results = flush(items).await;
        let mut own_result = None;
        for (index, (turn, result)) in turns.into_iter().zip(results).enumerate() {
            if Some(index) == own {
                own_result = Some(result);
            } else if let Some(turn) = turn {
                // A request that went away no longer wants its result.
                let _ = turn.send(Turn::Done(result));
            }
        }
        drop(hand_over);
        own_result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::rc::Rc;
    use std::task::{Context, Poll, Waker};

    type Boxed<'a> = Pin<Box<dyn Future<Output = Option<String>> + 'a>>;

    /// A flush that waits until the test opens its gate, recording each group.
    #[derive(Default)]
    struct Gate {
        open: Cell<bool>,
        groups: RefCell<Vec<Vec<u32>>>,
    }

    struct Wait<'a>(&'a Gate);

    impl Future for Wait<'_> {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            if self.0.open.get() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    fn submit<'a>(groups: &'a Groups<u32, String>, gate: &'a Gate, item: u32) -> Boxed<'a> {
        Box::pin(groups.submit(item, move |items: Vec<u32>| async move {
            gate.groups.borrow_mut().push(items.clone());
            Wait(gate).await;
            items.iter().map(|i| format!("sent {i}")).collect()
        }))
    }

    fn poll(future: &mut Boxed<'_>) -> Poll<Option<String>> {
        future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_lone_request_flushes_its_own_group_at_once() {
        let groups = Groups::default();
        let gate = Gate {
            open: Cell::new(true),
            ..Gate::default()
        };
        let mut only = submit(&groups, &gate, 1);
        assert_eq!(poll(&mut only), Poll::Ready(Some("sent 1".into())));
        assert_eq!(*gate.groups.borrow(), vec![vec![1]]);
        // The lead was given back: the next request flushes at once too.
        let mut next = submit(&groups, &gate, 2);
        assert_eq!(poll(&mut next), Poll::Ready(Some("sent 2".into())));
    }

    #[test]
    fn requests_arriving_during_a_flush_form_the_next_group_led_by_the_first() {
        let groups = Groups::default();
        let gate = Gate::default();
        let mut first = submit(&groups, &gate, 1);
        assert!(poll(&mut first).is_pending());
        let mut second = submit(&groups, &gate, 2);
        let mut third = submit(&groups, &gate, 3);
        assert!(poll(&mut second).is_pending());
        assert!(poll(&mut third).is_pending());
        assert_eq!(groups.waiting(), 2);

        gate.open.set(true);
        assert_eq!(poll(&mut first), Poll::Ready(Some("sent 1".into())));
        // The second leads the group of two; the third gets its result from it.
        assert!(poll(&mut third).is_pending());
        assert_eq!(poll(&mut second), Poll::Ready(Some("sent 2".into())));
        assert_eq!(poll(&mut third), Poll::Ready(Some("sent 3".into())));
        assert_eq!(*gate.groups.borrow(), vec![vec![1], vec![2, 3]]);
        assert_eq!(groups.waiting(), 0);
    }

    #[test]
    fn a_request_that_went_away_is_skipped_when_the_lead_passes() {
        let groups = Groups::default();
        let gate = Gate::default();
        let mut first = submit(&groups, &gate, 1);
        assert!(poll(&mut first).is_pending());
        let mut gone = submit(&groups, &gate, 2);
        assert!(poll(&mut gone).is_pending());
        drop(gone);
        let mut third = submit(&groups, &gate, 3);
        assert!(poll(&mut third).is_pending());

        gate.open.set(true);
        assert_eq!(poll(&mut first), Poll::Ready(Some("sent 1".into())));
        // The lead skips the dropped request; its item still goes out with the group
        // (it was claimed; its sender's retry finds it recorded).
        assert_eq!(poll(&mut third), Poll::Ready(Some("sent 3".into())));
        assert_eq!(*gate.groups.borrow(), vec![vec![1], vec![2, 3]]);
    }

    #[test]
    fn a_leader_dropped_mid_flush_leaves_its_group_unknown_and_passes_the_lead() {
        let groups: Rc<Groups<u32, String>> = Rc::new(Groups::default());
        let gate = Gate::default();
        let mut leader = submit(&groups, &gate, 1);
        assert!(poll(&mut leader).is_pending());
        let mut follower = submit(&groups, &gate, 2);
        assert!(poll(&mut follower).is_pending());
        // The follower was waiting for the next group, so it leads it once the leader
        // is gone.
        drop(leader);
        gate.open.set(true);
        assert_eq!(poll(&mut follower), Poll::Ready(Some("sent 2".into())));

        // A member of a group whose leader went away learns nothing (`None`).
        let closed = Gate::default();
        let mut leader = submit(&groups, &closed, 3);
        assert!(poll(&mut leader).is_pending());
        let mut member = submit(&groups, &closed, 4);
        assert!(poll(&mut member).is_pending());
        let mut later = submit(&groups, &closed, 5);
        assert!(poll(&mut later).is_pending());
        closed.open.set(true);
        // The leader's group was [3]; 4 and 5 form the next, led by 4.
        assert_eq!(poll(&mut leader), Poll::Ready(Some("sent 3".into())));
        closed.open.set(false);
        assert!(poll(&mut member).is_pending());
        drop(member);
        assert_eq!(poll(&mut later), Poll::Ready(None));
        // And the lead is free again.
        closed.open.set(true);
        let mut fresh = submit(&groups, &closed, 6);
        assert_eq!(poll(&mut fresh), Poll::Ready(Some("sent 6".into())));
    }
}
