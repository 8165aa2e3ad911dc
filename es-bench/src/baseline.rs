//! The plain sqlx baselines: the least SQL a correct implementation needs against
//! the very tables the stores create, written the way a careful person would by hand:
//! statements prepared once (sqlx caches them), rows read by borrowing their text, payloads
//! decoded with serde_json by event type, no framework in between.
//!
//! - a create: one `INSERT` (its own transaction), no read;
//! - a command: one `SELECT` of the stream, fold, decide, one `INSERT` at the loaded version + 1
//!   (the unique key on (stream, version) rejects a concurrent writer: reload and decide again);
//! - a rehydration: one `SELECT` of the stream plus serde_json decoding of every payload;
//! - a batch: one multi-row `INSERT`;
//! - a catch-up: one `SELECT` per page of the log, the read model's own statements, the
//!   checkpoint, one transaction per page.
//!
//! On SQLite the baseline's writes go through an in-process mutex, as the store's do: SQLite has
//! one writer, and writers of one process that meet its lock in the busy handler sleep for
//! milliseconds, which would make the baseline, not the framework, look slow.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use es_examples::order::{
    InventoryReserved, OrderCancelled, OrderConfirmed, OrderCreated, PaymentProcessed,
};
use futures_util::TryStreamExt;
use serde::Serialize;
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;
use sqlx::{QueryBuilder, Row};
use uuid::Uuid;

use crate::BenchError;
use crate::domain::{Balance, Movement, Open, PlainEvent};

/// One row to insert into the event table.
#[derive(Debug, Clone)]
pub(crate) struct NewRow {
    pub(crate) stream_type: &'static str,
    pub(crate) stream_id: String,
    pub(crate) version: i64,
    pub(crate) event_id: Uuid,
    pub(crate) event_type: &'static str,
    pub(crate) schema_version: i64,
    pub(crate) payload: String,
    pub(crate) metadata: String,
}

/// The metadata a command's events carry, as the framework's command context writes it.
#[derive(Debug, Serialize)]
struct CommandMetadata {
    correlation_id: Uuid,
    causation_id: Uuid,
}

/// The metadata of one command's events.
pub(crate) fn command_metadata() -> String {
    let id = Uuid::new_v4();
    serde_json::to_string(&CommandMetadata {
        correlation_id: id,
        causation_id: id,
    })
    .expect("metadata serializes")
}

/// How a baseline command went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inserted {
    Yes,
    /// Another writer took the version first.
    Conflict,
}

/// Statements of a PostgreSQL schema.
#[derive(Debug)]
pub(crate) struct PgSql {
    insert_one: String,
    load: String,
    insert_head: String,
    read_page: String,
    checkpoint: String,
}

impl PgSql {
    fn new(schema: &str) -> Self {
        let s = format!("\"{schema}\"");
        Self {
            insert_one: format!(
                "INSERT INTO {s}.events (tenant, stream_type, stream_id, stream_version, event_id, \
                   event_type, schema_version, payload, metadata) \
                 VALUES ('default', $1, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb)"
            ),
            load: format!(
                "SELECT stream_version, event_type, payload::text FROM {s}.events \
                 WHERE tenant = 'default' AND stream_type = 'account' AND stream_id = $1 \
                 ORDER BY stream_version"
            ),
            insert_head: format!(
                "INSERT INTO {s}.events (tenant, stream_type, stream_id, stream_version, event_id, \
                   event_type, schema_version, payload, metadata) "
            ),
            // Gap-free: only transactions older than the oldest running one (see es-postgres).
            // Ordered by the table's columns (`e.`): an unqualified `transaction_id` would name
            // the text output column, and sort text.
            read_page: format!(
                "SELECT e.transaction_id::text AS xid, e.position, e.stream_id, e.event_type, \
                   e.payload::text AS payload \
                 FROM {s}.events e \
                 WHERE e.transaction_id < pg_snapshot_xmin(pg_current_snapshot()) \
                   AND (e.transaction_id, e.position) > ($1::text::xid8, $2::bigint) \
                 ORDER BY e.transaction_id, e.position LIMIT $3"
            ),
            checkpoint: format!(
                "INSERT INTO {s}.projection_checkpoints (projection, transaction_id, position) \
                 VALUES ($1, $2::text::xid8, $3) \
                 ON CONFLICT (projection) DO UPDATE SET transaction_id = excluded.transaction_id, \
                   position = excluded.position, updated_at = now()"
            ),
        }
    }
}

