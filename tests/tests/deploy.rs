//! The deployment files: the Kubernetes manifests (parsed, checked for what a node agent needs,
//! validated against the Kubernetes schemas offline), the systemd unit (`systemd-analyze
//! verify`), and the container image (built offline, then run with the DaemonSet's mounts and
//! capabilities against this host's dockerd, where it must see a container start).
//!
//! Run as root: `cargo test -p sensor-tests --test deploy -- --test-threads=1`. The image test
//! takes the static binary from `$SENSOR_MUSL_BIN`, else
//! `target/x86_64-unknown-linux-musl/release/sensor` (`cargo xtask image --binary-only`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sensor_tests::{Cmd, Scenario, SensorProcess, docker_cli, sensor_bin, workspace_root};
use serde_json::Value;

const BASE: &str = "localbase:1";
const K8S_DIR: &str = "deploy/kubernetes";
const UNIT: &str = "deploy/systemd/sensor.service";
const POLICY_EXAMPLE: &str = "deploy/policy.example.toml";
/// The copy that kustomize's configMapGenerator reads (it reads no file outside its directory).
const POLICY_COPY: &str = "deploy/kubernetes/policy.toml";
const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

fn path(rel: &str) -> PathBuf {
    workspace_root().join(rel)
}

fn read(rel: &str) -> String {
    fs::read_to_string(path(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// Every YAML file of deploy/kubernetes but the kustomization, with its documents.
fn manifest_files() -> Vec<(PathBuf, Vec<Value>)> {
    let mut files: Vec<PathBuf> = fs::read_dir(path(K8S_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .filter(|p| p.file_stem().is_some_and(|s| s != "kustomization"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let docs = parse_yaml_docs(&fs::read_to_string(&p).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, docs)
        })
        .collect()
}

/// The documents of a YAML stream (split at `---` lines; empty ones skipped).
fn parse_yaml_docs(text: &str) -> Result<Vec<Value>, serde_norway::Error> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else {
            let last = docs.last_mut().unwrap();
            last.push_str(line);
            last.push('\n');
        }
    }
    docs.iter()
        .map(|d| serde_norway::from_str::<Value>(d))
        .filter(|d| !matches!(d, Ok(Value::Null)))
        .collect()
}

fn objects() -> Vec<Value> {
    manifest_files().into_iter().flat_map(|(_, d)| d).collect()
}

fn object(kind: &str) -> Value {
    let found: Vec<Value> = objects()
        .into_iter()
        .filter(|o| o["kind"] == kind)
        .collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind} in {K8S_DIR}");
    found.into_iter().next().unwrap()
}

fn kustomization() -> Value {
    serde_norway::from_str(&read(&format!("{K8S_DIR}/kustomization.yaml"))).unwrap()
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The capabilities of the systemd unit's bounding set, without the `CAP_` prefix.
fn unit_capabilities() -> BTreeSet<String> {
    let unit = read(UNIT);
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit has a CapabilityBoundingSet");
    line.split_whitespace()
        .map(|c| c.strip_prefix("CAP_").unwrap_or(c).to_string())
        .collect()
}

fn sensor_container(ds: &Value) -> Value {
    let containers = ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    containers
        .iter()
        .find(|c| c["name"] == "sensor")
        .expect("a container named sensor")
        .clone()
}

/// volume name → volume.
fn volumes(ds: &Value) -> BTreeMap<String, Value> {
    ds["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("the DaemonSet has volumes")
        .iter()
        .map(|v| (v["name"].as_str().unwrap().to_string(), v.clone()))
        .collect()
}

/// The container path at which the host path `host` is mounted.
fn mount_of_host_path(ds: &Value, host: &str) -> Option<String> {
    let vols = volumes(ds);
    sensor_container(ds)["volumeMounts"]
        .as_array()?
        .iter()
        .find(|m| vols[m["name"].as_str().unwrap()]["hostPath"]["path"] == host)
        .and_then(|m| m["mountPath"].as_str().map(String::from))
}

fn env_value(container: &Value, name: &str) -> Option<String> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(String::from))
}

#[test]
fn manifests_parse_and_the_daemonset_has_what_a_node_agent_needs() {
    let objects = objects();
    let kinds: BTreeSet<String> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap().to_string())
        .collect();
    for kind in ["Namespace", "ServiceAccount", "DaemonSet"] {
        assert!(
            kinds.contains(kind),
            "no {kind} in {K8S_DIR} (found {kinds:?})"
        );
    }
    let ns = object("Namespace")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    for o in objects.iter().filter(|o| o["kind"] != "Namespace") {
        assert_eq!(
            o["metadata"]["namespace"],
            ns.as_str(),
            "namespace of {}",
            o["kind"]
        );
    }

    let ds = object("DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(
        pod["hostPID"], true,
        "the DaemonSet must share the host's pid namespace"
    );
    assert_eq!(
        pod["serviceAccountName"],
        object("ServiceAccount")["metadata"]["name"],
        "the pod runs as the ServiceAccount defined here"
    );
    // Every node, whatever its taints: one toleration with operator Exists and no key.
    let tolerations = pod["tolerations"].as_array().expect("tolerations");
    assert!(
        tolerations.iter().any(|t| t["operator"] == "Exists"
            && t.get("key").is_none()
            && t.get("effect").is_none()),
        "no toleration of every taint (operator: Exists, no key, no effect): {tolerations:?}"
    );
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    for (k, v) in ds["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            &labels[k], v,
            "the selector's {k} must match the pod's labels"
        );
    }

    let c = sensor_container(&ds);
    for kind in ["requests", "limits"] {
        for res in ["cpu", "memory"] {
            assert!(
                c["resources"][kind][res].is_string() || c["resources"][kind][res].is_number(),
                "resources.{kind}.{res} is missing"
            );
        }
    }

    let sc = &c["securityContext"];
    assert_ne!(
        sc["privileged"], true,
        "capabilities suffice: the container must not be privileged"
    );
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"]);
    let added: BTreeSet<String> = strs(&sc["capabilities"]["add"]).into_iter().collect();
    assert_eq!(
        added,
        unit_capabilities(),
        "the DaemonSet's capabilities must be the systemd unit's CapabilityBoundingSet"
    );

    // Every mount has a volume, and every volume is mounted.
    let vols = volumes(&ds);
    let mounts = c["volumeMounts"].as_array().expect("volumeMounts");
    let mounted: BTreeSet<&str> = mounts.iter().map(|m| m["name"].as_str().unwrap()).collect();
    for m in mounts {
        let name = m["name"].as_str().unwrap();
        assert!(vols.contains_key(name), "volumeMount {name} has no volume");
        // The host is only read, but for the sensor's own state directory.
        let host = vols[name]["hostPath"]["path"].as_str();
        if host.is_some() && host != Some("/var/lib/sensor") {
            assert_eq!(
                m["readOnly"], true,
                "host path {host:?} must be mounted read-only"
            );
        }
    }
    for name in vols.keys() {
        assert!(
            mounted.contains(name.as_str()),
            "volume {name} is never mounted"
        );
    }
    // What the sensor reads from the host, where it expects it.
    assert_eq!(
        env_value(&c, "SENSOR_PROC"),
        mount_of_host_path(&ds, "/proc"),
        "SENSOR_PROC"
    );
    assert_eq!(
        env_value(&c, "SENSOR_PASSWD"),
        mount_of_host_path(&ds, "/etc/passwd"),
        "SENSOR_PASSWD"
    );
    for same in [
        "/sys/kernel/btf",
        "/sys/kernel/tracing",
        "/var/lib/docker",
        "/run/containerd",
    ] {
        assert_eq!(
            mount_of_host_path(&ds, same).as_deref(),
            Some(same),
            "{same} must be mounted at its host path"
        );
    }

    // The sensor accepts the container's arguments.
    let args = strs(&c["args"]);
    assert_eq!(
        args.first().map(String::as_str),
        Some("run"),
        "args must start with `run`"
    );
    assert_run_accepts(&args[1..]);

    // The documented least-privilege set for the pod's uid.
    let uid0 = sc["runAsUser"].as_u64() == Some(0);
    assert_eq!(
        added,
        documented_capabilities(uid0),
        "the DaemonSet vs docs/operations.md"
    );
}

