//! A second Docker engine with an Engine API TCP listener (`dockerd -H tcp://ADDR:2375`), for
//! the T1612 case: an image build requested over the network.
//!
//! The listener is bound to the host side of a [`TestHost`]'s veth pair, an address that exists
//! only on this machine's test interface, and an INPUT rule drops whatever reaches that port
//! through any other interface: nothing outside this machine can talk to it. The test sends its
//! requests from inside the test host's network namespace (`ip netns exec NS curl ...`), so the
//! daemon sees a remote client address.
//!
//! The engine has its own data root, exec root, pid file, unix socket and bridge (`stdtcp0`,
//! 10.232.254.1/24, no uplink), and no iptables rules or forwarding changes, so it does not fight
//! the main engine. (`--bridge=none` is not usable: dockerd then deletes `docker0`, the main
//! engine's bridge.) Dropping [`TcpDockerd`] stops it (SIGTERM, then SIGKILL), unmounts what it
//! left, removes its directories, bridge, INPUT rules and the test host, also when the test
//! failed.

use std::fs::{self, File};
use std::net::SocketAddrV4;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::cmd::Cmd;
use crate::docker::{FileLock, docker_cli, ensure_base_image, system_path, tool};
use crate::netns::TestHost;
use crate::{require_root, tail_file};

/// The second engine's unix socket (for the test's own `docker -H` calls).
pub const TCP_DOCKERD_SOCKET: &str = "/run/sensor-test-dockerd-tcp.sock";
/// The Engine API's plain-HTTP port.
pub const TCP_DOCKERD_PORT: u16 = 2375;
/// Everything the second engine writes lives under this directory (removed on drop).
const ROOT: &str = "/tmp/sensor-tests-dockerd-tcp";
/// The engine's own bridge (its containers' network), on a /24 outside the test hosts'
/// 10.231.0.0/16, with no member but this engine's containers.
const BRIDGE: &str = "stdtcp0";
const BRIDGE_ADDR: &str = "10.232.254.1/24";
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A second dockerd listening on `tcp://<test interface address>:2375`, and the test host in
/// whose namespace its remote clients run.
pub struct TcpDockerd {
    // Field order is drop order after `Drop::drop`: the lock goes last.
    child: Option<Child>,
    host: Option<TestHost>,
    listener: SocketAddrV4,
    input_rules: Vec<Vec<String>>,
    bridge: bool,
    log: PathBuf,
    _lock: FileLock,
}

