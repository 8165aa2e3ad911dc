//! The workloads W1–W7, each run through the framework's public API ("ours") and through the plain
//! sqlx baseline on the same fresh database, alternating, round after round.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use es_core::projection::{Projection, ProjectionRunner, ProjectionStore};
use es_core::{
    Aggregate, CommandContext, Event, EventStore, ExpectedVersion, Handle, Metadata, NewEvent,
    Repository, StreamKey,
};
use es_examples::order::{
    Address, InventoryReserved, OrderConfirmed, OrderCreated, OrderEvent, OrderItem,
    PaymentProcessed, total_of,
};
use es_examples::order_list::{OrderList, PerEvent};
use serde::Serialize;
use uuid::Uuid;

use crate::BenchError;
use crate::baseline::{Baseline, Inserted, NewRow, command_metadata};
use crate::db::{Store, Target};
use crate::domain::{
    Account, AccountError, AccountEvent, Balance, Deposit, Deposited, Movement, Open, Opened,
    PlainEvent, SnapshottedAccount, Withdraw,
};

/// Runs a generic function on whichever store a [`Store`] holds.
macro_rules! on_store {
    ($store:expr, $s:ident => $body:expr) => {
        match $store {
            Store::Sqlite($s) => $body,
            Store::Postgres($s) => $body,
        }
    };
}

/// Every workload, in order.
pub(crate) const ALL: [&str; 7] = ["W1", "W2", "W3", "W4", "W5", "W6", "W7"];

/// How big and how often.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// Multiplies every workload's counts (1: the default sizes).
    pub(crate) scale: f64,
    /// Rounds per workload; each round runs ours and the baseline once.
    pub(crate) rounds: usize,
    /// Which sides run (both, except when profiling one).
    pub(crate) sides: Sides,
}

/// Which sides of each workload run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sides {
    Both,
    /// Only the framework (for profiling it).
    Ours,
    /// Only the baseline (for profiling it).
    Baseline,
}

impl Settings {
    /// The stream id prefixes of the sides that ran.
    fn ran(&self) -> &'static [&'static str] {
        match self.sides {
            Sides::Both => &["ours", "base"],
            Sides::Ours => &["ours"],
            Sides::Baseline => &["base"],
        }
    }

    /// `full` scaled, at least `min`.
    fn count(&self, full: u64, min: u64) -> u64 {
        ((full as f64 * self.scale).round() as u64).max(min)
    }
}

/// The elapsed time of each round, for each side.
#[derive(Debug, Default)]
struct Timings {
    ours: Vec<Duration>,
    baseline: Vec<Duration>,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Outcome {
    pub(crate) workload: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) variant: Option<&'static str>,
    pub(crate) events: u64,
    pub(crate) ours_per_sec: f64,
    pub(crate) baseline_per_sec: f64,
    pub(crate) ratio: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) target: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) met: Option<bool>,
    /// Each round's time in milliseconds, in the order they ran.
    pub(crate) ours_ms: Vec<f64>,
    pub(crate) baseline_ms: Vec<f64>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) notes: String,
    #[serde(flatten)]
    pub(crate) extra: BTreeMap<&'static str, serde_json::Value>,
}

impl Outcome {
    /// Each side's median throughput over the rounds, and the median of the rounds' ratios:
    /// each round runs both sides back to back, so its ratio compares them under the same load
    /// from other processes, whatever that load did between rounds.
    fn new(
        workload: &'static str,
        variant: Option<&'static str>,
        events: u64,
        timings: &Timings,
        target: Option<f64>,
    ) -> Self {
        let per_sec = |time: &Duration| events as f64 / time.as_secs_f64();
        let ours: Vec<f64> = timings.ours.iter().map(per_sec).collect();
        let baseline: Vec<f64> = timings.baseline.iter().map(per_sec).collect();
        let ratios: Vec<f64> = ours.iter().zip(&baseline).map(|(o, b)| o / b).collect();
        let ratio = median(&ratios);
        let ms = |times: &[Duration]| times.iter().map(|t| millis(*t)).collect();
        Self {
            workload,
            variant,
            events,
            ours_per_sec: median(&ours),
            baseline_per_sec: median(&baseline),
            ratio,
            target,
            met: target.map(|target| ratio >= target),
            ours_ms: ms(&timings.ours),
            baseline_ms: ms(&timings.baseline),
            notes: String::new(),
            extra: BTreeMap::new(),
        }
    }

