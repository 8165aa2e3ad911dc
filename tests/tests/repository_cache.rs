//! `Repository::with_cache` on every store (memory, a SQLite file, PostgreSQL): a cached
//! repository decides without reading the stream, yet every command and every load has the
//! outcome it would have without the cache, whatever other writers do.

use std::sync::{Arc, Mutex};

use es_core::{
    Aggregate, Apply, CommandContext, EventStore, ExecuteError, Handle, LoadError, Loaded,
    Repository, StartedFrom, StreamKey,
};
use es_examples::bank::{Account, AccountError, Close, Deposit, Open, Withdraw};
use es_tests::{Hooked, Hooks};
use proptest::prelude::*;

/// Records every stream read (`(stream id, from_version)`), to see what a command or a load
/// read.
#[derive(Debug, Clone, Default)]
struct CountReads(Arc<Mutex<Vec<(String, u64)>>>);

impl<S: EventStore> Hooks<S> for CountReads {
    fn on_read(&self, stream: StreamKey<'_>, from_version: u64) {
        self.0
            .lock()
            .unwrap()
            .push((stream.id.to_owned(), from_version));
    }
}

/// A store whose stream reads are counted.
type Counted<S> = Hooked<S, CountReads>;

fn counted<S: EventStore>(store: S) -> Counted<S> {
    Hooked::new(store, CountReads::default())
}

/// The reads since the last call.
fn take_reads<S>(store: &Counted<S>) -> Vec<(String, u64)> {
    std::mem::take(&mut *store.hooks.0.lock().unwrap())
}

fn read(stream_id: &str, from_version: u64) -> (String, u64) {
    (stream_id.to_owned(), from_version)
}

/// A load's state and version, without where it started from (which is what a cache changes).
fn state_and_version<A>(loaded: Loaded<A>) -> (A, u64) {
    (loaded.state, loaded.version)
}

/// A light whose switch commands do nothing when it is already as asked.
#[derive(Debug, Clone, PartialEq, es_core::Event)]
pub enum LightEvent {
    SwitchedOn,
    SwitchedOff,
}

#[derive(Debug, Default, Clone, PartialEq, es_core::Aggregate)]
#[aggregate(name = "light", event = LightEvent)]
pub struct Light {
    on: bool,
}

impl Apply<light_event::SwitchedOn> for Light {
    fn apply(&mut self, _: &light_event::SwitchedOn) {
        self.on = true;
    }
}

impl Apply<light_event::SwitchedOff> for Light {
    fn apply(&mut self, _: &light_event::SwitchedOff) {
        self.on = false;
    }
}

/// Switch the light on (`true`) or off.
#[derive(Debug)]
pub struct Switch(bool);

impl Handle<Switch> for Light {
    type Error = std::convert::Infallible;
    const CREATES: bool = true;
    fn handle(&self, command: &Switch) -> Result<Vec<LightEvent>, Self::Error> {
        Ok(match (self.on, command.0) {
            (false, true) => vec![LightEvent::SwitchedOn],
            (true, false) => vec![LightEvent::SwitchedOff],
            _ => Vec::new(),
        })
    }
}

fn account(id: &str) -> StreamKey<'_> {
    StreamKey::new(Account::NAME, id)
}

fn light(id: &str) -> StreamKey<'_> {
    StreamKey::new(Light::NAME, id)
}

fn ctx() -> CommandContext {
    CommandContext::new()
}

fn open() -> Open {
    Open {
        owner: "ada".into(),
    }
}

/// Deposits 1 through `accounts`; the stream version after it.
async fn deposit_one<S: EventStore>(accounts: &Repository<Account, S>, id: &str) -> u64 {
    accounts
        .execute(id, &Deposit(1), &ctx())
        .await
        .unwrap_or_else(|error| panic!("deposit on `{id}`: {error}"))
        .version
}