const SQLITE_COLUMNS: &str = "position, transaction_id, tenant, stream_type, stream_id, stream_version, \
     event_id, event_type, schema_version, payload, metadata, recorded_at";

/// Positions are the table's integer key: the next one is the largest plus one, and a batch's
/// transaction id is its first position (the schema checks it).
fn sqlite_insert_one() -> String {
    format!(
        "INSERT INTO es_events ({SQLITE_COLUMNS}) \
         SELECT p, p, 'default', ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9 \
         FROM (SELECT coalesce(max(position), 0) + 1 AS p FROM es_events)"
    )
}

const SQLITE_LOAD: &str = "SELECT stream_version, event_type, payload FROM es_events WHERE stream_id = ?1 AND stream_type = 'account' AND tenant = 'default' ORDER BY stream_version";

const SQLITE_READ_PAGE: &str = "SELECT position, stream_id, event_type, payload FROM es_events \
     WHERE position > ?1 ORDER BY position LIMIT ?2";

const SQLITE_CHECKPOINT: &str = "INSERT INTO es_checkpoints (projection, transaction_id, position, updated_at) \
     VALUES (?1, ?2, ?3, ?4) \
     ON CONFLICT (projection) DO UPDATE SET transaction_id = excluded.transaction_id, \
       position = excluded.position, updated_at = excluded.updated_at";

fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|database| database.is_unique_violation())
}

/// A plain sqlx implementation on one database.
#[derive(Debug, Clone)]
pub(crate) enum Baseline {
    Sqlite {
        pool: SqlitePool,
        writer: Arc<tokio::sync::Mutex<()>>,
        insert_one: Arc<str>,
    },
    Postgres {
        pool: PgPool,
        sql: Arc<PgSql>,
    },
}

impl Baseline {
    pub(crate) fn sqlite(pool: SqlitePool) -> Self {
        Baseline::Sqlite {
            pool,
            writer: Arc::new(tokio::sync::Mutex::new(())),
            insert_one: sqlite_insert_one().into(),
        }
    }

    pub(crate) fn postgres(pool: PgPool, schema: &str) -> Self {
        Baseline::Postgres {
            pool,
            sql: Arc::new(PgSql::new(schema)),
        }
    }

    /// One `INSERT` of one event, in its own transaction.
    pub(crate) async fn insert_one(&self, row: &NewRow) -> Result<Inserted, BenchError> {
        let result = match self {
            Baseline::Sqlite {
                pool,
                writer,
                insert_one,
            } => {
                let _writer = writer.lock().await;
                sqlx::query(insert_one)
                    .bind(row.stream_type)
                    .bind(&row.stream_id)
                    .bind(row.version)
                    .bind(row.event_id.to_string())
                    .bind(row.event_type)
                    .bind(row.schema_version)
                    .bind(&row.payload)
                    .bind(&row.metadata)
                    .bind(now_micros())
                    .execute(pool)
                    .await
                    .map(drop)
            }
            Baseline::Postgres { pool, sql } => sqlx::query(&sql.insert_one)
                .bind(row.stream_type)
                .bind(&row.stream_id)
                .bind(row.version)
                .bind(row.event_id)
                .bind(row.event_type)
                .bind(row.schema_version)
                .bind(&row.payload)
                .bind(&row.metadata)
                .execute(pool)
                .await
                .map(drop),
        };
        match result {
            Ok(()) => Ok(Inserted::Yes),
            Err(error) if is_unique_violation(&error) => Ok(Inserted::Conflict),
            Err(error) => Err(error.into()),
        }
    }

