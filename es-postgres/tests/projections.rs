//! Projection runners on PostgreSQL, beyond the conformance suite: a runner tailing the log while
//! 4 writers append, a read model whose commit fails (the checkpoint stays with it), and the
//! cost of looking for new events at the end of a long log. The read model is a table of the
//! test's schema, written through the runner's transaction.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use es_core::projection::ProjectionRunner;
use es_core::projection::{HandlerError, Projection, ProjectionError, ProjectionStore};
use es_core::{
    Aggregate, CommandContext, EventStore, ExpectedVersion, LogScope, NewEvent, Position,
    RecordedEvent, Repository, StoreError, StreamKey, Tenant,
};
use es_examples::bank::{Account, AccountEvent, Deposit, Open};
use es_postgres::sqlx::{self, Postgres};
use es_postgres::{PgStore, testing};

/// How long a test waits for something that normally takes well under a second.
const PATIENCE: Duration = Duration::from_secs(60);

/// Balances per account, and how many events each row took, kept in `<schema>.ledger`; the
/// positions it was handed, in call order.
#[derive(Debug, Clone)]
struct Ledger {
    table: String,
    calls: Arc<Mutex<Vec<Position>>>,
}

/// A row of the ledger: (tenant, account, balance, events applied, last version).
type Row = (String, String, i64, i64, i64);

impl Ledger {
    async fn create(store: &PgStore) -> Self {
        let table = format!("\"{}\".ledger", store.schema());
        sqlx::query(&format!(
            "CREATE TABLE {table} (tenant text NOT NULL, account text NOT NULL, \
             balance bigint NOT NULL, events_applied bigint NOT NULL, \
             last_version bigint NOT NULL, PRIMARY KEY (tenant, account))"
        ))
        .execute(store.pool())
        .await
        .unwrap();
        Self {
            table,
            calls: Arc::default(),
        }
    }

    async fn rows(&self, store: &PgStore) -> Vec<Row> {
        sqlx::query_as(&format!(
            "SELECT tenant, account, balance, events_applied, last_version FROM {} \
             ORDER BY tenant, account",
            self.table
        ))
        .fetch_all(store.pool())
        .await
        .unwrap()
    }

    fn calls(&self) -> Vec<Position> {
        self.calls.lock().unwrap().clone()
    }
}

impl Projection<PgStore> for Ledger {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        "ledger"
    }

    async fn handle(
        &mut self,
        transaction: &mut sqlx::Transaction<'static, Postgres>,
        event: &AccountEvent,
        envelope: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        self.calls.lock().unwrap().push(envelope.position);
        let amount = match event {
            AccountEvent::Opened(_) | AccountEvent::Closed => 0,
            AccountEvent::Deposited(deposited) => deposited.amount,
            AccountEvent::Withdrawn(withdrawn) => -withdrawn.amount,
        };
        sqlx::query(&format!(
            "INSERT INTO {} AS l VALUES ($1, $2, $3, 1, $4) \
             ON CONFLICT (tenant, account) DO UPDATE SET balance = l.balance + excluded.balance, \
               events_applied = l.events_applied + 1, last_version = excluded.last_version",
            self.table
        ))
        .bind(&envelope.tenant)
        .bind(&envelope.stream_id)
        .bind(amount)
        .bind(i64::try_from(envelope.stream_version)?)
        .execute(&mut **transaction)
        .await?;
        Ok(())
    }

    async fn reset(
        &mut self,
        transaction: &mut sqlx::Transaction<'static, Postgres>,
    ) -> Result<(), HandlerError> {
        sqlx::query(&format!("DELETE FROM {}", self.table))
            .execute(&mut **transaction)
            .await?;
        Ok(())
    }
}

/// The whole global log, in order.
async fn log(store: &PgStore, scope: LogScope<'_>) -> Vec<RecordedEvent> {
    let mut all = Vec::new();
    let mut after = Position::START;
    loop {
        let page = store.read_all(scope, after, 1_000).await.unwrap();
        let Some(last) = page.last() else {
            return all;
        };
        after = last.position;
        all.extend(page);
    }
}

