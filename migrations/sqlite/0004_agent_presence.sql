-- Worker presence (SPEC §6): when a worker last polled for each `worker` agent, shared by every
-- replica so they agree whether an agent is online. sqlite flavour; keep the logical model
-- identical to the other backend's 0004.
-- One row per agent name (agents are configured, not stored: no foreign key). Upserted at most
-- once per second per agent per host process; the value only moves forward.
CREATE TABLE agent_presence (
    agent           TEXT   NOT NULL PRIMARY KEY,
    last_seen_at_ms BIGINT NOT NULL   -- Unix epoch ms, written by the host's (injectable) clock
);
