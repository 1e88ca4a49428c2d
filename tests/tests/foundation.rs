//! The foundation's promises, on the real kernel with a real dockerd: process, network and
//! Engine API records from runtime trees, nothing from unrelated processes, clean shutdown.
use std::{process::Command, time::Duration};

use sensor_tests::*;

const WAIT: Duration = Duration::from_secs(60);

#[test]
fn runtime_trees_are_traced_and_unrelated_processes_are_not() {
    let sc = Scenario::new("loading eBPF programs");
    let peer = sc.host("found");
    peer.serve_http(8080, &[("payload", b"payload-bytes")]);
    let mut sensor = sc.start_sensor(&["--stats-interval", "2"]);

    // A container: its process descends from the runtime, so its exec is reported.
    let marker = unique_tag("run-marker").replace(':', "-");
    run(
        docker_cli(),
        &[
            "run",
            "--rm",
            "localbase:1",
            "sh",
            "-c",
            &format!("echo {marker} > /tmp/out"),
        ],
    );
    let exec = sensor
        .wait_for(
            |r| r["kind"] == "process_exec" && argv_has(r, &marker),
            WAIT,
        )
        .unwrap();
    let positive = || satisfies("a number > 0", |v| v.as_u64().is_some_and(|n| n > 0));
    assert_fields(
        &exec,
        &[
            ("process.role", eq("descendant")),
            ("process.pid", positive()),
            ("start_time_ns", positive()),
        ],
    );

    // A build step that downloads from a test host: the connect carries the step's pid and the
    // test host's address, and the step's exec has the same pid.
    sc.build(
        "found-build",
        &format!(
            "FROM {BASE_IMAGE}\nRUN wget -q -O /x {}\n",
            peer.url(8080, "payload")
        ),
        Builder::BuildKit,
    );
    let ip = peer.ip().to_string();
    let conn = sensor.expect_record(
        "connect",
        &[("dst_addr", eq(ip.as_str())), ("dst_port", eq(8080))],
        WAIT,
    );
    assert_fields(
        &conn,
        &[("result", eq("established")), ("protocol", eq("tcp"))],
    );
    let pid = conn["process"]["pid"].as_u64().unwrap();
    let records = sensor.records();
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "process_exec" && r["process"]["pid"].as_u64() == Some(pid)),
        "no exec for the connecting pid {pid}"
    );

    // A raw Engine API call with curl: the request line, User-Agent and the client's own pid.
    let mut curl = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "--unix-socket",
            DOCKER_SOCKET,
            "http://x/v1.41/images/json?all=1",
        ])
        .spawn()
        .unwrap();
    let curl_pid = curl.id() as u64;
    assert!(curl.wait().unwrap().success());
    let req = sensor.expect_record("api_request", &[("client.pid", eq(curl_pid))], WAIT);
    assert_fields(
        &req,
        &[
            ("method", eq("GET")),
            ("path", eq("/v1.41/images/json")),
            ("endpoint", eq("/images/json")),
            ("query", eq("all=1")),
            ("user_agent", starts_with("curl/")),
            ("client.transport", eq("unix")),
            ("client.exe", eq("/usr/bin/curl")),
            ("process.comm", eq("dockerd")),
        ],
    );
    sensor.expect_record(
        "connect",
        &[("path", eq(DOCKER_SOCKET)), ("process.pid", eq(curl_pid))],
        WAIT,
    );

    // A longer-lived API client: its parent is known too (read while it is alive).
    let mut sh = Command::new("/bin/sh")
        .args([
            "-c",
            "curl -s --max-time 3 --unix-socket /var/run/docker.sock http://x/v1.41/events >/dev/null; true",
        ])
        .spawn()
        .unwrap();
    let sh_pid = sh.id() as u64;
    let c = sensor.expect_record(
        "connect",
        &[("path", eq(DOCKER_SOCKET)), ("process.ppid", eq(sh_pid))],
        WAIT,
    );
    assert_fields(&c, &[("process.role", eq("api_client"))]);
    let _ = sh.wait();

    // An unrelated process outside any runtime tree produces nothing.
    let quiet = unique_tag("unrelated").replace(':', "-");
    run(
        "/bin/sh",
        &[
            "-c",
            &format!("/bin/echo {quiet} >/dev/null; cat /etc/hostname >/dev/null"),
        ],
    );
    sensor
        .expect_none(
            |r| argv_has(r, &quiet) || r.to_string().contains(&quiet),
            Duration::from_secs(3),
        )
        .unwrap();

    // Periodic and final stats; SIGTERM exits 0.
    sensor
        .wait_for(|r| r["kind"] == "sensor_stats", WAIT)
        .unwrap();
    let status = sensor.stop().unwrap();
    assert!(status.success(), "sensor exited with {status}");
    let last = sensor
        .records()
        .into_iter()
        .rev()
        .find(|r| r["kind"] == "sensor_stats")
        .unwrap();
    assert_fields(
        &last,
        &[
            ("final_report", eq(true)),
            ("drops.ringbuf_full", eq(0)),
            ("events.exec", positive()),
        ],
    );
}

