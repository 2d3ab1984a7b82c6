//! The one loop that performs the core's steps, written once for every
//! shell (DESIGN §2): the simulator's node hosts and `mpc-node` both run
//! [`drive`] over their own [`Shell`], so what the simulator tests is the
//! ordering production relies on.
//!
//! For each input the driver calls [`Core::handle`], then
//! [`Shell::persist`] with the step's records, and only after that returns
//! the rest of the step, in this order: observations, replies, sends,
//! compute jobs, Bitcoin backend requests. A presignature's consumption and the partial signature it
//! releases travel in one step (the record in `persist`, the message in
//! `send`), so no shell built on this loop can release a partial signature
//! before its consumption is durable.
//!
//! A failed `persist` ends the loop with the error: the core's memory is
//! then ahead of its records, and the only safe continuation is a restart
//! from the records (a new [`crate::Node`] built from what the store holds).
//!
//! The driver needs no runtime: it is an `async fn` over the shell's
//! futures, so tokio (production), turmoil (simulation) or a hand-rolled
//! executor (the tests below) can run it.

use crate::chain::ChainRequest;
use crate::engine::ComputeJob;
use crate::ids::{Millis, RequestId};
use crate::io::{Envelope, Input, Observation, Reply, Step};
use crate::node::Node;
use crate::record::Record;

/// What the driver steps: [`Node`], or a shell's handle to one (the
/// simulator keeps its nodes where the harness can inspect them between
/// steps; the node process wraps it to time each call).
pub trait Core {
    fn handle(&mut self, now: Millis, input: Input) -> Step;
}

impl Core for Node {
    fn handle(&mut self, now: Millis, input: Input) -> Step {
        Node::handle(self, now, input)
    }
}

/// The surroundings of one node: where inputs come from and where each part
/// of a step goes.
///
/// The driver runs on one task and awaits the shell's futures in place, so
/// they need not be `Send`; the lint about auto-trait bounds on `async fn`
/// in public traits does not apply.
#[allow(async_fn_in_trait)]
pub trait Shell {
    type Error;

    /// The next input and the local time, waiting at most until `wake_at`
    /// (then `Input::Tick`). `None`: stop now, without a last step. A shell
    /// that shuts down gracefully hands in [`Input::ShutDown`] instead.
    async fn next(&mut self, wake_at: Option<Millis>) -> Option<(Millis, Input)>;

    /// Makes `records` durable, atomically and in order; returns only once
    /// they are. Called for every step that has records, before anything
    /// else of the step is performed.
    async fn persist(&mut self, records: &[Record]) -> Result<(), Self::Error>;

    /// Metrics, audit and the simulator's checker.
    fn observe(&mut self, observations: &[Observation]);

    /// The answer to an operator command.
    fn reply(&mut self, request: RequestId, reply: Reply);

    /// Hands messages to the transport. Never blocks: queues are bounded and
    /// a full queue drops (the protocol retries what matters).
    fn send(&mut self, envelopes: Vec<Envelope>);

    /// Starts engine jobs; their results come back through [`Shell::next`]
    /// as [`Input::Compute`].
    fn compute(&mut self, jobs: Vec<ComputeJob>);

    /// Hands requests to the Bitcoin backend; the answers come back through
    /// [`Shell::next`] as [`Input::Chain`]. Never blocks.
    fn chain(&mut self, requests: Vec<ChainRequest>);
}

/// When the loop first asks for input: at once, so the work a restarted node
/// found in its records (resent votes, abandoned sessions, catch-up
/// requests) goes out before anything else arrives.
const START: Millis = Millis(0);

