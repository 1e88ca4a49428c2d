//! Build sessions, live, beyond `docker build` on the main engine: a raw `POST /build` over an
//! Engine API TCP listener (T1612), a sensor started in the middle of a build, buildah, and
//! build-arg redaction in the raw records.
//!
//! Run as root after `cargo build --release -p sensor`:
//! `cargo test -p sensor-tests --test builds_more -- --test-threads=1`.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use sensor_tests::{
    BuildContext, Builder, Cmd, Dockerd, SensorProcess, TcpDockerd, TestHost, build_record,
    docker_cli, ensure_base_image, remove_image, require_root, run, unique_tag,
};
use serde_json::Value;

const BASE: &str = "localbase:1";
const WAIT: Duration = Duration::from_secs(90);

fn finished(sensor: &SensorProcess, tag: &str) -> Value {
    build_record(sensor, "build_finished", tag, WAIT)
}

fn started(sensor: &SensorProcess, tag: &str) -> Value {
    build_record(sensor, "build_started", tag, WAIT)
}

fn steps(f: &Value) -> Vec<(String, Option<i64>)> {
    f["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["command"].as_str().unwrap().to_string(),
                s["exit_code"].as_i64(),
            )
        })
        .collect()
}

fn image_id(tag: &str) -> String {
    let out = run(
        docker_cli(),
        &["image", "inspect", "--format", "{{.Id}}", tag],
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A tar of a directory holding only `Dockerfile`, written next to it.
fn context_tar(dir: &Path, dockerfile: &str) -> std::path::PathBuf {
    std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
    let tar = dir.join("context.tar");
    run(
        "tar",
        &[
            "-C",
            dir.to_str().unwrap(),
            "-cf",
            tar.to_str().unwrap(),
            "Dockerfile",
        ],
    );
    tar
}

/// T1612: a raw `POST /v1.41/build` sent with curl from a test host's network namespace to a
/// second dockerd's TCP listener on this host's test interface.
#[test]
fn post_build_over_the_tcp_api_from_a_remote_address() {
    require_root("running the sensor and a second dockerd");
    Dockerd::ensure();
    let daemon = TcpDockerd::start(BASE);
    let mut sensor = SensorProcess::start(&[
        "--stats-interval",
        "0",
        "--kinds",
        "sensor_started,build_started,build_finished,finding,api_request",
    ])
    .expect("sensor start");
    let tag = unique_tag("builds-tcp");
    let dir = tempfile::tempdir().unwrap();
    let tar = context_tar(
        dir.path(),
        &format!("FROM {BASE}\nARG TOKEN\nRUN echo built-over-tcp\n"),
    );
    let listener = daemon.listener();
    let url = format!(
        "http://{listener}/v1.41/build?t={tag}&nocache=1&buildargs=%7B%22TOKEN%22%3A%22tcp-s3cr3t%22%7D"
    );
    let out = daemon.curl_from_client(
        &[
            "-sS".into(),
            "--max-time".into(),
            "240".into(),
            "-X".into(),
            "POST".into(),
            "-H".into(),
            "Content-Type: application/x-tar".into(),
            "--data-binary".into(),
            format!("@{}", tar.display()),
            url,
        ],
        Duration::from_secs(260),
    );
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.contains("Successfully built"),
        "{body}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let client_ip = daemon.client_host().ip().to_string();
    let s = started(&sensor, &tag);
    let f = finished(&sensor, &tag);
    eprintln!("{f}");
    assert_eq!(s["build_id"], f["build_id"]);
    assert_eq!(s["dockerfile_status"], "captured", "{s}");
    assert_eq!(s["dockerfile"]["source"], "daemon_write", "{s}");
    for r in [&s, &f] {
        assert_eq!(r["builder"], "legacy", "{r}");
        assert_eq!(r["client"]["transport"], "tcp", "{r}");
        assert_eq!(r["client"]["addr"], client_ip.as_str(), "{r}");
        assert!(r["client"]["port"].as_u64().is_some_and(|p| p > 0), "{r}");
        assert_eq!(
            r["client"]["listener"],
            listener.to_string().as_str(),
            "{r}"
        );
        assert!(
            r["user_agent"]
                .as_str()
                .is_some_and(|u| u.starts_with("curl/")),
            "{r}"
        );
        assert_eq!(r["partial"], false, "{r}");
    }
    assert_eq!(f["status"], "succeeded", "{f}");
    assert_eq!(f["params"]["build_args"]["TOKEN"], "<redacted>", "{f}");
    assert_eq!(f["image_id"].as_str().unwrap(), daemon.image_id(&tag));
    assert_eq!(
        steps(&f),
        [("/bin/sh -c echo built-over-tcp".to_string(), Some(0))]
    );
    // The request came to the second engine, not to the main one.
    let req = sensor
        .wait_for(
            |r| {
                r["kind"] == "api_request"
                    && r["endpoint"] == "/build"
                    && r["client"]["transport"] == "tcp"
            },
            WAIT,
        )
        .unwrap();
    assert_eq!(req["process"]["pid"], daemon.pid(), "{req}");

    // The detection engine's T1612 finding names the remote address.
    let finding = sensor
        .wait_for(
            |r| {
                r["kind"] == "finding"
                    && r["rule"] == "build_via_tcp_api"
                    && r["build_id"] == f["build_id"]
            },
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("no build_via_tcp_api finding: {e:#}"));
    eprintln!("{finding}");
    assert_eq!(
        finding["details"]["remote_addr"],
        client_ip.as_str(),
        "{finding}"
    );
    assert_eq!(
        finding["details"]["listener"],
        listener.to_string().as_str(),
        "{finding}"
    );
    assert!(
        finding["summary"].as_str().unwrap().contains(&client_ip),
        "{finding}"
    );
    assert!(
        finding["attack"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "T1612"),
        "{finding}"
    );

    sensor.stop().unwrap();
    for line in sensor.raw_lines() {
        assert!(
            !line.contains("tcp-s3cr3t"),
            "a build-arg value leaked: {line}"
        );
    }
    drop(daemon);
    assert!(!Path::new(sensor_tests::TCP_DOCKERD_SOCKET).exists());
}

/// Whether a process whose command line contains `needle` is running.
fn process_running(needle: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(needle)
            })
            .unwrap_or(false)
    })
}

