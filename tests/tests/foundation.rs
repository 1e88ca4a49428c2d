//! The foundation's promises, on the real kernel with a real dockerd: process, network and
//! Engine API records from runtime trees, nothing from unrelated processes, clean shutdown.
use std::{process::Command, time::Duration};

use sensor_tests::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

fn argv_has(r: &Value, needle: &str) -> bool {
    r["argv"].as_array().is_some_and(|a| {
        a.iter()
            .any(|s| s.as_str().is_some_and(|s| s.contains(needle)))
    })
}

#[test]
fn runtime_trees_are_traced_and_unrelated_processes_are_not() {
    require_root("loading eBPF programs");
    Dockerd::ensure();
    ensure_base_image("localbase:1");
    let peer = TestHost::new("found");
    peer.serve_http(8080, &[("payload", b"payload-bytes")]);
    let mut sensor = SensorProcess::start(&["--stats-interval", "2"]).unwrap();

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
    assert_eq!(exec["process"]["role"], "descendant", "{exec}");
    assert!(exec["process"]["pid"].as_u64().unwrap() > 0);
    assert!(exec["start_time_ns"].as_u64().unwrap() > 0);

    // A build step that downloads from a test host: the connect carries the step's pid and the
    // test host's address, and the step's exec has the same pid.
    let tag = unique_tag("found-build");
    BuildContext::new(&format!(
        "FROM localbase:1\nRUN wget -q -O /x {}\n",
        peer.url(8080, "payload")
    ))
    .build(&tag, Builder::BuildKit);
    let ip = peer.ip().to_string();
    let conn = sensor
        .wait_for(
            |r| r["kind"] == "connect" && r["dst_addr"] == ip.as_str() && r["dst_port"] == 8080,
            WAIT,
        )
        .unwrap();
    assert_eq!(conn["result"], "established", "{conn}");
    assert_eq!(conn["protocol"], "tcp");
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
    let req = sensor
        .wait_for(
            |r| r["kind"] == "api_request" && r["client"]["pid"].as_u64() == Some(curl_pid),
            WAIT,
        )
        .unwrap();
    assert_eq!(req["method"], "GET");
    assert_eq!(req["path"], "/v1.41/images/json");
    assert_eq!(req["endpoint"], "/images/json");
    assert_eq!(req["query"], "all=1");
    assert!(
        req["user_agent"].as_str().unwrap().starts_with("curl/"),
        "{req}"
    );
    assert_eq!(req["client"]["transport"], "unix");
    assert_eq!(req["client"]["exe"], "/usr/bin/curl");
    assert_eq!(req["process"]["comm"], "dockerd");
    sensor
        .wait_for(
            |r| {
                r["kind"] == "connect"
                    && r["path"] == DOCKER_SOCKET
                    && r["process"]["pid"].as_u64() == Some(curl_pid)
            },
            WAIT,
        )
        .unwrap();

    // A longer-lived API client: its parent is known too (read while it is alive).
    let mut sh = Command::new("/bin/sh")
        .args([
            "-c",
            "curl -s --max-time 3 --unix-socket /var/run/docker.sock http://x/v1.41/events >/dev/null; true",
        ])
        .spawn()
        .unwrap();
    let sh_pid = sh.id() as u64;
    let c = sensor
        .wait_for(
            |r| {
                r["kind"] == "connect"
                    && r["path"] == DOCKER_SOCKET
                    && r["process"]["ppid"].as_u64() == Some(sh_pid)
            },
            WAIT,
        )
        .unwrap();
    assert_eq!(c["process"]["role"], "api_client", "{c}");
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
    assert_eq!(last["final_report"], true);
    assert_eq!(last["drops"]["ringbuf_full"], 0, "{last}");
    assert!(last["events"]["exec"].as_u64().unwrap() > 0);
    remove_image(&tag);
}

#[test]
fn hostile_argv_bytes_give_valid_json() {
    require_root("loading eBPF programs");
    let mut sensor = SensorProcess::start(&["--runtime-name", "hostile-rt"]).unwrap();
    // A tracked root (by name) that execs a child with invalid UTF-8, quotes and newlines in argv.
    let dir = tempfile::tempdir().unwrap();
    let rt = dir.path().join("hostile-rt");
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
    require_root("loading eBPF programs");
    Dockerd::ensure();
    ensure_base_image("localbase:1");
    let dns_host = TestHost::new("dns");
    let mut sensor = SensorProcess::start(&["--runtime-name", "accept-rt"]).unwrap();

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
    let q = sensor
        .wait_for(
            |r| r["kind"] == "dns_query" && r["query_name"] == name,
            WAIT,
        )
        .unwrap();
    assert_eq!(q["server_addr"], dns_host.ip().to_string());
    assert_eq!(q["server_port"], 53);
    assert_eq!(q["query_type"], "A");

    // A tracked process (by name) accepting a loopback TCP connection.
    let dir = tempfile::tempdir().unwrap();
    let rt = dir.path().join("accept-rt");
    std::os::unix::fs::symlink("/bin/sh", &rt).unwrap();
    // The tracked root execs into the listener: what it runs stays in the tree.
    let mut server = Command::new(&rt)
        .args(["-c", "exec busybox nc -l -p 38123 127.0.0.1"])
        .spawn()
        .unwrap();
    let mut client = None;
    for _ in 0..50 {
        if let Ok(s) = std::net::TcpStream::connect("127.0.0.1:38123") {
            client = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let client = client.expect("the tracked listener never accepted");
    let local_port = client.local_addr().unwrap().port();
    let a = sensor
        .wait_for(|r| r["kind"] == "accept" && r["local_port"] == 38123, WAIT)
        .unwrap();
    assert_eq!(a["peer_addr"], "127.0.0.1");
    assert_eq!(a["peer_port"], local_port);
    assert_eq!(a["process"]["pid"].as_u64(), Some(server.id() as u64));
    drop(client);
    let _ = server.kill();
    let _ = server.wait();
    assert!(sensor.stop().unwrap().success());
}
