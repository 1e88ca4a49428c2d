//! The Dockerfile of a build, as the daemon received it: comments, ENV, LABEL and ARG lines
//! included (the progress stream shows none of them), ARG defaults redacted, its digest, its
//! instructions, and the policy's patterns over them (`build_suspicious_instruction`).
use std::thread;
use std::time::Duration;

use sensor_tests::*;

const WAIT: Duration = Duration::from_secs(90);

fn sha256_hex(bytes: &[u8]) -> String {
    let out = Cmd::new("sha256sum").stdin(bytes.to_vec()).run();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn check(sensor: &SensorProcess, tag: &str, text: &str, ip: &str) {
    let finished = build_record(sensor, "build_finished", tag, WAIT);
    assert_fields(&finished, &[("status", eq("succeeded"))]);
    let build_id = finished["build_id"].as_str().unwrap();
    let d = sensor.expect_record("build_dockerfile", &[("build_id", eq(build_id))], WAIT);
    let got = d["text"].as_str().unwrap();
    assert!(got.contains("# fetch the tool"), "comments are kept: {d}");
    assert!(got.contains("LABEL team=payments"), "{d}");
    assert!(
        got.contains("ARG TOKEN=<redacted>"),
        "ARG defaults are redacted: {d}"
    );
    assert!(!got.contains("s3cret"), "{d}");
    assert_fields(
        &d,
        &[
            ("sha256", eq(sha256_hex(text.as_bytes()))),
            ("size", eq(text.len())),
            ("truncated", eq(false)),
        ],
    );
    // build_finished carries the same text and digest (it is written after the Dockerfile).
    let finished = build_record(sensor, "build_finished", tag, WAIT);
    assert_fields(
        &finished,
        &[
            ("dockerfile.sha256", eq(d["sha256"].clone())),
            ("dockerfile.text", eq(d["text"].clone())),
        ],
    );
    // build_started waited for it (at most 500 ms after the request) and carries it too.
    let started = build_record(sensor, "build_started", tag, WAIT);
    assert_eq!(started["build_id"], build_id, "{started}");
    assert_eq!(started["dockerfile_status"], "captured", "{started}");
    assert_eq!(started["dockerfile"]["source"], "daemon_write", "{started}");
    assert_eq!(started["dockerfile"]["sha256"], d["sha256"], "{started}");
    assert_eq!(started["dockerfile"]["text"], d["text"], "{started}");
    assert_eq!(started["started"], finished["started"], "{started}");
    let kws: Vec<&str> = d["instructions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instruction"].as_str().unwrap())
        .collect();
    assert_eq!(kws, ["FROM", "ARG", "ENV", "LABEL", "RUN"], "{d}");
    let f = sensor.expect_record(
        "finding",
        &[
            ("rule", eq("build_suspicious_instruction")),
            ("build_id", eq(build_id)),
        ],
        WAIT,
    );
    assert_fields(
        &f,
        &[
            ("severity", eq("high")),
            ("attack.0", eq("T1612")),
            ("details.matches.0.pattern", eq("download_from_ip_address")),
            ("details.matches.0.line", eq(6)),
            ("details.matches.0.instruction", contains(ip)),
        ],
    );
}

#[test]
fn the_dockerfile_is_recorded_for_each_builder_and_client() {
    let sc = Scenario::new("loading eBPF programs");
    let peer = sc.host("dfile");
    peer.serve_http(8080, &[("tool", b"#!/bin/sh\necho tool\n")]);
    let ip = peer.ip().to_string();
    let mut sensor = sc.start_sensor(&[
        "--state-dir",
        &sc.state_dir(),
        "--kinds",
        "sensor,builds,findings",
    ]);
    let text = format!(
        "FROM {BASE_IMAGE}\nARG TOKEN=s3cret\nENV MODE=prod\nLABEL team=payments\n# fetch the tool\nRUN wget -q -O /tool {} \\\n && chmod +x /tool\n",
        peer.url(8080, "tool")
    );
    let ctx = BuildContext::new(&text);
    for builder in [Builder::BuildKit, Builder::Legacy] {
        let tag = sc.tag("dockerfile");
        let out = ctx.build(&tag, builder);
        assert!(out.status.success(), "{builder:?} build failed");
        check(&sensor, &tag, &text, &ip);
    }
    // A raw API upload with curl: the context tar in the request body.
    let tag = sc.tag("dockerfile-api");
    curl_build(&text, &format!("t={}", tag.replace(':', "%3A")));
    check(&sensor, &tag, &text, &ip);
    let records = sensor.records();
    assert_records_match_schema(&records);
    assert!(sensor.stop().unwrap().success());
}

/// A tar holding one file, `name`, at its root.
fn tarball_of(name: &str, data: &[u8]) -> Vec<u8> {
    let ctx = BuildContext::new("").file(name, data);
    Cmd::new("tar")
        .args(["-C", ctx.path().to_str().unwrap(), "-cf", "-", name])
        .run()
        .stdout
}

