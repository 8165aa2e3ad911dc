//! The order service driven over real HTTP, on a SQLite file and on PostgreSQL: the order flow,
//! 50 concurrent payments of one order, a retried create, a stale `If-Match`, not-found,
//! tenants, and the order list with read-your-writes.

use std::net::SocketAddr;

use es_core::DynStore;
use es_examples::order_list::OrderList;
use es_examples::web::{AppState, router};
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};

/// A running service and a client for it.
struct Service {
    base: String,
    client: Client,
    state: AppState,
    server: tokio::task::JoinHandle<()>,
    _dir: Option<tempfile::TempDir>,
}

impl Service {
    async fn start(store: DynStore, list: OrderList, dir: Option<tempfile::TempDir>) -> Self {
        let state = AppState::start(store, list)
            .await
            .expect("the service starts");
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let address: SocketAddr = listener.local_addr().unwrap();
        let app = router(state.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("the server runs");
        });
        Self {
            base: format!("http://{address}"),
            client: Client::new(),
            state,
            server,
            _dir: dir,
        }
    }

    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = es_sqlite::SqliteStore::open(dir.path().join("web.db"))
            .await
            .unwrap();
        Self::start(DynStore::new_sql(store), OrderList::new(), Some(dir)).await
    }

    async fn postgres() -> Self {
        let store = es_postgres::testing::store().await;
        let list = OrderList::in_schema(store.schema());
        Self::start(DynStore::new_sql(store), list, None).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn post(&self, path: &str, body: Value, headers: &[(&str, &str)]) -> Response {
        let mut request = self.client.post(self.url(path)).json(&body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("the request is answered")
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut request = self.client.get(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("the request is answered")
    }

    async fn stop(self) {
        self.server.abort();
        self.state.shutdown().await;
    }
}

fn order(id: &str) -> Value {
    json!({
        "order_id": id,
        "customer_id": "alice",
        "items": [{ "product_id": "book", "quantity": 2, "price": 1500 }],
        "shipping_address": {
            "street": "1-2-3 Shibuya", "city": "Tokyo", "postal_code": "150-0002", "country": "JP"
        }
    })
}

fn etag(response: &Response) -> String {
    response.headers()["etag"].to_str().unwrap().to_owned()
}

fn position(response: &Response) -> String {
    response.headers()["x-position"]
        .to_str()
        .unwrap()
        .to_owned()
}

async fn json_of(response: Response) -> Value {
    response.json().await.expect("a JSON body")
}

async fn the_order_flow(service: &Service) {
    let created = service
        .post("/orders", order("o-1"), &[("x-request-id", "req-42")])
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(etag(&created), "\"1\"");
    let got = service.get("/orders/o-1", &[]).await;
    assert_eq!(
        (got.status(), etag(&got)),
        (StatusCode::OK, "\"1\"".to_owned())
    );
    assert_eq!(json_of(got).await["order"]["status"], "PENDING");

    let reserved = service
        .post(
            "/orders/o-1/reservation",
            json!({}),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(
        (reserved.status(), etag(&reserved)),
        (StatusCode::OK, "\"2\"".to_owned())
    );
    let stale = service
        .post(
            "/orders/o-1/cancellation",
            json!({ "reason": "late" }),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(
        stale.status(),
        StatusCode::PRECONDITION_FAILED,
        "a stale If-Match"
    );
    assert!(
        json_of(stale).await["error"]
            .as_str()
            .unwrap()
            .contains("version 2")
    );

    let short = service
        .post(
            "/orders/o-1/payment",
            json!({ "payment_id": "p-0", "amount": 1 }),
            &[],
        )
        .await;
    assert_eq!(
        short.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "an amount that never fits"
    );
    let paid = service
        .post(
            "/orders/o-1/payment",
            json!({ "payment_id": "p-1", "amount": 3000 }),
            &[],
        )
        .await;
    assert_eq!(paid.status(), StatusCode::OK);
    let confirmed = service
        .post("/orders/o-1/confirmation", json!({}), &[])
        .await;
    assert_eq!(confirmed.status(), StatusCode::OK);
    let after = position(&confirmed);

    let history = json_of(service.get("/orders/o-1/history", &[]).await).await;
    let types: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "OrderCreated",
            "InventoryReserved",
            "PaymentProcessed",
            "OrderConfirmed"
        ]
    );
    assert_eq!(history[0]["metadata"]["correlation_id"], "req-42");
    assert_eq!(history[0]["payload"]["total_amount"], 3000);

    // Read-your-writes: the list waits until the projection passed the command's position.
    let list = service.get(&format!("/orders?after={after}"), &[]).await;
    assert_eq!(list.status(), StatusCode::OK);
    let rows = json_of(list).await;
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["order_id"] == "o-1")
        .expect("the order is listed");
    assert_eq!(row["status"], "CONFIRMED");

    let missing = service.get("/orders/nope", &[]).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let missing_command = service
        .post("/orders/nope/confirmation", json!({}), &[])
        .await;
    assert_eq!(missing_command.status(), StatusCode::NOT_FOUND);
    let bad_if_match = service
        .post(
            "/orders/o-1/confirmation",
            json!({}),
            &[("if-match", "yesterday")],
        )
        .await;
    assert_eq!(bad_if_match.status(), StatusCode::BAD_REQUEST);
    let bad_position = service.get("/orders?after=soon", &[]).await;
    assert_eq!(bad_position.status(), StatusCode::BAD_REQUEST);
}

async fn a_retried_create_places_one_order(service: &Service) {
    let key = [("idempotency-key", "create-o-2")];
    let first = service.post("/orders", order("o-2"), &key).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first = json_of(first).await;
    // The reply was lost; the client sends the same request again.
    let again = service.post("/orders", order("o-2"), &key).await;
    assert_eq!(
        again.status(),
        StatusCode::OK,
        "the first outcome, not a second order"
    );
    let again = json_of(again).await;
    assert_eq!(again["outcome"]["events"], first["outcome"]["events"]);
    assert_eq!(again["outcome"]["repeated"], true);
    let other_key = service
        .post("/orders", order("o-2"), &[("idempotency-key", "another")])
        .await;
    assert_eq!(
        other_key.status(),
        StatusCode::CONFLICT,
        "another command: the order exists"
    );
    let history = json_of(service.get("/orders/o-2/history", &[]).await).await;
    assert_eq!(history.as_array().unwrap().len(), 1, "one order placed");
}

async fn fifty_concurrent_payments_one_wins(service: &Service) {
    assert_eq!(
        service.post("/orders", order("o-3"), &[]).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(
        service
            .post("/orders/o-3/reservation", json!({}), &[])
            .await
            .status(),
        StatusCode::OK
    );
    let mut payments = Vec::new();
    for n in 0..50 {
        let client = service.client.clone();
        let url = service.url("/orders/o-3/payment");
        payments.push(tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({ "payment_id": format!("p-{n}"), "amount": 3000 }))
                .send()
                .await
                .expect("answered")
                .status()
        }));
    }
    let mut statuses = Vec::new();
    for payment in payments {
        statuses.push(payment.await.unwrap());
    }
    let won = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::CONFLICT)
        .count();
    assert_eq!((won, refused), (1, 49), "{statuses:?}");
    let history = json_of(service.get("/orders/o-3/history", &[]).await).await;
    let paid = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["event_type"] == "PaymentProcessed")
        .count();
    assert_eq!(paid, 1, "exactly one payment recorded");
}

