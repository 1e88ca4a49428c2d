//! sensor: catches container images built on the host and follows what happens to them.
//! This file parses arguments and wires the parts; the work is in the modules.
mod builds;
mod config;
mod detect;
mod engine;
mod image;
mod ingest;
mod lineage;
mod output;
mod pipeline;
mod process;
mod proto;
mod run;

use std::{ffi::OsString, io::Write, net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};

use crate::output::sinks::SinkSpec;

#[derive(Parser)]
#[command(
    name = "sensor",
    version,
    about = "eBPF sensor for container image builds on this host (MITRE ATT&CK T1612)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once at start: the size of `Run`'s arguments does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Load the kernel programs and write NDJSON records to the sinks (stdout by default).
    Run(RunArgs),
    /// Say whether this kernel and these privileges can run the sensor, one line per item.
    Check {
        /// The hook set to try, as `sensor run --kernel-hooks`.
        #[arg(long, value_enum, default_value_t = ingest::loader::KernelHooks::Auto)]
        kernel_hooks: ingest::loader::KernelHooks,
    },
    /// Run the engines over a stream recorded with `sensor run --raw` and print derived records.
    Replay(ReplayArgs),
    /// Print the JSON Schema of the records (schema/records.schema.json).
    Schema,
    /// Config and policy files.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Print the provenance statement kept for an image built here (in-toto, SLSA v1), its
    /// DSSE envelope, or verify the envelope's signature.
    Provenance(ProvenanceArgs),
}

#[derive(Args, Clone, Debug)]
struct ProvenanceArgs {
    /// Image id (`sha256:...`, or at least 12 hex digits of it), tag or pushed reference.
    image: String,
    /// The sensor's state directory (where `sensor run` keeps statements under provenance/).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Take `state_dir` and `provenance_key` from the sensor's config file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the DSSE envelope instead of the statement.
    #[arg(long)]
    envelope: bool,
    /// Verify the envelope's signature (with --public-key, or the config's `provenance_key`)
    /// and that its payload is the statement kept; one line, exit status 1 when it fails.
    #[arg(long)]
    verify: bool,
    /// An ed25519 public key (PEM) to verify with.
    #[arg(long, value_name = "FILE")]
    public_key: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate a config file (or a policy file) and print one line: what it sets, or where it is wrong.
    Check {
        /// The TOML file (a policy file is recognised by its sections).
        file: PathBuf,
    },
}

/// Every flag is also a key of the config file (`--config`), named by its field below.
#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// Read options from this TOML file (keys as the flags, e.g. `stats_interval = 60`); flags win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Detection policy file (TOML, see deploy/policy.example.toml); reloaded on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Directory of the persisted image lineage store (lineage.json).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/sensor")]
    pub state_dir: PathBuf,
    /// Show build-arg values in build records instead of `<redacted>`.
    #[arg(long)]
    pub show_build_args: bool,
    /// Where records go (repeatable; default stdout): stdout, file:PATH, tcp:HOST:PORT or unix:PATH,
    /// with options after `?`: name=N, queue=LINES, kinds=a,b, max_size=64MiB, keep=5 (files), format=ocsf.
    #[arg(long = "sink", value_name = "SPEC")]
    pub sinks: Vec<SinkSpec>,
    /// Serve Prometheus metrics, /healthz and /readyz on this address (off by default), e.g. 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Seconds the sinks get to deliver their queues at SIGTERM/SIGINT.
    #[arg(long, default_value_t = 5)]
    pub drain_secs: u64,
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
    /// Only write these record kinds or groups (comma separated; default all; groups: sensor,
    /// process, network, api, builds, images, findings). A sink can filter further.
    #[arg(long, value_delimiter = ',', value_parser = parse_kind)]
    pub kinds: Vec<String>,
    /// Ring buffer size in MiB (a power of two).
    #[arg(long, default_value_t = 8, value_parser = parse_ringbuf_mib)]
    pub ringbuf_mib: u32,
    /// Do not capture file writes (less volume on busy container hosts); `--file-events=off`.
    #[arg(long)]
    pub no_file_events: bool,
    /// Do not capture DNS: no `dns_query`/`dns_response`, and build records' outbound
    /// connections carry no name. With the narrow hooks, this leaves the two `cgroup_skb`
    /// programs out, which every inet packet of every process passes otherwise (about 100 ns
    /// per packet on the benchmark's VM: 3-4 % of a loopback TCP connect).
    #[arg(long)]
    pub no_dns_events: bool,
    /// Where socket data (Engine API requests and responses, API clients, DNS, accepts) is
    /// taken: `auto` takes the narrow hooks where they all attach (6.7+, cgroup v2), else the
    /// socket tracepoints (6.3+) for what is missing, else the raw syscall dispatch; `narrow`
    /// are hooks that fire only where their fact happens (the API servers' traffic: uprobes
    /// in them; unix connects: `cgroup/connect_unix`; DNS from the packets: `cgroup_skb`);
    /// `socket` the socket tracepoints, which fire on every socket send and receive;
    /// `syscall` the raw syscall dispatch, which every syscall pays for.
    #[arg(long, value_enum, default_value_t = ingest::loader::KernelHooks::Auto)]
    pub kernel_hooks: ingest::loader::KernelHooks,
    /// Where `file_write` and `file_content` come from: `syscall` (the kernel programs' raw
    /// syscall dispatch), `fanotify` (no syscall hook: files closed after writing and renames,
    /// per filesystem, read in userspace) or `off`.
    #[arg(long, value_enum, default_value_t = FileEvents::Auto)]
    pub file_events: FileEvents,
    /// Sign each image's provenance statement (a DSSE envelope) with this ed25519 private key
    /// (PKCS#8 PEM: `openssl genpkey -algorithm ed25519 -out FILE`).
    #[arg(long, value_name = "FILE")]
    pub provenance_key: Option<PathBuf>,
    /// Files listed at most per build in `image_contents` (and its statement's byproducts);
    /// about 180 bytes each in the record (10,000: about 2 MB lines).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub image_max_entries: u64,
    /// containerd sockets whose image stores are reconciled at start (repeatable; replaces
    /// the defaults: the system's containerd and dockerd's own), under SENSOR_HOST_ROOT.
    #[arg(
        long = "containerd-socket",
        value_name = "PATH",
        default_values = lineage::containerd::DEFAULT_SOCKETS
    )]
    pub containerd_sockets: Vec<PathBuf>,
}

