//! `sensor check`: can this kernel, with these privileges, run the sensor? One line per item.
use std::{path::Path, process::ExitCode};

use crate::ingest::{btf, caps, gobin, loader};

fn line(ok: bool, item: &str, detail: &str) {
    println!("{} {item}: {detail}", if ok { "ok  " } else { "FAIL" });
}

/// How a probe attaches, in the words of `bpftool`/tracefs.
fn hook(kind: loader::ProbeKind) -> String {
    match kind {
        loader::ProbeKind::Tracepoint(cat, name) => format!("tracepoint {cat}:{name}"),
        loader::ProbeKind::BtfTracepoint(name) => format!("BTF tracepoint {name}"),
        loader::ProbeKind::RawTracepoint(name) => format!("raw tracepoint {name}"),
        loader::ProbeKind::GoUprobe(loader::GoAt::Entry) => {
            "uprobe at Go's syscall function, per API server process".to_string()
        }
        loader::ProbeKind::GoUprobe(loader::GoAt::AfterSyscall) => {
            "uprobe after its SYSCALL instruction".to_string()
        }
        loader::ProbeKind::CgroupUnixConnect => {
            "cgroup/connect_unix at the cgroup2 root".to_string()
        }
        loader::ProbeKind::CgroupSkb(direction) => {
            format!("cgroup_skb/{direction} at the cgroup v2 root")
        }
    }
}

pub fn check(hooks: loader::KernelHooks) -> ExitCode {
    let mut fatal = false;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    line(true, "kernel", kernel.trim());

    // The capabilities, not the uid, decide (docs/operations.md, "Capabilities").
    let set = caps::effective();
    let missing = caps::missing_required(set);
    let root = missing.is_empty();
    let detail = if root {
        "CAP_BPF and CAP_PERFMON held".to_string()
    } else {
        format!(
            "missing {}: run as root, or grant CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE",
            missing.join(", ")
        )
    };
    line(root, "privileges", &detail);
    fatal |= !root;
    if root && !caps::has(set, caps::CAP_SYS_PTRACE) {
        line(
            false,
            "CAP_SYS_PTRACE",
            "missing: executables of more privileged processes (dockerd) cannot be read, records miss `exe`",
        );
    }

    match btf::Btf::from_file(Path::new(btf::VMLINUX_BTF)) {
        Ok(b) => {
            line(true, "kernel BTF", btf::VMLINUX_BTF);
            let (_, missing) = btf::resolve_offsets(&b);
            if missing.is_empty() {
                line(
                    true,
                    "kernel struct offsets",
                    "all fields found in BTF (offsets are read from this kernel, not compiled in)",
                );
            }
            for m in missing {
                line(
                    false,
                    "kernel struct offsets",
                    &format!(
                        "{}: {} (the probes that read it report less)",
                        m.field, m.reason
                    ),
                );
            }
        }
        Err(e) => {
            line(false, "kernel BTF", &e.to_string());
            fatal = true;
        }
    }

    let tracefs = Path::new("/sys/kernel/tracing/events").exists();
    line(
        tracefs,
        "tracefs",
        if tracefs {
            "mounted at /sys/kernel/tracing"
        } else {
            "not mounted: `mount -t tracefs nodev /sys/kernel/tracing` (sensor run tries this itself)"
        },
    );

    if !root {
        line(false, "probes", "not tried without privileges");
        return ExitCode::FAILURE;
    }
    let opts = loader::LoadOptions {
        hooks,
        ..Default::default()
    };
    match loader::load(&opts) {
        Ok(loaded) => {
            line(
                true,
                "socket data",
                if loaded.narrow {
                    "narrow hooks: the Engine API from uprobes in the API servers, unix \
                     connects from cgroup/connect_unix, DNS from cgroup_skb; of the node's \
                     socket I/O only inet packets pass a program (the two cgroup_skb ones; \
                     `sensor run --no-dns-events` leaves them out)"
                } else if loaded.socket_hooks {
                    "socket hooks (sock_recv_length/sock_send_length; with the narrow hooks \
                     that attached taking their part): processes without socket I/O pay \
                     nothing"
                } else {
                    "raw syscall dispatch (no socket hooks on this kernel): every syscall pays"
                },
            );
            if loaded.links.go.loaded {
                api_server_uprobes(&opts);
            }
            for p in loader::PROBES {
                let name = p.name;
                if let Some(why) = loaded.unused.get(name) {
                    line(
                        true,
                        &format!("probe {name}"),
                        &format!("{} [{}]: not used here: {why}", p.purpose, hook(p.kind)),
                    );
                    continue;
                }
                match loaded.failed.get(name) {
                    None => line(
                        true,
                        &format!("probe {name}"),
                        &format!("{} [{}; needs {}]", p.purpose, hook(p.kind), p.needs),
                    ),
                    Some(why) => {
                        let required = loader::REQUIRED.contains(&name);
                        fatal |= required;
                        line(
                            false,
                            &format!("probe {name}"),
                            &format!(
                                "{} unavailable: {why} [needs {}]; without it: {}",
                                p.purpose, p.needs, p.without
                            ),
                        );
                    }
                }
            }
        }
        Err(e) => {
            line(false, "kernel programs", &e.to_string());
            fatal = true;
        }
    }
    // Optional: only `--file-events=fanotify` needs it.
    let (ok, detail) = super::fanotify::check_line();
    line(ok, "file events (fanotify)", &detail);
    if fatal {
        println!("the sensor cannot run here");
        ExitCode::FAILURE
    } else {
        println!("the sensor can run here");
        ExitCode::SUCCESS
    }
}

/// Each running API server: whether the uprobes can go into it (`--kernel-hooks narrow`).
fn api_server_uprobes(opts: &loader::LoadOptions) {
    let servers: Vec<_> = loader::find_runtime_trees(&opts.runtime_names, &opts.api_servers)
        .into_iter()
        .filter(|(p, flags, _)| {
            flags & sensor_common::track::API_SERVER != 0
                && opts.api_servers.contains(&p.comm)
                && gobin::serves_api(&p.comm, &p.argv)
        })
        .collect();
    if servers.is_empty() {
        line(
            true,
            "API server uprobes",
            "no API server running now (each gets them at its exec)",
        );
    }
    for (p, _, _) in servers {
        let exe = std::path::PathBuf::from(format!("/proc/{}/exe", p.pid));
        match gobin::syscall_offsets(&exe) {
            Ok(t) => line(
                true,
                &format!("API server uprobes: {} {}", p.comm, p.pid),
                &format!(
                    "Go's syscall function at {:#x} in {}",
                    t.entry,
                    p.exe.unwrap_or_default()
                ),
            ),
            Err(e) => line(
                false,
                &format!("API server uprobes: {} {}", p.comm, p.pid),
                &format!("{e}; its Engine API traffic stays on the socket hooks"),
            ),
        }
    }
}
