//! Test hosts: peers in network namespaces that the test creates, reached through the host.
//!
//! Each [`TestHost`] is a network namespace joined to the host by a veth pair on a /30 of
//! 10.231.0.0/16. The host side is the namespace's default gateway, so a container on docker0
//! (172.17.0.0/16) or a build step reaches the test host through the host's routing (Docker's
//! MASQUERADE makes the test host see the host side's address as the source).
//!
//! Forwarding is made explicit rather than left to whatever Docker set up: dockerd sets the
//! FORWARD policy to DROP when it is the one that turns `ip_forward` on, so whether two test hosts
//! could talk used to depend on which started first. Each test host adds its own FORWARD rules
//! (commented `sensor-tests:IFACE`): accept to and from docker0 and other test hosts, and drop
//! anything else it would send through the host, so that a test host never reaches beyond this
//! machine.

use std::fs::{self, File};
use std::io::Read;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};

use crate::cmd::Cmd;
use crate::docker::tool;
use crate::{require_root, tail_file};

/// Namespaces are named `stest-PID-INDEX`, so that a later run can remove those whose process
/// is gone.
const NETNS_PREFIX: &str = "stest-";
/// Number of /30 subnets in 10.231.0.0/16.
const SUBNETS: u32 = 16384;
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(10);

/// A peer host in a network namespace of its own. Dropping it stops its servers and removes the
/// namespace and the veth pair.
pub struct TestHost {
    name: String,
    netns: String,
    host_if: String,
    index: u32,
    servers: Mutex<Vec<Server>>,
}

enum Server {
    Process {
        child: Child,
        // Kept for the lifetime of the server: the files it serves and its log.
        _dir: tempfile::TempDir,
    },
    Tcp(TcpSink, Option<JoinHandle<()>>),
}

impl TestHost {
    /// Creates the namespace, the veth pair and the routes. `name` only appears in messages.
    ///
    /// Panics when not root or when a step fails (the failing `ip` command is shown).
    pub fn new(name: &str) -> TestHost {
        require_root("creating a test host (network namespace)");
        remove_leftovers();
        ensure_ip_forward();

        static NEXT: AtomicU32 = AtomicU32::new(0);
        let base = std::process::id().wrapping_mul(131) % SUBNETS;
        for _ in 0..64 {
            let index = (base + NEXT.fetch_add(1, Ordering::Relaxed)) % SUBNETS;
            if let Some(host) = TestHost::try_create(name, index) {
                return host;
            }
        }
        panic!("no free test-host subnet found in 10.231.0.0/16 after 64 tries");
    }

