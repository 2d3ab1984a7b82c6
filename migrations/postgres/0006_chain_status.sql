-- A signed transaction's life on chain beyond its state (issue 12): the
-- block that confirms it, or why its broadcast is stalled. One encoded
-- `mpc_core::ChainStatus`, rewritten with each change; NULL until the node
-- first has something to say.
ALTER TABLE transactions ADD COLUMN chain BYTEA;
