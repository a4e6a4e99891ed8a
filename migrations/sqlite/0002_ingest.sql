-- Durable ingest (SPEC §3, §4, §8): installations, identities, sessions, messages, dedup, audit,
-- commands. sqlite flavour; keep the logical model identical to the other backend's 0002.
-- Times are Unix epoch milliseconds written by the host's (injectable) clock. Ids are text UUIDs
-- except messages, audit rows and commands, which use increasing integers (stream cursors).

-- A channel installation: one bot of one channel, bound to one agent.
CREATE TABLE installations (
    id                  TEXT    PRIMARY KEY,
    channel             TEXT    NOT NULL,                 -- plugin channel type, e.g. 'lark'
    routing_key         TEXT    NOT NULL,                 -- how inbound events find it (Lark app_id)
    name                TEXT    NOT NULL DEFAULT '',
    config              TEXT    NOT NULL DEFAULT '{}',    -- JSON object of non-secret values
    secrets             BLOB   NULL,                     -- AEAD(nonce || ciphertext) of a JSON object
    bot_open_id         TEXT    NULL,
    bot_union_id        TEXT    NULL,
    access_policy       TEXT    NOT NULL DEFAULT 'open' CHECK (access_policy IN ('open', 'bound')),
    status              TEXT    NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    agent               TEXT    NOT NULL DEFAULT 'echo',  -- the bound agent (runs arrive later)
    debounce_ms         BIGINT  NOT NULL DEFAULT 3000 CHECK (debounce_ms > 0),
    lease_token         TEXT    NULL,                     -- connection ownership across replicas
    lease_expires_at_ms BIGINT  NULL,
    created_at_ms       BIGINT  NOT NULL,
    updated_at_ms       BIGINT  NOT NULL,
    UNIQUE (channel, routing_key)
);

-- A channel user bound to a host user (identity policy 'bound').
CREATE TABLE user_bindings (
    installation_id TEXT   NOT NULL,
    channel_user_id TEXT   NOT NULL,                     -- Lark open_id
    user_ref        TEXT   NOT NULL,                     -- the host-side user it maps to
    union_id        TEXT   NULL,
    bound_at_ms     BIGINT NOT NULL,
    PRIMARY KEY (installation_id, channel_user_id)
);

-- One-time binding links: only the sha256 of the token is stored; 15 minutes; single use.
CREATE TABLE binding_tokens (
    token_hash      TEXT   PRIMARY KEY,
    installation_id TEXT   NOT NULL,
    channel_user_id TEXT   NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    expires_at_ms   BIGINT NOT NULL,
    consumed_at_ms  BIGINT NULL,
    CHECK (expires_at_ms <= created_at_ms + 900000)
);
CREATE INDEX binding_tokens_installation ON binding_tokens (installation_id, expires_at_ms);

-- A conversation: chat id, or 'chat:thread' for topic threads in groups.
CREATE TABLE sessions (
    id                  TEXT    PRIMARY KEY,
    installation_id     TEXT    NOT NULL,
    chat_key            TEXT    NOT NULL,
    chat_id             TEXT    NOT NULL,
    chat_type           TEXT    NOT NULL CHECK (chat_type IN ('direct', 'group')),
    thread_id           TEXT    NULL,
    title               TEXT    NOT NULL,
    context_revision    BIGINT  NOT NULL DEFAULT 1,
    fresh_pending       BOOLEAN NOT NULL DEFAULT FALSE,  -- bare /new: next message starts fresh
    reply_to_message_id TEXT    NULL,                     -- last inbound message id (reply anchor)
    reply_thread_id     TEXT    NULL,                     -- its topic thread, if any
    run_state           TEXT    NOT NULL DEFAULT 'idle' CHECK (run_state IN ('idle', 'pending', 'running', 'error')),
    flush_due_at_ms     BIGINT  NULL,                     -- durable debounce window end
    flush_generation    BIGINT  NOT NULL DEFAULT 0,       -- fences superseded timers
    flushed_message_id  BIGINT  NOT NULL DEFAULT 0,       -- messages with a larger id are pending
    created_at_ms       BIGINT  NOT NULL,
    updated_at_ms       BIGINT  NOT NULL,
    UNIQUE (installation_id, chat_key)
);
CREATE INDEX sessions_flush_due ON sessions (flush_due_at_ms) WHERE flush_due_at_ms IS NOT NULL;

-- Session history. 'body' is the enriched text the agent reads; 'command_body' the user's own text.
CREATE TABLE messages (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id         TEXT   NOT NULL,
    role               TEXT   NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
    kind               TEXT   NOT NULL DEFAULT 'message' CHECK (kind IN ('message', 'command', 'notice')),
    body               TEXT   NOT NULL,
    command_body       TEXT   NULL,
    channel_message_id TEXT   NULL,
    sender_id          TEXT   NULL,
    context_revision   BIGINT NOT NULL,
    created_at_ms      BIGINT NOT NULL
);
CREATE INDEX messages_session ON messages (session_id, id);

-- Inbound dedup claims: processed_at_ms NULL = in flight (re-claimable after 60 s).
CREATE TABLE inbound_dedup (
    installation_id TEXT   NOT NULL,
    message_id      TEXT   NOT NULL,
    claim_token     TEXT   NOT NULL,
    received_at_ms  BIGINT NOT NULL,
    processed_at_ms BIGINT NULL,
    PRIMARY KEY (installation_id, message_id)
);
CREATE INDEX inbound_dedup_received ON inbound_dedup (received_at_ms);

-- Why inbound events were dropped. Never any message content.
CREATE TABLE inbound_audit (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    installation_id TEXT   NULL,
    channel         TEXT   NOT NULL,
    chat_id         TEXT   NULL,
    event_type      TEXT   NOT NULL,
    event_id        TEXT   NULL,
    message_id      TEXT   NULL,
    drop_reason     TEXT   NOT NULL,
    received_at_ms  BIGINT NOT NULL
);
CREATE INDEX inbound_audit_installation ON inbound_audit (installation_id, received_at_ms);

-- Records created by channel commands (/issue).
CREATE TABLE commands (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    installation_id TEXT   NOT NULL,
    session_id      TEXT   NOT NULL,
    message_id      BIGINT NULL,                           -- the command's message row
    kind            TEXT   NOT NULL CHECK (kind IN ('issue')),
    title           TEXT   NOT NULL,
    description     TEXT   NULL,
    sender_id       TEXT   NULL,
    created_at_ms   BIGINT NOT NULL
);