    /// Creates the host at `index`, or returns `None` when its interface name is taken (by
    /// another process, or a leftover of a crashed run).
    fn try_create(name: &str, index: u32) -> Option<TestHost> {
        let netns = format!("{NETNS_PREFIX}{}-{index}", std::process::id());
        let host_if = format!("stv{index}h");
        let ns_if = format!("stv{index}n");
        if Path::new("/sys/class/net").join(&host_if).exists() {
            return None;
        }
        ip(&["netns", "add", &netns]);
        let add = quiet_ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &netns,
        ]);
        let failed = match &add {
            Ok(out) if out.status.success() => None,
            Ok(out) => Some(String::from_utf8_lossy(&out.stderr).into_owned()),
            Err(e) => Some(format!("{e:#}")),
        };
        if let Some(err) = failed {
            // The link is not ours: remove only the namespace.
            let _ = quiet_ip(&["netns", "del", &netns]);
            if err.contains("File exists") {
                return None; // Another process took this index between the check and here.
            }
            panic!("ip link add {host_if} type veth failed: {err}");
        }
        // From here on, Drop removes what was made.
        let host = TestHost {
            name: name.to_string(),
            netns,
            host_if,
            index,
            servers: Mutex::new(Vec::new()),
        };
        let (gw, peer) = (host.gateway(), host.ip());
        ip(&["addr", "add", &format!("{gw}/30"), "dev", &host.host_if]);
        ip(&["link", "set", &host.host_if, "up"]);
        for rule in forward_rules(&host.host_if).iter().rev() {
            iptables(&[&["-I", "FORWARD", "1"].map(String::from)[..], rule].concat());
        }
        let ns = host.netns.as_str();
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{peer}/30"),
            "dev",
            &ns_if,
        ]);
        ip(&["-n", ns, "link", "set", &ns_if, "up"]);
        ip(&["-n", ns, "route", "add", "default", "via", &gw.to_string()]);
        Some(host)
    }

    /// The test host's address (inside its namespace).
    pub fn ip(&self) -> Ipv4Addr {
        subnet_addr(self.index, 2)
    }

    /// The host side of the veth pair: the test host's default gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        subnet_addr(self.index, 1)
    }

    /// The network namespace's name (for `ip netns exec`).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The name given to [`TestHost::new`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `http://IP:PORT/PATH` on this host (`path` without its leading slash).
    pub fn url(&self, port: u16, path: &str) -> String {
        format!(
            "http://{}:{port}/{}",
            self.ip(),
            path.trim_start_matches('/')
        )
    }

    /// Runs a command inside the namespace (`ip netns exec NS cmd args...`), bounded in time;
    /// returns its output whatever its status.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Output {
        Cmd::new(tool("ip"))
            .args(["netns", "exec", &self.netns, cmd])
            .args(args)
            .timeout(Duration::from_secs(60))
            .output()
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Serves `files` (path relative to the document root, contents) over HTTP on `port` with
    /// busybox httpd inside the namespace, and waits until it accepts connections.
    pub fn serve_http(&self, port: u16, files: &[(&str, &[u8])]) {
        let dir = tempfile::Builder::new()
            .prefix("sensor-tests-www-")
            .tempdir()
            .expect("cannot create a temporary directory");
        let root = dir.path().join("www");
        fs::create_dir_all(&root).unwrap();
        for (path, contents) in files {
            let path = path.trim_start_matches('/');
            assert!(!path.contains(".."), "file path {path:?} leaves the root");
            let file = root.join(path);
            if let Some(parent) = file.parent() {
                fs::create_dir_all(parent).unwrap();
            }
            fs::write(&file, contents).unwrap();
        }
        let log_path = dir.path().join("httpd.log");
        let log = File::create(&log_path).unwrap();
        let log2 = log.try_clone().unwrap();
        // `ip netns exec` execs the command itself, so the child's pid is httpd's.
        let child = Command::new(tool("ip"))
            .args(["netns", "exec", &self.netns])
            .arg(tool("busybox"))
            .args(["httpd", "-f", "-p", &port.to_string(), "-h"])
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start busybox httpd: {e}"));
        let mut server = Server::Process { child, _dir: dir };
        let addr = SocketAddr::from((self.ip(), port));
        let deadline = Instant::now() + SERVER_START_TIMEOUT;
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
                break;
            }
            let Server::Process { child, .. } = &mut server else {
                unreachable!()
            };
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "busybox httpd on {addr} (netns {}) exited ({status}):\n{}",
                    self.netns,
                    tail_file(&log_path, 20)
                );
            }
            if Instant::now() >= deadline {
                stop_server(server);
                panic!(
                    "busybox httpd on {addr} (netns {}) did not accept within {:?}:\n{}",
                    self.netns,
                    SERVER_START_TIMEOUT,
                    tail_file(&log_path, 20)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        self.servers.lock().unwrap().push(server);
    }

    /// Listens on `port` inside the namespace and accepts every connection (reading what the
    /// peer sends for a few seconds, then closing). The returned handle tells who connected.
    pub fn listen_tcp(&self, port: u16) -> TcpSink {
        let sink = TcpSink {
            addr: SocketAddrV4::new(self.ip(), port),
            shared: Arc::new(SinkShared::default()),
        };
        let (tx, rx) = mpsc::channel();
        let netns_path = PathBuf::from("/run/netns").join(&self.netns);
        let shared = sink.shared.clone();
        let handle = thread::spawn(move || {
            let listener = match bind_in_netns(&netns_path, port) {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            *shared.listener_fd.lock().unwrap() = Some(listener.as_raw_fd());
            let _ = tx.send(Ok(()));
            accept_loop(listener, shared);
        });
        match rx.recv_timeout(SERVER_START_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("cannot listen on {}: {e:#}", sink.addr),
            Err(_) => panic!("listener on {} did not start", sink.addr),
        }
        self.servers
            .lock()
            .unwrap()
            .push(Server::Tcp(sink.clone(), Some(handle)));
        sink
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let servers = std::mem::take(&mut *self.servers.lock().unwrap_or_else(|e| e.into_inner()));
        for server in servers {
            stop_server(server);
        }
        for rule in forward_rules(&self.host_if) {
            let _ = quiet_iptables(&[&["-D", "FORWARD"].map(String::from)[..], &rule].concat());
        }
        // Deleting the host side removes both ends of the pair, even while something still
        // holds the namespace open.
        let _ = quiet_ip(&["link", "del", &self.host_if]);
        let _ = quiet_ip(&["netns", "del", &self.netns]);
    }
}

impl std::fmt::Debug for TestHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestHost")
            .field("name", &self.name)
            .field("netns", &self.netns)
            .field("ip", &self.ip())
            .field("gateway", &self.gateway())
            .finish()
    }
}

