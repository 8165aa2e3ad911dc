//! The order service over HTTP (axum): es inside a web service.
//!
//! | request | what it does |
//! |---|---|
//! | `POST /orders` | places an order (`201`, or the first outcome again for a repeated `Idempotency-Key`) |
//! | `POST /orders/{id}/reservation` | reserves its inventory |
//! | `POST /orders/{id}/payment` | records its payment (`{"payment_id": .., "amount": ..}`) |
//! | `POST /orders/{id}/confirmation` | confirms it |
//! | `POST /orders/{id}/cancellation` | cancels it (`{"reason": ..}`) |
//! | `GET /orders/{id}` | its state, with its version as `ETag` |
//! | `GET /orders/{id}/history` | its events as stored |
//! | `GET /orders` | the order list read model; `?after=<position>` waits until it shows that position |
//!
//! Headers: `X-Tenant` names the tenant (the default one if absent); `X-Request-Id` becomes the
//! correlation id of the events; `Idempotency-Key` makes a command idempotent; `If-Match: "3"`
//! makes it apply only to version 3 of the order. Every command answers with the order's new
//! version as `ETag` and the position of its last event as `X-Position`, to pass as `after`.
//!
//! Errors: `400` bad input, `404` no such order, `409` a command the order's state refuses,
//! `412` a stale `If-Match`, `422` a command that can never succeed as sent, `503` (with
//! `Retry-After`) when the database is unavailable or the projection is not there yet.

use std::time::Duration;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use es_core::projection::{ProjectionRunner, RunningProjection};
use es_core::{
    CommandContext, DynStore, EventStore, ExecuteError, Executed, LoadError, Position, Repository,
    StoreError, Tenant, TenantRepositories, Until,
};
use futures_util::TryStreamExt;
use serde::Deserialize;

use crate::order::{
    Address, CancelOrder, ConfirmOrder, CreateOrder, Order, OrderError, OrderItem, ProcessPayment,
    ReserveInventory,
};
use crate::order_list::OrderList;

/// How long `GET /orders?after=..` waits for the order list to catch up.
const READ_YOUR_WRITES_TIMEOUT: Duration = Duration::from_secs(5);

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The order repositories of every tenant: a handler reaches one only by naming a tenant.
    pub orders: TenantRepositories<Order, DynStore>,
    /// The store, for histories and the read model.
    pub store: DynStore,
    /// The order list table.
    pub list: OrderList,
    /// The running order list projection.
    pub order_list: RunningProjection,
}

impl AppState {
    /// Sets the order service up on `store`: creates the order list table if needed, starts its
    /// projection (supervised, in the background) and the repositories (with a cache for hot
    /// orders).
    pub async fn start(store: DynStore, list: OrderList) -> Result<Self, StoreError> {
        list.create_table(&store).await?;
        let order_list = ProjectionRunner::new(store.clone(), list.clone()).spawn();
        let orders = Repository::<Order, _>::new(store.clone())
            .with_cache(10_000)
            .per_tenant();
        Ok(Self {
            orders,
            store,
            list,
            order_list,
        })
    }

    /// Stops the projection (releasing its lock) and saves pending snapshots: what a service
    /// does after its server stopped accepting requests.
    pub async fn shutdown(&self) {
        self.order_list.shutdown().await;
        self.orders.flush_snapshots().await;
    }
}

/// The routes of the order service.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/orders", post(create_order).get(list_orders))
        .route("/orders/{id}", get(get_order))
        .route("/orders/{id}/history", get(history))
        .route("/orders/{id}/reservation", post(reserve))
        .route("/orders/{id}/payment", post(pay))
        .route("/orders/{id}/confirmation", post(confirm))
        .route("/orders/{id}/cancellation", post(cancel))
        .route("/health", get(health))
        .with_state(state)
}

/// The order repository of the request's tenant (`X-Tenant`), and the command context of its
/// headers.
#[derive(Debug)]
pub struct Scoped {
    orders: Repository<Order, DynStore>,
    context: CommandContext,
}

