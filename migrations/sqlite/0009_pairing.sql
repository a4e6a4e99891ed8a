-- Pairing (issue 19): a sender the `bound` policy does not know gets a short code; the
-- operator approves it (`switchboard pairing approve CODE`), which creates the binding.
-- sqlite flavour; keep the logical model identical to the other backend's 0009.
--
-- The code is found by its SHA-256 (code_hash), so a lookup never compares the code itself;
-- the code is kept to tell the same sender the same code again within the hour. target is the
-- outbox target (JSON) of the chat the sender wrote from: where "access granted" goes.
CREATE TABLE pairings (
    id              TEXT   PRIMARY KEY,
    code_hash       TEXT   NOT NULL UNIQUE,
    code            TEXT   NOT NULL,
    installation_id TEXT   NOT NULL,
    sender_id       TEXT   NOT NULL,
    sender_alt_ids  TEXT   NOT NULL DEFAULT '[]',
    sender_name     TEXT   NULL,
    target          TEXT   NOT NULL,
    status          TEXT   NOT NULL CHECK (status IN ('pending', 'approved', 'denied')),
    created_at_ms   BIGINT NOT NULL,
    expires_at_ms   BIGINT NOT NULL,
    decided_at_ms   BIGINT NULL,
    CHECK (expires_at_ms <= created_at_ms + 3600000)
);
-- The pending codes of an installation (the cap of 3, a sender's own code, the list).
CREATE INDEX pairings_pending ON pairings (installation_id, status, expires_at_ms);
-- Retention: rows decided or expired long ago, oldest first.
CREATE INDEX pairings_expires ON pairings (expires_at_ms);
