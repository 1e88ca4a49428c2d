//! The engine over hand-made record streams (and, in `fixtures`, over recorded ones).
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::ingest::recorded::Recorded;
use crate::output::record::{
    ApiClient, BuildFinished, BuildStarted, Connect, ProcessRef, SCHEMA_VERSION,
};
use crate::pipeline::testing::replay_records;
use crate::process::redact::REDACTED;

const DOCKERD: u32 = 100;
const T0: i64 = 1_700_000_000_000_000_000;

struct Stream {
    t: BuildTracker,
    id: u64,
    ns: i64,
    out: Vec<Body>,
}

impl Stream {
    fn new() -> Self {
        Self::with(BuildConfig::default())
    }
    fn with(cfg: BuildConfig) -> Self {
        Stream {
            t: BuildTracker::new(cfg),
            id: 0,
            ns: T0,
            out: Vec::new(),
        }
    }
    fn rec(&mut self, body: Body) -> Record {
        self.id += 1;
        self.ns += 10_000_000;
        Record {
            schema_version: SCHEMA_VERSION,
            id: self.id,
            ts: Timestamp::from_unix_nanos(self.ns),
            host: "h".into(),
            body,
        }
    }
    fn feed(&mut self, body: Body) {
        let r = self.rec(body);
        self.t.observe(&r, &mut self.out);
    }
    fn wait(&mut self, secs: i64) {
        self.ns += secs * 1_000_000_000;
        let now = Timestamp::from_unix_nanos(self.ns);
        self.t.tick(now, &mut self.out);
    }
    fn response(&mut self, fd: i32, text: &str) {
        self.id += 1;
        self.ns += 10_000_000;
        let (id, ts) = (self.id, Timestamp::from_unix_nanos(self.ns));
        self.t.on_response(id, ts, DOCKERD, fd, text, &mut self.out);
    }
    fn request(&mut self, fd: i32, query: &str, client_pid: u32) {
        self.feed(Body::ApiRequest(ApiRequest {
            process: proc_ref(DOCKERD, 1, "dockerd"),
            fd,
            method: "POST".into(),
            path: "/v1.41/build".into(),
            endpoint: "/build".into(),
            api_version: Some("1.41".into()),
            query: Some(query.into()),
            user_agent: Some("Docker-Client/20.10.24 (linux)".into()),
            content_type: Some("application/x-tar".into()),
            content_length: None,
            header_names: vec![],
            truncated: false,
            client: ApiClient {
                transport: "unix".into(),
                pid: Some(client_pid),
                uid: Some(0),
                user: Some("root".into()),
                exe: Some("/usr/bin/docker".into()),
                argv: vec!["docker".into(), "build".into()],
                ..Default::default()
            },
        }));
    }
    fn exec(&mut self, pid: u32, ppid: u32, comm: &str, argv: &[&str]) {
        self.feed(Body::ProcessExec(ProcessExec {
            process: proc_ref(pid, ppid, comm),
            filename: argv[0].into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            argv_truncated: false,
            start_time_ns: 1,
        }));
    }
    fn exit(&mut self, pid: u32, code: i32) {
        self.feed(Body::ProcessExit(ProcessExit {
            process: proc_ref(pid, 0, "x"),
            exit_code: Some(code),
            signal: None,
            duration_ms: None,
        }));
    }
    fn connect(&mut self, pid: u32, addr: &str, port: u16) {
        self.feed(Body::Connect(Connect {
            process: proc_ref(pid, 0, "wget"),
            protocol: "tcp".into(),
            family: "ipv4".into(),
            src_addr: None,
            src_port: None,
            dst_addr: Some(addr.into()),
            dst_port: Some(port),
            path: None,
            result: "established".into(),
            latency_us: None,
        }));
    }
    /// dockerd writing a build's Dockerfile (one chunk, the whole write).
    fn dockerfile(&mut self, fd: i32, path: &str, text: &str) {
        self.feed(Body::FileContent(crate::output::record::FileContent {
            process: ProcessRef {
                role: "runtime".into(),
                ..proc_ref(DOCKERD, 1, "dockerd")
            },
            path: Some(path.into()),
            fd,
            offset: 0,
            write_len: text.len() as u64,
            data: text.into(),
            truncated: false,
        }));
    }
    fn wait_ms(&mut self, ms: i64) {
        self.ns += ms * 1_000_000;
        let now = Timestamp::from_unix_nanos(self.ns);
        self.t.tick(now, &mut self.out);
    }
    fn started(&self) -> Vec<&BuildStarted> {
        self.out
            .iter()
            .filter_map(|b| {
                if let Body::BuildStarted(s) = b {
                    Some(s)
                } else {
                    None
                }
            })
            .collect()
    }
    fn finished(&self) -> Vec<&BuildFinished> {
        self.out
            .iter()
            .filter_map(|b| {
                if let Body::BuildFinished(s) = b {
                    Some(s)
                } else {
                    None
                }
            })
            .collect()
    }
}

