-- Media ingestion (issue 18): one row per attachment of a stored message, inserted in the
-- transaction that stores the message and downloaded afterwards by a background worker into the
-- content-addressed blob directory. The row is both the job (state, attempts, lease, next
-- attempt) and the record (size, sha256, sniffed mime, or why it failed). PostgreSQL flavour; keep the
-- logical model identical to the other backend's 0011.
CREATE TABLE blobs (
    id                  TEXT    PRIMARY KEY,               -- random, handed to workers in URLs
    installation_id     TEXT    NOT NULL,
    session_id          TEXT    NOT NULL,
    channel_message_id  TEXT    NOT NULL,                  -- what fetch-attachment is called with
    attachment_ref      TEXT    NOT NULL,                  -- the plugin's opaque ref
    kind                TEXT    NOT NULL,                  -- image, file, audio, video, ...
    declared_mime       TEXT    NULL,                      -- the channel's hint
    state               TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'stored', 'failed')),
    attempts            BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at_ms  BIGINT  NOT NULL,
    lease_owner         TEXT    NULL,                      -- the replica downloading it now
    lease_expires_at_ms BIGINT  NULL,
    size                BIGINT  NULL,                      -- bytes, once stored
    sha256              TEXT    NULL,                      -- hex; the file's name in the store
    mime                TEXT    NULL,                      -- sniffed from the bytes
    error               TEXT    NULL,                      -- why the last attempt failed
    created_at_ms       BIGINT  NOT NULL,
    done_at_ms          BIGINT  NULL
);
CREATE INDEX blobs_due ON blobs (next_attempt_at_ms) WHERE state = 'pending';
CREATE INDEX blobs_installation_stored ON blobs (installation_id) WHERE state = 'stored';