/// The capabilities docs/operations.md's table ("| `CAP_X` | needed | why |") says a sensor
/// running as uid 0 (or not) needs: `always`, `recommended`, and `when not uid 0` for another
/// uid. Without the prefix.
fn documented_capabilities(uid0: bool) -> BTreeSet<String> {
    let ops = read("docs/operations.md");
    let section = ops
        .split("## Capabilities")
        .nth(1)
        .expect("docs/operations.md has a Capabilities section");
    let mut caps = BTreeSet::new();
    for line in section.lines().take_while(|l| !l.starts_with("## ")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (Some(cap), Some(needed)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        let Some(cap) = cap.trim_matches('`').strip_prefix("CAP_") else {
            continue;
        };
        let wanted = match *needed {
            "always" | "recommended" => true,
            "when not uid 0" => !uid0,
            _ => false,
        };
        if wanted {
            caps.insert(cap.to_string());
        }
    }
    assert!(
        caps.contains("BPF"),
        "no capability table found in docs/operations.md"
    );
    caps
}

/// Every `--flag` of `args` is one that `sensor run --help` lists.
fn assert_run_accepts(args: &[String]) {
    let bin = sensor_bin();
    assert!(
        bin.is_file(),
        "sensor binary not found at {} (set SENSOR_BIN)",
        bin.display()
    );
    let help = Cmd::new(&bin).args(["run", "--help"]).run();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    for a in args.iter().filter(|a| a.starts_with("--")) {
        let flag = a.split('=').next().unwrap();
        assert!(
            help.split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[' || c == '<')
                .any(|w| w == flag),
            "`sensor run` has no {flag} flag:\n{help}"
        );
    }
}

#[test]
fn kustomization_lists_every_manifest_and_ships_the_example_policy() {
    let k = kustomization();
    let listed: BTreeSet<String> = strs(&k["resources"]).into_iter().collect();
    let present: BTreeSet<String> = manifest_files()
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        listed, present,
        "kustomization.yaml resources vs the YAML files beside it"
    );

    assert_eq!(
        read(POLICY_COPY),
        read(POLICY_EXAMPLE),
        "{POLICY_COPY} must be a copy of {POLICY_EXAMPLE}: cp {POLICY_EXAMPLE} {POLICY_COPY}"
    );
    // The generated ConfigMap is the one the DaemonSet mounts, and holds policy.toml.
    let ds = object("DaemonSet");
    let gens = k["configMapGenerator"]
        .as_array()
        .expect("configMapGenerator");
    let policy_gen = gens
        .iter()
        .find(|g| strs(&g["files"]).iter().any(|f| f == "policy.toml"))
        .expect("a configMapGenerator with policy.toml");
    let (vol_name, _) = volumes(&ds)
        .into_iter()
        .find(|(_, v)| v["configMap"]["name"] == policy_gen["name"])
        .expect("a volume of the policy ConfigMap");
    let mount = sensor_container(&ds)["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == vol_name.as_str())
        .expect("the policy volume is mounted")
        .clone();
    let policy_path = format!("{}/policy.toml", mount["mountPath"].as_str().unwrap());
    // When the sensor takes a --policy flag, the DaemonSet points it at the mounted file.
    let args = strs(&sensor_container(&ds)["args"]);
    if let Some(i) = args
        .iter()
        .position(|a| a == "--policy" || a.starts_with("--policy="))
    {
        let value = args[i]
            .strip_prefix("--policy=")
            .map(String::from)
            .or_else(|| args.get(i + 1).cloned());
        assert_eq!(value.as_deref(), Some(policy_path.as_str()), "--policy");
    }
}

/// The offline validator (`cargo xtask setup` installs it from PyPI), on each file and, when
/// kubectl is there, on kustomize's output.
#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let files: Vec<PathBuf> = manifest_files().into_iter().map(|(p, _)| p).collect();
    validate(&files);

    let Some(kubectl) = find_on_path("kubectl") else {
        eprintln!("kubectl not found: the kustomize rendering is not validated");
        return;
    };
    let out = Cmd::new(kubectl).arg("kustomize").arg(path(K8S_DIR)).run();
    let rendered = String::from_utf8(out.stdout).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    fs::write(&file, &rendered).unwrap();
    validate(&[file]);
    let docs = parse_yaml_docs(&rendered).unwrap();
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("a rendered ConfigMap");
    assert_eq!(
        cm["data"]["policy.toml"].as_str(),
        Some(read(POLICY_EXAMPLE).as_str())
    );
    // The DaemonSet mounts the generated (hash-suffixed) name.
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    assert!(
        volumes(ds)
            .values()
            .any(|v| v["configMap"]["name"] == cm["metadata"]["name"]),
        "the rendered DaemonSet does not mount {}",
        cm["metadata"]["name"]
    );
}

fn validate(files: &[PathBuf]) {
    let out = Cmd::new("python3")
        .args(["-m", "kubernetes_validate", "--strict"])
        .args(files.iter().map(|f| f.as_os_str().to_owned()))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("No module named kubernetes_validate"),
        "kubernetes-validate is not installed: `cargo xtask setup` installs it \
         (python3 -m pip install kubernetes-validate)"
    );
    assert!(
        out.status.success(),
        "kubernetes-validate refused the manifests:\n{text}"
    );
    assert!(
        text.contains("passed"),
        "kubernetes-validate validated nothing:\n{text}"
    );
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain(["/usr/local/bin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// `systemd-analyze verify` checks that ExecStart's program exists: the unit names the
/// installed path (/usr/local/bin/sensor), so a drop-in beside a copy of it points ExecStart at
/// the built binary and leaves every other line as shipped.
#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let analyze = find_on_path("systemd-analyze")
        .expect("systemd-analyze is not installed: `cargo xtask setup` installs it (apt-get install -y systemd)");
    let unit = read(UNIT);
    for key in [
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=",
        "PrivateTmp=yes",
        "StateDirectory=sensor",
        "ReadWritePaths=/var/lib/sensor",
        "RestrictAddressFamilies=",
        "SystemCallArchitectures=native",
        "LimitMEMLOCK=infinity",
        "Restart=on-failure",
    ] {
        assert!(
            unit.lines().any(|l| l.starts_with(key)),
            "{UNIT} lacks {key}"
        );
    }
    let root = unit.lines().any(|l| l == "User=root");
    assert_eq!(
        unit_capabilities(),
        documented_capabilities(root),
        "{UNIT} vs docs/operations.md"
    );
    let ambient = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .unwrap();
    assert_eq!(
        ambient
            .split_whitespace()
            .map(|c| c.trim_start_matches("CAP_").to_string())
            .collect::<BTreeSet<_>>(),
        unit_capabilities(),
        "AmbientCapabilities vs CapabilityBoundingSet"
    );
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let (program, rest) = exec.split_once(' ').unwrap_or((exec, ""));
    assert_eq!(program, "/usr/local/bin/sensor");
    let bin = sensor_bin();
    assert!(
        bin.is_file(),
        "sensor binary not found at {} (set SENSOR_BIN)",
        bin.display()
    );

    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("sensor.service"), &unit).unwrap();
    fs::create_dir(dir.path().join("sensor.service.d")).unwrap();
    fs::write(
        dir.path().join("sensor.service.d/built-binary.conf"),
        format!(
            "[Service]\nExecStart=\nExecStart={} {rest}\n",
            bin.display()
        ),
    )
    .unwrap();
    let out = Cmd::new(analyze)
        .arg("verify")
        .arg(dir.path().join("sensor.service"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{text}"
    );
    // Unknown or misspelt keys are only warnings: none may concern the unit.
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("sensor.service"))
        .collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze verify warned about the unit:\n{}",
        ours.join("\n")
    );
}