fn proc_ref(pid: u32, ppid: u32, comm: &str) -> ProcessRef {
    ProcessRef {
        pid,
        ppid,
        comm: comm.into(),
        role: "descendant".into(),
        ..Default::default()
    }
}

fn stream(lines: &[&str]) -> String {
    lines
        .iter()
        .map(|l| format!("{{\"stream\":{}}}\r\n", serde_json::to_string(l).unwrap()))
        .collect()
}

const CID_A: &str = "aaaaaaaaaaaa1111111111111111111111111111111111111111111111111111";
const CID_B: &str = "bbbbbbbbbbbb2222222222222222222222222222222222222222222222222222";
const IMG: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

/// A legacy step: shim for the container, then the step's shell under it.
fn legacy_step(s: &mut Stream, shim: u32, cid: &str, sh: u32, cmd: &str) {
    s.exec(
        shim,
        50,
        "containerd-shim",
        &[
            "/usr/bin/containerd-shim-runc-v2",
            "-namespace",
            "moby",
            "-id",
            cid,
            "-address",
            "/run/containerd/containerd.sock",
        ],
    );
    s.exec(sh, shim, "sh", &["/bin/sh", "-c", cmd]);
}

#[test]
fn legacy_build_with_params_steps_outbound_and_image_id() {
    let mut s = Stream::new();
    s.request(7, "buildargs=%7B%22SECRET%22%3A%22hunter2%22%7D&dockerfile=Dockerfile&t=x%3A1&t=y%3A2&networkmode=default&nocache=1", 4242);
    assert!(s.started().is_empty(), "held for its Dockerfile");
    s.dockerfile(30, "/Dockerfile", "FROM base:1\nARG K=v\n");
    assert_eq!(s.started().len(), 1);
    assert_eq!(s.started()[0].dockerfile_status, "captured");
    let d = s.started()[0].dockerfile.clone().unwrap();
    assert_eq!(d.text, "FROM base:1\nARG K=<redacted>\n");
    assert_eq!(d.source, "daemon_write");
    assert!(matches!(s.out.last(), Some(Body::BuildDockerfile(_))));
    let st = s.started()[0].clone();
    assert_eq!(st.builder, "legacy");
    assert_eq!(st.client.pid, Some(4242));
    assert_eq!(st.params.tags, vec!["x:1", "y:2"]);
    assert_eq!(
        st.params.build_args.get("SECRET").map(String::as_str),
        Some(REDACTED)
    );
    assert!(st.params.context_upload && st.params.no_cache);
    assert!(!serde_json::to_string(&st).unwrap().contains("hunter2"));

    s.response(
        7,
        &format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{}",
            stream(&["Step 1/2 : FROM localbase:1\n", " ---> 0123456789ab\n"])
        ),
    );
    s.response(
        7,
        &stream(&[
            "Step 2/2 : RUN wget http://10.0.0.2/x\n",
            &format!(" ---> Running in {}\n", &CID_A[..12]),
        ]),
    );
    legacy_step(&mut s, 300, CID_A, 301, "wget http://10.0.0.2/x");
    s.feed(Body::ProcessFork(ProcessFork {
        process: proc_ref(301, 300, "sh"),
        child_pid: 302,
        child_start_time_ns: 2,
    }));
    s.connect(302, "10.0.0.2", 80);
    s.connect(302, "10.0.0.2", 80);
    s.exit(302, 0);
    s.exit(301, 0);
    s.response(
        7,
        &format!(
            "{{\"aux\":{{\"ID\":\"{IMG}\"}}}}\r\n{}",
            stream(&[
                "Successfully built 111111111111\n",
                "Successfully tagged x:1\n"
            ])
        ),
    );
    assert!(s.finished().is_empty(), "waits a moment for trailing lines");
    s.wait(2);
    let f = s.finished();
    assert_eq!(f.len(), 1);
    let f = f[0];
    assert_eq!(f.build_id, st.build_id);
    assert_eq!(f.status, "succeeded");
    assert_eq!(f.image_id.as_deref(), Some(IMG));
    assert_eq!(f.tags, vec!["x:1", "y:2"]);
    assert_eq!(f.base_images.len(), 1);
    assert_eq!(f.base_images[0].reference, "localbase:1");
    assert_eq!(f.base_images[0].image_id.as_deref(), Some("0123456789ab"));
    assert_eq!(f.steps.len(), 1);
    let step = &f.steps[0];
    assert_eq!(step.command, "/bin/sh -c wget http://10.0.0.2/x");
    assert_eq!(step.exit_code, Some(0));
    assert_eq!(step.container_id.as_deref(), Some(CID_A));
    assert_eq!(
        step.instruction.as_deref(),
        Some("Step 2/2 : RUN wget http://10.0.0.2/x")
    );
    assert_eq!(step.attribution.as_deref(), Some("response"));
    assert_eq!(f.outbound.len(), 1);
    let o = &f.outbound[0];
    assert_eq!(
        (
            o.dst_addr.as_str(),
            o.dst_port,
            o.count,
            o.made_by.as_str(),
            o.policy.as_str()
        ),
        ("10.0.0.2", 80, 2, "1", "unknown")
    );
    assert!(f.evidence.pids.contains(&4242) && f.evidence.pids.contains(&302));
    assert!(!f.partial);
    assert_eq!(s.t.open_builds(), 0);
}

