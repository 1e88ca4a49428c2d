//! Build sessions: every image build on the host becomes one `build_started` and one
//! `build_finished` record (docs/builds.md).
//!
//! A build starts at its `POST /build` request (dockerd), or at a builder's command line
//! (buildah, podman, buildctl), or — when the sensor started in the middle of it — at the
//! first step seen without a request (`partial`). Steps are the processes the builder runs
//! for RUN instructions; the hard part is tying each to its build when several overlap:
//!
//! - legacy builder: dockerd writes `Step N/M : RUN ...` and ` ---> Running in <id>` on the
//!   build's own connection, and the step runs in container `<id>` (shim `-id`, runc bundle);
//! - BuildKit: the step runs under `runc run --bundle .../buildkit/executor/<id>` started by
//!   the daemon; with one BuildKit build open on that daemon it is that one, with several the
//!   RUN text is matched against each build's progress stream (`[2/3] RUN ...` vertices);
//! - builder tools: the steps descend from the tool's process.
//!
//! Whatever cannot be tied to exactly one build is counted (`steps_unattributed`), never
//! guessed.
mod attribution;
mod cli;
mod command_file;
pub mod dockerfile;
#[cfg(test)]
mod fixtures;
mod network;
mod params;
mod procs;
mod requests;
mod response;
mod session;
#[cfg(test)]
mod tests;
mod trace;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::engine::Engine;
use crate::ingest::remote_context;
use crate::output::record::{
    ApiRequest, Body, BuildStep, ProcessExec, ProcessExit, ProcessFork, Record, Timestamp,
};
use crate::process::host::HostPaths;
use crate::process::runtime_exec::{self, RuntimeExec};
use crate::proto::api::ApiCall;
#[cfg(test)]
pub(crate) use params::parse_build_query;
use response::StreamEvent;
use session::{BuildSession, MAX_STEPS, Outcome};

/// Outbound policy class of a destination: `allowed`, `unknown` or `denied`.
pub type Classifier = Arc<dyn Fn(&str, u16, Option<&str>) -> String + Send + Sync>;

pub struct BuildConfig {
    /// Show build-arg values instead of `<redacted>`.
    pub show_build_args: bool,
    /// Builds tracked at once; opening one more ends the least recently active
    /// (`builds_evicted`).
    pub max_open_builds: usize,
    /// A build with no activity for this long is reported with status `unknown`
    /// (`builds_timed_out`).
    pub build_timeout: Duration,
    pub classify: Classifier,
    /// Where dockerd's image store is (image chains of quiet legacy builds).
    pub paths: HostPaths,
    /// Read the Dockerfile a buildah/podman command names (live; not in a replay, whose
    /// processes and files are not the host's now).
    pub read_command_files: bool,
}

impl Default for BuildConfig {
    fn default() -> Self {
        BuildConfig {
            show_build_args: false,
            max_open_builds: 64,
            build_timeout: Duration::from_secs(3600),
            classify: Arc::new(|_, _, _| "unknown".to_string()),
            paths: HostPaths::default(),
            read_command_files: false,
        }
    }
}

/// How long `build_started` waits for the daemon to write the build's Dockerfile (it does so
/// within milliseconds of the request for a small context: the record then carries it).
const DOCKERFILE_WAIT: Duration = Duration::from_millis(500);
/// `build_finished.error` of a build whose response ended without a result.
const RESPONSE_ENDED: &str = "the daemon ended the response without a result";
/// `build_dockerfile.source` of a member of a remote context's tarball.
const REMOTE_CONTEXT: &str = "remote_context";
/// How long a step whose build is not known yet waits for the builder's output to name it.
const PENDING_WAIT: Duration = Duration::from_secs(3);
/// How long after the end of a build is seen its record waits for trailing lines and exits.
const END_GRACE: Duration = Duration::from_secs(1);
/// A partial build (no request seen, so no end will be seen) ends after this long idle.
const PARTIAL_IDLE: Duration = Duration::from_secs(30);
const MAX_PENDING: usize = 256;
const MAX_MEMBERS: usize = 65_536;
const MAX_RUNTIME_PROCS: usize = 4096;
const MAX_API_CONTAINERS: usize = 1024;

