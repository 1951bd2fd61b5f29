//! Hook calls gathered into batches: each plugin answers the questions of several sessions in
//! a row, while its instance, its compiled code and the host code it calls are still in the
//! CPU's caches.
//!
//! A hook call between two sessions' network, parsing and spool work finds all of that evicted
//! and costs about twice what the same call costs right after another one (see
//! `policy::tests::shipped_plugins_cost`). So the first session on a worker thread to reach a
//! hook opens a batch and yields; the sessions the worker runs meanwhile that reach the same
//! hook join it; then the first runs the whole batch, plugin by plugin, and each session gets
//! its verdict. tokio resumes a yielded task once its worker has run the tasks that were ready
//! (and polled for I/O), so an idle relay runs a batch of one at once, for the cost of one more
//! poll, and a busy one makes each session wait at most one round of the worker's ready tasks
//! and the calls of the batch it is in, of at most [`MAX_BATCH`] questions. The wait adds
//! microseconds to a reply; the calls it saves are what keeps a relay with plugins close to
//! the throughput of one without.
//!
//! Each question meets exactly the plugins, and gets exactly the verdict, it would get alone:
//! the batch changes the order in which the plugins answer the questions of different sessions
//! (sessions run concurrently anyway), never which plugins answer one question, nor their order.

use std::cell::{Cell, RefCell};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::LocalKey;

use tokio::sync::oneshot;

use super::host::TransactionInfo;
use super::set::{DataRun, PluginSet};
use super::{DataInput, DataVerdict, RcptInput, RcptVerdict};
use crate::inspect::MessageView;

/// Most questions in one batch: a busy worker runs the batch in one go, and the first session
/// in it waits for all of them (a few microseconds each).
pub(crate) const MAX_BATCH: usize = 32;

/// The jobs of one batch; `None` once its leader has taken them to run.
struct Batch<J> {
    jobs: Mutex<Option<Vec<J>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Batches on a thread that hold fewer questions than this on average do not save enough to be
/// worth the wait they cost their sessions: there, questions that find no batch open run at
/// once, without yielding, except every [`PROBE_EVERY`]th, which opens a batch again to see
/// whether more sessions join now. With few sessions, where the cores have time to spare and a
/// reply's latency is what limits a client, most questions so skip the wait (and the extra poll
/// of the task and of the I/O driver); under load batches grow, the average with them, and
/// every question is batched again.
const WORTH_THE_WAIT: f32 = 3.0;
/// See [`WORTH_THE_WAIT`].
const PROBE_EVERY: u32 = 8;
/// Each batch moves its thread's average size by this share of the difference.
const AVERAGE_WEIGHT: f32 = 1.0 / 8.0;

/// A thread's state for one hook: the batch open on it, if any, the average size of the batches
/// it ran, and the questions since it last opened one (see [`WORTH_THE_WAIT`]).
struct Open<J> {
    batch: RefCell<Option<Arc<Batch<J>>>>,
    average: Cell<f32>,
    since_batch: Cell<u32>,
}

impl<J> Open<J> {
    /// Batching at first: a new thread starts at the threshold.
    const fn new() -> Open<J> {
        Open {
            batch: RefCell::new(None),
            average: Cell::new(WORTH_THE_WAIT),
            since_batch: Cell::new(0),
        }
    }
}

/// The leader's hold on its batch: dropping it closes the batch and runs it, also when the
/// leader's session is dropped while it waits (the others' verdicts depend on it).
struct Lead<J: 'static> {
    open: &'static LocalKey<Open<J>>,
    batch: Arc<Batch<J>>,
    run: fn(Vec<J>),
}

impl<J> Drop for Lead<J> {
    fn drop(&mut self) {
        let jobs = lock(&self.batch.jobs).take();
        if let Some(jobs) = jobs {
            // On the thread that runs the batch, which is normally the one it was opened on.
            let size = jobs.len() as f32;
            let _ = self.open.try_with(|open| {
                let average = open.average.get();
                open.average
                    .set(average + (size - average) * AVERAGE_WEIGHT);
            });
            (self.run)(jobs);
        }
    }
}

/// Adds `job` to the batch open on this thread and returns; or, when there is none or it is
/// full, opens one, yields to the other tasks ready on this worker (some of which may join),
/// runs the batch with `run`, and returns then; or, where batches have been too small to be
/// worth their wait, runs `job` alone at once (see [`WORTH_THE_WAIT`]). Either way `run` sends each job
/// its answer.
async fn submit<J: 'static>(open: &'static LocalKey<Open<J>>, job: J, run: fn(Vec<J>)) {
    enum Next<J: 'static> {
        Joined,
        Alone(J),
        Lead(Lead<J>),
    }
    let next = open.with(|state| {
        let mut current = state.batch.borrow_mut();
        if let Some(batch) = current.as_ref() {
            if let Some(jobs) = lock(&batch.jobs).as_mut().filter(|j| j.len() < MAX_BATCH) {
                jobs.push(job);
                return Next::Joined;
            }
        }
        let since = state.since_batch.get() + 1;
        if state.average.get() < WORTH_THE_WAIT && since < PROBE_EVERY {
            state.since_batch.set(since);
            return Next::Alone(job);
        }
        state.since_batch.set(0);
        let batch = Arc::new(Batch {
            jobs: Mutex::new(Some(vec![job])),
        });
        *current = Some(Arc::clone(&batch));
        Next::Lead(Lead { open, batch, run })
    });
    match next {
        Next::Joined => {}
        Next::Alone(job) => run(vec![job]),
        Next::Lead(lead) => {
            tokio::task::yield_now().await;
            drop(lead);
        }
    }
}

