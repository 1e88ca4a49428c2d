//! The NDJSON records: the sensor's public output contract, documented in docs/events.md.
//!
//! Wire types (sensor-common) are what the kernel sends; these are what users read. Every record
//! is one JSON object on one line: `schema_version`, `id`, `ts`, `host`, `kind`, then the fields
//! of its kind. Records deserialize too, so that `sensor replay` can run the engines over a
//! recorded stream.
use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bumped when a field changes meaning or disappears (adding fields does not bump it).
pub const SCHEMA_VERSION: u32 = 1;

/// Wall-clock time, written as RFC 3339 with nanoseconds in UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub DateTime<Utc>);

impl Timestamp {
    pub fn now() -> Self {
        Self(Utc::now())
    }
    pub fn from_unix_nanos(ns: i64) -> Self {
        Self(DateTime::from_timestamp_nanos(ns))
    }
    pub fn unix_nanos(&self) -> i64 {
        self.0.timestamp_nanos_opt().unwrap_or(i64::MAX)
    }
    /// Milliseconds from `earlier` to `self` (0 if negative).
    pub fn millis_since(&self, earlier: &Timestamp) -> u64 {
        let d = self.unix_nanos().saturating_sub(earlier.unix_nanos());
        if d <= 0 { 0 } else { (d / 1_000_000) as u64 }
    }
}

impl Default for Timestamp {
    /// The Unix epoch: a placeholder that serializes as 1970-01-01T00:00:00.000000000Z.
    fn default() -> Self {
        Self::from_unix_nanos(0)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_rfc3339_opts(SecondsFormat::Nanos, true))
    }
}

/// In the JSON Schema a timestamp is an RFC 3339 string.
impl JsonSchema for Timestamp {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Timestamp".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "format": "date-time",
            "description": "RFC 3339 time in UTC with nanoseconds, e.g. 2023-11-14T22:13:20.123456789Z"
        })
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| Timestamp(t.with_timezone(&Utc)))
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct Record {
    pub schema_version: u32,
    /// Unique within one run of the sensor, increasing; evidence links point at it.
    pub id: u64,
    pub ts: Timestamp,
    pub host: String,
    #[serde(flatten)]
    pub body: Body,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body {
    SensorStarted(SensorStarted),
    ProcessExec(ProcessExec),
    ProcessFork(ProcessFork),
    ProcessExit(ProcessExit),
    Connect(Connect),
    Accept(Accept),
    DnsQuery(DnsQuery),
    DnsResponse(DnsResponse),
    FileWrite(FileWrite),
    FileContent(FileContent),
    ApiRequest(ApiRequest),
    ApiResponse(ApiResponse),
    SensorStats(SensorStats),
    BuildStarted(BuildStarted),
    BuildFinished(BuildFinished),
    BuildDockerfile(BuildDockerfile),
    ContainerStart(ContainerStart),
    ImagePush(ImagePush),
    Finding(Finding),
    ImageContents(ImageContents),
    ImageProvenance(ImageProvenance),
    ImageDiscovered(ImageDiscovered),
}

impl Body {
    pub fn kind(&self) -> &'static str {
        match self {
            Body::SensorStarted(_) => "sensor_started",
            Body::ProcessExec(_) => "process_exec",
            Body::ProcessFork(_) => "process_fork",
            Body::ProcessExit(_) => "process_exit",
            Body::Connect(_) => "connect",
            Body::Accept(_) => "accept",
            Body::DnsQuery(_) => "dns_query",
            Body::DnsResponse(_) => "dns_response",
            Body::FileWrite(_) => "file_write",
            Body::FileContent(_) => "file_content",
            Body::ApiRequest(_) => "api_request",
            Body::ApiResponse(_) => "api_response",
            Body::SensorStats(_) => "sensor_stats",
            Body::BuildStarted(_) => "build_started",
            Body::BuildFinished(_) => "build_finished",
            Body::BuildDockerfile(_) => "build_dockerfile",
            Body::ContainerStart(_) => "container_start",
            Body::ImagePush(_) => "image_push",
            Body::Finding(_) => "finding",
            Body::ImageContents(_) => "image_contents",
            Body::ImageProvenance(_) => "image_provenance",
            Body::ImageDiscovered(_) => "image_discovered",
        }
    }

    /// Kinds written only with `--raw` (kernel detail that the other records summarise).
    pub fn raw_only(&self) -> bool {
        matches!(self, Body::ProcessFork(_) | Body::FileContent(_))
    }
}

