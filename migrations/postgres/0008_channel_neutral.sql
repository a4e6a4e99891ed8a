-- Channel-neutral schema (contract 0.2): channel-specific identity columns move into JSON, chats
-- may be broadcast channels, and messages may record actions and structured commands.
-- postgres flavour; keep the logical model identical to the other backend's 0008.
-- JSON lives in TEXT columns (as everywhere in this schema); it is cast to jsonb only to edit it.

-- installations: the bot's own ids (old columns bot_open_id, bot_union_id) are channel data, so
-- they join the config JSON object under the same keys. A key the config already has wins
-- (the right operand of || wins).
UPDATE installations
SET config = (jsonb_build_object('bot_open_id', bot_open_id) || config::jsonb)::text
WHERE bot_open_id <> '' AND jsonb_typeof(config::jsonb) = 'object';
UPDATE installations
SET config = (jsonb_build_object('bot_union_id', bot_union_id) || config::jsonb)::text
WHERE bot_union_id <> '' AND jsonb_typeof(config::jsonb) = 'object';
ALTER TABLE installations DROP COLUMN bot_open_id;
ALTER TABLE installations DROP COLUMN bot_union_id;

-- user_bindings: a bound user's other ids, as a JSON array of [scheme, id] pairs, replace the
-- single old union_id column (its value becomes the pair ["union_id", <value>]).
ALTER TABLE user_bindings ADD COLUMN alt_ids TEXT NOT NULL DEFAULT '[]';
UPDATE user_bindings
SET alt_ids = jsonb_build_array(jsonb_build_array('union_id', union_id))::text
WHERE union_id <> '';
ALTER TABLE user_bindings DROP COLUMN union_id;

-- sessions.chat_type gains 'channel'.
ALTER TABLE sessions DROP CONSTRAINT sessions_chat_type_check;
ALTER TABLE sessions ADD CONSTRAINT sessions_chat_type_check
    CHECK (chat_type IN ('direct', 'group', 'channel'));

-- messages.kind gains 'action' (something a participant did rather than said), and meta: JSON
-- describing a structured command ({"command": {"name", "args"}}) or an action; NULL otherwise.
ALTER TABLE messages DROP CONSTRAINT messages_kind_check;
ALTER TABLE messages ADD CONSTRAINT messages_kind_check
    CHECK (kind IN ('message', 'command', 'notice', 'summary', 'action'));
ALTER TABLE messages ADD COLUMN meta TEXT NULL;

-- Outbox notices: the host now chooses a notice's kind and words; rows stored in the old shapes
-- are rewritten to the new ones so they are still delivered.
UPDATE outbox SET content = jsonb_build_object('kind', 'notice', 'notice', jsonb_build_object(
        'kind', 'binding_required',
        'link', content::jsonb #>> '{notice,url}',
        'recipient', content::jsonb #>> '{notice,open_id}'))::text
WHERE kind = 'notice' AND content::jsonb #>> '{notice,kind}' = 'needs_binding';
UPDATE outbox SET content = jsonb_build_object('kind', 'notice', 'notice', jsonb_build_object(
        'kind', 'fresh_context'))::text
WHERE kind = 'notice' AND content::jsonb #>> '{notice,kind}' = 'fresh_pending';
UPDATE outbox SET content = jsonb_build_object('kind', 'notice', 'notice', jsonb_build_object(
        'kind', 'command_usage', 'detail', '/issue <title>'))::text
WHERE kind = 'notice' AND content::jsonb #>> '{notice,kind}' = 'issue_usage';
UPDATE outbox SET content = jsonb_build_object('kind', 'notice', 'notice', jsonb_build_object(
        'kind', 'info',
        'detail', 'Recorded: ' || (content::jsonb #>> '{notice,title}') || ' ('
                  || (content::jsonb #>> '{notice,reference}') || ')'))::text
WHERE kind = 'notice' AND content::jsonb #>> '{notice,kind}' = 'issue_created';
UPDATE outbox SET content = jsonb_build_object('kind', 'notice', 'notice', jsonb_build_object(
        'kind', 'info', 'detail', content::jsonb #>> '{notice,text}'))::text
WHERE kind = 'notice' AND content::jsonb #>> '{notice,kind}' = 'text';

-- A command or action that arrives while a run is active waits in the queue: it keeps its kind
-- and meta there, so it is promoted as the same turn.
ALTER TABLE queued_messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'message';
ALTER TABLE queued_messages ADD COLUMN meta TEXT NULL;