#[derive(Clone, Debug)]
struct Executor {
    /// The process that started this runc (dockerd, buildkitd, containerd-shim).
    daemon: u32,
    id: String,
    /// A containerd task (container) rather than a BuildKit executor.
    container: bool,
}

/// A process that belongs to a build: the builder tool itself or a step (or its descendants).
#[derive(Clone, Copy, Debug)]
struct Member {
    key: u64,
    /// Index into the build's steps, or `None` for the builder tool's own processes.
    step: Option<usize>,
}

#[derive(Debug)]
enum PendingKind {
    Container(String),
    Executor { daemon: u32, id: String },
}

/// A step process whose build is not known yet, with what it did meanwhile.
#[derive(Debug)]
struct PendingStep {
    kind: PendingKind,
    pid: u32,
    command: String,
    run_text: String,
    start: Timestamp,
    record_id: u64,
    deadline: Timestamp,
    pids: Vec<u32>,
    exit: Option<(Timestamp, Option<i32>, Option<i32>)>,
    net: Vec<NetEvent>,
    /// Quiet legacy builds open when a container step started: the step is one of theirs or
    /// none, decided when each ends (image chain), never by timing alone.
    quiet_candidates: Vec<u64>,
    /// A candidate ended that could not tell (no image chain): if no other claims the step,
    /// it is unattributed rather than no build's.
    lost_candidate: bool,
    /// BuildKit builds open on the step's daemon when it started: "the only open build" holds
    /// only if it was the only one then (one that ended since may have been the step's).
    executor_candidates: Vec<u64>,
}

#[derive(Clone, Debug)]
struct NetEvent {
    record_id: u64,
    ts: Timestamp,
    pid: u32,
    addr: String,
    port: u16,
    protocol: String,
    dns_name: Option<String>,
    failed: bool,
}

enum Resolution {
    Build {
        key: u64,
        attribution: &'static str,
        instruction: Option<String>,
    },
    /// Not a build step (e.g. a container started through the API).
    NotABuild,
    Wait,
    Unattributed,
}

pub struct BuildTracker {
    cfg: BuildConfig,
    builds: BTreeMap<u64, BuildSession>,
    next_key: u64,
    by_conn: HashMap<(u32, i32), u64>,
    executors: HashMap<u32, Executor>,
    shims: HashMap<u32, String>,
    members: HashMap<u32, Member>,
    /// Container short id (12 hex) named by a legacy build's ` ---> Running in` line.
    running_in: HashMap<String, (u64, Option<String>)>,
    pending: Vec<PendingStep>,
    /// Containers started through the API (`POST /containers/{id}/start`): not build steps.
    api_containers: VecDeque<String>,
    /// Last image pull/push request per daemon: daemon traffic then is not the build's alone.
    daemon_image_requests: HashMap<u32, Timestamp>,
    /// Names a build's processes looked up, by (build key, address answered): the build's
    /// connects to that address carry the name (bounded; cleared when full).
    resolved: HashMap<(u64, String), String>,
    sensor_started: Option<Timestamp>,
    /// Build files runtimes write, assembled from the kernel's chunks.
    build_files: dockerfile::Assembler,
    /// Builds whose `build_started` waits for their Dockerfile.
    held: usize,
    evicted: u64,
    timed_out: u64,
    unattributed: u64,
    dockerfile_unattributed: u64,
}

