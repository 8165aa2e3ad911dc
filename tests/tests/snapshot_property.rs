//! Property: for random command sequences, the state loaded through snapshots equals the state
//! of a full replay, and any command decided on either gives the same result.

use es_core::{
    CommandContext, ExecuteError, Handle, LoadError, Loaded, MemoryStore, Repository, StartedFrom,
};
use es_examples::bank::{Account, Close, Deposit, Open, Withdraw};
use proptest::prelude::*;

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

async fn run(accounts: &Repository<Account, MemoryStore>, command: &Command) {
    let ctx = CommandContext::new();
    let result = match command {
        Command::Open => accounts
            .execute("acc", &Open { owner: "p".into() }, &ctx)
            .await
            .map(drop),
        Command::Deposit(n) => accounts.execute("acc", &Deposit(*n), &ctx).await.map(drop),
        Command::Withdraw(n) => accounts.execute("acc", &Withdraw(*n), &ctx).await.map(drop),
        Command::Close => accounts.execute("acc", &Close, &ctx).await.map(drop),
    };
    match result {
        // Only `Open` starts the stream: the others find no account before it.
        Ok(()) | Err(ExecuteError::Rejected(_) | ExecuteError::NotFound { .. }) => {}
        Err(other) => panic!("{command:?} failed: {other}"),
    }
}

fn decide(state: &Account, command: &Command) -> String {
    let outcome = match command {
        Command::Open => state.handle(&Open { owner: "p".into() }),
        Command::Deposit(n) => state.handle(&Deposit(*n)),
        Command::Withdraw(n) => state.handle(&Withdraw(*n)),
        Command::Close => state.handle(&Close),
    };
    format!("{outcome:?}")
}

/// The loaded account, or `None` when no command started its stream.
fn found(loaded: Result<Loaded<Account>, LoadError>) -> Option<Loaded<Account>> {
    match loaded {
        Ok(loaded) => Some(loaded),
        Err(LoadError::NotFound { .. }) => None,
        Err(other) => panic!("the account does not load: {other}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn snapshot_state_equals_full_replay(commands in prop::collection::vec(command(), 0..60), probe in command()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let store = MemoryStore::new();
            let accounts = Repository::<Account, _>::new(store.clone());
            for command in &commands {
                run(&accounts, command).await;
            }
            accounts.flush_snapshots().await;
            let through_snapshot = found(accounts.load("acc").await);
            // Loading as of a time never uses a snapshot: it replays every event.
            let full_replay = found(accounts.load_at_time("acc", chrono::Utc::now()).await);
            let (Some(through_snapshot), Some(full_replay)) = (through_snapshot, full_replay) else {
                prop_assert!(
                    !commands.iter().any(|command| matches!(command, Command::Open)),
                    "an account was opened, yet does not load"
                );
                return Ok(());
            };
            // Every command writes at most one event, so each multiple of 5 (the account's
            // `snapshot_every`) was crossed, and the latest snapshot is at the last one.
            let version = through_snapshot.version;
            let expected_start = match version / 5 * 5 {
                0 => StartedFrom::Empty,
                at => StartedFrom::Snapshot(at),
            };
            prop_assert_eq!(through_snapshot.started_from, expected_start);
            prop_assert_eq!(full_replay.started_from, StartedFrom::Empty);
            prop_assert_eq!(
                (&through_snapshot.state, through_snapshot.version),
                (&full_replay.state, full_replay.version)
            );
            prop_assert_eq!(decide(&through_snapshot.state, &probe), decide(&full_replay.state, &probe));
            Ok(())
        })?;
    }
}
