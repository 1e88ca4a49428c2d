//! `sensor check`: can this kernel, with these privileges, run the sensor? One line per item.
use std::{path::Path, process::ExitCode};

use crate::{btf, loader};

fn line(ok: bool, item: &str, detail: &str) {
    println!("{} {item}: {detail}", if ok { "ok  " } else { "FAIL" });
}

pub fn check() -> ExitCode {
    let mut fatal = false;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    line(true, "kernel", kernel.trim());

    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    line(root, "privileges", if root { "running as root" } else { "not root: run as root, or with CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE" });
    fatal |= !root;

    match btf::Btf::from_file(Path::new(btf::VMLINUX_BTF)) {
        Ok(b) => {
            line(true, "kernel BTF", btf::VMLINUX_BTF);
            let (_, missing) = btf::resolve_offsets(&b);
            if missing.is_empty() {
                line(true, "kernel struct offsets", "all fields found in BTF (offsets are read from this kernel, not compiled in)");
            }
            for m in missing {
                line(false, "kernel struct offsets", &format!("{}: {} (the probes that read it report less)", m.field, m.reason));
            }
        }
        Err(e) => {
            line(false, "kernel BTF", &e.to_string());
            fatal = true;
        }
    }

    let tracefs = Path::new("/sys/kernel/tracing/events").exists();
    line(tracefs, "tracefs", if tracefs { "mounted at /sys/kernel/tracing" } else { "not mounted: `mount -t tracefs nodev /sys/kernel/tracing` (sensor run tries this itself)" });

    if !root {
        line(false, "probes", "not tried without privileges");
        return ExitCode::FAILURE;
    }
    match loader::load(&loader::LoadOptions::default()) {
        Ok(loaded) => {
            for (name, _, purpose) in loader::PROBES {
                match loaded.failed.get(*name) {
                    None => line(true, &format!("probe {name}"), purpose),
                    Some(why) => {
                        let required = loader::REQUIRED.contains(name);
                        fatal |= required;
                        line(false, &format!("probe {name}"), &format!("{purpose} unavailable: {why}{}", if required { " (required)" } else { "" }));
                    }
                }
            }
        }
        Err(e) => {
            line(false, "kernel programs", &e.to_string());
            fatal = true;
        }
    }
    if fatal {
        println!("the sensor cannot run here");
        ExitCode::FAILURE
    } else {
        println!("the sensor can run here");
        ExitCode::SUCCESS
    }
}
