//! The Dockerfile a builder tool's command line names. buildah and podman read it in place
//! (nothing writes it, so the kernel's write capture sees nothing): it is read from the host,
//! through the tool's `/proc/PID/{cwd,root}`, when its exec is seen (the build runs for far
//! longer than that takes).
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::dockerfile::{Assembled, MAX_TEXT, read_whole};

/// Options of `buildah bud` / `podman build` that take a separate value: the context directory
/// is the last argument that is none of their values.
const VALUE_FLAGS: &[&str] = &[
    "-t",
    "--tag",
    "-f",
    "--file",
    "--target",
    "--platform",
    "--network",
    "--build-arg",
    "--build-arg-file",
    "--iidfile",
    "--authfile",
    "--cache-from",
    "--cache-to",
    "--isolation",
    "--format",
    "-v",
    "--volume",
    "--label",
    "--annotation",
    "--arch",
    "--os",
    "--variant",
    "--secret",
    "--ssh",
    "--runtime",
    "--signature-policy",
    "--userns",
    "--cgroup-parent",
    "--cgroupns",
    "--ipc",
    "--pid",
    "--uts",
    "-m",
    "--memory",
    "--memory-swap",
    "--cpu-shares",
    "--cpu-period",
    "--cpu-quota",
    "--cpuset-cpus",
    "--cpuset-mems",
    "--logfile",
    "--jobs",
    "--timestamp",
    "--add-host",
    "--dns",
    "--dns-option",
    "--dns-search",
    "--device",
    "--shm-size",
    "--ulimit",
    "--security-opt",
    "--cap-add",
    "--cap-drop",
    "--decryption-key",
    "--creds",
    "--cert-dir",
    "--manifest",
    "--output",
    "-o",
    "--pull",
    "--retry",
    "--retry-delay",
    "--from",
    "--env",
    "--unsetenv",
    "--hooks-dir",
    "--sign-by",
    "--os-feature",
    "--os-version",
    "--all-platforms",
    "--rusage-logfile",
    "--layer-label",
];

/// Subcommands that build from a Dockerfile.
const BUILD_VERBS: &[&str] = &["bud", "build", "build-using-dockerfile"];

/// The `-f` value (the first, when several) and the context directory of a build command's
/// arguments (those after the program name; global options before the verb are skipped).
/// `None` when the build reads no local file: `-f -` (stdin), a URL or git context.
pub fn locate(args: &[String]) -> Option<(Option<String>, String)> {
    let start = args
        .iter()
        .position(|a| BUILD_VERBS.contains(&a.as_str()))?;
    let args = &args[start + 1..];
    let mut file = None;
    let mut positional = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if let Some((flag, v)) = a.split_once('=').filter(|(f, _)| f.starts_with('-')) {
            if matches!(flag, "-f" | "--file") && file.is_none() {
                file = Some(v.to_string());
            }
        } else if VALUE_FLAGS.contains(&a) {
            if matches!(a, "-f" | "--file") && file.is_none() {
                file = args.get(i + 1).cloned();
            }
            i += 1;
        } else if !a.starts_with('-') || a == "-" {
            positional.push(a);
        }
        i += 1;
    }
    let context = positional.last().copied().unwrap_or(".").to_string();
    let remote = |s: &str| s == "-" || s.contains("://") || s.starts_with("git@");
    if remote(&context) || file.as_deref().is_some_and(remote) {
        return None;
    }
    Some((file, context))
}

/// Where a path the process gave lies, seen from the sensor: absolute paths inside its root,
/// relative ones from its working directory (the kernel follows both links to the process's
/// own view, whatever its mount namespace).
fn through_proc(proc_dir: &Path, p: &Path) -> PathBuf {
    match p.strip_prefix("/") {
        Ok(rel) => proc_dir.join("root").join(rel),
        Err(_) => proc_dir.join("cwd").join(p),
    }
}

