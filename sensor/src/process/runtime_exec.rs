//! Runtime processes recognised from their exec, once for every engine: OCI runtimes (runc,
//! crun, youki) on a container's bundle or a BuildKit executor's, containerd shims, `runc init`,
//! runtime helpers, and builder command lines (buildah, podman, buildctl).
//!
//! An OCI runtime creating a container is exec'd as
//! `runc [global flags] create --bundle <bundle> [flags] <id>` (crun and youki alike), where
//! containerd's bundle is `<state>/io.containerd.runtime.v2.task/<namespace>/<id>`, where
//! `<state>` is `/run/containerd` for a system containerd, `/var/run/docker/containerd/daemon`
//! for the containerd that dockerd starts itself, `/run/k3s/containerd` on k3s (namespace `moby`
//! for Docker, `k8s.io` for the CRI), and Podman's is
//! `.../overlay-containers/<id>/userdata`. BuildKit's `runc run --bundle
//! /var/lib/docker/buildkit/executor/<id>` (a standalone buildkitd's
//! `/var/lib/buildkit/runc-<snapshotter>/executor/<id>`) is a build step, not a container start.
use std::path::PathBuf;

use crate::output::record::ProcessExec;

/// The part of a containerd task bundle path that names it, whatever containerd's state dir.
pub const CONTAINERD_TASKS: &str = "/io.containerd.runtime.v2.task/";
/// Where BuildKit keeps executor bundles (under a path that names buildkit).
const BUILDKIT_EXECUTOR: &str = "/executor/";
/// OCI runtimes by program name.
const OCI_RUNTIMES: &[&str] = &["runc", "crun", "youki", "runc.amd64", "docker-runc"];

/// A container an OCI runtime works on, from its bundle path.
#[derive(Clone, Debug, PartialEq)]
pub struct RuntimeStart {
    /// `docker`, `cri`, `containerd` or `podman`.
    pub runtime: &'static str,
    /// containerd namespace, when containerd runs it.
    pub namespace: Option<String>,
    pub id: String,
    pub bundle: PathBuf,
}

#[derive(Debug, PartialEq)]
pub enum RuntimeExec {
    /// `runc ... run --bundle .../buildkit/executor/<id> <id>`: one BuildKit RUN step.
    BuildkitRunc {
        executor_id: String,
    },
    /// An OCI runtime on a container's bundle; `creates` for `create` (and `run`), the
    /// container start, rather than start/kill/delete/state.
    ContainerRuntime {
        container: RuntimeStart,
        creates: bool,
    },
    /// `containerd-shim-runc-v2 -namespace moby -id <id> ...`.
    Shim {
        container_id: String,
        /// containerd namespace (`-namespace`): `moby` for Docker, `k8s.io` for the CRI.
        namespace: Option<String>,
    },
    /// `runc init` (a container's process before it execs the command).
    RuncInit,
    /// A builder tool's build command: buildah/podman/buildctl.
    BuilderCli {
        builder: &'static str,
        args: Vec<String>,
    },
    Other,
}

