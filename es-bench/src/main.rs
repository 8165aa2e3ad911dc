//! es-bench: what es costs on top of the database, measured side by side.
//!
//! Each workload runs through the framework's public API and through a plain sqlx baseline
//! doing the least SQL a correct implementation needs, on the same fresh database, alternating
//! round after round; the table reports each side's median throughput and the median of the
//! rounds' ratios (each round runs both sides back to back, under the same load).
//!
//! ```sh
//! cargo run --release -p es-bench                      # SQLite, a temporary file per workload
//! cargo run --release -p es-bench -- --db-url postgres://postgres@127.0.0.1:5432/postgres
//! cargo run --release -p es-bench -- --only W3,W6 --scale 0.1 --rounds 5 --json
//! cargo run --release -p es-bench -- memory --events 1000000
//! ```

mod baseline;
mod db;
mod domain;
mod memory;
mod nats;
mod workloads;

use std::path::PathBuf;
use std::process::ExitCode;

use crate::db::Target;
use crate::memory::MemoryArgs;
use crate::workloads::{Outcome, Settings, Sides};

/// Any error, with its message.
pub(crate) type BenchError = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "\
usage: es-bench [--db-url URL] [--only W1,W3,...] [--scale F] [--rounds N] [--json]
       es-bench memory [--events N] [--batch N] [--path FILE] [--json]

  --db-url URL   run on PostgreSQL (a fresh schema per workload, dropped after);
                 default: SQLite, a fresh temporary file per workload
  --only LIST    run only these workloads (W1..W7), comma-separated
  --scale F      multiply the default sizes by F (e.g. 0.1 for a quick run); default 1
  --rounds N     rounds per workload, each running ours and the baseline once,
                 alternating which goes first; the table shows medians; default 5
  --json         one JSON object per workload line instead of the table
  --side S       run only `ours` or only the `baseline` side (for profiling one); default both

  memory         write a stream of N events (default 1,000,000) to a SQLite file in batches,
                 then load it through Repository::load in a fresh process and report its peak RSS";

#[derive(Debug)]
struct RunArgs {
    db_url: Option<String>,
    only: Vec<String>,
    settings: Settings,
    json: bool,
}

#[derive(Debug)]
enum Args {
    Run(RunArgs),
    Memory(MemoryArgs),
    Help,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut memory = None;
    let mut run = RunArgs {
        db_url: None,
        only: Vec::new(),
        settings: Settings {
            scale: 1.0,
            rounds: 5,
            sides: Sides::Both,
        },
        json: false,
    };
    let mut first = true;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "memory" if first => memory = Some(MemoryArgs::default()),
            "-h" | "--help" => return Ok(Args::Help),
            "--json" => {
                run.json = true;
                if let Some(memory) = &mut memory {
                    memory.json = true;
                }
            }
            "--db-url" if memory.is_none() => run.db_url = Some(value("--db-url")?),
            "--only" if memory.is_none() => {
                for name in value("--only")?.split(',') {
                    let name = name.trim().to_uppercase();
                    if !workloads::ALL.contains(&name.as_str()) {
                        return Err(format!("unknown workload `{name}` (W1..W7)"));
                    }
                    run.only.push(name);
                }
            }
            "--scale" if memory.is_none() => {
                let scale: f64 = value("--scale")?
                    .parse()
                    .map_err(|_| "--scale needs a number".to_owned())?;
                if !(scale > 0.0 && scale.is_finite()) {
                    return Err("--scale must be positive".to_owned());
                }
                run.settings.scale = scale;
            }
            "--side" if memory.is_none() => {
                run.settings.sides = match value("--side")?.as_str() {
                    "ours" => Sides::Ours,
                    "baseline" => Sides::Baseline,
                    "both" => Sides::Both,
                    _ => return Err("--side is `ours`, `baseline` or `both`".to_owned()),
                };
            }
            "--rounds" if memory.is_none() => {
                run.settings.rounds = value("--rounds")?
                    .parse::<usize>()
                    .ok()
                    .filter(|&rounds| rounds > 0)
                    .ok_or("--rounds needs a positive whole number")?;
            }
            "--events" | "--batch" if memory.is_some() => {
                let number = value(&arg)?
                    .replace(['_', ','], "")
                    .parse::<u64>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("{arg} needs a positive whole number"))?;
                if let Some(memory) = &mut memory {
                    if arg == "--events" {
                        memory.events = number;
                    } else {
                        memory.batch = number;
                    }
                }
            }
            "--path" if memory.is_some() => {
                let path = PathBuf::from(value("--path")?);
                if let Some(memory) = &mut memory {
                    memory.path = Some(path);
                }
            }
            "--load-only" if memory.is_some() => {
                if let Some(memory) = &mut memory {
                    memory.load_only = true;
                }
            }
            other => return Err(format!("unexpected argument `{other}`")),
        }
        first = false;
    }
    Ok(match memory {
        Some(memory) => Args::Memory(memory),
        None => Args::Run(run),
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("nats") {
        return nats::main(std::env::args().skip(2)).await;
    }
    let args = match parse(std::env::args().skip(1)) {
        Ok(Args::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(args) => args,
        Err(error) => {
            eprintln!("es-bench: {error}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match args {
        Args::Run(run) => run_workloads(run).await,
        Args::Memory(memory) => memory::run(memory).await,
        Args::Help => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("es-bench: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run_workloads(args: RunArgs) -> Result<(), BenchError> {
    let target = match &args.db_url {
        Some(url) => Target::postgres(url).await?,
        None => Target::sqlite()?,
    };
    let selected: Vec<&str> = workloads::ALL
        .iter()
        .copied()
        .filter(|name| args.only.is_empty() || args.only.iter().any(|only| only == name))
        .collect();
    if !args.json {
        println!(
            "es-bench on {}\n{} round(s), ours and baseline back to back in each (alternating which goes \
             first); medians of throughput and of the rounds' ratios; scale {}\n",
            target.describe(),
            args.settings.rounds,
            args.settings.scale
        );
        print_header();
    }
    let mut outcomes = Vec::new();
    for name in selected {
        if name == "W7" && !target.is_postgres() {
            eprintln!(
                "es-bench: W7 runs into the SQLite order list table (use --db-url for PostgreSQL)"
            );
        }
        eprintln!("es-bench: {name} ...");
        for outcome in workloads::run(&target, name, args.settings).await? {
            if args.json {
                println!("{}", serde_json::to_string(&outcome)?);
            } else {
                print_row(&outcome);
            }
            outcomes.push(outcome);
        }
    }
    if !args.json {
        println!();
        for outcome in &outcomes {
            if !outcome.notes.is_empty() {
                println!("{}: {}", label(outcome), outcome.notes);
            }
        }
    }
    Ok(())
}

fn label(outcome: &Outcome) -> String {
    match outcome.variant {
        Some(variant) => format!("{} ({variant})", outcome.workload),
        None => outcome.workload.to_owned(),
    }
}

fn print_header() {
    println!(
        "{:<33} {:>8} {:>12} {:>12} {:>7}  target",
        "workload", "events", "ours/s", "baseline/s", "ratio"
    );
}

fn print_row(outcome: &Outcome) {
    let target = match (outcome.target, outcome.met) {
        (Some(target), Some(met)) => {
            format!(">= {target:.2} {}", if met { "met" } else { "MISSED" })
        }
        _ => "-".to_owned(),
    };
    println!(
        "{:<33} {:>8} {:>12.0} {:>12.0} {:>7.3}  {}",
        label(outcome),
        outcome.events,
        outcome.ours_per_sec,
        outcome.baseline_per_sec,
        outcome.ratio,
        target
    );
}
