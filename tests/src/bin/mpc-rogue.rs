//! mpc-rogue (TEST ONLY): a cluster member that cheats, for the
//! byzantine_scenarios suite. It is a real member: mpc-node's own start-up
//! and core (`mpc_node::run::run_with`), its real certificate, vote key and
//! database. Only what it sends passes through one act first:
//!
//! - `equivocate`: each vote it casts goes to odd-numbered members as cast
//!   and to even-numbered ones with the opposite decision, signed with its
//!   own key: two valid, conflicting votes.
//! - `forge-votes`: with each vote it casts it sends one in every other
//!   member's name, signed with its own key (so none verifies).
//! - `bad-partials`: every partial signature it releases has a bit flipped.
//! - `flood`: every message goes out fifty times, each copy followed by an
//!   abandon of a presignature the receiver started and the rogue has no
//!   part in (which it may not abandon).
//!
//! `mpc-rogue --config node.toml --act ACT` (the node's usual config). It
//! lives in tests/ and is never built into mpc-node.

use clap::{Parser, ValueEnum};
use mpc_core::vote::{Decision, SignedVote};
use mpc_core::{Envelope, NodeId, PeerMessage};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Act {
    Equivocate,
    ForgeVotes,
    BadPartials,
    Flood,
}

#[derive(Parser)]
struct Args {
    #[arg(long)]
    config: PathBuf,
    #[arg(long, value_enum)]
    act: Act,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .with_target(false)
        .init();
    let config = mpc_node::config::Config::load(&args.config)?;
    let identity = mpc_node::run::identity(&config)?;
    let cluster_id = config.core.cluster.cluster_id.clone();
    let members: Vec<NodeId> = config.core.cluster.members.keys().copied().collect();
    let me = identity.id;
    let key = identity.vote_key.clone();
    let act = args.act;
    let mut bogus = 0u64;
    tracing::warn!(node = me.0, ?act, "ROGUE MEMBER (test only): cheating as told");
    let hook: mpc_node::shell::Outbound = Box::new(move |envelope: Envelope| -> Vec<Envelope> {
        match (act, envelope.msg) {
            (Act::Equivocate, PeerMessage::Vote(vote)) if vote.body.voter == me && envelope.to.0.is_multiple_of(2) => {
                let mut body = vote.body.clone();
                body.decision = match body.decision {
                    Decision::Approve => Decision::Reject("rogue: changed its mind".into()),
                    Decision::Reject(_) => Decision::Approve,
                };
                vec![Envelope { to: envelope.to, msg: PeerMessage::Vote(SignedVote::sign(body, &key, &cluster_id)) }]
            }
            (Act::ForgeVotes, PeerMessage::Vote(vote)) if vote.body.voter == me => {
                let mut out = vec![Envelope { to: envelope.to, msg: PeerMessage::Vote(vote.clone()) }];
                for other in members.iter().filter(|m| **m != me && **m != envelope.to) {
                    let mut body = vote.body.clone();
                    body.voter = *other;
                    out.push(Envelope {
                        to: envelope.to,
                        msg: PeerMessage::Vote(SignedVote::sign(body, &key, &cluster_id)),
                    });
                }
                out
            }
            (Act::BadPartials, PeerMessage::SigningResponse { tx, input, presig, result: Ok(mut partial) }) => {
                partial.0[31] ^= 1;
                vec![Envelope {
                    to: envelope.to,
                    msg: PeerMessage::SigningResponse { tx, input, presig, result: Ok(partial) },
                }]
            }
            (Act::Flood, msg) => {
                let mut out = Vec::with_capacity(100);
                for _ in 0..50 {
                    out.push(Envelope { to: envelope.to, msg: msg.clone() });
                    bogus += 1;
                    let id = mpc_core::PresigId { origin: envelope.to, seq: u64::MAX / 2 + bogus };
                    out.push(Envelope { to: envelope.to, msg: PeerMessage::PresigAbandon { id } });
                }
                out
            }
            (_, msg) => vec![Envelope { to: envelope.to, msg }],
        }
    });
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(mpc_node::run::run_with(config, Some(hook)))?;
    Ok(())
}