#[test]
fn overlapping_legacy_builds_are_kept_apart_and_failure_names_the_step() {
    let mut s = Stream::new();
    s.request(7, "t=a%3A1", 1001);
    s.request(8, "t=b%3A1", 1002);
    s.response(
        8,
        &stream(&[
            "Step 2/2 : RUN exit 3\n",
            &format!(" ---> Running in {}\n", &CID_B[..12]),
        ]),
    );
    s.response(
        7,
        &stream(&[
            "Step 2/2 : RUN sleep 1\n",
            &format!(" ---> Running in {}\n", &CID_A[..12]),
        ]),
    );
    legacy_step(&mut s, 400, CID_B, 401, "exit 3");
    legacy_step(&mut s, 300, CID_A, 301, "sleep 1");
    s.connect(401, "10.0.0.9", 443);
    s.exit(401, 3);
    s.response(8, "{\"errorDetail\":{\"code\":3,\"message\":\"The command '/bin/sh -c exit 3' returned a non-zero code: 3\"},\"error\":\"The command '/bin/sh -c exit 3' returned a non-zero code: 3\"}\r\n");
    s.exit(301, 0);
    s.response(7, &format!("{{\"aux\":{{\"ID\":\"{IMG}\"}}}}\r\n"));
    s.wait(2);
    let f = s.finished();
    assert_eq!(f.len(), 2);
    let a = f.iter().find(|b| b.params.tags == ["a:1"]).unwrap();
    let b = f.iter().find(|b| b.params.tags == ["b:1"]).unwrap();
    assert_eq!(a.status, "succeeded");
    assert_eq!(a.steps.len(), 1);
    assert_eq!(a.steps[0].command, "/bin/sh -c sleep 1");
    assert!(a.outbound.is_empty());
    assert_eq!(a.client.pid, Some(1001));
    assert_eq!(b.status, "failed");
    assert_eq!(b.steps.len(), 1);
    assert_eq!(b.steps[0].exit_code, Some(3));
    assert_eq!(b.failed_step, Some(1));
    assert!(b.error.as_deref().unwrap().contains("non-zero code: 3"));
    assert!(b.image_id.is_none() && b.tags.is_empty());
    assert_eq!(b.outbound.len(), 1);
    let mut d = BTreeMap::new();
    s.t.drops(&mut d);
    assert_eq!(d["steps_unattributed"], 0);
}

fn buildkit_runc(s: &mut Stream, runc: u32, id: &str) {
    let bundle = format!("/var/lib/docker/buildkit/executor/{id}");
    s.exec(
        runc,
        DOCKERD,
        "runc",
        &[
            "runc",
            "--log",
            "/var/lib/docker/buildkit/executor/runc-log.json",
            "--log-format",
            "json",
            "run",
            "--bundle",
            &bundle,
            id,
        ],
    );
    s.exec(runc + 1, runc, "runc:[2:INIT]", &["runc", "init"]);
}

fn trace_line(name: &str, completed: bool) -> String {
    let b64 = super::trace::tests::encode(name, completed, None, &[]);
    format!("{{\"id\":\"moby.buildkit.trace\",\"aux\":\"{b64}\"}}\r\n")
}