impl BuildTracker {
    pub fn new(cfg: BuildConfig) -> Self {
        BuildTracker {
            cfg,
            builds: BTreeMap::new(),
            next_key: 1,
            by_conn: HashMap::new(),
            executors: HashMap::new(),
            shims: HashMap::new(),
            members: HashMap::new(),
            running_in: HashMap::new(),
            pending: Vec::new(),
            api_containers: VecDeque::new(),
            daemon_image_requests: HashMap::new(),
            resolved: HashMap::new(),
            sensor_started: None,
            build_files: dockerfile::Assembler::default(),
            held: 0,
            evicted: 0,
            timed_out: 0,
            unattributed: 0,
            dockerfile_unattributed: 0,
        }
    }

    /// Builds open now.
    #[cfg(test)]
    pub fn open_builds(&self) -> usize {
        self.builds.len()
    }

    fn build_timeout(&self) -> i64 {
        i64::try_from(self.cfg.build_timeout.as_nanos()).unwrap_or(i64::MAX)
    }

    /// Opens a build, ending the least recently active one if too many are open.
    fn open(&mut self, mut s: BuildSession, now: Timestamp, out: &mut Vec<Body>) -> u64 {
        while self.builds.len() >= self.cfg.max_open_builds.max(1) {
            let oldest = self
                .builds
                .iter()
                .min_by_key(|(_, b)| b.last_activity)
                .map(|(k, _)| *k);
            let Some(oldest) = oldest else { break };
            self.evicted += 1;
            let why = format!(
                "evicted: more than {} builds open",
                self.cfg.max_open_builds
            );
            self.close(oldest, now, Some(&why), out);
        }
        let key = self.next_key;
        self.next_key += 1;
        s.touch(now);
        // A daemon build's Dockerfile is written by the daemon a moment after the request:
        // build_started waits for it (or for DOCKERFILE_WAIT), so that it can carry it.
        let daemon_build = matches!(s.builder.as_str(), "legacy" | "buildkit");
        if daemon_build && s.conn.is_some() && !s.partial && s.dockerfile.is_none() {
            s.dockerfile_due = Some(Timestamp::from_unix_nanos(
                s.started
                    .unix_nanos()
                    .saturating_add(DOCKERFILE_WAIT.as_nanos() as i64),
            ));
            self.held += 1;
        } else {
            let status = if s.dockerfile.is_some() {
                "captured"
            } else {
                "not_available"
            };
            announce(&mut s, status, out);
        }
        if let Some(conn) = s.conn {
            self.by_conn.insert(conn, key);
        }
        self.builds.insert(key, s);
        key
    }

    fn close(&mut self, key: u64, now: Timestamp, why: Option<&str>, out: &mut Vec<Body>) {
        if self.builds.contains_key(&key) {
            self.settle_quiet(key, now, out);
        }
        let Some(mut s) = self.builds.remove(&key) else {
            return;
        };
        if !s.announced {
            self.held = self.held.saturating_sub(1);
            announce(&mut s, "build_ended", out);
        }
        self.by_conn.retain(|_, k| *k != key);
        self.members.retain(|_, m| m.key != key);
        self.running_in.retain(|_, (k, _)| *k != key);
        let why = if s.outcome.is_some() { None } else { why };
        out.push(Body::BuildFinished(s.finished_record(now, why)));
    }

    /// Writes the `build_started` of builds that waited for their Dockerfile until `now`.
    fn release_due(&mut self, now: Timestamp, out: &mut Vec<Body>) {
        let mut ended = Vec::new();
        for (k, s) in self.builds.iter_mut() {
            if s.dockerfile_due.is_some_and(|d| d <= now) {
                if s.close_when_announced {
                    // Ended before its Dockerfile came: `close` announces it `build_ended`.
                    ended.push(*k);
                    continue;
                }
                self.held = self.held.saturating_sub(1);
                announce(s, "deadline_passed", out);
            }
        }
        for k in ended {
            self.close(k, now, Some(RESPONSE_ENDED), out);
        }
    }

