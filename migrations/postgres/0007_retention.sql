-- Retention (issue 14): indexes that keep the pruning task's bounded deletes cheap.
-- postgres flavour; keep the logical model identical to the other backend's 0007.
-- inbound_dedup already has inbound_dedup_received and plugin_kv its expiry index (0001, 0002).

-- Audit rows older than [retention] audit_days, oldest first, without scanning the table
-- (inbound_audit_installation leads with installation_id and cannot serve a time range alone).
CREATE INDEX inbound_audit_received ON inbound_audit (received_at_ms);

-- Binding tokens past their expiry (plus the grace), and used ones, which are pruned at once.
CREATE INDEX binding_tokens_expires ON binding_tokens (expires_at_ms);
CREATE INDEX binding_tokens_consumed ON binding_tokens (consumed_at_ms)
    WHERE consumed_at_ms IS NOT NULL;
