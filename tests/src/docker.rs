//! The Docker engine the tests drive: started on demand, an offline base image, builds.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::cmd::{Cmd, run};
use crate::{require_root, tail_file};

/// The Engine API socket the tests use.
pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";

const DOCKERD_PIDFILE: &str = "/var/run/docker.pid";
const DOCKERD_START_TIMEOUT: Duration = Duration::from_secs(60);
const DOCKERD_CANDIDATES: &[&str] = &["/usr/bin/dockerd", "/usr/sbin/dockerd"];
/// Directories searched for system tools besides $PATH: a test run's PATH may lack the sbin ones.
const SYSTEM_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];
/// PATH inside the base image.
const IMAGE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Applets the base image must have; tests rely on them.
const REQUIRED_APPLETS: &[&str] = &["sh", "wget", "true", "sleep", "cat", "nc", "httpd"];

/// The Docker CLI the tests use: the 20.10 client from Debian's docker.io, which does both
/// `DOCKER_BUILDKIT=1` and `DOCKER_BUILDKIT=0` builds (a newer /usr/local/bin/docker without
/// buildx refuses BuildKit builds).
pub fn docker_cli() -> &'static str {
    "/usr/bin/docker"
}

/// A running Docker engine answering on [`DOCKER_SOCKET`].
#[derive(Debug, Clone)]
pub struct Dockerd {
    socket: PathBuf,
    log: Option<PathBuf>,
}

/// Serializes engine start-up between threads of this process; [`FileLock`] does so between
/// processes (test binaries of one `cargo test` run, or two runs at once).
static DOCKERD_START: Mutex<()> = Mutex::new(());

impl Dockerd {
    /// Returns the running engine, starting `dockerd` in the background first when nothing
    /// answers on the socket. The engine is left running for later tests.
    ///
    /// Panics (after up to 60 s) when the engine does not come up, showing where its log is.
    pub fn ensure() -> Dockerd {
        let socket = PathBuf::from(DOCKER_SOCKET);
        if ping(&socket) {
            return Dockerd { socket, log: None };
        }
        require_root("starting dockerd");
        let _serial = DOCKERD_START.lock().unwrap_or_else(|e| e.into_inner());
        let _lock = FileLock::acquire("/tmp/sensor-tests-dockerd.lock");
        if ping(&socket) {
            return Dockerd { socket, log: None };
        }
        match start_dockerd(&socket) {
            Ok(log) => Dockerd { socket, log },
            Err(msg) => panic!("{msg}"),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The log file of the engine when this process started it.
    pub fn log_path(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// The engine's pid, from its pid file.
    pub fn pid(&self) -> Option<u32> {
        fs::read_to_string(DOCKERD_PIDFILE)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }
}

/// Whether the engine answers `GET /_ping` with `OK`.
fn ping(socket: &Path) -> bool {
    let Some(curl) = find_tool("curl") else {
        panic!("curl is not installed: the setup installs it (apt-get install -y curl)");
    };
    Command::new(curl)
        .args(["-s", "--max-time", "3", "--unix-socket"])
        .arg(socket)
        .arg("http://x/_ping")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| o.status.success() && o.stdout == b"OK")
        .unwrap_or(false)
}

/// Starts dockerd and waits for it; returns its log file, or `None` when another process was
/// already starting it.
fn start_dockerd(socket: &Path) -> Result<Option<PathBuf>, String> {
    let deadline = Instant::now() + DOCKERD_START_TIMEOUT;

    // An engine that is still starting (its pid file names a live dockerd): wait for it rather
    // than start a second one, which would refuse to run.
    if let Some(pid) = fs::read_to_string(DOCKERD_PIDFILE)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        && process_name(pid).as_deref() == Some("dockerd")
    {
        while Instant::now() < deadline {
            if ping(socket) {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(250));
        }
        return Err(format!(
            "dockerd (pid {pid}) is running but did not answer on {} within {:?}",
            socket.display(),
            DOCKERD_START_TIMEOUT
        ));
    }

    let dockerd = std::env::var_os("DOCKERD_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            DOCKERD_CANDIDATES
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
        })
        .or_else(|| find_tool("dockerd"))
        .ok_or_else(|| {
            "dockerd is not installed: the setup installs it (apt-get install -y docker.io)"
                .to_string()
        })?;
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let log_path = PathBuf::from(format!(
        "/tmp/sensor-tests-dockerd-{stamp}-{}.log",
        std::process::id()
    ));
    let log = File::create(&log_path)
        .map_err(|e| format!("cannot create dockerd log {}: {e}", log_path.display()))?;
    let log2 = log
        .try_clone()
        .map_err(|e| format!("cannot dup dockerd log: {e}"))?;
    eprintln!(
        "sensor-tests: starting {} (log: {})",
        dockerd.display(),
        log_path.display()
    );
    let mut command = Command::new(&dockerd);
    command
        // dockerd runs containerd, runc and iptables by name: make sure the sbin dirs are there.
        .env("PATH", system_path())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe system
    // calls.
    unsafe {
        command.pre_exec(|| {
            // Its own session: it outlives this test run, its terminal and a Ctrl-C of it.
            libc::setsid();
            // Nothing inherited past stdio (a CI log pipe, say) may be held open by the engine
            // for as long as it runs. CLOEXEC rather than close: std's exec-error pipe must
            // stay open until exec.
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            Ok(())
        })
    };
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", dockerd.display()))?;

    while Instant::now() < deadline {
        if ping(socket) {
            // The child is deliberately not waited for: the engine stays up for later tests.
            return Ok(Some(log_path));
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "dockerd exited ({status}) before answering on {}; log: {}\n{}",
                socket.display(),
                log_path.display(),
                tail_file(&log_path, 40)
            ));
        }
        thread::sleep(Duration::from_millis(250));
    }
    Err(format!(
        "dockerd (pid {}) did not answer on {} within {:?}; log: {}\n{}",
        child.id(),
        socket.display(),
        DOCKERD_START_TIMEOUT,
        log_path.display(),
        tail_file(&log_path, 40)
    ))
}

