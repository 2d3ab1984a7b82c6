//! One node's protocol engine on a thread of its own (engines are not
//! `Send`, so each is created on its thread). Jobs carry the incarnation
//! that asked for them, so results of a crashed incarnation are discarded.

use mpc_core::engine::{ComputeJob, Engine};
use mpc_core::ComputeResult;
use std::sync::mpsc;

pub(crate) struct EngineThread {
    jobs: mpsc::Sender<EngineCommand>,
    results: mpsc::Receiver<(u32, ComputeResult)>,
}

enum EngineCommand {
    Run(u32, ComputeJob),
    /// The node crashed: its running sessions are lost.
    Reset,
}

impl EngineThread {
    pub(crate) fn spawn(name: String) -> EngineThread {
        let (jobs, job_rx) = mpsc::channel::<EngineCommand>();
        let (result_tx, results) = mpsc::channel();
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let mut engine = Engine::new();
                for command in job_rx {
                    match command {
                        EngineCommand::Run(incarnation, job) => {
                            if result_tx.send((incarnation, engine.run(job))).is_err() {
                                return;
                            }
                        }
                        EngineCommand::Reset => engine = Engine::new(),
                    }
                }
            })
            .expect("spawn engine thread");
        EngineThread { jobs, results }
    }

    pub(crate) fn submit(&self, incarnation: u32, job: ComputeJob) {
        self.jobs.send(EngineCommand::Run(incarnation, job)).expect("engine thread alive");
    }

    /// Blocks until the engine has the result of this incarnation's oldest
    /// outstanding job.
    pub(crate) fn result(&self, incarnation: u32) -> ComputeResult {
        loop {
            let (from, result) = self.results.recv().expect("engine thread alive");
            if from == incarnation {
                return result;
            }
        }
    }

    pub(crate) fn reset(&self) {
        self.jobs.send(EngineCommand::Reset).expect("engine thread alive");
    }
}