fn musl_bin() -> PathBuf {
    let bin = std::env::var_os("SENSOR_MUSL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace_root().join("target"));
            target.join(MUSL_TARGET).join("release").join("sensor")
        });
    assert!(
        bin.is_file(),
        "static sensor binary not found at {}: build it with `cargo xtask image --binary-only` \
         (or cargo build --release -p sensor --target {MUSL_TARGET}), or set SENSOR_MUSL_BIN",
        bin.display()
    );
    bin
}

/// The `docker run` options equivalent to the DaemonSet's pod: host pid namespace, the
/// capabilities, the read-only root, the host mounts at the same container paths, the policy
/// ConfigMap as a directory, the environment. `state` replaces the sensor's state directory.
fn docker_run_options(ds: &Value, policy_dir: &Path, state: &Path, node: &str) -> Vec<String> {
    let pod = &ds["spec"]["template"]["spec"];
    let c = sensor_container(ds);
    let sc = &c["securityContext"];
    let mut o: Vec<String> = Vec::new();
    if pod["hostPID"] == true {
        o.push("--pid=host".into());
    }
    for cap in strs(&sc["capabilities"]["drop"]) {
        o.push(format!("--cap-drop={cap}"));
    }
    let mut stand_in = false;
    for cap in strs(&sc["capabilities"]["add"]) {
        if docker_can_grant(&cap) {
            o.push(format!("--cap-add={cap}"));
        } else if cap == "BPF" || cap == "PERFMON" {
            // dockerd 20.10 knows neither, and its seccomp profile allows bpf() and
            // perf_event_open() only with CAP_SYS_ADMIN, which the kernel takes for both.
            eprintln!("deploy test: this docker cannot grant CAP_{cap}: CAP_SYS_ADMIN stands in");
            stand_in = true;
        } else {
            panic!("this host's docker cannot grant CAP_{cap}");
        }
    }
    if stand_in {
        o.push("--cap-add=SYS_ADMIN".into());
    }
    if sc["seccompProfile"]["type"] == "Unconfined" {
        o.push("--security-opt=seccomp=unconfined".into());
    }
    if sc["readOnlyRootFilesystem"] == true {
        o.push("--read-only".into());
    }
    if sc["allowPrivilegeEscalation"] == false {
        o.push("--security-opt=no-new-privileges".into());
    }
    if let Some(uid) = sc["runAsUser"].as_u64() {
        o.push(format!("--user={uid}"));
    }
    if let Some(mem) = c["resources"]["limits"]["memory"].as_str() {
        // Kubernetes' Mi is docker's m.
        o.push(format!(
            "--memory={}",
            mem.trim_end_matches("i").to_lowercase()
        ));
    }
    let vols = volumes(ds);
    for m in c["volumeMounts"].as_array().unwrap() {
        let v = &vols[m["name"].as_str().unwrap()];
        let source = if let Some(host) = v["hostPath"]["path"].as_str() {
            if host == "/var/lib/sensor" {
                state.to_path_buf()
            } else {
                PathBuf::from(host)
            }
        } else if v.get("configMap").is_some() {
            policy_dir.to_path_buf()
        } else {
            panic!("volume kind not handled by this test: {v}");
        };
        let ro = if m["readOnly"] == true { ":ro" } else { "" };
        o.push(format!(
            "--volume={}:{}{ro}",
            source.display(),
            m["mountPath"].as_str().unwrap()
        ));
    }
    for e in c["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        let value = match e["value"].as_str() {
            Some(v) => v.to_string(),
            None if e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName" => node.to_string(),
            None => panic!("env {name}: value source not handled by this test"),
        };
        o.push(format!("--env={name}={value}"));
    }
    o
}

