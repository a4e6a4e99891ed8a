-- Channel-neutral schema (contract 0.2): channel-specific identity columns move into JSON, chats
-- may be broadcast channels, and messages may record actions and structured commands.
-- sqlite flavour; keep the logical model identical to the other backend's 0008.
-- This migration runs in one transaction; the bundled SQLite (3.46) has ALTER TABLE DROP COLUMN.

-- installations: the bot's own ids (old columns bot_open_id, bot_union_id) are channel data, so
-- they join the config JSON object under the same keys. A key the config already has wins.
UPDATE installations
SET config = json_insert(config, '$.bot_open_id', bot_open_id)
WHERE bot_open_id <> '' AND json_type(config) = 'object';
UPDATE installations
SET config = json_insert(config, '$.bot_union_id', bot_union_id)
WHERE bot_union_id <> '' AND json_type(config) = 'object';
ALTER TABLE installations DROP COLUMN bot_open_id;
ALTER TABLE installations DROP COLUMN bot_union_id;

-- user_bindings: a bound user's other ids, as a JSON array of [scheme, id] pairs, replace the
-- single old union_id column (its value becomes the pair ["union_id", <value>]).
ALTER TABLE user_bindings ADD COLUMN alt_ids TEXT NOT NULL DEFAULT '[]';
UPDATE user_bindings
SET alt_ids = json_array(json_array('union_id', union_id))
WHERE union_id <> '';
ALTER TABLE user_bindings DROP COLUMN union_id;

-- sessions.chat_type gains 'channel'. SQLite cannot alter a CHECK constraint, so the table is
-- rebuilt with the same columns in the same order (0003 and 0005 appended some) and its indexes.
-- queued_messages references sessions with ON DELETE CASCADE and the host runs with foreign keys
-- on, so dropping the old table would delete the queue: its rows are set aside and put back.
CREATE TEMP TABLE queued_messages_0008 AS SELECT * FROM queued_messages;
DELETE FROM queued_messages;

CREATE TABLE sessions_new (
    id                         TEXT    PRIMARY KEY,
    installation_id            TEXT    NOT NULL,
    chat_key                   TEXT    NOT NULL,
    chat_id                    TEXT    NOT NULL,
    chat_type                  TEXT    NOT NULL CHECK (chat_type IN ('direct', 'group', 'channel')),
    thread_id                  TEXT    NULL,
    title                      TEXT    NOT NULL,
    context_revision           BIGINT  NOT NULL DEFAULT 1,
    fresh_pending              BOOLEAN NOT NULL DEFAULT FALSE,  -- bare /new: next message starts fresh
    reply_to_message_id        TEXT    NULL,                    -- last inbound message id (reply anchor)
    reply_thread_id            TEXT    NULL,                    -- its thread, if any
    run_state                  TEXT    NOT NULL DEFAULT 'idle' CHECK (run_state IN ('idle', 'pending', 'running', 'error')),
    flush_due_at_ms            BIGINT  NULL,                    -- durable debounce window end
    flush_generation           BIGINT  NOT NULL DEFAULT 0,      -- fences superseded timers
    flushed_message_id         BIGINT  NOT NULL DEFAULT 0,      -- messages with a larger id are pending
    created_at_ms              BIGINT  NOT NULL,
    updated_at_ms              BIGINT  NOT NULL,
    worker_id                  TEXT    NULL,                    -- 0003: ownership of the current run
    run_id                     TEXT    NULL,
    run_started_at_ms          BIGINT  NULL,
    heartbeat_at_ms            BIGINT  NULL,
    run_context_upto           BIGINT  NULL,
    run_context_revision       BIGINT  NULL,
    last_error                 TEXT    NULL,
    pending_since_ms           BIGINT  NULL,
    context_tokens             BIGINT  NULL,                    -- 0005: occupancy and compaction
    context_tokens_upto        BIGINT  NULL,
    context_tokens_revision    BIGINT  NULL,
    compaction_failures        BIGINT  NOT NULL DEFAULT 0,
    compaction_attempt_upto    BIGINT  NULL,
    compaction_requested_at_ms BIGINT  NULL,
    compaction_source          TEXT    NULL,
    run_kind                   TEXT    NULL,
    UNIQUE (installation_id, chat_key)
);
INSERT INTO sessions_new (
    id, installation_id, chat_key, chat_id, chat_type, thread_id, title, context_revision,
    fresh_pending, reply_to_message_id, reply_thread_id, run_state, flush_due_at_ms,
    flush_generation, flushed_message_id, created_at_ms, updated_at_ms, worker_id, run_id,
    run_started_at_ms, heartbeat_at_ms, run_context_upto, run_context_revision, last_error,
    pending_since_ms, context_tokens, context_tokens_upto, context_tokens_revision,
    compaction_failures, compaction_attempt_upto, compaction_requested_at_ms, compaction_source,
    run_kind)
