//! Kept rather than `btf-rs` (issue 13): btf-rs 2.0 is LGPL-2.1-or-later, which this
//! Apache-2.0 binary links statically, and its `Int` hides the encoding's bit size and offset
//! that the check for pre-kind_flag bitfields needs; this reader is bounds-checked and fuzzed.
//!
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

mod offsets;
pub use offsets::{MissingField, resolve_offsets};

#[cfg(test)]
mod tests;
