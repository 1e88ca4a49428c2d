//! Where socket data comes from: the narrow hooks (the default on 6.7+ with cgroup v2: uprobes in
//! the API servers, `cgroup/connect_unix`, `cgroup_skb`), the socket hooks
//! (`sock_recv_length`/`sock_send_length`, 6.3+) and the raw syscall dispatch (`--kernel-hooks
//! syscall`, what older kernels get) give the same Engine API records and client identity, on
//! the real kernel with a real dockerd, a real `podman system service` and real clients.
use std::{process::Command, time::Duration};

use sensor_tests::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

fn started(sensor: &SensorProcess) -> Value {
    sensor
        .wait_for(|r| r["kind"] == "sensor_started", WAIT)
        .unwrap()
}

fn probes(r: &Value) -> Vec<String> {
    r["probes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

/// The API client's pid, once it has exited.
fn run_client(mut cmd: Command) -> u64 {
    let mut child = cmd.spawn().unwrap();
    let pid = u64::from(child.id());
    assert!(child.wait().unwrap().success());
    pid
}

/// The `api_request` whose query carries `probe`.
fn request_with(sensor: &SensorProcess, probe: &str) -> Value {
    sensor
        .wait_for(
            |r| {
                r["kind"] == "api_request" && r["query"].as_str().is_some_and(|q| q.contains(probe))
            },
            WAIT,
        )
        .unwrap()
}

/// curl's GET /version on the Engine API socket with `probe` in the query; its pid once done.
fn curl_version(probe: &str) -> u64 {
    let mut curl = Command::new("curl");
    curl.args([
        "-s",
        "-o",
        "/dev/null",
        "--unix-socket",
        "/var/run/docker.sock",
        &format!("http://localhost/v1.41/version?probe={probe}"),
    ]);
    run_client(curl)
}

/// A curl request on the Engine API socket with a unique query: its api_request carries the
/// request line and curl as the client (pid, exe, argv), and its unix connect the same client.
fn curl_request_is_reported(sensor: &SensorProcess) {
    let probe = unique_tag("hooks").replace(':', "-");
    let pid = curl_version(&probe);
    let req = request_with(sensor, &probe);
    assert_eq!(req["method"], "GET", "{req}");
    assert_eq!(req["client"]["pid"].as_u64(), Some(pid), "{req}");
    assert_eq!(req["client"]["exe"], "/usr/bin/curl", "{req}");
    assert_eq!(req["client"]["transport"], "unix", "{req}");
    let conn = sensor
        .wait_for(
            |r| {
                r["kind"] == "connect"
                    && r["protocol"] == "unix"
                    && r["process"]["pid"].as_u64() == Some(pid)
            },
            WAIT,
        )
        .unwrap();
    assert_eq!(conn["process"]["role"], "api_client", "{conn}");
    assert!(
        conn["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("docker.sock")),
        "{conn}"
    );
}

#[test]
fn socket_hooks_leave_the_syscall_dispatch_off() {
    require_root("loading eBPF programs");
    Dockerd::ensure();
    let mut sensor =
        SensorProcess::start(&["--no-file-events", "--kernel-hooks", "socket"]).unwrap();
    let s = started(&sensor);
    // This machine kind runs 6.18: the socket hooks load, and without file events nothing is
    // left on the raw syscall tracepoints.
    assert_eq!(s["kernel_hooks"], "socket", "{s}");
    let p = probes(&s);
    assert!(p.iter().any(|n| n == "sock_recv_length"), "{s}");
    assert!(p.iter().any(|n| n == "sock_send_length"), "{s}");
    assert!(
        !p.iter().any(|n| n == "sys_enter" || n == "sys_exit"),
        "{s}"
    );
    assert!(s["probes_unused"]["sys_enter"].is_string(), "{s}");
    assert_eq!(s["probes_failed"], serde_json::json!({}), "{s}");
    curl_request_is_reported(&sensor);

    // A client that sends its request and is gone before dockerd answers: who it was is taken
    // in the kernel at its send, not from /proc afterwards.
    let probe = unique_tag("gone").replace(':', "-");
    let script = format!(
        "import socket; s = socket.socket(socket.AF_UNIX); s.connect('/var/run/docker.sock'); \
         s.sendall(b'GET /v1.41/version?probe={probe} HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')"
    );
    let mut py = Command::new("python3");
    py.args(["-c", &script]);
    let pid = run_client(py);
    let req = request_with(&sensor, &probe);
    assert_eq!(req["client"]["pid"].as_u64(), Some(pid), "{req}");
    assert!(
        req["client"]["exe"]
            .as_str()
            .is_some_and(|e| e.contains("python3")),
        "{req}"
    );
    assert!(
        req["client"]["argv"].as_array().is_some_and(|a| a
            .iter()
            .any(|s| s.as_str().is_some_and(|s| s.contains(&probe)))),
        "{req}"
    );
    assert!(sensor.stop().unwrap().success());
}

#[test]
fn the_syscall_dispatch_gives_the_same_api_records() {
    require_root("loading eBPF programs");
    Dockerd::ensure();
    let mut sensor = SensorProcess::start(&["--kernel-hooks", "syscall"]).unwrap();
    let s = started(&sensor);
    assert_eq!(s["kernel_hooks"], "syscall", "{s}");
    let p = probes(&s);
    assert!(p.iter().any(|n| n == "sys_enter"), "{s}");
    assert!(p.iter().any(|n| n == "sys_exit"), "{s}");
    assert!(!p.iter().any(|n| n.starts_with("sock_")), "{s}");
    curl_request_is_reported(&sensor);
    assert!(sensor.stop().unwrap().success());
}

/// Runs of the sensor's uprobe programs (`prog_type` 2 in its bpf fds' fdinfo: only the API
/// servers' uprobes are of that type), with the kernel's BPF run statistics on meanwhile.
fn uprobe_runs(sensor_pid: u32) -> u64 {
    let mut runs = 0;
    for fd in std::fs::read_dir(format!("/proc/{sensor_pid}/fdinfo")).unwrap() {
        let info = std::fs::read_to_string(fd.unwrap().path()).unwrap_or_default();
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().parse::<u64>().unwrap_or(0))
        };
        if field("prog_type:") == Some(2) {
            runs += field("run_cnt:").unwrap_or(0);
        }
    }
    runs
}

/// A sensor with the narrow hooks and the socket hooks and the syscall dispatch left detached
/// (`SENSOR_SKIP_PROBES`): only the uprobes can take an API server's requests. `extra`: more
/// flags.
fn uprobes_alone(extra: &[&str]) -> SensorProcess {
    let skip = std::ffi::OsStr::new("sock_recv_length,sock_send_length,sys_enter,sys_exit");
    let mut args = vec!["--kernel-hooks", "narrow", "--no-file-events"];
    args.extend_from_slice(extra);
    let sensor = SensorProcess::start_env(&args, &[("SENSOR_SKIP_PROBES", skip)]).unwrap();
    let p = probes(&started(&sensor));
    assert!(p.iter().any(|n| n == "go_syscall_enter"), "{p:?}");
    assert!(
        !p.iter()
            .any(|n| n.starts_with("sock_") || n.starts_with("sys_")),
        "{p:?}"
    );
    sensor
}

/// Turns the kernel's BPF run statistics on, and back to what they were when dropped.
struct BpfStats(String);

impl BpfStats {
    fn on() -> BpfStats {
        const P: &str = "/proc/sys/kernel/bpf_stats_enabled";
        let was = std::fs::read_to_string(P).unwrap().trim().to_string();
        std::fs::write(P, "1").unwrap();
        BpfStats(was)
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
    }
}

/// The default here (6.18, cgroup v2): the narrow hooks take all socket data, so no program
/// is left on the node's socket I/O (nor on the raw syscall tracepoints without file events).
#[test]
fn narrow_hooks_are_the_default_here_and_take_dockerds_api_traffic_in_it() {
    require_root("loading eBPF programs");
    Dockerd::ensure();
    let stats = BpfStats::on();
    let mut sensor = SensorProcess::start(&["--no-file-events"]).unwrap();
    let s = started(&sensor);
    assert_eq!(s["kernel_hooks"], "narrow", "{s}");
    let p = probes(&s);
    for n in [
        "go_syscall_enter",
        "go_syscall_exit",
        "connect_unix",
        "dns_skb_egress",
        "dns_skb_ingress",
    ] {
        assert!(p.iter().any(|q| q == n), "{n}: {s}");
    }
    assert!(
        !p.iter()
            .any(|n| n.starts_with("sock_") || n.starts_with("sys_")),
        "{s}"
    );
    assert!(s["probes_unused"]["sock_send_length"].is_string(), "{s}");
    assert_eq!(s["probes_failed"], serde_json::json!({}), "{s}");
    let before = uprobe_runs(sensor.pid());
    curl_request_is_reported(&sensor);
    // The uprobes ran for that request, and took it alone: the socket hooks leave an uprobed
    // server's traffic, so one request is one record (two if both took it).
    assert!(
        uprobe_runs(sensor.pid()) > before,
        "the uprobes did not run"
    );
    drop(stats);
    assert!(sensor.stop().unwrap().success());
    let n = sensor
        .records()
        .iter()
        .filter(|r| {
            r["kind"] == "api_request"
                && r["query"]
                    .as_str()
                    .is_some_and(|q| q.contains("probe=hooks"))
        })
        .count();
    assert_eq!(n, 1, "one api_request per request");

    // The uprobes alone (the socket hooks and the syscall dispatch left detached): the request
    // line, and the client by the connection's peer credentials.
    let mut sensor = uprobes_alone(&[]);
    let probe = unique_tag("alone").replace(':', "-");
    let pid = curl_version(&probe);
    let req = request_with(&sensor, &probe);
    assert_eq!(req["method"], "GET", "{req}");
    assert_eq!(req["client"]["pid"].as_u64(), Some(pid), "{req}");
    assert_eq!(req["client"]["transport"], "unix", "{req}");

    // An API server started after the sensor gets the uprobes at its exec; its TCP listener's
    // requests (payload in page fragments on the socket path) come from the reader's buffer.
    ensure_base_image(BASE_IMAGE);
    let daemon = TcpDockerd::start(BASE_IMAGE);
    let probe = unique_tag("tcp").replace(':', "-");
    let out = daemon.curl_from_client(
        &[
            "-s".into(),
            "-o".into(),
            "/dev/null".into(),
            format!("http://{}/v1.41/version?probe={probe}", daemon.listener()),
        ],
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{out:?}");
    let req = request_with(&sensor, &probe);
    assert_eq!(
        req["process"]["pid"].as_u64(),
        Some(u64::from(daemon.pid())),
        "{req}"
    );
    assert_eq!(req["client"]["transport"], "tcp", "{req}");
    assert_eq!(
        req["client"]["addr"],
        daemon.client_host().ip().to_string(),
        "{req}"
    );
    drop(daemon);
    assert!(sensor.stop().unwrap().success());
}

/// `podman system service`, started after the sensor: an API server by its argv, so it gets the
/// uprobes at its exec, and they alone (the socket hooks and the syscall dispatch left
/// detached) give its Engine API requests, compat and libpod, with curl as the client.
#[test]
fn podman_service_requests_come_from_the_uprobes() {
    require_root("loading eBPF programs");
    let stats = BpfStats::on();
    // Its socket named as an API socket, as podman's default one is: its clients are
    // described at their connect (connect_unix), before they can exit.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("podman.sock");
    let mut sensor = uprobes_alone(&["--api-socket", socket.to_str().unwrap()]);
    let service = Service(
        Command::new("podman")
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + WAIT;
    while !socket.exists() {
        assert!(std::time::Instant::now() < deadline, "podman's socket");
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = uprobe_runs(sensor.pid());
    for path in ["/v1.41/version", "/v4.0.0/libpod/_ping"] {
        let probe = unique_tag("podman").replace(':', "-");
        let mut curl = Command::new("curl");
        curl.args(["-s", "-o", "/dev/null", "--unix-socket"])
            .arg(&socket)
            .arg(format!("http://d{path}?probe={probe}"));
        let pid = run_client(curl);
        let req = request_with(&sensor, &probe);
        assert_eq!(req["path"], path, "{req}");
        assert_eq!(
            req["process"]["pid"].as_u64(),
            Some(u64::from(service.0.id())),
            "{req}"
        );
        assert_eq!(req["process"]["comm"], "podman", "{req}");
        assert_eq!(req["client"]["pid"].as_u64(), Some(pid), "{req}");
        assert_eq!(req["client"]["exe"], "/usr/bin/curl", "{req}");
    }
    assert!(
        uprobe_runs(sensor.pid()) > before,
        "the uprobes did not run"
    );
    drop(stats);
    drop(service);
    assert!(sensor.stop().unwrap().success());
}

/// A server process for one test, killed when the test ends, passed or not (a `podman system
/// service` left running would be seeded, and probed, by every later sensor on the machine).
struct Service(std::process::Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn unknown_hook_modes_are_one_clear_error() {
    let out = Command::new(sensor_bin())
        .args(["run", "--kernel-hooks", "fentry"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--kernel-hooks"), "{err}");
    assert!(err.contains("auto") && err.contains("syscall"), "{err}");
}

/// A python3 under a runtime name of this test's own (`prefix` and a pid digit run), for
/// `--runtime-name`: its processes are tracked as a runtime's. The directory, the name, the
/// link to run.
fn python_runtime(prefix: &str) -> (tempfile::TempDir, String, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("{prefix}{}", std::process::id() % 10_000);
    let rt = dir.path().join(&name);
    std::os::unix::fs::symlink("/usr/bin/python3", &rt).unwrap();
    (dir, name, rt)
}

/// A tracked process (a runtime by name) connecting to a unix socket and sending: one
/// `connect` with the listener's path and the process, taken at its first send under the
/// socket hooks, at its connect(2) under the syscall dispatch and by `cgroup/connect_unix`
/// under `narrow` (whose sock_send_length must then not report it a second time), and only
/// one however many sends follow.
fn tracked_unix_connect_is_reported(mode: &str) {
    require_root("loading eBPF programs");
    let (dir, name, rt) = python_runtime("unixrt");
    let path = dir.path().join("listener.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let mut sensor =
        SensorProcess::start(&["--runtime-name", &name, "--kernel-hooks", mode]).unwrap();
    let s = started(&sensor);
    assert_eq!(s["kernel_hooks"], mode, "{s}");
    if mode == "narrow" {
        assert!(probes(&s).iter().any(|n| n == "connect_unix"), "{s}");
    }
    let script = format!(
        "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({:?})\n\
         for _ in range(50): s.sendall(b'x')\n",
        path.to_str().unwrap()
    );
    let reader = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut conn, &mut got).unwrap();
        got.len()
    });
    let mut py = Command::new(&rt);
    py.args(["-c", &script]);
    let pid = run_client(py);
    assert_eq!(reader.join().unwrap(), 50);
    let is_ours = |r: &Value| {
        r["kind"] == "connect"
            && r["protocol"] == "unix"
            && r["process"]["pid"].as_u64() == Some(pid)
    };
    let conn = sensor.wait_for(is_ours, WAIT).unwrap();
    assert_eq!(conn["path"], path.to_str().unwrap(), "{conn}");
    assert_eq!(conn["process"]["role"], "runtime", "{conn}");
    assert!(sensor.stop().unwrap().success());
    let n = sensor.records().iter().filter(|r| is_ours(r)).count();
    assert_eq!(n, 1, "one connect for 50 sends");
}

#[test]
fn a_tracked_unix_connect_is_reported_once_with_socket_hooks() {
    tracked_unix_connect_is_reported("socket");
}

#[test]
fn a_tracked_unix_connect_is_reported_once_with_the_syscall_dispatch() {
    tracked_unix_connect_is_reported("syscall");
}

#[test]
fn a_tracked_unix_connect_is_reported_once_with_connect_unix() {
    tracked_unix_connect_is_reported("narrow");
}

/// Connects that send nothing: a tracked process's to a socket the test binds, and an
/// untracked API client's to the Engine API socket. Only `cgroup/connect_unix` sees them
/// (`--kernel-hooks narrow`; the syscall dispatch leaves connects to the socket hooks there):
/// each is one `connect` with its path and process (the client's once for its two connects),
/// the client's with who it is (role, parent) taken at its connect. The socket tracepoints, which wait for a first send, report
/// neither (`--kernel-hooks socket`, the control).
#[test]
fn connect_unix_reports_connects_that_send_nothing() {
    require_root("loading eBPF programs");
    Dockerd::ensure();
    let (dir, name, rt) = python_runtime("cunixrt");
    let path = dir.path().join("silent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let connect_only = |target: &str| {
        format!(
            "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({target:?})\ns.close()\n"
        )
    };
    for mode in ["narrow", "socket"] {
        let mut sensor =
            SensorProcess::start(&["--runtime-name", &name, "--kernel-hooks", mode]).unwrap();
        let s = started(&sensor);
        let narrow = mode == "narrow";
        assert_eq!(
            probes(&s).iter().any(|n| n == "connect_unix"),
            narrow,
            "{s}"
        );
        // The tracked process.
        let mut py = Command::new(&rt);
        py.args(["-c", &connect_only(path.to_str().unwrap())]);
        let tracked = run_client(py);
        let _ = listener.accept().unwrap();
        // The untracked API client, connecting twice: reported once, as at a first send.
        let mut py = Command::new("python3");
        py.args(["-c", &connect_only(DOCKER_SOCKET).repeat(2)]);
        let client = run_client(py);
        let of = |pid: u64| {
            move |r: &Value| {
                r["kind"] == "connect"
                    && r["protocol"] == "unix"
                    && r["process"]["pid"].as_u64() == Some(pid)
            }
        };
        if !narrow {
            // Reported, they would come within milliseconds.
            sensor
                .expect_none(|r| of(tracked)(r) || of(client)(r), Duration::from_secs(3))
                .unwrap();
            assert!(sensor.stop().unwrap().success());
            continue;
        }
        let conn = sensor.wait_for(of(tracked), WAIT).unwrap();
        assert_eq!(conn["path"], path.to_str().unwrap(), "{conn}");
        assert_eq!(conn["process"]["role"], "runtime", "{conn}");
        let conn = sensor.wait_for(of(client), WAIT).unwrap();
        assert_eq!(conn["path"], DOCKER_SOCKET, "{conn}");
        assert_eq!(conn["process"]["role"], "api_client", "{conn}");
        assert_eq!(
            conn["process"]["ppid"].as_u64(),
            Some(u64::from(std::process::id())),
            "{conn}"
        );
        assert_eq!(conn["process"]["comm"], "python3", "{conn}");
        assert!(sensor.stop().unwrap().success());
        for pid in [tracked, client] {
            let n = sensor.records().iter().filter(|r| of(pid)(r)).count();
            assert_eq!(n, 1, "one connect for pid {pid}");
        }
    }
}

/// The bench's switch (`SENSOR_BENCH_SWITCH`, on which `cargo xtask bench`'s interleaved
/// columns rest), in one sensor run: with the programs detached, or attached but idle, a
/// tracked process's TCP connect makes no record; attached and working again, it does. Any
/// other byte is answered `?` and changes nothing.
#[test]
fn the_bench_switch_detaches_idles_and_restores_the_programs() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let switch = dir.path().join("switch.sock");
    let rt = dir.path().join("switch-rt");
    std::os::unix::fs::symlink("/bin/bash", &rt).unwrap();
    let mut sensor = SensorProcess::start_env(
        &["--runtime-name", "switch-rt"],
        &[("SENSOR_BENCH_SWITCH", switch.as_os_str())],
    )
    .unwrap();
    let mut conn = std::os::unix::net::UnixStream::connect(&switch).unwrap();
    let mut set = |byte: u8| {
        conn.write_all(&[byte]).unwrap();
        let mut reply = [0u8];
        conn.read_exact(&mut reply).unwrap();
        reply[0]
    };
    // The tracked process connects to a listener of the test's own on loopback; the port
    // tells each connect's record apart.
    let tracked_connect = || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let script = format!("exec 3<>/dev/tcp/127.0.0.1/{port}");
        let st = Command::new(&rt).args(["-c", &script]).status().unwrap();
        assert!(st.success());
        move |r: &Value| r["kind"] == "connect" && r["dst_port"] == u64::from(port)
    };
    assert_eq!(set(b'x'), b'?');
    for (byte, seen) in [(b'0', false), (b'1', true), (b'i', false), (b'a', true)] {
        assert_eq!(set(byte), byte, "the switch's answer to {:?}", byte as char);
        let record = tracked_connect();
        if seen {
            sensor.wait_for(record, WAIT).unwrap();
        } else {
            // Seen, the record would come within milliseconds.
            sensor
                .expect_none(record, Duration::from_secs(3))
                .unwrap_or_else(|e| panic!("after {:?}: {e:#}", byte as char));
        }
    }
    assert!(sensor.stop().unwrap().success());
}
