//! The scheduler: decides which queued messages go to delivery now.
//!
//! It keeps only the set of messages in flight (at most `max_in_flight`) in memory; everything
//! else stays on disk in the schedule column family, so memory does not grow with queue depth.
//! New messages arrive as events and are dispatched at once while there is room; when there is
//! not (or a retry falls due, or at start-up) the schedule is scanned in due-time order.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{now_ms, MessageId, Spool};

/// Margin below the last scan's start that the next scan still covers. Schedule keys are
/// written with the wall-clock time of their write (or later), so a key is older than this
/// when it first becomes visible only if its write took longer (a stalled disk).
///
/// Every scan walks the tombstones of the keys deleted within the margin: at 8,000 messages a
/// second, a 60 s margin meant half a million of them per scan, and scans took 30% of the
/// relay's CPU right after a burst.
const FLOOR_MARGIN_MS: u64 = 5_000;
/// How often a scan starts from the beginning of the schedule anyway, so a key that became
/// visible later than [`FLOOR_MARGIN_MS`] after its time is still found.
const FULL_SCAN_EVERY: Duration = Duration::from_secs(300);
/// New messages kept in memory while every delivery slot is taken, dispatched in arrival order
/// as slots free up. Without them each such message would call for a scan, and a scan walks
/// every schedule key deleted in the last [`FLOOR_MARGIN_MS`]: when delivery lags behind a
/// burst, that walk cost several microseconds per message. Past this many the rest are left to
/// a scan, so memory stays bounded.
const MAX_PENDING: usize = 10_000;
/// Longest sleep between scans, so a clock step or a missed event cannot stall the queue.
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// What the rest of the relay tells the scheduler.
#[derive(Debug)]
pub(crate) enum Event {
    /// A message was queued and is due now.
    Queued(MessageId),
    /// Delivery of a message finished this round; `next_due_ms` is its next schedule time,
    /// or `None` when it left the queue.
    Done {
        /// The message.
        id: MessageId,
        /// When it is due again.
        next_due_ms: Option<u64>,
    },
}

/// Sends events to the scheduler.
#[derive(Clone)]
pub(crate) struct Notifier(mpsc::Sender<Event>);

impl Notifier {
    /// Tells the scheduler about a new message. Never blocks: when the channel is full the
    /// message is still found by the next scan of the schedule.
    pub(crate) fn queued(&self, id: MessageId) {
        if self.0.try_send(Event::Queued(id)).is_err() {
            tracing::debug!(msg_id = %id, "scheduler busy; message will be found by scan");
        }
    }

    /// Reports that a delivery round finished.
    pub(crate) async fn done(&self, id: MessageId, next_due_ms: Option<u64>) {
        // Must arrive: the scheduler counts in-flight messages by these events.
        let _ = self.0.send(Event::Done { id, next_due_ms }).await;
    }
}

/// The channel ends the scheduler runs on.
pub(crate) struct Scheduler {
    spool: Spool,
    events: mpsc::Receiver<Event>,
    dispatch: mpsc::UnboundedSender<MessageId>,
    max_in_flight: usize,
}

/// Creates the scheduler; `dispatch` receives ids to deliver (each once until its `Done`).
pub(crate) fn new(
    spool: Spool,
    max_in_flight: usize,
    dispatch: mpsc::UnboundedSender<MessageId>,
) -> (Scheduler, Notifier) {
    let (tx, rx) = mpsc::channel(max_in_flight.max(64) * 4);
    (
        Scheduler {
            spool,
            events: rx,
            dispatch,
            max_in_flight,
        },
        Notifier(tx),
    )
}

