//! The records the engines derive from other records: builds (`build_*`), lineage
//! (`container_start`, `image_push`, `image_discovered`), findings, and image contents and
//! provenance. The kernel-derived records and the envelope are in the parent module.
use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::*;

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
    /// `daemon_write` (the kernel captured the daemon writing it), `remote_context` (the
    /// member of that name in the tarball dockerd downloaded for a BuildKit `remote=` build;
    /// `path` is `<tarball>!/<member>`) or `build_command` (read from the file a
    /// buildah/podman command line names, when its process was seen).
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
    /// Why `dockerfile` is absent, when the sensor knows: `cached_remote_context` (a BuildKit
    /// build of a `remote` context that wrote neither the downloaded tarball nor the
    /// Dockerfile: BuildKit took both from its cache, the server having answered its
    /// conditional request `304 Not Modified`, and read the Dockerfile from the cached
    /// snapshot, a read the sensor does not see; also a bzip2/xz tarball, which is not read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile_missing: Option<String>,
}

/// A build's Dockerfile as `build_finished` carries it (see `build_dockerfile`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct DockerfileText {
    pub path: String,
    /// `daemon_write`, `remote_context` or `build_command` (see `build_dockerfile.source`).
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
    /// The image store it is in: `docker`, `containers-storage` (buildah, podman; there
    /// `created` is when the store made it: a commit, or a pull) or `containerd` (`created`:
    /// when the namespace first named it: an import, pull, build or tag).
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
    /// containerd: the namespace it is in (`k8s.io`, `moby`, `default`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
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
