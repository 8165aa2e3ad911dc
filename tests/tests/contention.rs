//! A hot aggregate with the repository's default settings, on both SQL stores: 8 tasks × 100
//! deposits on one account in one process, and two processes × 4 tasks × 100 deposits on one
//! account in the same SQLite file or the same PostgreSQL schema. Every command goes through,
//! and the stream ends with exactly the opening and the 800 deposits, at versions 1..=801, each
//! deposit once.
//!
//! The two-process tests run this test binary twice more as child processes, each with only
//! [`child_writer`] selected and [`CHILD`] describing its part (role, store, location). Children
//! report failed commands by their exit code and stderr, and the conflicts they met (retried
//! after a concurrent write of the other process) on stdout, which the parent prints (see them
//! with `cargo test -p es-tests --test contention -- --nocapture`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use es_core::{Aggregate, CommandContext, EventStore, Repository, StreamKey, Until};
use es_examples::bank::{Account, AccountEvent, Deposit, Open};
use es_postgres::{PgOptions, PgStore};
use es_sqlite::SqliteStore;
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};

/// The environment variable that makes [`child_writer`] a writer: its [`Part`] as JSON.
const CHILD: &str = "ES_CONTENTION_CHILD";

/// The account every command goes to.
const ACCOUNT: &str = "hot";

/// Deposits per task.
const COMMANDS: i64 = 100;

/// How long a child process may take before the parent kills it and fails.
const CHILD_DEADLINE: Duration = Duration::from_secs(300);

/// What a child process does: which writer it is, on which store, and where both children meet
/// before they start.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Part {
    /// 1 or 2: it makes the child's deposit amounts its own.
    role: i64,
    store: Location,
    /// A directory where each child leaves a file once its store is open, and waits for the
    /// other's, so that both write at the same time.
    meeting: PathBuf,
}

/// The store the children share.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Location {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A schema on the PostgreSQL server of `es_postgres::testing`.
    Postgres(String),
}

impl Location {
    fn name(&self) -> &'static str {
        match self {
            Location::Sqlite(_) => "SQLite",
            Location::Postgres(_) => "PostgreSQL",
        }
    }
}

fn account() -> StreamKey<'static> {
    StreamKey::new(Account::NAME, ACCOUNT)
}

/// The amount of deposit `command` of task `task` of writer `role`: different for every deposit
/// of a test, and telling which writer made it (`amount / 100_000`).
fn amount(role: i64, task: i64, command: i64) -> i64 {
    role * 100_000 + task * 1_000 + command + 1
}

/// Opens the account the writers deposit into: its first event.
async fn open_account<S: EventStore>(store: &S) {
    let opened = Repository::<Account, _>::new(store.clone())
        .execute(
            ACCOUNT,
            &Open {
                owner: "ada".into(),
            },
            &CommandContext::new(),
        )
        .await
        .expect("the account opens");
    assert_eq!(opened.version, 1);
}

/// What the tasks of one writer did.
#[derive(Debug, Default)]
struct Done {
    commands: usize,
    conflicts: u64,
    /// The most conflicts one command met.
    most: u32,
    failures: Vec<String>,
}

/// `tasks` tasks, each executing [`COMMANDS`] deposits through clones of one repository with
/// default settings.
async fn deposit<S: EventStore>(store: &S, role: i64, tasks: i64) -> Done {
    let accounts = Repository::<Account, _>::new(store.clone());
    let mut running = Vec::new();
    for task in 0..tasks {
        let accounts = accounts.clone();
        running.push(tokio::spawn(async move {
            let mut done = Done::default();
            for command in 0..COMMANDS {
                let deposit = Deposit(amount(role, task, command));
                match accounts
                    .execute(ACCOUNT, &deposit, &CommandContext::new())
                    .await
                {
                    Ok(executed) => {
                        done.commands += 1;
                        done.conflicts += u64::from(executed.conflicts);
                        done.most = done.most.max(executed.conflicts);
                    }
                    Err(error) => done
                        .failures
                        .push(format!("task {task}, deposit {command}: {error}")),
                }
            }
            done
        }));
    }
    let mut done = Done::default();
    for task in running {
        let task = task.await.expect("a writer task panicked");
        done.commands += task.commands;
        done.conflicts += task.conflicts;
        done.most = done.most.max(task.most);
        done.failures.extend(task.failures);
    }
    accounts.flush_snapshots().await;
    done
}

