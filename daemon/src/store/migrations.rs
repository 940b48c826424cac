//! The schema, only ever from the SQL files in `migrations/`, applied in order at start-up.

use rusqlite_migration::{M, Migrations};

/// Every migration, oldest first. Append; never edit one that has shipped.
pub(super) fn all() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!("../../../migrations/0001_prior_state.sql")),
        M::up(include_str!("../../../migrations/0002_chunk_locations.sql")),
        M::up(include_str!("../../../migrations/0003_peers.sql")),
        M::up(include_str!("../../../migrations/0004_item_origin.sql")),
        M::up(include_str!("../../../migrations/0005_apply_intents.sql")),
        M::up(include_str!(
            "../../../migrations/0006_item_modified_by.sql"
        )),
        M::up(include_str!(
            "../../../migrations/0007_item_key_and_record.sql"
        )),
        M::up(include_str!("../../../migrations/0008_apply_batches.sql")),
        M::up(include_str!("../../../migrations/0009_folder_moves.sql")),
        M::up(include_str!("../../../migrations/0010_hubs.sql")),
    ])
}

/// Brings a database from any earlier schema (or none) to the latest.
pub(super) fn to_latest(conn: &mut rusqlite::Connection) -> Result<(), String> {
    all()
        .to_latest(conn)
        .map_err(|e| format!("schema migration failed: {e}"))
}

#[cfg(test)]
pub(super) fn to_version(conn: &mut rusqlite::Connection, version: usize) -> Result<(), String> {
    all().to_version(conn, version).map_err(|e| e.to_string())
}
