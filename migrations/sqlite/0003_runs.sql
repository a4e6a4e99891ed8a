-- Run lifecycle (SPEC §5; reference chat-runs.md A.3–A.9): ownership, heartbeats, errors,
-- acquisition order and the per-session queue of messages that arrived while a run was active.
-- sqlite flavour; keep the logical model identical to the other backend's 0003.
-- Times are Unix epoch milliseconds written by the host's (injectable) clock.

-- Ownership of the current run. run_id is a fresh UUID per acquisition: the fencing token every
-- worker write (heartbeat, reply, release) must present. All of them are NULL unless running.
ALTER TABLE sessions ADD COLUMN worker_id TEXT NULL;
ALTER TABLE sessions ADD COLUMN run_id TEXT NULL;
ALTER TABLE sessions ADD COLUMN run_started_at_ms BIGINT NULL;
ALTER TABLE sessions ADD COLUMN heartbeat_at_ms BIGINT NULL;
-- The largest message id (and the context revision) the current run sees: later rows wait.
ALTER TABLE sessions ADD COLUMN run_context_upto BIGINT NULL;
ALTER TABLE sessions ADD COLUMN run_context_revision BIGINT NULL;
-- Why the last run failed (run_state 'error'); cleared on the way to 'pending'.
ALTER TABLE sessions ADD COLUMN last_error TEXT NULL;
-- Set when a session becomes pending: workers take the oldest first.
ALTER TABLE sessions ADD COLUMN pending_since_ms BIGINT NULL;

UPDATE sessions SET pending_since_ms = updated_at_ms WHERE run_state = 'pending';

-- The acquisition scan and the stale scan.
CREATE INDEX sessions_pending ON sessions (pending_since_ms, id) WHERE run_state = 'pending';
CREATE INDEX sessions_running ON sessions (heartbeat_at_ms) WHERE run_state = 'running';

-- Messages that arrived while a run was active, oldest first (id order). Promoted into
-- 'messages' when the run ends (or by an operator); deleted with their session.
CREATE TABLE queued_messages (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id         TEXT    NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    body               TEXT    NOT NULL,                  -- what the agent will read
    command_body       TEXT    NULL,                      -- the user's own text
    channel_message_id TEXT    NULL,
    thread_id          TEXT    NULL,                      -- topic thread (reply anchor)
    sender_id          TEXT    NULL,
    source             TEXT    NOT NULL CHECK (source IN ('channel', 'api')),
    fresh_start        BOOLEAN NOT NULL DEFAULT FALSE,    -- '/new <text>': starts a new revision
    created_at_ms      BIGINT  NOT NULL
);
CREATE INDEX queued_messages_session ON queued_messages (session_id, id);
