//! sensor: catches container images built on the host and follows what happens to them.
//! This file parses arguments and wires the parts; the work is in the modules.
mod btf;
mod check;
mod decode;
mod dns;
mod engine;
mod enrich;
mod http;
mod loader;
mod pipeline;
mod proc;
mod record;
mod run;

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sensor", version, about = "eBPF sensor for container image builds on this host (MITRE ATT&CK T1612)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load the kernel programs and write NDJSON records to stdout.
    Run(RunArgs),
    /// Say whether this kernel and these privileges can run the sensor, one line per item.
    Check,
    /// Run the engines over a stream recorded with `sensor run --raw` and print derived records.
    Replay(ReplayArgs),
}

#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// Write every kernel record, including raw-only kinds (process_fork), for debugging/replay.
    #[arg(long)]
    pub raw: bool,
    /// Seconds between sensor_stats records (0: only at exit).
    #[arg(long, default_value_t = 60)]
    pub stats_interval: u64,
    /// Host name written in every record (default: the kernel's host name).
    #[arg(long)]
    pub host: Option<String>,
    /// Also track processes with this name (repeatable; 15 bytes at most). Adds to the defaults.
    #[arg(long = "runtime-name", value_name = "NAME")]
    pub runtime_names: Vec<String>,
    /// Also report API clients connecting to this unix socket (repeatable). Adds to the defaults.
    #[arg(long = "api-socket", value_name = "PATH")]
    pub api_sockets: Vec<String>,
    /// Only write these record kinds (comma separated; default all).
    #[arg(long, value_delimiter = ',')]
    pub kinds: Vec<String>,
    /// Ring buffer size in MiB (a power of two).
    #[arg(long, default_value_t = 8, value_parser = parse_ringbuf_mib)]
    pub ringbuf_mib: u32,
    /// Do not capture file writes (less volume on busy container hosts).
    #[arg(long)]
    pub no_file_events: bool,
}

#[derive(Args, Clone, Debug)]
struct ReplayArgs {
    /// NDJSON file recorded with `sensor run --raw` (`-` for stdin).
    file: PathBuf,
}

fn parse_ringbuf_mib(s: &str) -> Result<u32, String> {
    let v: u32 = s.parse().map_err(|_| format!("{s:?} is not a number of MiB"))?;
    if !v.is_power_of_two() || !(1..=1024).contains(&v) {
        return Err(format!("{v} MiB: the ring buffer size must be a power of two from 1 to 1024"));
    }
    Ok(v)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SENSOR_LOG").unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run(args) => run::run(args),
        Cmd::Check => return check::check(),
        Cmd::Replay(args) => run::replay(&args.file),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line that says what went wrong and, where we know, what to do.
            eprintln!("sensor: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