impl Scheduler {
    /// Runs until every notifier is dropped.
    pub(crate) async fn run(mut self) {
        let mut in_flight: HashSet<MessageId> = HashSet::with_capacity(self.max_in_flight);
        // Due now, on disk, not dispatched; empty whenever a scan is needed (the scan finds them).
        let mut pending: VecDeque<MessageId> = VecDeque::new();
        // At start-up everything on disk is a candidate: the in-memory view is rebuilt from the store.
        let mut need_scan = true;
        let mut floor_ms: u64 = 0;
        let mut last_started: u64 = 0;
        let mut next_full_scan = Instant::now() + FULL_SCAN_EVERY;
        let mut wake_at = Instant::now() + MAX_SLEEP;
        let low_water = (self.max_in_flight / 2).max(1);
        loop {
            while in_flight.len() < self.max_in_flight {
                let Some(id) = pending.pop_front() else {
                    break;
                };
                if in_flight.insert(id) && self.dispatch.send(id).is_err() {
                    return;
                }
            }
            let room = self.max_in_flight.saturating_sub(in_flight.len());
            // With a backlog, scan only once half the slots are free, so each scan dispatches many.
            if need_scan && (room >= low_water || in_flight.is_empty()) {
                let started = now_ms();
                // A wall clock stepped back can have written keys below the floor.
                if started < last_started || Instant::now() >= next_full_scan {
                    floor_ms = 0;
                    next_full_scan = Instant::now() + FULL_SCAN_EVERY;
                }
                last_started = started;
                let spool = self.spool.clone();
                let skip = in_flight.clone();
                let scan = tokio::task::spawn_blocking(move || {
                    spool.scan_due(started, floor_ms, room, &skip)
                })
                .await;
                match scan {
                    Ok(Ok(scan)) => {
                        for id in scan.due {
                            in_flight.insert(id);
                            if self.dispatch.send(id).is_err() {
                                return;
                            }
                        }
                        need_scan = scan.more;
                        let seen = scan.first_seen_ms.unwrap_or(started);
                        floor_ms = seen.min(started.saturating_sub(FLOOR_MARGIN_MS));
                        wake_at = Instant::now() + MAX_SLEEP;
                        if let Some(next) = scan.next_due_ms {
                            wake_at = wake_at.min(instant_for(next));
                        }
                    }
                    Ok(Err(err)) => {
                        tracing::error!(event = "spool_scan_failed", error = %err, "scanning the schedule failed; retrying in 1s");
                        wake_at = Instant::now() + Duration::from_secs(1);
                    }
                    Err(err) => {
                        tracing::error!(event = "spool_scan_failed", error = %err, "schedule scan task failed");
                        wake_at = Instant::now() + Duration::from_secs(1);
                    }
                }
            }
            tokio::select! {
                event = self.events.recv() => match event {
                    None => return,
                    Some(Event::Queued(id)) => {
                        if need_scan {
                            // The scan will find it.
                        } else if in_flight.len() < self.max_in_flight {
                            if in_flight.insert(id) && self.dispatch.send(id).is_err() {
                                return;
                            }
                        } else if pending.len() < MAX_PENDING {
                            pending.push_back(id);
                        } else {
                            pending.clear();
                            need_scan = true;
                        }
                    }
                    Some(Event::Done { id, next_due_ms }) => {
                        in_flight.remove(&id);
                        if let Some(next) = next_due_ms {
                            wake_at = wake_at.min(instant_for(next));
                        }
                    }
                },
                _ = tokio::time::sleep_until(wake_at) => {
                    // A scan finds the pending messages too; keeping them would send them twice.
                    pending.clear();
                    need_scan = true;
                    wake_at = Instant::now() + MAX_SLEEP;
                }
            }
        }
    }
}

/// The monotonic instant at which wall-clock time `due_ms` arrives.
fn instant_for(due_ms: u64) -> Instant {
    let now = now_ms();
    Instant::now() + Duration::from_millis(due_ms.saturating_sub(now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::{Mailbox, ReversePath};
    use crate::spool::{schedule_key, Durability, NewMessage, Op, CF_BODY, CF_QUEUE, CF_SCHEDULE};

    /// What a finished delivery writes: the message leaves the queue.
    async fn finish(spool: &Spool, id: MessageId) {
        let entry = spool.entry(id).expect("read").expect("queued");
        let ops = vec![
            Op::delete(CF_SCHEDULE, schedule_key(entry.due_ms, id).to_vec()),
            Op::delete(CF_QUEUE, id.key().to_vec()),
            Op::delete(CF_BODY, id.key().to_vec()),
        ];
        spool.commit(ops, Durability::Now).await.expect("commit");
    }

    async fn queue(spool: &Spool, notifier: &Notifier) -> MessageId {
        let id = MessageId::generate();
        spool
            .insert(
                id,
                NewMessage {
                    mail_from: ReversePath::Null,
                    recipients: vec![Mailbox::parse("b@y.test").expect("address")],
                    prefix: b"",
                    body: b"Subject: x\r\n\r\nbody\r\n",
                    client: None,
                    eight_bit: false,
                    smtputf8: false,
                    tags: Vec::new(),
                },
            )
            .await
            .expect("insert");
        notifier.queued(id);
        id
    }

    async fn next(dispatched: &mut mpsc::UnboundedReceiver<MessageId>) -> MessageId {
        tokio::time::timeout(Duration::from_secs(5), dispatched.recv())
            .await
            .expect("dispatched in time")
            .expect("scheduler running")
    }

    /// Messages queued while every slot is taken wait in memory and go out in arrival order,
    /// each exactly once, as slots free up: well before the 30 s fallback scan.
    #[tokio::test]
    async fn messages_beyond_the_slots_wait_in_order_and_go_out_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path(), 0).expect("open");
        let (tx, mut dispatched) = mpsc::unbounded_channel();
        let (scheduler, notifier) = new(spool.clone(), 2, tx);
        tokio::spawn(scheduler.run());
        // Let the start-up scan of the empty spool finish.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut ids = Vec::new();
        for _ in 0..6 {
            ids.push(queue(&spool, &notifier).await);
        }
        let mut seen = vec![next(&mut dispatched).await, next(&mut dispatched).await];
        while seen.len() < ids.len() {
            // A delivery finishes and leaves the queue: its slot goes to the next in line.
            let done = seen[seen.len() - 2];
            finish(&spool, done).await;
            notifier.done(done, None).await;
            seen.push(next(&mut dispatched).await);
        }
        assert_eq!(seen, ids, "arrival order, each once");
        for id in &seen[seen.len() - 2..] {
            finish(&spool, *id).await;
            notifier.done(*id, None).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(dispatched.try_recv().is_err(), "nothing was sent twice");
    }
}
