//! Parsing the start of an HTTP/1 request as captured by the kernel (bounded, maybe truncated).

#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestHead {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub user_agent: Option<String>,
    pub content_type: Option<String>,
    pub content_length: Option<u64>,
    pub header_names: Vec<String>,
    /// The capture ended before the blank line that ends the headers.
    pub truncated: bool,
}

/// Parse a request head with `httparse`; `None` when the first line is not a request line
/// (an upper-case method and an origin-form target, `/...`).
///
/// The kernel copies at most `HTTP_CAP` bytes, so a head is often cut: then the bytes seen are
/// completed into a head (a request line cut before or in its version gets one; the headers
/// get their blank line) and parsed again, and the result is marked `truncated`.
pub fn parse_request(buf: &[u8]) -> Option<RequestHead> {
    match parse_head(buf)? {
        Some(h) => Some(h),
        None => {
            let mut h = parse_head(&complete_head(buf)?)??;
            h.truncated = true;
            Some(h)
        }
    }
}

/// `Some(None)` when the head is valid so far but not complete.
fn parse_head(buf: &[u8]) -> Option<Option<RequestHead>> {
    let mut config = httparse::ParserConfig::default();
    // A line that is not a header (the last one, cut before its colon) is skipped, as the
    // daemon would never see it whole either.
    config.ignore_invalid_headers_in_requests(true);
    // Every header line takes at least 4 bytes (`a:\r\n`): this many slots never run out.
    let mut headers = vec![httparse::EMPTY_HEADER; buf.len() / 4 + 1];
    let mut req = httparse::Request::new(&mut headers);
    if config.parse_request(&mut req, buf).ok()?.is_partial() {
        return Some(None);
    }
    let (method, target) = (req.method?, req.path?);
    if !method.bytes().all(|b| b.is_ascii_uppercase()) || !target.starts_with('/') {
        return None;
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    let mut h = RequestHead {
        method: method.to_string(),
        path,
        query,
        ..Default::default()
    };
    for header in req.headers.iter() {
        let value = String::from_utf8_lossy(header.value).trim().to_string();
        match header.name.to_ascii_lowercase().as_str() {
            "user-agent" => h.user_agent = Some(value),
            "content-type" => h.content_type = Some(value),
            "content-length" => h.content_length = value.parse().ok(),
            _ => {}
        }
        h.header_names.push(header.name.to_string());
    }
    Some(Some(h))
}

/// A cut head made whole for the parser: the bytes seen, a version when the request line has
/// none yet, and the blank line. `None` when nothing of a request line is there.
fn complete_head(buf: &[u8]) -> Option<Vec<u8>> {
    let buf = buf.strip_suffix(b"\r").unwrap_or(buf);
    let mut out = match buf.windows(2).position(|w| w == b"\r\n") {
        Some(_) => buf.to_vec(),
        None => {
            // Only the request line, maybe cut in its version (`GET /x HT`): drop that part.
            let line = match buf.iter().rposition(|&b| b == b' ') {
                Some(i) if i > 0 && is_version_prefix(&buf[i + 1..]) => &buf[..i],
                _ => buf,
            };
            let mut l = line.to_vec();
            l.extend_from_slice(b" HTTP/1.1");
            l
        }
    };
    if out.is_empty() {
        return None;
    }
    out.extend_from_slice(if out.ends_with(b"\r\n") {
        b"\r\n"
    } else {
        b"\r\n\r\n"
    });
    Some(out)
}

/// `HTTP/1.1`, or the start of it, or any `HTTP/...`.
fn is_version_prefix(tail: &[u8]) -> bool {
    !tail.is_empty() && (b"HTTP/1.1".starts_with(tail) || tail.starts_with(b"HTTP/"))
}

/// Split `/v1.41/build` into (`Some("1.41")`, `/build`).
pub fn split_api_version(path: &str) -> (Option<String>, String) {
    if let Some(rest) = path.strip_prefix("/v")
        && let Some(i) = rest.find('/')
    {
        let ver = &rest[..i];
        if !ver.is_empty() && ver.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return (Some(ver.to_string()), rest[i..].to_string());
        }
    }
    (None, path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_cli_build_request() {
        let raw = b"POST /v1.41/build?buildargs=%7B%7D&t=evil%3A1&t=x HTTP/1.1\r\nHost: api.moby.localhost\r\nUser-Agent: Docker-Client/20.10.24 (linux)\r\nContent-Length: 2048\r\nContent-Type: application/x-tar\r\n\r\nbody";
        let h = parse_request(raw).unwrap();
        assert_eq!(h.method, "POST");
        assert_eq!(h.path, "/v1.41/build");
        assert_eq!(
            h.user_agent.as_deref(),
            Some("Docker-Client/20.10.24 (linux)")
        );
        assert_eq!(h.content_type.as_deref(), Some("application/x-tar"));
        assert_eq!(h.content_length, Some(2048));
        assert!(!h.truncated);
        assert_eq!(h.query.as_deref(), Some("buildargs=%7B%7D&t=evil%3A1&t=x"));
        assert_eq!(
            split_api_version(&h.path),
            (Some("1.41".into()), "/build".into())
        );
    }

    #[test]
    fn cut_heads_keep_what_was_seen() {
        // Cut in a header value: the part seen is kept, and the head is marked truncated.
        let h = parse_request(b"POST /v1.41/build?t=a HTTP/1.1\r\nHost: x\r\nUser-Agent: Dock")
            .unwrap();
        assert!(h.truncated);
        assert_eq!(h.header_names, ["Host", "User-Agent"]);
        assert_eq!(h.user_agent.as_deref(), Some("Dock"));
        assert_eq!(h.query.as_deref(), Some("t=a"));
        // Cut in the request line (a long query), before and in its version.
        for raw in [
            &b"POST /v1.41/build?t=a&buildargs=%7B"[..],
            b"POST /v1.41/build?t=a&buildargs=%7B HT",
            b"POST /v1.41/build?t=a&buildargs=%7B HTTP/1.1",
            b"POST /v1.41/build?t=a&buildargs=%7B HTTP/1.1\r",
        ] {
            let h = parse_request(raw).unwrap();
            assert!(h.truncated, "{raw:?}");
            assert_eq!(h.path, "/v1.41/build");
            assert_eq!(h.query.as_deref(), Some("t=a&buildargs=%7B"), "{raw:?}");
        }
        // Every prefix of a real head parses or is refused, never panics, and is truncated.
        let raw = b"POST /v1.41/build?t=x HTTP/1.1\r\nHost: api.moby.localhost\r\nContent-Length: 2\r\n\r\n";
        for n in 0..raw.len() {
            if let Some(h) = parse_request(&raw[..n]) {
                assert!(h.truncated, "{n}");
                assert_eq!(h.method, "POST");
            }
        }
        assert!(!parse_request(raw).unwrap().truncated);
        // Noise: any result but a panic.
        for n in 0..400u32 {
            let bytes: Vec<u8> = (0..n)
                .map(|i| (i.wrapping_mul(2654435761) >> 5) as u8)
                .collect();
            let _ = parse_request(&bytes);
            let mut with_line = b"GET /a HTTP/1.1\r\n".to_vec();
            with_line.extend_from_slice(&bytes);
            let _ = parse_request(&with_line);
        }
    }

    #[test]
    fn truncated_and_garbage() {
        let h = parse_request(b"GET /_ping HTTP/1.1\r\nUser-Ag").unwrap();
        assert!(h.truncated);
        assert!(parse_request(b"\x16\x03\x01\x02\x00").is_none());
        assert!(parse_request(b"").is_none());
        assert!(parse_request(b"get / HTTP/1.1\r\n\r\n").is_none());
        assert!(parse_request(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").is_none());
        assert!(parse_request(b"GET /x HTTP/1.1\r\nBad Header\x01: y\r\n\r\n").is_some());
        assert_eq!(split_api_version("/build"), (None, "/build".into()));
        assert_eq!(split_api_version("/vx/build"), (None, "/vx/build".into()));
    }
}