    /// A build file a runtime wrote: the Dockerfile of the one build waiting for one whose
    /// `dockerfile` parameter (`Dockerfile` when not given) names it; otherwise counted. A
    /// member of a remote context's tarball (`ingest::remote_context`) goes to a waiting
    /// build of that daemon with a `remote` context whose `dockerfile` is that member's path.
    fn on_build_file(&mut self, a: dockerfile::Assembled, ts: Timestamp, out: &mut Vec<Body>) {
        let member = remote_context::split_member_path(&a.path).map(|(_, m)| m);
        let from_writer =
            |b: &BuildSession| b.daemon_pid == a.writer.0 || b.daemon_pid == a.writer.1;
        // The first unpack of a tarball whose member a build took writes the same file again
        // (before any step of it): that build's evidence, not a file of its own, also when
        // another waiting build's `dockerfile` has that name.
        if member.is_none() {
            let sha = {
                use sha2::Digest as _;
                format!("{:x}", sha2::Sha256::digest(a.text.as_bytes()))
            };
            let unpacked = self.builds.values_mut().find(|b| {
                from_writer(b)
                    && b.steps.is_empty()
                    && b.dockerfile.as_ref().is_some_and(|d| {
                        d.source == REMOTE_CONTEXT
                            && d.sha256.as_deref() == Some(sha.as_str())
                            && d.path.rsplit('/').next() == Some(a.name())
                    })
            });
            if let Some(b) = unpacked {
                a.record_ids.iter().for_each(|id| b.add_record(*id));
                return;
            }
        }
        let waiting: Vec<u64> = self
            .builds
            .iter()
            // A build reads its Dockerfile before any step: one with steps is not waiting any
            // more, and only its own daemon (or a process it forked) writes it. One whose end
            // was seen still is until it is closed (END_GRACE): a fast (cached) build's
            // response can be read before the file event of its Dockerfile, which the file
            // events deliver after the kernel's ring buffer is drained.
            .filter(|(_, b)| {
                b.dockerfile.is_none()
                    && b.tool_pid.is_none()
                    && b.steps.is_empty()
                    && from_writer(b)
                    && (member.is_none() || b.params.remote.is_some())
            })
            .map(|(k, _)| *k)
            .collect();
        // By name first: a build's own file has its `dockerfile` parameter's name, so a file
        // of another name is never given to it, even when it is the only one waiting.
        let named: Vec<u64> = waiting
            .iter()
            .copied()
            .filter(|k| {
                let d = self.builds[k].params.dockerfile.as_deref();
                let d = d.unwrap_or("Dockerfile");
                match member {
                    Some(m) => remote_context::normalize(d) == m,
                    None => d.rsplit('/').next().unwrap_or(d) == a.name(),
                }
            })
            .collect();
        let pick = (named.len() == 1).then(|| named[0]);
        let Some(s) = pick.and_then(|k| self.builds.get_mut(&k)) else {
            self.dockerfile_unattributed += 1;
            return;
        };
        let source = if member.is_some() {
            REMOTE_CONTEXT
        } else {
            "daemon_write"
        };
        let d = dockerfile::record(&s.build_id, a, source, self.cfg.show_build_args);
        s.dockerfile = Some(dockerfile::text_of(&d));
        for id in &d.record_ids {
            s.add_record(*id);
        }
        if !s.announced {
            self.held = self.held.saturating_sub(1);
            announce(s, "captured", out);
        }
        let close = s.close_when_announced;
        out.push(Body::BuildDockerfile(d));
        if let (true, Some(k)) = (close, pick) {
            self.close(k, ts, Some(RESPONSE_ENDED), out);
        }
    }

