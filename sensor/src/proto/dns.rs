//! DNS messages as the kernel captured them (UDP, or TCP with its 2-byte length prefix, cut
//! at `DNS_CAP` bytes), read with hickory-proto's stepwise decoder: the header, the question and,
//! for a response, its answers. The authority and additional sections are not read, so a reply
//! cut in them by the capture still gives its answers.

use std::net::IpAddr;

use hickory_proto::{
    op::{Header, MessageType, Query},
    rr::{Name, Record, RecordType},
    serialize::binary::{BinDecodable, BinDecoder},
};

/// (name, type) of the first question, when the payload is a well-formed query.
pub fn parse_query(payload: &[u8]) -> Option<(String, String)> {
    unframed(payload, parse_query_message)
}

/// A parsed DNS response: the question and the addresses it answered.
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    pub name: String,
    pub qtype: String,
    /// `NOERROR`, `NXDOMAIN`, ... or `RCODEn`.
    pub rcode: String,
    /// A and AAAA answers, in order.
    pub addrs: Vec<IpAddr>,
}

/// Parse a response; `None` unless it is a well-formed response with one question and answers
/// that are whole.
pub fn parse_response(payload: &[u8]) -> Option<Response> {
    unframed(payload, parse_response_message)
}

/// DNS over TCP prefixes the message with its length: try without it when it matches.
fn unframed<T>(payload: &[u8], parse: impl Fn(&[u8]) -> Option<T>) -> Option<T> {
    if payload.len() > 2
        && usize::from(u16::from_be_bytes([payload[0], payload[1]])) == payload.len() - 2
        && let Some(m) = parse(&payload[2..])
    {
        return Some(m);
    }
    parse(payload)
}

fn parse_query_message(p: &[u8]) -> Option<(String, String)> {
    let mut d = BinDecoder::new(p);
    let header = Header::read(&mut d).ok()?;
    if header.metadata.message_type != MessageType::Query || header.counts.queries == 0 {
        return None; // a response, or no question
    }
    let q = Query::read(&mut d).ok()?;
    Some((name_text(q.name()), type_name(q.query_type())))
}

fn parse_response_message(p: &[u8]) -> Option<Response> {
    let mut d = BinDecoder::new(p);
    let header = Header::read(&mut d).ok()?;
    if header.metadata.message_type != MessageType::Response || header.counts.queries != 1 {
        return None;
    }
    let q = Query::read(&mut d).ok()?;
    let mut addrs = Vec::new();
    // More answers than fit in the capture cannot be there; the bound keeps hostile counts cheap.
    for _ in 0..header.counts.answers.min(64) {
        let record = Record::read(&mut d).ok()?;
        addrs.extend(record.data.ip_addr());
    }
    let rcode = match u16::from(header.metadata.response_code) {
        0 => "NOERROR".to_string(),
        1 => "FORMERR".to_string(),
        2 => "SERVFAIL".to_string(),
        3 => "NXDOMAIN".to_string(),
        5 => "REFUSED".to_string(),
        n => format!("RCODE{n}"),
    };
    Some(Response {
        name: name_text(q.name()),
        qtype: type_name(q.query_type()),
        rcode,
        addrs,
    })
}

/// Labels joined by dots, bytes that are not printable ASCII shown as `?` (a name is
/// attacker-chosen text); the root is `.`.
fn name_text(name: &Name) -> String {
    if name.is_root() {
        return ".".to_string();
    }
    let labels: Vec<String> = name
        .iter()
        .map(|label| {
            label
                .iter()
                .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
                .collect()
        })
        .collect();
    labels.join(".")
}

