-- The delivery outbox (issue 14): what must reach a chat, stored in the same transaction as the
-- state change that produced it (a run's reply or error, a notice), and delivered by whichever
-- replica claims it. PostgreSQL flavour; keep the logical model identical to the other
-- backend's 0006.
CREATE TABLE outbox (
    id                  BIGSERIAL PRIMARY KEY,
    installation_id     TEXT    NOT NULL,
    session_id          TEXT    NOT NULL,
    run_id              TEXT    NULL,                      -- the run whose end produced it
    kind                TEXT    NOT NULL CHECK (kind IN ('reply', 'run_error', 'notice')),
    content             TEXT    NOT NULL,                  -- JSON: what to deliver
    target              TEXT    NOT NULL,                  -- JSON: where, as of enqueueing
    idempotency_key     TEXT    NOT NULL UNIQUE,           -- handed to the channel with every attempt
    state               TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts            BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at_ms  BIGINT  NOT NULL,
    lease_owner         TEXT    NULL,                      -- the replica delivering it now
    lease_expires_at_ms BIGINT  NULL,                      -- another replica may retry after this
    last_error          TEXT    NULL,
    channel_message_id  TEXT    NULL,                      -- the channel's id of the sent message
    created_at_ms       BIGINT  NOT NULL,
    done_at_ms          BIGINT  NULL
);
CREATE INDEX outbox_due ON outbox (next_attempt_at_ms) WHERE state = 'pending';
CREATE INDEX outbox_session ON outbox (session_id, id);