impl FromRequestParts<AppState> for Scoped {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let headers = &parts.headers;
        let text = |name: &str| -> Result<Option<&str>, ApiError> {
            headers
                .get(name)
                .map(|value| {
                    value
                        .to_str()
                        .map_err(|_| ApiError::bad_request(format!("header {name} is not text")))
                })
                .transpose()
        };
        let tenant = match text("x-tenant")? {
            Some(tenant) => {
                Tenant::new(tenant).map_err(|e| ApiError::bad_request(e.to_string()))?
            }
            None => Tenant::default(),
        };
        let mut context = CommandContext::new().with_source("order-service");
        if let Some(request_id) = text("x-request-id")? {
            context = context.with_correlation_id(request_id);
        }
        if let Some(key) = text("idempotency-key")? {
            context = context.with_command_id(key);
        }
        if let Some(if_match) = text("if-match")? {
            let version = if_match
                .trim()
                .trim_start_matches("W/")
                .trim_matches('"')
                .parse::<u64>()
                .map_err(|_| {
                    ApiError::bad_request("If-Match holds an order version, like \"3\"")
                })?;
            context = context.expecting_version(version);
        }
        Ok(Self {
            orders: state.orders.tenant(&tenant),
            context,
        })
    }
}

/// The body of `POST /orders`.
#[derive(Debug, Deserialize)]
pub struct PlaceOrder {
    /// The order's id, chosen by the client (a new UUID if absent).
    pub order_id: Option<String>,
    /// Who orders.
    pub customer_id: String,
    /// What.
    pub items: Vec<OrderItem>,
    /// Where to.
    pub shipping_address: Address,
}

/// The body of `POST /orders/{id}/payment`.
#[derive(Debug, Deserialize)]
pub struct Payment {
    /// The payment service's id.
    pub payment_id: String,
    /// The amount paid, in cents.
    pub amount: i64,
}

/// The body of `POST /orders/{id}/cancellation`.
#[derive(Debug, Deserialize)]
pub struct Cancellation {
    /// Why.
    pub reason: String,
}

async fn create_order(scoped: Scoped, Json(body): Json<PlaceOrder>) -> Result<Response, ApiError> {
    let id = body
        .order_id
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let command = CreateOrder {
        customer_id: body.customer_id,
        items: body.items,
        shipping_address: body.shipping_address,
        at: Utc::now(),
    };
    let executed = scoped.orders.create(&id, &command, &scoped.context).await?;
    let status = if executed.repeated {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(executed_response(status, &id, &executed))
}

async fn reserve(scoped: Scoped, Path(id): Path<String>) -> Result<Response, ApiError> {
    let command = ReserveInventory {
        reservation_id: format!("res-{id}"),
    };
    let executed = scoped
        .orders
        .execute(&id, &command, &scoped.context)
        .await?;
    Ok(executed_response(StatusCode::OK, &id, &executed))
}

async fn pay(
    scoped: Scoped,
    Path(id): Path<String>,
    Json(body): Json<Payment>,
) -> Result<Response, ApiError> {
    let command = ProcessPayment {
        payment_id: body.payment_id,
        amount: body.amount,
        at: Utc::now(),
    };
    let executed = scoped
        .orders
        .execute(&id, &command, &scoped.context)
        .await?;
    Ok(executed_response(StatusCode::OK, &id, &executed))
}

async fn confirm(scoped: Scoped, Path(id): Path<String>) -> Result<Response, ApiError> {
    let command = ConfirmOrder { at: Utc::now() };
    let executed = scoped
        .orders
        .execute(&id, &command, &scoped.context)
        .await?;
    Ok(executed_response(StatusCode::OK, &id, &executed))
}

async fn cancel(
    scoped: Scoped,
    Path(id): Path<String>,
    Json(body): Json<Cancellation>,
) -> Result<Response, ApiError> {
    let command = CancelOrder {
        reason: body.reason,
        at: Utc::now(),
    };
    let executed = scoped
        .orders
        .execute(&id, &command, &scoped.context)
        .await?;
    Ok(executed_response(StatusCode::OK, &id, &executed))
}

async fn get_order(scoped: Scoped, Path(id): Path<String>) -> Result<Response, ApiError> {
    let loaded = scoped.orders.load(&id).await?;
    let mut response = Json(serde_json::json!({
        "order_id": id,
        "version": loaded.version,
        "order": loaded.state,
    }))
    .into_response();
    set_etag(response.headers_mut(), loaded.version);
    Ok(response)
}

async fn history(
    scoped: Scoped,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let stream = scoped.orders.stream(&id);
    let events: Vec<es_core::RecordedEvent> = state
        .store
        .read_stream(stream, 1, Until::End)
        .try_collect()
        .await?;
    if events.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("order `{id}` does not exist"),
        ));
    }
    Ok(Json(events).into_response())
}