/// The stream holds exactly the opening and one deposit of every amount `roles` × `tasks` ×
/// [`COMMANDS`] sent, at versions 1..=801; returns how many runs of consecutive deposits by one
/// writer it holds (1 per writer when the writers never interleaved).
async fn check_stream<S: EventStore>(store: &S, roles: &[i64], tasks: i64) -> usize {
    let events: Vec<_> = store
        .read_stream(account(), 1, Until::End)
        .try_collect()
        .await
        .expect("the stream reads");
    let versions: Vec<u64> = events.iter().map(|event| event.stream_version).collect();
    let expected_len = 1 + roles.len() as u64 * tasks as u64 * COMMANDS as u64;
    assert_eq!(versions, (1..=expected_len).collect::<Vec<_>>());
    let decoded: Vec<AccountEvent> = events
        .iter()
        .map(|event| event.decode().expect("a stored event decodes"))
        .collect();
    assert!(matches!(decoded[0], AccountEvent::Opened(_)), "{decoded:?}");
    let mut stored: Vec<i64> = decoded[1..]
        .iter()
        .map(|event| match event {
            AccountEvent::Deposited(deposited) => deposited.amount,
            other => panic!("only deposits follow the opening, not {other:?}"),
        })
        .collect();
    let runs = 1 + stored
        .windows(2)
        .filter(|pair| pair[0] / 100_000 != pair[1] / 100_000)
        .count();
    let mut sent: Vec<i64> = roles
        .iter()
        .flat_map(|&role| {
            (0..tasks).flat_map(move |task| (0..COMMANDS).map(move |n| amount(role, task, n)))
        })
        .collect();
    stored.sort_unstable();
    sent.sort_unstable();
    assert!(stored == sent, "every deposit is stored exactly once");
    let loaded = Repository::<Account, _>::new(store.clone())
        .load(ACCOUNT)
        .await
        .expect("the account loads");
    assert_eq!(
        (loaded.version, loaded.state.balance),
        (expected_len, sent.iter().sum::<i64>())
    );
    runs
}

