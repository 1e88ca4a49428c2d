//! Builds by the daemonless builder tools, live: `buildah bud` and `podman build` on
//! containers-storage, reconstructed from their process trees.
//!
//! Run as root after `cargo build --release -p sensor`:
//! `cargo test -p sensor-tests --test builds_buildah_podman -- --test-threads=1`.

use std::path::Path;
use std::time::Duration;

use sensor_tests::*;

const WAIT: Duration = Duration::from_secs(90);

/// `buildah bud` / `podman build` of a Containerfile whose RUN fetches from a test host; the
/// offline base image is copied from the main engine into containers-storage first (no
/// registry).
fn builder_tool_build(tool: &str) {
    let sc = Scenario::new("running the sensor and buildah");
    assert!(
        Path::new(&format!("/usr/bin/{tool}")).exists(),
        "{tool} is not installed: the setup installs it (apt-get install -y {tool})"
    );
    let base = storage_base(BASE_IMAGE);
    let host = sc.host(&format!("builds-{tool}"));
    host.serve_http(8092, &[("payload", b"payload-for-the-tool\n")]);
    let url = host.url(8092, "payload");
    let mut sensor = sc.start_sensor(&[
        "--stats-interval",
        "0",
        "--kinds",
        "sensor_started,build_started,build_finished,dns_query",
    ]);
    let tag = unique_tag(&format!("builds-{tool}"));
    sc.storage_image(tool, &tag);
    let text = format!(
        "FROM {base}\nARG TOKEN=s3cret\n# a comment\nRUN wget -q -O /x {url}\nRUN echo second > /y\n"
    );
    let ctx = BuildContext::new(&text);
    std::fs::rename(
        ctx.path().join("Dockerfile"),
        ctx.path().join("Containerfile"),
    )
    .unwrap();
    let verb = if tool == "buildah" { "bud" } else { "build" };
    // --pull=never (storage_build): the base is local, no registry is asked; host network: the
    // step reaches the test host through this host's routes (no CNI bridge and its iptables
    // rules). storage_build fails unless the tool printed the image id.
    storage_build(tool, ctx.path(), &tag, &["--network", "host"]);
    let s = build_record(&sensor, "build_started", &tag, WAIT);
    let f = build_record(&sensor, "build_finished", &tag, WAIT);
    eprintln!("{f}");
    assert_eq!(s["build_id"], f["build_id"]);
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
    assert_fields(
        &f,
        &[
            ("builder", eq(tool)),
            ("client.transport", eq("local")),
            ("client.exe", eq(format!("/usr/bin/{tool}"))),
            (
                "client.pid",
                satisfies("a pid > 0", |p| p.as_u64().is_some_and(|p| p > 0)),
            ),
            ("client.argv.1", eq(verb)),
            ("status", eq("succeeded")),
            ("partial", eq(false)),
            ("params.pull", eq(false)),
            (
                "steps",
                satisfies("steps all attributed by process_tree", |s| {
                    s.as_array()
                        .is_some_and(|s| s.iter().all(|s| s["attribution"] == "process_tree"))
                }),
            ),
        ],
    );
    assert_eq!(
        build_steps(&f),
        [
            (format!("/bin/sh -c wget -q -O /x {url}"), Some(0)),
            ("/bin/sh -c echo second > /y".to_string(), Some(0))
        ]
    );
    assert!(
        has_outbound(&f, &host.ip().to_string(), 8092, "1"),
        "outbound to the test host by step 1 expected: {f}"
    );
    sensor.stop().unwrap();
    // Nothing asked a DNS server (the build must stay on this host).
    assert!(
        sensor.records_of_kind("dns_query").is_empty(),
        "{:?}",
        sensor.records_of_kind("dns_query")
    );
}

#[test]
fn buildah_bud_is_reconstructed() {
    builder_tool_build("buildah");
}

#[test]
fn podman_build_is_reconstructed() {
    builder_tool_build("podman");
}
