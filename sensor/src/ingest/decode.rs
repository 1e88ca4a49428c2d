//! Ring-buffer bytes to typed kernel events. Reads the header, then dispatches on the kind.
use sensor_common::{
    ApiData, DnsData, Event, EventHeader, EventKind, ExecData, ExitData, FileContentData, FileData,
    ForkData, SockData, UnixConnectData,
};
use thiserror::Error;

#[derive(Clone, Copy)]
pub enum KernelEvent {
    Exec(Event<ExecData>),
    Fork(Event<ForkData>),
    Exit(Event<ExitData>),
    Connect(Event<SockData>),
    Accept(Event<SockData>),
    UnixConnect(Event<UnixConnectData>),
    Dns(Event<DnsData>),
    DnsResponse(Event<DnsData>),
    File(Event<FileData>),
    FileContent(Event<FileContentData>),
    Api(Event<ApiData>),
    ApiResponse(Event<ApiData>),
}

#[derive(Debug, Error, PartialEq)]
pub enum DecodeError {
    #[error("record of {got} bytes is shorter than its kind needs ({need})")]
    Short { got: usize, need: usize },
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
}

impl DecodeError {
    /// The `sensor_stats.drops` reason this error is counted under.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Short { .. } => "decode_short",
            DecodeError::UnknownKind(_) => "decode_unknown_kind",
        }
    }
}

fn read<T: Copy>(buf: &[u8]) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if buf.len() < need {
        return Err(DecodeError::Short {
            got: buf.len(),
            need,
        });
    }
    // SAFETY: length checked; T is a repr(C) Copy struct of integers and byte arrays, for which
    // every bit pattern is valid; read_unaligned handles any alignment.
    Ok(unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<T>()) })
}

pub fn decode(buf: &[u8]) -> Result<KernelEvent, DecodeError> {
    let header: EventHeader = read(buf)?;
    let kind = EventKind::from_u32(header.kind).ok_or(DecodeError::UnknownKind(header.kind))?;
    Ok(match kind {
        EventKind::Exec => KernelEvent::Exec(read(buf)?),
        EventKind::Fork => KernelEvent::Fork(read(buf)?),
        EventKind::Exit => KernelEvent::Exit(read(buf)?),
        EventKind::Connect => KernelEvent::Connect(read(buf)?),
        EventKind::Accept => KernelEvent::Accept(read(buf)?),
        EventKind::UnixConnect => KernelEvent::UnixConnect(read(buf)?),
        EventKind::DnsSend => KernelEvent::Dns(read(buf)?),
        EventKind::DnsResponse => KernelEvent::DnsResponse(read(buf)?),
        EventKind::FileWrite => KernelEvent::File(read(buf)?),
        EventKind::FileContent => KernelEvent::FileContent(read(buf)?),
        EventKind::ApiRequest => KernelEvent::Api(read(buf)?),
        EventKind::ApiResponse => KernelEvent::ApiResponse(read(buf)?),
    })
}

impl KernelEvent {
    pub fn header(&self) -> &EventHeader {
        match self {
            KernelEvent::Exec(e) => &e.header,
            KernelEvent::Fork(e) => &e.header,
            KernelEvent::Exit(e) => &e.header,
            KernelEvent::Connect(e) | KernelEvent::Accept(e) => &e.header,
            KernelEvent::UnixConnect(e) => &e.header,
            KernelEvent::Dns(e) | KernelEvent::DnsResponse(e) => &e.header,
            KernelEvent::File(e) => &e.header,
            KernelEvent::FileContent(e) => &e.header,
            KernelEvent::Api(e) | KernelEvent::ApiResponse(e) => &e.header,
        }
    }

    /// Name used in `sensor_stats.events`.
    pub fn name(&self) -> &'static str {
        match self {
            KernelEvent::Exec(_) => "exec",
            KernelEvent::Fork(_) => "fork",
            KernelEvent::Exit(_) => "exit",
            KernelEvent::Connect(_) => "tcp_connect",
            KernelEvent::Accept(_) => "tcp_accept",
            KernelEvent::UnixConnect(_) => "unix_connect",
            KernelEvent::Dns(_) => "dns_send",
            KernelEvent::DnsResponse(_) => "dns_response",
            KernelEvent::File(_) => "file_write",
            KernelEvent::FileContent(_) => "file_content",
            KernelEvent::Api(_) => "api_request",
            KernelEvent::ApiResponse(_) => "api_response",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: test helper viewing a repr(C) value as bytes.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    #[test]
    fn decodes_by_header_kind_and_rejects_short_or_unknown() {
        // SAFETY: all-zero is valid for these POD structs.
        let mut ev: Event<ForkData> = unsafe { std::mem::zeroed() };
        ev.header.kind = EventKind::Fork as u32;
        ev.data.child_pid = 42;
        let b = bytes_of(&ev);
        match decode(&b).unwrap() {
            KernelEvent::Fork(f) => assert_eq!(f.data.child_pid, 42),
            _ => panic!("wrong kind"),
        }
        assert!(matches!(decode(&b[..10]), Err(DecodeError::Short { .. })));
        let mut exec_hdr = b.clone();
        exec_hdr[0] = EventKind::Exec as u8;
        assert!(matches!(decode(&exec_hdr), Err(DecodeError::Short { .. })));
        let mut unknown = b;
        unknown[0] = 99;
        assert_eq!(decode(&unknown).err(), Some(DecodeError::UnknownKind(99)));
    }
}
