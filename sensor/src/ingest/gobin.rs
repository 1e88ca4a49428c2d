//! Where the API servers' uprobes go (`--kernel-hooks narrow`, kernel side in
//! sensor-ebpf/src/probes/goapi.rs): the Go runtime's raw syscall function in the binary an API
//! server process runs (attached per process: `loader::attach_api_server`). Found by its symbol (Debian's dockerd keeps Go's symbols in
//! `.dynsym`), and checked instruction by instruction: the probes read the registers of that
//! exact code, so any other layout is refused with the reason rather than probed.
use std::path::{Path, PathBuf};

use object::{Object, ObjectSection, ObjectSymbol};

/// The function's name across Go versions (1.19-1.22, 1.23+).
const SYSCALL6: &[&str] = &[
    "runtime/internal/syscall.Syscall6",
    "internal/runtime/syscall.Syscall6",
];

/// Its first instructions (Go's `asm_linux_amd64.s`, the same since 1.19): the arguments move
/// from Go's register ABI to the kernel's (`MOVQ SI, R10; MOVQ DI, DX; MOVQ CX, SI;
/// MOVQ BX, DI`), the number is already in AX, then `SYSCALL`.
const PROLOGUE: &[u8] = &[
    0x49, 0x89, 0xf2, 0x48, 0x89, 0xfa, 0x48, 0x89, 0xce, 0x48, 0x89, 0xdf, 0x0f, 0x05,
];

/// One binary to probe: the file offsets of the function's entry and of the instruction after
/// its `SYSCALL` (RAX holds the result there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoTarget {
    pub path: PathBuf,
    pub entry: u64,
    pub after_syscall: u64,
}

/// The probe offsets in the Go binary at `path`, or why it cannot be probed.
///
/// The file is mapped, not read: dockerd is about 75 MB, and reading it whole would hold that
/// much in the sensor's memory at every API server's start. Through the map only the pages
/// looked at come in (the symbol's hash chain in `.gnu.hash` and `.dynsym`, or the tables
/// scanned without one), and they are the page cache's, given back at the unmap.
pub fn syscall_offsets(path: &Path) -> Result<GoTarget, String> {
    if !cfg!(target_arch = "x86_64") {
        return Err("uprobes on Go's syscall function are implemented for x86-64 only".into());
    }
    let f = std::fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    // SAFETY: the map is read while this function runs and dropped at its end. Its bytes can
    // change under it only if the file is written meanwhile; `path` is a running process's
    // executable (`/proc/PID/exe`), which the kernel refuses to open for writing (ETXTBSY).
    // Whatever the bytes, they are parsed as untrusted input and the prologue is checked.
    let data =
        unsafe { memmap2::Mmap::map(&f) }.map_err(|e| format!("map {}: {e}", path.display()))?;
    let file = object::read::elf::ElfFile64::<object::Endianness>::parse(&*data)
        .map_err(|e| format!("not a 64-bit ELF file: {e}"))?;
    let addr = match hashed_symbol(&file)
        .or_else(|| scanned_symbol(file.symbols().chain(file.dynamic_symbols())))
    {
        Some(addr) => addr,
        // A stripped binary (Debian's podman) still has the runtime's own function table.
        None => file
            .section_by_name(".gopclntab")
            .and_then(|s| s.data().ok())
            .and_then(pclntab_find)
            .ok_or("no Go syscall symbol (a stripped or non-Go binary)")?,
    };
    let section = file
        .sections()
        .find(|s| (s.address()..s.address() + s.size()).contains(&addr))
        .ok_or("the symbol is in no section")?;
    let (file_start, _) = section
        .file_range()
        .ok_or("the symbol's section has no file data")?;
    let code = section
        .data()
        .map_err(|e| format!("section data: {e}"))?
        .get((addr - section.address()) as usize..)
        .and_then(|c| c.get(..PROLOGUE.len()))
        .ok_or("the symbol points past its section")?;
    if code != PROLOGUE {
        return Err(format!(
            "unknown layout of Go's syscall function (first bytes {code:02x?})"
        ));
    }
    let entry = file_start + (addr - section.address());
    Ok(GoTarget {
        path: path.to_path_buf(),
        entry,
        after_syscall: entry + PROLOGUE.len() as u64,
    })
}

/// The function's address from symbols compared by name one after another (a `.symtab`, or
/// symbols without a hash table).
fn scanned_symbol<'a>(mut symbols: impl Iterator<Item = impl ObjectSymbol<'a>>) -> Option<u64> {
    symbols
        .find(|s| s.name().is_ok_and(|n| SYSCALL6.contains(&n)))
        .map(|s| s.address())
}