#[test]
fn hostile_argv_bytes_give_valid_json() {
    let sc = Scenario::new("loading eBPF programs");
    let mut sensor = sc.start_sensor(&["--runtime-name", "hostile-rt"]);
    // A tracked root (by name) that execs a child with invalid UTF-8, quotes and newlines in argv.
    let rt = sc.path("hostile-rt");
    std::os::unix::fs::symlink("/bin/sh", &rt).unwrap();
    let script = "exec /bin/echo \"$(printf 'a\\377b\\nq\"\\001')\" hostile-marker > /dev/null";
    let st = Command::new(&rt).args(["-c", script]).status().unwrap();
    assert!(st.success());
    let r = sensor
        .wait_for(
            |r| {
                r["kind"] == "process_exec"
                    && r["filename"] == "/bin/echo"
                    && argv_has(r, "hostile-marker")
            },
            WAIT,
        )
        .unwrap();
    let arg = r["argv"][1].as_str().unwrap();
    assert!(
        arg.contains('\u{FFFD}') && arg.contains('\n') && arg.contains('"'),
        "{arg:?}"
    );
    assert!(sensor.stop().unwrap().success());
}

#[test]
fn check_and_bad_flags_give_one_clear_line() {
    require_root("loading eBPF programs");
    let out = Command::new(sensor_bin()).arg("check").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("ok   probe sched_process_exec"), "{text}");
    assert!(text.contains("ok   kernel BTF"), "{text}");

    let out = Command::new(sensor_bin())
        .args(["run", "--no-such-flag"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--no-such-flag"), "{err}");

    let out = Command::new(sensor_bin())
        .args(["run", "--ringbuf-mib", "3"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("power of two"));

    let out = Command::new(sensor_bin())
        .args(["run", "--runtime-name", "a-name-longer-than-15"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("15-byte"), "{err}");
}

#[test]
fn dns_queries_and_accepts_in_runtime_trees() {
    let sc = Scenario::new("loading eBPF programs");
    let dns_host = sc.host("dns");
    let mut sensor = sc.start_sensor(&["--runtime-name", "accept-rt"]);

    // A container resolving a name against a test host's port 53 (nothing answers; the query
    // itself is what is reported).
    let name = "payload.build-test.invalid";
    let _ = Cmd::new(docker_cli())
        .args([
            "run",
            "--rm",
            "localbase:1",
            "nslookup",
            name,
            &dns_host.ip().to_string(),
        ])
        .timeout(Duration::from_secs(60))
        .output();
    let q = sensor.expect_record(
        "dns_query",
        &[
            ("query_name", eq(name)),
            ("server_addr", eq(dns_host.ip().to_string())),
        ],
        WAIT,
    );
    assert_fields(&q, &[("server_port", eq(53)), ("query_type", eq("A"))]);

    // A tracked process (by name) accepting a loopback TCP connection.
    let rt = sc.path("accept-rt");
    std::os::unix::fs::symlink("/bin/sh", &rt).unwrap();
    // A port of its own: other tests on this host listen too.
    let port = free_loopback_port();
    // The tracked root execs into the listener: what it runs stays in the tree.
    let server = KillOnDrop(
        Command::new(&rt)
            .args(["-c", &format!("exec busybox nc -l -p {port} 127.0.0.1")])
            .spawn()
            .unwrap(),
    );
    let mut client = None;
    for _ in 0..50 {
        if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            client = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let client = client.expect("the tracked listener never accepted");
    let local_port = client.local_addr().unwrap().port();
    let a = sensor.expect_record("accept", &[("local_port", eq(port))], WAIT);
    assert_fields(
        &a,
        &[
            ("peer_addr", eq("127.0.0.1")),
            ("peer_port", eq(local_port)),
            ("process.pid", eq(server.0.id())),
        ],
    );
    drop(client);
    drop(server);
    assert!(sensor.stop().unwrap().success());
}

/// Kills and reaps a child process when dropped, also when the test fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
