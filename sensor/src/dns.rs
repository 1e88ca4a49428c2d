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
    let mut i = 12;
    let mut labels: Vec<String> = Vec::new();
    loop {
        let len = *p.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 || labels.len() > 127 {
            return None; // compression pointers are not valid in a question; hostile input
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
    Some((name, qtype_name(qtype)))
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
}
