//! Reading /proc: process details for enrichment and for seeding the tracked set at start.
use std::{
    collections::HashMap,
    fs,
    path::PathBuf,
    sync::{Mutex, OnceLock},
};

use crate::output::record::{Ancestor, PodRef, lossy};

/// What /proc tells about one process.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub uid: u32,
    pub gid: u32,
    pub exe: Option<String>,
    pub argv: Vec<String>,
    /// Start time in clock ticks since boot (field 22 of stat).
    pub start_ticks: u64,
}

pub fn proc_root() -> PathBuf {
    PathBuf::from(std::env::var_os("SENSOR_PROC").unwrap_or_else(|| "/proc".into()))
}

/// Parse `/proc/PID/stat`: comm is in parentheses and may contain spaces and parentheses.
pub fn parse_stat(s: &str) -> Option<(String, u32, u64)> {
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = s.get(close + 1..)?.split_whitespace().collect();
    // rest[0] = state, rest[1] = ppid, ..., rest[19] = starttime (field 22).
    let ppid = rest.get(1)?.parse().ok()?;
    let start = rest.get(19)?.parse().ok()?;
    Some((comm, ppid, start))
}

/// Split a NUL-separated argv block (as in /proc/PID/cmdline or the kernel's arg area).
pub fn split_argv(bytes: &[u8]) -> Vec<String> {
    let trimmed = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if trimmed.is_empty() {
        return Vec::new();
    }
    trimmed.split(|b| *b == 0).map(lossy).collect()
}

pub fn read_proc(pid: u32) -> Option<ProcInfo> {
    let dir = proc_root().join(pid.to_string());
    let stat = fs::read(dir.join("stat")).ok()?;
    let (comm, ppid, start_ticks) = parse_stat(&lossy(&stat))?;
    let status = fs::read_to_string(dir.join("status")).unwrap_or_default();
    let id_line = |key: &str| -> u32 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(u32::MAX)
    };
    let exe = fs::read_link(dir.join("exe"))
        .ok()
        .map(|p| lossy(p.as_os_str().as_encoded_bytes()));
    let argv = fs::read(dir.join("cmdline"))
        .map(|b| split_argv(&b))
        .unwrap_or_default();
    Some(ProcInfo {
        pid,
        ppid,
        comm,
        uid: id_line("Uid:"),
        gid: id_line("Gid:"),
        exe,
        argv,
        start_ticks,
    })
}

/// All pids in /proc.
pub fn all_pids() -> Vec<u32> {
    let Ok(rd) = fs::read_dir(proc_root()) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Names of processes that end a client's parent chain: a login shell's parent, a service
/// manager, a terminal server.
const CHAIN_STOPS: &[&str] = &[
    "systemd",
    "init",
    "sshd",
    "login",
    "containerd-shim",
    "tmux: server",
    "screen",
];

/// The parent chain of `pid`, nearest first, up to a login shell, a service manager or pid 1.
pub fn ancestors(pid: u32, max: usize) -> Vec<Ancestor> {
    ancestors_from(read_proc(pid).map(|p| p.ppid).unwrap_or(0), max)
}

/// The chain that starts at `ppid` (a process's parent, known even when the process is gone).
pub fn ancestors_from(ppid: u32, max: usize) -> Vec<Ancestor> {
    let mut out = Vec::new();
    let mut cur = ppid;
    while cur > 0 && out.len() < max {
        let Some(p) = read_proc(cur) else { break };
        let stop = CHAIN_STOPS.contains(&p.comm.as_str()) || p.pid == 1;
        let login_shell = p.argv.first().is_some_and(|a| a.starts_with('-'));
        out.push(Ancestor {
            pid: p.pid,
            comm: p.comm.clone(),
            exe: p.exe.clone(),
            uid: Some(p.uid),
        });
        if stop || login_shell {
            break;
        }
        cur = p.ppid;
    }
    out
}

/// User name of a uid from /etc/passwd (the host's, or SENSOR_PASSWD).
pub fn user_name(uid: u32) -> Option<String> {
    let path = std::env::var_os("SENSOR_PASSWD").unwrap_or_else(|| "/etc/passwd".into());
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let _ = f.next();
        (f.next()?.parse::<u32>().ok()? == uid).then(|| name.to_string())
    })
}

