-- Context compaction (SPEC §7; reference chat-runs.md A.12 and part B): occupancy, failure
-- counter and in-flight compaction per session; a hidden 'summary' boundary message kind.
-- postgres flavour; keep the logical model identical to the other backend's 0005.
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
-- 'system'), and summary_upto: the last message id the summary replaces.
ALTER TABLE messages DROP CONSTRAINT messages_kind_check;
ALTER TABLE messages ADD CONSTRAINT messages_kind_check
    CHECK (kind IN ('message', 'command', 'notice', 'summary'));
ALTER TABLE messages ADD COLUMN summary_upto BIGINT NULL;