fn base(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

/// The program a process is: argv[0]'s base name (busybox applets re-exec through
/// /proc/self/exe, so the filename alone can mislead), else comm.
pub fn program(exec: &ProcessExec) -> String {
    let from_argv = exec
        .argv
        .first()
        .map(|a| base(a).to_string())
        .filter(|a| !a.is_empty());
    from_argv.unwrap_or_else(|| exec.process.comm.clone())
}

/// Whether the exec is an OCI runtime, by filename, argv[0] or comm (`runc:[2:INIT]` too).
pub fn is_oci_runtime(e: &ProcessExec) -> bool {
    let argv0 = e.argv.first().map(|a| base(a)).unwrap_or("");
    [base(&e.filename), argv0, e.process.comm.as_str()]
        .iter()
        .any(|n| OCI_RUNTIMES.contains(n))
        || e.process.comm.starts_with("runc")
}

pub fn classify(exec: &ProcessExec) -> RuntimeExec {
    let prog = program(exec);
    let argv = &exec.argv;
    if is_oci_runtime(exec) {
        if argv.get(1).map(String::as_str) == Some("init") {
            return RuntimeExec::RuncInit;
        }
        let Some(bundle) = flag_value(argv, "--bundle").or_else(|| flag_value(argv, "-b")) else {
            return RuntimeExec::Other;
        };
        let bundle_id = bundle
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or("");
        if bundle.contains("buildkit") && bundle.contains(BUILDKIT_EXECUTOR) {
            return RuntimeExec::BuildkitRunc {
                executor_id: bundle_id.to_string(),
            };
        }
        let creates = argv.iter().any(|a| a == "create" || a == "run");
        return match container_of_bundle(bundle, argv.last().map(String::as_str)) {
            Some(container) => RuntimeExec::ContainerRuntime { container, creates },
            None => RuntimeExec::Other,
        };
    }
    if prog.starts_with("containerd-shim") {
        return match flag_value(argv, "-id") {
            Some(id) => RuntimeExec::Shim {
                container_id: id.to_string(),
                namespace: flag_value(argv, "-namespace").map(str::to_string),
            },
            None => RuntimeExec::Other,
        };
    }
    let sub: Vec<&str> = argv
        .iter()
        .skip(1)
        .map(String::as_str)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let builder = match prog.as_str() {
        "buildah" if matches!(sub.first(), Some(&"bud") | Some(&"build")) => Some("buildah"),
        "podman"
            if matches!(sub.first(), Some(&"build"))
                || matches!(sub.get(..2), Some(["image", "build"])) =>
        {
            Some("podman")
        }
        "buildctl" if sub.contains(&"build") => Some("buildctl"),
        _ => None,
    };
    match builder {
        Some(builder) => RuntimeExec::BuilderCli {
            builder,
            args: argv.iter().skip(1).cloned().collect(),
        },
        None => RuntimeExec::Other,
    }
}

/// The container an exec of an OCI runtime is creating, if it is one.
pub fn container_start(e: &ProcessExec) -> Option<RuntimeStart> {
    match classify(e) {
        RuntimeExec::ContainerRuntime {
            container,
            creates: true,
        } if e.argv.iter().any(|a| a == "create") => Some(container),
        _ => None,
    }
}

fn container_of_bundle(bundle: &str, last_arg: Option<&str>) -> Option<RuntimeStart> {
    if let Some(i) = bundle.find(CONTAINERD_TASKS) {
        let rest = &bundle[i + CONTAINERD_TASKS.len()..];
        let (ns, id) = rest.trim_end_matches('/').split_once('/')?;
        let runtime = match ns {
            "moby" => "docker",
            "k8s.io" => "cri",
            _ => "containerd",
        };
        return Some(RuntimeStart {
            runtime,
            namespace: Some(ns.to_string()),
            id: id.to_string(),
            bundle: bundle.into(),
        });
    }
    if bundle.contains("/overlay-containers/")
        && bundle.trim_end_matches('/').ends_with("/userdata")
    {
        return Some(RuntimeStart {
            runtime: "podman",
            namespace: None,
            id: last_arg?.to_string(),
            bundle: bundle.into(),
        });
    }
    None
}

fn flag_value<'a>(argv: &'a [String], flag: &str) -> Option<&'a str> {
    let eq = format!("{flag}=");
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        if a == flag {
            return it.next().map(String::as_str);
        }
        if let Some(v) = a.strip_prefix(&eq) {
            return Some(v);
        }
    }
    None
}

/// Runtime helpers that run under runc or a shim but are not the container's command: OCI
/// hooks (dockerd's `libnetwork-setkey`), runc's own start/kill/delete calls, shims.
pub fn is_runtime_helper(exec: &ProcessExec) -> bool {
    let prog = program(exec);
    is_oci_runtime(exec)
        || matches!(
            prog.as_str(),
            "libnetwork-setkey" | "dockerd" | "containerd" | "docker-proxy"
        )
        || prog.starts_with("containerd-shim")
        || exec.argv.get(1).is_some_and(|a| a == "libnetwork-setkey")
}

#[cfg(test)]
mod classify_tests {
    use super::*;
    use crate::output::record::ProcessRef;

    fn exec(comm: &str, argv: &[&str]) -> ProcessExec {
        ProcessExec {
            process: ProcessRef {
                pid: 10,
                ppid: 1,
                comm: comm.into(),
                role: "descendant".into(),
                ..Default::default()
            },
            filename: "/proc/self/exe".into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            argv_truncated: false,
            start_time_ns: 1,
        }
    }