/// The source of file events (`--file-events`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum FileEvents {
    /// fanotify where it can be set up (CAP_SYS_ADMIN), else `syscall`.
    Auto,
    /// The kernel programs' raw syscall dispatch (every syscall of every process pays).
    Syscall,
    /// fanotify marks on the runtimes' filesystems: only closes of written files pay.
    Fanotify,
    Off,
}

impl FileEvents {
    pub fn name(self) -> &'static str {
        self.into()
    }
}

impl RunArgs {
    /// `--file-events`, with `--no-file-events` meaning `off`.
    pub fn file_events(&self) -> FileEvents {
        if self.no_file_events {
            FileEvents::Off
        } else {
            self.file_events
        }
    }
}

#[derive(Args, Clone, Debug)]
struct ReplayArgs {
    /// NDJSON file recorded with `sensor run --raw` (`-` for stdin).
    file: PathBuf,
    /// Detection policy (TOML). Default: built-in.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Persist image lineage here (default: in memory only; the live store is not touched).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Show build-arg values instead of `<redacted>`.
    #[arg(long)]
    show_build_args: bool,
}

fn parse_kind(s: &str) -> Result<String, String> {
    output::sinks::expand_kinds(&[s])
        .map(|_| s.trim().to_string())
        .map_err(|e| e.to_string())
}

fn parse_ringbuf_mib(s: &str) -> Result<u32, String> {
    let v: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of MiB"))?;
    if !v.is_power_of_two() || !(1..=1024).contains(&v) {
        return Err(format!(
            "{v} MiB: the ring buffer size must be a power of two from 1 to 1024"
        ));
    }
    Ok(v)
}

/// With `--config FILE`: the file's options under the command line's.
fn with_config(args: RunArgs) -> anyhow::Result<RunArgs> {
    let Some(path) = args.config.clone() else {
        return Ok(args);
    };
    let argv: Vec<OsString> = std::env::args_os().collect();
    let after_run = argv
        .iter()
        .position(|a| a == "run")
        .map(|i| argv[i + 1..].to_vec())
        .unwrap_or_default();
    Ok(config::merge(&path, &after_run)?)
}

/// `sensor provenance`: the state directory and key from the flags, else from the config file.
fn provenance(args: ProvenanceArgs) -> anyhow::Result<()> {
    let from_config = match &args.config {
        Some(path) => Some(config::merge(path, &[])?),
        None => None,
    };
    let state_dir = args
        .state_dir
        .clone()
        .or_else(|| from_config.as_ref().map(|c| c.state_dir.clone()))
        .unwrap_or_else(|| PathBuf::from("/var/lib/sensor"));
    let out = image::cli::provenance(&image::cli::ProvenanceQuery {
        image: &args.image,
        state_dir: &state_dir,
        envelope: args.envelope,
        verify: args.verify,
        private_key: from_config.and_then(|c| c.provenance_key),
        public_key: args.public_key.clone(),
    })?;
    // A reader that stops early (`| head`) is not an error.
    match writeln!(std::io::stdout(), "{out}") {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SENSOR_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run(args) => with_config(args).and_then(run::run),
        Cmd::Check { kernel_hooks } => return ingest::check::check(kernel_hooks),
        Cmd::Replay(args) => run::replay(
            &args.file,
            args.policy.as_deref(),
            args.state_dir.as_deref(),
            args.show_build_args,
        ),
        Cmd::Schema => {
            print!("{}", output::schema::records_schema_json());
            return ExitCode::SUCCESS;
        }
        Cmd::Config(ConfigCmd::Check { file }) => config::check(&file)
            .map(|ok| println!("{ok}"))
            .map_err(Into::into),
        Cmd::Provenance(args) => provenance(args),
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
