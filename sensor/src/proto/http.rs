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

/// Parse a request head; `None` when the first line is not a request line.
pub fn parse_request(buf: &[u8]) -> Option<RequestHead> {
    let text = String::from_utf8_lossy(buf);
    let (head, complete) = match text.find("\r\n\r\n") {
        Some(i) => (&text[..i], true),
        None => (&text[..], false),
    };
    let mut lines = head.split("\r\n");
    let first = lines.next()?;
    let mut parts = first.splitn(3, ' ');
    let method = parts.next()?.to_string();
    let target = parts.next()?;
    let version = parts.next().unwrap_or("");
    if method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !target.starts_with('/')
    {
        return None;
    }
    // A request line cut off by the capture has no version yet.
    let mut truncated = !complete || !version.starts_with("HTTP/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    let mut h = RequestHead {
        method,
        path,
        query,
        ..Default::default()
    };
    let mut last_partial = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            last_partial = true;
            continue;
        };
        let value = value.trim().to_string();
        match name.to_ascii_lowercase().as_str() {
            "user-agent" => h.user_agent = Some(value),
            "content-type" => h.content_type = Some(value),
            "content-length" => h.content_length = value.parse().ok(),
            _ => {}
        }
        h.header_names.push(name.to_string());
    }
    truncated |= last_partial && !complete;
    h.truncated = truncated;
    Some(h)
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
    fn truncated_and_garbage() {
        let h = parse_request(b"GET /_ping HTTP/1.1\r\nUser-Ag").unwrap();
        assert!(h.truncated);
        assert!(parse_request(b"\x16\x03\x01\x02\x00").is_none());
        assert!(parse_request(b"").is_none());
        assert!(parse_request(b"get / HTTP/1.1\r\n\r\n").is_none());
        assert_eq!(split_api_version("/build"), (None, "/build".into()));
        assert_eq!(split_api_version("/vx/build"), (None, "/vx/build".into()));
    }
}
