//! Tenant isolation by row level security, proved with real roles: a table owner that migrates
//! (bound by FORCE), an application role that is not the owner (each of its transactions scoped
//! to a tenant, which confines it to that tenant's rows through `PgStore` and by raw SQL), and a
//! projection role with BYPASSRLS that reads every tenant. Each test creates its roles under
//! unique names and drops them at the end, whatever the outcome.

use std::future::Future;
use std::time::{SystemTime, UNIX_EPOCH};

use es_core::conformance::events;
use es_core::projection::{HandlerError, Projection, ProjectionRunner, ProjectionStore};
use es_core::{
    EventStore, ExpectedVersion, LogScope, Position, RawJson, RecordedEvent, Snapshot, StoreError,
    StreamKey, Until,
};
use es_postgres::{PgOptions, PgStore, testing};
use futures_util::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, Executor, PgConnection, Postgres};
use uuid::Uuid;

/// The prefix of the roles these tests create; the name goes on with the creation time.
const ROLE_PREFIX: &str = "es_test_role_";

/// Roles older than this are dropped by the next test run (a run killed before its clean-up).
const STALE_AFTER_SECS: u64 = 600;

/// The roles of one test, each with a pool of its own, and the schema the owner migrated with
/// tenant isolation on.
#[derive(Debug, Clone)]
struct Roles {
    admin: PgPool,
    names: [String; 3],
    options: PgOptions,
    /// Owns the tables: it created the schema and migrated it.
    owner: PgPool,
    /// The application: granted the event and snapshot tables, bound by the policies.
    app: PgPool,
    /// Projections and relays: BYPASSRLS, reads every tenant, keeps checkpoints.
    relay: PgPool,
}

impl Roles {
    fn store(&self, pool: &PgPool) -> PgStore {
        PgStore::with_options(pool.clone(), self.options.clone())
    }

    /// The schema's name.
    fn schema_name(&self) -> String {
        self.store(&self.admin).schema().to_owned()
    }

    /// The schema, quoted for SQL.
    fn schema(&self) -> String {
        format!("\"{}\"", self.schema_name())
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// How to connect as role `name`.
fn role_options(name: &str) -> PgConnectOptions {
    testing::database_url()
        .parse::<PgConnectOptions>()
        .expect("DATABASE_URL parses")
        .username(name)
}

async fn role_pool(name: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(3)
        .connect_with(role_options(name))
        .await
        .unwrap_or_else(|error| panic!("connecting as role `{name}` failed: {error}"))
}

/// Creates the roles, migrates a fresh schema as the owner with tenant isolation on, grants the
/// other roles what they need, runs `test`, and drops the schema and the roles, then reports the
/// test's panic if it had one.
async fn with_roles<F, Fut>(test: F)
where
    F: FnOnce(Roles) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    // Fails with the helper's message (how to start a server) when none answers.
    let admin = testing::pool().await;
    drop_stale_roles(&admin).await;
    let unique = format!(
        "{ROLE_PREFIX}{}_{}",
        now_secs(),
        &Uuid::new_v4().simple().to_string()[..8]
    );
    let names = [
        format!("{unique}_owner"),
        format!("{unique}_app"),
        format!("{unique}_relay"),
    ];
    let database: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&admin)
        .await
        .unwrap();
    let mut transaction = roles_lock(&admin).await;
    for statement in [
        format!("CREATE ROLE \"{}\" LOGIN", names[0]),
        format!("CREATE ROLE \"{}\" LOGIN", names[1]),
        format!("CREATE ROLE \"{}\" LOGIN BYPASSRLS", names[2]),
        format!(
            "GRANT CREATE ON DATABASE \"{}\" TO \"{}\"",
            database.replace('"', "\"\""),
            names[0]
        ),
    ] {
        transaction.execute(statement.as_str()).await.unwrap();
    }
    transaction.commit().await.unwrap();
    let options = testing::options().tenant_isolation(true);
    let owner = role_pool(&names[0]).await;
    let roles = Roles {
        admin: admin.clone(),
        names: names.clone(),
        options: options.clone(),
        owner: owner.clone(),
        app: role_pool(&names[1]).await,
        relay: role_pool(&names[2]).await,
    };
    let outcome = tokio::spawn({
        let roles = roles.clone();
        async move {
            roles
                .store(&roles.owner)
                .migrate()
                .await
                .expect("the owner migrates and creates the policies");
            let schema = roles.schema();
            let [_, app, relay] = &roles.names;
            for grant in [
                format!("GRANT USAGE ON SCHEMA {schema} TO \"{app}\", \"{relay}\""),
                format!(
                    "GRANT SELECT, INSERT ON {schema}.events TO \"{app}\"; \
                     GRANT SELECT, INSERT, UPDATE ON {schema}.snapshots TO \"{app}\""
                ),
                format!(
                    "GRANT SELECT ON {schema}.events, {schema}.snapshots TO \"{relay}\"; \
                     GRANT SELECT, INSERT, UPDATE, DELETE \
                       ON {schema}.projection_checkpoints, {schema}.dead_letters TO \"{relay}\""
                ),
            ] {
                roles.owner.execute(grant.as_str()).await.unwrap();
            }
            test(roles).await;
        }
    })
    .await;
    roles.owner.close().await;
    roles.app.close().await;
    roles.relay.close().await;
    drop_roles(&admin, &names).await;
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}

