//! The question of a DNS query payload (UDP, or TCP with its 2-byte length prefix).

/// (name, type) of the first question, when the payload is a well-formed query.
pub fn parse_query(payload: &[u8]) -> Option<(String, String)> {
    // DNS over TCP prefixes the message with its length.
    if payload.len() > 2
        && u16::from_be_bytes([payload[0], payload[1]]) as usize == payload.len() - 2
        && let Some(q) = parse_udp(&payload[2..])
    {
        return Some(q);
    }
    parse_udp(payload)
}

fn parse_udp(p: &[u8]) -> Option<(String, String)> {
    if p.len() < 12 {
        return None;
    }
    let flags = u16::from_be_bytes([p[2], p[3]]);
    let qdcount = u16::from_be_bytes([p[4], p[5]]);
    if flags & 0x8000 != 0 || qdcount == 0 {
        return None; // a response, or no question
    }
    let (name, qtype, _) = parse_question(p)?;
    Some((name, qtype_name(qtype)))
}

/// The first question: its name (no compression pointers: they are not valid there, and
/// hostile input is refused), its type, and the index just past its class.
fn parse_question(p: &[u8]) -> Option<(String, u16, usize)> {
    let mut i = 12;
    let mut labels: Vec<String> = Vec::new();
    loop {
        let len = *p.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 || labels.len() > 127 {
            return None;
        }
        let label = p.get(i..i + len)?;
        labels.push(
            label
                .iter()
                .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
                .collect(),
        );
        i += len;
    }
    let qtype = u16::from_be_bytes([*p.get(i)?, *p.get(i + 1)?]);
    let name = if labels.is_empty() {
        ".".to_string()
    } else {
        labels.join(".")
    };
    Some((name, qtype, i + 4))
}

fn qtype_name(t: u16) -> String {
    match t {
        1 => "A".into(),
        2 => "NS".into(),
        5 => "CNAME".into(),
        12 => "PTR".into(),
        15 => "MX".into(),
        16 => "TXT".into(),
        28 => "AAAA".into(),
        33 => "SRV".into(),
        65 => "HTTPS".into(),
        255 => "ANY".into(),
        n => format!("TYPE{n}"),
    }
}

/// A parsed DNS response: the question and the addresses it answered.
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    pub name: String,
    pub qtype: String,
    /// `NOERROR`, `NXDOMAIN`, ... or `RCODEn`.
    pub rcode: String,
    /// A and AAAA answers, in order.
    pub addrs: Vec<std::net::IpAddr>,
}

/// Parse a response (UDP, or TCP with its length prefix); `None` unless it is a well-formed
/// response with one question. Compressed names in answers are skipped, never followed.
pub fn parse_response(payload: &[u8]) -> Option<Response> {
    if payload.len() > 2
        && u16::from_be_bytes([payload[0], payload[1]]) as usize == payload.len() - 2
        && let Some(r) = parse_response_udp(&payload[2..])
    {
        return Some(r);
    }
    parse_response_udp(payload)
}

fn parse_response_udp(p: &[u8]) -> Option<Response> {
    if p.len() < 12 {
        return None;
    }
    let flags = u16::from_be_bytes([p[2], p[3]]);
    if flags & 0x8000 == 0 {
        return None; // a query
    }
    let qdcount = u16::from_be_bytes([p[4], p[5]]);
    let ancount = u16::from_be_bytes([p[6], p[7]]);
    if qdcount != 1 {
        return None;
    }
    let (name, qtype, mut i) = parse_question(p)?;
    let mut addrs = Vec::new();
    for _ in 0..ancount.min(64) {
        i = skip_name(p, i)?;
        let rtype = u16::from_be_bytes([*p.get(i)?, *p.get(i + 1)?]);
        let rdlen = u16::from_be_bytes([*p.get(i + 8)?, *p.get(i + 9)?]) as usize;
        i += 10;
        let rdata = p.get(i..i + rdlen)?;
        match (rtype, rdlen) {
            (1, 4) => addrs.push(std::net::IpAddr::from([
                rdata[0], rdata[1], rdata[2], rdata[3],
            ])),
            (28, 16) => {
                let mut a = [0u8; 16];
                a.copy_from_slice(rdata);
                addrs.push(std::net::IpAddr::from(a));
            }
            _ => {}
        }
        i += rdlen;
    }
    let rcode = match flags & 0xf {
        0 => "NOERROR".to_string(),
        1 => "FORMERR".to_string(),
        2 => "SERVFAIL".to_string(),
        3 => "NXDOMAIN".to_string(),
        5 => "REFUSED".to_string(),
        n => format!("RCODE{n}"),
    };
    Some(Response {
        name,
        qtype: qtype_name(qtype),
        rcode,
        addrs,
    })
}

/// Index after a (possibly compressed) name starting at `i`.
fn skip_name(p: &[u8], mut i: usize) -> Option<usize> {
    for _ in 0..128 {
        let len = *p.get(i)?;
        if len & 0xc0 == 0xc0 {
            return Some(i + 2); // a pointer ends the name
        }
        i += 1;
        if len == 0 {
            return Some(i);
        }
        i += len as usize;
    }
    None
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
        for n in 0..300u32 {
            let bytes: Vec<u8> = (0..n)
                .map(|i| (i.wrapping_mul(2246822519) >> 9) as u8 | 0x80)
                .collect();
            let _ = parse_response(&bytes);
        }
    }
}
