//! Lists what one layer directory holds, with digests, within a build's bounds. Runs on the
//! contents worker thread, never on the event loop.
use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::output::record::ImageFile;

/// What one build's listing may cost.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Entries listed over all layers of a build.
    pub max_entries: u64,
    /// Regular files larger than this are listed without a digest.
    pub max_file_bytes: u64,
    /// Bytes hashed over all layers of a build; past it, files are listed without a digest.
    pub max_hash_bytes: u64,
    /// Directory depth walked.
    pub max_depth: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            max_entries: 10_000,
            max_file_bytes: 64 * 1024 * 1024,
            max_hash_bytes: 1024 * 1024 * 1024,
            max_depth: 64,
        }
    }
}

/// What is left of a build's bounds, and what was skipped, by reason.
#[derive(Debug, Default)]
pub struct Budget {
    pub bounds: Bounds,
    pub entries: u64,
    pub hashed: u64,
    pub skipped: BTreeMap<String, u64>,
}

impl Budget {
    pub fn new(bounds: Bounds) -> Self {
        Budget {
            bounds,
            ..Default::default()
        }
    }
    pub fn skip(&mut self, reason: &str) {
        *self.skipped.entry(reason.to_string()).or_default() += 1;
    }
}

/// `trusted.overlay.opaque` = `y`: overlayfs shows none of the lower layers' entries below.
fn is_opaque(path: &Path) -> bool {
    let (Ok(p), Ok(name)) = (
        CString::new(path.as_os_str().as_bytes()),
        CString::new("trusted.overlay.opaque"),
    ) else {
        return false;
    };
    let mut buf = [0u8; 4];
    // SAFETY: both strings are NUL-terminated, the buffer's length is passed with it.
    let n = unsafe { libc::lgetxattr(p.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), 4) };
    n == 1 && buf[0] == b'y'
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Lists `dir` (one layer's `diff`), deepest entries after their directories, sorted by name.
/// `lower` are the layer directories below it, nearest first: a path one of them has is
/// `changed`, else `added`.
pub fn walk_layer(dir: &Path, lower: &[PathBuf], budget: &mut Budget) -> Vec<ImageFile> {
    let mut out = Vec::new();
    let mut stack: Vec<(PathBuf, usize)> = vec![(PathBuf::new(), 0)];
    while let Some((rel, depth)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(dir.join(&rel)) else {
            budget.skip("unreadable");
            continue;
        };
        let mut names: Vec<_> = rd.flatten().map(|e| e.file_name()).collect();
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let rel = rel.join(&name);
            let full = dir.join(&rel);
            let Ok(md) = full.symlink_metadata() else {
                budget.skip("unreadable");
                continue;
            };
            let ft = md.file_type();
            if ft.is_dir() {
                if depth + 1 < budget.bounds.max_depth {
                    subdirs.push((rel.clone(), depth + 1));
                } else {
                    budget.skip("too_deep");
                }
                // Directories are listed only when they hide what lower layers had.
                if !is_opaque(&full) {
                    continue;
                }
            }
            if budget.entries >= budget.bounds.max_entries {
                budget.skip("entry_limit");
                continue;
            }
            budget.entries += 1;
            out.push(entry(&full, &rel, &md, lower, budget));
        }
        // Reverse so that the stack pops them in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    out
}

fn entry(
    full: &Path,
    rel: &Path,
    md: &std::fs::Metadata,
    lower: &[PathBuf],
    budget: &mut Budget,
) -> ImageFile {
    let ft = md.file_type();
    let path = format!("/{}", rel.display());
    let mode = md.permissions().mode() & 0o7777;
    let whiteout = ft.is_char_device() && md.rdev() == 0;
    let op = if whiteout {
        "deleted"
    } else if ft.is_dir() {
        "opaque_dir"
    } else if lower_has(lower, rel) {
        "changed"
    } else {
        "added"
    };
    let file_type = if whiteout {
        ""
    } else if ft.is_file() {
        "file"
    } else if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_char_device() {
        "char"
    } else if ft.is_block_device() {
        "block"
    } else if ft.is_fifo() {
        "fifo"
    } else {
        "socket"
    };
    let mut f = ImageFile {
        path,
        op: op.into(),
        file_type: file_type.into(),
        size: if ft.is_file() { md.len() } else { 0 },
        mode: if whiteout {
            String::new()
        } else {
            format!("{mode:04o}")
        },
        uid: md.uid(),
        gid: md.gid(),
        ..Default::default()
    };
    if ft.is_symlink() {
        f.link_target = std::fs::read_link(full)
            .ok()
            .map(|t| t.to_string_lossy().into_owned());
    }
    if ft.is_file() {
        f.executable = mode & 0o111 != 0;
        f.setuid = mode & 0o6000 != 0;
        if md.len() > budget.bounds.max_file_bytes {
            budget.skip("file_too_large");
        } else if budget.hashed + md.len() > budget.bounds.max_hash_bytes {
            budget.skip("hash_budget");
        } else {
            match sha256_file(full) {
                Ok(h) => {
                    budget.hashed += md.len();
                    f.sha256 = Some(h);
                }
                Err(_) => budget.skip("unreadable"),
            }
        }
    }
    f
}

/// The nearest lower layer that has `rel` (or deletes it, or hides it under an opaque directory)
/// decides whether it existed below.
fn lower_has(lower: &[PathBuf], rel: &Path) -> bool {
    for dir in lower {
        let p = dir.join(rel);
        if let Ok(md) = p.symlink_metadata() {
            return !(md.file_type().is_char_device() && md.rdev() == 0);
        }
        let mut anc = rel.parent();
        while let Some(a) = anc {
            if a.as_os_str().is_empty() {
                break;
            }
            if is_opaque(&dir.join(a)) {
                return false;
            }
            anc = a.parent();
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sensor-walk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn lists_added_changed_with_digests_and_bounds() {
        let base = tmp("base");
        std::fs::create_dir_all(base.join("etc")).unwrap();
        std::fs::write(base.join("etc/motd"), "old").unwrap();
        let top = tmp("top");
        std::fs::create_dir_all(top.join("etc")).unwrap();
        std::fs::create_dir_all(top.join("usr/bin")).unwrap();
        std::fs::write(top.join("etc/motd"), "new").unwrap();
        std::fs::write(top.join("usr/bin/tool"), "abc").unwrap();
        std::fs::set_permissions(
            top.join("usr/bin/tool"),
            std::fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        std::fs::write(top.join("big"), vec![0u8; 100]).unwrap();
        symlink("/usr/bin/tool", top.join("link")).unwrap();

        let mut b = Budget::new(Bounds {
            max_file_bytes: 50,
            ..Default::default()
        });
        let files = walk_layer(&top, std::slice::from_ref(&base), &mut b);
        let by: BTreeMap<_, _> = files.iter().map(|f| (f.path.as_str(), f)).collect();
        assert_eq!(by["/etc/motd"].op, "changed");
        let tool = by["/usr/bin/tool"];
        assert_eq!(tool.op, "added");
        assert_eq!(tool.mode, "4755");
        assert!(tool.executable && tool.setuid);
        assert_eq!(
            tool.sha256.as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(by["/big"].sha256, None);
        assert_eq!(by["/link"].link_target.as_deref(), Some("/usr/bin/tool"));
        assert_eq!(b.skipped["file_too_large"], 1);
        assert_eq!(files.len(), 4, "{files:?}");

        let mut small = Budget::new(Bounds {
            max_entries: 2,
            ..Default::default()
        });
        assert_eq!(walk_layer(&top, &[], &mut small).len(), 2);
        assert_eq!(small.skipped["entry_limit"], 2);
        for d in [base, top] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }

    #[test]
    fn whiteouts_are_deletions() {
        let top = tmp("wh");
        let p = CString::new(top.join("gone").as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path; mknod of a 0:0 character device, as overlayfs writes.
        let rc = unsafe { libc::mknod(p.as_ptr(), libc::S_IFCHR, 0) };
        assert_eq!(rc, 0, "mknod of a whiteout needs CAP_MKNOD (run as root)");
        let mut b = Budget::new(Bounds::default());
        let files = walk_layer(&top, &[], &mut b);
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].op, "deleted");
        assert_eq!(files[0].path, "/gone");
        std::fs::remove_dir_all(top).unwrap();
    }
}