/// The type's mnemonic (`A`, `AAAA`, `HTTPS`, ...), or `TYPEn` (RFC 3597) when it has none.
fn type_name(t: RecordType) -> String {
    match t {
        RecordType::Unknown(n) => format!("TYPE{n}"),
        t => t.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut p = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            p.push(l.len() as u8);
            p.extend_from_slice(l.as_bytes());
        }
        p.push(0);
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&1u16.to_be_bytes());
        p
    }

    #[test]
    fn parses_udp_and_tcp_queries() {
        let q = query("evil.example.test", 28);
        assert_eq!(
            parse_query(&q),
            Some(("evil.example.test".into(), "AAAA".into()))
        );
        let mut tcp = (q.len() as u16).to_be_bytes().to_vec();
        tcp.extend_from_slice(&q);
        assert_eq!(parse_query(&tcp).unwrap().0, "evil.example.test");
        assert_eq!(parse_query(&query("x.test", 6)).unwrap().1, "SOA");
        assert_eq!(parse_query(&query("x.test", 4242)).unwrap().1, "TYPE4242");
        // Odd bytes in a label are shown as `?`.
        assert_eq!(parse_query(&query("a\x01b.test", 1)).unwrap().0, "a?b.test");
    }

    #[test]
    fn garbage_is_rejected_without_panic() {
        assert_eq!(parse_query(b""), None);
        assert_eq!(parse_query(&[0xff; 40]), None);
        let mut q = query("a.b", 1);
        q.truncate(15);
        assert_eq!(parse_query(&q), None);
        for n in 0..200u32 {
            let bytes: Vec<u8> = (0..n)
                .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
                .collect();
            let _ = parse_query(&bytes);
        }
    }

    fn response(name: &str, ips: &[[u8; 4]], rcode: u8) -> Vec<u8> {
        let mut p = query(name, 1);
        p[2] = 0x81;
        p[3] = 0x80 | rcode;
        p[7] = ips.len() as u8;
        for ip in ips {
            p.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
            p.extend_from_slice(ip);
        }
        p
    }

    #[test]
    fn parses_responses_with_compressed_answers() {
        let r = parse_response(&response(
            "payload.test",
            &[[10, 231, 0, 2], [10, 231, 0, 6]],
            0,
        ))
        .unwrap();
        assert_eq!(r.name, "payload.test");
        assert_eq!(r.rcode, "NOERROR");
        assert_eq!(r.addrs.len(), 2);
        assert_eq!(r.addrs[1].to_string(), "10.231.0.6");
        let nx = parse_response(&response("nope.test", &[], 3)).unwrap();
        assert_eq!(nx.rcode, "NXDOMAIN");
        assert!(nx.addrs.is_empty());
        // A query is not a response, and garbage is nothing.
        assert!(parse_response(&query("a.b", 1)).is_none());
        let mut cut = response("a.b", &[[1, 2, 3, 4]], 0);
        cut.truncate(cut.len() - 2);
        assert!(parse_response(&cut).is_none());
        // Cut in the additional section (an EDNS reply longer than the capture): the answers
        // are whole and kept.
        let mut long = response("a.b", &[[1, 2, 3, 4]], 0);
        long[11] = 1; // arcount
        long.extend_from_slice(&[0, 0, 41, 4, 0, 0, 0, 0, 0, 0, 40, 0, 1]);
        let r = parse_response(&long).unwrap();
        assert_eq!(r.addrs, ["1.2.3.4".parse::<std::net::IpAddr>().unwrap()]);
        // An AAAA answer, over TCP.
        let mut v6 = query("six.test", 28);
        v6[2] = 0x81;
        v6[3] = 0x80;
        v6[7] = 1;
        v6.extend_from_slice(&[0xc0, 0x0c, 0, 28, 0, 1, 0, 0, 0, 60, 0, 16]);
        v6.extend_from_slice(
            &"2001:db8::7"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        let mut tcp = (v6.len() as u16).to_be_bytes().to_vec();
        tcp.extend_from_slice(&v6);
        let r = parse_response(&tcp).unwrap();
        assert_eq!((r.name.as_str(), r.qtype.as_str()), ("six.test", "AAAA"));
        assert_eq!(r.addrs[0].to_string(), "2001:db8::7");
        // A compression pointer that loops is refused, not followed forever.
        let mut looped = response("a.b", &[], 0);
        looped[7] = 1;
        looped.extend_from_slice(&[
            0xc0,
            looped.len() as u8,
            0,
            1,
            0,
            1,
            0,
            0,
            0,
            60,
            0,
            4,
            1,
            2,
            3,
            4,
        ]);
        assert!(parse_response(&looped).is_none());
        for n in 0..300u32 {
            let bytes: Vec<u8> = (0..n)
                .map(|i| (i.wrapping_mul(2246822519) >> 9) as u8 | 0x80)
                .collect();
            let _ = parse_response(&bytes);
        }
    }
}