#[test]
fn buildkit_single_and_overlapping_builds() {
    let mut s = Stream::new();
    s.request(7, "t=k%3A1&version=2&session=abc&buildid=b1", 2001);
    s.dockerfile(
        30,
        "/var/lib/docker/tmp/buildkit-mount1/Dockerfile",
        "FROM b\n",
    );
    assert_eq!(s.started()[0].builder, "buildkit");
    buildkit_runc(&mut s, 500, "exec1");
    s.exec(502, 500, "sh", &["/bin/sh", "-c", "echo one"]);
    s.exit(502, 0);
    // A second build opens: from now on, steps are told apart by the progress stream.
    s.request(8, "t=k%3A2&version=2&buildid=b2", 2002);
    s.response(8, &trace_line("[2/2] RUN echo two", false));
    s.response(7, &trace_line("[3/3] RUN echo three", false));
    buildkit_runc(&mut s, 600, "exec2");
    s.exec(602, 600, "sh", &["/bin/sh", "-c", "echo two"]);
    buildkit_runc(&mut s, 700, "exec3");
    s.exec(702, 700, "sh", &["/bin/sh", "-c", "echo three"]);
    s.exit(602, 0);
    s.exit(702, 1);
    // A step neither stream names: counted, not guessed.
    buildkit_runc(&mut s, 800, "exec4");
    s.exec(802, 800, "sh", &["/bin/sh", "-c", "echo four"]);
    s.wait(4);
    s.response(7, "{\"errorDetail\":{\"message\":\"executor failed running [/bin/sh -c echo three]: exit code: 1\"},\"error\":\"x\"}\r\n");
    s.response(
        8,
        &format!("{{\"id\":\"moby.image.id\",\"aux\":{{\"ID\":\"{IMG}\"}}}}\r\n"),
    );
    s.wait(2);
    let f = s.finished();
    assert_eq!(f.len(), 2);
    let one = f.iter().find(|b| b.params.tags == ["k:1"]).unwrap();
    let two = f.iter().find(|b| b.params.tags == ["k:2"]).unwrap();
    let cmds = |b: &BuildFinished| {
        b.steps
            .iter()
            .map(|s| s.command.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(cmds(one), ["/bin/sh -c echo one", "/bin/sh -c echo three"]);
    assert_eq!(cmds(two), ["/bin/sh -c echo two"]);
    assert_eq!(one.steps[0].attribution.as_deref(), Some("only_open_build"));
    assert_eq!(
        one.steps[1].instruction.as_deref(),
        Some("[3/3] RUN echo three")
    );
    assert_eq!(one.status, "failed");
    assert_eq!(one.failed_step, Some(2));
    assert_eq!(two.status, "succeeded");
    assert_eq!(two.image_id.as_deref(), Some(IMG));
    assert_eq!(two.steps[0].container_id.as_deref(), Some("exec2"));
    let mut d = BTreeMap::new();
    s.t.drops(&mut d);
    assert_eq!(d["steps_unattributed"], 1);
}

#[test]
fn buildkit_cancel_request_ends_the_build_cancelled() {
    let mut s = Stream::new();
    s.request(7, "version=2&buildid=zz", 1);
    s.feed(Body::ApiRequest(ApiRequest {
        process: proc_ref(DOCKERD, 1, "dockerd"),
        fd: 9,
        method: "POST".into(),
        path: "/v1.41/build/cancel".into(),
        endpoint: "/build/cancel".into(),
        api_version: None,
        query: Some("id=zz".into()),
        user_agent: None,
        content_type: None,
        content_length: None,
        header_names: vec![],
        truncated: false,
        client: ApiClient::default(),
    }));
    s.wait(2);
    assert_eq!(s.finished()[0].status, "cancelled");
}

#[test]
fn build_seen_from_the_middle_is_partial() {
    let mut s = Stream::new();
    buildkit_runc(&mut s, 500, "exec1");
    s.exec(502, 500, "sh", &["/bin/sh", "-c", "echo late"]);
    assert_eq!(s.started().len(), 1);
    assert!(s.started()[0].partial);
    s.exit(502, 0);
    s.wait(40);
    let f = s.finished();
    assert_eq!(f.len(), 1);
    assert!(f[0].partial);
    assert_eq!(f[0].status, "unknown");
    assert_eq!(f[0].steps.len(), 1);
    // A legacy build whose output is seen without its request is partial too.
    let mut s = Stream::new();
    s.response(5, &stream(&["Step 3/4 : RUN true\n"]));
    assert!(s.started()[0].partial && s.started()[0].builder == "legacy");
}

#[test]
fn builder_tool_builds_follow_the_process_tree() {
    let mut s = Stream::new();
    s.exec(
        900,
        1,
        "buildah",
        &["buildah", "bud", "-t", "bh:1", "--build-arg", "A=b", "."],
    );
    assert_eq!(s.started()[0].builder, "buildah");
    assert_eq!(s.started()[0].params.tags, vec!["bh:1"]);
    s.exec(
        901,
        900,
        "runc",
        &[
            "runc",
            "run",
            "--bundle",
            "/var/tmp/buildah123/mnt",
            "buildah-ctr",
        ],
    );
    s.exec(902, 901, "sh", &["/bin/sh", "-c", "echo hi"]);
    s.connect(902, "10.0.0.3", 8080);
    s.exit(902, 0);
    s.exit(900, 0);
    let f = s.finished();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].status, "succeeded");
    assert_eq!(f[0].steps.len(), 1);
    assert_eq!(f[0].steps[0].attribution.as_deref(), Some("process_tree"));
    assert_eq!(f[0].outbound[0].made_by, "1");
}

