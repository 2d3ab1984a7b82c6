-- The presignatures a signed transaction's signatures used (one encoded
-- `Vec<mpc_core::PresigId>`), written with `signed_raw`: after a restart a
-- node still knows them spent, also those it held no share of. NULL in
-- rows signed before this column existed.
ALTER TABLE transactions ADD COLUMN signed_presigs BYTEA;