    fn on_exec(&mut self, rec: &Record, e: &ProcessExec, out: &mut Vec<Body>) {
        let (pid, ppid) = (e.process.pid, e.process.ppid);
        match runtime_exec::classify(e) {
            RuntimeExec::BuildkitRunc { executor_id } => {
                self.add_runtime(
                    pid,
                    Executor {
                        daemon: ppid,
                        id: executor_id,
                        container: false,
                    },
                );
                return;
            }
            // Legacy build steps are Docker containers (containerd namespace `moby`): a CRI
            // pod's or Podman's container is never one (Podman's builds run under the tool).
            RuntimeExec::ContainerRuntime { container, .. } if container.runtime == "docker" => {
                self.add_runtime(
                    pid,
                    Executor {
                        daemon: ppid,
                        id: container.id,
                        container: true,
                    },
                );
                return;
            }
            RuntimeExec::Shim {
                container_id,
                namespace,
            } => {
                if namespace.as_deref().is_none_or(|n| n == "moby")
                    && self.shims.len() < MAX_RUNTIME_PROCS
                {
                    self.shims.insert(pid, container_id);
                }
                return;
            }
            RuntimeExec::RuncInit => return,
            RuntimeExec::BuilderCli { builder, args } => {
                if !self.members.contains_key(&pid) {
                    cli::open_cli_build(self, rec, e, builder, &args, out);
                    return;
                }
            }
            RuntimeExec::ContainerRuntime { .. } | RuntimeExec::Other => {}
        }
        // A process of a build already known: a step's descendant, or a builder tool's step.
        if let Some(m) = self
            .members
            .get(&pid)
            .or_else(|| self.members.get(&ppid))
            .copied()
        {
            let new_step = m.step.is_none() && procs::is_shell_step(e);
            if new_step {
                let cid = self.executors.get(&ppid).map(|x| x.id.clone());
                self.add_step(m.key, rec, e, cid, None, "process_tree");
            } else {
                self.add_member(pid, m);
                if let Some(b) = self.builds.get_mut(&m.key) {
                    b.add_pid(pid);
                    b.touch(rec.ts);
                }
            }
            return;
        }
        if let Some(p) = self
            .pending
            .iter_mut()
            .find(|p| p.pids.contains(&pid) || p.pids.contains(&ppid))
        {
            if !p.pids.contains(&pid) && p.pids.len() < 64 {
                p.pids.push(pid);
            }
            return;
        }
        if runtime_exec::is_runtime_helper(e) {
            return;
        }
        let kind = if let Some(x) = self.executors.get(&ppid) {
            if x.container {
                PendingKind::Container(x.id.clone())
            } else {
                PendingKind::Executor {
                    daemon: x.daemon,
                    id: x.id.clone(),
                }
            }
        } else if let Some(cid) = self.shims.get(&ppid) {
            PendingKind::Container(cid.clone())
        } else {
            return;
        };
        if self.pending.len() >= MAX_PENDING {
            self.unattributed += 1;
            return;
        }
        let executor_candidates = executor_candidates(&self.builds, &kind);
        self.pending.push(PendingStep {
            kind,
            pid,
            command: procs::step_command(&e.argv),
            run_text: procs::run_text(&e.argv),
            start: rec.ts,
            record_id: rec.id,
            deadline: Timestamp::from_unix_nanos(
                rec.ts
                    .unix_nanos()
                    .saturating_add(PENDING_WAIT.as_nanos() as i64),
            ),
            pids: vec![pid],
            exit: None,
            net: Vec::new(),
            quiet_candidates: self
                .builds
                .iter()
                .filter(|(_, b)| b.quiet_legacy() && b.outcome.is_none())
                .map(|(k, _)| *k)
                .collect(),
            lost_candidate: false,
            executor_candidates,
        });
        self.resolve_pending(rec.ts, false, out);
    }

    fn add_runtime(&mut self, pid: u32, x: Executor) {
        if self.executors.len() < MAX_RUNTIME_PROCS {
            self.executors.insert(pid, x);
        }
    }

    fn add_member(&mut self, pid: u32, m: Member) {
        if self.members.len() < MAX_MEMBERS || self.members.contains_key(&pid) {
            self.members.insert(pid, m);
        }
    }