#[test]
fn bounded_open_builds_and_timeouts_are_counted() {
    let mut s = Stream::with(BuildConfig {
        max_open_builds: 2,
        build_timeout: Duration::from_secs(10),
        ..Default::default()
    });
    s.request(1, "", 1);
    s.request(2, "", 1);
    s.request(3, "", 1);
    assert_eq!(s.t.open_builds(), 2);
    assert_eq!(s.finished().len(), 1);
    assert!(
        s.finished()[0]
            .error
            .as_deref()
            .unwrap()
            .starts_with("evicted")
    );
    s.wait(11);
    assert_eq!(s.t.open_builds(), 0);
    let mut d = BTreeMap::new();
    s.t.drops(&mut d);
    assert_eq!((d["builds_evicted"], d["builds_timed_out"]), (1, 2));
    assert!(
        s.finished()
            .iter()
            .all(|f| f.status == "unknown" && f.partial)
    );
}

#[test]
fn show_build_args_and_policy_classifier() {
    let cfg = BuildConfig {
        show_build_args: true,
        classify: Arc::new(|addr, _, _| {
            if addr.starts_with("10.") {
                "denied".into()
            } else {
                "allowed".into()
            }
        }),
        ..Default::default()
    };
    let mut s = Stream::with(cfg);
    s.request(7, "buildargs=%7B%22A%22%3A%22v%22%2C%22B%22%3Anull%7D", 1);
    s.wait_ms(600);
    assert_eq!(s.started()[0].dockerfile_status, "deadline_passed");
    assert_eq!(
        s.started()[0]
            .params
            .build_args
            .get("A")
            .map(String::as_str),
        Some("v")
    );
    // The daemon's own connection while it is the only build open: made_by daemon.
    s.connect(DOCKERD, "10.1.1.1", 443);
    s.t.finish(Timestamp::from_unix_nanos(T0 + 10_000_000_000), &mut s.out);
    let f = s.finished()[0];
    assert_eq!(f.outbound[0].made_by, "daemon");
    assert_eq!(f.outbound[0].policy, "denied");
    assert_eq!(f.status, "unknown");
}

#[test]
fn query_and_cli_params() {
    let r = params::parse_build_query(
        &crate::proto::api::Query::parse(Some(
            "remote=https%3A%2F%2Fgit.example%2Fr.git&target=prod&platform=linux%2Famd64&pull=1&t=a+b",
        )),
        None,
        false,
    );
    assert_eq!(
        r.params.remote.as_deref(),
        Some("https://git.example/r.git")
    );
    assert!(!r.params.context_upload && r.params.pull);
    assert_eq!(r.params.tags, vec!["a b"]);
    let p = params::parse_cli_args(
        &[
            "build".into(),
            "--output".into(),
            "type=image,name=reg/x:1".into(),
            "--opt".into(),
            "build-arg:TOKEN=s3cr3t".into(),
        ],
        false,
    );
    assert_eq!(p.tags, vec!["reg/x:1"]);
    assert_eq!(
        p.build_args.get("TOKEN").map(String::as_str),
        Some(REDACTED)
    );
    let argv: Vec<String> = [
        "docker",
        "build",
        "--build-arg",
        "A=x",
        "--build-arg=B=y",
        "http://h/build?t=a&buildargs=%7B%7D&q=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(
        crate::process::redact::redact_argv(&argv),
        [
            "docker",
            "build",
            "--build-arg",
            "A=<redacted>",
            "--build-arg=B=<redacted>",
            "http://h/build?t=a&buildargs=%7B%7D&q=1"
        ]
    );
}