/// `POST /build?remote=URL` with curl: the daemon fetches the context (BuildKit: `version=2`).
fn remote_build(tag: &str, dockerfile: &str, url: &str, builder: Builder) {
    let version = if builder == Builder::BuildKit {
        "&version=2"
    } else {
        ""
    };
    let query = format!(
        "t={}&dockerfile={dockerfile}&remote={}{version}",
        tag.replace(':', "%3A"),
        url.replace(':', "%3A").replace('/', "%2F")
    );
    let out = Cmd::new("curl")
        .args(["-sS", "--unix-socket", "/var/run/docker.sock", "-X", "POST"])
        .arg(format!("http://localhost/v1.41/build?{query}"))
        .timeout(Duration::from_secs(300))
        .run();
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
}

/// An HTTP server in a test host's namespace that answers conditional requests as most do
/// (`ETag`, and `304 Not Modified` with that `ETag` for an `If-None-Match` naming it), unlike
/// busybox httpd (no ETag on its 304). Logs `METHOD STATUS` per request; killed on drop.
struct EtagServer {
    child: std::process::Child,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

const ETAG_SERVER: &str = r#"
import hashlib, http.server, os, sys
root, log = sys.argv[2], open(sys.argv[3], "a", buffering=1)
class H(http.server.BaseHTTPRequestHandler):
    def serve(self, body):
        try:
            data = open(os.path.join(root, self.path.lstrip("/")), "rb").read()
        except OSError:
            self.send_response(404); self.end_headers(); log.write(self.command + " 404\n"); return
        etag = '"%s"' % hashlib.sha256(data).hexdigest()[:16]
        asked = [t.strip() for t in self.headers.get("If-None-Match", "").split(",")]
        code = 304 if etag in asked else 200
        self.send_response(code); self.send_header("ETag", etag)
        if code == 200:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if code == 200 and body:
            self.wfile.write(data)
        log.write("%s %d\n" % (self.command, code))
    def do_GET(self): self.serve(True)
    def do_HEAD(self): self.serve(False)
    def log_message(self, *a): pass
http.server.HTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
"#;

impl EtagServer {
    fn start(peer: &TestHost, port: u16, name: &str, data: &[u8]) -> EtagServer {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(name), data).unwrap();
        let log = dir.path().join("requests.log");
        std::fs::write(&log, "").unwrap();
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", peer.netns(), "python3", "-c", ETAG_SERVER])
            .arg(port.to_string())
            .arg(dir.path())
            .arg(&log)
            .spawn()
            .expect("cannot start python3 in the test host");
        let addr = std::net::SocketAddr::from((peer.ip(), port));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the ETag server on {addr} did not accept"
            );
            thread::sleep(Duration::from_millis(50));
        }
        EtagServer {
            child,
            log,
            _dir: dir,
        }
    }

    fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for EtagServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A BuildKit `remote=` build of a URL it fetched before, from a server that answers its
/// conditional request `304 Not Modified`: BuildKit takes the download and the unpack from its
/// cache, nothing is written, and the Dockerfile is only read (not seen without a read hook).
/// The first build has its Dockerfile from the tarball; the second has none, and says why
/// (`dockerfile_missing: cached_remote_context`) instead of leaving it unexplained.
#[test]
fn a_cached_remote_context_is_said_to_be_cached() {
    require_root("loading eBPF programs");
    Dockerd::ensure();
    ensure_base_image("localbase:1");
    let name = format!("cached-{}.Dockerfile", std::process::id());
    let text = format!("FROM localbase:1\nARG TOKEN=s3cret\nLABEL cached={name}\n");
    let tar = tarball_of(&name, text.as_bytes());
    let peer = TestHost::new("dfcached");
    let server = EtagServer::start(&peer, 8090, "ctx.tar", &tar);
    let url = peer.url(8090, "ctx.tar");
    let mut sensor = SensorProcess::start(&["--kinds", "sensor,builds"]).unwrap();
    let (first, second) = (
        unique_tag("dockerfile-cached"),
        unique_tag("dockerfile-cached"),
    );
    remote_build(&first, &name, &url, Builder::BuildKit);
    let f1 = build_record(&sensor, "build_finished", &first, WAIT);
    assert_eq!(f1["status"], "succeeded", "{f1}");
    assert_eq!(f1["dockerfile"]["source"], "remote_context", "{f1}");
    assert_eq!(
        f1["dockerfile"]["sha256"].as_str().unwrap(),
        sha256_hex(text.as_bytes())
    );
    assert!(f1.get("dockerfile_missing").is_none(), "{f1}");
    remote_build(&second, &name, &url, Builder::BuildKit);
    let f2 = build_record(&sensor, "build_finished", &second, WAIT);
    let s2 = build_record(&sensor, "build_started", &second, WAIT);
    assert_eq!(f2["status"], "succeeded", "{f2}");
    // The server was asked conditionally and said not modified: nothing was downloaded.
    let requests = server.requests();
    assert!(
        requests.iter().any(|r| r.ends_with(" 304")),
        "requests: {requests:?}"
    );
    assert!(f2.get("dockerfile").is_none(), "{f2}");
    assert!(s2.get("dockerfile").is_none(), "{s2}");
    assert_eq!(f2["dockerfile_missing"], "cached_remote_context", "{f2}");
    assert_records_match_schema(&sensor.records());
    assert!(sensor.stop().unwrap().success());
    drop(server);
    for t in [&first, &second] {
        remove_image(t);
    }
}