    /// One multi-row `INSERT`, in its own transaction.
    pub(crate) async fn insert_many(&self, rows: &[NewRow]) -> Result<Inserted, BenchError> {
        let result = match self {
            Baseline::Sqlite { pool, writer, .. } => {
                let mut query = QueryBuilder::new(format!(
                    "INSERT INTO es_events ({SQLITE_COLUMNS}) \
                     SELECT base.p + v.column1, base.p + 1, 'default', v.column2, v.column3, v.column4, \
                       v.column5, v.column6, v.column7, v.column8, v.column9, v.column10 \
                     FROM (SELECT coalesce(max(position), 0) AS p FROM es_events) AS base, ("
                ));
                let recorded_at = now_micros();
                query.push_values(rows.iter().enumerate(), |mut values, (offset, row)| {
                    values
                        .push_bind(offset as i64 + 1)
                        .push_bind(row.stream_type)
                        .push_bind(&row.stream_id)
                        .push_bind(row.version)
                        .push_bind(row.event_id.to_string())
                        .push_bind(row.event_type)
                        .push_bind(row.schema_version)
                        .push_bind(&row.payload)
                        .push_bind(&row.metadata)
                        .push_bind(recorded_at);
                });
                query.push(") AS v ORDER BY v.column1");
                let _writer = writer.lock().await;
                query.build().execute(pool).await.map(drop)
            }
            Baseline::Postgres { pool, sql } => {
                let mut query = QueryBuilder::new(&sql.insert_head);
                query.push_values(rows, |mut values, row| {
                    values
                        .push("'default'")
                        .push_bind(row.stream_type)
                        .push_bind(&row.stream_id)
                        .push_bind(row.version)
                        .push_bind(row.event_id)
                        .push_bind(row.event_type)
                        .push_bind(row.schema_version)
                        .push_bind(&row.payload)
                        .push_unseparated("::jsonb")
                        .push_bind(&row.metadata)
                        .push_unseparated("::jsonb");
                });
                query.build().execute(pool).await.map(drop)
            }
        };
        match result {
            Ok(()) => Ok(Inserted::Yes),
            Err(error) if is_unique_violation(&error) => Ok(Inserted::Conflict),
            Err(error) => Err(error.into()),
        }
    }

    /// One `SELECT` of the stream, each payload decoded and folded: the state and its version.
    pub(crate) async fn load(&self, stream_id: &str) -> Result<(Balance, i64), BenchError> {
        let mut state = Balance::default();
        let mut version = 0;
        match self {
            Baseline::Sqlite { pool, .. } => {
                let mut rows = sqlx::query(SQLITE_LOAD).bind(stream_id).fetch(pool);
                while let Some(row) = rows.try_next().await? {
                    version = row.try_get(0)?;
                    PlainEvent::decode(row.try_get(1)?, row.try_get(2)?)?.apply(&mut state);
                }
            }
            Baseline::Postgres { pool, sql } => {
                let mut rows = sqlx::query(&sql.load).bind(stream_id).fetch(pool);
                while let Some(row) = rows.try_next().await? {
                    version = row.try_get(0)?;
                    PlainEvent::decode(row.try_get(1)?, row.try_get(2)?)?.apply(&mut state);
                }
            }
        }
        Ok((state, version))
    }

    /// A create: decide on the empty state, one `INSERT` at version 1 (no read).
    pub(crate) async fn open(&self, stream_id: &str, owner: &str) -> Result<(), BenchError> {
        let event = PlainEvent::Opened(Balance::default().open(&Open {
            owner: owner.to_owned(),
        })?);
        let row = self.row(stream_id, 1, &event, command_metadata())?;
        match self.insert_one(&row).await? {
            Inserted::Yes => Ok(()),
            Inserted::Conflict => Err(format!("stream `{stream_id}` already exists").into()),
        }
    }