#[test]
fn replay_runs_the_engine_over_records() {
    let mut s = Stream::new();
    let req = {
        s.request(7, "t=r%3A1", 1);
        s.wait_ms(600);
        s.rec(Body::SensorStarted(crate::output::record::SensorStarted {
            version: "t".into(),
            kernel: "k".into(),
            probes: vec![],
            probes_failed: BTreeMap::new(),
            probes_unused: BTreeMap::new(),
            kernel_hooks: "socket".into(),
            file_events: "fanotify".into(),
            dns_events: "socket".into(),
            seeded_processes: 0,
            runtime_names: vec![],
            raw: true,
        }))
    };
    let t = BuildTracker::new(BuildConfig::default());
    let derived = replay_records(vec![req], vec![Box::new(t)]);
    assert!(derived.is_empty());
    let t = BuildTracker::new(BuildConfig::default());
    let line = serde_json::to_string(&s.rec(Body::ApiRequest(match &s.out[0] {
        Body::BuildStarted(_) => ApiRequest {
            process: proc_ref(DOCKERD, 1, "dockerd"),
            fd: 3,
            method: "POST".into(),
            path: "/build".into(),
            endpoint: "/build".into(),
            api_version: None,
            query: None,
            user_agent: None,
            content_type: None,
            content_length: None,
            header_names: vec![],
            truncated: false,
            client: ApiClient::default(),
        },
        _ => unreachable!(),
    })))
    .unwrap();
    let text = format!("{line}\n{{\"kind\":\"from_the_future\"}}\n");
    let mut recorded = Recorded::new(text.as_bytes());
    let records: Vec<Record> = recorded.by_ref().map(Result::unwrap).collect();
    assert_eq!(recorded.unknown_kinds().get("from_the_future"), Some(&1));
    let derived = replay_records(records, vec![Box::new(t)]);
    let kinds: Vec<&str> = derived.iter().map(|r| r.body.kind()).collect();
    assert_eq!(kinds, ["build_started", "build_finished"]);
    assert!(derived[0].id > 0);
}

/// build_started waits for the Dockerfile the daemon writes, at most DOCKERFILE_WAIT after the
/// request, and is always written before its build_finished; two waiting builds take a file
/// only by its name.
#[test]
fn build_started_waits_for_the_dockerfile_or_its_deadline() {
    let mut s = Stream::new();
    s.request(7, "t=a%3A1&dockerfile=a.Dockerfile", 1);
    s.request(8, "t=b%3A1", 2);
    assert!(s.started().is_empty());
    // Two wait: the name decides.
    s.dockerfile(30, "/Dockerfile", "FROM b\n");
    assert_eq!(s.started().len(), 1);
    assert_eq!(s.started()[0].params.tags, ["b:1"]);
    assert_eq!(s.started()[0].dockerfile.as_ref().unwrap().text, "FROM b\n");
    // The other one's deadline passes (the stream's time tells, as in a replay).
    s.wait_ms(600);
    assert_eq!(s.started().len(), 2);
    assert_eq!(s.started()[1].dockerfile_status, "deadline_passed");
    assert!(s.started()[1].dockerfile.is_none());
    // Its Dockerfile after the deadline is still the build's (build_dockerfile, build_finished).
    s.dockerfile(31, "/a.Dockerfile", "FROM a\n");
    assert!(matches!(s.out.last(), Some(Body::BuildDockerfile(d)) if d.text == "FROM a\n"));
    s.response(7, "{\"aux\":{\"ID\":\"sha256:aa\"}}\r\n0\r\n\r\n");
    // A build that ends before either: build_started comes first, then build_finished.
    s.request(9, "t=c%3A1", 3);
    s.response(9, "{\"errorDetail\":{\"message\":\"no Dockerfile\"},\"error\":\"no Dockerfile\"}\r\n0\r\n\r\n");
    // (held until its Dockerfile's deadline: its file event could still come)
    s.wait_ms(600);
    let kinds: Vec<&str> = s.out.iter().map(|b| b.kind()).collect();
    let c = s
        .started()
        .into_iter()
        .find(|b| b.params.tags == ["c:1"])
        .unwrap();
    assert_eq!(c.dockerfile_status, "build_ended");
    assert_eq!(
        kinds[kinds.len() - 2..],
        ["build_started", "build_finished"]
    );
    assert_eq!(
        s.finished()[0].dockerfile.as_ref().unwrap().text,
        "FROM a\n"
    );
    assert_eq!(s.t.next_deadline(), None);
}