    #[test]
    fn classifies_runtime_processes_and_builders() {
        let id = "k3jz9x8w7v6u5t4s";
        assert_eq!(
            classify(&exec(
                "runc",
                &[
                    "runc",
                    "--log",
                    "/var/lib/docker/buildkit/executor/runc-log.json",
                    "--log-format",
                    "json",
                    "run",
                    "--bundle",
                    &format!("/var/lib/docker/buildkit/executor/{id}"),
                    id
                ]
            )),
            RuntimeExec::BuildkitRunc {
                executor_id: id.into()
            }
        );
        assert_eq!(
            classify(&exec(
                "runc",
                &[
                    "runc",
                    "--root",
                    "/var/run/docker/runtime-runc/moby",
                    "create",
                    "--bundle",
                    "/run/containerd/io.containerd.runtime.v2.task/moby/abc123",
                    "abc123"
                ]
            )),
            RuntimeExec::ContainerRuntime {
                container: RuntimeStart {
                    runtime: "docker",
                    namespace: Some("moby".into()),
                    id: "abc123".into(),
                    bundle: "/run/containerd/io.containerd.runtime.v2.task/moby/abc123".into(),
                },
                creates: true,
            }
        );
        assert_eq!(
            classify(&exec(
                "containerd-shim",
                &[
                    "/usr/bin/containerd-shim-runc-v2",
                    "-namespace",
                    "moby",
                    "-id",
                    "abc123",
                    "-address",
                    "/run/containerd/containerd.sock"
                ]
            )),
            RuntimeExec::Shim {
                container_id: "abc123".into(),
                namespace: Some("moby".into()),
            }
        );
        assert_eq!(
            classify(&exec("runc:[2:INIT]", &["runc", "init"])),
            RuntimeExec::RuncInit
        );
        assert!(matches!(
            classify(&exec("buildah", &["buildah", "bud", "-t", "x"])),
            RuntimeExec::BuilderCli {
                builder: "buildah",
                ..
            }
        ));
        assert!(matches!(
            classify(&exec(
                "podman",
                &["podman", "--log-level", "image", "build", "."]
            )),
            RuntimeExec::Other | RuntimeExec::BuilderCli { .. }
        ));
        assert!(matches!(
            classify(&exec("podman", &["podman", "build", "-t", "x", "."])),
            RuntimeExec::BuilderCli {
                builder: "podman",
                ..
            }
        ));
        assert!(matches!(
            classify(&exec(
                "buildctl",
                &["buildctl", "build", "--frontend", "dockerfile.v0"]
            )),
            RuntimeExec::BuilderCli {
                builder: "buildctl",
                ..
            }
        ));
        assert_eq!(
            classify(&exec("sh", &["/bin/sh", "-c", "echo"])),
            RuntimeExec::Other
        );
    }
}

#[cfg(test)]
mod start_tests {
    use super::*;
    use crate::output::record::ProcessRef;

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
        let s = container_start(&e).unwrap();
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
        assert_eq!(container_start(&e).unwrap().runtime, "cri");
        let e = exec(&[
            "crun",
            "create",
            "--bundle",
            "/var/lib/containers/storage/overlay-containers/pp/userdata",
            "pp",
        ]);
        assert_eq!(container_start(&e).unwrap().runtime, "podman");
        let e = exec(&[
            "runc",
            "--log",
            "/var/lib/docker/buildkit/executor/runc-log.json",
            "run",
            "--bundle",
            "/var/lib/docker/buildkit/executor/xyz",
            "xyz",
        ]);
        assert!(container_start(&e).is_none());
        let e = exec(&["runc", "--root", "/x", "start", &id]);
        assert!(container_start(&e).is_none());
    }

    #[test]
    fn containerd_state_dirs_other_than_run_containerd() {
        let id = "b5".repeat(32);
        for state in ["/var/run/docker/containerd/daemon", "/run/k3s/containerd"] {
            let b = format!("{state}/io.containerd.runtime.v2.task/moby/{id}");
            let s = container_start(&exec(&[
                "runc", "--root", "/x", "create", "--bundle", &b, &id,
            ]))
            .unwrap();
            assert_eq!(s.runtime, "docker", "{state}");
            assert_eq!(s.id, id);
            assert_eq!(s.namespace.as_deref(), Some("moby"));
        }
    }
}