fn stop_server(server: Server) {
    match server {
        Server::Process { mut child, .. } => {
            let _ = child.kill();
            let _ = child.wait();
        }
        Server::Tcp(sink, handle) => {
            sink.shared.stopping.store(1, Ordering::SeqCst);
            if let Some(fd) = *sink.shared.listener_fd.lock().unwrap() {
                // On Linux, shutting a listening socket down wakes a blocked accept() with an
                // error; the accept loop then ends and closes the socket.
                // SAFETY: fd is the listener owned by the accept thread, which is still running
                // (it is joined below), so the descriptor is valid.
                unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            }
            if let Some(h) = handle {
                let _ = h.join();
            }
        }
    }
}

/// Who connected to a [`TestHost::listen_tcp`] listener.
#[derive(Clone, Debug)]
pub struct TcpSink {
    addr: SocketAddrV4,
    shared: Arc<SinkShared>,
}

#[derive(Default, Debug)]
struct SinkShared {
    peers: Mutex<Vec<SocketAddr>>,
    changed: Condvar,
    listener_fd: Mutex<Option<i32>>,
    stopping: AtomicU32,
}

impl TcpSink {
    /// The address connections go to (the test host's address and the port).
    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Peers of the connections accepted so far, in order.
    pub fn accepted(&self) -> Vec<SocketAddr> {
        self.shared.peers.lock().unwrap().clone()
    }

    /// Waits until at least `n` connections have been accepted; returns their peers.
    pub fn wait_accepted(&self, n: usize, timeout: Duration) -> Result<Vec<SocketAddr>> {
        let deadline = Instant::now() + timeout;
        let mut peers = self.shared.peers.lock().unwrap();
        while peers.len() < n {
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "{} accepted {} connection(s) within {timeout:?}, expected {n}",
                    self.addr,
                    peers.len()
                );
            }
            peers = self
                .shared
                .changed
                .wait_timeout(peers, deadline - now)
                .unwrap()
                .0;
        }
        Ok(peers.clone())
    }
}

fn bind_in_netns(netns: &Path, port: u16) -> Result<TcpListener> {
    let ns = File::open(netns).map_err(|e| anyhow!("cannot open {}: {e}", netns.display()))?;
    // SAFETY: setns with a namespace fd we own; it moves only this thread (a network namespace
    // is per thread), which serves this listener and nothing else.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!(
            "setns({}): {}",
            netns.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?)
}

fn accept_loop(listener: TcpListener, shared: Arc<SinkShared>) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                shared.peers.lock().unwrap().push(peer);
                shared.changed.notify_all();
                // Let the peer send what it wants for a short while, then close.
                thread::spawn(move || drain(stream));
            }
            Err(_) if shared.stopping.load(Ordering::SeqCst) != 0 => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    *shared.listener_fd.lock().unwrap() = None;
}

fn drain(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 4096];
    let mut total = 0usize;
    while Instant::now() < deadline && total < 1 << 20 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// The address `host` (1 or 2) of the /30 number `index` in 10.231.0.0/16.