fn has_step(f: &Value, needle: &str) -> bool {
    f["steps"].as_array().is_some_and(|s| {
        s.iter()
            .any(|s| s["command"].as_str().is_some_and(|c| c.contains(needle)))
    })
}

/// The sensor starts while the first RUN (a sleep) runs: the build is still reported, partial.
fn sensor_started_mid_build(builder: Builder) {
    require_root("running the sensor and dockerd");
    Dockerd::ensure();
    ensure_base_image(BASE);
    let tag = unique_tag(&format!("builds-partial-{builder:?}"));
    let marker = tag.replace([':', '.'], "-");
    let ctx = BuildContext::new(&format!(
        "FROM {BASE}\nRUN sleep 8 && echo first-{marker}\nRUN echo second-{marker}\n"
    ));
    let build = {
        let (path, tag) = (ctx.path().to_path_buf(), tag.clone());
        thread::spawn(move || sensor_tests::docker_build(&path, &tag, builder))
    };
    // Start the sensor once the first step runs.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !process_running(&format!("first-{marker}")) {
        assert!(
            Instant::now() < deadline,
            "the first step did not start within 60 s"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let mut sensor = SensorProcess::start(&[
        "--stats-interval",
        "0",
        "--kinds",
        "sensor_started,build_started,build_finished,sensor_stats",
    ])
    .expect("sensor start");
    assert!(
        process_running(&format!("first-{marker}")),
        "the first step ended before the sensor started: retry"
    );
    build.join().unwrap();
    let second = format!("echo second-{marker}");
    let f = sensor
        .wait_for(
            |r| r["kind"] == "build_finished" && has_step(r, &second),
            WAIT,
        )
        .unwrap_or_else(|e| panic!("no build_finished with step {second}: {e:#}"));
    eprintln!("{f}");
    assert_eq!(f["partial"], true, "{f}");
    assert_eq!(f["client"]["transport"], "unknown", "{f}");
    let expect_builder = if builder == Builder::BuildKit {
        "buildkit"
    } else {
        "legacy"
    };
    assert_eq!(f["builder"], expect_builder, "{f}");
    let seen = steps(&f);
    match builder {
        // The running step was seeded from /proc; the export (an image stored in dockerd's
        // image store while this was its only open build) ends the build.
        Builder::BuildKit => {
            assert_eq!(
                seen,
                [
                    (
                        format!("/bin/sh -c sleep 8 && echo first-{marker}"),
                        Some(0)
                    ),
                    (format!("/bin/sh -c {second}"), Some(0)),
                ],
                "{f}"
            );
            assert_eq!(f["status"], "succeeded", "{f}");
            assert_eq!(f["image_id"].as_str().unwrap(), image_id(&tag), "{f}");
        }
        // A running container is not taken for a build step (it could be anything), and the
        // end of a legacy build is on its connection, not watched: status unknown.
        Builder::Legacy => {
            assert_eq!(seen, [(format!("/bin/sh -c {second}"), Some(0))], "{f}");
            assert_eq!(f["status"], "unknown", "{f}");
            assert!(
                f["error"].as_str().is_some_and(|e| e.contains("partial")),
                "{f}"
            );
        }
    }
    sensor.stop().unwrap();
    remove_image(&tag);
}

#[test]
fn sensor_started_mid_buildkit_build_reports_it_partial() {
    sensor_started_mid_build(Builder::BuildKit);
}

#[test]
fn sensor_started_mid_legacy_build_reports_it_partial() {
    sensor_started_mid_build(Builder::Legacy);
}

/// buildah / podman: copies the offline base image from the main engine into containers/storage
/// (`buildah pull docker-daemon:...`, no registry).
fn ensure_containers_storage_base() {
    Dockerd::ensure();
    ensure_base_image(BASE);
    Cmd::new("buildah")
        .args(["pull", "--quiet", &format!("docker-daemon:{BASE}")])
        .timeout(Duration::from_secs(120))
        .run();
}

/// `buildah bud` / `podman build` of a Containerfile whose RUN fetches from a test host.
fn builder_tool_build(tool: &str) {
    require_root("running the sensor and buildah");
    assert!(
        Path::new(&format!("/usr/bin/{tool}")).exists(),
        "{tool} is not installed: the setup installs it (apt-get install -y {tool})"
    );
    ensure_containers_storage_base();
    let host = TestHost::new(&format!("builds-{tool}"));
    host.serve_http(8092, &[("payload", b"payload-for-the-tool\n")]);
    let url = host.url(8092, "payload");
    let mut sensor = SensorProcess::start(&[
        "--stats-interval",
        "0",
        "--kinds",
        "sensor_started,build_started,build_finished,dns_query",
    ])
    .expect("sensor start");
    let tag = unique_tag(&format!("builds-{tool}"));
    let text = format!(
        "FROM docker.io/library/{BASE}\nARG TOKEN=s3cret\n# a comment\nRUN wget -q -O /x {url}\nRUN echo second > /y\n"
    );
    let ctx = BuildContext::new(&text);
    std::fs::rename(
        ctx.path().join("Dockerfile"),
        ctx.path().join("Containerfile"),
    )
    .unwrap();
    let verb = if tool == "buildah" { "bud" } else { "build" };
    // --pull=never: the base is local, no registry is asked; host network: the step reaches the
    // test host through this host's routes (no CNI bridge and its iptables rules).
    let out = Cmd::new(tool)
        .args([verb, "--pull=never", "--network", "host", "-t", &tag])
        .arg(ctx.path())
        .timeout(Duration::from_secs(300))
        .run();
    let built = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .trim()
        .to_string();
    let s = started(&sensor, &tag);
    let f = finished(&sensor, &tag);
    eprintln!("{f}");
    assert_eq!(s["build_id"], f["build_id"]);
    assert_eq!(f["builder"], tool, "{f}");
    // The Containerfile the tool reads in place, from its command line (nothing writes it).
    let expect = text.replace("TOKEN=s3cret", "TOKEN=<redacted>");
    for r in [&s, &f] {
        let d = &r["dockerfile"];
        assert_eq!(d["source"], "build_command", "{r}");
        assert_eq!(d["text"], expect.as_str(), "{r}");
        assert!(
            d["path"].as_str().unwrap().ends_with("/Containerfile"),
            "{r}"
        );
        assert_eq!(d["truncated"], false, "{r}");
    }
    assert_eq!(s["dockerfile_status"], "captured", "{s}");
    assert_eq!(f["client"]["transport"], "local", "{f}");
    assert_eq!(
        f["client"]["exe"],
        format!("/usr/bin/{tool}").as_str(),
        "{f}"
    );
    assert!(f["client"]["pid"].as_u64().is_some_and(|p| p > 0), "{f}");
    assert_eq!(f["client"]["argv"][1], verb, "{f}");
    assert_eq!(f["status"], "succeeded", "{f}");
    assert_eq!(f["partial"], false, "{f}");
    assert_eq!(f["params"]["pull"], false, "{f}");
    assert_eq!(
        steps(&f),
        [
            (format!("/bin/sh -c wget -q -O /x {url}"), Some(0)),
            ("/bin/sh -c echo second > /y".to_string(), Some(0))
        ]
    );
    assert!(
        f["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["attribution"] == "process_tree"),
        "{f}"
    );
    let ip = host.ip().to_string();
    assert!(
        f["outbound"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["dst_addr"] == ip.as_str() && o["dst_port"] == 8092 && o["made_by"] == "1"),
        "outbound to the test host by step 1 expected: {f}"
    );
    assert!(built.len() >= 12, "the tool printed no image id: {built:?}");
    sensor.stop().unwrap();
    // Nothing asked a DNS server (the build must stay on this host).
    assert!(
        sensor.records_of_kind("dns_query").is_empty(),
        "{:?}",
        sensor.records_of_kind("dns_query")
    );
    let _ = Cmd::new(tool)
        .args(["rmi", "-f", &tag])
        .timeout(Duration::from_secs(60))
        .output();
}

#[test]
fn buildah_bud_is_reconstructed() {
    builder_tool_build("buildah");
}

#[test]
fn podman_build_is_reconstructed() {
    builder_tool_build("podman");
}

/// `--build-arg SECRET=hunter2` (docker CLI, both builders) and `buildargs` in a curl URL: the
/// value is in no record at all, raw kinds included.
#[test]
fn build_arg_values_are_in_no_record() {
    require_root("running the sensor and dockerd");
    Dockerd::ensure();
    ensure_base_image(BASE);
    let mut sensor =
        SensorProcess::start(&["--stats-interval", "0", "--raw"]).expect("sensor start");
    let mut tags = Vec::new();
    for builder in [Builder::Legacy, Builder::BuildKit] {
        let tag = unique_tag(&format!("builds-secret-{builder:?}"));
        let ctx = BuildContext::new(&format!(
            "FROM {BASE}\nARG SECRET\nRUN test -n \"$SECRET\"\n"
        ));
        Cmd::new(docker_cli())
            .env("DOCKER_BUILDKIT", builder.env_value())
            .args([
                "build",
                "--no-cache",
                "--build-arg",
                "SECRET=hunter2",
                "-t",
                &tag,
            ])
            .arg(ctx.path())
            .timeout(Duration::from_secs(300))
            .run();
        tags.push(tag);
    }
    let tag = unique_tag("builds-secret-curl");
    let dir = tempfile::tempdir().unwrap();
    let tar = context_tar(
        dir.path(),
        &format!("FROM {BASE}\nARG SECRET\nRUN test -n \"$SECRET\"\n"),
    );
    let out = Cmd::new("curl")
        .args([
            "-sS",
            "--unix-socket",
            sensor_tests::DOCKER_SOCKET,
            "-X",
            "POST",
        ])
        .args(["-H", "Content-Type: application/x-tar", "--data-binary"])
        .arg(format!("@{}", tar.display()))
        .arg(format!(
            "http://localhost/v1.41/build?t={tag}&buildargs=%7B%22SECRET%22%3A%22hunter2%22%7D"
        ))
        .timeout(Duration::from_secs(300))
        .run();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Successfully built"));
    tags.push(tag);
    for tag in &tags {
        let f = finished(&sensor, tag);
        assert_eq!(f["status"], "succeeded", "{f}");
        assert_eq!(f["params"]["build_args"]["SECRET"], "<redacted>", "{f}");
    }
    sensor.stop().unwrap();
    let lines = sensor.raw_lines();
    // The records that carried the value before: the API request's client argv (the docker CLI
    // is not in a tracked tree, so its own exec is not recorded) and query (curl).
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"api_request\"") && l.contains("SECRET=<redacted>"))
    );
    assert!(lines.iter().any(|l| l.contains("\"api_request\"")
        && l.contains("buildargs=%7B%22SECRET%22%3A%22%3Credacted%3E%22%7D")));
    for line in &lines {
        assert!(
            !line.contains("hunter2"),
            "a build-arg value leaked: {line}"
        );
    }
    for tag in &tags {
        remove_image(tag);
    }
}
