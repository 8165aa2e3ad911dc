//! The hot statements' query plans: each reads `es_events` through an index or its primary key,
//! never by scanning the table, however long the log grows.

use sqlx::Row;

use crate::SqliteStore;
use crate::store::{
    ALL_TENANTS, FIND_EVENT, LOAD_SNAPSHOT, ONE_TENANT, PLAIN_CONFLICT, READ_STREAM_PAGE,
    STORED_BATCH, STREAM_VERSION,
};

/// The lines of `EXPLAIN QUERY PLAN` for `sql` (parameters unbound: the plan does not depend on
/// their values).
async fn plan(store: &SqliteStore, sql: &str) -> Vec<String> {
    sqlx::query(&format!("EXPLAIN QUERY PLAN {sql}"))
        .fetch_all(store.pool())
        .await
        .unwrap_or_else(|error| panic!("cannot explain {sql}: {error}"))
        .iter()
        .map(|row| row.get::<String, _>("detail"))
        .collect()
}

/// What a plan may scan: a constant row, the batch parameter unpacked by `json_each`,
/// `sqlite_sequence` (one row per table with `AUTOINCREMENT`), and the statements' own
/// subqueries. Everything else is read by searching a key.
fn allowed_scan(detail: &str) -> bool {
    let Some(scanned) = detail.strip_prefix("SCAN ") else {
        return true;
    };
    scanned == "CONSTANT ROW"
        || scanned == "sqlite_sequence"
        || scanned.starts_with("batch VIRTUAL TABLE")
        || scanned.starts_with("(subquery-")
        || ["head", "found", "found LEFT-JOIN"].contains(&scanned)
}

#[tokio::test]
async fn hot_statements_search_keys_and_never_scan_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("plans.db"))
        .await
        .unwrap();
    let stream_key = "(stream_id=? AND stream_type=? AND tenant=?";
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        (
            "append one event",
            include_str!("sql/append_one.sql").to_owned(),
            Some(stream_key),
        ),
        (
            "append a batch at a known version",
            include_str!("sql/append_many.sql").to_owned(),
            Some(stream_key),
        ),
        (
            "an append's state",
            include_str!("sql/append_state.sql").to_owned(),
            Some("(event_id=?)"),
        ),
        (
            "insert a batch",
            include_str!("sql/insert_batch.sql").to_owned(),
            None,
        ),
        (
            "a plain conflict",
            PLAIN_CONFLICT.to_owned(),
            Some(stream_key),
        ),
        (
            "a stored batch",
            STORED_BATCH.to_owned(),
            Some("USING INTEGER PRIMARY KEY"),
        ),
        (
            "a stream's version",
            STREAM_VERSION.to_owned(),
            Some(stream_key),
        ),
        (
            "a page of a stream",
            READ_STREAM_PAGE.clone(),
            Some(stream_key),
        ),
        (
            "a page of a replay",
            crate::replay::PAGE_TEXT.clone(),
            Some(stream_key),
        ),
        (
            "a page of the whole log",
            ALL_TENANTS.page.clone(),
            Some("USING INTEGER PRIMARY KEY (rowid>?)"),
        ),
        (
            "a page of one tenant's log",
            ONE_TENANT.page.clone(),
            Some("USING INDEX es_events_by_tenant (tenant=? AND rowid>?)"),
        ),
        (
            "a count of one tenant's log",
            ONE_TENANT.count.clone(),
            Some("USING INDEX es_events_by_tenant (tenant=? AND rowid>?)"),
        ),
        (
            "a look at one tenant's log",
            ONE_TENANT.exists.clone(),
            Some("USING INDEX es_events_by_tenant (tenant=? AND rowid>?)"),
        ),
        (
            "a look at the whole log",
            ALL_TENANTS.exists.clone(),
            Some("USING INTEGER PRIMARY KEY (rowid>?)"),
        ),
        ("an event by id", FIND_EVENT.clone(), Some("(event_id=?)")),
        (
            "a snapshot",
            LOAD_SNAPSHOT.to_owned(),
            Some("es_snapshots USING PRIMARY KEY (stream_id=? AND stream_type=? AND tenant=?)"),
        ),
    ];
    for (what, sql, expected) in cases {
        let lines = plan(&store, &sql).await;
        let shown = lines.join("\n");
        let scans: Vec<&String> = lines.iter().filter(|line| !allowed_scan(line)).collect();
        assert!(scans.is_empty(), "{what} scans {scans:?}:\n{shown}");
        if let Some(expected) = expected {
            assert!(
                lines.iter().any(|line| line.contains(expected)),
                "{what} does not search `{expected}`:\n{shown}"
            );
        }
    }
    store.close().await;
}