/// Whether a container may be given this capability here.
fn docker_can_grant(cap: &str) -> bool {
    Command::new(docker_cli())
        .args([
            "run",
            "--rm",
            "--cap-drop=ALL",
            &format!("--cap-add={cap}"),
            BASE,
            "true",
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Builds deploy/Dockerfile (FROM scratch: nothing to pull) from the static binary, runs the
/// image as the DaemonSet runs it, and sees a container started on this host's dockerd.
#[test]
fn image_builds_offline_and_sees_a_container_start_with_the_daemonset_mounts() {
    let sc = Scenario::new("building and running the sensor image");
    ensure_tracefs();
    // The scenario's directory holds the build context, the policy, the state and the wrapper.
    let subdir = |name: &str| {
        let d = sc.path(name);
        fs::create_dir_all(&d).unwrap();
        d
    };

    // Build: the context is the binary and the Dockerfile, nothing else.
    let bin = musl_bin();
    let ctx = subdir("context");
    fs::copy(&bin, ctx.join("sensor")).unwrap();
    fs::copy(path("deploy/Dockerfile"), ctx.join("Dockerfile")).unwrap();
    let image = sc.tag("sensor-deploy-test");
    Cmd::new(docker_cli())
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "--tag", &image])
        .arg(&ctx)
        .timeout(Duration::from_secs(120))
        .run();

    // Run it as the DaemonSet would, through a wrapper that SensorProcess starts as `<bin> run
    // ARGS`: `docker run` in the foreground passes the container's stdout through and proxies
    // SIGTERM to it.
    let ds = object("DaemonSet");
    let node = "deploy-test-node";
    let policy_dir = subdir("policy");
    fs::copy(path(POLICY_COPY), policy_dir.join("policy.toml")).unwrap();
    let state = subdir("state");
    let name = sc.container_name("sensor-deploy-test");
    let mut command = vec![
        docker_cli().to_string(),
        "run".into(),
        "--rm".into(),
        format!("--name={name}"),
    ];
    command.extend(docker_run_options(&ds, &policy_dir, &state, node));
    command.push(image.clone());
    let wrapper = subdir("wrapper").join("sensor-in-docker");
    let quoted: Vec<String> = command
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect();
    fs::write(
        &wrapper,
        format!("#!/bin/sh\nexec {} \"$@\"\n", quoted.join(" ")),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();

    let args: Vec<String> = strs(&sensor_container(&ds)["args"])
        .into_iter()
        .map(|a| a.replace("$(NODE_NAME)", node))
        .collect();
    assert_eq!(args[0], "run");
    let rest: Vec<&str> = args[1..].iter().map(String::as_str).collect();
    let mut sensor = SensorProcess::start_bin(&wrapper, &rest).unwrap_or_else(|e| {
        panic!(
            "the sensor image did not start: {e:#}\n{}",
            quoted.join(" ")
        )
    });
    let started = sensor
        .wait_for(|r| r["kind"] == "sensor_started", Duration::ZERO)
        .unwrap();
    assert_eq!(started["host"], node, "records carry the node's name");

    // A container started on the host: its `true` runs under the runtime's tree.
    let marker = format!("deploy-test-{}", std::process::id());
    Cmd::new(docker_cli())
        .args(["run", "--rm", "--name", &marker, BASE, "true", &marker])
        .run();
    let exec = sensor
        .wait_for(
            |r| {
                r["kind"] == "process_exec"
                    && r["argv"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| x == marker.as_str()))
            },
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("no process_exec for the container's `true`: {e:#}"));
    assert_eq!(exec["host"], node);

    let status = sensor.stop().unwrap();
    assert!(
        status.success(),
        "the sensor's container exited with {status}"
    );
    assert!(
        !sensor.records_of_kind("sensor_stats").is_empty(),
        "no sensor_stats record at exit"
    );
}

/// The host's tracefs, which the DaemonSet mounts (systemd mounts it at boot on most hosts;
/// this machine does not).
fn ensure_tracefs() {
    if Path::new("/sys/kernel/tracing/events").exists() {
        return;
    }
    Cmd::new("mount")
        .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
        .run();
}
