//! SQL read models written once for every SQL store: statements with `$1`, `$2`... parameters,
//! run in a projection's transaction ([`SqlStore::execute`], [`SqlStore::query_in`]) or on the
//! store's pool ([`SqlStore::query`]), with values as [`SqlValue`] and rows as JSON objects.
//!
//! ```no_run
//! use es_core::projection::{HandlerError, Projection};
//! use es_core::sql::{SqlStore, SqlValue};
//! # use es_core::RecordedEvent;
//! # #[derive(es_core::Event)] pub enum AccountEvent { Opened }
//!
//! /// The list of accounts, on SQLite or PostgreSQL alike.
//! struct AccountList;
//!
//! impl<S: SqlStore> Projection<S> for AccountList {
//!     type Event = AccountEvent;
//!
//!     fn name(&self) -> &str {
//!         "account_list"
//!     }
//!
//!     async fn handle(
//!         &mut self,
//!         transaction: &mut S::Transaction,
//!         _: &AccountEvent,
//!         envelope: &RecordedEvent,
//!     ) -> Result<(), HandlerError> {
//!         let params = [SqlValue::from(&envelope.stream_id), envelope.recorded_at.into()];
//!         S::execute(transaction, "INSERT INTO accounts (id, opened_at) VALUES ($1, $2)", &params).await?;
//!         Ok(())
//!     }
//!
//!     async fn reset(&mut self, transaction: &mut S::Transaction) -> Result<(), HandlerError> {
//!         S::execute(transaction, "DELETE FROM accounts", &[]).await?;
//!         Ok(())
//!     }
//! }
//! ```
//!
//! The SQLite and PostgreSQL stores implement [`SqlStore`], and so does a
//! [`DynStore`](crate::DynStore) made from one of them, so a read model written against
//! `SqlStore` (or against `DynStore`) runs on whichever the service picks at start-up. Keep to
//! the SQL both understand (`INSERT ... ON CONFLICT ... DO UPDATE`, `$n` parameters); where they
//! differ (column types in `CREATE TABLE`), ask [`SqlStore::dialect`]. Create a read model's
//! table once at start-up with [`SqlStore::run`] (`CREATE TABLE IF NOT EXISTS ...`).

use std::future::Future;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;

use crate::projection::ProjectionStore;
use crate::store::StoreError;

/// Which SQL a store speaks, for the statements where SQLite and PostgreSQL differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SqlDialect {
    /// SQLite 3.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

impl SqlDialect {
    /// The column type for a point in time: `TIMESTAMPTZ` on PostgreSQL, `TEXT` (RFC 3339) on
    /// SQLite.
    pub fn timestamp_type(self) -> &'static str {
        match self {
            SqlDialect::Sqlite => "TEXT",
            SqlDialect::Postgres => "TIMESTAMPTZ",
        }
    }
}

/// A parameter of a statement.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SqlValue {
    /// `NULL`.
    Null,
    /// A boolean.
    Bool(bool),
    /// A 64-bit integer.
    Int(i64),
    /// A double.
    Float(f64),
    /// Text.
    Text(String),
    /// A point in time (PostgreSQL `timestamptz`; SQLite text in RFC 3339).
    Time(DateTime<Utc>),
    /// A JSON document (PostgreSQL `jsonb`; SQLite text).
    Json(serde_json::Value),
}

macro_rules! sql_value_from {
    ($($ty:ty => $variant:ident $(as $cast:ty)?),* $(,)?) => {
        $(
            impl From<$ty> for SqlValue {
                fn from(value: $ty) -> Self {
                    SqlValue::$variant(value $(as $cast)?)
                }
            }
        )*
    };
}

sql_value_from!(
    bool => Bool,
    i64 => Int,
    i32 => Int as i64,
    u32 => Int as i64,
    f64 => Float,
    String => Text,
    DateTime<Utc> => Time,
    serde_json::Value => Json,
);

impl From<&str> for SqlValue {
    fn from(value: &str) -> Self {
        SqlValue::Text(value.to_owned())
    }
}

impl From<&String> for SqlValue {
    fn from(value: &String) -> Self {
        SqlValue::Text(value.clone())
    }
}

impl<T: Into<SqlValue>> From<Option<T>> for SqlValue {
    fn from(value: Option<T>) -> Self {
        value.map_or(SqlValue::Null, Into::into)
    }
}

/// A row as a JSON object, column name to value: integers and floats as numbers, text as
/// strings, booleans, `NULL` as `null`, PostgreSQL times as RFC 3339 strings and `json`/`jsonb`
/// as JSON. Deserialize it into a row type with [`rows_as`].
pub type SqlRow = serde_json::Map<String, serde_json::Value>;

/// Deserializes rows into `T` (a `#[derive(Deserialize)]` struct with the columns' names).
pub fn rows_as<T: DeserializeOwned>(rows: Vec<SqlRow>) -> Result<Vec<T>, serde_json::Error> {
    rows.into_iter()
        .map(|row| serde_json::from_value(serde_json::Value::Object(row)))
        .collect()
}

/// A projection store that runs SQL statements: what a SQL read model written once for SQLite
/// and PostgreSQL needs.
pub trait SqlStore: ProjectionStore {
    /// The SQL the store speaks.
    fn dialect(&self) -> SqlDialect;

    /// Runs one statement inside a projection's transaction, so its effect commits with the
    /// checkpoint; returns how many rows it changed.
    fn execute(
        transaction: &mut Self::Transaction,
        statement: &str,
        params: &[SqlValue],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Runs a query inside a projection's transaction (a read model that reads its own rows).
    fn query_in(
        transaction: &mut Self::Transaction,
        statement: &str,
        params: &[SqlValue],
    ) -> impl Future<Output = Result<Vec<SqlRow>, StoreError>> + Send;

    /// Runs a query on the store's pool (serving a read model).
    fn query(
        &self,
        statement: &str,
        params: &[SqlValue],
    ) -> impl Future<Output = Result<Vec<SqlRow>, StoreError>> + Send;

    /// Runs one statement in a transaction of its own, outside any projection: creating a read
    /// model's table, say. Returns how many rows it changed.
    fn run(
        &self,
        statement: &str,
        params: &[SqlValue],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        async move {
            let mut transaction = self.begin(crate::LogScope::AllTenants).await?;
            let changed = Self::execute(&mut transaction, statement, params).await?;
            self.commit(transaction).await?;
            Ok(changed)
        }
    }
}
