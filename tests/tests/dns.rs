//! DNS as a build sees it: a RUN step resolves a name against a DNS server on a test host, then
//! downloads from the address it got; the sensor reports the query and the response, and the
//! build's outbound connection carries the name it was looked up under.
use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use sensor_tests::*;

const WAIT: Duration = Duration::from_secs(90);

/// A DNS server for one test: answers every A query with `answer`, in the test host's network
/// namespace, on UDP port 53. Debian's /usr/bin/python3 is on every machine of this kind.
struct DnsServer(Child);

const RESPONDER: &str = r#"
import socket, sys
ip = bytes(int(x) for x in sys.argv[1].split("."))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 53))
print("ready", flush=True)
while True:
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