/// A fast build's end can be read before its Dockerfile's file event (the file events are
/// handled after the kernel's ring buffer is drained): until the build is closed, the file is
/// still its own, and build_started, written when the build closes, carries it.
#[test]
fn a_dockerfile_read_after_the_builds_end_is_still_its_own() {
    let mut s = Stream::new();
    s.request(7, "t=a%3A1&remote=http%3A%2F%2F10.0.0.1%2Fc.tar", 1);
    s.response(
        7,
        "{\"stream\":\"Successfully built 1111111111\\n\"}\r\n0\r\n\r\n",
    );
    assert!(s.started().is_empty() && s.finished().is_empty());
    s.dockerfile(-1, "/Dockerfile", "FROM a\n");
    assert_eq!(s.started().len(), 1);
    assert_eq!(s.started()[0].dockerfile_status, "captured");
    // Closed with it: build_started, build_dockerfile, build_finished.
    let kinds: Vec<&str> = s.out.iter().map(|b| b.kind()).collect();
    assert_eq!(
        kinds[kinds.len() - 3..],
        ["build_started", "build_dockerfile", "build_finished"]
    );
    let f = s.finished()[0];
    assert_eq!(f.status, "succeeded");
    assert_eq!(f.dockerfile.as_ref().unwrap().text, "FROM a\n");
    assert_eq!(s.t.dockerfile_unattributed, 0);
    // No file at all: closed at the deadline, not later.
    s.request(8, "t=b%3A1", 2);
    s.response(
        8,
        "{\"stream\":\"Successfully built 2222222222\\n\"}\r\n0\r\n\r\n",
    );
    assert_eq!(s.finished().len(), 1);
    s.wait_ms(600);
    assert_eq!(s.started()[1].dockerfile_status, "build_ended");
    assert_eq!(s.finished().len(), 2);
    assert_eq!(s.finished()[1].status, "succeeded");
    assert_eq!(s.t.open_builds(), 0);
}

/// A member of a remote context's tarball (`<tarball>!/<member>`, as the file events read it)
/// goes only to a waiting build with a `remote` context whose `dockerfile` is that member's
/// path; the unpack writing the same file again afterwards is that build's evidence, not a
/// file of its own (nor counted unattributed).
#[test]
fn remote_context_members_go_to_the_remote_build_of_that_path() {
    let mut s = Stream::new();
    let tarball = "/var/lib/docker/overlay2/x/diff/context";
    s.request(
        7,
        "t=r%3A1&dockerfile=.%2Fsub%2Fr.Dockerfile&remote=http%3A%2F%2F10.0.0.1%2Fc.tar&version=2",
        1,
    );
    s.request(8, "t=l%3A1&dockerfile=r.Dockerfile&version=2", 2);
    // Another member of that name, at another path: nobody's (the local build takes no
    // member, the remote one wants sub/r.Dockerfile).
    s.dockerfile(-1, &format!("{tarball}!/r.Dockerfile"), "FROM other\n");
    assert!(s.started().is_empty());
    assert_eq!(s.t.dockerfile_unattributed, 1);
    let text = "FROM base:1\nARG T=x\n";
    s.dockerfile(-1, &format!("{tarball}!/sub/r.Dockerfile"), text);
    assert_eq!(s.started().len(), 1);
    let st = s.started()[0];
    assert_eq!(st.params.tags, ["r:1"]);
    assert_eq!(st.dockerfile_status, "captured");
    let d = st.dockerfile.as_ref().unwrap();
    assert_eq!(d.source, "remote_context");
    assert_eq!(d.path, format!("{tarball}!/sub/r.Dockerfile"));
    assert_eq!(d.text, "FROM base:1\nARG T=<redacted>\n");
    // The chrooted untar (dockerd's child) writes it on the first unpack.
    s.feed(Body::FileContent(crate::output::record::FileContent {
        process: proc_ref(300, DOCKERD, "exe"),
        path: Some("/sub/r.Dockerfile".into()),
        fd: -1,
        offset: 0,
        write_len: text.len() as u64,
        data: text.into(),
        truncated: false,
    }));
    let untar_record = s.id;
    assert_eq!(s.t.dockerfile_unattributed, 1);
    assert_eq!(s.started().len(), 1, "the local build is still waiting");
    s.response(7, "{\"aux\":{\"ID\":\"sha256:aa\"}}\r\n0\r\n\r\n");
    let f = s.finished()[0];
    assert_eq!(f.dockerfile.as_ref().unwrap().source, "remote_context");
    assert!(f.evidence.record_ids.contains(&untar_record));
    assert_eq!(f.dockerfile_missing, None);
    // Built again from BuildKit's cache: nothing written. The local build (no remote context)
    // is not said to be cached.
    s.request(
        9,
        "t=r%3A2&dockerfile=.%2Fsub%2Fr.Dockerfile&remote=http%3A%2F%2F10.0.0.1%2Fc.tar&version=2",
        1,
    );
    s.response(9, "{\"aux\":{\"ID\":\"sha256:aa\"}}\r\n0\r\n\r\n");
    s.response(8, "{\"aux\":{\"ID\":\"sha256:bb\"}}\r\n0\r\n\r\n");
    s.wait_ms(600);
    let by_tag = |t: &str| {
        s.finished()
            .into_iter()
            .find(|f| f.params.tags == [t])
            .unwrap()
            .dockerfile_missing
            .clone()
    };
    assert_eq!(by_tag("r:2").as_deref(), Some("cached_remote_context"));
    assert_eq!(by_tag("l:1"), None);
}