    /// A command: load, decide, insert at the loaded version + 1; again on a conflict. Returns
    /// how many conflicts were met.
    pub(crate) async fn execute(
        &self,
        stream_id: &str,
        movement: Movement,
    ) -> Result<u32, BenchError> {
        let metadata = command_metadata();
        let mut conflicts = 0;
        loop {
            let (state, version) = self.load(stream_id).await?;
            let event = PlainEvent::decide(&state, movement)?;
            let row = self.row(stream_id, version + 1, &event, metadata.clone())?;
            match self.insert_one(&row).await? {
                Inserted::Yes => return Ok(conflicts),
                Inserted::Conflict => conflicts += 1,
            }
        }
    }

    pub(crate) fn row(
        &self,
        stream_id: &str,
        version: i64,
        event: &PlainEvent,
        metadata: String,
    ) -> Result<NewRow, BenchError> {
        Ok(NewRow {
            stream_type: "account",
            stream_id: stream_id.to_owned(),
            version,
            event_id: Uuid::new_v4(),
            event_type: event.event_type(),
            schema_version: 1,
            payload: event.encode()?,
            metadata,
        })
    }

    /// Catches the order list read model in `table` up with the log, `page` events per
    /// transaction, checkpointed as `projection`. Returns how many events were read.
    pub(crate) async fn catch_up_orders(
        &self,
        table: &str,
        projection: &str,
        page: i64,
    ) -> Result<u64, BenchError> {
        let statements = OrderStatements::new(table);
        let mut done = 0u64;
        match self {
            Baseline::Sqlite { pool, writer, .. } => {
                let mut after: i64 = sqlx::query_scalar(
                    "SELECT coalesce((SELECT position FROM es_checkpoints WHERE projection = ?1), 0)",
                )
                .bind(projection)
                .fetch_one(pool)
                .await?;
                loop {
                    let rows = sqlx::query(SQLITE_READ_PAGE)
                        .bind(after)
                        .bind(page)
                        .fetch_all(pool)
                        .await?;
                    let Some(last) = rows.last() else {
                        return Ok(done);
                    };
                    let last: i64 = last.try_get(0)?;
                    let _writer = writer.lock().await;
                    let mut transaction = pool.begin_with("BEGIN IMMEDIATE").await?;
                    for row in &rows {
                        let change = OrderChange::decode(row.try_get(2)?, row.try_get(3)?)?;
                        let order_id: &str = row.try_get(1)?;
                        let query = statements.query(order_id, &change);
                        let updated = query.execute(&mut *transaction).await?.rows_affected();
                        no_row(updated, order_id)?;
                    }
                    sqlx::query(SQLITE_CHECKPOINT)
                        .bind(projection)
                        .bind(last)
                        .bind(last)
                        .bind(now_micros())
                        .execute(&mut *transaction)
                        .await?;
                    transaction.commit().await?;
                    done += rows.len() as u64;
                    after = last;
                }
            }
            Baseline::Postgres { pool, sql } => {
                let mut after: (String, i64) = ("0".to_owned(), 0);
                loop {
                    let rows = sqlx::query(&sql.read_page)
                        .bind(&after.0)
                        .bind(after.1)
                        .bind(page)
                        .fetch_all(pool)
                        .await?;
                    let Some(last) = rows.last() else {
                        return Ok(done);
                    };
                    let last: (String, i64) = (last.try_get(0)?, last.try_get(1)?);
                    let mut transaction = pool.begin().await?;
                    for row in &rows {
                        let change = OrderChange::decode(row.try_get(3)?, row.try_get(4)?)?;
                        let order_id: &str = row.try_get(2)?;
                        let query = statements.query(order_id, &change);
                        let updated = query.execute(&mut *transaction).await?.rows_affected();
                        no_row(updated, order_id)?;
                    }
                    sqlx::query(&sql.checkpoint)
                        .bind(projection)
                        .bind(&last.0)
                        .bind(last.1)
                        .execute(&mut *transaction)
                        .await?;
                    transaction.commit().await?;
                    done += rows.len() as u64;
                    after = last;
                }
            }
        }
    }
}

