//! Tying a step whose build is not known at its exec to exactly one build, or counting it.
use super::session::{BuildSession, MAX_STEPS};
use super::{BuildTracker, Member, PendingKind, PendingStep, Resolution};
use crate::output::record::{Body, BuildStep, Timestamp};

impl BuildTracker {
    /// Tries to tie waiting steps to builds; with `expire`, those past their deadline get the
    /// fallback (the one open build) or are counted as unattributed.
    pub(super) fn resolve_pending(&mut self, now: Timestamp, force: bool, out: &mut Vec<Body>) {
        let mut i = 0;
        while i < self.pending.len() {
            let expired = force || now >= self.pending[i].deadline;
            match self.resolve(&self.pending[i], expired, now) {
                Resolution::Wait => i += 1,
                Resolution::NotABuild => {
                    self.pending.swap_remove(i);
                }
                Resolution::Unattributed => {
                    self.unattributed += 1;
                    self.pending.swap_remove(i);
                }
                Resolution::Build {
                    key,
                    attribution,
                    instruction,
                } => {
                    let p = self.pending.swap_remove(i);
                    let key = if key == 0 {
                        self.open_partial(&p, out)
                    } else {
                        key
                    };
                    self.attach_pending(key, p, attribution, instruction);
                }
            }
        }
    }

    pub(super) fn resolve(&self, p: &PendingStep, expired: bool, now: Timestamp) -> Resolution {
        match &p.kind {
            PendingKind::Container(cid) => {
                let short: String = cid.chars().take(12).collect();
                if let Some((key, instr)) = self.running_in.get(&short) {
                    return Resolution::Build {
                        key: *key,
                        attribution: "response",
                        instruction: instr.clone(),
                    };
                }
                if self
                    .api_containers
                    .iter()
                    .any(|c| cid.starts_with(c.as_str()) || c.starts_with(&short))
                {
                    return Resolution::NotABuild;
                }
                if let Some((key, _)) = self
                    .builds
                    .iter()
                    .find(|(_, b)| b.image_chain.iter().any(|c| c == cid))
                {
                    return Resolution::Build {
                        key: *key,
                        attribution: "image_store",
                        instruction: None,
                    };
                }
                // A quiet legacy build that may own it is still open: its end decides
                // (settle_quiet), not the clock.
                if p.quiet_candidates
                    .iter()
                    .any(|k| self.builds.contains_key(k))
                {
                    return Resolution::Wait;
                }
                if !expired {
                    return Resolution::Wait;
                }
                let legacy: Vec<(&u64, &BuildSession)> = self
                    .builds
                    .iter()
                    .filter(|(_, b)| b.builder == "legacy" && b.outcome.is_none())
                    .collect();
                match legacy.as_slice() {
                    // Without the builder's output (not captured), the one open legacy build.
                    [(k, b)] if b.responses_seen == 0 => Resolution::Build {
                        key: **k,
                        attribution: "only_open_build",
                        instruction: None,
                    },
                    // Output is captured and did not name this container: not a build step.
                    [] | [_] => {
                        if legacy.is_empty() && self.started_recently(now) {
                            Resolution::Build {
                                key: 0,
                                attribution: "only_open_build",
                                instruction: None,
                            }
                        } else {
                            Resolution::NotABuild
                        }
                    }
                    _ => Resolution::Unattributed,
                }
            }
            PendingKind::Executor { daemon, .. } => {
                let cands: Vec<(&u64, &BuildSession)> = self
                    .builds
                    .iter()
                    .filter(|(_, b)| b.outcome.is_none() && b.runs_executors_of(*daemon))
                    .collect();
                // Several were open when the step started: only its RUN text can tell, even
                // after all but one have ended.
                let alone = |k: u64| match p.executor_candidates.as_slice() {
                    [] => true,
                    [only] => *only == k,
                    _ => false,
                };
                let matching: Vec<&(&u64, &BuildSession)> = cands
                    .iter()
                    .filter(|(_, b)| b.vertex_for_run(&p.run_text).is_some())
                    .collect();
                match (cands.as_slice(), matching.as_slice()) {
                    ([], _) if p.executor_candidates.is_empty() => Resolution::Build {
                        key: 0,
                        attribution: "only_open_build",
                        instruction: None,
                    },
                    ([], _) => Resolution::Unattributed,
                    (_, [(k, b)]) => Resolution::Build {
                        key: **k,
                        attribution: "response",
                        instruction: b.vertex_for_run(&p.run_text).map(str::to_string),
                    },
                    ([(k, b)], []) if alone(**k) && (expired || b.responses_seen == 0) => {
                        Resolution::Build {
                            key: **k,
                            attribution: "only_open_build",
                            instruction: None,
                        }
                    }
                    _ if expired => Resolution::Unattributed,
                    _ => Resolution::Wait,
                }
            }
        }
    }