impl TcpDockerd {
    /// Creates the test host, starts the engine with the TCP listener on the host side of the
    /// test host's veth pair, and loads `base` (made offline in the main engine by
    /// [`ensure_base_image`]) into it with `docker save | docker load`.
    ///
    /// Panics (after cleaning up) when the engine does not answer within 60 s.
    pub fn start(base: &str) -> TcpDockerd {
        require_root("starting a second dockerd");
        ensure_base_image(base);
        // One such engine at a time on this machine: its socket and directories are fixed.
        let lock = FileLock::acquire("/tmp/sensor-tests-dockerd-tcp.lock");
        remove_leftovers();
        let host = TestHost::new("tcp-dockerd-client");
        let listener = SocketAddrV4::new(host.gateway(), TCP_DOCKERD_PORT);
        let root = Path::new(ROOT);
        for d in ["data", "exec"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        let log = root.join("dockerd.log");
        let mut this = TcpDockerd {
            child: None,
            host: Some(host),
            listener,
            input_rules: Vec::new(),
            bridge: false,
            log: log.clone(),
            _lock: lock,
        };
        // Only the test interface may reach the listener, before the listener exists.
        let host_if = this.host_interface();
        for rule in input_rules(&listener, &host_if) {
            Cmd::new(tool("iptables"))
                .args(["-w", "-I", "INPUT", "1"])
                .args(&rule)
                .timeout(Duration::from_secs(30))
                .run();
            this.input_rules.push(rule);
        }

        // The bridge is made before the engine uses it and removed in drop.
        Cmd::new(tool("ip"))
            .args(["link", "add", BRIDGE, "type", "bridge"])
            .run();
        this.bridge = true;
        Cmd::new(tool("ip"))
            .args(["addr", "add", BRIDGE_ADDR, "dev", BRIDGE])
            .run();
        Cmd::new(tool("ip"))
            .args(["link", "set", BRIDGE, "up"])
            .run();

        let out = File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let mut command = Command::new(tool("dockerd"));
        command
            .env("PATH", system_path())
            .arg("--data-root")
            .arg(root.join("data"))
            .arg("--exec-root")
            .arg(root.join("exec"))
            .arg("--pidfile")
            .arg(root.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{TCP_DOCKERD_SOCKET}"))
            .arg("-H")
            .arg(format!("tcp://{listener}"))
            // A bridge of its own and no iptables rules: docker0 and the rules are the main
            // engine's. (`--bridge=none` would make this engine delete docker0.)
            .arg(format!("--bridge={BRIDGE}"))
            .args(["--iptables=false", "--ip-masq=false", "--ip-forward=false"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: runs between fork and exec; only async-signal-safe system calls.
        unsafe {
            command.pre_exec(|| {
                libc::syscall(
                    libc::SYS_close_range,
                    3u32,
                    u32::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                );
                Ok(())
            })
        };
        this.child = Some(command.spawn().expect("cannot start dockerd"));
        let deadline = Instant::now() + START_TIMEOUT;
        while !this.ping() {
            if let Some(Ok(Some(status))) = this.child.as_mut().map(Child::try_wait) {
                panic!(
                    "the second dockerd exited ({status}):\n{}",
                    tail_file(&log, 40)
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "the second dockerd did not answer within {START_TIMEOUT:?}:\n{}",
                    tail_file(&log, 40)
                );
            }
            thread::sleep(Duration::from_millis(250));
        }
        // The base image, copied from the main engine: no registry involved.
        let saved = Cmd::new(docker_cli())
            .args(["save", base])
            .timeout(Duration::from_secs(120))
            .run();
        this.docker()
            .args(["load"])
            .stdin(saved.stdout)
            .timeout(Duration::from_secs(120))
            .run();
        this
    }

    /// `ADDR:2375`, the listener (the host side of the test host's veth pair).
    pub fn listener(&self) -> SocketAddrV4 {
        self.listener
    }

    /// The test host whose namespace the remote clients run in.
    pub fn client_host(&self) -> &TestHost {
        self.host.as_ref().expect("test host present until drop")
    }

    /// The second engine's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// `docker -H unix://<the second engine's socket>`; add the arguments.
    pub fn docker(&self) -> Cmd {
        Cmd::new(docker_cli()).args(["-H", &format!("unix://{TCP_DOCKERD_SOCKET}")])
    }

    /// The id of an image in the second engine (`docker image inspect --format {{.Id}}`).
    pub fn image_id(&self, tag: &str) -> String {
        let out = self
            .docker()
            .args(["image", "inspect", "--format", "{{.Id}}", tag])
            .run();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs `curl ARGS` inside the client's network namespace (bounded to `timeout`); returns
    /// its output whatever its status.
    pub fn curl_from_client(&self, args: &[String], timeout: Duration) -> Output {
        Cmd::new(tool("ip"))
            .args(["netns", "exec", self.client_host().netns()])
            .arg(tool("curl"))
            .args(args)
            .timeout(timeout)
            .output()
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    fn ping(&self) -> bool {
        Command::new(tool("curl"))
            .args([
                "-s",
                "--max-time",
                "3",
                "--unix-socket",
                TCP_DOCKERD_SOCKET,
                "http://x/_ping",
            ])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map(|o| o.status.success() && o.stdout == b"OK")
            .unwrap_or(false)
    }

    /// The host-side interface whose address is the listener's.
    fn host_interface(&self) -> String {
        let out = Cmd::new(tool("ip"))
            .args([
                "-o",
                "-4",
                "addr",
                "show",
                "to",
                &self.listener.ip().to_string(),
            ])
            .run();
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .nth(1)
            .map(|s| s.split('@').next().unwrap_or(s).to_string())
            .unwrap_or_else(|| panic!("no interface holds {}: {text}", self.listener.ip()))
    }
}

impl Drop for TcpDockerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child);
        }
        for rule in self.input_rules.drain(..) {
            let _ = Cmd::new(tool("iptables"))
                .args(["-w", "-D", "INPUT"])
                .args(&rule)
                .timeout(Duration::from_secs(30))
                .output();
        }
        clean_root();
        if self.bridge {
            let _ = Cmd::new(tool("ip"))
                .args(["link", "del", BRIDGE])
                .timeout(Duration::from_secs(30))
                .output();
        }
        // Removes the namespace and the veth pair (and with it the listener's address).
        self.host.take();
    }
}

/// INPUT rules: the listener's port on its address is dropped unless it came in through the
/// test interface.
fn input_rules(listener: &SocketAddrV4, host_if: &str) -> Vec<Vec<String>> {
    let rule = [
        "-d",
        &format!("{}/32", listener.ip()),
        "-p",
        "tcp",
        "--dport",
        &listener.port().to_string(),
        "!",
        "-i",
        host_if,
        "-m",
        "comment",
        "--comment",
        "sensor-tests:tcp-dockerd",
        "-j",
        "DROP",
    ];
    vec![rule.iter().map(|s| s.to_string()).collect()]
}

fn stop(child: &mut Child) {
    // SAFETY: kill only sends a signal to our own child, not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A dockerd or containerd whose pid file is under [`ROOT`] and which is still alive.
fn leftover_pids() -> Vec<u32> {
    let root = Path::new(ROOT);
    [
        root.join("dockerd.pid"),
        root.join("exec/containerd/containerd.pid"),
    ]
    .iter()
    .filter_map(|p| fs::read_to_string(p).ok())
    .filter_map(|s| s.trim().parse::<u32>().ok())
    .filter(|pid| {
        fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .map(|c| c.contains(ROOT))
            .unwrap_or(false)
    })
    .collect()
}

/// What a crashed or killed earlier run left: its engine, mounts, rules and directories.
fn remove_leftovers() {
    for pid in leftover_pids() {
        // SAFETY: a signal to a process whose command line names our own directory.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    loop {
        let out = Cmd::new(tool("iptables"))
            .args(["-w", "-S", "INPUT"])
            .timeout(Duration::from_secs(30))
            .output();
        let Ok(out) = out else { break };
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let Some(line) = text
            .lines()
            .find(|l| l.contains("sensor-tests:tcp-dockerd"))
        else {
            break;
        };
        let mut args: Vec<String> = line
            .split_whitespace()
            .map(|w| w.trim_matches('"').to_string())
            .collect();
        args[0] = "-D".into();
        let ok = Cmd::new(tool("iptables"))
            .arg("-w")
            .args(&args)
            .timeout(Duration::from_secs(30))
            .output();
        if !ok.is_ok_and(|o| o.status.success()) {
            break;
        }
    }
    clean_root();
    if Path::new("/sys/class/net").join(BRIDGE).exists() {
        let _ = Cmd::new(tool("ip"))
            .args(["link", "del", BRIDGE])
            .timeout(Duration::from_secs(30))
            .output();
    }
}

/// Unmounts whatever is mounted under [`ROOT`] (deepest first) and removes it.
fn clean_root() {
    for pid in leftover_pids() {
        // SAFETY: see remove_leftovers; its containerd may outlive a killed dockerd.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    let mut mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|m| m.starts_with(ROOT))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = Cmd::new(tool("umount"))
            .args(["-l", &m])
            .timeout(Duration::from_secs(30))
            .output();
    }
    let _ = fs::remove_dir_all(ROOT);
    let _ = fs::remove_file(TCP_DOCKERD_SOCKET);
}
