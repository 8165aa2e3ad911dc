//! `es-bench nats`: the NATS JetStream relay and consumer, measured.
//!
//! - **Relay throughput**: a log of N events (100,000 by default) in a fresh SQLite file and a
//!   fresh PostgreSQL schema, relayed to a fresh JetStream stream by es-core's `Relay` on
//!   es-nats's publisher, against a plain async-nats program publishing the same messages
//!   (same subjects but for the prefix, same headers, same payloads, built before the clock
//!   starts) with the same acknowledgement policy: pipelined, at most the same number of
//!   acknowledgements in flight, awaited in order. Rounds alternate which side goes first; the
//!   report gives medians and the median of the rounds' ratios.
//! - **Latency**: events appended to PostgreSQL at a steady rate while a relay tails the log
//!   live and a consumer (inbox transaction included) handles them: from the append's commit to
//!   the handler, p50/p90/p99/max.
//!
//! ```sh
//! cargo run --release -p es-bench -- nats                  # both, on 127.0.0.1
//! cargo run --release -p es-bench -- nats relay --events 100000 --rounds 3
//! cargo run --release -p es-bench -- nats latency --events 2000 --rate 200
//! ```

use std::collections::{HashMap, VecDeque};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use es_core::integration::{Consumer, Message, Relay};
use es_core::projection::{HandlerError, Projection, ProjectionStore};
use es_core::{
    CommandContext, Event, EventStore, ExpectedVersion, LogScope, NewEvent, Position,
    RecordedEvent, StreamKey,
};
use es_nats::{EsNats, Storage, StreamSettings};
use es_postgres::{PgOptions, PgStore};
use es_sqlite::SqliteStore;
use uuid::Uuid;

use crate::BenchError;

const USAGE: &str = "\
usage: es-bench nats [relay|latency] [--events N] [--rounds N] [--window N] [--batch N] [--rate N]
                     [--nats-url URL] [--db-url URL] [--sqlite-only]

  relay          relay throughput against a plain async-nats publisher (default: both parts)
  latency        append commit -> consumer handler while tailing live on PostgreSQL
  --events N     events in the log (relay, default 100000) or appended (latency, default 2000)
  --rounds N     relay rounds, alternating which side goes first; default 3
  --window N     acknowledgements in flight, for both sides; default 256 (the relay's default)
  --rate N       appends per second in the latency run; default 200
  --batch N      events the relay reads and checkpoints at a time; default 10000 (one
                 checkpoint commit per batch; acknowledgements stay in flight across batches)
  --nats-url URL default $NATS_URL or nats://127.0.0.1:4222
  --db-url URL   PostgreSQL; default $DATABASE_URL or postgres://postgres@127.0.0.1:5432/postgres
  --sqlite-only  relay throughput on SQLite only";

/// The settings of the NATS benchmarks.
#[derive(Debug, Clone)]
pub(crate) struct NatsBenchArgs {
    /// Relay throughput, latency, or both.
    pub(crate) relay: bool,
    /// See `--help`.
    pub(crate) latency: bool,
    /// Events in the log (relay) or appended (latency); `None` for each part's default.
    pub(crate) events: Option<u64>,
    /// Relay rounds.
    pub(crate) rounds: usize,
    /// Acknowledgements in flight.
    pub(crate) window: usize,
    /// Appends per second in the latency run.
    pub(crate) rate: u64,
    /// Events the relay reads (and checkpoints) at a time.
    pub(crate) batch: usize,
    /// The NATS server.
    pub(crate) nats_url: String,
    /// The PostgreSQL server.
    pub(crate) db_url: String,
    /// Relay throughput on SQLite only.
    pub(crate) sqlite_only: bool,
}

impl NatsBenchArgs {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<Self>, String> {
        let mut parsed = Self {
            relay: true,
            latency: true,
            events: None,
            rounds: 3,
            window: 256,
            rate: 200,
            batch: 10_000,
            nats_url: std::env::var("NATS_URL")
                .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned()),
            db_url: std::env::var("DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned()),
            sqlite_only: false,
        };
        let number = |value: Option<String>, name: &str| -> Result<u64, String> {
            value
                .ok_or_else(|| format!("{name} needs a value"))?
                .replace(['_', ','], "")
                .parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{name} needs a positive whole number"))
        };
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "relay" => parsed.latency = false,
                "latency" => parsed.relay = false,
                "-h" | "--help" => return Ok(None),
                "--events" => parsed.events = Some(number(args.next(), "--events")?),
                "--rounds" => parsed.rounds = number(args.next(), "--rounds")? as usize,
                "--window" => parsed.window = number(args.next(), "--window")? as usize,
                "--rate" => parsed.rate = number(args.next(), "--rate")?,
                "--batch" => parsed.batch = number(args.next(), "--batch")? as usize,
                "--nats-url" => parsed.nats_url = args.next().ok_or("--nats-url needs a value")?,
                "--db-url" => parsed.db_url = args.next().ok_or("--db-url needs a value")?,
                "--sqlite-only" => parsed.sqlite_only = true,
                other => return Err(format!("unexpected argument `{other}`")),
            }
        }
        Ok(Some(parsed))
    }
}

