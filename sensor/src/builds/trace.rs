//! BuildKit progress (`moby.buildkit.trace` messages): base64 of a protobuf `StatusResponse`
//! (moby/buildkit api/services/control). Only the fields the build record uses are read:
//! vertex names (`[2/3] RUN ...`), whether a vertex started, completed or failed, and status
//! ids (`naming to docker.io/library/x:1`, `writing image sha256:...`). A capture cut short
//! yields what was complete.

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Vertex {
    pub digest: String,
    pub name: String,
    pub started: bool,
    pub completed: bool,
    pub cached: bool,
    pub error: Option<String>,
}

#[derive(Debug, Default, PartialEq)]
pub struct SolveStatus {
    pub vertices: Vec<Vertex>,
    pub statuses: Vec<String>,
}

/// Decodes standard base64 (padding optional); stops at the first byte outside the alphabet
/// and drops an incomplete final group.
pub fn base64_decode(s: &str) -> Vec<u8> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for &c in s.as_bytes() {
        let Some(v) = val(c) else { break };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

pub fn decode(b64: &str) -> SolveStatus {
    let buf = base64_decode(b64);
    let mut st = SolveStatus::default();
    for (field, value) in Fields::new(&buf) {
        match (field, value) {
            (1, Value::Bytes(b)) => {
                if let Some(v) = vertex(b) {
                    st.vertices.push(v);
                }
            }
            (2, Value::Bytes(b)) => {
                for (f, v) in Fields::new(b) {
                    if let (1, Value::Bytes(id)) = (f, v) {
                        st.statuses.push(String::from_utf8_lossy(id).into_owned());
                    }
                }
            }
            _ => {}
        }
    }
    st
}

fn vertex(b: &[u8]) -> Option<Vertex> {
    let mut v = Vertex::default();
    let mut complete = false;
    for (f, val) in Fields::new(b) {
        match (f, val) {
            (1, Value::Bytes(s)) => v.digest = String::from_utf8_lossy(s).into_owned(),
            (3, Value::Bytes(s)) => {
                v.name = String::from_utf8_lossy(s).into_owned();
                complete = true;
            }
            (4, Value::Varint(n)) => v.cached = n != 0,
            (5, Value::Bytes(_)) => v.started = true,
            (6, Value::Bytes(_)) => v.completed = true,
            (7, Value::Bytes(s)) if !s.is_empty() => {
                v.error = Some(String::from_utf8_lossy(s).into_owned())
            }
            _ => {}
        }
    }
    complete.then_some(v)
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

/// Iterates (field number, value) over one protobuf message; stops at the first malformed or
/// truncated field.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Fields { buf, pos: 0 }
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos)?;
            self.pos += 1;
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = (u64, Value<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let key = self.varint()?;
        let (field, wire) = (key >> 3, key & 7);
        let value = match wire {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.pos = self.pos.checked_add(8).filter(|p| *p <= self.buf.len())?;
                Value::Other
            }
            2 => {
                let len = usize::try_from(self.varint()?).ok()?;
                let end = self.pos.checked_add(len).filter(|e| *e <= self.buf.len())?;
                let b = &self.buf[self.pos..end];
                self.pos = end;
                Value::Bytes(b)
            }
            5 => {
                self.pos = self.pos.checked_add(4).filter(|p| *p <= self.buf.len())?;
                Value::Other
            }
            _ => return None,
        };
        Some((field, value))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn varint(mut n: u64, out: &mut Vec<u8>) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn field(n: u64, bytes: &[u8], out: &mut Vec<u8>) {
        varint(n << 3 | 2, out);
        varint(bytes.len() as u64, out);
        out.extend_from_slice(bytes);
    }

    pub(crate) fn base64(b: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut s = String::new();
        for ch in b.chunks(3) {
            let n = (ch[0] as u32) << 16
                | (*ch.get(1).unwrap_or(&0) as u32) << 8
                | *ch.get(2).unwrap_or(&0) as u32;
            for i in 0..=ch.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
            for _ in ch.len()..3 {
                s.push('=');
            }
        }
        s
    }

    /// A `StatusResponse` with one vertex (started, optionally completed) and status ids.
    pub(crate) fn encode(
        name: &str,
        completed: bool,
        error: Option<&str>,
        statuses: &[&str],
    ) -> String {
        let mut v = Vec::new();
        field(1, b"sha256:0000", &mut v);
        field(3, name.as_bytes(), &mut v);
        field(5, &[8, 1], &mut v);
        if completed {
            field(6, &[8, 2], &mut v);
        }
        if let Some(e) = error {
            field(7, e.as_bytes(), &mut v);
        }
        let mut out = Vec::new();
        field(1, &v, &mut out);
        for s in statuses {
            let mut st = Vec::new();
            field(1, s.as_bytes(), &mut st);
            field(2, &st, &mut out);
        }
        base64(&out)
    }

    #[test]
    fn decodes_vertices_and_statuses_and_survives_truncation() {
        let b64 = encode(
            "[2/3] RUN echo hi",
            true,
            None,
            &["naming to docker.io/library/x:1"],
        );
        let st = decode(&b64);
        assert_eq!(st.vertices.len(), 1);
        assert_eq!(st.vertices[0].name, "[2/3] RUN echo hi");
        assert!(st.vertices[0].started && st.vertices[0].completed);
        assert_eq!(
            st.statuses,
            vec!["naming to docker.io/library/x:1".to_string()]
        );
        for cut in 0..b64.len() {
            let _ = decode(&b64[..cut]);
        }
        assert_eq!(base64_decode(&base64(b"hello!?")), b"hello!?");
    }
}