/// What an order event does to its row (the same statements as `es_examples::order_list`).
enum OrderChange {
    Insert {
        customer_id: String,
        total_amount: i64,
        created_at: DateTime<Utc>,
    },
    Status(&'static str),
    Confirmed(DateTime<Utc>),
    Cancelled(DateTime<Utc>, String),
}

impl OrderChange {
    fn decode(event_type: &str, payload: &str) -> Result<Self, BenchError> {
        Ok(match event_type {
            "OrderCreated" => {
                let created: OrderCreated = serde_json::from_str(payload)?;
                OrderChange::Insert {
                    customer_id: created.customer_id,
                    total_amount: created.total_amount,
                    created_at: created.created_at,
                }
            }
            "InventoryReserved" => {
                let _: InventoryReserved = serde_json::from_str(payload)?;
                OrderChange::Status("INVENTORY_RESERVED")
            }
            "PaymentProcessed" => {
                let _: PaymentProcessed = serde_json::from_str(payload)?;
                OrderChange::Status("PAYMENT_PROCESSED")
            }
            "OrderConfirmed" => {
                let confirmed: OrderConfirmed = serde_json::from_str(payload)?;
                OrderChange::Confirmed(confirmed.confirmed_at)
            }
            "OrderCancelled" => {
                let cancelled: OrderCancelled = serde_json::from_str(payload)?;
                OrderChange::Cancelled(cancelled.cancelled_at, cancelled.reason)
            }
            other => return Err(format!("unknown order event `{other}`").into()),
        })
    }
}

/// The read model's statements, built once.
struct OrderStatements {
    insert: String,
    status: String,
    confirmed: String,
    cancelled: String,
}

impl OrderStatements {
    fn new(table: &str) -> Self {
        Self {
            insert: format!(
                "INSERT INTO {table} (order_id, customer_id, total_amount, status, created_at)
                 VALUES ($1, $2, $3, 'PENDING', $4)
                 ON CONFLICT (order_id) DO UPDATE SET customer_id = excluded.customer_id,
                     total_amount = excluded.total_amount, status = 'PENDING',
                     created_at = excluded.created_at, confirmed_at = NULL, cancelled_at = NULL,
                     cancellation_reason = NULL"
            ),
            status: format!("UPDATE {table} SET status = $2 WHERE order_id = $1"),
            confirmed: format!(
                "UPDATE {table} SET status = 'CONFIRMED', confirmed_at = $2 WHERE order_id = $1"
            ),
            cancelled: format!(
                "UPDATE {table} SET status = 'CANCELLED', cancelled_at = $2, cancellation_reason = $3
                 WHERE order_id = $1"
            ),
        }
    }

    fn query<'q, DB: sqlx::Database>(
        &'q self,
        order_id: &'q str,
        change: &'q OrderChange,
    ) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
    where
        &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        DateTime<Utc>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    {
        match change {
            OrderChange::Insert {
                customer_id,
                total_amount,
                created_at,
            } => sqlx::query(&self.insert)
                .bind(order_id)
                .bind(customer_id.as_str())
                .bind(*total_amount)
                .bind(*created_at),
            OrderChange::Status(status) => sqlx::query(&self.status).bind(order_id).bind(*status),
            OrderChange::Confirmed(at) => sqlx::query(&self.confirmed).bind(order_id).bind(*at),
            OrderChange::Cancelled(at, reason) => sqlx::query(&self.cancelled)
                .bind(order_id)
                .bind(*at)
                .bind(reason.as_str()),
        }
    }
}

/// A status change for an order without a row: the log delivers creations first, so the table
/// was tampered with.
fn no_row(updated: u64, order_id: &str) -> Result<(), BenchError> {
    if updated == 0 {
        return Err(format!("no row for order `{order_id}`").into());
    }
    Ok(())
}