    /// Adds a step to a build; returns its index.
    fn add_step(
        &mut self,
        key: u64,
        rec: &Record,
        e: &ProcessExec,
        container_id: Option<String>,
        instruction: Option<String>,
        attribution: &'static str,
    ) -> Option<usize> {
        let b = self.builds.get_mut(&key)?;
        if b.steps.len() >= MAX_STEPS {
            return None;
        }
        let idx = b.steps.len();
        let instruction = instruction.or_else(|| {
            b.vertex_for_run(&procs::run_text(&e.argv))
                .map(str::to_string)
        });
        b.steps.push(BuildStep {
            index: idx as u32 + 1,
            command: procs::step_command(&e.argv),
            pid: e.process.pid,
            start: rec.ts,
            container_id,
            instruction,
            attribution: Some(attribution.to_string()),
            ..Default::default()
        });
        b.add_record(rec.id);
        b.add_pid(e.process.pid);
        b.touch(rec.ts);
        self.add_member(
            e.process.pid,
            Member {
                key,
                step: Some(idx),
            },
        );
        Some(idx)
    }

    fn on_fork(&mut self, f: &ProcessFork) {
        let parent = f.process.pid;
        if let Some(m) = self.members.get(&parent).copied() {
            self.add_member(f.child_pid, m);
            if let Some(b) = self.builds.get_mut(&m.key) {
                b.add_pid(f.child_pid);
            }
        } else if let Some(p) = self.pending.iter_mut().find(|p| p.pids.contains(&parent))
            && p.pids.len() < 64
        {
            p.pids.push(f.child_pid);
        }
    }

    fn on_exit(&mut self, rec: &Record, x: &ProcessExit, out: &mut Vec<Body>) {
        let pid = x.process.pid;
        self.executors.remove(&pid);
        self.shims.remove(&pid);
        if let Some(p) = self.pending.iter_mut().find(|p| p.pid == pid) {
            p.exit = Some((rec.ts, x.exit_code, x.signal));
        }
        let Some(m) = self.members.remove(&pid) else {
            return;
        };
        let Some(b) = self.builds.get_mut(&m.key) else {
            return;
        };
        b.touch(rec.ts);
        match m.step {
            Some(i) => {
                if let Some(s) = b.steps.get_mut(i).filter(|s| s.pid == pid) {
                    s.end = Some(rec.ts);
                    s.exit_code = x.exit_code;
                    s.signal = x.signal;
                    b.add_record(rec.id);
                }
            }
            None if b.tool_pid == Some(pid) => {
                // The builder tool itself: its exit is the end of the build.
                b.add_record(rec.id);
                let outcome = cli::outcome_of_exit(&b.builder, x.exit_code, x.signal);
                b.end(outcome, rec.ts);
                let key = m.key;
                self.close(key, rec.ts, None, out);
            }
            None => {}
        }
    }
}

/// Writes a build's `build_started` (once).
fn announce(s: &mut BuildSession, dockerfile_status: &str, out: &mut Vec<Body>) {
    s.announced = true;
    s.dockerfile_due = None;
    out.push(Body::BuildStarted(s.started_record(dockerfile_status)));
}

/// The BuildKit (and buildctl) builds open on an executor step's daemon now.
fn executor_candidates(builds: &BTreeMap<u64, BuildSession>, kind: &PendingKind) -> Vec<u64> {
    let PendingKind::Executor { daemon, .. } = kind else {
        return Vec::new();
    };
    builds
        .iter()
        .filter(|(_, b)| b.outcome.is_none() && b.runs_executors_of(*daemon))
        .map(|(k, _)| *k)
        .collect()
}