    /// A quiet legacy build `key` is ending: each waiting container step that it could own is
    /// decided now. In its image chain: its step. Not in a chain it has: not its step. No
    /// chain (it failed, or the store cannot be read): its step only when it was the one
    /// candidate; else another candidate's chain may still claim it, and if none does it is
    /// counted as unattributed.
    pub(super) fn settle_quiet(&mut self, key: u64, now: Timestamp, out: &mut Vec<Body>) {
        let Some(b) = self.builds.get(&key) else {
            return;
        };
        if !b.quiet_legacy() {
            return;
        }
        let has_chain = !b.image_chain.is_empty();
        // Steps are attached in the order they started (earlier removals reorder the list).
        self.pending.sort_by_key(|p| p.start);
        let mut i = 0;
        while i < self.pending.len() {
            let p = &mut self.pending[i];
            let PendingKind::Container(cid) = &p.kind else {
                i += 1;
                continue;
            };
            if !p.quiet_candidates.contains(&key) {
                i += 1;
                continue;
            }
            let owned = self
                .builds
                .get(&key)
                .is_some_and(|b| b.image_chain.iter().any(|c| c == cid));
            if owned {
                let p = self.pending.remove(i);
                self.attach_pending(key, p, "image_store", None);
                continue;
            }
            p.quiet_candidates.retain(|k| *k != key);
            if !has_chain {
                if p.quiet_candidates.is_empty() && !p.lost_candidate {
                    let p = self.pending.remove(i);
                    self.attach_pending(key, p, "only_open_build", None);
                    continue;
                }
                // It may have been this build's, and this build can no longer take it.
                p.lost_candidate = true;
            }
            if p.quiet_candidates.is_empty() {
                if p.lost_candidate {
                    self.unattributed += 1;
                }
                self.pending.remove(i);
            } else {
                i += 1;
            }
        }
        self.resolve_pending(now, false, out);
    }

    pub(super) fn started_recently(&self, now: Timestamp) -> bool {
        self.sensor_started
            .is_some_and(|s| now.unix_nanos().saturating_sub(s.unix_nanos()) < self.build_timeout())
    }

    /// A build seen only from its steps: the sensor started after its request.
    pub(super) fn open_partial(&mut self, p: &PendingStep, out: &mut Vec<Body>) -> u64 {
        let (builder, daemon) = match &p.kind {
            PendingKind::Container(_) => ("legacy", 0),
            PendingKind::Executor { daemon, .. } => ("buildkit", *daemon),
        };
        let id = format!(
            "b-{}-{}-p",
            p.start.unix_nanos(),
            if daemon == 0 { p.pid } else { daemon }
        );
        let mut s = BuildSession::new(id, builder, p.start, daemon);
        s.partial = true;
        self.open(s, p.start, out)
    }

    pub(super) fn attach_pending(
        &mut self,
        key: u64,
        p: PendingStep,
        attribution: &'static str,
        instruction: Option<String>,
    ) {
        let Some(b) = self.builds.get_mut(&key) else {
            self.unattributed += 1;
            return;
        };
        if b.steps.len() >= MAX_STEPS {
            return;
        }
        let idx = b.steps.len();
        let cid = match &p.kind {
            PendingKind::Container(c) => c.clone(),
            PendingKind::Executor { id, .. } => id.clone(),
        };
        let instruction = instruction.or_else(|| b.vertex_for_run(&p.run_text).map(str::to_string));
        let mut step = BuildStep {
            index: idx as u32 + 1,
            command: p.command.clone(),
            pid: p.pid,
            start: p.start,
            container_id: Some(cid),
            instruction,
            attribution: Some(attribution.to_string()),
            ..Default::default()
        };
        if let Some((end, code, sig)) = p.exit {
            step.end = Some(end);
            step.exit_code = code;
            step.signal = sig;
        }
        b.steps.push(step);
        b.add_record(p.record_id);
        b.touch(p.start);
        for pid in &p.pids {
            b.add_pid(*pid);
        }
        let exited = p.exit.is_some();
        for &pid in &p.pids {
            if !(exited && pid == p.pid) {
                self.add_member(
                    pid,
                    Member {
                        key,
                        step: Some(idx),
                    },
                );
            }
        }
        for n in p.net {
            self.add_net(key, Some(idx), n);
        }
    }
}