/// Runs `node` until the shell stops: `Ok` after [`Input::ShutDown`]'s step
/// was performed or when [`Shell::next`] returns `None`; `Err` when a
/// persist failed, with nothing of that step performed after it.
pub async fn drive<C: Core + ?Sized, S: Shell>(node: &mut C, shell: &mut S) -> Result<(), S::Error> {
    let mut wake_at = Some(START);
    while let Some((now, input)) = shell.next(wake_at).await {
        let last = matches!(input, Input::ShutDown);
        let step = node.handle(now, input);
        wake_at = step.wake_at;
        perform(step, shell).await?;
        if last {
            break;
        }
    }
    Ok(())
}

/// One step, in the order of the durability rule.
async fn perform<S: Shell>(step: Step, shell: &mut S) -> Result<(), S::Error> {
    let Step { persist, send, compute, replies, observations, chain, wake_at: _ } = step;
    if !persist.is_empty() {
        shell.persist(&persist).await?;
    }
    if !observations.is_empty() {
        shell.observe(&observations);
    }
    for (request, reply) in replies {
        shell.reply(request, reply);
    }
    if !send.is_empty() {
        shell.send(send);
    }
    if !compute.is_empty() {
        shell.compute(compute);
    }
    if !chain.is_empty() {
        shell.chain(chain);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{NodeId, PresigId, TxId};
    use crate::message::PeerMessage;
    use std::collections::VecDeque;
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    /// Runs a future whose every await is ready at once (the recording
    /// shell never waits), without any runtime.
    fn run_now<F: Future>(future: F) -> F::Output {
        let mut future = pin!(future);
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..1_000 {
            if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
                return out;
            }
        }
        panic!("the driver waited on a shell that never makes it wait");
    }

    /// A core that answers each input with a prepared step.
    struct Scripted {
        steps: VecDeque<Step>,
        seen: Vec<(Millis, String)>,
    }

    impl Core for Scripted {
        fn handle(&mut self, now: Millis, input: Input) -> Step {
            self.seen.push((now, format!("{input:?}")));
            self.steps.pop_front().unwrap_or_default()
        }
    }

    /// Records every call in order; `persist` fails on the `fail_at`-th call.
    #[derive(Default)]
    struct Recording {
        inputs: VecDeque<(Millis, Input)>,
        calls: Vec<String>,
        wakes: Vec<Option<Millis>>,
        fail_at: Option<usize>,
        persists: usize,
    }

    impl Shell for Recording {
        type Error = String;
        async fn next(&mut self, wake_at: Option<Millis>) -> Option<(Millis, Input)> {
            self.wakes.push(wake_at);
            self.inputs.pop_front()
        }
        async fn persist(&mut self, records: &[Record]) -> Result<(), String> {
            self.persists += 1;
            if self.fail_at == Some(self.persists) {
                self.calls.push("persist failed".into());
                return Err("disk full".into());
            }
            self.calls.push(format!("persist {}", records.iter().map(|r| r.kind()).collect::<Vec<_>>().join(",")));
            Ok(())
        }
        fn observe(&mut self, observations: &[Observation]) {
            self.calls.push(format!("observe {}", observations.len()));
        }
        fn reply(&mut self, request: RequestId, _reply: Reply) {
            self.calls.push(format!("reply {}", request.0));
        }
        fn send(&mut self, envelopes: Vec<Envelope>) {
            self.calls.push(format!("send {}", envelopes.iter().map(|e| e.msg.kind()).collect::<Vec<_>>().join(",")));
        }
        fn compute(&mut self, jobs: Vec<ComputeJob>) {
            self.calls.push(format!("compute {}", jobs.len()));
        }
        fn chain(&mut self, requests: Vec<ChainRequest>) {
            self.calls.push(format!("chain {}", requests.len()));
        }
    }

    fn tx() -> TxId {
        TxId([7; 32])
    }

    /// The step a signer produces when it releases a partial signature:
    /// the consumption record and the message that carries the signature.
    fn signing_step(wake: u64) -> Step {
        let presig = PresigId { origin: NodeId(1), seq: 4 };
        Step {
            persist: vec![Record::PresigConsumed { id: presig, tx: tx(), input: 0, message: [1; 32], sigma: [2; 32] }],
            send: vec![Envelope {
                to: NodeId(2),
                msg: PeerMessage::SigningResponse {
                    tx: tx(),
                    input: 0,
                    presig,
                    result: Ok(crate::message::PartialSig([2; 32])),
                },
            }],
            compute: vec![ComputeJob::Abort { session: crate::ids::SessionId::Presign(presig) }],
            replies: vec![(RequestId(9), Reply::Submitted(Ok(tx())))],
            observations: vec![Observation::TxSigned { tx: tx(), txid: "00".into() }],
            chain: vec![ChainRequest::Broadcast { tx: tx(), raw_tx: vec![1, 2, 3] }],
            wake_at: Some(Millis(wake)),
        }
    }

    #[test]
    fn persist_comes_first_then_observations_replies_sends_and_jobs() {
        let mut core = Scripted { steps: VecDeque::from([signing_step(50), Step::default()]), seen: Vec::new() };
        let mut shell = Recording::default();
        shell.inputs.push_back((Millis(10), Input::Tick));
        shell.inputs.push_back((Millis(50), Input::Tick));
        run_now(drive(&mut core, &mut shell)).expect("no persist fails");
        assert_eq!(
            shell.calls,
            ["persist presig_consumed", "observe 1", "reply 9", "send signing_response", "compute 1", "chain 1"],
            "the step's parts were performed out of order"
        );
        // The first wait is "at once"; later waits are what the core asked.
        assert_eq!(shell.wakes, [Some(START), Some(Millis(50)), None]);
        assert_eq!(core.seen.iter().map(|(t, _)| t.0).collect::<Vec<_>>(), [10, 50]);
    }

    #[test]
    fn a_failed_persist_ends_the_loop_and_nothing_of_its_step_is_performed() {
        let mut core = Scripted { steps: VecDeque::from([signing_step(5), signing_step(6)]), seen: Vec::new() };
        let mut shell = Recording { fail_at: Some(2), ..Recording::default() };
        for t in [1, 2, 3] {
            shell.inputs.push_back((Millis(t), Input::Tick));
        }
        let result = run_now(drive(&mut core, &mut shell));
        assert_eq!(result, Err("disk full".to_string()));
        let after_failure: Vec<&String> = shell.calls.iter().skip_while(|c| *c != "persist failed").skip(1).collect();
        assert!(after_failure.is_empty(), "performed after the failed persist: {after_failure:?}");
        assert_eq!(core.seen.len(), 2, "the driver asked for another input after a failed persist");
        assert_eq!(shell.inputs.len(), 1, "the third input was taken");
    }

    #[test]
    fn a_step_without_records_never_calls_persist() {
        let mut step = signing_step(5);
        step.persist.clear();
        let mut core = Scripted { steps: VecDeque::from([step]), seen: Vec::new() };
        let mut shell = Recording::default();
        shell.inputs.push_back((Millis(1), Input::Tick));
        run_now(drive(&mut core, &mut shell)).unwrap();
        assert!(!shell.calls.iter().any(|c| c.starts_with("persist")));
        assert_eq!(shell.calls[0], "observe 1");
    }

    #[test]
    fn shutdown_is_the_last_step_performed() {
        let mut core = Scripted { steps: VecDeque::from([signing_step(5)]), seen: Vec::new() };
        let mut shell = Recording::default();
        shell.inputs.push_back((Millis(1), Input::ShutDown));
        shell.inputs.push_back((Millis(2), Input::Tick));
        run_now(drive(&mut core, &mut shell)).unwrap();
        assert_eq!(core.seen.len(), 1);
        assert!(core.seen[0].1.contains("ShutDown"));
        assert_eq!(shell.calls.len(), 6, "the shutdown step was performed whole");
        assert_eq!(shell.inputs.len(), 1, "an input was taken after shutdown");
    }
}