/// What the ledger must hold after handling `log` once.
fn expected_rows(log: &[RecordedEvent]) -> Vec<Row> {
    let mut rows = BTreeMap::<(String, String), (i64, i64, i64)>::new();
    for event in log {
        let row = rows
            .entry((event.tenant.clone(), event.stream_id.clone()))
            .or_default();
        if let Ok(AccountEvent::Deposited(deposited)) = event.decode::<AccountEvent>() {
            row.0 += deposited.amount;
        }
        row.1 += 1;
        row.2 = event.stream_version as i64;
    }
    rows.into_iter()
        .map(|((tenant, account), (balance, applied, version))| {
            (tenant, account, balance, applied, version)
        })
        .collect()
}

/// 4 writers, each a repository of its own (one of them in tenant `acme`), run accounts while a
/// runner tails the log live with an idle timeout longer than the test's patience (so only
/// notifications wake it in time); once they stop, the runner has handled the log exactly: every
/// event once, in the log's order, and the ledger is the log's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tailing_projection_matches_the_log_written_by_4_concurrent_writers() {
    const ACCOUNTS: i64 = 30;
    let store = testing::store().await;
    let ledger = Ledger::create(&store).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut runner = ProjectionRunner::new(store.clone(), ledger.clone())
        .batch_size(25)
        .idle_timeout(Duration::from_secs(120));
    let running =
        tokio::spawn(async move { runner.run(async { stopped.await.unwrap_or(()) }).await });

    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let mut accounts = Repository::<Account, _>::new(store.clone());
            if writer == 3 {
                accounts = accounts.for_tenant(&Tenant::new("acme").unwrap());
            }
            tokio::spawn(async move {
                let context = CommandContext::new();
                for i in 0..ACCOUNTS {
                    let id = format!("account-{writer}-{i}");
                    let owner = format!("owner {i}");
                    accounts
                        .create(&id, &Open { owner }, &context)
                        .await
                        .unwrap();
                    for amount in 1..=3 {
                        accounts
                            .execute(&id, &Deposit(amount * 10 + writer), &context)
                            .await
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let handled_while_writing = ledger.calls().len();

    let log = log(&store, LogScope::AllTenants).await;
    assert_eq!(log.len() as i64, 4 * ACCOUNTS * 4);
    let end = log.last().unwrap().position;
    let started = Instant::now();
    while store.load_checkpoint("ledger").await.unwrap() != Some(end) {
        assert!(
            started.elapsed() < PATIENCE,
            "the tailing projection never reached the end of the log"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(()).unwrap();
    let checkpoint = tokio::time::timeout(PATIENCE, running)
        .await
        .expect("the runner stops when asked")
        .unwrap()
        .unwrap();
    assert_eq!(checkpoint, end);
    assert!(
        handled_while_writing > 0,
        "the projection handled events while the writers were still appending"
    );
    let positions: Vec<Position> = log.iter().map(|event| event.position).collect();
    assert_eq!(
        ledger.calls(),
        positions,
        "every event handled once, in the order of the log"
    );
    assert_eq!(ledger.rows(&store).await, expected_rows(&log));
    assert!(log.iter().any(|event| event.tenant == "acme"));
}

/// The checkpoint is written in the read model's transaction: when that transaction fails at
/// commit (a deferred constraint of the read model rejects a row only then), the checkpoint
/// does not move either, nothing is parked or skipped, and the runner reports the failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpoint_and_the_read_model_commit_together() {
    let store = testing::store().await;
    let accounts = Repository::<Account, _>::new(store.clone());
    for i in 0..5 {
        let id = format!("account-{i}");
        let context = CommandContext::new();
        let owner = format!("owner {i}");
        accounts
            .create(&id, &Open { owner }, &context)
            .await
            .unwrap();
        accounts
            .execute(&id, &Deposit(100 * i + 1), &context)
            .await
            .unwrap();
    }
    let ledger = Ledger::create(&store).await;
    let schema = store.schema();
    // Balances over 300 are refused, but only when the transaction commits.
    sqlx::query(&format!(
        "CREATE FUNCTION \"{schema}\".refuse_rich() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.balance > 300 THEN
                 RAISE EXCEPTION 'balances over 300 are refused at commit';
             END IF;
             RETURN NEW;
         END $$"
    ))
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query(&format!(
        "CREATE CONSTRAINT TRIGGER refuse_rich AFTER INSERT OR UPDATE ON {} \
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION \"{schema}\".refuse_rich()",
        ledger.table
    ))
    .execute(store.pool())
    .await
    .unwrap();

    let mut runner = ProjectionRunner::new(store.clone(), ledger.clone()).batch_size(100);
    let error = runner.catch_up().await.unwrap_err();
    assert!(
        matches!(
            &error,
            ProjectionError::Store {
                source: StoreError::Backend { .. },
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("refused at commit"), "{error}");
    assert_eq!(
        ledger.calls().len(),
        10,
        "the handler accepted every event; only the commit failed"
    );
    assert_eq!(
        store.load_checkpoint("ledger").await.unwrap(),
        None,
        "the checkpoint rolled back with the read model"
    );
    assert!(ledger.rows(&store).await.is_empty());
    assert!(runner.parked().await.unwrap().is_empty(), "nothing skipped");
}

/// `(scans, rows they read from the table)` of the store's events table (sequential and index
/// scans; rows read by sequential scans, and rows fetched through an index), once the statistics
/// of the store's statement connection (the only one its pool lends out) have been flushed and
/// show at least `scans_at_least` scans.
async fn event_table_reads(
    store: &PgStore,
    observer: &sqlx::PgPool,
    scans_at_least: i64,
) -> (i64, i64) {
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(store.pool())
        .await
        .unwrap();
    let mut latest = (0, 0);
    let started = Instant::now();
    while started.elapsed() < PATIENCE {
        latest = sqlx::query_as(
            "SELECT seq_scan + coalesce(idx_scan, 0), seq_tup_read + coalesce(idx_tup_fetch, 0)
             FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = 'events'",
        )
        .bind(store.schema())
        .fetch_one(observer)
        .await
        .unwrap();
        if latest.0 >= scans_at_least {
            return latest;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the statistics of the events table never showed {scans_at_least} scans: {latest:?}");
}

/// A projection that has caught up looks for new events on every wake-up and every page, in the
/// log of every tenant or of one; a projection of a new tenant reads its log from the start.
/// Those looks must cost index probes, not a walk over the whole log (else each costs time in
/// proportion to the log's length: 35 ms per look at 100,000 events, seconds at millions), and
/// must keep doing so once PostgreSQL would switch a prepared statement to a generic plan (after
/// five executions): the log of one tenant is planned for the tenant it reads, so the other
/// tenants' events in a log of one big tenant are never walked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looking_for_new_events_does_not_walk_the_log() {
    // Fails with the helper's message (how to start a server) when none answers.
    let observer = testing::pool().await;
    // Two pooled connections: the notification listener's, started first, and one for every
    // statement, whose statistics can then be flushed on demand.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&testing::database_url())
        .await
        .unwrap();
    let store = testing::store_on(pool).await;
    store
        .wait_for_events(
            LogScope::AllTenants,
            Position::START,
            Duration::from_millis(1),
        )
        .await
        .unwrap();
    // 5,000 events, 4 per append, of the default tenant.
    for n in 0..1_250u64 {
        let id = format!("account-{n}");
        let batch: Vec<NewEvent> = es_core::conformance::events(n * 4, 4);
        store
            .append(
                StreamKey::new(Account::NAME, &id),
                ExpectedVersion::NoStream,
                batch,
            )
            .await
            .unwrap();
    }
    sqlx::query(&format!("ANALYZE \"{}\".events", store.schema()))
        .execute(&observer)
        .await
        .unwrap();
    let end = log(&store, LogScope::AllTenants)
        .await
        .last()
        .unwrap()
        .position;
    for (scope, after) in [
        (LogScope::AllTenants, end),
        (LogScope::Tenant("default"), end),
        (LogScope::Tenant("newcomer"), Position::START),
    ] {
        let (scans_before, read_before) = event_table_reads(&store, &observer, 1).await;
        for _ in 0..10 {
            assert!(store.read_all(scope, after, 100).await.unwrap().is_empty());
            store
                .wait_for_events(scope, after, Duration::from_millis(1))
                .await
                .unwrap();
            assert_eq!(store.count_after(scope, after).await.unwrap(), 0);
        }
        let (scans, read) = event_table_reads(&store, &observer, scans_before + 30).await;
        assert!(
            read - read_before < 5_000,
            "{scope}: 30 looks after {after} in a 5,000-event log read {} rows in {} scans",
            read - read_before,
            scans - scans_before,
        );
    }
}
