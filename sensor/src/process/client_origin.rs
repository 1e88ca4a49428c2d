//! Where a local API client runs: on the host, or inside a container (the runtime's socket
//! mounted into it, the usual path from a compromised container to T1612 and T1610).
//!
//! The client's cgroup path, taken in the kernel when it connected (`client.cgroup`), names its
//! container even when it is gone. Without it (the sensor started after the connect), the
//! client's own cgroup names its container while the client lives; a client already gone
//! (a short `curl`) is placed by its ancestors: a shell still running in the container, or the
//! `containerd-shim` that runs the container (its `-id` argument). A pid read back from /proc
//! must still be the process the record names (same exe or comm), so a reused pid (or a replay
//! long after the fact) places nothing.
use std::fs;

use crate::output::record::ApiClient;
use crate::process::host::HostPaths;
use crate::process::host::docker_container;
use crate::process::proc::{container_id_from_cgroup, pod_of_container, proc_root};

/// Fills `container_id`, `container_name`, `container_image` and `pod` of a local client that
/// runs in a container; leaves a host client (and a TCP one) as it is.
pub fn place_client(client: &mut ApiClient, paths: &HostPaths) {
    if client.transport != "unix" || client.container_id.is_some() {
        return;
    }
    let Some(id) = container_of(client) else {
        return;
    };
    if let Some(c) = docker_container(paths, &id) {
        client.container_name = c.name;
        client.container_image = c.image_ref.or(c.image_id);
    }
    client.pod = pod_of_container(&id);
    client.container_id = Some(id);
}

fn container_of(client: &ApiClient) -> Option<String> {
    // The cgroup path the kernel captured at the client's connect: no race with its exit.
    if let Some(cg) = &client.cgroup
        && let Some(id) = container_id_from_cgroup(&format!("0::{cg}"))
    {
        return Some(id);
    }
    if let Some(pid) = client.pid
        && still_is(pid, client.exe.as_deref(), None)
        && let Some(id) = cgroup_container(pid)
    {
        return Some(id);
    }
    for a in &client.ancestors {
        if !still_is(a.pid, a.exe.as_deref(), Some(&a.comm)) {
            continue;
        }
        if a.comm.starts_with("containerd-shim") {
            return shim_container(a.pid);
        }
        if let Some(id) = cgroup_container(a.pid) {
            return Some(id);
        }
    }
    None
}

/// Whether `pid` is still the process described (its exe, else its comm, as recorded).
fn still_is(pid: u32, exe: Option<&str>, comm: Option<&str>) -> bool {
    let dir = proc_root().join(pid.to_string());
    if let Some(exe) = exe {
        return fs::read_link(dir.join("exe")).is_ok_and(|p| p.to_string_lossy() == exe);
    }
    match comm {
        Some(comm) => fs::read_to_string(dir.join("comm")).is_ok_and(|c| c.trim_end() == comm),
        None => dir.exists(),
    }
}

fn cgroup_container(pid: u32) -> Option<String> {
    let text = fs::read_to_string(proc_root().join(pid.to_string()).join("cgroup")).ok()?;
    container_id_from_cgroup(&text)
}

/// `containerd-shim-runc-v2 -namespace moby -id <id> -address ...`: the container it runs.
fn shim_container(pid: u32) -> Option<String> {
    let raw = fs::read(proc_root().join(pid.to_string()).join("cmdline")).ok()?;
    let argv = crate::process::proc::split_argv(&raw);
    let i = argv.iter().position(|a| a == "-id")?;
    argv.get(i + 1)
        .filter(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::record::Ancestor;

    #[test]
    fn a_host_client_and_a_tcp_client_stay_unplaced() {
        let me = std::process::id();
        let exe = fs::read_link("/proc/self/exe")
            .map(|p| p.to_string_lossy().into_owned())
            .ok();
        let mut c = ApiClient {
            transport: "unix".into(),
            pid: Some(me),
            exe,
            ..Default::default()
        };
        place_client(&mut c, &HostPaths::default());
        // This test process runs on the host (or in CI's container: then it is placed).
        let expected = cgroup_container(me);
        assert_eq!(c.container_id, expected);
        let mut t = ApiClient {
            transport: "tcp".into(),
            pid: Some(me),
            ..Default::default()
        };
        place_client(&mut t, &HostPaths::default());
        assert_eq!(t.container_id, None);
    }

    #[test]
    fn the_kernel_cgroup_path_places_a_client_that_is_gone() {
        let id = "ab".repeat(32);
        let mut c = ApiClient {
            transport: "unix".into(),
            pid: Some(u32::MAX - 1),
            cgroup: Some(format!("/docker/{id}")),
            ..Default::default()
        };
        place_client(&mut c, &HostPaths::default());
        assert_eq!(c.container_id.as_deref(), Some(id.as_str()));
        let mut host = ApiClient {
            transport: "unix".into(),
            pid: Some(u32::MAX - 1),
            cgroup: Some("/user.slice/session-3.scope".into()),
            ..Default::default()
        };
        place_client(&mut host, &HostPaths::default());
        assert_eq!(host.container_id, None);
    }

    #[test]
    fn a_reused_pid_places_nothing() {
        let mut c = ApiClient {
            transport: "unix".into(),
            pid: Some(std::process::id()),
            exe: Some("/no/such/client".into()),
            ancestors: vec![Ancestor {
                pid: 1,
                comm: "not-init-comm".into(),
                exe: None,
                uid: Some(0),
            }],
            ..Default::default()
        };
        place_client(&mut c, &HostPaths::default());
        assert_eq!(c.container_id, None);
    }
}
