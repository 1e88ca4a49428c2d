//! T1612 live: a raw `POST /build` sent from a remote address to an Engine API TCP listener (a
//! second dockerd), reconstructed as a build with a TCP client, its build-arg redacted, and the
//! `build_via_tcp_api` finding naming the remote address.
//!
//! Run as root after `cargo build --release -p sensor`:
//! `cargo test -p sensor-tests --test builds_tcp_api -- --test-threads=1`.

use std::path::Path;
use std::time::Duration;

use sensor_tests::*;

const WAIT: Duration = Duration::from_secs(90);

/// T1612: a raw `POST /v1.41/build` sent with curl from a test host's network namespace to a
/// second dockerd's TCP listener on this host's test interface.
#[test]
fn post_build_over_the_tcp_api_from_a_remote_address() {
    let sc = Scenario::new("running the sensor and a second dockerd");
    let daemon = TcpDockerd::start(BASE_IMAGE);
    let mut sensor = sc.start_sensor(&[
        "--stats-interval",
        "0",
        "--kinds",
        "sensor_started,build_started,build_finished,finding,api_request",
    ]);
    let tag = unique_tag("builds-tcp");
    let ctx = BuildContext::new(&format!(
        "FROM {BASE_IMAGE}\nARG TOKEN\nRUN echo built-over-tcp\n"
    ));
    let tar = ctx.tar();
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
    let s = build_record(&sensor, "build_started", &tag, WAIT);
    let f = build_record(&sensor, "build_finished", &tag, WAIT);
    eprintln!("{f}");
    assert_eq!(s["build_id"], f["build_id"]);
    assert_eq!(s["dockerfile_status"], "captured", "{s}");
    assert_eq!(s["dockerfile"]["source"], "daemon_write", "{s}");
    for r in [&s, &f] {
        assert_fields(
            r,
            &[
                ("builder", eq("legacy")),
                ("client.transport", eq("tcp")),
                ("client.addr", eq(client_ip.as_str())),
                (
                    "client.port",
                    satisfies("a port > 0", |p| p.as_u64().is_some_and(|p| p > 0)),
                ),
                ("client.listener", eq(listener.to_string())),
                ("user_agent", starts_with("curl/")),
                ("partial", eq(false)),
            ],
        );
    }
    assert_fields(
        &f,
        &[
            ("status", eq("succeeded")),
            ("params.build_args.TOKEN", eq("<redacted>")),
            ("image_id", eq(daemon.image_id(&tag))),
        ],
    );
    assert_eq!(
        build_steps(&f),
        [("/bin/sh -c echo built-over-tcp".to_string(), Some(0))]
    );
    // The request came to the second engine, not to the main one.
    sensor.expect_record(
        "api_request",
        &[
            ("endpoint", eq("/build")),
            ("client.transport", eq("tcp")),
            ("process.pid", eq(daemon.pid())),
        ],
        WAIT,
    );

    // The detection engine's T1612 finding names the remote address.
    let finding = sensor.expect_record(
        "finding",
        &[
            ("rule", eq("build_via_tcp_api")),
            ("build_id", eq(f["build_id"].clone())),
        ],
        Duration::from_secs(10),
    );
    eprintln!("{finding}");
    assert_fields(
        &finding,
        &[
            ("details.remote_addr", eq(client_ip.as_str())),
            ("details.listener", eq(listener.to_string())),
            ("summary", contains(client_ip.as_str())),
            ("attack", contains("T1612")),
        ],
    );

    sensor.stop().unwrap();
    for line in sensor.raw_lines() {
        assert!(
            !line.contains("tcp-s3cr3t"),
            "a build-arg value leaked: {line}"
        );
    }
    drop(daemon);
    assert!(!Path::new(TCP_DOCKERD_SOCKET).exists());
}