    fn note(mut self, note: impl Into<String>) -> Self {
        if !self.notes.is_empty() {
            self.notes.push_str("; ");
        }
        self.notes.push_str(&note.into());
        self
    }

    fn extra(mut self, key: &'static str, value: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(key, value.into());
        self
    }
}

/// The median (the mean of the middle two for an even count); 0 for none.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}

/// Runs both sides `rounds` times, alternating which goes first, so that a burst of load from
/// other processes falls on both alike. Each side returns the time of its timed part.
async fn alternate(
    settings: Settings,
    mut ours: impl AsyncFnMut(usize) -> Result<Duration, BenchError>,
    mut baseline: impl AsyncFnMut(usize) -> Result<Duration, BenchError>,
) -> Result<Timings, BenchError> {
    let mut timings = Timings::default();
    let (run_ours, run_baseline) = match settings.sides {
        Sides::Both => (true, true),
        Sides::Ours => (true, false),
        Sides::Baseline => (false, true),
    };
    for round in 0..settings.rounds.max(1) {
        if round % 2 == 0 && run_ours {
            timings.ours.push(ours(round).await?);
        }
        if run_baseline {
            timings.baseline.push(baseline(round).await?);
        }
        if round % 2 == 1 && run_ours {
            timings.ours.push(ours(round).await?);
        }
    }
    Ok(timings)
}

/// Runs workload `name` on a fresh database of `target`.
pub(crate) async fn run(
    target: &Target,
    name: &str,
    settings: Settings,
) -> Result<Vec<Outcome>, BenchError> {
    let db = target.fresh(name).await?;
    let baseline = &db.baseline;
    let result = match name {
        "W1" => on_store!(&db.store, s => w1(s, baseline, settings).await),
        "W2" => on_store!(&db.store, s => w2(s, baseline, settings).await),
        "W3" => on_store!(&db.store, s => w3(s, baseline, settings).await),
        "W4" => on_store!(&db.store, s => w4(s, baseline, settings).await),
        "W5" => on_store!(&db.store, s => w5(s, baseline, settings).await),
        "W6" => on_store!(&db.store, s => w6(s, baseline, settings).await),
        "W7" => w7(&db.store, baseline, settings).await,
        other => Err(format!("unknown workload `{other}`").into()),
    };
    target.remove(db).await?;
    result
}

/// The aggregates the command workloads run.
trait BankAggregate:
    Aggregate<Event = AccountEvent>
    + AsRef<Balance>
    + Handle<Open, Error = AccountError>
    + Handle<Deposit, Error = AccountError>
    + Handle<Withdraw, Error = AccountError>
{
}

impl<A> BankAggregate for A where
    A: Aggregate<Event = AccountEvent>
        + AsRef<Balance>
        + Handle<Open, Error = AccountError>
        + Handle<Deposit, Error = AccountError>
        + Handle<Withdraw, Error = AccountError>
{
}

/// Executes one movement through the repository; returns the conflicts it met.
async fn execute_movement<A: BankAggregate, S: EventStore>(
    accounts: &Repository<A, S>,
    id: &str,
    movement: Movement,
) -> Result<u32, BenchError> {
    let context = CommandContext::new();
    let conflicts = match movement {
        Movement::Deposit(command) => accounts.execute(id, &command, &context).await?.conflicts,
        Movement::Withdraw(command) => accounts.execute(id, &command, &context).await?.conflicts,
    };
    Ok(conflicts)
}

fn open_command() -> Open {
    Open {
        owner: "ann".to_owned(),
    }
}

