//! Recognising the processes a build is made of, from their exec: the runtimes that run build
//! steps (runc for BuildKit executors and for containerd tasks, containerd shims) and builder
//! command lines (buildah, podman, buildctl).
use crate::record::ProcessExec;

/// Where BuildKit keeps executor bundles: dockerd's embedded BuildKit uses
/// `/var/lib/docker/buildkit/executor/<id>`, a standalone buildkitd
/// `/var/lib/buildkit/runc-<snapshotter>/executor/<id>`.
const BUILDKIT_EXECUTOR: &str = "/executor/";
/// containerd task bundles: `/run/containerd/io.containerd.runtime.v2.task/<namespace>/<id>`.
const CONTAINERD_TASK: &str = "io.containerd.runtime.v2.task/";

#[derive(Debug, PartialEq)]
pub enum RuntimeProc {
    /// `runc ... run --bundle .../buildkit/executor/<id> <id>`: one BuildKit RUN step.
    BuildkitRunc {
        executor_id: String,
    },
    /// `runc ... create|run --bundle .../io.containerd.runtime.v2.task/<ns>/<id>`.
    ContainerRunc {
        container_id: String,
    },
    /// `containerd-shim-runc-v2 -namespace moby -id <id> ...`.
    Shim {
        container_id: String,
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

/// The program a process is: argv[0]'s base name (busybox applets re-exec through
/// /proc/self/exe, so the filename alone can mislead), else comm.
pub fn program(exec: &ProcessExec) -> String {
    let from_argv = exec
        .argv
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
        .filter(|a| !a.is_empty());
    from_argv.unwrap_or_else(|| exec.process.comm.clone())
}

pub fn classify(exec: &ProcessExec) -> RuntimeProc {
    let prog = program(exec);
    let argv = &exec.argv;
    let comm = exec.process.comm.as_str();
    if prog == "runc" || prog == "crun" || comm.starts_with("runc") {
        if argv.get(1).map(String::as_str) == Some("init") {
            return RuntimeProc::RuncInit;
        }
        if let Some(bundle) = flag_value(argv, "--bundle").or_else(|| flag_value(argv, "-b")) {
            let id = bundle
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or("")
                .to_string();
            if bundle.contains("buildkit") && bundle.contains(BUILDKIT_EXECUTOR) {
                return RuntimeProc::BuildkitRunc { executor_id: id };
            }
            if bundle.contains(CONTAINERD_TASK) {
                return RuntimeProc::ContainerRunc { container_id: id };
            }
        }
        return RuntimeProc::Other;
    }
    if prog.starts_with("containerd-shim") {
        if let Some(id) = flag_value(argv, "-id") {
            return RuntimeProc::Shim {
                container_id: id.to_string(),
            };
        }
        return RuntimeProc::Other;
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
        Some(builder) => RuntimeProc::BuilderCli {
            builder,
            args: argv.iter().skip(1).cloned().collect(),
        },
        None => RuntimeProc::Other,
    }
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
    matches!(
        prog.as_str(),
        "runc" | "crun" | "libnetwork-setkey" | "dockerd" | "containerd" | "docker-proxy"
    ) || prog.starts_with("containerd-shim")
        || exec.process.comm.starts_with("runc:")
        || exec.argv.get(1).is_some_and(|a| a == "libnetwork-setkey")
}

/// The shell command of a `sh -c CMD` argv (what a shell-form RUN runs), or the argv joined.
pub fn step_command(argv: &[String]) -> String {
    argv.join(" ")
}

/// Whether an exec is a shell-form RUN (`/bin/sh -c ...`), as builder tools run them.
pub fn is_shell_step(exec: &ProcessExec) -> bool {
    let prog = program(exec);
    matches!(prog.as_str(), "sh" | "bash" | "ash" | "dash")
        && exec.argv.get(1).map(String::as_str) == Some("-c")
}

/// The RUN text a step's argv carries: what follows `-c` of a shell, or the argv joined.
pub fn run_text(argv: &[String]) -> String {
    match argv.iter().position(|a| a == "-c") {
        Some(i) if i + 1 < argv.len() => argv[i + 1..].join(" "),
        _ => argv.join(" "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::ProcessRef;

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
            RuntimeProc::BuildkitRunc {
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
            RuntimeProc::ContainerRunc {
                container_id: "abc123".into()
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
            RuntimeProc::Shim {
                container_id: "abc123".into()
            }
        );
        assert_eq!(
            classify(&exec("runc:[2:INIT]", &["runc", "init"])),
            RuntimeProc::RuncInit
        );
        assert!(matches!(
            classify(&exec("buildah", &["buildah", "bud", "-t", "x"])),
            RuntimeProc::BuilderCli {
                builder: "buildah",
                ..
            }
        ));
        assert!(matches!(
            classify(&exec(
                "podman",
                &["podman", "--log-level", "image", "build", "."]
            )),
            RuntimeProc::Other | RuntimeProc::BuilderCli { .. }
        ));
        assert!(matches!(
            classify(&exec("podman", &["podman", "build", "-t", "x", "."])),
            RuntimeProc::BuilderCli {
                builder: "podman",
                ..
            }
        ));
        assert!(matches!(
            classify(&exec(
                "buildctl",
                &["buildctl", "build", "--frontend", "dockerfile.v0"]
            )),
            RuntimeProc::BuilderCli {
                builder: "buildctl",
                ..
            }
        ));
        assert_eq!(
            classify(&exec("sh", &["/bin/sh", "-c", "echo"])),
            RuntimeProc::Other
        );
        assert!(is_shell_step(&exec("sh", &["/bin/sh", "-c", "echo hi"])));
        assert_eq!(
            run_text(&["/bin/sh".into(), "-c".into(), "echo hi".into()]),
            "echo hi"
        );
    }
}
