//! Build-arg values, live: given to `docker build --build-arg` (both builders) or in a raw
//! `POST /build`'s `buildargs`, they are redacted in every record, raw kinds included.
//!
//! Run as root after `cargo build --release -p sensor`:
//! `cargo test -p sensor-tests --test builds_redaction -- --test-threads=1`.

use std::time::Duration;

use sensor_tests::*;

const WAIT: Duration = Duration::from_secs(90);

/// `--build-arg SECRET=hunter2` (docker CLI, both builders) and `buildargs` in a curl URL: the
/// value is in no record at all, raw kinds included.
#[test]
fn build_arg_values_are_in_no_record() {
    let sc = Scenario::new("running the sensor and dockerd");
    let mut sensor = sc.start_sensor(&["--stats-interval", "0", "--raw"]);
    let dockerfile = format!("FROM {BASE_IMAGE}\nARG SECRET\nRUN test -n \"$SECRET\"\n");
    let mut tags = Vec::new();
    for builder in [Builder::Legacy, Builder::BuildKit] {
        let tag = sc.tag(&format!("builds-secret-{builder:?}"));
        let ctx = BuildContext::new(&dockerfile);
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
    let tag = sc.tag("builds-secret-curl");
    let body = curl_build(
        &dockerfile,
        &format!("t={tag}&buildargs=%7B%22SECRET%22%3A%22hunter2%22%7D"),
    );
    assert!(body.contains("Successfully built"), "{body}");
    tags.push(tag);
    for tag in &tags {
        let f = build_record(&sensor, "build_finished", tag, WAIT);
        assert_fields(
            &f,
            &[
                ("status", eq("succeeded")),
                ("params.build_args.SECRET", eq("<redacted>")),
            ],
        );
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
}