/// A transaction holding the lock that serializes the tests' changes to roles: granting and
/// revoking privileges on the database updates one catalog row, which concurrent changes would
/// fail on ("tuple concurrently updated").
async fn roles_lock(admin: &PgPool) -> sqlx::Transaction<'static, Postgres> {
    let mut transaction = admin.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(ROLE_PREFIX)
        .execute(&mut *transaction)
        .await
        .unwrap();
    transaction
}

/// Drops everything the roles own (their schema) and the roles.
async fn drop_roles(admin: &PgPool, names: &[String]) {
    let mut transaction = roles_lock(admin).await;
    for name in names {
        let quoted = format!("\"{name}\"");
        // DROP OWNED also revokes what was granted to the role.
        transaction
            .execute(format!("DROP OWNED BY {quoted} CASCADE; DROP ROLE {quoted}").as_str())
            .await
            .unwrap_or_else(|error| panic!("dropping role {name} failed: {error}"));
    }
    transaction.commit().await.unwrap();
}

/// Drops the roles an earlier, killed run left behind.
async fn drop_stale_roles(admin: &PgPool) {
    let Ok(names) = sqlx::query_scalar::<_, String>(
        "SELECT rolname::text FROM pg_roles WHERE starts_with(rolname, $1)",
    )
    .bind(ROLE_PREFIX)
    .fetch_all(admin)
    .await
    else {
        return;
    };
    let now = now_secs();
    let stale: Vec<String> = names
        .into_iter()
        .filter(|name| {
            name.strip_prefix(ROLE_PREFIX)
                .and_then(|rest| rest.split('_').next())
                .and_then(|secs| secs.parse::<u64>().ok())
                .is_some_and(|created| now.saturating_sub(created) > STALE_AFTER_SECS)
        })
        .collect();
    for name in stale {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        let mut transaction = roles_lock(admin).await;
        let dropped = transaction
            .execute(format!("DROP OWNED BY {quoted} CASCADE; DROP ROLE {quoted}").as_str())
            .await;
        if dropped.is_ok() {
            let _ = transaction.commit().await;
        }
    }
}

fn a(id: &str) -> StreamKey<'_> {
    StreamKey::new("order", id).in_tenant("tenant_a")
}

fn b(id: &str) -> StreamKey<'_> {
    StreamKey::new("order", id).in_tenant("tenant_b")
}

