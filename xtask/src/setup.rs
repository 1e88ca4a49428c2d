//! `cargo xtask setup`: every prerequisite of building, testing and running the sensor on a fresh
//! Debian 12 machine (root; rustup with the pinned stable and a nightly already there).
//!
//! Each step checks first and installs only what is missing, so a second run is a no-op that
//! takes a second or two. See shared/HOST-NOTES.md for why each step is done the way it is.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::cmd;

/// Debian packages: the Docker engine and client for the end-to-end tests, busybox-static for
/// their offline base image, iproute2/iptables for test hosts in network namespaces, curl for
/// the Engine API, bpftool for inspecting programs and maps.
const APT_PACKAGES: &[&str] = &[
    "docker.io",
    "busybox-static",
    "iproute2",
    "curl",
    // Signing keys for the provenance tests (tests/tests/provenance.rs).
    "openssl",
    "iptables",
    "bpftool",
    // `systemd-analyze verify` of deploy/systemd/sensor.service (tests/tests/deploy.rs).
    "systemd",
    // A local registry on loopback for the push-then-deploy chain (tests/tests/detect_registry_chain.rs).
    "docker-registry",
    // Builder tools whose builds the sensor reconstructs (tests/tests/builds_buildah_podman.rs). Debian has
    // no buildkitd package, so standalone BuildKit (buildctl) is not installed.
    "buildah",
    "podman",
    // The bench's redis workload: `redis-server` started by the storm driver, `redis-benchmark`
    // (from redis-tools) against it (xtask/src/storm.rs).
    "redis-server",
    "redis-tools",
    // A real collector receiving the TCP sink, restarted mid-stream (tests/tests/collector.rs).
    "rsyslog",
    // protoc: the containerd-client crate's build script compiles containerd's API protos (the
    // sensor reads containerd's image store over gRPC, sensor/src/lineage/containerd.rs).
    "protobuf-compiler",
];

/// The offline Kubernetes schema validator (bundled schemas) that tests/tests/deploy.rs runs
/// over deploy/kubernetes, from PyPI.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

/// Python libraries of the end-to-end tests, from PyPI: `chdb`, ClickHouse's engine in-process,
/// loads the streams through deploy/clickhouse (tests/tests/fleet.rs); `py-ocsf-models`
/// validates the `format=ocsf` sink's events against the OCSF models; the in-toto attestation
/// library (Statement and SLSA provenance protobufs) and `cryptography` (ed25519) check every
/// statement and signature the sensor writes (tests/tests/provenance.rs).
const PYTHON_TEST_LIBS: &[&str] = &[
    "chdb==4.4.0",
    "py-ocsf-models==0.10.0",
    "in-toto-attestation==0.9.3",
    "cryptography==48.0.0",
];

/// The bpf-linker release known to link with the nightly's LLVM 22 (HOST-NOTES).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Target of the sensor's container image (a static binary).
const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

const TRACEFS: &str = "/sys/kernel/tracing";

#[derive(Args, Clone)]
pub struct SetupArgs {
    /// Where bpf-linker finds the nightly's libLLVM (must stay: it is the linker's RUNPATH).
    #[arg(long, env = "SENSOR_LLVM_PREFIX", default_value = "/opt/sensor-llvm")]
    pub llvm_prefix: PathBuf,
    /// Install bpf-linker under this root instead of $CARGO_HOME (to try the install step
    /// without touching the linker in use).
    #[arg(long, hide = true)]
    pub bpf_linker_root: Option<PathBuf>,
    /// Also install auditd for `cargo xtask bench --peers` (not as a running service).
    #[arg(long)]
    pub bench_peers: bool,
}