/// The process an event happened in, enriched from the sensor's process table.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct ProcessRef {
    pub pid: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Kernel task name (at most 15 bytes).
    pub comm: String,
    /// Executable path as exec'd, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    pub cgroup_id: u64,
    /// Container id from the process's cgroup or its runtime ancestry, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Kubernetes pod of the container, when its runtime records one (containerd/CRI, CRI-O,
    /// Docker with kubelet labels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
    /// Why the process is traced: `runtime`, `descendant` (of a runtime), `api_client`.
    pub role: String,
}

/// A Kubernetes pod, as its container runtime records it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct PodRef {
    pub name: String,
    pub namespace: String,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct SensorStarted {
    pub version: String,
    pub kernel: String,
    /// Programs attached, by name.
    pub probes: Vec<String>,
    /// Probes that could not attach, with the reason.
    pub probes_failed: BTreeMap<String, String>,
    /// Processes found in runtime trees in /proc at start.
    pub seeded_processes: u64,
    pub runtime_names: Vec<String>,
    pub raw: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct ProcessExec {
    pub process: ProcessRef,
    /// Path given to execve (as the kernel resolved it; `/proc/self/exe` for busybox re-execs).
    pub filename: String,
    pub argv: Vec<String>,
    #[serde(default)]
    pub argv_truncated: bool,
    /// Process start, boot-relative nanoseconds (with pid, a unique key of the process).
    pub start_time_ns: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct ProcessFork {
    pub process: ProcessRef,
    pub child_pid: u32,
    pub child_start_time_ns: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct ProcessExit {
    pub process: ProcessRef,
    /// Exit status (0..=255) when the process exited normally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Terminating signal number when it was killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct Connect {
    pub process: ProcessRef,
    /// `tcp` or `unix`.
    pub protocol: String,
    /// `ipv4`, `ipv6` or `unix`.
    pub family: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
    /// Unix socket path (prefixed with `@` for the abstract namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// TCP: `established` or `failed`; unix: `attempted` (seen at the syscall).
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct Accept {
    pub process: ProcessRef,
    pub family: String,
    pub local_addr: String,
    pub local_port: u16,
    pub peer_addr: String,
    pub peer_port: u16,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct DnsQuery {
    pub process: ProcessRef,
    pub server_addr: String,
    pub server_port: u16,
    /// Queried name, when the payload parsed as a DNS query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_type: Option<String>,
}

/// A DNS response a tracked process read on the socket it sent its query from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct DnsResponse {
    pub process: ProcessRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_port: Option<u16>,
    pub query_name: String,
    pub query_type: String,
    /// `NOERROR`, `NXDOMAIN`, `SERVFAIL`, ...
    pub rcode: String,
    /// A and AAAA answers.
    #[serde(default)]
    pub addrs: Vec<String>,
}

/// Bytes written to a build file (`Dockerfile*`, `Containerfile*`, `*.dockerfile`) by a process
/// in a runtime tree: the daemon receiving a build's Dockerfile. Raw only (`--raw`): the build
/// records carry the assembled text.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct FileContent {
    pub process: ProcessRef,
    /// The path the process opened (the last build file it opened for writing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub fd: i32,
    /// Offset of `data` in this write.
    pub offset: u64,
    /// Bytes of the write(2) in total.
    pub write_len: u64,
    /// The bytes (UTF-8, invalid sequences replaced).
    pub data: String,
    /// Bytes of this chunk that were not captured.
    #[serde(default)]
    pub truncated: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct FileWrite {
    pub process: ProcessRef,
    /// `open_write` (opened for writing/creating/truncating) or `rename` (path is the new name).
    pub op: String,
    /// Path as the process gave it; relative paths are relative to `dirfd` or the process cwd.
    pub path: String,
    #[serde(default)]
    pub path_truncated: bool,
    pub flags: u32,
}

/// The peer of an Engine API request.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct ApiClient {
    /// `unix`, `tcp` or `unknown`.
    pub transport: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub argv: Vec<String>,
    /// Parent chain of a local client, nearest first, up to a login shell, service or pid 1.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestors: Vec<Ancestor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The listener reached (local address and port) for TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
    /// Kernel task name of a local client, taken at its connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// Start time of a local client (CLOCK_BOOTTIME ns): with `pid`, a unique process key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time_ns: Option<u64>,
    /// cgroup v2 id of a local client (1 on hosts whose processes are in cgroup v1 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    /// cgroup path of a local client (memory controller, else v2), e.g. `/docker/<id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// The container a local client runs in (a client inside a container, the runtime's socket
    /// mounted into it): from its cgroup while it lives, else from its ancestors'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// That container's name, as its runtime records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    /// The image that container runs, as it was asked for (`Config.Image`), else its id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_image: Option<String>,
    /// The Kubernetes pod of that container, when its runtime records one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct Ancestor {
    pub pid: u32,
    pub comm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct ApiRequest {
    /// The API server that read the request (dockerd).
    pub process: ProcessRef,
    pub fd: i32,
    pub method: String,
    /// Path without the query, e.g. `/v1.41/build`.
    pub path: String,
    /// The path with any `/vX.Y` prefix removed, e.g. `/build`.
    pub endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Raw query string (percent-encoded as sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_length: Option<u64>,
    /// Header names seen (values other than the ones above are not kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub header_names: Vec<String>,
    /// The capture ended before the end of the headers.
    #[serde(default)]
    pub truncated: bool,
    pub client: ApiClient,
}

/// The start of one write(2) an API server made on a connection that carried a POST /build,
/// /images/{name}/push or /containers/create request: the response stream (HTTP chunked JSON).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct ApiResponse {
    pub process: ProcessRef,
    pub fd: i32,
    /// The bytes written (at most 2048 of them), lossy UTF-8.
    pub data: String,
    pub write_len: u64,
    #[serde(default)]
    pub truncated: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct RingbufStats {
    pub size_bytes: u64,
    /// Wake-ups of the reader (each drains everything pending).
    pub batches: u64,
    /// Most bytes drained in one wake-up.
    pub max_batch_bytes: u64,
    /// Peak fill: the most bytes waiting to be read, as the kernel saw it when producing an
    /// event (compare with `size_bytes`: at `size_bytes` events are lost, `ringbuf_full`).
    #[serde(default)]
    pub max_pending_bytes: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct SensorStats {
    pub uptime_s: u64,
    /// Kernel events read, by kind.
    pub events: BTreeMap<String, u64>,
    /// Records written, by kind.
    pub records: BTreeMap<String, u64>,
    /// Events or records lost or cut short, by reason (kernel and userspace). Always lists every
    /// known reason, zero or not.
    pub drops: BTreeMap<String, u64>,
    pub ringbuf: RingbufStats,
    pub tracked_processes: u64,
    /// `true` on the last record, written at exit.
    #[serde(default)]
    pub final_report: bool,
}

/// API parameters of a build request (`POST /build` query), or of a builder's command line.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct BuildParams {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    /// A git or URL context (`remote`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_mode: Option<String>,
    /// Build-arg names; values are `<redacted>` unless the sensor runs with --show-build-args.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub build_args: BTreeMap<String, String>,
    /// The context was uploaded as a tar body (not `remote`).
    #[serde(default)]
    pub context_upload: bool,
    #[serde(default)]
    pub no_cache: bool,
    #[serde(default)]
    pub pull: bool,
    /// Quiet output asked for (`q=1`, `docker build -q`): the daemon shows the client only the
    /// image id, so the build is followed from what the daemon does.
    #[serde(default)]
    pub quiet: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct BuildStep {
    pub index: u32,
    /// The command the step ran (argv joined, e.g. `/bin/sh -c wget ...`).
    pub command: String,
    pub pid: u32,
    pub start: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The container or BuildKit executor id the step ran in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Signal that killed the step's process, when it did not exit by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The builder's own line for the step, when seen: `Step 2/3 : RUN ...` (legacy) or
    /// `[2/3] RUN ...` (BuildKit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instruction: Option<String>,
    /// How the step was tied to this build: `response` (the builder's output on the build's
    /// connection named the step's container or command), `process_tree` (the step descends
    /// from the builder process), `only_open_build` (the one build open on that daemon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribution: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct BaseImage {
    /// FROM reference as given.
    pub reference: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
}

/// Where a build's evidence is: record ids and pids.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct Evidence {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub record_ids: Vec<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pids: Vec<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct BuildStarted {
    pub build_id: String,
    /// `buildkit`, `legacy`, `buildah`, `podman`, `buildctl`, `kaniko`, or `unknown` until known.
    pub builder: String,
    pub client: ApiClient,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    pub params: BuildParams,
    /// The sensor started while this build was running: it saw only part of it.
    #[serde(default)]
    pub partial: bool,
    pub evidence: Evidence,
    /// When the build began (the request, or the builder's exec): the record itself may be
    /// written up to 500 ms later, when its Dockerfile is in (`dockerfile_status`).
    pub started: Timestamp,
    /// The build's Dockerfile, when `dockerfile_status` is `captured`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<DockerfileText>,
    /// `captured` (`dockerfile` is set), `deadline_passed` (the daemon had not written it
    /// 500 ms after the request: `build_dockerfile` and `build_finished` carry it if it comes
    /// later), `build_ended` (the build ended before it was seen), or `not_available` (none is
    /// taken for this build: a partial build, buildctl or kaniko, a buildah/podman file read
    /// from stdin, a URL, or not readable).
    #[serde(default)]
    pub dockerfile_status: String,
}

/// The Dockerfile of a build, as the daemon received it (not as its progress stream showed it).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct BuildDockerfile {
    pub build_id: String,
    /// Where the daemon wrote it (a BuildKit context snapshot, or `/Dockerfile` inside the
    /// legacy builder's extraction root), or the file a buildah/podman command reads (as seen
    /// from its root).
    pub path: String,
    /// `daemon_write` (the kernel captured the daemon writing it) or `build_command` (read
    /// from the file a buildah/podman command line names, when its process was seen).
    #[serde(default)]
    pub source: String,
    /// The text (at most 16 KiB; `ARG` defaults redacted unless `--show-build-args`).
    pub text: String,
    /// sha256 of the Dockerfile as received (before redaction), hex; set when it is whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Bytes the daemon wrote.
    pub size: u64,
    /// More was written than was captured.
    #[serde(default)]
    pub truncated: bool,
    pub instructions: Vec<DockerfileInstruction>,
    /// The raw `file_content` records it was assembled from.
    pub record_ids: Vec<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct DockerfileInstruction {
    /// Line of the instruction's first line (1-based).
    pub line: u32,
    /// The keyword, upper-cased (`RUN`, `ADD`, ...).
    pub instruction: String,
    /// The rest, continuation lines joined.
    pub args: String,
}

/// One destination a build talked to (aggregated).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct OutboundConnection {
    pub dst_addr: String,
    pub dst_port: u16,
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_name: Option<String>,
    pub first: Timestamp,
    pub last: Timestamp,
    pub count: u64,
    #[serde(default)]
    pub failed: u64,
    /// Index of the step that made it, or `daemon` for the daemon on the build's behalf.
    pub made_by: String,
    /// `allowed`, `unknown` or `denied`, per the policy.
    pub policy: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct BuildFinished {
    pub build_id: String,
    pub builder: String,
    pub client: ApiClient,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    pub params: BuildParams,
    pub base_images: Vec<BaseImage>,
    pub steps: Vec<BuildStep>,
    pub started: Timestamp,
    pub duration_ms: u64,
    /// `succeeded`, `failed` or `cancelled`; `unknown` when the sensor did not see the end
    /// (it stopped, the build timed out or was evicted: `error` says which, `partial` is set).
    pub status: String,
    /// Index of the step that failed, when a step did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_step: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `sha256:...` as `docker image inspect --format '{{.Id}}'` reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default)]
    pub partial: bool,
    #[serde(default)]
    pub outbound: Vec<OutboundConnection>,
    /// The Dockerfile the daemon received, when seen (`build_dockerfile` has its instructions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<DockerfileText>,
    pub evidence: Evidence,
}

/// A build's Dockerfile as `build_finished` carries it (see `build_dockerfile`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct DockerfileText {
    pub path: String,
    /// `daemon_write` or `build_command` (see `build_dockerfile.source`).
    #[serde(default)]
    pub source: String,
    /// At most 16 KiB; `ARG` defaults redacted unless `--show-build-args`.
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default)]
    pub truncated: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct KubernetesRef {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct ContainerStart {
    pub container_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// `docker`, `containerd`, `cri`, `podman`.
    pub runtime: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesRef>,
    pub client: ApiClient,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds_since_build: Option<u64>,
    pub evidence: Evidence,
    /// Where the image comes from, for Docker: `built_here` (a build record made it),
    /// `registry` (the store records a registry digest for it: pulled or pushed), or
    /// `unexplained` (made on this host, and no build record explains it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_origin: Option<String>,
}

/// An image found in a runtime's image store at start that was created while the sensor was
/// not running and that no build record explains: built (or loaded, imported, committed) while
/// nothing watched.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct ImageDiscovered {
    pub image_id: String,
    /// The image store it is in: `docker`, or `containers-storage` (buildah, podman; there
    /// `created` is when the store made it: a commit, or a pull).
    pub runtime: String,
    /// When the store says the image was created (its config's `created`).
    pub created: Timestamp,
    /// The sensor's last persisted state: the image was created after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_until: Option<Timestamp>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Registry digests the store records for it (a pull or push), if any.
    #[serde(default)]
    pub repo_digests: Vec<String>,
    /// What the store says of its history, oldest first: each layer's `created_by`
    /// (Dockerfile instruction or command), bounded.
    #[serde(default)]
    pub history: Vec<String>,
    /// The image the builder made it from (legacy builder's `parent`), when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct ImagePush {
    pub reference: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    pub registry: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    pub client: ApiClient,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    pub evidence: Evidence,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct Finding {
    /// Stable rule name, e.g. `build_from_unexpected_client`.
    pub rule: String,
    /// `low`, `medium`, `high`, `critical`.
    pub severity: String,
    pub summary: String,
    /// ATT&CK technique ids, e.g. `T1612`.
    pub attack: Vec<String>,
    /// ATT&CK analytic ids, e.g. `AN1261`.
    pub analytics: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// Addresses, names and other facts the finding rests on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, serde_json::Value>,
    pub evidence: Evidence,
}

/// What the layers a build added to its image hold (sensor/src/image/, docs/events.md).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct ImageContents {
    pub build_id: String,
    pub image_id: String,
    pub builder: String,
    /// The image store the layers were read from: `docker` (overlay2), `containers-storage`
    /// (buildah, podman), or empty when none was.
    pub storage: String,
    /// Layers of the image below the build's (the base image's), not listed.
    pub base_layers: u32,
    pub layers: Vec<ImageLayer>,
    /// Entries listed, over all layers (at most 10,000 a build).
    pub entries: u64,
    /// Entries or digests left out, by reason: `entry_limit`, `file_too_large` (listed without
    /// a digest), `hash_budget`, `unreadable`, `layer_missing`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub skipped: BTreeMap<String, u64>,
    /// Why nothing (or not everything) could be read, e.g. the image is not in the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub evidence: Evidence,
}

/// One layer the build added, in image order.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct ImageLayer {
    /// `sha256:...` of the uncompressed layer (the image config's `rootfs.diff_ids`).
    pub diff_id: String,
    /// The image history's `created_by` for the layer (`RUN /bin/sh -c ...`, `COPY ...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Index of the build step (`build_finished.steps[].index`) that produced it, when a RUN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
    /// When the layer holds the changes of several steps (buildah commits all RUNs of a stage
    /// into one layer): their indexes. Files and connections are then those of all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<u32>,
    /// The step's outbound connections (from `build_finished.outbound`, `made_by` the step).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connections: Vec<StepConnection>,
    pub files: Vec<ImageFile>,
}

/// A destination a step connected to, as listed beside the files it wrote.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct StepConnection {
    pub dst_addr: String,
    pub dst_port: u16,
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_name: Option<String>,
    /// `allowed`, `unknown` or `denied`.
    pub policy: String,
}

/// One file a layer added, changed or deleted.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct ImageFile {
    /// Absolute path in the image.
    pub path: String,
    /// `added`, `changed` (a lower layer had the path), `deleted` (a whiteout), or
    /// `opaque_dir` (the directory replaces whatever lower layers had there).
    pub op: String,
    /// `file`, `dir`, `symlink`, `char`, `block`, `fifo`, `socket`; empty for deletions.
    #[serde(rename = "type")]
    pub file_type: String,
    #[serde(default)]
    pub size: u64,
    /// Permission bits with setuid/setgid/sticky, e.g. `0755`, `4755`.
    pub mode: String,
    pub uid: u32,
    pub gid: u32,
    /// Of regular files up to the size limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
    /// A regular file with an execute bit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub executable: bool,
    /// setuid or setgid.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub setuid: bool,
    /// Written by a step that connected outside the policy's allowed destinations.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub outside_policy: bool,
    /// The connection that fetched it, where the step's command makes it certain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetched_from: Option<FetchSource>,
}

