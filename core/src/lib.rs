//! mpc-core: the whole protocol of mpc-custody as a deterministic state
//! machine. Events in ([`Input`]), actions out ([`Step`]); no I/O, no clock,
//! no ambient randomness. Time and a seed are passed in, so one seed and one
//! sequence of inputs replay one run bit for bit.
//!
//! Read top-down: [`Node`] (state, restart, dispatch), then one module per
//! protocol: `dkg` and `key_confirmation`, `txflow` (proposals and votes), `pool` (presignatures),
//! `sign`; Bitcoin rules in [`tx`] and [`policy`]; cggmp24's state machines
//! in [`engine`].

pub mod chain;
pub mod config;
mod dkg;
pub mod driver;
pub mod engine;
pub mod error_text;
pub mod expiry;
pub mod ids;
pub mod io;
pub mod key_confirmation;
pub mod lifecycle;
pub mod message;
mod node;
pub mod planted;
pub mod policy;
mod pool;
mod prune;
mod psbt_layout;
pub mod record;
pub mod secret;
mod sign;
mod signing_probe;
pub mod tx;
mod txflow;
pub mod view;
pub mod vote;

pub use chain::{BlockRef, ChainConfig, ChainReport, ChainRequest, ChainSight, ChainStatus};
pub use config::{ClusterConfig, ConfigError, MemberInfo, NodeConfig, PolicyConfig, PoolConfig, Timeouts};
pub use driver::{drive, Core, Shell};
pub use engine::{ComputeJob, ComputeResult, Engine, REDUCED_SECURITY_TEST_ONLY};
pub use ids::{DkgId, Millis, NodeId, PresigId, RequestId, SessionId, TxId};
pub use io::{
    Command, DkgRefusal, DkgStage, Envelope, Input, Observation, Reply, SignerSetPool, StatusReport, Step,
    SubmitRefusal,
};
pub use key_confirmation::{DkgClaim, DkgStatement};
pub use lifecycle::{IllegalTransition, TxEvent};
pub use message::PeerMessage;
pub use node::{Identity, Node, NodeError, Retained};
pub use planted::PlantedBugs;
pub use record::{Record, RecoveredState, TxState};
pub use secret::Secret;
pub use view::DurableView;
