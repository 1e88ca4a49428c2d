//! One build being reconstructed, and the records it becomes.
use std::collections::BTreeMap;

use super::response::{failure_exit_code, from_reference, run_instruction};
use super::trace::Vertex;
use crate::output::record::{
    ApiClient, BaseImage, BuildFinished, BuildParams, BuildStarted, BuildStep, Evidence,
    OutboundConnection, Timestamp,
};

/// Evidence kept per build (record ids and pids each), so a long build stays bounded.
pub const MAX_EVIDENCE: usize = 256;
/// Steps kept per build.
pub const MAX_STEPS: usize = 512;
/// Distinct outbound destinations kept per build.
pub const MAX_OUTBOUND: usize = 256;
/// BuildKit vertices remembered per build (for matching steps to overlapping builds).
pub const MAX_VERTICES: usize = 512;

/// How the build came to an end, when the sensor saw it end.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Succeeded,
    Failed(String),
    Cancelled(String),
}

#[derive(Debug)]
pub struct BuildSession {
    pub build_id: String,
    pub builder: String,
    pub client: ApiClient,
    pub user_agent: Option<String>,
    pub params: BuildParams,
    pub started: Timestamp,
    pub last_activity: Timestamp,
    pub partial: bool,
    /// The process that runs the build (dockerd, buildkitd, or the builder tool itself).
    pub daemon_pid: u32,
    /// The API connection (daemon pid, fd) that carried the request, when seen.
    pub conn: Option<(u32, i32)>,
    /// The builder tool's process (buildah, podman, buildctl), whose exit ends the build.
    pub tool_pid: Option<u32>,
    /// BuildKit session/build ids from the query (`buildid`), for `/build/cancel`.
    pub buildkit_build_id: Option<String>,
    pub steps: Vec<BuildStep>,
    pub base_images: Vec<BaseImage>,
    pub image_id: Option<String>,
    /// Image id learnt from dockerd's image store writes while this was the only open build.
    pub stored_image_id: Option<String>,
    pub tags: Vec<String>,
    pub outcome: Option<Outcome>,
    /// When the end was seen (the record is written a moment later, to catch trailing lines).
    pub ending_since: Option<Timestamp>,
    /// The response ended while `build_started` waited for the Dockerfile: the build is
    /// closed once that is written (its file, or its deadline).
    pub close_when_announced: bool,
    /// Last `Step N/M : ...` line of a legacy build.
    pub current_instruction: Option<String>,
    pub vertices: Vec<Vertex>,
    /// Response writes seen: once a build has them, steps are attributed from them only.
    pub responses_seen: u64,
    /// The containers committed into the built image and its parents (legacy builder, from
    /// dockerd's image store once the image id is known): the build's step containers.
    pub image_chain: Vec<String>,
    pub outbound: BTreeMap<(String, u16, String, String), OutboundConnection>,
    /// The Dockerfile the daemon received, or the one a builder tool's command names.
    pub dockerfile: Option<crate::output::record::DockerfileText>,
    /// `build_started` is written.
    pub announced: bool,
    /// While `build_started` waits for the Dockerfile: until when.
    pub dockerfile_due: Option<Timestamp>,
    pub evidence: Evidence,
}

impl BuildSession {
    pub fn new(build_id: String, builder: &str, started: Timestamp, daemon_pid: u32) -> Self {
        BuildSession {
            build_id,
            builder: builder.to_string(),
            client: ApiClient {
                transport: "unknown".into(),
                ..Default::default()
            },
            user_agent: None,
            params: BuildParams::default(),
            started,
            last_activity: started,
            partial: false,
            daemon_pid,
            conn: None,
            tool_pid: None,
            buildkit_build_id: None,
            steps: Vec::new(),
            base_images: Vec::new(),
            image_id: None,
            stored_image_id: None,
            tags: Vec::new(),
            outcome: None,
            ending_since: None,
            close_when_announced: false,
            current_instruction: None,
            vertices: Vec::new(),
            responses_seen: 0,
            image_chain: Vec::new(),
            outbound: BTreeMap::new(),
            dockerfile: None,
            announced: false,
            dockerfile_due: None,
            evidence: Evidence::default(),
        }
    }

