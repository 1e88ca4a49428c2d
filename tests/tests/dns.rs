//! DNS as a build sees it: a RUN step resolves a name against a DNS server on a test host, then
//! downloads from the address it got; the sensor reports the query and the response, and the
//! build's outbound connection carries the name it was looked up under.
use std::{
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use sensor_tests::*;

const WAIT: Duration = Duration::from_secs(90);

/// A DNS server for one test: answers every A query with `answer`, in the test host's network
/// namespace, on UDP port 53 of IPv4 and IPv6. Debian's /usr/bin/python3 is on every machine of
/// this kind.
struct DnsServer(Child);

const RESPONDER: &str = r#"
import select, socket, sys
ip = bytes(int(x) for x in sys.argv[1].split("."))
# The host's own address only: nothing answers 127.0.0.11:53 unless NAT sends it to 5300.
s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s4.bind((sys.argv[2], 53))
s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
s6.bind(("::", 53))
# Where a NAT rule may send port 53 elsewhere (as docker's embedded DNS does).
s5300 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s5300.bind(("0.0.0.0", 5300))
print("ready", flush=True)
while True:
    s = select.select([s4, s6, s5300], [], [])[0][0]
    q, peer = s.recvfrom(512)
    i = 12
    while q[i] != 0:
        i += 1 + q[i]
    question = q[12:i + 5]
    qtype = q[i + 1:i + 3]
    answers = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + ip if qtype == b"\x00\x01" else b""
    count = b"\x00\x01" if answers else b"\x00\x00"
    s.sendto(q[:2] + b"\x81\x80\x00\x01" + count + b"\x00\x00\x00\x00" + question + answers, peer)
"#;

impl DnsServer {
    fn start(host: &TestHost, answer: &str) -> DnsServer {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                host.netns(),
                "/usr/bin/python3",
                "-c",
                RESPONDER,
                answer,
                &host.ip().to_string(),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ready", "the DNS responder did not start");
        DnsServer(child)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn build_outbound_carries_the_name_it_was_resolved_under() {
    let sc = Scenario::new("loading eBPF programs");
    let web = sc.host("dnsweb");
    web.serve_http(8080, &[("payload", b"payload-bytes")]);
    let ns = sc.host("dnssrv");
    let _dns = DnsServer::start(&ns, &web.ip().to_string());
    let mut sensor = sc.start_sensor(&["--state-dir", &sc.state_dir()]);

    let name = "payload.build-test.example";
    // busybox nslookup resolves (it speaks DNS itself); wget then goes to the address it printed.
    let tag = sc.build(
        "dnsbuild",
        &format!(
            "FROM {BASE_IMAGE}\nRUN ip=$(nslookup {name} {dns} | sed -n 's/^Address: *//p' | tail -n1) && echo \"got $ip\" && wget -q -O /x http://$ip:8080/payload\n",
            dns = ns.ip()
        ),
        Builder::BuildKit,
    );

    let ns_ip = ns.ip().to_string();
    sensor.expect_record(
        "dns_query",
        &[
            ("query_name", eq(name)),
            ("server_addr", eq(ns_ip.as_str())),
        ],
        WAIT,
    );
    let resp = sensor.expect_record(
        "dns_response",
        &[
            ("query_name", eq(name)),
            ("query_type", eq("A")),
            ("server_addr", eq(ns_ip.as_str())),
        ],
        WAIT,
    );
    assert_fields(
        &resp,
        &[
            ("rcode", eq("NOERROR")),
            ("addrs.0", eq(web.ip().to_string())),
            ("server_port", eq(53)),
        ],
    );

    let built = build_record(&sensor, "build_finished", &tag, WAIT);
    assert_fields(&built, &[("status", eq("succeeded"))]);
    let web_ip = web.ip().to_string();
    let out = built["outbound"].as_array().unwrap();
    let http = out
        .iter()
        .find(|o| o["dst_addr"] == web_ip.as_str() && o["dst_port"] == 8080)
        .unwrap_or_else(|| panic!("no outbound to the web host: {built}"));
    assert_fields(http, &[("dns_name", eq(name)), ("made_by", eq("1"))]);
    assert!(sensor.stop().unwrap().success());
}

/// A tracked resolver (by name) in the test host's namespace asking in the ways resolvers do,
/// one name each: musl's sendto/recvfrom on an unconnected socket, glibc's connect then
/// send/recv, Go's write/read on a connected socket, glibc's way over IPv6 (::1), and glibc's
/// way to 127.0.0.11:53, which a NAT rule sends to port 5300 (docker's embedded DNS). Prints
/// its pid, then one line per answer.
const RESOLVER: &str = r#"
import os, select, socket, struct, sys
server, suffix = sys.argv[1], sys.argv[2]
print(os.getpid(), flush=True)
def query(name, qid):
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00\x00\x01\x00\x01"
def ask(style, family, addr, name, qid):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(5)
    if style == "sendto":
        s.sendto(query(name, qid), (addr, 53))
        answer = s.recvfrom(512)[0]
    elif style == "connect":
        s.connect((addr, 53))
        s.send(query(name, qid))
        answer = s.recv(512)
    else:
        s.connect((addr, 53))
        os.write(s.fileno(), query(name, qid))
        # The timeout made the socket non-blocking: wait for the answer as Go's poller does.
        select.select([s], [], [], 5)
        answer = os.read(s.fileno(), 512)
    s.close()
    print(style, family, len(answer), flush=True)
ask("sendto", socket.AF_INET, server, "musl." + suffix, 1)
ask("connect", socket.AF_INET, server, "glibc." + suffix, 2)
ask("write", socket.AF_INET, server, "go." + suffix, 3)
ask("connect", socket.AF_INET6, "::1", "six." + suffix, 4)
ask("connect", socket.AF_INET, "127.0.0.11", "nat." + suffix, 5)
"#;

/// A test host answering every A query with 10.231.255.254, and a python3 under a tracked
/// name of this test's own (`prefix`): the host, its server, the name and the link to run.
fn resolver_setup(
    sc: &Scenario,
    host: &str,
    prefix: &str,
) -> (Arc<TestHost>, DnsServer, String, std::path::PathBuf) {
    let ns = sc.host(host);
    let dns = DnsServer::start(&ns, "10.231.255.254");
    let name = format!("{prefix}-{}", std::process::id() % 100_000);
    let exe = sc.path(&name);
    std::os::unix::fs::symlink("/usr/bin/python3", &exe).unwrap();
    (ns, dns, name, exe)
}

/// The resolver's queries and responses are reported with its pid, the server and the names,
/// however it sends and reads. With the packet hooks, a response on an unconnected socket also
/// carries the server it came from (the socket has no peer to take it from).
fn resolvers_are_reported(hooks: &str) {
    let sc = Scenario::new("loading eBPF programs");
    let (ns, _dns, name, exe) = resolver_setup(&sc, "dnsres", "dnsq");
    // The test's own --kernel-hooks wins over one in $SENSOR_TEST_ARGS.
    let mut sensor = sc.start_sensor(&["--runtime-name", &name, "--kernel-hooks", hooks]);
    let started = sensor
        .wait_for(|r| r["kind"] == "sensor_started", WAIT)
        .unwrap();
    // What attached decides what is expected; with narrow hooks, the packet programs must be
    // among them.
    let probes = started["probes"].to_string();
    let attached = |p: &str| probes.contains(&format!("\"{p}\""));
    let packet_hooks = attached("dns_skb_egress");
    assert_eq!(packet_hooks, attached("dns_skb_ingress"), "{started}");
    let from = if packet_hooks { "packets" } else { "socket" };
    assert_fields(&started, &[("dns_events", eq(from))]);
    if hooks == "narrow" {
        assert!(
            packet_hooks,
            "the cgroup_skb programs did not attach: {started}"
        );
    }

    let (pid, suffix) = run_resolver(&ns, &exe);
    let ip = ns.ip().to_string();
    for (label, server) in [
        ("musl", ip.as_str()),
        ("glibc", ip.as_str()),
        ("go", ip.as_str()),
        ("six", "::1"),
        // Where the process sent it, not where NAT took it.
        ("nat", "127.0.0.11"),
    ] {
        let qname = format!("{label}.{suffix}");
        sensor.expect_record(
            "dns_query",
            &[
                ("process.pid", eq(pid)),
                ("query_name", eq(qname.as_str())),
                ("query_type", eq("A")),
                ("server_addr", eq(server)),
                ("server_port", eq(53)),
            ],
            WAIT,
        );
        // The unconnected socket (musl's) has no peer: only the packet names the server; the
        // socket hooks give the socket's empty peer.
        let from = if label == "musl" && !packet_hooks {
            (eq("0.0.0.0"), eq(0))
        } else {
            (eq(server), eq(53))
        };
        sensor.expect_record(
            "dns_response",
            &[
                ("process.pid", eq(pid)),
                ("query_name", eq(qname.as_str())),
                ("rcode", eq("NOERROR")),
                ("server_addr", from.0),
                ("server_port", from.1),
                ("addrs.0", eq("10.231.255.254")),
            ],
            WAIT,
        );
    }
    assert!(sensor.stop().unwrap().success());
}

/// Runs [`RESOLVER`] (through `exe`, a tracked name) in the test host's namespace against its
/// DNS server, with the NAT rule its 127.0.0.11 query needs; returns its pid and the names'
/// common suffix.
fn run_resolver(ns: &TestHost, exe: &std::path::Path) -> (u64, String) {
    // As docker's embedded DNS: 127.0.0.11:53 is redirected to another port on the way out.
    let nat = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.netns(),
            "iptables",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
        ])
        .args(["-p", "udp", "-d", "127.0.0.11", "--dport", "53"])
        .args(["-j", "DNAT", "--to-destination", "127.0.0.1:5300"])
        .output()
        .unwrap();
    assert!(
        nat.status.success(),
        "{}",
        String::from_utf8_lossy(&nat.stderr)
    );
    let suffix = format!("{}.test", unique_tag("res").replace([':', '_'], "-"));
    let out = Command::new("ip")
        .args(["netns", "exec", ns.netns()])
        .arg(exe)
        .args(["-c", RESOLVER, &ns.ip().to_string(), &suffix])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.lines().count() == 6,
        "the resolver failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid: u64 = text.lines().next().unwrap().trim().parse().unwrap();
    (pid, suffix)
}

#[test]
fn resolvers_are_reported_from_the_packets_with_narrow_hooks() {
    resolvers_are_reported("narrow");
}

#[test]
fn resolvers_are_reported_from_the_socket_hooks() {
    resolvers_are_reported("socket");
}

/// `--no-dns-events`: no DNS record for a tracked resolver's queries, the packet programs left
/// out (the narrow hooks still complete, so no socket tracepoint stays for DNS), and the
/// resolver's process still reported.
#[test]
fn no_dns_events_leaves_the_packet_programs_out() {
    let sc = Scenario::new("loading eBPF programs");
    let (ns, _dns, name, exe) = resolver_setup(&sc, "dnsoff", "dnso");
    let mut sensor = sc.start_sensor(&[
        "--runtime-name",
        &name,
        "--kernel-hooks",
        "auto",
        "--no-dns-events",
    ]);
    let started = sensor
        .wait_for(|r| r["kind"] == "sensor_started", WAIT)
        .unwrap();
    assert_fields(
        &started,
        &[
            ("dns_events", eq("off")),
            ("kernel_hooks", eq("narrow")),
            ("probes_unused.dns_skb_egress", eq("--no-dns-events")),
            ("probes_unused.dns_skb_ingress", eq("--no-dns-events")),
        ],
    );
    let probes = started["probes"].to_string();
    for p in ["dns_skb_egress", "dns_skb_ingress", "sock_send_length"] {
        assert!(
            !probes.contains(&format!("\"{p}\"")),
            "{p} attached: {started}"
        );
    }

    let (pid, _) = run_resolver(&ns, &exe);
    sensor.expect_record("process_exec", &[("process.pid", eq(pid))], WAIT);
    for kind in ["dns_query", "dns_response"] {
        sensor.expect_no_record(kind, &[("process.pid", eq(pid))], Duration::from_secs(3));
    }
    assert!(sensor.stop().unwrap().success());
}