/// Container id (64 hex) from a process's cgroup file, for Docker, containerd/CRI and podman
/// layouts (`/docker/<id>`, `docker-<id>.scope`, `cri-containerd-<id>.scope`, `libpod-<id>`).
pub fn container_id_from_cgroup(text: &str) -> Option<String> {
    for line in text.lines() {
        let path = line.rsplit(':').next().unwrap_or("");
        for seg in path.rsplit('/') {
            let seg = seg.strip_suffix(".scope").unwrap_or(seg);
            let id = seg.rsplit(['-', ':']).next().unwrap_or(seg);
            if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Some(id.to_string());
            }
        }
    }
    None
}

pub fn container_id_of(pid: u32) -> Option<String> {
    let text = fs::read_to_string(proc_root().join(pid.to_string()).join("cgroup")).ok()?;
    container_id_from_cgroup(&text)
}

/// The host's root as the sensor sees it: `SENSOR_HOST_ROOT` (e.g. `/host` when the sensor runs
/// in a container with the host's `/run` and `/var/lib/docker` mounted there), else `/`.
pub fn host_root() -> PathBuf {
    PathBuf::from(std::env::var_os("SENSOR_HOST_ROOT").unwrap_or_else(|| "/".into()))
}

/// The pod name and namespace from a runtime's metadata: OCI annotations (containerd/CRI keys
/// `io.kubernetes.cri.sandbox-*`, CRI-O keys `io.kubernetes.pod.*`) or Docker labels.
fn pod_from_map(m: &serde_json::Value, name_key: &str, ns_key: &str) -> Option<PodRef> {
    let name = m.get(name_key)?.as_str()?;
    let namespace = m.get(ns_key)?.as_str()?;
    Some(PodRef {
        name: name.to_string(),
        namespace: namespace.to_string(),
    })
}

