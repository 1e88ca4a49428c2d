//! Ring-buffer bytes to typed kernel events. Reads the header, then dispatches on the kind.
use sensor_common::{
    ApiData, DnsData, Event, EventHeader, EventKind, ExecData, ExitData, FileContentData, FileData,
    ForkData, SockData, UnixConnectData,
};
use thiserror::Error;

/// A kernel event, by kind; its name (`sensor_stats.events`) is the variant's, in snake case.
#[derive(Clone, Copy, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum KernelEvent {
    Exec(Event<ExecData>),
    Fork(Event<ForkData>),
    Exit(Event<ExitData>),
    TcpConnect(Event<SockData>),
    TcpAccept(Event<SockData>),
    UnixConnect(Event<UnixConnectData>),
    DnsSend(Event<DnsData>),
    DnsResponse(Event<DnsData>),
    FileWrite(Event<FileData>),
    FileContent(Event<FileContentData>),
    ApiRequest(Event<ApiData>),
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

fn read<T: zerocopy::FromBytes>(buf: &[u8]) -> Result<T, DecodeError> {
    T::read_from_prefix(buf)
        .map(|(v, _)| v)
        .map_err(|_| DecodeError::Short {
            got: buf.len(),
            need: size_of::<T>(),
        })
}

pub fn decode(buf: &[u8]) -> Result<KernelEvent, DecodeError> {
    let header: EventHeader = read(buf)?;
    let kind = EventKind::from_u32(header.kind).ok_or(DecodeError::UnknownKind(header.kind))?;
    Ok(match kind {
        EventKind::Exec => KernelEvent::Exec(read(buf)?),
        EventKind::Fork => KernelEvent::Fork(read(buf)?),
        EventKind::Exit => KernelEvent::Exit(read(buf)?),
        EventKind::Connect => KernelEvent::TcpConnect(read(buf)?),
        EventKind::Accept => KernelEvent::TcpAccept(read(buf)?),
        EventKind::UnixConnect => KernelEvent::UnixConnect(read(buf)?),
        EventKind::DnsSend => KernelEvent::DnsSend(read(buf)?),
        EventKind::DnsResponse => KernelEvent::DnsResponse(read(buf)?),
        EventKind::FileWrite => KernelEvent::FileWrite(read(buf)?),
        EventKind::FileContent => KernelEvent::FileContent(read(buf)?),
        EventKind::ApiRequest => KernelEvent::ApiRequest(read(buf)?),
        EventKind::ApiResponse => KernelEvent::ApiResponse(read(buf)?),
    })
}

impl KernelEvent {
    pub fn header(&self) -> &EventHeader {
        match self {
            KernelEvent::Exec(e) => &e.header,
            KernelEvent::Fork(e) => &e.header,
            KernelEvent::Exit(e) => &e.header,
            KernelEvent::TcpConnect(e) | KernelEvent::TcpAccept(e) => &e.header,
            KernelEvent::UnixConnect(e) => &e.header,
            KernelEvent::DnsSend(e) | KernelEvent::DnsResponse(e) => &e.header,
            KernelEvent::FileWrite(e) => &e.header,
            KernelEvent::FileContent(e) => &e.header,
            KernelEvent::ApiRequest(e) | KernelEvent::ApiResponse(e) => &e.header,
        }
    }

    /// Name used in `sensor_stats.events`.
    pub fn name(&self) -> &'static str {
        self.into()
    }
}

#[cfg(test)]
mod tests {
    use zerocopy::IntoBytes as _;

    use super::*;

    /// An event's bytes as the kernel writes them: the header, then the payload (both padding
    /// free, which IntoBytes proves; the generic `Event` itself cannot derive it).
    fn bytes_of<T: zerocopy::IntoBytes + zerocopy::Immutable>(v: &Event<T>) -> Vec<u8> {
        [v.header.as_bytes(), v.data.as_bytes()].concat()
    }

    #[test]
    fn decodes_by_header_kind_and_rejects_short_or_unknown() {
        let mut ev = <Event<ForkData> as zerocopy::FromZeros>::new_zeroed();
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