fn process_name(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// $PATH followed by the usual system directories.
pub(crate) fn system_path() -> String {
    let mut dirs: Vec<String> = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|d| !d.is_empty())
        .map(String::from)
        .collect();
    for d in SYSTEM_DIRS {
        if !dirs.iter().any(|x| x == d) {
            dirs.push((*d).to_string());
        }
    }
    dirs.join(":")
}

/// Finds an executable on $PATH or in the usual system directories.
pub(crate) fn find_tool(name: &str) -> Option<PathBuf> {
    system_path()
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Like [`find_tool`], panicking with what to install when the tool is missing.
pub(crate) fn tool(name: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| {
        panic!("`{name}` is not installed: the project's setup installs it (see xtask / .ci/run)")
    })
}

/// An exclusive `flock` on a file under /tmp, released on drop.
pub(crate) struct FileLock(File);

impl FileLock {
    pub(crate) fn acquire(path: &str) -> FileLock {
        let file = File::options()
            .create(true)
            .append(true)
            .open(path)
            .unwrap_or_else(|e| panic!("cannot open lock file {path}: {e}"));
        // SAFETY: flock on a file descriptor we own; blocking until the lock is ours.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            panic!("cannot lock {path}: {}", std::io::Error::last_os_error());
        }
        FileLock(file)
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: unlocking a descriptor we own; closing it would release the lock anyway.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

static BASE_IMAGE: Mutex<()> = Mutex::new(());

/// Makes sure the image `tag` exists: a base image made offline from busybox-static (a rootfs
/// with `/bin/busybox` and links for all its applets, `docker import`ed). Does nothing when the
/// image is already there. Starts the engine if needed.
pub fn ensure_base_image(tag: &str) {
    Dockerd::ensure();
    let _serial = BASE_IMAGE.lock().unwrap_or_else(|e| e.into_inner());
    let _lock = FileLock::acquire("/tmp/sensor-tests-base-image.lock");
    if image_exists(tag) {
        return;
    }

    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("busybox is not installed: the setup installs it (apt-get install -y busybox-static)")
        });
    let work = tempfile::Builder::new()
        .prefix("sensor-tests-rootfs-")
        .tempdir()
        .expect("cannot create a temporary directory");
    let rootfs = work.path().join("rootfs");
    for dir in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "root", "var", "tmp",
    ] {
        fs::create_dir_all(rootfs.join(dir)).unwrap();
    }
    fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::copy(&busybox, rootfs.join("bin/busybox")).unwrap();
    fs::set_permissions(
        rootfs.join("bin/busybox"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();

    let list = run(busybox.to_str().unwrap(), &["--list-full"]);
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim().trim_start_matches('/');
        if applet.is_empty() || applet.contains("..") || applet == "bin/busybox" {
            continue;
        }
        let link = rootfs.join(applet);
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        if link.symlink_metadata().is_err() {
            symlink("/bin/busybox", &link).unwrap();
        }
    }
    for applet in REQUIRED_APPLETS {
        let found = ["bin", "sbin", "usr/bin", "usr/sbin"]
            .iter()
            .any(|d| rootfs.join(d).join(applet).symlink_metadata().is_ok());
        assert!(
            found,
            "busybox at {} has no `{applet}` applet",
            busybox.display()
        );
    }
    fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(rootfs.join("etc/group"), "root:x:0:\n").unwrap();

    // A dynamically linked busybox (the `busybox` package instead of `busybox-static`) would
    // make an image that cannot run anything: find out here, with a clear message.
    let check = Cmd::new(tool("chroot"))
        .arg(&rootfs)
        .args(["/bin/sh", "-c", "true"])
        .output()
        .expect("running chroot");
    assert!(
        check.status.success(),
        "{} does not run in an empty rootfs (is it busybox-static?): {}",
        busybox.display(),
        String::from_utf8_lossy(&check.stderr)
    );

    let tarball = work.path().join("rootfs.tar");
    Cmd::new(tool("tar"))
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .run();
    Cmd::new(docker_cli())
        .args(["import", "--change"])
        .arg(format!("ENV PATH={IMAGE_PATH}"))
        .args(["--change", "CMD [\"/bin/sh\"]"])
        .arg(&tarball)
        .arg(tag)
        .run();
}

