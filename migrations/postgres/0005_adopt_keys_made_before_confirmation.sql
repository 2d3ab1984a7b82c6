-- A database written before key confirmation (0004) holds its key share
-- with no statement and no adoption: back then a node adopted the key its
-- own keygen gave it. Without this, the upgraded node would come up with
-- that share pending and wait forever for confirmations nobody will send
-- (the other members adopted it the same way), refusing to sign.
--
-- Only such a database matches: since 0004 every key share is written in
-- the same transaction as this node's own signed confirmation of it, so a
-- database with a share and no statement at all predates 0004. The newest
-- share is the one the old code ran on.
INSERT INTO key_adopted (origin, seq, written)
SELECT origin, seq, written FROM key_shares
WHERE NOT EXISTS (SELECT 1 FROM dkg_statements)
  AND NOT EXISTS (SELECT 1 FROM key_adopted)
ORDER BY written DESC, seq DESC
LIMIT 1;