/// Where a file was downloaded from: a downloader (`wget -O`, `curl -o`) of the step wrote this
/// path and connected to this destination.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct FetchSource {
    pub url: String,
    pub dst_addr: String,
    pub dst_port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_name: Option<String>,
    /// `allowed`, `unknown` or `denied`.
    pub policy: String,
    /// The downloader process.
    pub pid: u32,
    /// Its argv.
    pub argv: Vec<String>,
}

/// An in-toto Statement v1 with a SLSA Provenance v1 predicate for an image built here
/// (docs/provenance.md).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct ImageProvenance {
    pub build_id: String,
    pub image_id: String,
    /// The statement (`_type` `https://in-toto.io/Statement/v1`).
    pub statement: serde_json::Value,
    /// The DSSE envelope of the statement, when a signing key is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope: Option<serde_json::Value>,
    /// Where it is kept (`<state-dir>/provenance/<image>.json`), when it was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<String>,
    pub evidence: Evidence,
}

/// Lossy UTF-8: invalid bytes become U+FFFD, so any bytes give valid JSON.
pub fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            schema_version: SCHEMA_VERSION,
            id: 7,
            ts: Timestamp::from_unix_nanos(1_700_000_000_123_456_789),
            host: "h".into(),
            body: Body::FileWrite(FileWrite {
                process: ProcessRef {
                    pid: 1,
                    comm: "x".into(),
                    role: "runtime".into(),
                    ..Default::default()
                },
                op: "open_write".into(),
                path: lossy(b"/tmp/\xff\x00\n\"q"),
                path_truncated: false,
                flags: 1,
            }),
        }
    }

    #[test]
    fn serializes_kind_and_nanosecond_time_and_round_trips() {
        let r = sample();
        let line = serde_json::to_string(&r).unwrap();
        assert!(line.contains(r#""kind":"file_write""#), "{line}");
        assert!(
            line.contains(r#""ts":"2023-11-14T22:13:20.123456789Z""#),
            "{line}"
        );
        assert!(!line.contains('\n'));
        let back: Record = serde_json::from_str(&line).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn hostile_bytes_give_valid_json_with_replacement_marker() {
        let line = serde_json::to_string(&sample()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let p = v["path"].as_str().unwrap();
        assert!(p.contains('\u{FFFD}'));
        assert!(p.contains('\0') && p.contains('\n') && p.contains('"'));
    }
}