    /// A legacy build whose client asked for quiet output: the stream does not name its step
    /// containers, so they wait for the image chain (or for it to be the only candidate).
    pub fn quiet_legacy(&self) -> bool {
        self.builder == "legacy" && self.params.quiet && self.conn.is_some()
    }

    /// Whether BuildKit executors started by `daemon` can be this build's steps.
    pub fn runs_executors_of(&self, daemon: u32) -> bool {
        (self.builder == "buildkit" && self.daemon_pid == daemon)
            || (self.builder == "buildctl" && (self.daemon_pid == 0 || self.daemon_pid == daemon))
    }

    pub fn touch(&mut self, ts: Timestamp) {
        if ts > self.last_activity {
            self.last_activity = ts;
        }
    }

    pub fn add_record(&mut self, id: u64) {
        // Id 0: a process seeded from /proc at start, which has no record of its own.
        if id != 0
            && self.evidence.record_ids.len() < MAX_EVIDENCE
            && !self.evidence.record_ids.contains(&id)
        {
            self.evidence.record_ids.push(id);
        }
    }

    pub fn add_pid(&mut self, pid: u32) {
        if pid != 0 && self.evidence.pids.len() < MAX_EVIDENCE && !self.evidence.pids.contains(&pid)
        {
            self.evidence.pids.push(pid);
        }
    }

    pub fn add_base(&mut self, reference: &str) {
        if !self.base_images.iter().any(|b| b.reference == reference) {
            self.base_images.push(BaseImage {
                reference: reference.to_string(),
                image_id: None,
            });
        }
    }

    pub fn add_tag(&mut self, tag: &str) {
        if !self.tags.iter().any(|t| t == tag) {
            self.tags.push(tag.to_string());
        }
    }

    /// Marks the end as seen; the first outcome wins over later ones, except that a failure
    /// overrides a success claim (an error after the image id means the build failed).
    pub fn end(&mut self, outcome: Outcome, ts: Timestamp) {
        match (&self.outcome, &outcome) {
            (None, _) | (Some(Outcome::Succeeded), Outcome::Failed(_)) => {
                self.outcome = Some(outcome)
            }
            _ => {}
        }
        self.ending_since.get_or_insert(ts);
    }

    pub fn remember_vertex(&mut self, v: Vertex) {
        if let Some(reference) = from_reference(&v.name) {
            self.add_base(reference);
        }
        if let Some(old) = self
            .vertices
            .iter_mut()
            .find(|o| o.digest == v.digest && o.name == v.name)
        {
            old.started |= v.started;
            old.completed |= v.completed;
            if v.error.is_some() {
                old.error = v.error;
            }
        } else if self.vertices.len() < MAX_VERTICES {
            self.vertices.push(v);
        }
    }

    /// The BuildKit vertex name for a RUN whose shell text is `run_text`, if this build has one.
    pub fn vertex_for_run(&self, run_text: &str) -> Option<&str> {
        self.vertices
            .iter()
            .find(|v| run_instruction(&v.name) == Some(run_text))
            .map(|v| v.name.as_str())
    }