/// 8 tasks × 100 deposits through one repository: commands of one process on one stream queue,
/// so none fails and none meets a conflict.
async fn one_process<S: EventStore>(store: S, name: &str) {
    open_account(&store).await;
    let done = deposit(&store, 0, 8).await;
    assert!(
        done.failures.is_empty(),
        "{} of 800 deposits failed on {name}:\n{}",
        done.failures.len(),
        done.failures.join("\n")
    );
    assert_eq!(done.commands, 800);
    assert_eq!(
        done.conflicts, 0,
        "commands of one process on one stream never race"
    );
    check_stream(&store, &[0], 8).await;
    println!("one process on {name}: 800 deposits, 0 conflicts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_on_sqlite() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = SqliteStore::open(dir.path().join("es.db"))
        .await
        .expect("a fresh store opens");
    one_process(store, "SQLite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_on_postgres() {
    one_process(es_postgres::testing::store().await, "PostgreSQL").await;
}

/// A child's report line on stdout, parsed by the parent.
const REPORT: &str = "contention child";

/// Runs this test binary as writer `role`, its output going to files in `meeting`.
fn spawn_child(role: i64, store: &Location, meeting: &Path) -> std::process::Child {
    let part = Part {
        role,
        store: store.clone(),
        meeting: meeting.to_owned(),
    };
    let output = |stream: &str| {
        let path = meeting.join(format!("child-{role}.{stream}"));
        std::fs::File::create(&path)
            .unwrap_or_else(|error| panic!("cannot create {}: {error}", path.display()))
    };
    Command::new(std::env::current_exe().expect("the test binary's path"))
        .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
        .env(
            CHILD,
            serde_json::to_string(&part).expect("a part serializes"),
        )
        .stdin(Stdio::null())
        .stdout(output("stdout"))
        .stderr(output("stderr"))
        .spawn()
        .expect("the test binary starts again as a child process")
}

/// Waits for `child` up to [`CHILD_DEADLINE`] (then kills it); its exit status, stdout and
/// stderr.
fn wait_for(
    mut child: std::process::Child,
    role: i64,
    meeting: &Path,
) -> (std::process::ExitStatus, String, String) {
    let deadline = Instant::now() + CHILD_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("the child can be waited for") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child {role} did not finish within {CHILD_DEADLINE:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |stream: &str| {
        std::fs::read_to_string(meeting.join(format!("child-{role}.{stream}"))).unwrap_or_default()
    };
    (status, read("stdout"), read("stderr"))
}

/// Two child processes × 4 tasks × 100 deposits on the account in `store`, which the parent
/// opened; prints what each child reports (its conflicts) and how often the writers took turns.
async fn two_processes<S: EventStore>(store: S, location: Location) {
    let name = location.name();
    open_account(&store).await;
    let meeting = tempfile::tempdir().expect("a temporary directory");
    let children: Vec<_> = [1, 2]
        .into_iter()
        .map(|role| (role, spawn_child(role, &location, meeting.path())))
        .collect();
    let meeting_path = meeting.path().to_owned();
    let outcomes = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|(role, child)| (role, wait_for(child, role, &meeting_path)))
            .collect::<Vec<_>>()
    })
    .await
    .expect("the children are waited for");
    let mut reports = Vec::new();
    let mut conflicts = 0;
    for (role, (status, stdout, stderr)) in &outcomes {
        assert!(
            status.success(),
            "child {role} on {name} failed ({status}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        );
        // The test harness prints the test's name on the same line, before the report.
        let report = stdout
            .lines()
            .find_map(|line| line.find(REPORT).map(|at| &line[at..]))
            .unwrap_or_else(|| panic!("child {role} did not report:\n{stdout}\n{stderr}"));
        reports.push(report.to_owned());
        conflicts += report
            .split(", ")
            .nth(1)
            .and_then(|part| part.split(' ').next())
            .and_then(|count| count.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("child {role} reported no conflict count: {report}"));
    }
    for report in &reports {
        println!("two processes on {name}: {report}");
    }
    let runs = check_stream(&store, &[1, 2], 4).await;
    println!("two processes on {name}: the stream holds {runs} runs of one process's deposits");
    // A conflict is a write of the other process between a command's read and its append; a
    // third run of deposits is a switch back. Either shows the processes wrote at the same time.
    assert!(
        conflicts > 0 || runs > 2,
        "the processes wrote one after the other, not at the same time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_sqlite_file() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("es.db");
    let store = SqliteStore::open(&path).await.expect("a fresh store opens");
    two_processes(store, Location::Sqlite(path)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_postgres_schema() {
    let store = es_postgres::testing::store().await;
    let schema = store.schema().to_owned();
    two_processes(store, Location::Postgres(schema)).await;
}

/// Leaves this child's file in the meeting directory, then waits for the other child's.
fn meet(part: &Part) {
    std::fs::write(part.meeting.join(format!("ready-{}", part.role)), b"")
        .expect("the meeting directory is writable");
    let other = part.meeting.join(format!("ready-{}", 3 - part.role));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !other.exists() {
        assert!(
            Instant::now() < deadline,
            "the other child did not open its store within 60 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One writer of the two-process tests: does nothing unless [`CHILD`] is set (the parent sets
/// it when it runs this binary again). Opens the store as a process of its own would, waits for
/// the other writer, runs 4 tasks × 100 deposits with default settings, reports its conflicts
/// on stdout, and fails (exit code and stderr) if any deposit failed.
#[test]
fn child_writer() {
    let Some(part) = std::env::var_os(CHILD) else {
        return;
    };
    let part: Part = serde_json::from_str(part.to_str().expect("the part is UTF-8"))
        .expect("the part is the parent's JSON");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let done = runtime.block_on(async {
        match &part.store {
            Location::Sqlite(path) => {
                let store = SqliteStore::open(path).await.expect("the file opens");
                meet(&part);
                deposit(&store, part.role, 4).await
            }
            Location::Postgres(schema) => {
                let options = PgOptions::new()
                    .schema(schema)
                    .expect("the parent's schema name is valid");
                let store = PgStore::connect_with(&es_postgres::testing::database_url(), options)
                    .await
                    .expect("the server answers");
                meet(&part);
                deposit(&store, part.role, 4).await
            }
        }
    });
    println!(
        "{REPORT} {}: {} deposits, {} conflicts met and retried (at most {} by one deposit), {} failed",
        part.role,
        done.commands,
        done.conflicts,
        done.most,
        done.failures.len()
    );
    for failure in done.failures.iter().take(10) {
        eprintln!("{failure}");
    }
    assert!(
        done.failures.is_empty(),
        "{} of 400 deposits failed",
        done.failures.len()
    );
}
