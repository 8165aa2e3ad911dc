//! [`SqlStore`] on SQLite: statements of SQL read models written once for every SQL store, with
//! [`SqlValue`] parameters (`$1`, `$2`... bind by number) and rows turned into JSON objects.

use es_core::StoreError;
use es_core::sql::{SqlDialect, SqlRow, SqlStore, SqlValue};
use serde_json::Value;
use sqlx::query::Query;
use sqlx::sqlite::{Sqlite, SqliteArguments, SqliteRow};
use sqlx::{Column, Row, TypeInfo, ValueRef};

use crate::error::store_error;
use crate::store::SqliteStore;

impl SqlStore for SqliteStore {
    fn dialect(&self) -> SqlDialect {
        SqlDialect::Sqlite
    }

    async fn execute(
        transaction: &mut sqlx::Transaction<'static, Sqlite>,
        statement: &str,
        params: &[SqlValue],
    ) -> Result<u64, StoreError> {
        let done = bind(sqlx::query(statement), params)?
            .execute(&mut **transaction)
            .await
            .map_err(|error| store_error("run a read model's statement", error))?;
        Ok(done.rows_affected())
    }

    async fn query_in(
        transaction: &mut sqlx::Transaction<'static, Sqlite>,
        statement: &str,
        params: &[SqlValue],
    ) -> Result<Vec<SqlRow>, StoreError> {
        let rows = bind(sqlx::query(statement), params)?
            .fetch_all(&mut **transaction)
            .await
            .map_err(|error| store_error("run a read model's query", error))?;
        rows.iter().map(json_row).collect()
    }

    async fn query(&self, statement: &str, params: &[SqlValue]) -> Result<Vec<SqlRow>, StoreError> {
        let rows = bind(sqlx::query(statement), params)?
            .fetch_all(self.pool())
            .await
            .map_err(|error| store_error("run a read model's query", error))?;
        rows.iter().map(json_row).collect()
    }
}

/// Binds the parameters: times as RFC 3339 text in UTC with microseconds (so that they sort as
/// text), JSON as its text, booleans as 0 and 1.
fn bind<'q>(
    mut query: Query<'q, Sqlite, SqliteArguments<'q>>,
    params: &'q [SqlValue],
) -> Result<Query<'q, Sqlite, SqliteArguments<'q>>, StoreError> {
    for param in params {
        query = match param {
            SqlValue::Null => query.bind(None::<String>),
            SqlValue::Bool(value) => query.bind(*value),
            SqlValue::Int(value) => query.bind(*value),
            SqlValue::Float(value) => query.bind(*value),
            SqlValue::Text(value) => query.bind(value.as_str()),
            SqlValue::Time(value) => {
                query.bind(value.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
            }
            SqlValue::Json(value) => query.bind(value.to_string()),
            other => {
                return Err(StoreError::backend(
                    "bind a read model's parameter",
                    format!("this version of es-sqlite cannot bind {other:?}"),
                ));
            }
        };
    }
    Ok(query)
}

/// A row as a JSON object: each value by its storage class, a column declared `BOOLEAN` as a
/// boolean, a `BLOB` as an array of bytes.
fn json_row(row: &SqliteRow) -> Result<SqlRow, StoreError> {
    let mut object = SqlRow::new();
    for (index, column) in row.columns().iter().enumerate() {
        let value = json_value(row, index, column.type_info().name()).map_err(|error| {
            StoreError::backend(
                format!("read column `{}` of a read model's query", column.name()),
                error,
            )
        })?;
        object.insert(column.name().to_owned(), value);
    }
    Ok(object)
}

fn json_value(row: &SqliteRow, index: usize, declared: &str) -> Result<Value, sqlx::Error> {
    let raw = row.try_get_raw(index)?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let storage = raw.type_info().name().to_owned();
    let boolean = matches!(declared.to_ascii_uppercase().as_str(), "BOOLEAN" | "BOOL");
    Ok(match storage.as_str() {
        "INTEGER" if boolean => Value::from(row.try_get::<i64, _>(index)? != 0),
        "INTEGER" => Value::from(row.try_get::<i64, _>(index)?),
        "REAL" => Value::from(row.try_get::<f64, _>(index)?),
        "BLOB" => Value::from(row.try_get::<Vec<u8>, _>(index)?),
        _ => Value::from(row.try_get::<String, _>(index)?),
    })
}