/// `?after=<position>`: the list shows at least the effects of the events up to it.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// A position from a command's `X-Position` header.
    pub after: Option<String>,
    /// At most this many orders (default 100).
    pub limit: Option<i64>,
}

async fn list_orders(
    scoped: Scoped,
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Response, ApiError> {
    if let Some(after) = query.after {
        let position: Position = after
            .parse()
            .map_err(|e: es_core::InvalidPosition| ApiError::bad_request(e.to_string()))?;
        state
            .order_list
            .wait_for(position, READ_YOUR_WRITES_TIMEOUT)
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
    }
    let rows = state
        .list
        .rows(
            &state.store,
            scoped.orders.tenant().as_str(),
            query.limit.unwrap_or(100),
        )
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(rows).into_response())
}

async fn health(State(state): State<AppState>) -> Response {
    let health = state.order_list.health();
    let status = match health.state {
        es_core::projection::RunState::Running | es_core::projection::RunState::Standby => {
            StatusCode::OK
        }
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    let body = serde_json::json!({
        "order_list": {
            "state": format!("{:?}", health.state),
            "checkpoint": health.checkpoint.map(|p| p.to_string()),
            "restarts": health.restarts,
            "last_error": health.last_error,
        }
    });
    (status, Json(body)).into_response()
}

fn executed_response(status: StatusCode, id: &str, executed: &Executed<Order>) -> Response {
    let body = serde_json::json!({
        "order_id": id,
        "status": executed.state.status,
        "outcome": executed,
    });
    let mut response = (status, Json(body)).into_response();
    set_etag(response.headers_mut(), executed.version);
    if let Some(position) = executed.last_position
        && let Ok(value) = HeaderValue::from_str(&position.to_string())
    {
        response.headers_mut().insert("x-position", value);
    }
    response
}

fn set_etag(headers: &mut HeaderMap, version: u64) {
    if let Ok(value) = HeaderValue::from_str(&format!("\"{version}\"")) {
        headers.insert(header::ETAG, value);
    }
}

/// An error answer: a status and a JSON body `{"error": ...}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        let status = match &error {
            error if error.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
            StoreError::InvalidInput { .. } => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, error.to_string())
    }
}

impl From<LoadError> for ApiError {
    fn from(error: LoadError) -> Self {
        match error {
            LoadError::NotFound { .. } => Self::new(StatusCode::NOT_FOUND, error.to_string()),
            LoadError::Store(error) => error.into(),
            other => Self::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

impl From<ExecuteError<OrderError>> for ApiError {
    fn from(error: ExecuteError<OrderError>) -> Self {
        let status = match &error {
            ExecuteError::NotFound { .. } => StatusCode::NOT_FOUND,
            ExecuteError::Conflict { .. } => StatusCode::PRECONDITION_FAILED,
            ExecuteError::Rejected(
                OrderError::AlreadyCreated | OrderError::InvalidStatus { .. },
            ) => StatusCode::CONFLICT,
            ExecuteError::Rejected(OrderError::NotFound) => StatusCode::NOT_FOUND,
            ExecuteError::Rejected(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ExecuteError::Encode { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ExecuteError::Store(StoreError::InvalidInput { .. }) => StatusCode::BAD_REQUEST,
            error if error.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, error.to_string())
    }
}
