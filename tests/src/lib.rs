//! End-to-end test harness for the sensor.
//!
//! Tests follow the pulsar pattern: start the sensor, trigger something real on this host (a
//! `docker build`, a container that talks to a test host), then assert on the NDJSON records the
//! sensor wrote. The pieces:
//!
//! - [`Dockerd::ensure`] reuses or starts the Docker engine, [`ensure_base_image`] makes an
//!   offline base image from busybox-static (no registry is reachable);
//! - [`TestHost`] is a peer in a network namespace of its own, reached from containers and build
//!   steps through the host; network traffic in tests goes only to loopback or to these hosts;
//! - [`SensorProcess`] runs `sensor run ...` and collects its records;
//! - [`run`] / [`Cmd`] run a command and fail with its stderr shown;
//! - [`Scenario`] does a test's setup (root, dockerd, base image, temporary directory, the
//!   sensor) and removes what it made when dropped, failed or not;
//! - [`SensorProcess::expect_record`] and [`assert_fields`] check records field by field and
//!   say which fields differed, in the nearest records.
//!
//! Tests run as root, one at a time: `cargo test -p sensor-tests -- --test-threads=1`.
//!
//! ```no_run
//! use std::time::Duration;
//! use sensor_tests::*;
//!
//! Dockerd::ensure();
//! ensure_base_image("localbase:1");
//! let peer = TestHost::new("payload");
//! peer.serve_http(8080, &[("payload", b"x")]);
//! let mut sensor = SensorProcess::start(&[]).unwrap();
//!
//! let tag = unique_tag("fetching-build");
//! BuildContext::new(&format!(
//!     "FROM localbase:1\nRUN wget -q -O /x {}\n",
//!     peer.url(8080, "payload")
//! ))
//! .build(&tag, Builder::BuildKit);
//!
//! sensor
//!     .wait_for(|r| r["kind"] == "some_kind", Duration::from_secs(30))
//!     .unwrap();
//! assert!(sensor.stop().unwrap().success());
//! remove_image(&tag);
//! ```

mod cmd;
mod docker;
mod expect;
mod netns;
mod records;
mod registry;
mod scenario;
mod sensor;
mod tcp_dockerd;

pub use cmd::{Cmd, DEFAULT_TIMEOUT, run, run_env};
pub use docker::{
    BuildContext, Builder, DOCKER_SOCKET, Dockerd, curl_build, docker_build, docker_build_quiet,
    docker_cli, ensure_base_image, remove_image, storage_base, storage_build,
};
pub use docker::{ContainerGuard, ImageGuard};
pub use expect::{
    Expect, absent, assert_fields, contains, eq, field, matches, mismatches, nearest, present,
    satisfies, starts_with,
};
pub use netns::{TcpSink, TestHost};
pub use records::{assert_records_match_schema, build_record, build_steps, has_outbound, has_tag};
pub use registry::LocalRegistry;
pub use scenario::{BASE_IMAGE, Scenario};
pub use sensor::{SensorProcess, sensor_bin};
pub use tcp_dockerd::{TCP_DOCKERD_PORT, TCP_DOCKERD_SOCKET, TcpDockerd};

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Fails the calling test with a clear reason unless it runs as root.
///
/// Tests that need root (dockerd, network namespaces, loading eBPF) must fail rather than pass
/// silently when run unprivileged, so that a green run always means the thing was exercised.
pub fn require_root(what: &str) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        panic!(
            "{what} needs root (euid is {euid}): run the tests as root, \
             e.g. `sudo -E cargo test -p sensor-tests -- --test-threads=1`"
        );
    }
}

/// Whether a record's `argv` has an element containing `needle`.
pub fn argv_has(r: &serde_json::Value, needle: &str) -> bool {
    r["argv"].as_array().is_some_and(|a| {
        a.iter()
            .any(|s| s.as_str().is_some_and(|s| s.contains(needle)))
    })
}

/// Whether `r` is the `build_finished` record of the build that tagged `tag`.
pub fn is_build_finished_for(r: &serde_json::Value, tag: &str) -> bool {
    r["kind"] == "build_finished"
        && r["tags"]
            .as_array()
            .is_some_and(|t| t.iter().any(|x| x == tag))
}

/// A name unique to this call in this process, fit for an image tag: `prefix-PID-SEQ:tNANOS`.
///
/// The prefix is lowercased and characters Docker refuses in a repository name become `-`.
pub fn unique_tag(prefix: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let repo: String = prefix
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let repo = repo.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let repo = if repo.is_empty() { "t" } else { repo };
    format!("{repo}-{}-{seq}:t{nanos}", std::process::id())
}

/// A loopback TCP port free now: bound, then released for a server the test starts.
pub fn free_loopback_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot bind a loopback port: {e}"))
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// The last `n` lines of a file, for error messages; says so when the file cannot be read.
pub fn tail_file(path: &std::path::Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => tail_lines(&String::from_utf8_lossy(&bytes), n),
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_tag_is_a_valid_reference_and_unique() {
        let a = unique_tag("My Build/Test");
        let b = unique_tag("My Build/Test");
        assert_ne!(a, b);
        let (repo, tag) = a.split_once(':').unwrap();
        assert!(repo.starts_with("my-build-test-"), "{a}");
        assert!(
            repo.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c)),
            "{a}"
        );
        assert!(tag.starts_with('t'), "{a}");
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_lines("a", 5), "a");
    }
}