/// The sensor starts while a BuildKit step runs: the seeded runc and shell become the first step
/// of a partial build, the next step joins it, and the image export ends it.
#[test]
fn seeded_buildkit_step_opens_a_partial_build_ended_by_the_export() {
    let mut s = Stream::new();
    let seed = |s: &mut Stream, pid: u32, ppid: u32, comm: &str, argv: &[&str]| {
        let rec = Record {
            schema_version: SCHEMA_VERSION,
            id: 0,
            ts: Timestamp::from_unix_nanos(T0 - 5_000_000_000),
            host: "h".into(),
            body: Body::ProcessExec(ProcessExec {
                process: proc_ref(pid, ppid, comm),
                filename: argv[0].into(),
                argv: argv.iter().map(|s| s.to_string()).collect(),
                argv_truncated: false,
                start_time_ns: 1,
            }),
        };
        s.t.seed(&rec, &mut s.out);
    };
    let bundle = "/var/lib/docker/buildkit/executor/abc";
    seed(
        &mut s,
        200,
        DOCKERD,
        "runc",
        &["runc", "--log", "x", "run", "--bundle", bundle, "abc"],
    );
    seed(&mut s, 201, 200, "sh", &["/bin/sh", "-c", "sleep 8"]);
    seed(&mut s, 202, 201, "sleep", &["sleep", "8"]);
    // An ordinary running container (shim → sh) is not taken for a build step.
    seed(
        &mut s,
        300,
        1,
        "containerd-shim",
        &[
            "/usr/bin/containerd-shim-runc-v2",
            "-namespace",
            "moby",
            "-id",
            "c0ffee",
            "-address",
            "/x",
        ],
    );
    seed(&mut s, 301, 300, "sh", &["/bin/sh", "-c", "sleep 1000"]);
    s.wait(1);
    s.exit(202, 0);
    s.exit(201, 0);
    s.exit(200, 0);
    let bundle2 = "/var/lib/docker/buildkit/executor/def";
    s.exec(
        210,
        DOCKERD,
        "runc",
        &["runc", "--log", "x", "run", "--bundle", bundle2, "def"],
    );
    s.exec(211, 210, "sh", &["/bin/sh", "-c", "echo second"]);
    s.exit(211, 0);
    s.exit(210, 0);
    s.wait(4);
    let id = "a".repeat(64);
    s.feed(Body::FileWrite(crate::output::record::FileWrite {
        process: proc_ref(DOCKERD, 1, "dockerd"),
        op: "open_write".into(),
        path: format!("/var/lib/docker/image/overlay2/imagedb/content/sha256/{id}"),
        path_truncated: false,
        flags: Some(0),
    }));
    s.wait(2);
    let finished: Vec<&BuildFinished> = s
        .out
        .iter()
        .filter_map(|b| {
            if let Body::BuildFinished(f) = b {
                Some(f)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(finished.len(), 1, "{:?}", s.out);
    let f = finished[0];
    assert!(f.partial);
    assert_eq!(f.builder, "buildkit");
    assert_eq!(f.status, "succeeded");
    assert_eq!(f.image_id.as_deref(), Some(format!("sha256:{id}").as_str()));
    let cmds: Vec<&str> = f.steps.iter().map(|s| s.command.as_str()).collect();
    assert_eq!(cmds, ["/bin/sh -c sleep 8", "/bin/sh -c echo second"]);
    assert_eq!(f.steps[0].exit_code, Some(0));
    assert!(!f.evidence.record_ids.contains(&0));
}