/// The Dockerfile the build command of process `pid` (running as `uid`:`gid`) reads: `-f`
/// (relative to its working directory, else to the context), else `Containerfile`, else
/// `Dockerfile` in the context directory. Only a regular file that `uid` can read (root reads
/// all), opened without blocking (a FIFO is not waited on), at most 16 KiB of it.
pub fn read(pid: u32, uid: u32, gid: u32, args: &[String]) -> Option<Assembled> {
    let (file, context) = locate(args)?;
    let proc_dir = crate::process::proc::proc_root().join(pid.to_string());
    let ctx = Path::new(&context);
    let candidates: Vec<PathBuf> = match &file {
        Some(f) if Path::new(f).is_absolute() => vec![f.into()],
        Some(f) => vec![f.into(), ctx.join(f)],
        None => vec![ctx.join("Containerfile"), ctx.join("Dockerfile")],
    };
    for shown in candidates {
        let Ok(f) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(through_proc(&proc_dir, &shown))
        else {
            continue;
        };
        let meta = f.metadata().ok()?;
        if !meta.is_file() || !readable_by(uid, gid, meta.uid(), meta.gid(), meta.mode()) {
            return None;
        }
        let mut bytes = Vec::new();
        f.take(MAX_TEXT as u64).read_to_end(&mut bytes).ok()?;
        return Some(read_whole(
            shown_path(&proc_dir, &shown),
            &bytes,
            meta.len(),
        ));
    }
    None
}

/// A file's path as the process names it (its working directory joined, when relative).
fn shown_path(proc_dir: &Path, p: &Path) -> String {
    let full = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::fs::read_link(proc_dir.join("cwd"))
            .map(|cwd| cwd.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    full.display().to_string()
}

/// Whether the build's user could read the file (mode bits; supplementary groups and ACLs are
/// not looked at, so a file readable only through them is not read).
fn readable_by(uid: u32, gid: u32, owner: u32, group: u32, mode: u32) -> bool {
    uid == 0
        || (owner == uid && mode & 0o400 != 0)
        || (group == gid && mode & 0o040 != 0)
        || mode & 0o004 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_file_and_context_of_a_command_line() {
        let l = |a: &[&str]| locate(&v(a));
        assert_eq!(
            l(&[
                "bud",
                "--pull=never",
                "--network",
                "host",
                "-t",
                "x:1",
                "/ctx"
            ]),
            Some((None, "/ctx".into()))
        );
        assert_eq!(
            l(&[
                "--log-level",
                "info",
                "build",
                "-f",
                "C.txt",
                "-f",
                "D",
                "sub"
            ]),
            Some((Some("C.txt".into()), "sub".into()))
        );
        assert_eq!(
            l(&["build", "--file=/abs/Dockerfile", "-t", "x"]),
            Some((Some("/abs/Dockerfile".into()), ".".into()))
        );
        assert_eq!(l(&["build", "-f", "-", "."]), None);
        assert_eq!(l(&["build", "https://example.invalid/ctx.tar"]), None);
        assert_eq!(l(&["images"]), None);
    }

    #[test]
    fn a_file_is_read_as_its_user_could() {
        assert!(readable_by(0, 0, 5, 5, 0o000));
        assert!(readable_by(1000, 1000, 1000, 1, 0o400));
        assert!(readable_by(1000, 1000, 1, 1000, 0o040));
        assert!(readable_by(1000, 1000, 1, 1, 0o004));
        assert!(!readable_by(1000, 1000, 0, 0, 0o640));
    }

    /// Read through this very process's /proc entry: `-f` relative to the working directory,
    /// else Containerfile in the context; a FIFO is not waited on; more than 16 KiB is cut.
    #[test]
    fn reads_through_proc_bounded() {
        let dir = std::env::temp_dir().join(format!("sensor-cmdfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.as_path();
        std::fs::write(d.join("Containerfile"), "FROM a\n").unwrap();
        std::fs::write(d.join("big"), "#".repeat(20_000)).unwrap();
        let me = std::process::id();
        let ctx = d.to_str().unwrap();
        let got = read(me, 0, 0, &v(&["bud", ctx])).unwrap();
        assert_eq!(got.text, "FROM a\n");
        assert!(got.path.ends_with("/Containerfile"));
        let big = d.join("big");
        let got = read(me, 0, 0, &v(&["bud", "-f", big.to_str().unwrap(), ctx])).unwrap();
        assert!(got.truncated);
        assert_eq!((got.text.len(), got.size), (MAX_TEXT, 20_000));
        let fifo = d.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        assert!(read(me, 0, 0, &v(&["bud", "-f", fifo.to_str().unwrap(), ctx])).is_none());
        std::fs::remove_dir_all(d).unwrap();
    }
}
