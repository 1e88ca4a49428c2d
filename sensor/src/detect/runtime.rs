//! Container starts as the runtimes' process trees show them.
//!
//! An OCI runtime creating a container is exec'd as
//! `runc [global flags] create --bundle <bundle> [flags] <id>` (crun and youki alike), where
//! containerd's bundle is `<state>/io.containerd.runtime.v2.task/<namespace>/<id>`, where
//! `<state>` is `/run/containerd` for a system containerd, `/var/run/docker/containerd/daemon`
//! for the containerd that dockerd starts itself, `/run/k3s/containerd` on k3s (namespace `moby`
//! for Docker, `k8s.io` for the CRI), and Podman's is
//! `.../overlay-containers/<id>/userdata`. BuildKit's `runc run --bundle
//! /var/lib/docker/buildkit/executor/<id>` is a build step, not a container start.
use std::path::PathBuf;

use crate::record::ProcessExec;

/// The part of a containerd task bundle path that names it, whatever containerd's state dir.
pub const CONTAINERD_TASKS: &str = "/io.containerd.runtime.v2.task/";

#[derive(Clone, Debug, PartialEq)]
pub struct RuntimeStart {
    /// `docker`, `cri`, `containerd` or `podman`.
    pub runtime: &'static str,
    /// containerd namespace, when containerd runs it.
    pub namespace: Option<String>,
    pub id: String,
    pub bundle: PathBuf,
}

fn is_oci_runtime(e: &ProcessExec) -> bool {
    let base = |s: &str| s.rsplit('/').next().unwrap_or(s).to_string();
    let names = [
        base(&e.filename),
        e.argv.first().map(|a| base(a)).unwrap_or_default(),
        e.process.comm.clone(),
    ];
    names.iter().any(|n| {
        matches!(
            n.as_str(),
            "runc" | "crun" | "youki" | "runc.amd64" | "docker-runc"
        )
    })
}

/// The container an exec of an OCI runtime is creating, if it is one.
pub fn parse_runtime_exec(e: &ProcessExec) -> Option<RuntimeStart> {
    if !is_oci_runtime(e) || !e.argv.iter().any(|a| a == "create") {
        return None;
    }
    let bundle = e
        .argv
        .windows(2)
        .find_map(|w| match w[0].as_str() {
            "--bundle" | "-b" => Some(w[1].clone()),
            _ => None,
        })
        .or_else(|| {
            e.argv
                .iter()
                .find_map(|a| a.strip_prefix("--bundle=").map(str::to_string))
        })?;
    let id = e.argv.last()?.clone();
    if let Some(rest) = bundle
        .find(CONTAINERD_TASKS)
        .map(|i| &bundle[i + CONTAINERD_TASKS.len()..])
    {
        let (ns, bid) = rest.trim_end_matches('/').split_once('/')?;
        let runtime = match ns {
            "moby" => "docker",
            "k8s.io" => "cri",
            _ => "containerd",
        };
        return Some(RuntimeStart {
            runtime,
            namespace: Some(ns.to_string()),
            id: bid.to_string(),
            bundle: bundle.into(),
        });
    }
    if bundle.contains("/overlay-containers/")
        && bundle.trim_end_matches('/').ends_with("/userdata")
    {
        return Some(RuntimeStart {
            runtime: "podman",
            namespace: None,
            id,
            bundle: bundle.into(),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::ProcessRef;

    pub(crate) fn exec(argv: &[&str]) -> ProcessExec {
        ProcessExec {
            process: ProcessRef {
                pid: 10,
                comm: "runc".into(),
                role: "descendant".into(),
                ..Default::default()
            },
            filename: "/usr/sbin/runc".into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            argv_truncated: false,
            start_time_ns: 1,
        }
    }

    #[test]
    fn docker_cri_podman_and_buildkit() {
        let id = "c".repeat(64);
        let b = format!("/run/containerd/io.containerd.runtime.v2.task/moby/{id}");
        let e = exec(&[
            "runc",
            "--root",
            "/var/run/docker/runtime-runc/moby",
            "--log",
            &format!("{b}/log.json"),
            "--log-format",
            "json",
            "create",
            "--bundle",
            &b,
            "--pid-file",
            &format!("{b}/init.pid"),
            &id,
        ]);
        let s = parse_runtime_exec(&e).unwrap();
        assert_eq!(
            (s.runtime, s.id.as_str(), s.namespace.as_deref()),
            ("docker", id.as_str(), Some("moby"))
        );
        let e = exec(&[
            "runc",
            "create",
            "--bundle",
            "/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc",
            "abc",
        ]);
        assert_eq!(parse_runtime_exec(&e).unwrap().runtime, "cri");
        let e = exec(&[
            "crun",
            "create",
            "--bundle",
            "/var/lib/containers/storage/overlay-containers/pp/userdata",
            "pp",
        ]);
        assert_eq!(parse_runtime_exec(&e).unwrap().runtime, "podman");
        let e = exec(&[
            "runc",
            "--log",
            "/var/lib/docker/buildkit/executor/runc-log.json",
            "run",
            "--bundle",
            "/var/lib/docker/buildkit/executor/xyz",
            "xyz",
        ]);
        assert!(parse_runtime_exec(&e).is_none());
        let e = exec(&["runc", "--root", "/x", "start", &id]);
        assert!(parse_runtime_exec(&e).is_none());
    }

    #[test]
    fn containerd_state_dirs_other_than_run_containerd() {
        let id = "b5".repeat(32);
        for state in ["/var/run/docker/containerd/daemon", "/run/k3s/containerd"] {
            let b = format!("{state}/io.containerd.runtime.v2.task/moby/{id}");
            let s = parse_runtime_exec(&exec(&[
                "runc", "--root", "/x", "create", "--bundle", &b, &id,
            ]))
            .unwrap();
            assert_eq!(s.runtime, "docker", "{state}");
            assert_eq!(s.id, id);
            assert_eq!(s.namespace.as_deref(), Some("moby"));
        }
    }
}
