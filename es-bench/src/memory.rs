//! `es-bench memory`: the peak resident memory of rehydrating a long stream through
//! `Repository::load`. The stream is written first (batched appends); the load then runs in a
//! fresh process (`--load-only`), so that the write phase does not inflate the peak.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use es_core::{EventStore, Repository, StreamKey};
use es_sqlite::SqliteStore;
use serde::{Deserialize, Serialize};

use crate::BenchError;
use crate::domain::Account;

/// The stream the memory check writes and loads.
const STREAM: &str = "long";

/// Options of the `memory` subcommand.
#[derive(Debug, Clone)]
pub(crate) struct MemoryArgs {
    pub(crate) events: u64,
    pub(crate) batch: u64,
    pub(crate) path: Option<PathBuf>,
    pub(crate) load_only: bool,
    pub(crate) json: bool,
}

impl Default for MemoryArgs {
    fn default() -> Self {
        Self {
            events: 1_000_000,
            batch: 1_000,
            path: None,
            load_only: false,
            json: false,
        }
    }
}

/// What the loading process reports.
#[derive(Debug, Serialize, Deserialize)]
struct LoadReport {
    events: u64,
    rss_before_kib: u64,
    peak_rss_kib: u64,
    load_ms: f64,
}

/// `VmHWM` (peak) and `VmRSS` (current) of this process, in KiB.
fn memory_kib() -> Result<(u64, u64), BenchError> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .ok_or_else(|| format!("no {name} in /proc/self/status"))
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}

pub(crate) async fn run(args: MemoryArgs) -> Result<(), BenchError> {
    if args.load_only {
        let path = args.path.ok_or("--load-only needs --path")?;
        return load_only(&path, args.events).await;
    }
    let dir = tempfile::Builder::new()
        .prefix("es-bench-memory-")
        .tempdir()?;
    let path = args
        .path
        .clone()
        .unwrap_or_else(|| dir.path().join("memory.db"));
    let store = SqliteStore::open(&path).await?;
    let existing = store
        .stream_version(StreamKey::new("account", STREAM))
        .await?
        .unwrap_or(0);
    if existing != args.events {
        if existing != 0 {
            return Err(format!(
                "{} holds a `{STREAM}` stream of {existing} events, not {}; remove it first",
                path.display(),
                args.events
            )
            .into());
        }
        eprintln!(
            "memory: writing {} events to {} in batches of {} ...",
            args.events,
            path.display(),
            args.batch
        );
        let started = Instant::now();
        crate::workloads::seed_account(&store, STREAM, args.events, args.batch).await?;
        eprintln!(
            "memory: written in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    store.close().await;

    eprintln!("memory: loading it through Repository::load in a fresh process ...");
    let output = Command::new(std::env::current_exe()?)
        .arg("memory")
        .arg("--load-only")
        .arg("--path")
        .arg(&path)
        .arg("--events")
        .arg(args.events.to_string())
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "the loading process failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let report: LoadReport = serde_json::from_slice(&output.stdout)?;
    let peak_mib = report.peak_rss_kib as f64 / 1024.0;
    let met = peak_mib < 64.0;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "workload": "memory",
                "events": report.events,
                "peak_rss_mib": peak_mib,
                "rss_before_load_mib": report.rss_before_kib as f64 / 1024.0,
                "load_ms": report.load_ms,
                "target_mib": 64,
                "met": met,
            })
        );
    } else {
        println!(
            "memory: Repository::load of a {}-event SQLite stream in a fresh process: \
             peak RSS (VmHWM) {peak_mib:.1} MiB (target < 64 MiB: {}), {:.1} MiB before the load, \
             loaded in {:.2} s ({:.0} events/s)",
            report.events,
            if met { "met" } else { "missed" },
            report.rss_before_kib as f64 / 1024.0,
            report.load_ms / 1e3,
            report.events as f64 / (report.load_ms / 1e3),
        );
    }
    Ok(())
}

/// The child process: open, load, report on standard output as JSON.
async fn load_only(path: &Path, events: u64) -> Result<(), BenchError> {
    let store = SqliteStore::open(path).await?;
    let accounts = Repository::<Account, _>::new(store.clone());
    let (_, rss_before_kib) = memory_kib()?;
    let started = Instant::now();
    let loaded = accounts.load(STREAM).await?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let (peak_rss_kib, _) = memory_kib()?;
    if loaded.version != events {
        return Err(format!("loaded version {}, expected {events}", loaded.version).into());
    }
    store.close().await;
    println!(
        "{}",
        serde_json::to_string(&LoadReport {
            events: loaded.version,
            rss_before_kib,
            peak_rss_kib,
            load_ms,
        })?
    );
    Ok(())
}