/// The function's address through `.gnu.hash` and `.dynsym` (Debian's dockerd exports Go's
/// symbols there): a few pages of the file rather than every symbol's name.
fn hashed_symbol(file: &object::read::elf::ElfFile64<'_, object::Endianness>) -> Option<u64> {
    use object::read::elf::{Sym as _, VersionTable};
    let endian = file.endian();
    let (table, _) = file
        .elf_section_table()
        .gnu_hash(endian, file.data())
        .ok()??;
    let symbols = file.elf_dynamic_symbol_table();
    let versions = VersionTable::default();
    SYSCALL6.iter().find_map(|name| {
        let name = name.as_bytes();
        let hash = object::elf::gnu_hash(name);
        table
            .find(endian, name, hash, None, symbols, &versions)
            .map(|(_, sym)| sym.st_value(endian))
    })
}

/// The address of Go's syscall function from a `.gopclntab` (the Go runtime's function table,
/// kept in stripped binaries; Go 1.18+ layout, magic 0xfffffff0/0xfffffff1: a header of
/// pointer-sized fields, then pairs of 32-bit entry and record offsets whose records start
/// with the entry and name offsets). By hand: the well-kept ELF crates do not read it.
fn pclntab_find(t: &[u8]) -> Option<u64> {
    let u32_at = |at: usize| Some(u32::from_le_bytes(t.get(at..at + 4)?.try_into().ok()?));
    let word = |i: usize| {
        Some(u64::from_le_bytes(
            t.get(8 + i * 8..16 + i * 8)?.try_into().ok()?,
        ))
    };
    if !matches!(u32_at(0)?, 0xffff_fff0 | 0xffff_fff1) || t.get(7) != Some(&8) {
        return None;
    }
    let nfunc = usize::try_from(word(0)?).ok()?;
    let text = word(2)?;
    let names = usize::try_from(word(3)?).ok()?;
    let pcln = usize::try_from(word(7)?).ok()?;
    (0..nfunc).find_map(|i| {
        let entry = u32_at(pcln + i * 8)?;
        let rec = pcln + u32_at(pcln + i * 8 + 4)? as usize;
        let name_at = names + u32_at(rec + 4)? as usize;
        let name = t.get(name_at..)?;
        let name = &name[..name.iter().position(|&b| b == 0)?];
        SYSCALL6
            .iter()
            .any(|n| n.as_bytes() == name)
            .then_some(text + u64::from(entry))
    })
}

/// Whether an API server process serves the Engine API: dockerd always; podman only as
/// `podman system service` (its other commands are a CLI running the same binary).
pub fn serves_api<S: AsRef<str>>(comm: &str, argv: &[S]) -> bool {
    comm != "podman" || argv.iter().any(|a| a.as_ref() == "service")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_without_the_go_symbol_is_refused_with_the_reason() {
        // The test binary itself is Rust: no Go syscall function.
        let me = std::env::current_exe().unwrap();
        let err = syscall_offsets(&me).unwrap_err();
        assert!(err.contains("no Go syscall symbol"), "{err}");
        let err = syscall_offsets(Path::new("/nonexistent/dockerd")).unwrap_err();
        assert!(err.starts_with("open /nonexistent/dockerd"), "{err}");
    }

    #[test]
    fn a_stripped_go_binary_is_found_by_its_function_table() {
        // Debian's podman is stripped of Go's symbols (installed by `cargo xtask setup`).
        let t = syscall_offsets(Path::new("/usr/bin/podman")).unwrap();
        let data = std::fs::read("/usr/bin/podman").unwrap();
        let at = t.entry as usize;
        assert_eq!(&data[at..at + PROLOGUE.len()], PROLOGUE);
        // Garbage is no table.
        assert_eq!(pclntab_find(&[0xf0, 0xff, 0xff, 0xff, 0, 0, 1, 8, 9]), None);
        assert_eq!(pclntab_find(b"not a table at all"), None);
    }

    #[test]
    fn dockerd_offsets_point_at_the_checked_prologue() {
        // Debian's dockerd (installed by `cargo xtask setup`) keeps Go's symbols.
        let Some(p) = ["/usr/sbin/dockerd", "/usr/bin/dockerd"]
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
        else {
            panic!("dockerd is not installed (cargo xtask setup installs it)");
        };
        let t = syscall_offsets(p).unwrap();
        let data = std::fs::read(p).unwrap();
        let at = t.entry as usize;
        assert_eq!(&data[at..at + PROLOGUE.len()], PROLOGUE);
        assert_eq!(t.after_syscall, t.entry + 14);
        // The hash table gives the symbol every name compared in turn gives.
        let file = object::read::elf::ElfFile64::<object::Endianness>::parse(&*data).unwrap();
        let scanned = scanned_symbol(file.dynamic_symbols());
        assert!(scanned.is_some());
        assert_eq!(hashed_symbol(&file), scanned);
    }
}