fn subnet_addr(index: u32, host: u32) -> Ipv4Addr {
    let v = (index % SUBNETS) * 4 + host;
    Ipv4Addr::new(10, 231, (v >> 8) as u8, (v & 0xff) as u8)
}

fn ip(args: &[&str]) {
    Cmd::new(tool("ip"))
        .args(args)
        .timeout(Duration::from_secs(30))
        .run();
}

fn quiet_ip(args: &[&str]) -> Result<Output> {
    Cmd::new(tool("ip"))
        .args(args)
        .timeout(Duration::from_secs(30))
        .output()
}

/// The FORWARD rules of the test host whose host-side interface is `host_if`, in order.
fn forward_rules(host_if: &str) -> Vec<Vec<String>> {
    let comment = format!("sensor-tests:{host_if}");
    let rule = |parts: &[&str]| -> Vec<String> {
        parts
            .iter()
            .map(|s| s.to_string())
            .chain(["-m", "comment", "--comment", &comment].map(String::from))
            .collect()
    };
    vec![
        rule(&["-i", "docker0", "-o", host_if, "-j", "ACCEPT"]),
        rule(&["-i", host_if, "-o", "docker0", "-j", "ACCEPT"]),
        rule(&["-i", "stv+", "-o", host_if, "-j", "ACCEPT"]),
        rule(&["-i", host_if, "-o", "stv+", "-j", "ACCEPT"]),
        rule(&["-i", host_if, "-j", "DROP"]),
    ]
}

fn iptables(args: &[String]) {
    Cmd::new(tool("iptables"))
        .arg("-w")
        .args(args)
        .timeout(Duration::from_secs(30))
        .run();
}

fn quiet_iptables(args: &[String]) -> Result<Output> {
    Cmd::new(tool("iptables"))
        .arg("-w")
        .args(args)
        .timeout(Duration::from_secs(30))
        .output()
}

/// Removes FORWARD rules of test hosts whose interface is gone.
fn remove_stale_forward_rules() {
    let Ok(out) = quiet_iptables(&["-S".to_string(), "FORWARD".to_string()]) else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(iface) = words
            .windows(2)
            .find(|w| w[0] == "--comment")
            .and_then(|w| w[1].trim_matches('"').strip_prefix("sensor-tests:"))
        else {
            continue;
        };
        if words.first() != Some(&"-A") || Path::new("/sys/class/net").join(iface).exists() {
            continue;
        }
        let mut args: Vec<String> = words
            .iter()
            .map(|w| w.trim_matches('"').to_string())
            .collect();
        args[0] = "-D".to_string();
        let _ = quiet_iptables(&args);
    }
}

/// Removes what test processes that are gone (a crashed or killed run) left: namespaces, their
/// veth pairs, then FORWARD rules naming an interface that no longer exists.
fn remove_leftovers() {
    remove_stale_namespaces();
    remove_stale_forward_rules();
}

fn remove_stale_namespaces() {
    let Ok(entries) = fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            if let Some(index) = rest.split('-').nth(1) {
                let _ = quiet_ip(&["link", "del", &format!("stv{index}h")]);
            }
            let _ = quiet_ip(&["netns", "del", &name]);
        }
    }
}

/// Traffic from docker0 to a test host is routed by the host. dockerd turns forwarding on when
/// it starts; a test host made before (or without) dockerd needs it too.
fn ensure_ip_forward() {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    if fs::read_to_string(PATH)
        .map(|s| s.trim() == "1")
        .unwrap_or(false)
    {
        return;
    }
    if let Err(e) = fs::write(PATH, "1") {
        panic!("cannot enable IPv4 forwarding ({PATH}): {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_do_not_overlap() {
        assert_eq!(subnet_addr(0, 1), Ipv4Addr::new(10, 231, 0, 1));
        assert_eq!(subnet_addr(0, 2), Ipv4Addr::new(10, 231, 0, 2));
        assert_eq!(subnet_addr(1, 1), Ipv4Addr::new(10, 231, 0, 5));
        assert_eq!(subnet_addr(64, 2), Ipv4Addr::new(10, 231, 1, 2));
        assert_eq!(
            subnet_addr(SUBNETS - 1, 2),
            Ipv4Addr::new(10, 231, 255, 254)
        );
    }
}
