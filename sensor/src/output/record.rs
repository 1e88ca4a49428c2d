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

mod derived;
pub use derived::*;

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

// A record's body; its variant is the record's `kind`. `Kind` (generated) names the kinds
// without their data: the one list of kind names, in the same spelling serde writes (a plain
// comment: a doc comment would land in the JSON Schema).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, JsonSchema, strum::EnumDiscriminants)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[strum_discriminants(
    name(Kind),
    derive(
        strum::EnumIter,
        strum::IntoStaticStr,
        strum::EnumString,
        strum::Display,
        Hash,
        PartialOrd,
        Ord
    ),
    strum(serialize_all = "snake_case")
)]
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
        Kind::from(self).into()
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
    /// Probes not attached because this configuration does not need them, with why.
    #[serde(default)]
    pub probes_unused: BTreeMap<String, String>,
    /// Where socket data is taken: `narrow` (uprobes in the API servers, `cgroup/connect_unix`,
    /// the `cgroup_skb` programs for DNS), `socket` (the sock_recv_length/sock_send_length
    /// tracepoints) or `syscall` (the raw sys_enter/sys_exit dispatch).
    #[serde(default)]
    pub kernel_hooks: String,
    /// Where file events come from: `fanotify`, `syscall` (the raw sys_enter dispatch) or
    /// `off`.
    #[serde(default)]
    pub file_events: String,
    /// Where `dns_query`/`dns_response` come from: `packets` (the `cgroup_skb` programs),
    /// `socket` (the socket tracepoints), `syscall` (the raw syscall dispatch) or `off`
    /// (`--no-dns-events`).
    #[serde(default)]
    pub dns_events: String,
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
    /// open(2) flags; null from `--file-events=fanotify` (not reported there).
    pub flags: Option<u32>,
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
                flags: Some(1),
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