/// `es-bench nats ...`: parses its arguments, runs, prints.
pub(crate) async fn main(args: impl Iterator<Item = String>) -> ExitCode {
    let args = match NatsBenchArgs::parse(args) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("es-bench nats: {error}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = async {
        if args.relay {
            for outcome in run_relay_throughput(&args).await? {
                println!("{outcome}");
            }
        }
        if args.latency {
            println!("{}", run_latency(&args).await?);
        }
        Ok::<(), BenchError>(())
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("es-bench nats: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The event of the benchmark log.
#[derive(Debug, Clone, PartialEq, Event)]
enum BenchEvent {
    /// Money moved.
    Deposited { amount: i64, reference: String },
}

/// What one relay throughput measurement gave.
#[derive(Debug, Clone)]
pub(crate) struct RelayThroughput {
    /// `SQLite` or `PostgreSQL`.
    pub(crate) store: &'static str,
    /// Events relayed.
    pub(crate) events: u64,
    /// The relay's events per second (median of the rounds).
    pub(crate) relay_per_sec: f64,
    /// The plain publisher's messages per second (median).
    pub(crate) plain_per_sec: f64,
    /// The median of the rounds' relay / plain ratios.
    pub(crate) ratio: f64,
    /// Acknowledgements in flight on both sides.
    pub(crate) window: usize,
    /// The relay's batch.
    pub(crate) batch: usize,
    /// Rounds run.
    pub(crate) rounds: usize,
}

impl std::fmt::Display for RelayThroughput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "relay throughput ({}, {} events, {} in flight, relay batch {}, {} rounds): relay {:.0} \
             events/s, plain async-nats {:.0} msgs/s, ratio {:.3} (target >= 0.8: {})",
            self.store,
            self.events,
            self.window,
            self.batch,
            self.rounds,
            self.relay_per_sec,
            self.plain_per_sec,
            self.ratio,
            if self.ratio >= 0.8 { "met" } else { "MISSED" }
        )
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Fills `store` with `events` events over 1,000 streams, 100 events per append.
async fn fill<S: EventStore>(store: &S, events: u64) -> Result<(), BenchError> {
    let metadata = CommandContext::new()
        .with_correlation_id("bench")
        .metadata();
    let streams = 1_000u64.min(events.max(1));
    let mut written = 0u64;
    let mut round = 0u64;
    while written < events {
        for stream in 0..streams {
            if written >= events {
                break;
            }
            let batch = 100u64.min(events - written);
            let mut new = Vec::with_capacity(batch as usize);
            for i in 0..batch {
                let event = BenchEvent::Deposited {
                    amount: (round * 100 + i) as i64,
                    reference: format!("ref-{stream}-{round}-{i}"),
                };
                new.push(NewEvent::encode(&event, &metadata)?);
            }
            store
                .append(
                    StreamKey::new("account", &format!("acc-{stream}")),
                    ExpectedVersion::Any,
                    new,
                )
                .await?;
            written += batch;
        }
        round += 1;
    }
    Ok(())
}

/// The log as the relay publishes it, under `prefix`.
async fn messages_of<S: EventStore>(store: &S, prefix: &str) -> Result<Vec<Message>, BenchError> {
    let mut messages = Vec::new();
    let mut after = Position::START;
    loop {
        let page = store.read_all(LogScope::AllTenants, after, 5_000).await?;
        let Some(last) = page.last() else {
            break;
        };
        after = last.position;
        messages.extend(page.iter().map(|event| Message::from_event(prefix, event)));
    }
    Ok(messages)
}

/// A fresh stream for `prefix` (file storage, as a service would use), deleted by the caller.
async fn fresh_stream(nats: &EsNats, prefix: &str) -> Result<String, BenchError> {
    let settings = StreamSettings::for_prefix(prefix).storage(Storage::File);
    let _ = nats.jetstream().delete_stream(&settings.name).await;
    es_nats::ensure_stream(nats.jetstream(), &settings).await?;
    Ok(settings.name)
}

/// The plain program: publishes `messages` with headers, at most `window` acknowledgements in
/// flight, awaited in order. Messages per second.
async fn plain_publish(
    jetstream: &jetstream::Context,
    messages: &[Message],
    window: usize,
) -> Result<f64, BenchError> {
    let started = Instant::now();
    let mut in_flight = VecDeque::with_capacity(window);
    for message in messages {
        if in_flight.len() >= window
            && let Some(ack) = in_flight.pop_front()
        {
            let ack: jetstream::context::PublishAckFuture = ack;
            ack.await?;
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &message.headers {
            headers.append(name.as_str(), value.as_str());
        }
        let ack = jetstream
            .publish_with_headers(
                message.subject.clone(),
                headers,
                Bytes::from(message.payload.clone()),
            )
            .await?;
        in_flight.push_back(ack);
    }
    while let Some(ack) = in_flight.pop_front() {
        ack.await?;
    }
    Ok(messages.len() as f64 / started.elapsed().as_secs_f64())
}

/// The relay: publishes the whole log of `store` under `prefix`. Events per second.
async fn relay_publish<S: ProjectionStore>(
    nats: &EsNats,
    store: S,
    name: &str,
    prefix: &str,
    window: usize,
    batch: usize,
    events: u64,
) -> Result<f64, BenchError> {
    let mut relay = Relay::new(store, nats.publisher(), name)
        .subject_prefix(prefix)
        .max_in_flight(window)
        .batch_size(batch);
    let started = Instant::now();
    let summary = relay.publish_pending().await?;
    let elapsed = started.elapsed();
    if summary.published != events {
        return Err(format!(
            "the relay published {} of {events} events",
            summary.published
        )
        .into());
    }
    Ok(events as f64 / elapsed.as_secs_f64())
}

async fn stream_count(nats: &EsNats, name: &str) -> Result<u64, BenchError> {
    let mut stream = nats.jetstream().get_stream(name).await?;
    Ok(stream.info().await?.state.messages)
}

/// Relay throughput on SQLite and (unless `sqlite_only`) PostgreSQL.
pub(crate) async fn run_relay_throughput(
    args: &NatsBenchArgs,
) -> Result<Vec<RelayThroughput>, BenchError> {
    let events = args.events.unwrap_or(100_000);
    let nats = EsNats::connect(&args.nats_url, &format!("bench{}", std::process::id()))
        .await
        .map_err(|error| format!("{error} (start `nats-server -js` or set NATS_URL)"))?;
    let mut outcomes = Vec::new();

    let dir = tempfile::Builder::new()
        .prefix("es-bench-nats-")
        .tempdir()?;
    let sqlite = SqliteStore::open(dir.path().join("relay.db")).await?;
    eprintln!("es-bench nats: filling SQLite with {events} events ...");
    fill(&sqlite, events).await?;
    outcomes.push(compare(&nats, sqlite, "SQLite", events, args).await?);

    if !args.sqlite_only {
        let schema = format!("es_bench_nats_{}", std::process::id());
        let options = PgOptions::new().schema(&schema)?;
        let pg = PgStore::connect_with(&args.db_url, options)
            .await
            .map_err(|error| format!("cannot connect to {}: {error}", args.db_url))?;
        eprintln!("es-bench nats: filling PostgreSQL with {events} events ...");
        let result = async {
            fill(&pg, events).await?;
            compare(&nats, pg.clone(), "PostgreSQL", events, args).await
        }
        .await;
        sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .execute(pg.pool())
            .await?;
        outcomes.push(result?);
    }
    let _ = nats
        .jetstream()
        .delete_stream(&nats.stream_settings().name)
        .await;
    Ok(outcomes)
}

async fn compare<S: ProjectionStore + EventStore + Clone>(
    nats: &EsNats,
    store: S,
    label: &'static str,
    events: u64,
    args: &NatsBenchArgs,
) -> Result<RelayThroughput, BenchError> {
    let (mut ours, mut plain, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..args.rounds {
        // Prefixes of the same length, so that both sides publish subjects of the same size.
        let ours_prefix = format!("bro{round}x{}", std::process::id());
        let plain_prefix = format!("brp{round}x{}", std::process::id());
        let messages = messages_of(&store, &plain_prefix).await?;
        let ours_stream = fresh_stream(nats, &ours_prefix).await?;
        let plain_stream = fresh_stream(nats, &plain_prefix).await?;
        let relay_name = format!("bench-{label}-{round}");
        let (relay_rate, plain_rate) = if round % 2 == 0 {
            let relay_rate = relay_publish(
                nats,
                store.clone(),
                &relay_name,
                &ours_prefix,
                args.window,
                args.batch,
                events,
            )
            .await?;
            let plain_rate = plain_publish(nats.jetstream(), &messages, args.window).await?;
            (relay_rate, plain_rate)
        } else {
            let plain_rate = plain_publish(nats.jetstream(), &messages, args.window).await?;
            let relay_rate = relay_publish(
                nats,
                store.clone(),
                &relay_name,
                &ours_prefix,
                args.window,
                args.batch,
                events,
            )
            .await?;
            (relay_rate, plain_rate)
        };
        for stream in [&ours_stream, &plain_stream] {
            let stored = stream_count(nats, stream).await?;
            if stored != events {
                return Err(format!("stream {stream} holds {stored} of {events} messages").into());
            }
            let _ = nats.jetstream().delete_stream(stream).await;
        }
        eprintln!(
            "es-bench nats: {label} round {}: relay {relay_rate:.0}/s, plain {plain_rate:.0}/s",
            round + 1
        );
        ours.push(relay_rate);
        plain.push(plain_rate);
        ratios.push(relay_rate / plain_rate);
    }
    Ok(RelayThroughput {
        store: label,
        events,
        relay_per_sec: median(&mut ours),
        plain_per_sec: median(&mut plain),
        ratio: median(&mut ratios),
        window: args.window,
        batch: args.batch,
        rounds: args.rounds,
    })
}

/// What the latency run gave.
#[derive(Debug, Clone)]
pub(crate) struct Latency {
    /// Events measured.
    pub(crate) events: usize,
    /// Appends per second.
    pub(crate) rate: u64,
    /// Percentiles in milliseconds.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// The slowest.
    pub(crate) max_ms: f64,
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "latency append commit -> consumer handler (PostgreSQL, relay tailing live, {} events \
             at {}/s): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target p99 < 50 ms: {})",
            self.events,
            self.rate,
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.max_ms,
            if self.p99_ms < 50.0 { "met" } else { "MISSED" }
        )
    }
}

/// The consumer of the latency run: notes when each event reached its handler.
#[derive(Debug, Clone)]
struct Stopwatch {
    handled: Arc<Mutex<HashMap<Uuid, Instant>>>,
}

impl<S: ProjectionStore> Projection<S> for Stopwatch {
    type Event = BenchEvent;

    fn name(&self) -> &str {
        "bench-latency"
    }

    async fn handle(
        &mut self,
        _transaction: &mut S::Transaction,
        _event: &BenchEvent,
        envelope: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        let now = Instant::now();
        self.handled
            .lock()
            .map_err(|_| "stopwatch lock poisoned")?
            .insert(envelope.event_id, now);
        Ok(())
    }

    async fn reset(&mut self, _transaction: &mut S::Transaction) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// Append commit -> consumer handler on PostgreSQL while the relay tails the log live.
pub(crate) async fn run_latency(args: &NatsBenchArgs) -> Result<Latency, BenchError> {
    let events = args.events.unwrap_or(2_000) as usize;
    let prefix = format!("blat{}", std::process::id());
    let nats = EsNats::connect_with(
        &args.nats_url,
        &prefix,
        StreamSettings::for_prefix(&prefix).storage(Storage::File),
    )
    .await
    .map_err(|error| format!("{error} (start `nats-server -js` or set NATS_URL)"))?;
    let schema = format!("es_bench_nats_lat_{}", std::process::id());
    let pg = PgStore::connect_with(&args.db_url, PgOptions::new().schema(&schema)?)
        .await
        .map_err(|error| format!("cannot connect to {}: {error}", args.db_url))?;
    let result = latency_on(&nats, &pg, events, args.rate).await;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(pg.pool())
        .await?;
    let _ = nats
        .jetstream()
        .delete_stream(&nats.stream_settings().name)
        .await;
    let _ = nats
        .jetstream()
        .delete_stream(&es_nats::dead_letter_stream_name(
            &nats.dead_letter_prefix(),
        ))
        .await;
    result
}

async fn latency_on(
    nats: &EsNats,
    pg: &PgStore,
    events: usize,
    rate: u64,
) -> Result<Latency, BenchError> {
    let (stop_relay, relay_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut relay = Relay::new(pg.clone(), nats.publisher(), "bench-latency")
        .subject_prefix(nats.prefix())
        .batch_size(100);
    let relay_task = tokio::spawn(async move {
        relay
            .run(async move {
                let _ = relay_stopped.await;
            })
            .await
    });
    let stopwatch = Stopwatch {
        handled: Arc::default(),
    };
    let handled = stopwatch.handled.clone();
    let mut consumer = Consumer::new(
        pg.clone(),
        stopwatch,
        nats.subscribe("bench-latency").await?,
        nats.dead_letters().await?,
    )
    .poll_timeout(Duration::from_millis(100));
    let (stop_consumer, consumer_stopped) = tokio::sync::oneshot::channel::<()>();
    let consumer_task = tokio::spawn(async move {
        consumer
            .run(async move {
                let _ = consumer_stopped.await;
            })
            .await
    });

    // Warm up: the first events pay for connections and the consumer's first pull.
    let metadata = CommandContext::new().metadata();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut committed: HashMap<Uuid, Instant> = HashMap::with_capacity(events);
    let warm_up = 50.min(events);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut measured = Vec::with_capacity(events);
    for i in 0..(warm_up + events) {
        ticker.tick().await;
        let event = NewEvent::encode(
            &BenchEvent::Deposited {
                amount: i as i64,
                reference: format!("lat-{i}"),
            },
            &metadata,
        )?;
        let id = event.event_id;
        pg.append(
            StreamKey::new("account", &format!("lat-{}", i % 20)),
            ExpectedVersion::Any,
            vec![event],
        )
        .await?;
        let at = Instant::now();
        if i >= warm_up {
            committed.insert(id, at);
            measured.push(id);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = handled.lock().map_err(|_| "stopwatch lock poisoned")?.len();
        if done >= warm_up + events {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the consumer handled {done} of {} events in time",
                warm_up + events
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_relay.send(());
    let _ = stop_consumer.send(());
    relay_task.await??;
    consumer_task.await??;

    let handled = handled.lock().map_err(|_| "stopwatch lock poisoned")?;
    let mut millis: Vec<f64> = measured
        .iter()
        .filter_map(|id| {
            let handled = handled.get(id)?;
            let committed = committed.get(id)?;
            Some(handled.saturating_duration_since(*committed).as_secs_f64() * 1_000.0)
        })
        .collect();
    if millis.len() != events {
        return Err(format!("{} of {events} events were timed", millis.len()).into());
    }
    millis.sort_by(f64::total_cmp);
    let at = |q: f64| millis[((millis.len() as f64 - 1.0) * q).round() as usize];
    Ok(Latency {
        events,
        rate,
        p50_ms: at(0.50),
        p90_ms: at(0.90),
        p99_ms: at(0.99),
        max_ms: at(1.0),
    })
}