impl Engine for BuildTracker {
    fn observe(&mut self, rec: &Record, out: &mut Vec<Body>) {
        // Time as the stream tells it: a replay holds and releases as the live run did.
        if self.held > 0 {
            self.release_due(rec.ts, out);
        }
        match &rec.body {
            Body::SensorStarted(_) => {
                self.sensor_started.get_or_insert(rec.ts);
            }
            Body::ApiRequest(r) => self.on_request(rec, r, out),
            Body::ProcessExec(e) => self.on_exec(rec, e, out),
            Body::ProcessFork(f) => self.on_fork(f),
            Body::ProcessExit(x) => self.on_exit(rec, x, out),
            Body::Connect(c) => self.on_connect(rec, c),
            Body::DnsQuery(d) => self.on_dns(rec, d),
            Body::DnsResponse(d) => self.on_dns_response(rec, d),
            Body::FileWrite(w) => self.on_file(rec, w),
            Body::ApiResponse(r) => {
                self.on_response(rec.id, rec.ts, r.process.pid, r.fd, &r.data, out)
            }
            Body::FileContent(c) => {
                if let Some(a) = self.build_files.push(rec, c) {
                    self.on_build_file(a, rec.ts, out);
                }
            }
            _ => {}
        }
    }

    /// Processes running at start: BuildKit executors (`runc run --bundle .../executor/<id>`)
    /// and what runs under them become steps of a partial build. A running container under a
    /// shim could be anything (not only a legacy build step), so it is not taken as a step.
    fn seed(&mut self, rec: &Record, out: &mut Vec<Body>) {
        let Body::ProcessExec(e) = &rec.body else {
            return;
        };
        let ppid = e.process.ppid;
        let buildkit = matches!(runtime_exec::classify(e), RuntimeExec::BuildkitRunc { .. });
        let under_step = self.executors.get(&ppid).is_some_and(|x| !x.container)
            || self.pending.iter().any(|p| p.pids.contains(&ppid))
            || self.members.contains_key(&ppid);
        if buildkit || under_step {
            self.on_exec(rec, e, out);
        }
    }

    fn tick(&mut self, now: Timestamp, out: &mut Vec<Body>) {
        if self.held > 0 {
            self.release_due(now, out);
        }
        self.resolve_pending(now, false, out);
        let grace = END_GRACE.as_nanos() as i64;
        let timeout = self.build_timeout();
        let partial_idle = PARTIAL_IDLE.as_nanos() as i64;
        let t = now.unix_nanos();
        let mut ended = Vec::new();
        let mut idle = Vec::new();
        for (k, b) in &self.builds {
            if let Some(e) = b.ending_since {
                if t.saturating_sub(e.unix_nanos()) >= grace {
                    ended.push(*k);
                }
                continue;
            }
            let quiet = t.saturating_sub(b.last_activity.unix_nanos());
            let running = b.steps.iter().any(|s| s.end.is_none());
            if quiet >= timeout
                || (b.partial && b.conn.is_none() && !running && quiet >= partial_idle.min(timeout))
            {
                idle.push(*k);
            }
        }
        for k in ended {
            self.close(k, now, None, out);
        }
        for k in idle {
            let partial = self.builds.get(&k).is_some_and(|b| b.partial);
            if !partial {
                self.timed_out += 1;
            }
            let why = if partial {
                "partial build: no activity since its last step (its end cannot be seen)"
                    .to_string()
            } else {
                format!(
                    "timed out: no activity for {}s",
                    self.cfg.build_timeout.as_secs()
                )
            };
            self.close(k, now, Some(&why), out);
        }
    }

    fn finish(&mut self, now: Timestamp, out: &mut Vec<Body>) {
        self.resolve_pending(now, true, out);
        let keys: Vec<u64> = self.builds.keys().copied().collect();
        for k in keys {
            self.close(
                k,
                now,
                Some("the sensor stopped before the build ended"),
                out,
            );
        }
    }

    fn drops(&self, drops: &mut BTreeMap<String, u64>) {
        *drops.entry("builds_evicted".into()).or_default() += self.evicted;
        *drops.entry("builds_timed_out".into()).or_default() += self.timed_out;
        *drops.entry("steps_unattributed".into()).or_default() += self.unattributed;
        *drops.entry("dockerfile_unattributed".into()).or_default() += self.dockerfile_unattributed;
    }

    fn next_deadline(&self) -> Option<Timestamp> {
        self.builds.values().filter_map(|b| b.dockerfile_due).min()
    }
}
