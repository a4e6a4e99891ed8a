-- Context compaction (SPEC §7; reference chat-runs.md A.12 and part B): occupancy, failure
-- counter and in-flight compaction per session; a hidden 'summary' boundary message kind.
-- sqlite flavour; keep the logical model identical to the other backend's 0005.
-- Times are Unix epoch milliseconds written by the host's (injectable) clock.

-- The latest prompt occupancy reported by the agent (tokens, input + output of its last
-- step), the last message id and the context revision that figure covers. NULL = no figure:
-- the host estimates from message sizes instead. Cleared by every compaction.
ALTER TABLE sessions ADD COLUMN context_tokens BIGINT NULL;
ALTER TABLE sessions ADD COLUMN context_tokens_upto BIGINT NULL;
ALTER TABLE sessions ADD COLUMN context_tokens_revision BIGINT NULL;
-- Consecutive failed compactions; automatic compaction stops at 3 until one succeeds
-- (a manual request may still run).
ALTER TABLE sessions ADD COLUMN compaction_failures BIGINT NOT NULL DEFAULT 0;
-- The largest message id when automatic compaction was last attempted: no second automatic
-- attempt until newer messages exist (a failed pre-run compaction lets the run go ahead; no
-- thrashing right after a compaction).
ALTER TABLE sessions ADD COLUMN compaction_attempt_upto BIGINT NULL;
-- A compaction asked of a worker and not finished yet: since when, and why ('pre_run',
-- 'mid_run' or 'manual'). The summary must arrive within the compaction timeout.
ALTER TABLE sessions ADD COLUMN compaction_requested_at_ms BIGINT NULL;
ALTER TABLE sessions ADD COLUMN compaction_source TEXT NULL;
-- What the current owner was handed: NULL = a normal run, 'compact' = a compaction job.
-- Cleared with the rest of the ownership.
ALTER TABLE sessions ADD COLUMN run_kind TEXT NULL;

-- messages.kind gains 'summary' (the hidden boundary holding a compaction summary, role
-- 'system'), and summary_upto: the last message id the summary replaces. SQLite cannot alter a
-- CHECK constraint, so the table is rebuilt (this migration runs in one transaction; nothing
-- references messages by foreign key). Message ids are stream cursors and must never be reused,
-- so the AUTOINCREMENT high-water mark of the old table is carried over.
CREATE TABLE messages_new (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id         TEXT   NOT NULL,
    role               TEXT   NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
    kind               TEXT   NOT NULL DEFAULT 'message'
                              CHECK (kind IN ('message', 'command', 'notice', 'summary')),
    body               TEXT   NOT NULL,
    command_body       TEXT   NULL,
    channel_message_id TEXT   NULL,
    sender_id          TEXT   NULL,
    context_revision   BIGINT NOT NULL,
    created_at_ms      BIGINT NOT NULL,
    summary_upto       BIGINT NULL       -- kind 'summary': the last message id it replaces
);
INSERT INTO messages_new (id, session_id, role, kind, body, command_body, channel_message_id,
                          sender_id, context_revision, created_at_ms)
SELECT id, session_id, role, kind, body, command_body, channel_message_id, sender_id,
       context_revision, created_at_ms
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
