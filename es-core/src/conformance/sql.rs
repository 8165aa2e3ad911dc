//! The SQL conformance suite: a [`SqlStore`] runs the same statements with the same parameters
//! and gives the same rows back, so a read model written once runs on every SQL store.
//!
//! ```ignore
//! es_core::sql_conformance_tests!(async { my_store().await });
//! ```

use chrono::{DateTime, Utc};

use crate::sql::{SqlRow, SqlStore, SqlValue, rows_as};
use crate::stream::LogScope;

/// A row of the suite's table.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
struct Row {
    id: String,
    amount: i64,
    ratio: Option<f64>,
    paid: bool,
    at: DateTime<Utc>,
    note: Option<String>,
}

async fn create_table<S: SqlStore>(store: &S, table: &str) {
    let statement = format!(
        "CREATE TABLE {table} (id TEXT PRIMARY KEY, amount BIGINT NOT NULL, ratio DOUBLE PRECISION, \
         paid BOOLEAN NOT NULL, at {} NOT NULL, note TEXT)",
        store.dialect().timestamp_type()
    );
    store.run(&statement, &[]).await.unwrap();
}

fn table() -> String {
    format!("sql_conformance_{}", uuid::Uuid::new_v4().simple())
}

/// Every kind of value binds and reads back alike: integers, floats, booleans, text, times,
/// `NULL` into typed columns; upserts with `ON CONFLICT`; parameters reused and out of order.
pub async fn values_round_trip<S: SqlStore>(store: S) {
    let table = table();
    create_table(&store, &table).await;
    let at: DateTime<Utc> = "2026-03-04T05:06:07.123456Z".parse().unwrap();
    let insert = format!(
        "INSERT INTO {table} (id, amount, ratio, paid, at, note) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (id) DO UPDATE SET amount = excluded.amount + $2"
    );
    let mut transaction = store.begin(LogScope::AllTenants).await.unwrap();
    let rows = [
        ("a", 10i64, Some(0.5), true, Some("first")),
        ("b", -3, None, false, None),
    ];
    for (id, amount, ratio, paid, note) in rows {
        let params = [
            SqlValue::from(id),
            amount.into(),
            ratio.into(),
            paid.into(),
            at.into(),
            note.into(),
        ];
        assert_eq!(
            S::execute(&mut transaction, &insert, &params)
                .await
                .unwrap(),
            1
        );
    }
    let again = [
        SqlValue::from("a"),
        5i64.into(),
        SqlValue::Null,
        false.into(),
        at.into(),
        SqlValue::Null,
    ];
    S::execute(&mut transaction, &insert, &again).await.unwrap();
    let inside = S::query_in(
        &mut transaction,
        &format!("SELECT count(*) AS n FROM {table}"),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(
        inside[0]["n"],
        serde_json::json!(2),
        "the transaction sees its own rows"
    );
    store.commit(transaction).await.unwrap();

    let rows: Vec<Row> = rows_as(
        store
            .query(
                &format!("SELECT * FROM {table} WHERE amount > $1 OR id = $2 ORDER BY id"),
                &[(-100i64).into(), "x".into()],
            )
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        rows,
        [
            // Updated by the second insert: excluded.amount + $2 = 5 + 5.
            Row {
                id: "a".into(),
                amount: 10,
                ratio: Some(0.5),
                paid: true,
                at,
                note: Some("first".into())
            },
            Row {
                id: "b".into(),
                amount: -3,
                ratio: None,
                paid: false,
                at,
                note: None
            },
        ]
    );
    let reordered = store
        .query(
            &format!("SELECT id FROM {table} WHERE amount = $2 AND id = $1"),
            &["b".into(), (-3i64).into()],
        )
        .await
        .unwrap();
    assert_eq!(
        reordered.len(),
        1,
        "parameters bind by number, whatever their order"
    );
    let times = store
        .query(
            &format!("SELECT id FROM {table} WHERE at <= $1 ORDER BY at, id"),
            &[Utc::now().into()],
        )
        .await
        .unwrap();
    assert_eq!(times.len(), 2, "times compare as times");
}

/// Statements of an uncommitted transaction leave nothing; errors name what failed without
/// quoting the parameters.
pub async fn rolled_back_statements_leave_nothing<S: SqlStore>(store: S) {
    let table = table();
    create_table(&store, &table).await;
    let at = Utc::now();
    let mut transaction = store.begin(LogScope::AllTenants).await.unwrap();
    S::execute(
        &mut transaction,
        &format!("INSERT INTO {table} (id, amount, paid, at) VALUES ($1, $2, $3, $4)"),
        &["gone".into(), 1i64.into(), true.into(), at.into()],
    )
    .await
    .unwrap();
    drop(transaction);
    let count: Vec<SqlRow> = store
        .query(&format!("SELECT count(*) AS n FROM {table}"), &[])
        .await
        .unwrap();
    assert_eq!(count[0]["n"], serde_json::json!(0));
    let broken = store
        .query(
            &format!("SELECT * FROM {table} WHERE no_such_column = $1"),
            &["secret-value".into()],
        )
        .await;
    let message = broken.unwrap_err().to_string();
    assert!(!message.contains("secret-value"), "{message}");
}

/// Generates one `#[tokio::test]` per SQL conformance case; `$make` is an async expression
/// yielding a fresh store, evaluated once per case.
#[macro_export]
macro_rules! sql_conformance_tests {
    ($make:expr) => {
        $crate::sql_conformance_tests!(@cases $make;
            values_round_trip, rolled_back_statements_leave_nothing);
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let store = $make.await;
                $crate::conformance::sql::$case(store).await;
            }
        )*
    };
}
