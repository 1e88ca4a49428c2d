//! `cargo xtask`: the project's tasks, so that a fresh machine, a developer and CI all do the
//! same thing.
//!
//! - `setup`: install every prerequisite (idempotent; a second run is a no-op).
//! - `build`: build the sensor (release), after a cheap setup check.
//! - `run [-- ARGS]`: build, then exec `target/release/sensor run ARGS`.
//! - `test`: build, then the unit tests and the end-to-end tests.
//! - `image [--tag T]`: build the static (musl) binary and the container image of
//!   deploy/Dockerfile.
//! - `bench [--peers]`: exec, connect, read/write, open/close, unix socketpair and redis storms
//!   with and without the sensor, inside and outside a tracked runtime tree (with `--peers`,
//!   some under auditd too); writes `target/bench/results.md`.

mod bench;
mod cmd;
mod image;
mod setup;
mod storm;
mod tasks;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Tasks of the sensor project",
    version
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install every prerequisite of building, testing and running the sensor (idempotent).
    Setup(setup::SetupArgs),
    /// Build the sensor (`target/release/sensor`, the kernel programs embedded).
    Build {
        /// Build with the release profile (the default; kept for clarity in scripts).
        #[arg(long, conflicts_with = "debug")]
        release: bool,
        /// Build with the dev profile instead (`target/debug/sensor`).
        #[arg(long)]
        debug: bool,
    },
    /// Build, then exec `target/release/sensor run ARGS` (NDJSON on stdout).
    Run {
        /// Arguments of `sensor run`, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Build, then run the unit tests and the end-to-end tests.
    Test,
    /// Build the static (musl) sensor and its container image (deploy/Dockerfile), offline.
    Image(image::ImageArgs),
    /// Measure the sensor's overhead on exec, connect, I/O and redis storms; write
    /// target/bench/results.md.
    Bench(bench::BenchArgs),
    /// The bench's load generator (run by `bench`, through a symlink named as a runtime).
    #[command(hide = true)]
    Storm(storm::StormArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup(args) => setup::setup(&args, setup::Verbosity::EveryStep),
        Task::Build { release: _, debug } => tasks::build(!debug).map(|_| ()),
        Task::Run { args } => tasks::run(&args),
        Task::Test => tasks::test(),
        Task::Image(args) => image::image(&args),
        Task::Bench(args) => bench::bench(&args),
        Task::Storm(args) => storm::storm(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