SELECT
    id, installation_id, chat_key, chat_id, chat_type, thread_id, title, context_revision,
    fresh_pending, reply_to_message_id, reply_thread_id, run_state, flush_due_at_ms,
    flush_generation, flushed_message_id, created_at_ms, updated_at_ms, worker_id, run_id,
    run_started_at_ms, heartbeat_at_ms, run_context_upto, run_context_revision, last_error,
    pending_since_ms, context_tokens, context_tokens_upto, context_tokens_revision,
    compaction_failures, compaction_attempt_upto, compaction_requested_at_ms, compaction_source,
    run_kind
FROM sessions;
DROP TABLE sessions;
ALTER TABLE sessions_new RENAME TO sessions;
CREATE INDEX sessions_flush_due ON sessions (flush_due_at_ms) WHERE flush_due_at_ms IS NOT NULL;
CREATE INDEX sessions_pending ON sessions (pending_since_ms, id) WHERE run_state = 'pending';
CREATE INDEX sessions_running ON sessions (heartbeat_at_ms) WHERE run_state = 'running';

-- The queue comes back with its ids (its AUTOINCREMENT high-water mark was never touched).
INSERT INTO queued_messages SELECT * FROM queued_messages_0008;
DROP TABLE queued_messages_0008;

-- messages.kind gains 'action' (something a participant did rather than said), and meta: JSON
-- describing a structured command ({"command": {"name", "args"}}) or an action; NULL otherwise.
-- Rebuilt like 0005 did (nothing references messages by foreign key); message ids are stream
-- cursors and must never be reused, so the AUTOINCREMENT high-water mark is carried over.
CREATE TABLE messages_new (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id         TEXT   NOT NULL,
    role               TEXT   NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
    kind               TEXT   NOT NULL DEFAULT 'message'
                              CHECK (kind IN ('message', 'command', 'notice', 'summary', 'action')),
    body               TEXT   NOT NULL,
    command_body       TEXT   NULL,
    channel_message_id TEXT   NULL,
    sender_id          TEXT   NULL,
    context_revision   BIGINT NOT NULL,
    created_at_ms      BIGINT NOT NULL,
    summary_upto       BIGINT NULL,      -- kind 'summary': the last message id it replaces
    meta               TEXT   NULL       -- JSON: the command or action, if any
);
INSERT INTO messages_new (id, session_id, role, kind, body, command_body, channel_message_id,
                          sender_id, context_revision, created_at_ms, summary_upto)
SELECT id, session_id, role, kind, body, command_body, channel_message_id, sender_id,
       context_revision, created_at_ms, summary_upto
FROM messages;
DELETE FROM sqlite_sequence WHERE name = 'messages_new';
INSERT INTO sqlite_sequence (name, seq)
SELECT 'messages_new', MAX(seq) FROM (
    SELECT seq FROM sqlite_sequence WHERE name = 'messages'
    UNION ALL SELECT COALESCE(MAX(id), 0) FROM messages
);
DROP TABLE messages;
ALTER TABLE messages_new RENAME TO messages;
CREATE INDEX messages_session ON messages (session_id, id);

-- Outbox notices: the host now chooses a notice's kind and words; rows stored in the old shapes
-- are rewritten to the new ones so they are still delivered.
UPDATE outbox SET content = json_object('kind', 'notice', 'notice', json_object(
        'kind', 'binding_required',
        'link', json_extract(content, '$.notice.url'),
        'recipient', json_extract(content, '$.notice.open_id')))
WHERE kind = 'notice' AND json_extract(content, '$.notice.kind') = 'needs_binding';
UPDATE outbox SET content = json_object('kind', 'notice', 'notice', json_object(
        'kind', 'fresh_context'))
WHERE kind = 'notice' AND json_extract(content, '$.notice.kind') = 'fresh_pending';
UPDATE outbox SET content = json_object('kind', 'notice', 'notice', json_object(
        'kind', 'command_usage', 'detail', '/issue <title>'))
WHERE kind = 'notice' AND json_extract(content, '$.notice.kind') = 'issue_usage';
UPDATE outbox SET content = json_object('kind', 'notice', 'notice', json_object(
        'kind', 'info',
        'detail', 'Recorded: ' || json_extract(content, '$.notice.title') || ' ('
                  || json_extract(content, '$.notice.reference') || ')'))
WHERE kind = 'notice' AND json_extract(content, '$.notice.kind') = 'issue_created';
UPDATE outbox SET content = json_object('kind', 'notice', 'notice', json_object(
        'kind', 'info', 'detail', json_extract(content, '$.notice.text')))
WHERE kind = 'notice' AND json_extract(content, '$.notice.kind') = 'text';

-- A command or action that arrives while a run is active waits in the queue: it keeps its kind
-- and meta there, so it is promoted as the same turn.
ALTER TABLE queued_messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'message';
ALTER TABLE queued_messages ADD COLUMN meta TEXT NULL;