/// Checks a stream after a run: its version and balance, read through the framework.
async fn check_account<S: EventStore>(
    store: &S,
    id: &str,
    version: u64,
    balance: i64,
) -> Result<(), BenchError> {
    let loaded = Repository::<Account, S>::new(store.clone())
        .load(id)
        .await?;
    if loaded.version != version || loaded.state.0.balance != balance {
        return Err(format!(
            "stream `{id}`: version {} and balance {} after the run, expected {version} and {balance}",
            loaded.version, loaded.state.0.balance
        )
        .into());
    }
    Ok(())
}

/// W1: 2,000 new aggregates, one command each.
async fn w1<S: EventStore>(
    store: &S,
    baseline: &Baseline,
    settings: Settings,
) -> Result<Vec<Outcome>, BenchError> {
    let n = settings.count(2_000, 10);
    let accounts = Repository::<Account, S>::new(store.clone());
    let open = open_command();
    let timings = alternate(
        settings,
        async |round: usize| -> Result<Duration, BenchError> {
            let started = Instant::now();
            for i in 0..n {
                let id = format!("ours-{round}-{i}");
                accounts.create(&id, &open, &CommandContext::new()).await?;
            }
            Ok(started.elapsed())
        },
        async |round: usize| -> Result<Duration, BenchError> {
            let started = Instant::now();
            for i in 0..n {
                baseline
                    .open(&format!("base-{round}-{i}"), &open.owner)
                    .await?;
            }
            Ok(started.elapsed())
        },
    )
    .await?;
    for round in 0..settings.rounds {
        for side in settings.ran() {
            check_account(store, &format!("{side}-{round}-{}", n - 1), 1, 0).await?;
        }
    }
    Ok(vec![Outcome::new("W1", None, n, &timings, Some(0.9)).note(
        "ours: Repository::create, one append; baseline: one INSERT",
    )])
}

/// W2: 1,000 commands on one hot aggregate, with snapshots every 100 and without, and with
/// snapshots through a repository that caches states.
async fn w2<S: EventStore>(
    store: &S,
    baseline: &Baseline,
    settings: Settings,
) -> Result<Vec<Outcome>, BenchError> {
    let n = settings.count(1_000, 20);
    let snapshotted = Repository::<SnapshottedAccount, S>::new(store.clone());
    let (snapshotted, latencies) = w2_variant(
        store,
        &snapshotted,
        baseline,
        settings,
        n,
        "snap",
        "snapshots every 100",
    )
    .await?;
    let plain = Repository::<Account, S>::new(store.clone());
    let (plain, _) = w2_variant(
        store,
        &plain,
        baseline,
        settings,
        n,
        "plain",
        "no snapshots",
    )
    .await?;
    let cached = Repository::<SnapshottedAccount, S>::new(store.clone()).with_cache(16);
    let (cached, cached_latencies) = w2_variant(
        store,
        &cached,
        baseline,
        settings,
        n,
        "cached",
        "snapshots every 100, cached",
    )
    .await?;
    Ok(vec![
        with_latency_ratio(snapshotted, &latencies, n),
        plain,
        with_latency_ratio(cached, &cached_latencies, n),
    ])
}