fn snapshot_of(stream: StreamKey<'_>) -> Snapshot {
    Snapshot {
        tenant: stream.tenant.to_owned(),
        stream_type: stream.stream_type.to_owned(),
        stream_id: stream.id.to_owned(),
        stream_version: 1,
        state_version: 1,
        state: RawJson::from_string(r#"{"total": 1}"#),
        taken_at: chrono::Utc::now(),
    }
}

/// The SQLSTATE of a failed statement.
fn sqlstate<T: std::fmt::Debug>(result: Result<T, sqlx::Error>) -> String {
    match result {
        Err(sqlx::Error::Database(error)) => error.code().unwrap_or_default().into_owned(),
        other => panic!("expected a database error, got {other:?}"),
    }
}

/// Scopes the connection's current transaction to `tenant`, as the store does.
async fn scope_to(connection: &mut PgConnection, tenant: &str) {
    sqlx::query("SELECT set_config('es.tenant', $1, true)")
        .bind(tenant)
        .execute(connection)
        .await
        .unwrap();
}

async fn count(connection: &mut PgConnection, schema: &str, filter: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {schema}.events {filter}"))
        .fetch_one(connection)
        .await
        .unwrap()
}

/// What the application writes first: three events of tenant A's stream, two of B's, one
/// snapshot each. Returns the ids of B's events.
async fn seed(app: &PgStore) -> Vec<Uuid> {
    app.append(a("1"), ExpectedVersion::NoStream, events(1, 3))
        .await
        .expect("the application appends to tenant A's stream");
    let b_events = events(10, 2);
    let ids = b_events.iter().map(|e| e.event_id).collect();
    app.append(b("1"), ExpectedVersion::NoStream, b_events)
        .await
        .expect("the application appends to tenant B's stream");
    app.save_snapshot(&snapshot_of(a("1"))).await.unwrap();
    app.save_snapshot(&snapshot_of(b("1"))).await.unwrap();
    ids
}

/// Through `PgStore`, every operation on a stream runs scoped to the stream's tenant, so the
/// application role works as on an unprotected store; whatever is not scoped to one tenant (the
/// log of every tenant, an event found by id) shows it nothing; and a transaction scoped to
/// tenant A (a tenant's projection batch) cannot read, count, append to or snapshot B's
/// streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_application_role_reaches_one_tenant_per_transaction_through_the_store() {
    with_roles(|roles| async move {
        let app = roles.store(&roles.app);
        let b_ids = seed(&app).await;
        let stream: Vec<RecordedEvent> = app
            .read_stream(a("1"), 1, Until::End)
            .try_collect()
            .await
            .unwrap();
        assert_eq!(stream.len(), 3);
        assert_eq!(app.stream_version(b("1")).await.unwrap(), Some(2));
        let mut replayed = 0;
        app.replay_stream(a("1"), 1, Until::End, |_| {
            replayed += 1;
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
        assert_eq!(replayed, 3);
        assert!(app.load_snapshot(a("1")).await.unwrap().is_some());
        let only_a = app
            .read_all(LogScope::Tenant("tenant_a"), Position::START, 100)
            .await
            .unwrap();
        assert_eq!(only_a.len(), 3);
        assert!(only_a.iter().all(|e| e.tenant == "tenant_a"));
        assert_eq!(
            app.count_after(LogScope::Tenant("tenant_b"), Position::START)
                .await
                .unwrap(),
            2
        );

        // Nothing scoped to one tenant: the policies show nothing.
        assert!(
            app.read_all(LogScope::AllTenants, Position::START, 100)
                .await
                .unwrap()
                .is_empty(),
            "the application role reads no tenant's log of all tenants"
        );
        assert_eq!(
            app.count_after(LogScope::AllTenants, Position::START)
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            app.find_event(LogScope::AllTenants, b_ids[0])
                .await
                .unwrap(),
            None
        );

        // An id of B's reused in A's stream: refused without naming B's stream.
        let mut reused = events(20, 1);
        reused[0].event_id = b_ids[0];
        match app.append(a("2"), ExpectedVersion::NoStream, reused).await {
            Err(error @ StoreError::Backend { .. }) => {
                let message = format!("{error}: {:?}", std::error::Error::source(&error));
                assert!(message.contains("another tenant"), "{message}");
                assert!(!message.contains("tenant_b"), "{message}");
            }
            other => panic!("expected the reused id to be refused, got {other:?}"),
        }
        assert_eq!(app.stream_version(a("2")).await.unwrap(), None);

        // A transaction of the store scoped to tenant A.
        let schema = roles.schema();
        let mut transaction = app.begin(LogScope::Tenant("tenant_a")).await.unwrap();
        assert_eq!(
            count(&mut transaction, &schema, "WHERE tenant = 'tenant_b'").await,
            0
        );
        assert_eq!(
            count(&mut transaction, &schema, "").await,
            3,
            "A's events only"
        );
        let insert_b = sqlx::query(&format!(
            "INSERT INTO {schema}.events (tenant, stream_type, stream_id, stream_version, \
               event_id, event_type, schema_version, payload, metadata) \
             VALUES ('tenant_b', 'order', '1', 3, $1, 'Tested', 1, '{{}}', '{{}}')"
        ))
        .bind(Uuid::new_v4())
        .execute(&mut *transaction)
        .await;
        assert_eq!(sqlstate(insert_b), "42501", "appending to B's stream");
        drop(transaction);
        let mut transaction = app.begin(LogScope::Tenant("tenant_a")).await.unwrap();
        let snapshot_b = sqlx::query(&format!(
            "INSERT INTO {schema}.snapshots AS saved (tenant, stream_type, stream_id, \
               stream_version, state_version, state, taken_at) \
             VALUES ('tenant_b', 'order', '1', 9, 1, '{{}}', now()) \
             ON CONFLICT (tenant, stream_type, stream_id) DO UPDATE \
               SET stream_version = excluded.stream_version"
        ))
        .execute(&mut *transaction)
        .await;
        assert_eq!(sqlstate(snapshot_b), "42501", "snapshotting B's stream");
        drop(transaction);
        let b_snapshot = app.load_snapshot(b("1")).await.unwrap().unwrap();
        assert_eq!(b_snapshot.stream_version, 1, "B's snapshot untouched");
    })
    .await;
}

/// By raw SQL on its own connection, the application role sees and writes the rows of the
/// tenant its transaction set, and nothing when it set none: neither on a fresh connection
/// (`current_setting` is NULL) nor on one whose earlier transaction set a tenant locally (it is
/// then '', which no tenant id is). A session-wide setting, which the store never makes, would
/// outlive its transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_application_role_by_raw_sql_sees_only_the_tenant_it_set() {
    with_roles(|roles| async move {
        seed(&roles.store(&roles.app)).await;
        let schema = roles.schema();
        // A connection of its own: one of the pool may have served the store already.
        let mut connection = PgConnection::connect_with(&role_options(&roles.names[1]))
            .await
            .unwrap();
        let setting = async |connection: &mut PgConnection| -> Option<String> {
            sqlx::query_scalar("SELECT current_setting('es.tenant', true)")
                .fetch_one(connection)
                .await
                .unwrap()
        };
        assert_eq!(setting(&mut connection).await, None, "never set: NULL");
        assert_eq!(
            count(&mut connection, &schema, "").await,
            0,
            "no tenant set"
        );

        let mut transaction = connection.begin().await.unwrap();
        scope_to(&mut transaction, "tenant_a").await;
        assert_eq!(count(&mut transaction, &schema, "").await, 3);
        assert_eq!(
            count(&mut transaction, &schema, "WHERE tenant = 'tenant_b'").await,
            0
        );
        let snapshots_b: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {schema}.snapshots WHERE tenant = 'tenant_b'"
        ))
        .fetch_one(&mut *transaction)
        .await
        .unwrap();
        assert_eq!(snapshots_b, 0);
        let insert_b = sqlx::query(&format!(
            "INSERT INTO {schema}.events (tenant, stream_type, stream_id, stream_version, \
               event_id, event_type, schema_version, payload, metadata) \
             VALUES ('tenant_b', 'order', 'raw', 1, $1, 'Tested', 1, '{{}}', '{{}}')"
        ))
        .bind(Uuid::new_v4())
        .execute(&mut *transaction)
        .await;
        assert_eq!(sqlstate(insert_b), "42501");
        transaction.rollback().await.unwrap();

        let mut transaction = connection.begin().await.unwrap();
        scope_to(&mut transaction, "tenant_a").await;
        let snapshot_b = sqlx::query(&format!(
            "INSERT INTO {schema}.snapshots (tenant, stream_type, stream_id, stream_version, \
               state_version, state, taken_at) \
             VALUES ('tenant_b', 'order', 'raw', 1, 1, '{{}}', now())"
        ))
        .execute(&mut *transaction)
        .await;
        assert_eq!(sqlstate(snapshot_b), "42501");
        transaction.rollback().await.unwrap();

        // The same connection, reused as a pool would: the local setting is gone ('').
        assert_eq!(setting(&mut connection).await.as_deref(), Some(""));
        assert_eq!(count(&mut connection, &schema, "").await, 0);

        // The pitfall the store avoids: a session setting outlives its transaction.
        sqlx::query("SELECT set_config('es.tenant', 'tenant_b', false)")
            .execute(&mut connection)
            .await
            .unwrap();
        let mut later = connection.begin().await.unwrap();
        assert_eq!(
            count(&mut later, &schema, "").await,
            2,
            "B's rows leak into a later transaction"
        );
        later.rollback().await.unwrap();
        connection.close().await.unwrap();

        // The store's transactions leave nothing behind on a pooled connection.
        let single = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(role_options(&roles.names[1]))
            .await
            .unwrap();
        let app = roles.store(&single);
        app.append(a("1"), ExpectedVersion::Exact(3), events(4, 1))
            .await
            .unwrap();
        let left: Option<String> = sqlx::query_scalar("SELECT current_setting('es.tenant', true)")
            .fetch_one(&single)
            .await
            .unwrap();
        assert_eq!(
            left.as_deref(),
            Some(""),
            "the append's tenant did not outlive it"
        );
        single.close().await;
    })
    .await;
}