/// Another writer got in after the cached version: the append conflicts, only the newer events
/// are read, the command is decided again and goes through, and that first conflict costs no
/// retry (the repository allows none here).
async fn a_stale_cached_state_catches_up_with_another_writer<S: EventStore>(store: S) {
    let store = counted(store);
    let cached = Repository::<Account, _>::new(store.clone())
        .with_cache(8)
        .with_max_retries(0);
    let other = Repository::<Account, _>::new(store.clone());
    cached.execute("acc", &open(), &ctx()).await.unwrap();
    cached.execute("acc", &Deposit(100), &ctx()).await.unwrap();
    other.execute("acc", &Deposit(50), &ctx()).await.unwrap();
    other.execute("acc", &Deposit(25), &ctx()).await.unwrap();
    take_reads(&store);

    let done = cached.execute("acc", &Deposit(10), &ctx()).await.unwrap();
    assert_eq!(
        (done.version, done.state.balance, done.state.movements),
        (5, 185, 4)
    );
    assert_eq!(done.conflicts, 0, "a stale cached state is not a race");
    assert_eq!(
        take_reads(&store),
        [read("acc", 3)],
        "only the events after the cached version 2 were read"
    );

    let next = cached.execute("acc", &Withdraw(85), &ctx()).await.unwrap();
    assert_eq!((next.version, next.state.balance), (6, 100));
    assert!(
        take_reads(&store).is_empty(),
        "the caught-up state was cached"
    );
    assert_eq!(
        state_and_version(cached.load("acc").await.unwrap()),
        state_and_version(other.load("acc").await.unwrap())
    );
}

/// Rejected on a cached balance of 0 while another writer deposited: the command is decided
/// again on the caught-up state, and goes through.
async fn a_rejection_on_a_stale_cached_state_is_decided_again<S: EventStore>(store: S) {
    let store = counted(store);
    let cached = Repository::<Account, _>::new(store.clone()).with_cache(8);
    let other = Repository::<Account, _>::new(store.clone());
    cached.execute("acc", &open(), &ctx()).await.unwrap();
    other.execute("acc", &Deposit(100), &ctx()).await.unwrap();
    take_reads(&store);

    let done = cached.execute("acc", &Withdraw(60), &ctx()).await.unwrap();
    assert_eq!(
        (done.version, done.state.balance, done.conflicts),
        (3, 40, 0)
    );
    assert_eq!(take_reads(&store), [read("acc", 2)]);
}

/// Rejected on a cached state that is current: the stream is checked for newer events (none),
/// the rejection stands, nothing is written, and the entry stays.
async fn a_rejection_on_a_current_cached_state_stands<S: EventStore>(store: S) {
    let store = counted(store);
    let cached = Repository::<Account, _>::new(store.clone()).with_cache(8);
    cached.execute("acc", &open(), &ctx()).await.unwrap();
    cached.execute("acc", &Deposit(50), &ctx()).await.unwrap();
    take_reads(&store);

    let error = cached
        .execute("acc", &Withdraw(80), &ctx())
        .await
        .unwrap_err();
    assert_eq!(
        error.rejection(),
        Some(&AccountError::InsufficientFunds {
            requested: 80,
            balance: 50
        })
    );
    assert_eq!(take_reads(&store), [read("acc", 3)]);
    assert_eq!(store.stream_version(account("acc")).await.unwrap(), Some(2));

    assert_eq!(deposit_one(&cached, "acc").await, 3);
    assert!(take_reads(&store).is_empty(), "the entry survived");
}

/// A command with nothing to do on an assumed state (cached, or empty for `create`) does nothing
/// only if the stream holds nothing newer; otherwise it is decided on the stream's state.
async fn nothing_to_do_on_an_assumed_state_stands_only_on_the_current_state<S: EventStore>(
    store: S,
) {
    let store = counted(store);
    let cached = Repository::<Light, _>::new(store.clone()).with_cache(8);
    let other = Repository::<Light, _>::new(store.clone());
    cached.execute("l", &Switch(true), &ctx()).await.unwrap();
    other.execute("l", &Switch(false), &ctx()).await.unwrap();

    // On at version 1 in the cache, off at version 2 in the stream.
    let on = cached.execute("l", &Switch(true), &ctx()).await.unwrap();
    assert_eq!((on.events.len(), on.version, on.state.on), (1, 3, true));

    // `create` assumes the empty state, off: switching off does nothing there, not here.
    let off = other.create("l", &Switch(false), &ctx()).await.unwrap();
    assert_eq!((off.events.len(), off.version, off.state.on), (1, 4, false));

    // Cached at 3 (on), the stream at 4 (off): a conflict, then nothing to do.
    let idle = cached.execute("l", &Switch(false), &ctx()).await.unwrap();
    assert_eq!(
        (idle.events.len(), idle.version, idle.state.on),
        (0, 4, false)
    );
    take_reads(&store);
    // Cached and current: nothing to do stands after one look for newer events.
    let idle = cached.execute("l", &Switch(false), &ctx()).await.unwrap();
    assert_eq!((idle.events.len(), idle.version), (0, 4));
    assert_eq!(take_reads(&store), [read("l", 5)]);
    assert_eq!(store.stream_version(light("l")).await.unwrap(), Some(4));

    let fresh = other.create("m", &Switch(false), &ctx()).await.unwrap();
    assert_eq!((fresh.events.len(), fresh.version), (0, 0));
    assert_eq!(store.stream_version(light("m")).await.unwrap(), None);
}