/// A context at a URL (`http://<test host>/ctx.tar`), legacy and BuildKit: the legacy docker
/// CLI fetches such a tarball itself and uploads it (`context_upload`); the BuildKit CLI and a
/// raw `POST /build?remote=URL` have the daemon fetch it. The legacy builder unpacks the
/// Dockerfile to disk; BuildKit writes the downloaded tarball to a snapshot (a file named
/// `context`) and the Dockerfile is taken from it (`source: remote_context`), also when the
/// unpack is cached and nothing writes the Dockerfile itself: the raw BuildKit request below
/// fetches the same bytes the BuildKit CLI's build unpacked a moment before.
#[test]
fn the_dockerfile_of_a_remote_context_is_recorded() {
    require_root("loading eBPF programs");
    Dockerd::ensure();
    ensure_base_image("localbase:1");
    let text = "FROM localbase:1\nARG TOKEN=s3cret\n# remote context\nLABEL from=url\nRUN echo remote > /r\n";
    // A name of its own: other builds on this shared dockerd use `Dockerfile`, and a file is
    // given to the one waiting build whose `dockerfile` parameter names it.
    let name = format!("remote-{}.Dockerfile", std::process::id());
    let tar = tarball_of(&name, text.as_bytes());
    let peer = TestHost::new("dfremote");
    peer.serve_http(8080, &[("ctx.tar", &tar)]);
    let cli_url = peer.url(8080, "ctx.tar");
    // The raw BuildKit request fetches the same bytes from a server of its own, started after
    // the builds before it (seconds later): BuildKit 0.8 (dockerd 20.10) sends every ETag it
    // has stored for a downloaded `context` in `If-None-Match`, and busybox httpd (ETag: mtime
    // and size) answers a match with a 304 without an ETag, which BuildKit refuses ("invalid
    // not-modified ETag"). A file written later has another ETag.
    let raw_url = peer.url(8081, "ctx.tar");
    let mut sensor = SensorProcess::start(&["--kinds", "sensor,builds"]).unwrap();
    let mut tags = Vec::new();
    for (builder, by_daemon) in [
        (Builder::Legacy, false),
        (Builder::BuildKit, false),
        (Builder::Legacy, true),
        (Builder::BuildKit, true),
    ] {
        let tag = unique_tag("dockerfile-remote");
        let url = if by_daemon && builder == Builder::BuildKit {
            &raw_url
        } else {
            &cli_url
        };
        if by_daemon && builder == Builder::BuildKit {
            thread::sleep(Duration::from_millis(1100));
            peer.serve_http(8081, &[("ctx.tar", &tar)]);
        }
        if by_daemon {
            remote_build(&tag, &name, url, builder);
        } else {
            let out = Cmd::new(docker_cli())
                .env("DOCKER_BUILDKIT", builder.env_value())
                .args(["build", "--no-cache", "-f", &name, "-t", &tag, url])
                .timeout(Duration::from_secs(300))
                .run();
            assert!(out.status.success(), "{builder:?} build of {url} failed");
        }
        let what = format!("{builder:?}, fetched by the daemon: {by_daemon}");
        let finished = build_record(&sensor, "build_finished", &tag, WAIT);
        assert_eq!(finished["status"], "succeeded", "{what}: {finished}");
        if by_daemon {
            assert_eq!(
                finished["params"]["remote"],
                url.as_str(),
                "{what}: {finished}"
            );
        } else {
            assert_eq!(
                finished["params"]["context_upload"], true,
                "{what}: {finished}"
            );
        }
        let started = build_record(&sensor, "build_started", &tag, WAIT);
        eprintln!("{what}: {started}");
        let d = &finished["dockerfile"];
        assert_eq!(
            d["text"],
            text.replace("s3cret", "<redacted>").as_str(),
            "{what}: {finished}"
        );
        assert_eq!(d["sha256"].as_str().unwrap(), sha256_hex(text.as_bytes()));
        // BuildKit: from the downloaded tarball (written before any unpack).
        if builder == Builder::BuildKit {
            assert_eq!(d["source"], "remote_context", "{what}: {finished}");
            let path = d["path"].as_str().unwrap();
            assert!(
                path.ends_with(&format!("/context!/{name}")),
                "{what}: {finished}"
            );
        }
        assert_eq!(
            started["dockerfile_status"], "captured",
            "{what}: {started}"
        );
        assert_eq!(
            started["dockerfile"]["text"], d["text"],
            "{what}: {started}"
        );
        tags.push(tag);
    }
    assert_records_match_schema(&sensor.records());
    assert!(sensor.stop().unwrap().success());
    for t in &tags {
        remove_image(t);
    }
}
