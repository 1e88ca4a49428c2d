//! One end-to-end test's scenario: the setup every test repeats, and the cleanup of everything
//! it made, through `Drop`, so that it also happens when the test fails or panics.
//!
//! [`Scenario::new`] checks for root, makes sure the shared dockerd is up (it starts it when
//! down, and never stops it) and the offline base image exists, and makes a temporary
//! directory. Through the scenario the test then names what it creates, and the scenario
//! removes it when dropped: images ([`Scenario::tag`], [`Scenario::build`],
//! [`Scenario::image`]), containers ([`Scenario::container_name`]), test hosts
//! ([`Scenario::host`]), the temporary directory. The sensor ([`Scenario::start_sensor`]) is a
//! [`SensorProcess`], itself a guard: declared after the scenario, it is dropped (killed)
//! before the scenario removes the rest.
//!
//! ```no_run
//! use std::time::Duration;
//! use sensor_tests::*;
//!
//! let sc = Scenario::new("a fetching build");
//! let peer = sc.host("payload");
//! peer.serve_http(8080, &[("payload", b"x")]);
//! let sensor = sc.start_sensor(&["--state-dir", &sc.state_dir()]);
//! let tag = sc.build(
//!     "fetching-build",
//!     &format!("FROM {BASE_IMAGE}\nRUN wget -q -O /x {}\n", peer.url(8080, "payload")),
//!     Builder::BuildKit,
//! );
//! sensor.expect_record("build_finished", &[("tags", contains(tag.as_str()))], Duration::from_secs(60));
//! ```

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::{
    BuildContext, Builder, Cmd, Dockerd, SensorProcess, TestHost, docker_cli, ensure_base_image,
    remove_image, require_root, unique_tag,
};

/// The offline base image (busybox-static) every scenario makes sure of.
pub const BASE_IMAGE: &str = "localbase:1";

/// The setup and cleanup of one end-to-end test; see the module documentation.
pub struct Scenario {
    dockerd: Dockerd,
    /// Containers to `docker rm -f`.
    containers: Mutex<Vec<String>>,
    /// Image references to `docker rmi -f`.
    images: Mutex<Vec<String>>,
    /// (tool, reference) to `buildah rmi -f` / `podman rmi -f` (containers-storage).
    storage_images: Mutex<Vec<(String, String)>>,
    /// Test hosts, removed after the containers that may talk to them.
    hosts: Mutex<Vec<Arc<TestHost>>>,
    dir: tempfile::TempDir,
}

impl Scenario {
    /// Root, dockerd, the base image, a temporary directory. `what` says what the test needs
    /// root for, in the message when it is not root.
    pub fn new(what: &str) -> Scenario {
        require_root(what);
        let dockerd = Dockerd::ensure();
        ensure_base_image(BASE_IMAGE);
        let dir = tempfile::Builder::new()
            .prefix("sensor-tests-scenario-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
        Scenario {
            dockerd,
            containers: Mutex::new(Vec::new()),
            images: Mutex::new(Vec::new()),
            storage_images: Mutex::new(Vec::new()),
            hosts: Mutex::new(Vec::new()),
            dir,
        }
    }

    /// The shared engine.
    pub fn dockerd(&self) -> &Dockerd {
        &self.dockerd
    }

    /// The scenario's temporary directory (removed at the end).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `name` inside the temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `<dir>/state` as a string, for `--state-dir`: the sensor creates it.
    pub fn state_dir(&self) -> String {
        self.path("state").to_string_lossy().into_owned()
    }

    /// Writes `text` to `name` in the temporary directory, write-then-rename so that a sensor
    /// watching the file never reads half of it; returns the path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("{}: {e}", tmp.display()));
        std::fs::rename(&tmp, &path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path
    }

    /// Starts the sensor with the test's flags and waits for `sensor_started`; panics with its
    /// stderr when it does not start.
    pub fn start_sensor(&self, args: &[&str]) -> SensorProcess {
        SensorProcess::start(args).unwrap_or_else(|e| panic!("the sensor did not start: {e:#}"))
    }

    /// A sensor keeping its state in [`Self::state_dir`] (so that a restart sees the previous
    /// run's), stats off, only the record kinds given (comma-separated).
    pub fn start_stateful_sensor(&self, kinds: &str) -> SensorProcess {
        let state_dir = self.state_dir();
        self.start_sensor(&[
            "--stats-interval",
            "0",
            "--state-dir",
            &state_dir,
            "--kinds",
            kinds,
        ])
    }

    /// A unique image tag ([`unique_tag`]), its image removed at the end.
    pub fn tag(&self, prefix: &str) -> String {
        let tag = unique_tag(prefix);
        self.image(&tag);
        tag
    }

    /// Removes the image `reference` at the end (one the test makes under a name of its own,
    /// such as a registry's).
    pub fn image(&self, reference: &str) {
        lock(&self.images).push(reference.to_string());
    }

    /// Removes `reference` from containers-storage with `tool rmi -f` (buildah, podman) at the
    /// end.
    pub fn storage_image(&self, tool: &str, reference: &str) {
        lock(&self.storage_images).push((tool.to_string(), reference.to_string()));
    }

    /// A container name unique to this test (`prefix-PID-SEQ`), the container removed at the
    /// end.
    pub fn container_name(&self, prefix: &str) -> String {
        let tag = unique_tag(prefix);
        let name = tag.split_once(':').map_or(tag.as_str(), |(repo, _)| repo);
        lock(&self.containers).push(name.to_string());
        name.to_string()
    }

    /// `docker build` of `dockerfile` (no cache) as a fresh tag from `prefix`, with `builder`;
    /// returns the tag (its image removed at the end). Panics with the build output on failure.
    pub fn build(&self, prefix: &str, dockerfile: &str, builder: Builder) -> String {
        let tag = self.tag(prefix);
        BuildContext::new(dockerfile).build(&tag, builder);
        tag
    }

    /// A test host in a network namespace of its own, removed at the end (after the sensor
    /// and the containers).
    pub fn host(&self, name: &str) -> Arc<TestHost> {
        let host = Arc::new(TestHost::new(name));
        lock(&self.hosts).push(host.clone());
        host
    }

    /// `docker <args>` with the tests' CLI; panics with stderr when it fails.
    pub fn docker(&self, args: &[&str]) -> Output {
        Cmd::new(docker_cli()).args(args).run()
    }

    /// `docker <args>`'s stdout, trimmed.
    pub fn docker_out(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.docker(args).stdout)
            .trim()
            .to_string()
    }

    /// The id (`sha256:...`) of the image `tag` on the main engine.
    pub fn image_id(&self, tag: &str) -> String {
        self.docker_out(&["image", "inspect", "--format", "{{.Id}}", tag])
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        // Containers first (they hold their images), then the images; errors are ignored: the
        // test may have removed them itself.
        for name in std::mem::take(&mut *lock(&self.containers)) {
            let _ = Cmd::new(docker_cli())
                .args(["rm", "-f", &name])
                .timeout(Duration::from_secs(60))
                .try_run();
        }
        for reference in std::mem::take(&mut *lock(&self.images)) {
            remove_image(&reference);
        }
        for (tool, reference) in std::mem::take(&mut *lock(&self.storage_images)) {
            let _ = Cmd::new(tool)
                .args(["rmi", "-f", &reference])
                .timeout(Duration::from_secs(60))
                .try_run();
        }
        // The hosts' namespaces go when their last handle does; the directory after this.
        lock(&self.hosts).clear();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