/// FORCE binds the tables' owner too; the relay role (BYPASSRLS) reads every tenant and runs a
/// projection of all of them; migrating again leaves the policies as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_is_bound_and_the_relay_role_sees_every_tenant() {
    with_roles(|roles| async move {
        let b_ids = seed(&roles.store(&roles.app)).await;
        let schema = roles.schema();

        let mut owner = roles.owner.acquire().await.unwrap();
        assert_eq!(
            count(&mut owner, &schema, "").await,
            0,
            "the owner, no tenant set"
        );
        let mut transaction = owner.begin().await.unwrap();
        scope_to(&mut transaction, "tenant_b").await;
        assert_eq!(count(&mut transaction, &schema, "").await, 2);
        let insert_a = sqlx::query(&format!(
            "INSERT INTO {schema}.events (tenant, stream_type, stream_id, stream_version, \
               event_id, event_type, schema_version, payload, metadata) \
             VALUES ('tenant_a', 'order', 'x', 1, $1, 'Tested', 1, '{{}}', '{{}}')"
        ))
        .bind(Uuid::new_v4())
        .execute(&mut *transaction)
        .await;
        assert_eq!(sqlstate(insert_a), "42501", "the owner is bound by FORCE");
        drop(transaction);
        drop(owner);

        let relay = roles.store(&roles.relay);
        let log = relay
            .read_all(LogScope::AllTenants, Position::START, 100)
            .await
            .unwrap();
        assert_eq!(log.len(), 5, "every tenant's events");
        assert_eq!(
            relay
                .count_after(LogScope::AllTenants, Position::START)
                .await
                .unwrap(),
            5
        );
        let found = relay
            .find_event(es_core::LogScope::AllTenants, b_ids[0])
            .await
            .unwrap()
            .expect("found");
        assert_eq!(found.tenant, "tenant_b");
        let mut runner = ProjectionRunner::new(relay.clone(), Counted::default());
        let reached = runner
            .catch_up()
            .await
            .expect("the relay runs a projection");
        assert_eq!(reached, log.last().unwrap().position);
        assert_eq!(runner.projection().tenants, ["tenant_a", "tenant_b"]);
        assert_eq!(runner.projection().events, 5);

        // Idempotent: migrating again keeps one policy per table.
        roles.store(&roles.owner).migrate().await.unwrap();
        let policies: Vec<(String, String)> = sqlx::query_as(
            "SELECT tablename::text, policyname::text FROM pg_policies WHERE schemaname = $1 \
             ORDER BY tablename",
        )
        .bind(roles.schema_name())
        .fetch_all(&roles.admin)
        .await
        .unwrap();
        assert_eq!(
            policies,
            [
                ("events".to_owned(), "es_tenant_isolation".to_owned()),
                ("snapshots".to_owned(), "es_tenant_isolation".to_owned())
            ]
        );
    })
    .await;
}

/// A projection of every tenant that counts events and notes their tenants.
#[derive(Debug, Default)]
struct Counted {
    events: u64,
    tenants: Vec<String>,
}

impl Projection<PgStore> for Counted {
    type Event = es_core::conformance::projection::Tested;

    fn name(&self) -> &str {
        "counted"
    }

    async fn handle(
        &mut self,
        _: &mut sqlx::Transaction<'static, Postgres>,
        _: &Self::Event,
        envelope: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        self.events += 1;
        if !self.tenants.contains(&envelope.tenant) {
            self.tenants.push(envelope.tenant.clone());
        }
        Ok(())
    }

    async fn reset(
        &mut self,
        _: &mut sqlx::Transaction<'static, Postgres>,
    ) -> Result<(), HandlerError> {
        *self = Self::default();
        Ok(())
    }
}