/// Runs `f` on each group of `jobs` that share a plugin set (normally there is one group: the
/// set changes only with a reload).
fn by_set<J>(jobs: Vec<J>, set: impl Fn(&J) -> &Arc<PluginSet>, mut f: impl FnMut(Vec<J>)) {
    let mut rest = jobs;
    while !rest.is_empty() {
        let first = Arc::clone(set(&rest[0]));
        if rest.iter().all(|job| Arc::ptr_eq(set(job), &first)) {
            return f(rest);
        }
        let (group, others) = rest
            .into_iter()
            .partition(|job| Arc::ptr_eq(set(job), &first));
        f(group);
        rest = others;
    }
}

struct RcptJob {
    set: Arc<PluginSet>,
    input: RcptInput,
    transaction: Arc<TransactionInfo>,
    done: oneshot::Sender<(RcptVerdict, RcptInput)>,
}

thread_local! {
    static OPEN_RCPT: Open<RcptJob> = const { Open::new() };
    static OPEN_DATA: Open<DataJob> = const { Open::new() };
}

fn run_rcpt(jobs: Vec<RcptJob>) {
    crate::metrics::global().rcpt_batch(jobs.len());
    by_set(
        jobs,
        |job| &job.set,
        |group| {
            let set = Arc::clone(&group[0].set);
            let mut verdicts: Vec<Option<RcptVerdict>> = (0..group.len()).map(|_| None).collect();
            set.on_rcpt_each(&mut verdicts, |i| (&group[i].input, &group[i].transaction));
            for (job, verdict) in group.into_iter().zip(verdicts) {
                let RcptJob {
                    input,
                    transaction,
                    done,
                    ..
                } = job;
                // The session renews its transaction view in place only if no one else holds it.
                drop(transaction);
                let _ = done.send((verdict.unwrap_or(RcptVerdict::NoOpinion), input));
            }
        },
    );
}

/// [`PluginSet::on_rcpt_each`] for one recipient, batched with the other sessions of this
/// worker that ask at the same time. Gives the input back with the verdict; `None` if the batch
/// was lost (only a bug could do that: a hook call never panics out of the relay's code).
pub(crate) async fn on_rcpt(
    set: &Arc<PluginSet>,
    input: RcptInput,
    transaction: Arc<TransactionInfo>,
) -> Option<(RcptVerdict, RcptInput)> {
    let (done, answer) = oneshot::channel();
    let job = RcptJob {
        set: Arc::clone(set),
        input,
        transaction,
        done,
    };
    submit(&OPEN_RCPT, job, run_rcpt).await;
    answer.await.ok()
}

struct DataJob {
    set: Arc<PluginSet>,
    input: DataInput,
    transaction: Arc<TransactionInfo>,
    message: Arc<MessageView>,
    done: oneshot::Sender<DataVerdict>,
}

fn run_data(jobs: Vec<DataJob>) {
    crate::metrics::global().data_batch(jobs.len());
    by_set(
        jobs,
        |job| &job.set,
        |group| {
            let set = Arc::clone(&group[0].set);
            let mut runs: Vec<DataRun<'_>> =
                group.iter().map(|job| DataRun::new(&job.input)).collect();
            set.on_data_each(&mut runs, |i| (&group[i].transaction, &group[i].message));
            let verdicts: Vec<DataVerdict> = runs.into_iter().map(DataRun::finish).collect();
            for (job, verdict) in group.into_iter().zip(verdicts) {
                let DataJob {
                    done,
                    transaction,
                    message,
                    ..
                } = job;
                // The session takes the message back, and renews its transaction view, only if
                // no one else holds them.
                drop((transaction, message));
                let _ = done.send(verdict);
            }
        },
    );
}

