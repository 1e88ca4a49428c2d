//! A build as the Engine API carries it: its `POST /build` request opens a session on the
//! client's connection, and the daemon's response stream on that connection (legacy steps and
//! their containers, BuildKit's progress, the result) feeds and ends it.
use super::*;

impl BuildTracker {
    pub(super) fn on_request(&mut self, rec: &Record, r: &ApiRequest, out: &mut Vec<Body>) {
        let conn = (r.process.pid, r.fd);
        // A new request on a build's connection means that build's response is over.
        if let Some(key) = self.by_conn.remove(&conn) {
            let why = "the client sent another request on the build's connection";
            self.close(key, rec.ts, Some(why), out);
        }
        match ApiCall::interpret(&r.method, &r.endpoint, r.query.as_deref()) {
            ApiCall::Build { query } => {
                let req = params::parse_build_query(
                    &query,
                    r.content_type.as_deref(),
                    self.cfg.show_build_args,
                );
                let id = format!("b-{}-{}-{}", rec.ts.unix_nanos(), r.process.pid, r.fd);
                let mut s = BuildSession::new(id, req.builder, rec.ts, r.process.pid);
                s.client = r.client.clone();
                crate::process::client_origin::place_client(&mut s.client, &self.cfg.paths);
                if !self.cfg.show_build_args {
                    s.client.argv = crate::process::redact::redact_argv(&s.client.argv);
                }
                s.user_agent = r.user_agent.clone();
                s.params = req.params;
                s.conn = Some(conn);
                s.buildkit_build_id = query.non_empty("buildid").map(str::to_string);
                s.add_record(rec.id);
                s.add_pid(r.client.pid.unwrap_or(0));
                self.open(s, rec.ts, out);
            }
            ApiCall::BuildCancel { id } => {
                if let Some(b) = self
                    .builds
                    .values_mut()
                    .find(|b| b.buildkit_build_id.is_some() && b.buildkit_build_id == id)
                {
                    b.add_record(rec.id);
                    b.end(
                        Outcome::Cancelled("cancelled by the client (POST /build/cancel)".into()),
                        rec.ts,
                    );
                }
            }
            ApiCall::ContainerStart { reference } => {
                if self.api_containers.len() >= MAX_API_CONTAINERS {
                    self.api_containers.pop_front();
                }
                self.api_containers.push_back(reference);
            }
            ApiCall::ImageCreate { .. } | ApiCall::ImagePush { .. } => {
                self.daemon_image_requests.insert(r.process.pid, rec.ts);
            }
            ApiCall::ContainerCreate { .. } | ApiCall::Other => {}
        }
    }

    /// One write dockerd made on a watched connection (the `api_response` record).
    pub fn on_response(
        &mut self,
        record_id: u64,
        ts: Timestamp,
        pid: u32,
        fd: i32,
        text: &str,
        out: &mut Vec<Body>,
    ) {
        let events = response::parse(text);
        let key = match self.by_conn.get(&(pid, fd)) {
            Some(k) => *k,
            None => {
                // A build whose request came before the sensor started.
                let Some(builder) = response::looks_like_build(&events) else {
                    return;
                };
                let adopt = self
                    .builds
                    .iter()
                    .find(|(_, b)| {
                        b.partial
                            && b.conn.is_none()
                            && b.builder == builder
                            && (b.daemon_pid == pid || b.daemon_pid == 0)
                    })
                    .map(|(k, _)| *k);
                match adopt {
                    Some(k) => {
                        if let Some(b) = self.builds.get_mut(&k) {
                            b.conn = Some((pid, fd));
                            b.daemon_pid = pid;
                        }
                        self.by_conn.insert((pid, fd), k);
                        k
                    }
                    None => {
                        let id = format!("b-{}-{}-{}", ts.unix_nanos(), pid, fd);
                        let mut s = BuildSession::new(id, builder, ts, pid);
                        s.partial = true;
                        s.conn = Some((pid, fd));
                        self.open(s, ts, out)
                    }
                }
            }
        };
        let Some(b) = self.builds.get_mut(&key) else {
            return;
        };
        b.responses_seen += 1;
        b.add_record(record_id);
        b.touch(ts);
        let mut response_ended = false;
        for ev in events {
            match ev {
                StreamEvent::Step(line) => {
                    if let Some(r) = response::from_reference(&line) {
                        b.add_base(r);
                    }
                    b.current_instruction = Some(line);
                }
                StreamEvent::RunningIn(short) => {
                    if self.running_in.len() < MAX_PENDING * 4 {
                        self.running_in
                            .insert(short, (key, b.current_instruction.clone()));
                    }
                }
                StreamEvent::Layer(short) => {
                    let after_from = b
                        .current_instruction
                        .as_deref()
                        .and_then(response::from_reference);
                    if let Some(r) = after_from
                        && let Some(base) = b
                            .base_images
                            .iter_mut()
                            .find(|x| x.reference == r && x.image_id.is_none())
                    {
                        base.image_id = Some(short);
                    }
                }
                StreamEvent::ImageId(id) => {
                    if b.builder == "legacy" && b.image_chain.is_empty() {
                        b.image_chain =
                            crate::process::host::docker_image_chain(&self.cfg.paths, &id);
                    }
                    b.image_id = Some(id);
                    b.end(Outcome::Succeeded, ts);
                }
                StreamEvent::End => response_ended = true,
                StreamEvent::SuccessfullyBuilt(_) => b.end(Outcome::Succeeded, ts),
                StreamEvent::SuccessfullyTagged(t) => b.add_tag(&t),
                StreamEvent::Error(m) => b.end(Outcome::Failed(m), ts),
                StreamEvent::Vertex(v) => b.remember_vertex(v),
                StreamEvent::Status(s) => {
                    if let Some(name) = s.strip_prefix("naming to ") {
                        if b.params.tags.is_empty() {
                            b.add_tag(name.trim_end_matches(" done").trim());
                        }
                    } else if let Some(id) = s.strip_prefix("writing image ") {
                        let id = id.split_whitespace().next().unwrap_or("");
                        if id.starts_with("sha256:") && b.image_id.is_none() {
                            b.image_id = Some(id.to_string());
                        }
                    }
                }
            }
        }
        self.resolve_pending(ts, false, out);
        if response_ended {
            // Every step has run and the image is written: nothing more is coming for this
            // build, so its record goes out now rather than after a grace period. Unless it
            // waits for its Dockerfile: a fast (cached) build's response is often read before
            // the file event of its Dockerfile (file events are read after the kernel's ring
            // buffer is drained); it is closed when that comes, or at its deadline.
            match self.builds.get_mut(&key) {
                Some(b) if b.dockerfile_due.is_some() => {
                    b.close_when_announced = true;
                    b.ending_since.get_or_insert(ts);
                }
                _ => self.close(key, ts, Some(RESPONSE_ENDED), out),
            }
        }
    }
}