/// Whether `docker image inspect tag` succeeds.
pub fn image_exists(tag: &str) -> bool {
    Cmd::new(docker_cli())
        .args(["image", "inspect", "--format", "{{.Id}}", tag])
        .timeout(Duration::from_secs(30))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Removes an image, ignoring errors (it may not exist).
pub fn remove_image(tag: &str) {
    let _ = Cmd::new(docker_cli())
        .args(["rmi", "-f", tag])
        .timeout(Duration::from_secs(60))
        .output();
}

/// Which image builder `docker build` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builder {
    /// `DOCKER_BUILDKIT=1`: steps run under runc started by dockerd's embedded BuildKit.
    BuildKit,
    /// `DOCKER_BUILDKIT=0`: steps run in intermediate containers via containerd.
    Legacy,
}

impl Builder {
    pub fn env_value(self) -> &'static str {
        match self {
            Builder::BuildKit => "1",
            Builder::Legacy => "0",
        }
    }
}

/// Runs `docker build --no-cache -t tag dir` with the chosen builder (every step really runs).
/// Panics with the build output when it fails or takes longer than 5 minutes.
pub fn docker_build(dir: &Path, tag: &str, builder: Builder) -> Output {
    let mut cmd = Cmd::new(docker_cli())
        .env("DOCKER_BUILDKIT", builder.env_value())
        .args(["build", "--no-cache", "-t", tag])
        .timeout(Duration::from_secs(300));
    if builder == Builder::BuildKit {
        cmd = cmd.arg("--progress=plain");
    }
    cmd.arg(dir).run()
}

