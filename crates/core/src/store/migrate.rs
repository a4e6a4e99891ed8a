//! Schema migrations, embedded in the binary.
//!
//! The SQL lives in `migrations/<backend>/NNNN_<description>.sql` at the workspace root and is
//! compiled in with `include_str!`, so the binary needs no migrations folder at run time and the
//! sqlx `macros` feature (and its build cost) is not needed. The migrator is built through sqlx's
//! public [`MigrationSource`] trait; sqlx records applied versions and their checksums in
//! `_sqlx_migrations`, so running it again applies only what is new (and refuses a database whose
//! applied migrations were edited afterwards or come from a newer binary).
//!
//! Adding a migration: create the file for BOTH backends with the next version number and add
//! one line to each list below. A unit test checks that the lists match the folders.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

use super::Backend;

/// One embedded migration: version, description, SQL.
type Embedded = (i64, &'static str, &'static str);

/// SQLite migrations, in version order.
const SQLITE: &[Embedded] = &[
    (
        1,
        "plugin_kv",
        include_str!("../../../../migrations/sqlite/0001_plugin_kv.sql"),
    ),
    (
        2,
        "ingest",
        include_str!("../../../../migrations/sqlite/0002_ingest.sql"),
    ),
    (
        3,
        "runs",
        include_str!("../../../../migrations/sqlite/0003_runs.sql"),
    ),
    (
        4,
        "agent_presence",
        include_str!("../../../../migrations/sqlite/0004_agent_presence.sql"),
    ),
    (
        5,
        "compaction",
        include_str!("../../../../migrations/sqlite/0005_compaction.sql"),
    ),
    (
        6,
        "outbox",
        include_str!("../../../../migrations/sqlite/0006_outbox.sql"),
    ),
    (
        7,
        "retention",
        include_str!("../../../../migrations/sqlite/0007_retention.sql"),
    ),
    (
        8,
        "channel_neutral",
        include_str!("../../../../migrations/sqlite/0008_channel_neutral.sql"),
    ),
    (
        9,
        "pairing",
        include_str!("../../../../migrations/sqlite/0009_pairing.sql"),
    ),
    (
        11,
        "blobs",
        include_str!("../../../../migrations/sqlite/0011_blobs.sql"),
    ),
    (
        12,
        "approvals",
        include_str!("../../../../migrations/sqlite/0012_approvals.sql"),
    ),
];

/// PostgreSQL migrations, in version order.
const POSTGRES: &[Embedded] = &[
    (
        1,
        "plugin_kv",
        include_str!("../../../../migrations/postgres/0001_plugin_kv.sql"),
    ),
    (
        2,
        "ingest",
        include_str!("../../../../migrations/postgres/0002_ingest.sql"),
    ),
    (
        3,
        "runs",
        include_str!("../../../../migrations/postgres/0003_runs.sql"),
    ),
    (
        4,
        "agent_presence",
        include_str!("../../../../migrations/postgres/0004_agent_presence.sql"),
    ),
    (
        5,
        "compaction",
        include_str!("../../../../migrations/postgres/0005_compaction.sql"),
    ),
    (
        6,
        "outbox",
        include_str!("../../../../migrations/postgres/0006_outbox.sql"),
    ),
    (
        7,
        "retention",
        include_str!("../../../../migrations/postgres/0007_retention.sql"),
    ),
    (
        8,
        "channel_neutral",
        include_str!("../../../../migrations/postgres/0008_channel_neutral.sql"),
    ),
    (
        9,
        "pairing",
        include_str!("../../../../migrations/postgres/0009_pairing.sql"),
    ),
    (
        11,
        "blobs",
        include_str!("../../../../migrations/postgres/0011_blobs.sql"),
    ),
    (
        12,
        "approvals",
        include_str!("../../../../migrations/postgres/0012_approvals.sql"),
    ),
];

/// The embedded migrations of one backend, as a sqlx migration source.
#[derive(Debug, Clone, Copy)]
struct EmbeddedSource(&'static [Embedded]);

impl MigrationSource<'static> for EmbeddedSource {
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 'static>> {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|&(version, description, sql)| {
                    Migration::new(
                        version,
                        Cow::Borrowed(description),
                        MigrationType::Simple,
                        Cow::Borrowed(sql),
                        false, // every migration runs in its own transaction
                    )
                })
                .collect())
        })
    }
}

/// Builds the migrator for `backend`.
///
/// Defaults kept on purpose: locking on (PostgreSQL replicas booting together take sqlx's
/// advisory lock, so only one applies a migration) and `ignore_missing` off (a database migrated
/// by a newer binary is refused instead of being used with an older schema model).
pub(super) async fn migrator(backend: Backend) -> Result<Migrator, sqlx::migrate::MigrateError> {
    let source = match backend {
        Backend::Sqlite => EmbeddedSource(SQLITE),
        Backend::Postgres => EmbeddedSource(POSTGRES),
    };
    Migrator::new(source).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Versions and descriptions parsed from the file names in `migrations/<dir>/`.
    fn files_in(dir: &str) -> Vec<(i64, String)> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../migrations")
            .join(dir);
        let mut found: Vec<(i64, String)> = std::fs::read_dir(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter_map(|name| {
                let stem = name.strip_suffix(".sql")?;
                let (version, description) = stem.split_once('_')?;
                Some((version.parse().ok()?, description.to_owned()))
            })
            .collect();
        found.sort();
        found
    }

    fn listed(list: &[Embedded]) -> Vec<(i64, String)> {
        list.iter().map(|&(v, d, _)| (v, d.to_owned())).collect()
    }

    #[test]
    fn embedded_lists_match_the_migration_folders() {
        assert_eq!(listed(SQLITE), files_in("sqlite"), "sqlite migrations");
        assert_eq!(
            listed(POSTGRES),
            files_in("postgres"),
            "postgres migrations"
        );
        assert_eq!(
            listed(SQLITE),
            listed(POSTGRES),
            "both backends must have the same migration versions"
        );
    }
}
