//! A minimal reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`), enough to find the byte
//! offsets of the kernel struct fields the kernel programs read.
//!
//! The kernel programs do not use CO-RE relocations: userspace resolves every offset they need
//! from the running kernel's BTF at load time ([`resolve_offsets`]) and writes them into the
//! `CONFIG` map, so that the same object runs on every kernel that has the fields.
//!
//! Format (see the kernel's `Documentation/bpf/btf.rst`): a header (magic `0xeB9F`, version 1,
//! header length, then offsets and lengths of the type and string sections, both relative to the
//! end of the header), a type section of variable-size records (type id 1 is the first record;
//! id 0 is `void`) and a string section of NUL-terminated names. Only little-endian BTF is read,
//! as produced by the kernels the sensor runs on.
//!
//! Every read is bounds-checked: a truncated or garbage blob gives a [`BtfError`], never a panic.

use std::path::{Path, PathBuf};

use sensor_common::{KernelOffsets, OFFSET_MISSING};

/// Where the running kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xEB9F;
const HEADER_LEN: usize = 24;
/// A type record's fixed part: name_off, info, size/type.
const TYPE_LEN: usize = 12;
/// Bound on typedef/modifier chains and anonymous-member nesting (guards against cycles in a
/// corrupt blob; real kernels nest a handful of levels).
const MAX_DEPTH: u32 = 32;

const KIND_INT: u8 = 1;
const KIND_PTR: u8 = 2;
const KIND_ARRAY: u8 = 3;
const KIND_STRUCT: u8 = 4;
const KIND_UNION: u8 = 5;
const KIND_ENUM: u8 = 6;
const KIND_FWD: u8 = 7;
const KIND_TYPEDEF: u8 = 8;
const KIND_VOLATILE: u8 = 9;
const KIND_CONST: u8 = 10;
const KIND_RESTRICT: u8 = 11;
const KIND_FUNC: u8 = 12;
const KIND_FUNC_PROTO: u8 = 13;
const KIND_VAR: u8 = 14;
const KIND_DATASEC: u8 = 15;
const KIND_FLOAT: u8 = 16;
const KIND_DECL_TAG: u8 = 17;
const KIND_TYPE_TAG: u8 = 18;
const KIND_ENUM64: u8 = 19;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "kernel BTF not found at {}: this kernel was built without CONFIG_DEBUG_INFO_BTF; \
         the sensor needs BTF (use a kernel built with CONFIG_DEBUG_INFO_BTF=y, as most \
         distributions ship since 2020)",
        path.display()
    )]
    NotFound { path: PathBuf },
    #[error("cannot read kernel BTF at {}: {source}; check that the sensor may read it", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "invalid BTF: {0}; the data is not little-endian BTF version 1 (is the file \
         /sys/kernel/btf/vmlinux?)"
    )]
    Malformed(String),
    #[error(
        "unknown BTF kind {kind} (type id {id}): this kernel's BTF is newer than the sensor \
         understands; please report the kernel version"
    )]
    UnknownKind { kind: u8, id: u32 },
    #[error("struct {0} not found in the kernel BTF: this kernel does not have it")]
    StructNotFound(String),
    #[error("invalid field path {path:?}: {reason}")]
    BadPath { path: String, reason: String },
    #[error("field {name} not found in {ctx} (path {path:?}): this kernel's struct layout differs")]
    FieldNotFound {
        ctx: String,
        name: String,
        path: String,
    },
    #[error("{path:?} in {ctx} is a bitfield: the sensor reads only whole-byte fields")]
    Bitfield { ctx: String, path: String },
    #[error(
        "{name} in path {path:?} is not a struct or union (BTF kind {kind}); pointers cannot be followed in a path"
    )]
    NotComposite {
        name: String,
        kind: u8,
        path: String,
    },
    #[error("{name} in path {path:?} is not an array (BTF kind {kind})")]
    NotArray {
        name: String,
        kind: u8,
        path: String,
    },
    #[error(
        "index {index} of {name} in path {path:?} is out of range (the array has {len} elements)"
    )]
    IndexOutOfRange {
        name: String,
        index: u32,
        len: u32,
        path: String,
    },
    #[error("invalid BTF type reference: {0}")]
    BadType(String),
}

/// A kernel field whose offset could not be resolved; its offset is [`OFFSET_MISSING`].
#[derive(Clone, Debug)]
pub struct MissingField {
    /// The `KernelOffsets` field name.
    pub field: &'static str,
    pub reason: String,
}

/// A parsed BTF blob: the raw type and string sections plus the position of every type record.
pub struct Btf {
    types: Vec<u8>,
    strings: Vec<u8>,
    /// Byte offset in `types` of the record of type id `i + 1`.
    index: Vec<u32>,
}

/// The fixed part of a type record.
#[derive(Clone, Copy)]
struct TypeRec {
    name_off: u32,
    kind: u8,
    kflag: bool,
    vlen: u16,
    /// `size` for INT, ENUM, STRUCT, UNION, DATASEC, FLOAT, ENUM64; `type` for the others.
    size_type: u32,
    /// Offset in `types` of the data following the fixed part.
    extra: usize,
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(off..off.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn malformed(msg: impl Into<String>) -> BtfError {
    BtfError::Malformed(msg.into())
}

/// Bytes following a type record's fixed part, by kind.
fn extra_len(kind: u8, vlen: u16, id: u32) -> Result<usize, BtfError> {
    let vlen = usize::from(vlen);
    Ok(match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
        | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
        KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
        _ => return Err(BtfError::UnknownKind { kind, id }),
    })
}

/// One element of a field path: a member name and the array indexes that follow it.
struct PathElem<'a> {
    name: &'a str,
    indexes: Vec<u32>,
}

