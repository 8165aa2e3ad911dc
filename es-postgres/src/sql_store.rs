//! [`SqlStore`] on PostgreSQL: statements of SQL read models written once for every SQL store,
//! with [`SqlValue`] parameters and rows turned into JSON objects.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use es_core::StoreError;
use es_core::sql::{SqlDialect, SqlRow, SqlStore, SqlValue};
use serde_json::Value;
use sqlx::postgres::{PgArguments, PgRow, PgTypeInfo, Postgres};
use sqlx::query::Query;
use sqlx::{Column, Row, TypeInfo};

use crate::error::store_error;
use crate::store::PgStore;

impl SqlStore for PgStore {
    fn dialect(&self) -> SqlDialect {
        SqlDialect::Postgres
    }

    async fn execute(
        transaction: &mut sqlx::Transaction<'static, Postgres>,
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
        transaction: &mut sqlx::Transaction<'static, Postgres>,
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

/// A `NULL` whose type the server infers from where it is used, as libpq sends parameters
/// without a type: a typed `NULL` (say, text) would not fit a `timestamptz` column.
struct Untyped;

impl sqlx::Type<Postgres> for Untyped {
    fn type_info() -> PgTypeInfo {
        // Type oid 0: unspecified, for the server to infer.
        PgTypeInfo::with_oid(sqlx::postgres::types::Oid(0))
    }
}

impl sqlx::Encode<'_, Postgres> for Untyped {
    fn encode_by_ref(
        &self,
        _: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        Ok(sqlx::encode::IsNull::Yes)
    }
}

fn bind<'q>(
    mut query: Query<'q, Postgres, PgArguments>,
    params: &'q [SqlValue],
) -> Result<Query<'q, Postgres, PgArguments>, StoreError> {
    for param in params {
        query = match param {
            SqlValue::Null => query.bind(Untyped),
            SqlValue::Bool(value) => query.bind(*value),
            SqlValue::Int(value) => query.bind(*value),
            SqlValue::Float(value) => query.bind(*value),
            SqlValue::Text(value) => query.bind(value.as_str()),
            SqlValue::Time(value) => query.bind(*value),
            SqlValue::Json(value) => query.bind(sqlx::types::Json(value)),
            other => {
                return Err(StoreError::backend(
                    "bind a read model's parameter",
                    format!("this version of es-postgres cannot bind {other:?}"),
                ));
            }
        };
    }
    Ok(query)
}

/// A row as a JSON object, by each column's type.
fn json_row(row: &PgRow) -> Result<SqlRow, StoreError> {
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

fn json_value(row: &PgRow, index: usize, type_name: &str) -> Result<Value, sqlx::Error> {
    fn get<'r, T>(row: &'r PgRow, index: usize) -> Result<Option<T>, sqlx::Error>
    where
        T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
    {
        row.try_get::<Option<T>, _>(index)
    }
    let value = match type_name {
        "BOOL" => get::<bool>(row, index)?.map(Value::from),
        "INT2" => get::<i16>(row, index)?.map(Value::from),
        "INT4" => get::<i32>(row, index)?.map(Value::from),
        "INT8" => get::<i64>(row, index)?.map(Value::from),
        "FLOAT4" => get::<f32>(row, index)?.map(Value::from),
        "FLOAT8" => get::<f64>(row, index)?.map(Value::from),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" => {
            get::<String>(row, index)?.map(Value::from)
        }
        "UUID" => get::<uuid::Uuid>(row, index)?.map(|id| Value::from(id.to_string())),
        "TIMESTAMPTZ" => get::<DateTime<Utc>>(row, index)?
            .map(|time| Value::from(time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))),
        "TIMESTAMP" => get::<NaiveDateTime>(row, index)?
            .map(|time| Value::from(time.format("%Y-%m-%dT%H:%M:%S%.f").to_string())),
        "DATE" => get::<NaiveDate>(row, index)?.map(|date| Value::from(date.to_string())),
        "JSON" | "JSONB" => get::<Value>(row, index)?,
        other => {
            return Err(sqlx::Error::Decode(
                format!(
                    "a column of type {other} has no JSON form here: cast it in the query \
                     (`column::text`, `column::bigint`)"
                )
                .into(),
            ));
        }
    };
    Ok(value.unwrap_or(Value::Null))
}