/// Notes the latency of the n-th command against the 10th, each the median over the rounds
/// (nothing when ours did not run).
fn with_latency_ratio(outcome: Outcome, latencies: &[Vec<Duration>], n: u64) -> Outcome {
    if latencies.is_empty() {
        return outcome;
    }
    let median_of = |index: usize| {
        let mut times: Vec<Duration> = latencies.iter().map(|round| round[index]).collect();
        times.sort();
        times[times.len() / 2]
    };
    let window = |from: usize, to: usize| {
        let mut times: Vec<Duration> = latencies
            .iter()
            .flat_map(|round| round[from..to].iter().copied())
            .collect();
        times.sort();
        times[times.len() / 2]
    };
    let last = n as usize - 1;
    let tenth = median_of(9);
    let nth = median_of(last);
    let latency_ratio = nth.as_secs_f64() / tenth.as_secs_f64();
    let early = window(5, 15);
    let late = window(last - 9, last + 1);
    let window_ratio = late.as_secs_f64() / early.as_secs_f64();
    outcome
        .note(format!(
            "command {} took {:.0} us, the 10th {:.0} us: {latency_ratio:.2}x (target <= 1.2x{}); \
             medians of commands 6-15 and {}-{}: {:.0} us, {:.0} us, {window_ratio:.2}x",
            n,
            micros(nth),
            micros(tenth),
            if latency_ratio <= 1.2 {
                ", met"
            } else {
                ", missed"
            },
            last - 8,
            n,
            micros(early),
            micros(late),
        ))
        .extra("latency_10th_us", micros(tenth))
        .extra("latency_last_us", micros(nth))
        .extra("latency_ratio", latency_ratio)
        .extra("latency_met", latency_ratio <= 1.2)
        .extra("latency_window_ratio", window_ratio)
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// One W2 variant through `accounts` (streams named after `label`): the outcome and, for each
/// round of ours, every command's latency.
async fn w2_variant<A: BankAggregate, S: EventStore>(
    store: &S,
    accounts: &Repository<A, S>,
    baseline: &Baseline,
    settings: Settings,
    n: u64,
    label: &'static str,
    variant: &'static str,
) -> Result<(Outcome, Vec<Vec<Duration>>), BenchError> {
    let open = open_command();
    let mut latencies = Vec::new();
    let timings = alternate(
        settings,
        async |round: usize| -> Result<Duration, BenchError> {
            let id = format!("ours-{label}-{round}");
            let mut times = Vec::with_capacity(n as usize);
            let started = Instant::now();
            let command = Instant::now();
            accounts.execute(&id, &open, &CommandContext::new()).await?;
            times.push(command.elapsed());
            for k in 1..n {
                let command = Instant::now();
                execute_movement(accounts, &id, Movement::nth(k - 1)).await?;
                times.push(command.elapsed());
            }
            let elapsed = started.elapsed();
            latencies.push(times);
            Ok(elapsed)
        },
        async |round: usize| -> Result<Duration, BenchError> {
            let id = format!("base-{label}-{round}");
            let started = Instant::now();
            baseline.open(&id, &open.owner).await?;
            for k in 1..n {
                baseline.execute(&id, Movement::nth(k - 1)).await?;
            }
            Ok(started.elapsed())
        },
    )
    .await?;
    for round in 0..settings.rounds {
        for side in settings.ran() {
            let id = format!("{side}-{label}-{round}");
            check_account(store, &id, n, Movement::net(n - 1)).await?;
        }
    }
    let outcome = Outcome::new("W2", Some(variant), n, &timings, Some(0.85));
    Ok((outcome, latencies))
}

/// Appends `events` account events (an opening, then deposits) to `id` in batches.
pub(crate) async fn seed_account<S: EventStore>(
    store: &S,
    id: &str,
    events: u64,
    batch: u64,
) -> Result<(), BenchError> {
    let metadata = Metadata::default();
    let mut version = 0;
    while version < events {
        let size = batch.min(events - version);
        let batch = (version..version + size)
            .map(|v| {
                let event = if v == 0 {
                    AccountEvent::Opened(Opened {
                        owner: "ann".to_owned(),
                    })
                } else {
                    AccountEvent::Deposited(Deposited { amount: 100 })
                };
                NewEvent::encode(&event, &metadata)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let expected = if version == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(version)
        };
        store
            .append(StreamKey::new("account", id), expected, batch)
            .await?;
        version += size;
    }
    Ok(())
}

/// W3: rehydrate a 10,000-event stream 20 times.
async fn w3<S: EventStore>(
    store: &S,
    baseline: &Baseline,
    settings: Settings,
) -> Result<Vec<Outcome>, BenchError> {
    let length = settings.count(10_000, 100);
    let times = 20;
    seed_account(store, "long", length, 1_000).await?;
    let accounts = Repository::<Account, S>::new(store.clone());
    let balance = (length as i64 - 1) * 100;
    let timings = alternate(
        settings,
        async |_| -> Result<Duration, BenchError> {
            let started = Instant::now();
            for _ in 0..times {
                let loaded = accounts.load("long").await?;
                if loaded.version != length || loaded.state.0.balance != balance {
                    return Err("ours folded a wrong state".into());
                }
            }
            Ok(started.elapsed())
        },
        async |_| -> Result<Duration, BenchError> {
            let started = Instant::now();
            for _ in 0..times {
                let (state, version) = baseline.load("long").await?;
                if version != length as i64 || state.balance != balance {
                    return Err("the baseline folded a wrong state".into());
                }
            }
            Ok(started.elapsed())
        },
    )
    .await?;
    Ok(vec![
        Outcome::new("W3", None, length * times, &timings, Some(0.9)).note(format!(
            "{times} loads of a {length}-event stream; events/s folded"
        )),
    ])
}

/// W4: 8 tasks x 250 commands, each on its own aggregate.
async fn w4<S: EventStore>(
    store: &S,
    baseline: &Baseline,
    settings: Settings,
) -> Result<Vec<Outcome>, BenchError> {
    Ok(vec![
        concurrent_commands(store, baseline, settings, 8, settings.count(250, 10), None).await?,
        // A web service under load: many more requests in flight than pooled connections.
        concurrent_commands(
            store,
            baseline,
            settings,
            64,
            settings.count(32, 2),
            Some("64 tasks"),
        )
        .await?,
    ])
}

/// `tasks` tasks, each opening an account of its own and running `per_task` commands on it.
async fn concurrent_commands<S: EventStore>(
    store: &S,
    baseline: &Baseline,
    settings: Settings,
    tasks: u64,
    per_task: u64,
    variant: Option<&'static str>,
) -> Result<Outcome, BenchError> {
    let accounts = Repository::<Account, S>::new(store.clone());
    let timings = alternate(
        settings,
        async |round: usize| -> Result<Duration, BenchError> {
            let started = Instant::now();
            let handles = (0..tasks)
                .map(|task| {
                    let accounts = accounts.clone();
                    let id = format!("ours-{tasks}-{round}-{task}");
                    tokio::spawn(async move {
                        accounts
                            .execute(&id, &open_command(), &CommandContext::new())
                            .await?;
                        for k in 1..per_task {
                            execute_movement(&accounts, &id, Movement::nth(k - 1)).await?;
                        }
                        Ok::<_, BenchError>(())
                    })
                })
                .collect::<Vec<_>>();
            for handle in handles {
                handle.await??;
            }
            Ok(started.elapsed())
        },
        async |round: usize| -> Result<Duration, BenchError> {
            let started = Instant::now();
            let handles = (0..tasks)
                .map(|task| {
                    let baseline = baseline.clone();
                    let id = format!("base-{tasks}-{round}-{task}");
                    tokio::spawn(async move {
                        baseline.open(&id, "ann").await?;
                        for k in 1..per_task {
                            baseline.execute(&id, Movement::nth(k - 1)).await?;
                        }
                        Ok::<_, BenchError>(())
                    })
                })
                .collect::<Vec<_>>();
            for handle in handles {
                handle.await??;
            }
            Ok(started.elapsed())
        },
    )
    .await?;
    for round in 0..settings.rounds {
        for task in 0..tasks {
            for side in settings.ran() {
                let id = format!("{side}-{tasks}-{round}-{task}");
                check_account(store, &id, per_task, Movement::net(per_task - 1)).await?;
            }
        }
    }
    Ok(Outcome::new(
        "W4",
        variant,
        tasks * per_task,
        &timings,
        Some(0.9),
    ))
}

/// W5: 4 tasks x 100 commands on one aggregate, with retries; nothing may be lost.
async fn w5<S: EventStore>(
    store: &S,
    baseline: &Baseline,
    settings: Settings,
) -> Result<Vec<Outcome>, BenchError> {
    const START: i64 = 1_000_000;
    let tasks = 4u64;
    let per_task = settings.count(100, 10);
    // Enough that no command gives up: every conflict means another task's command went in.
    let accounts = Repository::<Account, S>::new(store.clone()).with_max_retries(10_000);
    let mut conflicts = (0u64, 0u64);
    let setup = async |id: &str| -> Result<(), BenchError> {
        let accounts = Repository::<Account, S>::new(store.clone());
        accounts
            .execute(id, &open_command(), &CommandContext::new())
            .await?;
        accounts
            .execute(id, &Deposit(START), &CommandContext::new())
            .await?;
        Ok(())
    };
    let timings = alternate(
        settings,
        async |round: usize| -> Result<Duration, BenchError> {
            let id = format!("ours-{round}");
            setup(&id).await?;
            let started = Instant::now();
            let handles = (0..tasks)
                .map(|_| {
                    let accounts = accounts.clone();
                    let id = id.clone();
                    tokio::spawn(async move {
                        let mut conflicts = 0u64;
                        for k in 0..per_task {
                            conflicts += u64::from(
                                execute_movement(&accounts, &id, Movement::nth(k)).await?,
                            );
                        }
                        Ok::<_, BenchError>(conflicts)
                    })
                })
                .collect::<Vec<_>>();
            for handle in handles {
                conflicts.0 += handle.await??;
            }
            Ok(started.elapsed())
        },
        async |round: usize| -> Result<Duration, BenchError> {
            let id = format!("base-{round}");
            setup(&id).await?;
            let started = Instant::now();
            let handles = (0..tasks)
                .map(|_| {
                    let baseline = baseline.clone();
                    let id = id.clone();
                    tokio::spawn(async move {
                        let mut conflicts = 0u64;
                        for k in 0..per_task {
                            conflicts += u64::from(baseline.execute(&id, Movement::nth(k)).await?);
                        }
                        Ok::<_, BenchError>(conflicts)
                    })
                })
                .collect::<Vec<_>>();
            for handle in handles {
                conflicts.1 += handle.await??;
            }
            Ok(started.elapsed())
        },
    )
    .await?;
    // Nothing lost: every command of every task is in the stream, and the balance adds up.
    let version = 2 + tasks * per_task;
    let balance = START + tasks as i64 * Movement::net(per_task);
    for round in 0..settings.rounds {
        for side in settings.ran() {
            check_account(store, &format!("{side}-{round}"), version, balance).await?;
        }
    }
    let rounds = settings.rounds.max(1) as u64;
    Ok(vec![
        Outcome::new("W5", None, tasks * per_task, &timings, Some(0.9))
            .note(format!(
                "nothing lost: each stream holds all {} commands (version {version}, balance {balance}); \
                 conflicts retried per round: ours {}, baseline {}",
                tasks * per_task,
                conflicts.0 / rounds,
                conflicts.1 / rounds
            ))
            .extra("lost", 0)
            .extra("conflicts_ours", conflicts.0 / rounds)
            .extra("conflicts_baseline", conflicts.1 / rounds),
    ])
}

/// W6: append 10,000 events in batches of 100.
async fn w6<S: EventStore>(
    store: &S,
    baseline: &Baseline,
    settings: Settings,
) -> Result<Vec<Outcome>, BenchError> {
    let batch = 100u64;
    let batches = settings.count(100, 1);
    let event = |version: u64| {
        if version == 1 {
            PlainEvent::Opened(Opened {
                owner: "ann".to_owned(),
            })
        } else {
            PlainEvent::Deposited(Deposited { amount: 100 })
        }
    };
    let timings = alternate(
        settings,
        async |round: usize| -> Result<Duration, BenchError> {
            let id = format!("ours-{round}");
            let started = Instant::now();
            for b in 0..batches {
                let metadata = CommandContext::new().metadata();
                let events = (1..=batch)
                    .map(|v| {
                        let typed = match event(b * batch + v) {
                            PlainEvent::Opened(e) => AccountEvent::Opened(e),
                            PlainEvent::Deposited(e) => AccountEvent::Deposited(e),
                            PlainEvent::Withdrawn(e) => AccountEvent::Withdrawn(e),
                        };
                        NewEvent::encode(&typed, &metadata)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let expected = match b {
                    0 => ExpectedVersion::NoStream,
                    _ => ExpectedVersion::Exact(b * batch),
                };
                store
                    .append(StreamKey::new("account", &id), expected, events)
                    .await?;
            }
            Ok(started.elapsed())
        },
        async |round: usize| -> Result<Duration, BenchError> {
            let id = format!("base-{round}");
            let started = Instant::now();
            for b in 0..batches {
                let metadata = command_metadata();
                let rows = (1..=batch)
                    .map(|v| {
                        baseline.row(
                            &id,
                            (b * batch + v) as i64,
                            &event(b * batch + v),
                            metadata.clone(),
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if baseline.insert_many(&rows).await? == Inserted::Conflict {
                    return Err("the baseline's batch conflicted".into());
                }
            }
            Ok(started.elapsed())
        },
    )
    .await?;
    let events = batches * batch;
    for round in 0..settings.rounds {
        for side in settings.ran() {
            let id = format!("{side}-{round}");
            check_account(store, &id, events, (events as i64 - 1) * 100).await?;
        }
    }
    Ok(vec![
        Outcome::new("W6", None, events, &timings, Some(0.85))
            .note("ours: EventStore::append; baseline: one multi-row INSERT per batch"),
    ])
}

/// The events of order `index`: created, inventory reserved, paid, confirmed.
fn order_events(index: u64) -> [OrderEvent; 4] {
    let at = Utc
        .timestamp_opt(1_700_000_000 + index as i64, 0)
        .single()
        .unwrap_or_else(Utc::now);
    let items = vec![
        OrderItem::new("prod-1", 2, 1_250),
        OrderItem::new("prod-2", 1, 4_990),
    ];
    let total = total_of(&items);
    [
        OrderEvent::OrderCreated(OrderCreated {
            customer_id: format!("customer-{}", index % 1_000),
            items: items.clone(),
            shipping_address: Address {
                street: "1 Main Street".to_owned(),
                city: "Springfield".to_owned(),
                postal_code: "12345".to_owned(),
                country: "US".to_owned(),
            },
            total_amount: total,
            created_at: at,
        }),
        OrderEvent::InventoryReserved(InventoryReserved {
            reservation_id: format!("res-{index}"),
            items,
        }),
        OrderEvent::PaymentProcessed(PaymentProcessed {
            payment_id: format!("pay-{index}"),
            amount: total,
            processed_at: at,
        }),
        OrderEvent::OrderConfirmed(OrderConfirmed { confirmed_at: at }),
    ]
}

/// Writes `orders` orders of four events each with multi-row inserts (set-up, not measured).
async fn seed_orders(baseline: &Baseline, orders: u64) -> Result<(), BenchError> {
    let mut rows = Vec::with_capacity(1_000);
    for index in 0..orders {
        for (version, event) in (1..).zip(order_events(index)) {
            rows.push(NewRow {
                stream_type: "order",
                stream_id: format!("order-{index}"),
                version,
                event_id: Uuid::new_v4(),
                event_type: event.event_type(),
                schema_version: i64::from(event.schema_version()),
                payload: event.encode()?.into_string(),
                metadata: "{}".to_owned(),
            });
        }
        if rows.len() >= 1_000 || index + 1 == orders {
            baseline.insert_many(&rows).await?;
            rows.clear();
        }
    }
    Ok(())
}

/// The order list table under another name, for the baseline.
fn order_table_sql(table: &str, time: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (
            order_id TEXT PRIMARY KEY,
            customer_id TEXT NOT NULL,
            total_amount BIGINT NOT NULL,
            status TEXT NOT NULL,
            created_at {time} NOT NULL,
            confirmed_at {time},
            cancelled_at {time},
            cancellation_reason TEXT
        )"
    )
}

async fn catch_up_ours<S: ProjectionStore, P: Projection<S>>(
    store: &S,
    list: P,
) -> Result<(), BenchError> {
    ProjectionRunner::new(store.clone(), list)
        .batch_size(500)
        .catch_up()
        .await?;
    Ok(())
}

/// W7: projection catch-up of 100,000 events into the order list table.
async fn w7(
    store: &Store,
    baseline: &Baseline,
    settings: Settings,
) -> Result<Vec<Outcome>, BenchError> {
    let orders = settings.count(25_000, 10);
    let events = orders * 4;
    seed_orders(baseline, orders).await?;
    let (list, base_table, checkpoints, time) = match store {
        Store::Sqlite(_) => (
            OrderList::new(),
            "order_list_baseline".to_owned(),
            "es_checkpoints".to_owned(),
            "TEXT",
        ),
        Store::Postgres(s) => (
            OrderList::in_schema(s.schema()),
            format!("\"{}\".order_list_baseline", s.schema()),
            format!("\"{}\".projection_checkpoints", s.schema()),
            "TIMESTAMPTZ",
        ),
    };
    let ours_name = "order_list";
    let base_name = "order_list_baseline";
    let execute = async |sql: String, bind: Option<&str>| -> Result<u64, BenchError> {
        let done = on_store!(store, s => {
            let query = sqlx::query(&sql);
            let query = match bind {
                Some(value) => query.bind(value),
                None => query,
            };
            query.execute(s.pool()).await?.rows_affected()
        });
        Ok(done)
    };
    let count_confirmed = async |table: &str| -> Result<i64, BenchError> {
        let sql = format!("SELECT count(*) FROM {table} WHERE status = 'CONFIRMED'");
        let count =
            on_store!(store, s => sqlx::query_scalar::<_, i64>(&sql).fetch_one(s.pool()).await?);
        Ok(count)
    };
    match store {
        Store::Sqlite(s) => list.create_table(s).await?,
        Store::Postgres(s) => list.create_table(s).await?,
    }
    execute(order_table_sql(&base_table, time), None).await?;
    let reset = async |table: &str, projection: &str| -> Result<(), BenchError> {
        execute(format!("DELETE FROM {table}"), None).await?;
        execute(
            format!("DELETE FROM {checkpoints} WHERE projection = $1"),
            Some(projection),
        )
        .await?;
        Ok(())
    };
    let baseline_side = async |_| -> Result<Duration, BenchError> {
        reset(&base_table, base_name).await?;
        let started = Instant::now();
        let done = baseline
            .catch_up_orders(&base_table, base_name, 500)
            .await?;
        let elapsed = started.elapsed();
        if done != events || count_confirmed(&base_table).await? != orders as i64 {
            return Err("baseline: the order list misses orders".into());
        }
        Ok(elapsed)
    };
    let timings = alternate(
        settings,
        async |_| -> Result<Duration, BenchError> {
            reset(list.table(), ours_name).await?;
            let started = Instant::now();
            on_store!(store, s => catch_up_ours(s, list.clone()).await?);
            let elapsed = started.elapsed();
            if count_confirmed(list.table()).await? != orders as i64 {
                return Err("ours: the order list misses orders".into());
            }
            Ok(elapsed)
        },
        baseline_side,
    )
    .await?;
    let per_event = alternate(
        settings,
        async |_| -> Result<Duration, BenchError> {
            reset(list.table(), "order_list_per_event").await?;
            let started = Instant::now();
            on_store!(store, s => catch_up_ours(s, PerEvent(list.clone())).await?);
            let elapsed = started.elapsed();
            if count_confirmed(list.table()).await? != orders as i64 {
                return Err("ours (per event): the order list misses orders".into());
            }
            Ok(elapsed)
        },
        baseline_side,
    )
    .await?;
    let note = match store {
        Store::Sqlite(_) => {
            "on SQLite: the SQLite order list table (PostgreSQL with --db-url); pages of 500"
        }
        Store::Postgres(_) => "the PostgreSQL order list table; pages of 500",
    };
    Ok(vec![
        Outcome::new("W7", None, events, &timings, None).note(note),
        Outcome::new("W7", Some("per-event handler"), events, &per_event, None),
    ])
}