async fn tenants_are_kept_apart(service: &Service) {
    let acme = [("x-tenant", "acme")];
    let globex = [("x-tenant", "globex")];
    assert_eq!(
        service.post("/orders", order("t-1"), &acme).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(
        service.get("/orders/t-1", &globex).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        service
            .post("/orders", order("t-1"), &globex)
            .await
            .status(),
        StatusCode::CREATED
    );
    let placed = service
        .post("/orders/t-1/reservation", json!({}), &acme)
        .await;
    let after = position(&placed);
    let rows = json_of(service.get(&format!("/orders?after={after}"), &acme).await).await;
    let rows = rows.as_array().unwrap();
    assert!(rows.iter().all(|row| row["tenant"] == "acme"), "{rows:?}");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["status"], "INVENTORY_RESERVED");
    let bad = service.get("/orders/t-1", &[("x-tenant", "")]).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

async fn the_whole_service(service: Service) {
    the_order_flow(&service).await;
    a_retried_create_places_one_order(&service).await;
    fifty_concurrent_payments_one_wins(&service).await;
    tenants_are_kept_apart(&service).await;
    let health = json_of(service.get("/health", &[]).await).await;
    assert_eq!(health["order_list"]["state"], "Running");
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_order_service_on_sqlite() {
    the_whole_service(Service::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_order_service_on_postgres() {
    the_whole_service(Service::postgres().await).await;
}
