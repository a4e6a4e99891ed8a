-- Plugin key/value store (SPEC §2, kv capability), SQLite flavour.
-- One row per (plugin, installation, key). A row whose expires_at_ms is at or
-- before "now" is expired: readers treat it as absent and purge deletes it.
-- Times are Unix epoch milliseconds. Keep the logical model identical to
-- migrations/postgres/0001_plugin_kv.sql.
CREATE TABLE IF NOT EXISTS plugin_kv (
    plugin        TEXT   NOT NULL,
    installation  TEXT   NOT NULL,
    key           TEXT   NOT NULL,
    value         BLOB   NOT NULL,
    expires_at_ms BIGINT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (plugin, installation, key)
);

-- Purging expired rows scans only rows that have a TTL.
CREATE INDEX IF NOT EXISTS plugin_kv_expires_at_ms
    ON plugin_kv (expires_at_ms)
    WHERE expires_at_ms IS NOT NULL;