/// [`PluginSet::on_data_each`] for one message, batched like [`on_rcpt`]. The batch's handles
/// on the transaction and the message are dropped before the verdict comes back.
pub(crate) async fn on_data(
    set: &Arc<PluginSet>,
    input: DataInput,
    transaction: Arc<TransactionInfo>,
    message: Arc<MessageView>,
) -> Option<DataVerdict> {
    let (done, answer) = oneshot::channel();
    let job = DataJob {
        set: Arc::clone(set),
        input,
        transaction,
        message,
        done,
    };
    submit(&OPEN_DATA, job, run_data).await;
    answer.await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    /// A job of the tests: its number, and where its batch's numbers are written.
    struct Job(usize, Arc<Mutex<Vec<Vec<usize>>>>);

    thread_local! {
        static OPEN_TEST: Open<Job> = const { Open::new() };
    }

    /// Where the batches will be written, with this thread's batch state reset (libtest may run
    /// several tests on one thread).
    fn fresh() -> Arc<Mutex<Vec<Vec<usize>>>> {
        OPEN_TEST.with(|open| {
            open.average.set(WORTH_THE_WAIT);
            open.since_batch.set(0);
            open.batch.borrow_mut().take();
        });
        Arc::new(Mutex::new(Vec::new()))
    }

    fn run_test(jobs: Vec<Job>) {
        let ran = Arc::clone(&jobs[0].1);
        lock(&ran).push(jobs.iter().map(|job| job.0).collect());
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn sessions_that_ask_together_share_one_batch_in_their_order() {
        let ran = fresh();
        runtime().block_on(submit_together(0..5, &ran));
        assert_eq!(*lock(&ran), vec![vec![0, 1, 2, 3, 4]]);
    }

    /// Spawns `jobs` as tasks that each submit one job, all at once, and waits for them.
    async fn submit_together(jobs: std::ops::Range<usize>, ran: &Arc<Mutex<Vec<Vec<usize>>>>) {
        let tasks: Vec<_> = jobs
            .map(|i| {
                let ran = Arc::clone(ran);
                tokio::spawn(async move { submit(&OPEN_TEST, Job(i, ran), run_test).await })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
    }

    #[test]
    fn where_batches_stay_small_questions_run_at_once_but_for_a_probe() {
        let ran = fresh();
        let skipped = PROBE_EVERY as usize - 1;
        runtime().block_on(async {
            submit(&OPEN_TEST, Job(0, Arc::clone(&ran)), run_test).await;
            assert_eq!(*lock(&ran), vec![vec![0]], "a lone question is run at once");
            // That brought the average below the threshold: the next questions on this thread
            // run alone without waiting, even when others are ready, until one opens a batch
            // again, which the rest join.
            submit_together(1..skipped + 4, &ran).await;
        });
        let mut expected: Vec<Vec<usize>> = (0..=skipped).map(|i| vec![i]).collect();
        expected.push((skipped + 1..skipped + 4).collect());
        assert_eq!(*lock(&ran), expected);
    }

    #[test]
    fn one_small_batch_does_not_stop_a_busy_thread_batching() {
        let ran = fresh();
        runtime().block_on(async {
            submit_together(0..10, &ran).await;
            for i in 10..12 {
                submit(&OPEN_TEST, Job(i, Arc::clone(&ran)), run_test).await;
            }
            // Still batching: the next ones join the one that opens.
            submit_together(12..15, &ran).await;
        });
        let expected = vec![(0..10).collect(), vec![10], vec![11], (12..15).collect()];
        assert_eq!(*lock(&ran), expected);
    }

    #[test]
    fn a_full_batch_makes_the_next_question_open_another() {
        let ran = fresh();
        let count = MAX_BATCH + 3;
        runtime().block_on(submit_together(0..count, &ran));
        // Which of the two batches runs first is the scheduler's choice.
        let mut ran = lock(&ran).clone();
        ran.sort();
        assert_eq!(ran.len(), 2, "{ran:?}");
        assert_eq!(ran[0], (0..MAX_BATCH).collect::<Vec<_>>());
        assert_eq!(ran[1], (MAX_BATCH..count).collect::<Vec<_>>());
    }

    #[test]
    fn a_leader_dropped_while_it_waits_still_runs_the_batch() {
        let ran = fresh();
        let mut cx = Context::from_waker(Waker::noop());
        let mut leader = Box::pin(submit(&OPEN_TEST, Job(1, Arc::clone(&ran)), run_test));
        // Outside a runtime the yield wakes at once, but the first poll still returns Pending.
        assert!(leader.as_mut().poll(&mut cx).is_pending());
        let mut follower = pin!(submit(&OPEN_TEST, Job(2, Arc::clone(&ran)), run_test));
        assert!(follower.as_mut().poll(&mut cx).is_ready(), "joined");
        assert!(
            lock(&ran).is_empty(),
            "nothing runs before the leader goes on"
        );
        drop(leader);
        assert_eq!(*lock(&ran), vec![vec![1, 2]]);
        // The closed batch is not joined again; after so small a batch the next question is
        // asked alone, at once.
        let mut next = pin!(submit(&OPEN_TEST, Job(3, Arc::clone(&ran)), run_test));
        assert_eq!(next.as_mut().poll(&mut cx), Poll::Ready(()));
        assert_eq!(*lock(&ran), vec![vec![1, 2], vec![3]]);
    }
}