/// Runs `docker build -q --no-cache -t tag dir` (quiet: the client is shown only the image id,
/// which it prints) with the chosen builder; returns its output whatever the outcome.
pub fn docker_build_quiet(dir: &Path, tag: &str, builder: Builder) -> Output {
    Cmd::new(docker_cli())
        .env("DOCKER_BUILDKIT", builder.env_value())
        .args(["build", "-q", "--no-cache", "-t", tag])
        .arg(dir)
        .timeout(Duration::from_secs(300))
        .output()
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// A build context in a temporary directory, removed on drop.
#[derive(Debug)]
pub struct BuildContext {
    dir: tempfile::TempDir,
}

impl BuildContext {
    /// A context whose `Dockerfile` has the given text.
    pub fn new(dockerfile: &str) -> BuildContext {
        let dir = tempfile::Builder::new()
            .prefix("sensor-tests-ctx-")
            .tempdir()
            .expect("cannot create a temporary directory");
        let ctx = BuildContext { dir };
        ctx.file("Dockerfile", dockerfile.as_bytes())
    }

    /// Adds a file (subdirectories are created).
    pub fn file(self, name: &str, contents: &[u8]) -> BuildContext {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        let mut f = File::create(&path).unwrap();
        f.write_all(contents).unwrap();
        self
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// [`docker_build`] of this context.
    pub fn build(&self, tag: &str, builder: Builder) -> Output {
        docker_build(self.path(), tag, builder)
    }

    /// A tar of the context's `Dockerfile` (the body of a raw `POST /build`), written inside
    /// the context directory as `context.tar`; returns its path.
    pub fn tar(&self) -> PathBuf {
        let tar = self.path().join("context.tar");
        Cmd::new(tool("tar"))
            .arg("-C")
            .arg(self.path())
            .arg("-cf")
            .arg(&tar)
            .arg("Dockerfile")
            .run();
        tar
    }
}

/// The offline base image copied from the main engine into containers-storage (buildah and
/// podman build from there; no registry is reachable): returns its name there.
pub fn storage_base(base: &str) -> String {
    Cmd::new("buildah")
        .args(["pull", "--quiet", &format!("docker-daemon:{base}")])
        .timeout(Duration::from_secs(120))
        .run();
    format!("docker.io/library/{base}")
}

/// `buildah bud` or `podman build` (`tool`) of `dir` as `tag` on containers-storage, with
/// `args` before the context; returns the image id the tool printed, as `sha256:...`.
pub fn storage_build(tool: &str, dir: &Path, tag: &str, args: &[&str]) -> String {
    let verb = if tool == "buildah" { "bud" } else { "build" };
    let out = Cmd::new(tool)
        .args([verb, "--pull=never"])
        .args(args)
        .args(["-t", tag])
        .arg(dir)
        .timeout(Duration::from_secs(300))
        .run();
    let id = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .trim()
        .to_string();
    assert_eq!(id.len(), 64, "{tool} printed no image id: {id:?}");
    format!("sha256:{id}")
}

/// Removes a container at the end of the test, passed or not.
pub struct ContainerGuard(pub String);

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let _ = Cmd::new(docker_cli()).args(["rm", "-f", &self.0]).try_run();
    }
}

/// Removes images at the end of the test, passed or not.
pub struct ImageGuard(pub Vec<String>);

impl Drop for ImageGuard {
    fn drop(&mut self) {
        for t in &self.0 {
            remove_image(t);
        }
    }
}

/// `POST /v1.41/build?QUERY` over the unix socket with curl, a tar of `dockerfile` as the body
/// (as an attacker holding the socket would send it). Returns the response body (the build's
/// JSON stream) whatever the outcome; the caller checks it.
pub fn curl_build(dockerfile: &str, query: &str) -> String {
    let ctx = BuildContext::new(dockerfile);
    let tar = tempfile::Builder::new()
        .prefix("sensor-tests-ctx-")
        .suffix(".tar")
        .tempfile()
        .expect("cannot create a temporary file");
    Cmd::new(tool("tar"))
        .arg("-C")
        .arg(ctx.path())
        .arg("-cf")
        .arg(tar.path())
        .arg("Dockerfile")
        .run();
    let out = Cmd::new(tool("curl"))
        .args(["-sS", "--unix-socket", DOCKER_SOCKET, "-X", "POST"])
        .args(["-H", "Content-Type: application/x-tar", "--data-binary"])
        .arg(format!("@{}", tar.path().display()))
        .arg(format!("http://localhost/v1.41/build?{query}"))
        .timeout(Duration::from_secs(300))
        .run();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