/// At most `capacity` streams are cached, the least recently used one dropped first; clones
/// share the cache.
async fn the_cache_keeps_the_most_recently_used_streams<S: EventStore>(store: S) {
    let store = counted(store);
    let cached = Repository::<Account, _>::new(store.clone()).with_cache(2);
    for id in ["a", "b", "c"] {
        cached.execute(id, &open(), &ctx()).await.unwrap();
    }
    take_reads(&store);

    // `a` was used least recently: `b` and `c` stayed.
    assert_eq!(deposit_one(&cached, "b").await, 2);
    assert_eq!(deposit_one(&cached, "c").await, 2);
    assert!(take_reads(&store).is_empty());
    assert_eq!(deposit_one(&cached, "a").await, 2);
    assert_eq!(take_reads(&store), [read("a", 1)]);

    // `a` took the place of `b`, used before `c`.
    assert_eq!(deposit_one(&cached, "c").await, 3);
    assert!(take_reads(&store).is_empty());
    assert_eq!(deposit_one(&cached, "b").await, 3);
    assert_eq!(take_reads(&store), [read("b", 1)]);

    // Now `b` and `c` again, in a clone too.
    let clone = cached.clone();
    assert_eq!(deposit_one(&clone, "c").await, 4);
    assert_eq!(deposit_one(&clone, "b").await, 4);
    assert!(take_reads(&store).is_empty());
    assert_eq!(deposit_one(&cached, "a").await, 3);
    assert_eq!(take_reads(&store), [read("a", 1)]);
}

/// A hot stream is read by its first command only, snapshots or not: every later command is
/// one append.
async fn commands_on_a_cached_stream_do_not_read_it<S: EventStore>(store: S) {
    let store = counted(store);
    let cached = Repository::<Account, _>::new(store.clone()).with_cache(1);
    cached.execute("hot", &open(), &ctx()).await.unwrap();
    for version in 2..=30 {
        assert_eq!(deposit_one(&cached, "hot").await, version);
    }
    assert_eq!(take_reads(&store), [read("hot", 1)]);
}

/// `load` with a cache reads only the events after the cached version and gives what a load
/// without one gives; time travel ignores the cache.
async fn load_with_a_cache_equals_load_without_after_other_writers<S: EventStore>(store: S) {
    let store = counted(store);
    let cached = Repository::<Account, _>::new(store.clone()).with_cache(8);
    let plain = Repository::<Account, _>::new(store.clone());
    cached.execute("acc", &open(), &ctx()).await.unwrap();
    cached.execute("acc", &Deposit(100), &ctx()).await.unwrap();
    plain.execute("acc", &Deposit(5), &ctx()).await.unwrap();
    plain.execute("acc", &Withdraw(30), &ctx()).await.unwrap();
    plain.execute("acc", &Deposit(7), &ctx()).await.unwrap();

    take_reads(&store);
    let loaded = cached.load("acc").await.unwrap();
    assert_eq!(take_reads(&store), [read("acc", 3)]);
    assert_eq!((loaded.version, loaded.state.balance), (5, 82));
    assert_eq!(loaded.started_from, StartedFrom::Cache(2));
    let loaded = state_and_version(loaded);
    assert_eq!(loaded, state_and_version(plain.load("acc").await.unwrap()));

    take_reads(&store);
    let again = cached.load("acc").await.unwrap();
    assert_eq!(again.started_from, StartedFrom::Cache(5));
    assert_eq!(state_and_version(again), loaded);
    assert_eq!(take_reads(&store), [read("acc", 6)], "the load was cached");

    let then = cached.load_at_version("acc", 2).await.unwrap();
    assert_eq!((then.version, then.state.balance), (2, 100));
    assert_eq!(take_reads(&store), [read("acc", 1)]);
    assert_eq!(
        state_and_version(then),
        state_and_version(plain.load_at_version("acc", 2).await.unwrap())
    );
    let now = chrono::Utc::now();
    assert_eq!(
        state_and_version(cached.load_at_time("acc", now).await.unwrap()),
        state_and_version(plain.load_at_time("acc", now).await.unwrap())
    );
}

