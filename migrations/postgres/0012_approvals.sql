-- Approvals (issue 18): a worker asks the chat to approve or reject a step of its run; the
-- request survives a restart. postgres flavour; keep the logical model identical to the other
-- backend's 0012.
CREATE TABLE approvals (
    id               TEXT    PRIMARY KEY,                 -- short random id, carried by the buttons
    installation_id  TEXT    NOT NULL,
    session_id       TEXT    NOT NULL,
    run_id           TEXT    NOT NULL,                    -- the run that asked (its owner polls)
    agent            TEXT    NOT NULL,
    prompt           TEXT    NOT NULL,
    approvers        TEXT    NOT NULL DEFAULT '[]',       -- JSON list of participant ids; [] = anyone in the chat
    state            TEXT    NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'approved', 'rejected', 'expired')),
    decided_by       TEXT    NULL,                        -- participant id of the decider
    decided_by_name  TEXT    NULL,                        -- their display name, when the channel gave one
    decided_at_ms    BIGINT  NULL,
    card_message_id  TEXT    NULL,                        -- the channel message that carries the buttons
    update_token     TEXT    NULL,                        -- a channel token from a press, to update that message later
    outbox_id        BIGINT  NULL,                        -- the outbox row that delivers the buttons
    card_updated     BOOLEAN NOT NULL DEFAULT FALSE,      -- the expired card was updated (or given up)
    created_at_ms    BIGINT  NOT NULL,
    expires_at_ms    BIGINT  NOT NULL
);

-- The expiry sweep reads pending approvals past their deadline, then expired cards to update.
CREATE INDEX approvals_pending_expiry ON approvals (expires_at_ms) WHERE state = 'pending';
CREATE INDEX approvals_card_update ON approvals (decided_at_ms)
    WHERE state = 'expired' AND card_updated = FALSE;
CREATE INDEX approvals_session ON approvals (session_id);