fn read_json(path: &std::path::Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// Where each runtime keeps a container's metadata, and the keys of its pod.
fn pod_from_runtime(root: &std::path::Path, id: &str) -> Option<PodRef> {
    // containerd: the OCI bundle of the task, in any containerd namespace (k8s.io for the CRI).
    let tasks = root.join("run/containerd/io.containerd.runtime.v2.task");
    if let Ok(rd) = fs::read_dir(&tasks) {
        for ns in rd.flatten() {
            if let Some(spec) = read_json(&ns.path().join(id).join("config.json")) {
                let a = &spec["annotations"];
                if let Some(p) = pod_from_map(
                    a,
                    "io.kubernetes.cri.sandbox-name",
                    "io.kubernetes.cri.sandbox-namespace",
                )
                .or_else(|| {
                    pod_from_map(a, "io.kubernetes.pod.name", "io.kubernetes.pod.namespace")
                }) {
                    return Some(p);
                }
            }
        }
    }
    // CRI-O.
    let crio = root
        .join("run/containers/storage/overlay-containers")
        .join(id)
        .join("userdata/config.json");
    if let Some(spec) = read_json(&crio) {
        return pod_from_map(
            &spec["annotations"],
            "io.kubernetes.pod.name",
            "io.kubernetes.pod.namespace",
        );
    }
    // Docker (cri-dockerd, or kubelet's dockershim): labels in the container's config.
    let docker = root
        .join("var/lib/docker/containers")
        .join(id)
        .join("config.v2.json");
    let cfg = read_json(&docker)?;
    pod_from_map(
        &cfg["Config"]["Labels"],
        "io.kubernetes.pod.name",
        "io.kubernetes.pod.namespace",
    )
}

/// The pod of container `id`, looked up once per container (the runtime writes its metadata
/// before the container's first process runs, so a miss stays a miss).
pub fn pod_of_container(id: &str) -> Option<PodRef> {
    static CACHE: OnceLock<Mutex<HashMap<String, Option<PodRef>>>> = OnceLock::new();
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let cache = CACHE.get_or_init(Mutex::default);
    if let Some(hit) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(id) {
        return hit.clone();
    }
    let pod = pod_from_runtime(&host_root(), id);
    let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
    // Bounded: containers come and go; forgetting only costs a re-read.
    if c.len() >= 4096 {
        c.clear();
    }
    c.insert(id.to_string(), pod.clone());
    pod
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_hostile_comm() {
        let s = "42 (a) b (c)) S 7 42 42 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 12345 0 0";
        let (comm, ppid, start) = parse_stat(s).unwrap();
        assert_eq!(comm, "a) b (c)");
        assert_eq!(ppid, 7);
        assert_eq!(start, 12345);
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn argv_split_keeps_empty_args_and_bad_bytes() {
        assert_eq!(
            split_argv(b"sh\0-c\0\0x\xff\0"),
            vec!["sh", "-c", "", "x\u{FFFD}"]
        );
        assert!(split_argv(b"").is_empty());
    }

    #[test]
    fn container_ids_from_cgroup_layouts() {
        let id = "a".repeat(64);
        for text in [
            format!("12:pids:/docker/{id}\n"),
            format!("0::/system.slice/docker-{id}.scope\n"),
            format!("0::/kubepods/burstable/pod1/cri-containerd-{id}.scope\n"),
            format!("0::/machine.slice/libpod-{id}.scope\n"),
        ] {
            assert_eq!(
                container_id_from_cgroup(&text).as_deref(),
                Some(id.as_str()),
                "{text}"
            );
        }
        assert_eq!(
            container_id_from_cgroup("0::/user.slice/session-1.scope\n"),
            None
        );
    }

    #[test]
    fn pods_from_runtime_metadata() {
        let root = std::env::temp_dir().join(format!("sensor-pods-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let (a, b, c) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
        let bundle = root
            .join("run/containerd/io.containerd.runtime.v2.task/k8s.io")
            .join(&a);
        fs::create_dir_all(&bundle).unwrap();
        fs::write(
            bundle.join("config.json"),
            r#"{"annotations":{"io.kubernetes.cri.sandbox-name":"web-0","io.kubernetes.cri.sandbox-namespace":"shop"}}"#,
        )
        .unwrap();
        let crio = root
            .join("run/containers/storage/overlay-containers")
            .join(&b)
            .join("userdata");
        fs::create_dir_all(&crio).unwrap();
        fs::write(crio.join("config.json"), r#"{"annotations":{"io.kubernetes.pod.name":"db-1","io.kubernetes.pod.namespace":"data"}}"#).unwrap();
        let docker = root.join("var/lib/docker/containers").join(&c);
        fs::create_dir_all(&docker).unwrap();
        fs::write(docker.join("config.v2.json"), r#"{"Config":{"Labels":{"io.kubernetes.pod.name":"x","io.kubernetes.pod.namespace":"y"}}}"#).unwrap();
        let pod = |n: &str, ns: &str| {
            Some(PodRef {
                name: n.into(),
                namespace: ns.into(),
            })
        };
        assert_eq!(pod_from_runtime(&root, &a), pod("web-0", "shop"));
        assert_eq!(pod_from_runtime(&root, &b), pod("db-1", "data"));
        assert_eq!(pod_from_runtime(&root, &c), pod("x", "y"));
        assert_eq!(pod_from_runtime(&root, &"d".repeat(64)), None);
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn reads_own_process() {
        let me = read_proc(std::process::id()).unwrap();
        assert_eq!(me.pid, std::process::id());
        assert!(!me.argv.is_empty());
    }
}