impl Default for SetupArgs {
    fn default() -> Self {
        Self {
            llvm_prefix: std::env::var_os("SENSOR_LLVM_PREFIX")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/opt/sensor-llvm")),
            bpf_linker_root: None,
            bench_peers: false,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    /// `cargo xtask setup`: one line per step.
    EveryStep,
    /// Before build/run/test: one line in all when nothing was missing.
    Summary,
}

enum Outcome {
    AlreadyPresent,
    Done,
}

type Step<'a> = Box<dyn Fn() -> Result<Outcome> + 'a>;

/// Run every step; status lines go to stderr (stdout of `cargo xtask run` is the sensor's NDJSON).
pub fn setup(args: &SetupArgs, verbosity: Verbosity) -> Result<()> {
    let toolchain = workspace_toolchain();
    let mut steps: Vec<(String, Step)> = vec![
        (
            format!("apt packages ({})", APT_PACKAGES.join(" ")),
            Box::new(apt_packages),
        ),
        (
            "rust-src for the nightly toolchain".into(),
            Box::new(nightly_rust_src),
        ),
        (
            format!("{MUSL_TARGET} target for toolchain {toolchain}"),
            Box::new(move || musl_target(&toolchain)),
        ),
        (
            format!(
                "bpf-linker {BPF_LINKER_VERSION} against the nightly's libLLVM ({})",
                args.llvm_prefix.display()
            ),
            Box::new(|| bpf_linker(&args.llvm_prefix, args.bpf_linker_root.as_deref())),
        ),
        (format!("tracefs at {TRACEFS}"), Box::new(tracefs)),
        (
            format!("{KUBERNETES_VALIDATE} (python3 -m pip)"),
            Box::new(kubernetes_validate),
        ),
        (
            format!("{} (python3 -m pip)", PYTHON_TEST_LIBS.join(" ")),
            Box::new(python_test_libs),
        ),
    ];
    if args.bench_peers {
        steps.push((
            "auditd for `cargo xtask bench --peers`, no service".into(),
            Box::new(bench_peers_auditd),
        ));
    }
    let mut all_present = true;
    for (name, step) in &steps {
        match step().with_context(|| format!("setup step: {name}"))? {
            Outcome::AlreadyPresent => {
                if verbosity == Verbosity::EveryStep {
                    eprintln!("setup: {name}: already present");
                }
            }
            Outcome::Done => {
                all_present = false;
                eprintln!("setup: {name}: done");
            }
        }
    }
    if verbosity == Verbosity::Summary && all_present {
        eprintln!("setup: all prerequisites present");
    }
    Ok(())
}

fn kubernetes_validate() -> Result<Outcome> {
    let version = KUBERNETES_VALIDATE.rsplit("==").next().unwrap_or_default();
    let installed =
        cmd::quiet_output(Command::new("python3").args(["-m", "kubernetes_validate", "--version"]));
    if installed.is_some_and(|v| v.trim() == version) {
        return Ok(Outcome::AlreadyPresent);
    }
    cmd::run(Command::new("python3").args([
        "-m",
        "pip",
        "install",
        "--quiet",
        KUBERNETES_VALIDATE,
    ]))?;
    Ok(Outcome::Done)
}

fn python_test_libs() -> Result<Outcome> {
    // One interpreter start for all: prints the packages not installed at the pinned version.
    let check = format!(
        "import importlib.metadata as m\nfor s in {:?}:\n    n, v = s.split('==')\n    try:\n        ok = m.version(n) == v\n    except m.PackageNotFoundError:\n        ok = False\n    if not ok:\n        print(s)\n",
        PYTHON_TEST_LIBS
    );
    let missing = cmd::quiet_output(Command::new("python3").args(["-c", &check]))
        .map(|out| {
            out.split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .unwrap_or_else(|| PYTHON_TEST_LIBS.iter().map(|s| s.to_string()).collect());
    if missing.is_empty() {
        return Ok(Outcome::AlreadyPresent);
    }
    cmd::run(
        Command::new("python3")
            .args(["-m", "pip", "install", "--quiet"])
            .args(&missing),
    )?;
    Ok(Outcome::Done)
}

fn apt_packages() -> Result<Outcome> {
    let missing = missing_apt_packages(APT_PACKAGES)?;
    if missing.is_empty() {
        return Ok(Outcome::AlreadyPresent);
    }
    apt_install(&missing)?;
    Ok(Outcome::Done)
}

fn apt_install(missing: &[&'static str]) -> Result<()> {
    eprintln!("setup: installing {}", missing.join(" "));
    cmd::run(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y"])
            .args(missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            // needrestart (if present) must not restart services mid-setup.
            .env("NEEDRESTART_SUSPEND", "1"),
    )?;
    let still_missing = missing_apt_packages(missing)?;
    if !still_missing.is_empty() {
        bail!(
            "still not installed after apt-get install: {}",
            still_missing.join(" ")
        );
    }
    Ok(())
}

/// Packages of the list that dpkg does not list as installed.
fn missing_apt_packages(packages: &[&'static str]) -> Result<Vec<&'static str>> {
    // dpkg-query exits 1 when a package is unknown to it; what it prints for the others is
    // still right, so read stdout whatever the status.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${db:Status-Abbrev}\n"])
        .args(packages)
        .output()
        .context("could not run dpkg-query: setup supports Debian-based machines only")?;
    let listed = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = listed
        .lines()
        .filter_map(|line| {
            let (name, status) = line.split_once(' ')?;
            status.starts_with("ii").then_some(name)
        })
        .collect();
    Ok(packages
        .iter()
        .copied()
        .filter(|p| !installed.contains(p))
        .collect())
}

fn nightly_rust_src() -> Result<Outcome> {
    if installed_components("nightly")?
        .iter()
        .any(|c| c.starts_with("rust-src"))
    {
        return Ok(Outcome::AlreadyPresent);
    }
    cmd::run(cmd::tool("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    Ok(Outcome::Done)
}

fn installed_components(toolchain: &str) -> Result<Vec<String>> {
    let out = cmd::output(cmd::tool("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        toolchain,
    ]))?;
    Ok(out.lines().map(str::to_owned).collect())
}

/// The toolchain the workspace builds with: the one rustup chose for this cargo (it sets
/// RUSTUP_TOOLCHAIN for the programs cargo runs), else the pin in rust-toolchain.toml.
fn workspace_toolchain() -> String {
    if let Ok(t) = std::env::var("RUSTUP_TOOLCHAIN")
        && !t.is_empty()
        && !t.contains('/')
    {
        return t;
    }
    let pinned = fs::read_to_string(cmd::workspace_root().join("rust-toolchain.toml"))
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                let value = line
                    .trim()
                    .strip_prefix("channel")?
                    .trim()
                    .strip_prefix('=')?;
                Some(value.trim().trim_matches('"').to_owned())
            })
        });
    pinned.unwrap_or_else(|| "stable".into())
}

fn musl_target(toolchain: &str) -> Result<Outcome> {
    let installed = cmd::output(cmd::tool("rustup").args([
        "target",
        "list",
        "--installed",
        "--toolchain",
        toolchain,
    ]))?;
    if installed.lines().any(|l| l.trim() == MUSL_TARGET) {
        return Ok(Outcome::AlreadyPresent);
    }
    cmd::run(cmd::tool("rustup").args(["target", "add", MUSL_TARGET, "--toolchain", toolchain]))?;
    Ok(Outcome::Done)
}

/// bpf-linker built against the nightly's own libLLVM (the crates.io default, LLVM 23, fails
/// to link here). Skipped when `bpf-linker --version` already works.
fn bpf_linker(prefix: &Path, root: Option<&Path>) -> Result<Outcome> {
    let mut check = match root {
        Some(root) => Command::new(root.join("bin/bpf-linker")),
        None => cmd::tool("bpf-linker"),
    };
    check.arg("--version");
    if cmd::succeeds(&mut check) {
        return Ok(Outcome::AlreadyPresent);
    }

    let sysroot = cmd::output(cmd::rustup_run("nightly", "rustc").args(["--print", "sysroot"]))
        .context("finding the nightly toolchain's sysroot")?;
    let sysroot_lib = Path::new(sysroot.trim()).join("lib");
    let (soname, llvm_major) = nightly_libllvm(&sysroot_lib)?;

    // The linker's RUNPATH is <prefix>/lib; it links against libLLVM.so and NEEDs the full
    // soname at run time, so both names point at the nightly's library.
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    for name in ["libLLVM.so", soname.as_str()] {
        force_symlink(&sysroot_lib.join(&soname), &prefix_lib.join(name))?;
    }

    // An installed linker that only lost its library links needs no rebuild.
    if cmd::succeeds(&mut check) {
        return Ok(Outcome::Done);
    }

    let features = format!("llvm-{llvm_major}");
    let mut install = cmd::rustup_run("nightly", "cargo");
    install
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
        ])
        .args(["--no-default-features", "--features", &features])
        .env("LLVM_PREFIX", prefix)
        // Outside the workspace, so that its config and toolchain pin play no part.
        .current_dir(prefix);
    if let Some(root) = root {
        install.arg("--root").arg(root);
    }
    eprintln!(
        "setup: building bpf-linker (about a minute or two): {}",
        cmd::display(&install)
    );
    cmd::run(&mut install)?;

    if !cmd::succeeds(&mut check) {
        bail!(
            "bpf-linker was installed but `{}` still fails; check that {} holds {soname}",
            cmd::display(&check),
            prefix_lib.display()
        );
    }
    Ok(Outcome::Done)
}

/// The nightly's libLLVM under its full soname (`libLLVM.so.22.1-rust-1.97.0-nightly`) and the
/// LLVM major version in it (`22`).
fn nightly_libllvm(sysroot_lib: &Path) -> Result<(String, String)> {
    let entries =
        fs::read_dir(sysroot_lib).with_context(|| format!("listing {}", sysroot_lib.display()))?;
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(version) = name.strip_prefix("libLLVM.so.") {
            let major = version.split('.').next().unwrap_or_default();
            if !major.is_empty() && major.bytes().all(|b| b.is_ascii_digit()) {
                return Ok((name.clone(), major.to_owned()));
            }
        }
    }
    bail!(
        "no libLLVM.so.<version> in {}: is the nightly toolchain installed?",
        sysroot_lib.display()
    )
}

fn force_symlink(target: &Path, link: &Path) -> Result<()> {
    if fs::read_link(link).is_ok_and(|t| t == target) {
        return Ok(());
    }
    if fs::symlink_metadata(link).is_ok() {
        fs::remove_file(link).with_context(|| format!("removing {}", link.display()))?;
    }
    symlink(target, link)
        .with_context(|| format!("linking {} -> {}", link.display(), target.display()))
}

fn tracefs() -> Result<Outcome> {
    if tracefs_mounted()? {
        return Ok(Outcome::AlreadyPresent);
    }
    cmd::run(Command::new("mount").args(["-t", "tracefs", "nodev", TRACEFS]))?;
    Ok(Outcome::Done)
}

fn tracefs_mounted() -> Result<bool> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    Ok(mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (_dev, dir, fstype) = (fields.next(), fields.next(), fields.next());
        dir == Some(TRACEFS) && fstype == Some("tracefs")
    }))
}

/// auditd for `bench --peers`, which starts it itself only while its storms run. Never as a
/// service: a running audit daemon taxes the syscalls of every process on the machine, the
/// bench's bare runs too, so a service the package started is stopped and disabled.
fn bench_peers_auditd() -> Result<Outcome> {
    let mut outcome = Outcome::AlreadyPresent;
    let missing = missing_apt_packages(&["auditd"])?;
    if !missing.is_empty() {
        apt_install(&missing)?;
        outcome = Outcome::Done;
    }
    let systemd = Path::new("/run/systemd/system").is_dir();
    let service_on = |query: &str| {
        cmd::succeeds(Command::new("systemctl").args([query, "--quiet", "auditd.service"]))
    };
    if systemd && (service_on("is-active") || service_on("is-enabled")) {
        cmd::run(Command::new("systemctl").args(["disable", "--now", "auditd.service"]))?;
        outcome = Outcome::Done;
    }
    Ok(outcome)
}