fn parse_path(path: &str) -> Result<Vec<PathElem<'_>>, BtfError> {
    let bad = |reason: &str| BtfError::BadPath {
        path: path.to_string(),
        reason: reason.to_string(),
    };
    if path.is_empty() {
        return Err(bad("empty path"));
    }
    let mut out = Vec::new();
    for part in path.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        let valid_name =
            !name.is_empty() && name.bytes().all(|c| c == b'_' || c.is_ascii_alphanumeric());
        if !valid_name {
            return Err(bad(
                "each element must be a member name, optionally followed by [index]",
            ));
        }
        let mut indexes = Vec::new();
        while !rest.is_empty() {
            let close = match (rest.strip_prefix('['), rest.find(']')) {
                (Some(_), Some(close)) => close,
                _ => return Err(bad("malformed [index]")),
            };
            let index = rest[1..close]
                .parse::<u32>()
                .map_err(|_| bad("index must be a decimal number"))?;
            indexes.push(index);
            rest = &rest[close + 1..];
        }
        out.push(PathElem { name, indexes });
    }
    Ok(out)
}

impl Btf {
    /// Reads and parses a BTF file, normally [`VMLINUX_BTF`].
    pub fn from_file(path: &Path) -> Result<Btf, BtfError> {
        let data = std::fs::read(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                BtfError::NotFound {
                    path: path.to_path_buf(),
                }
            } else {
                BtfError::Read {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        Btf::from_bytes(&data)
    }

    /// Parses a BTF blob (a copy of the type and string sections is kept).
    pub fn from_bytes(data: &[u8]) -> Result<Btf, BtfError> {
        if data.len() < HEADER_LEN {
            return Err(malformed(format!(
                "{} bytes is shorter than the BTF header",
                data.len()
            )));
        }
        let magic = u16_at(data, 0).unwrap_or(0);
        if magic == MAGIC.swap_bytes() {
            return Err(malformed("big-endian BTF is not supported"));
        }
        if magic != MAGIC {
            return Err(malformed(format!("bad magic {magic:#06x}")));
        }
        let version = data[2];
        if version != 1 {
            return Err(malformed(format!("unsupported version {version}")));
        }
        let field = |i: usize| u32_at(data, 4 + 4 * i).unwrap_or(0) as usize;
        let (hdr_len, type_off, type_len, str_off, str_len) =
            (field(0), field(1), field(2), field(3), field(4));
        if hdr_len < HEADER_LEN || hdr_len > data.len() {
            return Err(malformed(format!("bad header length {hdr_len}")));
        }
        let body = &data[hdr_len..];
        let section = |off: usize, len: usize, what: &str| {
            off.checked_add(len)
                .and_then(|end| body.get(off..end))
                .ok_or_else(|| {
                    malformed(format!(
                        "{what} section ({off}+{len}) beyond the end of the data (truncated?)"
                    ))
                })
        };
        let types = section(type_off, type_len, "type")?;
        let strings = section(str_off, str_len, "string")?;
        if let Some(&last) = strings.last()
            && last != 0
        {
            return Err(malformed("string section is not NUL-terminated"));
        }
        let name_ok = |off: u32| off == 0 || (off as usize) < strings.len();

        if u32::try_from(types.len()).is_err() {
            return Err(malformed("type section larger than 4 GiB"));
        }
        let mut index = Vec::new();
        let mut pos = 0usize;
        while pos < types.len() {
            let id = u32::try_from(index.len() + 1).map_err(|_| malformed("too many types"))?;
            let (Some(name_off), Some(info)) = (u32_at(types, pos), u32_at(types, pos + 4)) else {
                return Err(malformed(format!("type {id} truncated")));
            };
            let kind = ((info >> 24) & 0x1f) as u8;
            let vlen = (info & 0xffff) as u16;
            let end = pos
                .checked_add(TYPE_LEN + extra_len(kind, vlen, id)?)
                .filter(|&end| end <= types.len())
                .ok_or_else(|| malformed(format!("type {id} truncated")))?;
            if !name_ok(name_off) {
                return Err(malformed(format!(
                    "type {id} name offset {name_off} out of range"
                )));
            }
            if matches!(kind, KIND_STRUCT | KIND_UNION) {
                for m in 0..usize::from(vlen) {
                    let member_name = u32_at(types, pos + TYPE_LEN + 12 * m).unwrap_or(u32::MAX);
                    if !name_ok(member_name) {
                        return Err(malformed(format!(
                            "type {id} member name offset out of range"
                        )));
                    }
                }
            }
            index.push(pos as u32);
            pos = end;
        }
        Ok(Btf {
            types: types.to_vec(),
            strings: strings.to_vec(),
            index,
        })
    }

    /// Byte offset of the field at `path` in struct (or union) `struct_name`.
    ///
    /// `path` is dotted member names; anonymous struct/union members are descended into
    /// transparently (`skc_daddr`, not `<anon>.<anon>.skc_daddr`), typedefs and const/volatile
    /// qualifiers are followed, and `name[i]` selects an array element (`numbers[0].nr`).
    /// Pointers are not followed, and bitfields are rejected.
    pub fn member_offset(&self, struct_name: &str, path: &str) -> Result<u32, BtfError> {
        let elems = parse_path(path)?;
        let mut first_err = None;
        // Several structs may share a name (rarely, in vmlinux); take the first that has the path.
        for id in 1..=self.index.len() as u32 {
            let t = self.ty(id)?;
            if matches!(t.kind, KIND_STRUCT | KIND_UNION)
                && self.name(t.name_off) == struct_name.as_bytes()
            {
                match self.resolve_path(id, struct_name, path, &elems) {
                    Ok(off) => return Ok(off),
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        Err(first_err.unwrap_or_else(|| BtfError::StructNotFound(struct_name.to_string())))
    }

    fn resolve_path(
        &self,
        id: u32,
        struct_name: &str,
        path: &str,
        elems: &[PathElem],
    ) -> Result<u32, BtfError> {
        let mut cur = id;
        let mut bits: u64 = 0;
        let mut ctx = format!("struct {struct_name}");
        let overflow = || BtfError::BadType(format!("offset of {path:?} overflows"));
        for elem in elems {
            let comp = self.skip_modifiers(cur)?;
            let t = self.ty(comp)?;
            if !matches!(t.kind, KIND_STRUCT | KIND_UNION) {
                return Err(BtfError::NotComposite {
                    name: ctx,
                    kind: t.kind,
                    path: path.to_string(),
                });
            }
            let (member_type, member_bits, bitfield) = self
                .find_member(comp, elem.name, 0)?
                .ok_or_else(|| BtfError::FieldNotFound {
                    ctx: ctx.clone(),
                    name: elem.name.to_string(),
                    path: path.to_string(),
                })?;
            if bitfield {
                return Err(BtfError::Bitfield {
                    ctx: format!("struct {struct_name}"),
                    path: path.to_string(),
                });
            }
            bits = bits.checked_add(member_bits).ok_or_else(overflow)?;
            cur = member_type;
            ctx = elem.name.to_string();
            for &index in &elem.indexes {
                let arr = self.skip_modifiers(cur)?;
                let t = self.ty(arr)?;
                if t.kind != KIND_ARRAY {
                    return Err(BtfError::NotArray {
                        name: ctx,
                        kind: t.kind,
                        path: path.to_string(),
                    });
                }
                let elem_type = self.u32_extra(&t, 0)?;
                let len = self.u32_extra(&t, 8)?;
                // A flexible array member (`numbers[]`) has 0 elements: any index is allowed.
                if len != 0 && index >= len {
                    return Err(BtfError::IndexOutOfRange {
                        name: ctx,
                        index,
                        len,
                        path: path.to_string(),
                    });
                }
                let elem_bits = u64::from(self.type_size(elem_type, 0)?) * 8;
                bits = u64::from(index)
                    .checked_mul(elem_bits)
                    .and_then(|b| b.checked_add(bits))
                    .ok_or_else(overflow)?;
                cur = elem_type;
                ctx = format!("{ctx}[{index}]");
            }
        }
        if self.is_int_bitfield(cur)? || !bits.is_multiple_of(8) {
            return Err(BtfError::Bitfield {
                ctx: format!("struct {struct_name}"),
                path: path.to_string(),
            });
        }
        u32::try_from(bits / 8).map_err(|_| overflow())
    }

    /// Finds member `name` in struct/union `id`, descending into anonymous members. Returns the
    /// member's type, its offset in bits from the start of `id` and whether it is a bitfield
    /// (kind_flag encoding).
    fn find_member(
        &self,
        id: u32,
        name: &str,
        depth: u32,
    ) -> Result<Option<(u32, u64, bool)>, BtfError> {
        if depth > MAX_DEPTH {
            return Err(BtfError::BadType(
                "anonymous members nested too deep (cycle?)".into(),
            ));
        }
        let t = self.ty(id)?;
        for i in 0..usize::from(t.vlen) {
            let m_name = self.u32_extra(&t, 12 * i)?;
            let m_type = self.u32_extra(&t, 12 * i + 4)?;
            let m_off = self.u32_extra(&t, 12 * i + 8)?;
            let (bit_off, bitfield_size) = if t.kflag {
                (m_off & 0xff_ffff, m_off >> 24)
            } else {
                (m_off, 0)
            };
            let m_name = self.name(m_name);
            if m_name == name.as_bytes() {
                return Ok(Some((m_type, u64::from(bit_off), bitfield_size != 0)));
            }
            if m_name.is_empty() {
                let inner = self.skip_modifiers(m_type)?;
                if matches!(self.ty(inner)?.kind, KIND_STRUCT | KIND_UNION)
                    && let Some((ty, off, bitfield)) = self.find_member(inner, name, depth + 1)?
                {
                    return Ok(Some((ty, u64::from(bit_off) + off, bitfield)));
                }
            }
        }
        Ok(None)
    }

    /// Whether type `id` (after typedefs/qualifiers) is an INT narrower than its storage
    /// (the pre-kind_flag encoding of bitfields).
    fn is_int_bitfield(&self, id: u32) -> Result<bool, BtfError> {
        let id = self.skip_modifiers(id)?;
        if id == 0 {
            return Ok(false);
        }
        let t = self.ty(id)?;
        if t.kind != KIND_INT {
            return Ok(false);
        }
        let enc = self.u32_extra(&t, 0)?;
        let (nr_bits, bit_off) = (u64::from(enc & 0xff), (enc >> 16) & 0xff);
        Ok(bit_off != 0 || nr_bits != u64::from(t.size_type) * 8)
    }

    /// Size in bytes of type `id`.
    fn type_size(&self, id: u32, depth: u32) -> Result<u32, BtfError> {
        if depth > MAX_DEPTH {
            return Err(BtfError::BadType("type chain too long (cycle?)".into()));
        }
        let t = self.ty(id)?;
        match t.kind {
            KIND_INT | KIND_ENUM | KIND_ENUM64 | KIND_STRUCT | KIND_UNION | KIND_FLOAT
            | KIND_DATASEC => Ok(t.size_type),
            // The BTF read is the running kernel's, which has the sensor's pointer width.
            KIND_PTR => Ok(size_of::<usize>() as u32),
            KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                self.type_size(t.size_type, depth + 1)
            }
            KIND_ARRAY => {
                let elem = self.type_size(self.u32_extra(&t, 0)?, depth + 1)?;
                elem.checked_mul(self.u32_extra(&t, 8)?)
                    .ok_or_else(|| BtfError::BadType(format!("size of array type {id} overflows")))
            }
            kind => Err(BtfError::BadType(format!(
                "type {id} (kind {kind}) has no size"
            ))),
        }
    }

    /// Follows typedefs and qualifiers to the underlying type id (0 for void).
    fn skip_modifiers(&self, mut id: u32) -> Result<u32, BtfError> {
        for _ in 0..MAX_DEPTH {
            if id == 0 {
                return Ok(0);
            }
            let t = self.ty(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_type
                }
                _ => return Ok(id),
            }
        }
        Err(BtfError::BadType("typedef chain too long (cycle?)".into()))
    }

    fn ty(&self, id: u32) -> Result<TypeRec, BtfError> {
        let bad = || BtfError::BadType(format!("type id {id} does not exist"));
        let pos = *self
            .index
            .get((id as usize).wrapping_sub(1))
            .ok_or_else(bad)? as usize;
        let (Some(name_off), Some(info), Some(size_type)) = (
            u32_at(&self.types, pos),
            u32_at(&self.types, pos + 4),
            u32_at(&self.types, pos + 8),
        ) else {
            return Err(bad());
        };
        Ok(TypeRec {
            name_off,
            kind: ((info >> 24) & 0x1f) as u8,
            kflag: info >> 31 == 1,
            vlen: (info & 0xffff) as u16,
            size_type,
            extra: pos + TYPE_LEN,
        })
    }

    fn u32_extra(&self, t: &TypeRec, off: usize) -> Result<u32, BtfError> {
        u32_at(&self.types, t.extra + off)
            .ok_or_else(|| BtfError::BadType("type record truncated".into()))
    }

    /// The value of enumerator `variant` of enum `enum_name` (e.g. `cgroup_subsys_id`,
    /// `memory_cgrp_id`: which controllers a kernel has, and their order, is its config's).
    pub fn enum_value(&self, enum_name: &str, variant: &str) -> Result<i64, BtfError> {
        for id in 1..=self.index.len() as u32 {
            let t = self.ty(id)?;
            if !matches!(t.kind, KIND_ENUM | KIND_ENUM64)
                || self.name(t.name_off) != enum_name.as_bytes()
            {
                continue;
            }
            let step = if t.kind == KIND_ENUM { 8 } else { 12 };
            for i in 0..t.vlen as usize {
                let name_off = self.u32_extra(&t, i * step)?;
                if self.name(name_off) != variant.as_bytes() {
                    continue;
                }
                let lo = self.u32_extra(&t, i * step + 4)?;
                return Ok(if t.kind == KIND_ENUM {
                    i64::from(lo as i32)
                } else {
                    let hi = self.u32_extra(&t, i * step + 8)?;
                    ((u64::from(hi) << 32) | u64::from(lo)) as i64
                });
            }
            return Err(BtfError::FieldNotFound {
                ctx: format!("enum {enum_name}"),
                name: variant.to_string(),
                path: variant.to_string(),
            });
        }
        Err(BtfError::StructNotFound(format!("enum {enum_name}")))
    }

    /// The NUL-terminated string at `off` (empty if out of range).
    fn name(&self, off: u32) -> &[u8] {
        let s = self.strings.get(off as usize..).unwrap_or_default();
        &s[..s.iter().position(|&c| c == 0).unwrap_or(s.len())]
    }
}

/// Setter of one `KernelOffsets` field.
type FieldRef = fn(&mut KernelOffsets) -> &mut u32;

/// One row of [`FIELDS`]: `KernelOffsets` field, struct, path in the struct.
macro_rules! field {
    ($field:ident, $struct_name:literal, $path:expr) => {
        (stringify!($field), $struct_name, $path, |o| &mut o.$field)
    };
    ($field:ident[$i:literal], $struct_name:literal, $path:expr) => {
        (
            concat!(stringify!($field), "[", $i, "]"),
            $struct_name,
            $path,
            |o| &mut o.$field[$i],
        )
    };
}

/// Every `KernelOffsets` field and where it is in the kernel's structs.
const FIELDS: &[(&str, &str, &str, FieldRef)] = &[
    field!(task_tgid, "task_struct", "tgid"),
    field!(task_real_parent, "task_struct", "real_parent"),
    field!(task_mm, "task_struct", "mm"),
    field!(task_exit_code, "task_struct", "exit_code"),
    field!(task_files, "task_struct", "files"),
    field!(task_start_boottime, "task_struct", "start_boottime"),
    field!(task_signal, "task_struct", "signal"),
    field!(signal_live, "signal_struct", "live"),
    field!(mm_arg_start, "mm_struct", "arg_start"),
    field!(mm_arg_end, "mm_struct", "arg_end"),
    field!(files_fdt, "files_struct", "fdt"),
    field!(fdt_max_fds, "fdtable", "max_fds"),
    field!(fdt_fd, "fdtable", "fd"),
    field!(file_private_data, "file", "private_data"),
    field!(socket_sk, "socket", "sk"),
    field!(sk_family, "sock", "__sk_common.skc_family"),
    field!(sk_daddr, "sock", "__sk_common.skc_daddr"),
    field!(sk_rcv_saddr, "sock", "__sk_common.skc_rcv_saddr"),
    field!(sk_dport, "sock", "__sk_common.skc_dport"),
    field!(sk_num, "sock", "__sk_common.skc_num"),
    field!(sk_v6_daddr, "sock", "__sk_common.skc_v6_daddr"),
    field!(sk_v6_rcv_saddr, "sock", "__sk_common.skc_v6_rcv_saddr"),
    field!(sk_peer_pid, "sock", "sk_peer_pid"),
    field!(sk_peer_cred, "sock", "sk_peer_cred"),
    // The pid in the task's own (first-level) namespace: `numbers` is a flexible array.
    field!(pid_first_nr, "pid", "numbers[0].nr"),
    // kuid_t is `struct { uid_t val; }`: its offset is the value's.
    field!(cred_uid, "cred", "uid"),
    field!(sk_protocol, "sock", "sk_protocol"),
    field!(mm_exe_file, "mm_struct", "exe_file"),
    field!(file_path_dentry, "file", "f_path.dentry"),
    field!(file_path_mnt, "file", "f_path.mnt"),
    field!(dentry_parent, "dentry", "d_parent"),
    field!(dentry_name, "dentry", "d_name.name"),
    field!(vfsmount_root, "vfsmount", "mnt_root"),
    field!(mount_mnt, "mount", "mnt"),
    field!(mount_parent, "mount", "mnt_parent"),
    field!(mount_mountpoint, "mount", "mnt_mountpoint"),
    field!(task_cgroups, "task_struct", "cgroups"),
    field!(css_cgroup, "cgroup_subsys_state", "cgroup"),
    field!(cgroup_kn, "cgroup", "kn"),
    field!(kn_name, "kernfs_node", "name"),
    // Renamed `__parent` in 6.15 (RCU-protected); `parent` before.
    field!(kn_parent, "kernfs_node", "__parent|parent"),
    field!(regs_arg[0], "pt_regs", REGS_ARGS[0]),
    field!(regs_arg[1], "pt_regs", REGS_ARGS[1]),
    field!(regs_arg[2], "pt_regs", REGS_ARGS[2]),
    field!(regs_arg[3], "pt_regs", REGS_ARGS[3]),
    field!(regs_arg[4], "pt_regs", REGS_ARGS[4]),
    field!(regs_arg[5], "pt_regs", REGS_ARGS[5]),
];

/// Where the six syscall arguments are in `struct pt_regs` on this architecture.
#[cfg(target_arch = "x86_64")]
const REGS_ARGS: [&str; 6] = ["di", "si", "dx", "r10", "r8", "r9"];
#[cfg(target_arch = "aarch64")]
const REGS_ARGS: [&str; 6] = [
    "regs[0]", "regs[1]", "regs[2]", "regs[3]", "regs[4]", "regs[5]",
];

fn all_missing() -> KernelOffsets {
    let m = OFFSET_MISSING;
    KernelOffsets {
        task_tgid: m,
        task_real_parent: m,
        task_mm: m,
        task_exit_code: m,
        task_files: m,
        task_start_boottime: m,
        task_signal: m,
        signal_live: m,
        mm_arg_start: m,
        mm_arg_end: m,
        files_fdt: m,
        fdt_max_fds: m,
        fdt_fd: m,
        file_private_data: m,
        socket_sk: m,
        sk_family: m,
        sk_daddr: m,
        sk_rcv_saddr: m,
        sk_dport: m,
        sk_num: m,
        sk_v6_daddr: m,
        sk_v6_rcv_saddr: m,
        sk_peer_pid: m,
        sk_peer_cred: m,
        pid_first_nr: m,
        cred_uid: m,
        sk_protocol: m,
        regs_arg: [m; 6],
        mm_exe_file: m,
        file_path_dentry: m,
        file_path_mnt: m,
        dentry_parent: m,
        dentry_name: m,
        vfsmount_root: m,
        mount_mnt: m,
        mount_parent: m,
        mount_mountpoint: m,
        task_cgroups: m,
        css_set_cgroup: m,
        css_set_is_css: 0,
        css_cgroup: m,
        cgroup_kn: m,
        kn_name: m,
        kn_parent: m,
    }
}

/// Resolves every [`KernelOffsets`] field from `btf`. Fields not found are set to
/// [`OFFSET_MISSING`] and listed with the reason; the probes that need them count
/// `OffsetsMissing` instead of reading garbage.
pub fn resolve_offsets(btf: &Btf) -> (KernelOffsets, Vec<MissingField>) {
    let mut offsets = all_missing();
    let mut missing = Vec::new();
    for &(field, struct_name, paths, slot) in FIELDS {
        // `a|b`: the first path this kernel has (a field renamed between versions).
        let mut first_err = None;
        for path in paths.split('|') {
            match btf.member_offset(struct_name, path) {
                Ok(off) => {
                    *slot(&mut offsets) = off;
                    first_err = None;
                    break;
                }
                Err(e) => {
                    first_err.get_or_insert(format!("{struct_name}.{path}: {e}"));
                }
            }
        }
        if let Some(reason) = first_err {
            missing.push(MissingField { field, reason });
        }
    }
    // The task's cgroup: the memory controller's (where runtimes put each container on cgroup
    // v1 and v2 alike), else the v2 hierarchy's.
    let cgroup = btf
        .enum_value("cgroup_subsys_id", "memory_cgrp_id")
        .and_then(|k| {
            let k = u32::try_from(k).map_err(|_| BtfError::BadType("memory_cgrp_id".into()))?;
            btf.member_offset("css_set", &format!("subsys[{k}]"))
        })
        .map(|off| (off, 1))
        .or_else(|_| btf.member_offset("css_set", "dfl_cgrp").map(|off| (off, 0)));
    match cgroup {
        Ok((off, is_css)) => {
            offsets.css_set_cgroup = off;
            offsets.css_set_is_css = is_css;
        }
        Err(e) => missing.push(MissingField {
            field: "css_set_cgroup",
            reason: format!("css_set.subsys[memory_cgrp_id] or dfl_cgrp: {e}"),
        }),
    }
    (offsets, missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds small BTF blobs for the tests.
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        fn new() -> Self {
            Builder {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }

        fn s(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        }

        fn push(
            &mut self,
            name: &str,
            kind: u8,
            kflag: bool,
            vlen: u16,
            size_type: u32,
            extra: &[u32],
        ) -> u32 {
            let name_off = self.s(name);
            let info = (u32::from(kflag) << 31) | (u32::from(kind) << 24) | u32::from(vlen);
            for w in [name_off, info, size_type].iter().chain(extra) {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
            self.next_id += 1;
            self.next_id - 1
        }

        fn int(&mut self, name: &str, size: u32) -> u32 {
            self.push(name, KIND_INT, false, 0, size, &[size * 8])
        }

        fn composite(
            &mut self,
            kind: u8,
            name: &str,
            size: u32,
            kflag: bool,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let mut extra = Vec::new();
            for &(n, t, off) in members {
                extra.extend([self.s(n), t, off]);
            }
            self.push(name, kind, kflag, members.len() as u16, size, &extra)
        }

        fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            let t_len = self.types.len() as u32;
            for w in [
                HEADER_LEN as u32,
                0,
                t_len,
                t_len,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// A blob with one of every kind before the structs, so that skipping by size is exercised.
    fn sample() -> Vec<u8> {
        let mut b = Builder::new();
        let int = b.int("int", 4); // 1
        let u64_ = b.int("long long unsigned int", 8); // 2
        let ptr = b.push("", KIND_PTR, false, 0, int, &[]); // 3
        let enum_name = b.s("A");
        b.push("e", KIND_ENUM, false, 2, 4, &[enum_name, 0, enum_name, 1]);
        b.push("fwd", KIND_FWD, false, 0, 0, &[]);
        let vol = b.push("", KIND_VOLATILE, false, 0, int, &[]);
        b.push("", KIND_RESTRICT, false, 0, ptr, &[]);
        let proto = b.push("", KIND_FUNC_PROTO, false, 2, int, &[0, int, 0, ptr]);
        b.push("f", KIND_FUNC, false, 0, proto, &[]);
        let var = b.push("v", KIND_VAR, false, 0, int, &[1]);
        b.push(".data", KIND_DATASEC, false, 1, 4, &[var, 0, 4]);
        b.push("double", KIND_FLOAT, false, 0, 8, &[]);
        b.push("tag", KIND_DECL_TAG, false, 0, var, &[u32::MAX]);
        b.push("user", KIND_TYPE_TAG, false, 0, int, &[]);
        b.push("e64", KIND_ENUM64, false, 1, 8, &[enum_name, 1, 2]);
        // typedef chain: u32_t -> const -> typedef uint -> int
        let uint = b.push("uint", KIND_TYPEDEF, false, 0, int, &[]);
        let cu = b.push("", KIND_CONST, false, 0, uint, &[]);
        let u32_t = b.push("u32_t", KIND_TYPEDEF, false, 0, cu, &[]);
        // struct upid { int nr; void *ns; } (16 bytes), array upid[0], array int[4]
        let upid = b.composite(
            KIND_STRUCT,
            "upid",
            16,
            false,
            &[("nr", int, 0), ("ns", ptr, 64)],
        );
        let idx = int;
        let upids = b.push("", KIND_ARRAY, false, 0, 0, &[upid, idx, 0]);
        let ints = b.push("", KIND_ARRAY, false, 0, 0, &[int, idx, 4]);
        // kuid_t: typedef struct { u32_t val; }
        let kuid_s = b.composite(KIND_STRUCT, "", 4, false, &[("val", u32_t, 0)]);
        let kuid = b.push("kuid_t", KIND_TYPEDEF, false, 0, kuid_s, &[]);
        let ckuid = b.push("", KIND_CONST, false, 0, kuid, &[]);
        // anonymous union { u64 pair; struct { int lo; int hi; }; }
        let lohi = b.composite(
            KIND_STRUCT,
            "",
            8,
            false,
            &[("lo", int, 0), ("hi", vol, 32)],
        );
        let pair = b.composite(
            KIND_UNION,
            "",
            8,
            false,
            &[("pair", u64_, 0), ("", lohi, 0)],
        );
        // struct common { int fam; union {...}; }, reached through a typedef
        let common = b.composite(
            KIND_STRUCT,
            "common",
            16,
            false,
            &[("fam", int, 0), ("", pair, 64)],
        );
        let common_t = b.push("common_t", KIND_TYPEDEF, false, 0, common, &[]);
        // bitfields: kind_flag set, 3 bits at bit 32; and an old-style INT bitfield
        let bits = b.composite(
            KIND_STRUCT,
            "bits",
            8,
            true,
            &[("a", int, 0), ("b", int, (3 << 24) | 32)],
        );
        let int3 = b.push("int3", KIND_INT, false, 0, 4, &[3]);
        b.composite(KIND_STRUCT, "oldbits", 4, false, &[("c", int3, 0)]);
        b.composite(
            KIND_STRUCT,
            "outer",
            96,
            false,
            &[
                ("x", int, 0),
                ("c", common_t, 64),
                ("uid", ckuid, 192),
                ("arr", ints, 224),
                ("p", ptr, 384),
                ("numbers", upids, 448),
                ("bf", bits, 512),
            ],
        );
        // A self-referencing typedef (a corrupt blob must give an error, not hang).
        let id = b.next_id;
        b.push("loop", KIND_TYPEDEF, false, 0, id, &[]);
        b.composite(KIND_STRUCT, "looped", 4, false, &[("l", id, 0)]);
        b.build()
    }

    #[test]
    fn hand_made_blob() {
        let btf = Btf::from_bytes(&sample()).unwrap();
        let off = |s: &str, p: &str| btf.member_offset(s, p);
        assert_eq!(off("outer", "x").unwrap(), 0);
        assert_eq!(off("outer", "c").unwrap(), 8);
        assert_eq!(off("outer", "c.fam").unwrap(), 8);
        // Through the anonymous union and the anonymous struct inside it.
        assert_eq!(off("outer", "c.pair").unwrap(), 16);
        assert_eq!(off("outer", "c.lo").unwrap(), 16);
        assert_eq!(off("outer", "c.hi").unwrap(), 20);
        assert_eq!(off("common", "hi").unwrap(), 12);
        // const -> typedef -> anonymous struct.
        assert_eq!(off("outer", "uid").unwrap(), 24);
        assert_eq!(off("outer", "uid.val").unwrap(), 24);
        assert_eq!(off("outer", "arr[0]").unwrap(), 28);
        assert_eq!(off("outer", "arr[3]").unwrap(), 40);
        assert_eq!(off("outer", "p").unwrap(), 48);
        // Flexible array of 16-byte structs.
        assert_eq!(off("outer", "numbers[0].nr").unwrap(), 56);
        assert_eq!(off("outer", "numbers[2].ns").unwrap(), 56 + 32 + 8);
        assert_eq!(off("upid", "ns").unwrap(), 8);
        assert_eq!(off("bits", "a").unwrap(), 0);
        assert_eq!(off("outer", "bf.a").unwrap(), 64);
    }

    #[test]
    fn hand_made_blob_errors() {
        let btf = Btf::from_bytes(&sample()).unwrap();
        let err = |s: &str, p: &str| btf.member_offset(s, p).unwrap_err();
        assert!(matches!(err("nope", "x"), BtfError::StructNotFound(_)));
        assert!(matches!(
            err("outer", "missing"),
            BtfError::FieldNotFound { .. }
        ));
        assert!(matches!(
            err("outer", "c.missing"),
            BtfError::FieldNotFound { .. }
        ));
        assert!(matches!(
            err("outer", "arr[4]"),
            BtfError::IndexOutOfRange { .. }
        ));
        assert!(matches!(err("outer", "x[0]"), BtfError::NotArray { .. }));
        assert!(matches!(
            err("outer", "p.nr"),
            BtfError::NotComposite { .. }
        ));
        assert!(matches!(err("outer", "x.y"), BtfError::NotComposite { .. }));
        assert!(matches!(err("bits", "b"), BtfError::Bitfield { .. }));
        assert!(matches!(err("outer", "bf.b"), BtfError::Bitfield { .. }));
        assert!(matches!(err("oldbits", "c"), BtfError::Bitfield { .. }));
        assert!(matches!(err("looped", "l.z"), BtfError::BadType(_)));
        for bad in [
            "", ".", "x.", "arr[", "arr[x]", "arr]", "arr[0", "a b", "arr[0]x",
        ] {
            assert!(
                matches!(err("outer", bad), BtfError::BadPath { .. }),
                "{bad:?}"
            );
        }
        // The fields of the sensor are all missing here, each with a reason.
        let (offsets, missing) = resolve_offsets(&btf);
        // Plus the cgroup pointer of css_set, resolved outside the table.
        assert_eq!(missing.len(), FIELDS.len() + 1);
        assert_eq!(offsets.task_tgid, OFFSET_MISSING);
        assert!(
            missing[0].reason.contains("task_struct"),
            "{}",
            missing[0].reason
        );
    }

    #[test]
    fn truncated_and_garbage_blobs_error() {
        let blob = sample();
        for len in 0..blob.len() {
            assert!(
                Btf::from_bytes(&blob[..len]).is_err(),
                "prefix of {len} bytes parsed"
            );
        }
        assert!(matches!(
            Btf::from_bytes(b"garbage garbage garbage garbage"),
            Err(BtfError::Malformed(_))
        ));
        let mut be = blob.clone();
        be[..2].copy_from_slice(&MAGIC.to_be_bytes());
        assert!(matches!(Btf::from_bytes(&be), Err(BtfError::Malformed(_))));
        let mut unknown = blob.clone();
        unknown[HEADER_LEN + 7] = 0x1f; // kind 31 in type 1's info
        assert!(matches!(
            Btf::from_bytes(&unknown),
            Err(BtfError::UnknownKind { kind: 31, id: 1 })
        ));
        // Random corruption: any result but a panic or a hang.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let mut b = blob.clone();
            for _ in 0..1 + rand() % 4 {
                let i = HEADER_LEN + (rand() as usize) % (b.len() - HEADER_LEN);
                b[i] = rand() as u8;
            }
            if let Ok(btf) = Btf::from_bytes(&b) {
                for (s, p) in [
                    ("outer", "c.hi"),
                    ("outer", "numbers[3].ns"),
                    ("outer", "uid.val"),
                    ("looped", "l"),
                ] {
                    let _ = btf.member_offset(s, p);
                }
                let _ = resolve_offsets(&btf);
            }
        }
    }

    #[test]
    fn missing_file_says_what_to_do() {
        let err = Btf::from_file(Path::new("/nonexistent/btf/vmlinux"))
            .err()
            .unwrap();
        assert!(matches!(err, BtfError::NotFound { .. }));
        assert!(err.to_string().contains("CONFIG_DEBUG_INFO_BTF"));
    }

    #[test]
    fn field_table_covers_every_offset() {
        // Two more are resolved outside the table: css_set_cgroup and css_set_is_css.
        assert_eq!(FIELDS.len() + 2, size_of::<KernelOffsets>() / 4);
        let mut o = all_missing();
        let mut seen = std::collections::HashSet::new();
        for (field, ..) in FIELDS {
            assert!(seen.insert(*field), "{field} twice");
        }
        let addrs: std::collections::HashSet<usize> = FIELDS
            .iter()
            .map(|f| f.3(&mut o) as *mut u32 as usize)
            .collect();
        assert_eq!(addrs.len(), FIELDS.len());
    }

    /// Offsets on the development machine's kernel (6.18.44, x86_64), checked independently with
    /// `bpftool btf dump file /sys/kernel/btf/vmlinux format raw` and `pahole`. Skipped on other
    /// kernels, where the layout differs; there the test checks only that every field resolves.
    #[test]
    fn live_vmlinux() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            eprintln!("no {VMLINUX_BTF}: skipped");
            return;
        }
        let btf = Btf::from_file(path).unwrap();
        let (o, missing) = resolve_offsets(&btf);
        assert!(missing.is_empty(), "{missing:?}");
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        if !release.starts_with("6.18.44-fc-v669") || !cfg!(target_arch = "x86_64") {
            eprintln!(
                "kernel {release:?}: layout not pinned, checked only that all fields resolve"
            );
            return;
        }
        let expected = EXPECTED_6_18_44;
        let got = [
            o.task_tgid,
            o.task_real_parent,
            o.task_mm,
            o.task_exit_code,
            o.task_files,
            o.task_start_boottime,
            o.task_signal,
            o.signal_live,
            o.mm_arg_start,
            o.mm_arg_end,
            o.files_fdt,
            o.fdt_max_fds,
            o.fdt_fd,
            o.file_private_data,
            o.socket_sk,
            o.sk_family,
            o.sk_daddr,
            o.sk_rcv_saddr,
            o.sk_dport,
            o.sk_num,
            o.sk_v6_daddr,
            o.sk_v6_rcv_saddr,
            o.sk_peer_pid,
            o.sk_peer_cred,
            o.pid_first_nr,
            o.cred_uid,
        ];
        for ((field, want), got) in expected.iter().zip(got) {
            assert_eq!(got, *want, "{field}");
        }
        assert_eq!(
            btf.member_offset("task_struct", "pid").unwrap(),
            EXPECTED_TASK_PID
        );
        assert_eq!(btf.member_offset("cred", "uid.val").unwrap(), 8);
        assert_eq!(btf.member_offset("task_struct", "comm[3]").unwrap(), 1755);
        assert_eq!(btf.member_offset("pid", "numbers[1].nr").unwrap(), 160);
        assert_eq!(btf.member_offset("sock_common", "skc_dport").unwrap(), 12);
        // `skc_reuse:4` (kind_flag bitfield) is rejected.
        assert!(matches!(
            btf.member_offset("sock", "__sk_common.skc_reuse"),
            Err(BtfError::Bitfield { .. })
        ));
        assert!(matches!(
            btf.member_offset("sock", "skc_family"),
            Err(BtfError::FieldNotFound { .. })
        ));
    }

    const EXPECTED_TASK_PID: u32 = 1264;
    const EXPECTED_6_18_44: [(&str, u32); 26] = [
        ("task_tgid", 1268),
        ("task_real_parent", 1280),
        ("task_mm", 1136),
        ("task_exit_code", 1164),
        ("task_files", 1824),
        ("task_start_boottime", 1560),
        ("task_signal", 1848),
        ("signal_live", 4),
        ("mm_arg_start", 480),
        ("mm_arg_end", 488),
        ("files_fdt", 32),
        ("fdt_max_fds", 0),
        ("fdt_fd", 8),
        ("file_private_data", 24),
        ("socket_sk", 24),
        ("sk_family", 16),
        ("sk_daddr", 0),
        ("sk_rcv_saddr", 4),
        ("sk_dport", 12),
        ("sk_num", 14),
        ("sk_v6_daddr", 56),
        ("sk_v6_rcv_saddr", 72),
        ("sk_peer_pid", 624),
        ("sk_peer_cred", 632),
        ("pid_first_nr", 144),
        ("cred_uid", 8),
    ];
}