    /// Adds one connection or DNS query to the outbound summary.
    #[allow(clippy::too_many_arguments)]
    pub fn add_outbound(
        &mut self,
        addr: &str,
        port: u16,
        protocol: &str,
        dns_name: Option<&str>,
        made_by: String,
        failed: bool,
        ts: Timestamp,
        policy: impl FnOnce() -> String,
    ) {
        let key = (
            format!(
                "{addr}{}",
                dns_name.map(|n| format!(" {n}")).unwrap_or_default()
            ),
            port,
            protocol.to_string(),
            made_by.clone(),
        );
        if let Some(o) = self.outbound.get_mut(&key) {
            o.count += 1;
            o.failed += u64::from(failed);
            if ts > o.last {
                o.last = ts;
            }
            return;
        }
        if self.outbound.len() >= MAX_OUTBOUND {
            return;
        }
        self.outbound.insert(
            key,
            OutboundConnection {
                dst_addr: addr.to_string(),
                dst_port: port,
                protocol: protocol.to_string(),
                dns_name: dns_name.map(str::to_string),
                first: ts,
                last: ts,
                count: 1,
                failed: u64::from(failed),
                made_by,
                policy: policy(),
            },
        );
    }

    /// The `build_started` record; `dockerfile_status` as documented on the field.
    pub fn started_record(&self, dockerfile_status: &str) -> BuildStarted {
        BuildStarted {
            build_id: self.build_id.clone(),
            builder: self.builder.clone(),
            client: self.client.clone(),
            user_agent: self.user_agent.clone(),
            params: self.params.clone(),
            partial: self.partial,
            evidence: self.evidence.clone(),
            started: self.started,
            dockerfile: self.dockerfile.clone(),
            dockerfile_status: dockerfile_status.to_string(),
        }
    }

    /// The `build_finished` record. `why_unseen` explains a build whose end was not seen.
    pub fn finished_record(mut self, now: Timestamp, why_unseen: Option<&str>) -> BuildFinished {
        let end = self.ending_since.unwrap_or(now).max(self.last_activity);
        let (status, mut error) = match (&self.outcome, why_unseen) {
            (Some(Outcome::Succeeded), _) => ("succeeded", None),
            (Some(Outcome::Failed(e)), _) => ("failed", Some(e.clone())),
            (Some(Outcome::Cancelled(e)), _) => ("cancelled", Some(e.clone())),
            (None, why) => ("unknown", why.map(str::to_string)),
        };
        let failed_step = if status == "failed" || status == "unknown" {
            let code = error.as_deref().and_then(failure_exit_code);
            self.steps
                .iter()
                .rev()
                .find(|s| match (code, s.exit_code) {
                    (Some(c), Some(e)) => c == e,
                    (None, Some(e)) => e != 0,
                    _ => s.signal.is_some(),
                })
                .map(|s| s.index)
        } else {
            None
        };
        if status == "unknown" && failed_step.is_some() && error.is_none() {
            error = Some("a step failed; the end of the build was not seen".into());
        }
        let image_id = match status {
            "succeeded" => self
                .image_id
                .clone()
                .or_else(|| self.stored_image_id.clone()),
            _ => None,
        };
        let mut tags = self.params.tags.clone();
        for t in std::mem::take(&mut self.tags) {
            if !tags.contains(&t) {
                tags.push(t);
            }
        }
        if status != "succeeded" {
            tags.clear();
        }
        // A BuildKit build of a remote context has its Dockerfile from the tarball the daemon
        // downloads (or its unpack): with neither written, the context came from its cache.
        let dockerfile_missing = (self.dockerfile.is_none()
            && !self.partial
            && self.builder == "buildkit"
            && self.params.remote.is_some())
        .then(|| "cached_remote_context".to_string());
        BuildFinished {
            build_id: self.build_id,
            builder: self.builder,
            client: self.client,
            user_agent: self.user_agent,
            params: self.params,
            base_images: self.base_images,
            steps: self.steps,
            started: self.started,
            duration_ms: end.millis_since(&self.started),
            status: status.to_string(),
            failed_step,
            error,
            image_id,
            tags,
            partial: self.partial || why_unseen.is_some() && self.outcome.is_none(),
            outbound: self.outbound.into_values().collect(),
            dockerfile: self.dockerfile,
            evidence: self.evidence,
            dockerfile_missing,
        }
    }
}
