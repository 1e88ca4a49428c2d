//! Where the cgroup v2 hierarchy is mounted. Cgroup programs attached at its root run for every
//! process on the host: a process's sockets belong to its v2 cgroup even on a hybrid host, where
//! the v1 controllers sit at /sys/fs/cgroup and v2 at /sys/fs/cgroup/unified (this build VM).
use std::path::{Path, PathBuf};

/// `statfs.f_type` of a cgroup2 mount (linux/magic.h).
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;

/// The usual places, in order: a unified host, then a hybrid one.
const USUAL: &[&str] = &["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];

/// The mount point of the cgroup v2 hierarchy's root: /sys/fs/cgroup when that is cgroup2, else
/// /sys/fs/cgroup/unified, else the first cgroup2 mount of the hierarchy's root in
/// /proc/self/mountinfo. The error says what is missing, in one line.
pub fn root() -> Result<PathBuf, String> {
    if let Some(p) = USUAL.iter().map(Path::new).find(|p| is_cgroup2(p)) {
        return Ok(p.to_path_buf());
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
    from_mountinfo(&info).ok_or_else(|| {
        "no cgroup v2 hierarchy is mounted (e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`)"
            .to_string()
    })
}

fn is_cgroup2(p: &Path) -> bool {
    rustix::fs::statfs(p).is_ok_and(|s| s.f_type as u64 == CGROUP2_SUPER_MAGIC)
}

/// The mount point of a cgroup2 mount of the hierarchy's root (`/`), from mountinfo's lines:
/// `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`.
/// A mount of a subtree (a container's view) would cover only that subtree: not taken.
fn from_mountinfo(info: &str) -> Option<PathBuf> {
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split(' ').next()? != "cgroup2" {
            return None;
        }
        let mut f = left.split(' ').skip(3);
        let (root, point) = (f.next()?, f.next()?);
        (root == "/").then(|| PathBuf::from(unescape(point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` (octal).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).and_then(|d| {
            let d = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(d, 8).ok()
        });
        match (b[i], octal) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_mount_of_cgroup2_is_found_in_mountinfo() {
        let info = "\
25 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory
40 30 0:35 /docker/abc /in/container rw - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/un\\040ified rw,nosuid shared:10 master:2 - cgroup2 cgroup2 rw,nsdelegate
";
        assert_eq!(
            from_mountinfo(info),
            Some(PathBuf::from("/sys/fs/cgroup/un ified"))
        );
    }

    #[test]
    fn no_cgroup2_mount_is_none() {
        let info = "26 25 0:23 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(from_mountinfo(info), None);
        assert_eq!(from_mountinfo("garbage line\n\n"), None);
    }

    #[test]
    fn this_host_has_a_cgroup2_root() {
        // Every machine this builds on mounts cgroup v2 (unified or hybrid).
        let root = root().unwrap();
        assert!(is_cgroup2(&root), "{}", root.display());
    }
}