/// One `#[tokio::test]` per case and store: in memory, on a fresh SQLite file, in a fresh
/// PostgreSQL schema.
macro_rules! on_every_store {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(es_core::MemoryStore::new()).await;
                }
            )*
        }

        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let dir = tempfile::tempdir().expect("a temporary directory");
                    let store = es_sqlite::SqliteStore::open(dir.path().join("es.db"))
                        .await
                        .expect("a fresh store opens");
                    super::$case(store).await;
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(es_postgres::testing::store().await).await;
                }
            )*
        }
    };
}

on_every_store!(
    a_stale_cached_state_catches_up_with_another_writer,
    a_rejection_on_a_stale_cached_state_is_decided_again,
    a_rejection_on_a_current_cached_state_stands,
    nothing_to_do_on_an_assumed_state_stands_only_on_the_current_state,
    the_cache_keeps_the_most_recently_used_streams,
    commands_on_a_cached_stream_do_not_read_it,
    load_with_a_cache_equals_load_without_after_other_writers,
);

#[derive(Debug, Clone)]
enum Command {
    Open,
    Deposit(i64),
    Withdraw(i64),
    Close,
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        1 => Just(Command::Open),
        4 => (-5i64..200).prop_map(Command::Deposit),
        4 => (-5i64..250).prop_map(Command::Withdraw),
        1 => Just(Command::Close),
    ]
}

/// How [`outcome`] and [`decided`] print a command on a stream that does not exist, when the
/// command does not start streams.
const NOT_FOUND: &str = "not found";

/// What `command` does through `accounts`: its events, why it was rejected, or that it found
/// no account.
async fn outcome<S: EventStore>(accounts: &Repository<Account, S>, command: &Command) -> String {
    let context = ctx();
    let result = match command {
        Command::Open => accounts.execute("acc", &open(), &context).await,
        Command::Deposit(n) => accounts.execute("acc", &Deposit(*n), &context).await,
        Command::Withdraw(n) => accounts.execute("acc", &Withdraw(*n), &context).await,
        Command::Close => accounts.execute("acc", &Close, &context).await,
    };
    match result {
        Ok(executed) => format!("{:?}", executed.events),
        Err(ExecuteError::NotFound { .. }) => NOT_FOUND.to_owned(),
        Err(error) => format!("{:?}", error.rejection().expect("only rejections")),
    }
}

/// What `command` decides on `current` (version 0: no stream), as [`outcome`] prints it.
fn decided(current: &Loaded<Account>, command: &Command) -> String {
    fn decide<C>(current: &Loaded<Account>, command: &C) -> String
    where
        Account: Handle<C>,
    {
        if current.version == 0 && !<Account as Handle<C>>::CREATES {
            return NOT_FOUND.to_owned();
        }
        match current.state.handle(command) {
            Ok(events) => format!("{events:?}"),
            Err(error) => format!("{error:?}"),
        }
    }
    match command {
        Command::Open => decide(current, &open()),
        Command::Deposit(n) => decide(current, &Deposit(*n)),
        Command::Withdraw(n) => decide(current, &Withdraw(*n)),
        Command::Close => decide(current, &Close),
    }
}

/// The account's current state replayed from its first event (a load as of now uses neither
/// snapshot nor cache); the empty state at version 0 when there is no account.
async fn replayed<S: EventStore>(accounts: &Repository<Account, S>) -> Loaded<Account> {
    match accounts.load_at_time("acc", chrono::Utc::now()).await {
        Ok(loaded) => loaded,
        Err(LoadError::NotFound { .. }) => Loaded::default(),
        Err(other) => panic!("the account does not load: {other}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Commands sent at random through a cached repository or another writer: each has the
    /// outcome decided on the stream's current state, replayed from its first event.
    #[test]
    fn a_cached_repository_decides_as_on_the_current_state(
        commands in prop::collection::vec((any::<bool>(), command()), 0..60),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let store = es_core::MemoryStore::new();
            let cached = Repository::<Account, _>::new(store.clone()).with_cache(4);
            let other = Repository::<Account, _>::new(store.clone());
            for (through_cache, command) in &commands {
                let current = replayed(&other).await;
                let accounts = if *through_cache { &cached } else { &other };
                prop_assert_eq!(outcome(accounts, command).await, decided(&current, command));
            }
            let current = replayed(&other).await;
            let through_cache = match cached.load("acc").await {
                Ok(loaded) => state_and_version(loaded),
                Err(LoadError::NotFound { .. }) => (Account::default(), 0),
                Err(other) => panic!("the account does not load through the cache: {other}"),
            };
            prop_assert_eq!(through_cache, state_and_version(current));
            Ok(())
        })?;
    }
}
