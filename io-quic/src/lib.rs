//! mpc-io-quic: QUIC with mutual TLS between cluster nodes (quinn, rustls,
//! rcgen). It carries `mpc_core::PeerMessage`s and reports each message's
//! sender as the node id from the peer's certificate; it depends on the
//! core's message types only.
//!
//! Landed so far: [`certs`], the cluster CA and node certificates (node id
//! in the SAN), as `mpc-cli certs init|issue` uses them.

pub mod certs;

pub use mpc_core::PeerMessage;
