//! `build`, `run` and `test`.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cmd;
use crate::setup::{self, SetupArgs, Verbosity};

/// The end-to-end test crate: run on its own, one test at a time, against the built binary.
const E2E_PACKAGE: &str = "sensor-tests";
/// The kernel crate: built by the sensor's build.rs with nightly, never tested on the host.
const KERNEL_PACKAGE: &str = "sensor-ebpf";

/// Setup if anything is missing (cheap when nothing is), then build the sensor. Returns the
/// binary's path.
pub fn build(release: bool) -> Result<PathBuf> {
    setup::setup(&SetupArgs::default(), Verbosity::Summary)?;
    build_sensor(release)
}

fn build_sensor(release: bool) -> Result<PathBuf> {
    let mut build = cmd::cargo();
    build.args(["build", "--package", "sensor"]);
    if release {
        build.arg("--release");
    }
    cmd::run(&mut build).context("building the sensor")?;
    let profile = if release { "release" } else { "debug" };
    let bin = cmd::target_dir().join(profile).join("sensor");
    if !bin.is_file() {
        bail!("the build succeeded but {} is not there", bin.display());
    }
    Ok(bin)
}

/// Build, then replace this process with `sensor run ARGS`, so that signals sent to
/// `cargo xtask run` (SIGTERM from a supervisor, ^C) reach the sensor itself.
pub fn run(args: &[OsString]) -> Result<()> {
    let bin = build(true)?;
    let err = Command::new(&bin).arg("run").args(args).exec();
    Err(err).with_context(|| format!("could not exec {}", bin.display()))
}

/// Build, then the unit tests of every host crate and the end-to-end tests. Every test binary
/// runs even if an earlier one fails (`--no-fail-fast`, and both runs happen), so one CI run
/// shows every failure.
pub fn test() -> Result<()> {
    let bin = build(true)?;

    let mut failed = Vec::new();

    let mut unit = cmd::cargo();
    unit.args([
        "test",
        "--no-fail-fast",
        "--workspace",
        "--exclude",
        KERNEL_PACKAGE,
        "--exclude",
        E2E_PACKAGE,
    ]);
    eprintln!("xtask: unit tests: {}", cmd::display(&unit));
    if let Err(err) = cmd::run(&mut unit) {
        eprintln!("xtask: unit tests failed: {err:#}");
        failed.push("unit tests");
    }

    // The static binary for the image test (tests/tests/deploy.rs).
    let musl_bin = crate::image::build_musl()
        .map_err(|err| {
            eprintln!("xtask: static (musl) build failed: {err:#}");
            failed.push("static (musl) build");
        })
        .ok();

    let mut e2e = cmd::cargo();
    e2e.args([
        "test",
        "--no-fail-fast",
        "--package",
        E2E_PACKAGE,
        "--",
        "--test-threads=1",
    ])
    .env("SENSOR_BIN", &bin);
    if let Some(musl_bin) = &musl_bin {
        e2e.env("SENSOR_MUSL_BIN", musl_bin);
    }
    eprintln!(
        "xtask: end-to-end tests: SENSOR_BIN={} {}",
        bin.display(),
        cmd::display(&e2e)
    );
    if let Err(err) = cmd::run(&mut e2e) {
        eprintln!("xtask: end-to-end tests failed: {err:#}");
        failed.push("end-to-end tests");
    }

    if !failed.is_empty() {
        bail!("{} failed", failed.join(" and "));
    }
    Ok(())
}
