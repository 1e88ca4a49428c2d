//! The build response stream dockerd writes back on the `POST /build` connection.
//!
//! The sensor sees the start of each write(2) (see `api_response`): an HTTP status line and
//! headers on the first, then chunks, each a chunk-size line and one or more JSON messages
//! (`{"stream":"Step 1/3 : FROM x\n"}`, `{"aux":{"ID":"sha256:..."}}`, `{"errorDetail":...}`,
//! BuildKit's `{"id":"moby.buildkit.trace","aux":"<base64 protobuf>"}` and
//! `{"id":"moby.image.id","aux":{"ID":...}}`). A capture may end inside a message: fields are
//! then taken from what is there.
use serde_json::Value;

use super::trace;

/// What one message of the stream says about the build.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEvent {
    /// Legacy builder: `Step 2/3 : RUN exit 3` (kept as printed).
    Step(String),
    /// Legacy builder: the intermediate container a step runs in (12-hex short id).
    RunningIn(String),
    /// Legacy builder: ` ---> 1a2b3c4d5e6f`, the image a step produced (or FROM resolved to).
    Layer(String),
    /// The built image id (`sha256:...`).
    ImageId(String),
    SuccessfullyBuilt(String),
    SuccessfullyTagged(String),
    /// `errorDetail.message` or `error`.
    Error(String),
    /// BuildKit: a build vertex (`[2/3] RUN wget ...`, `[1/2] FROM docker.io/library/x`).
    Vertex(trace::Vertex),
    /// BuildKit: a status line such as `naming to docker.io/library/x:1`.
    Status(String),
    /// The last chunk of the chunked response (`0\r\n\r\n`): the daemon has said all it
    /// will say about this build.
    End,
}

/// Whether the text looks like a build response at all (used to recognise a build whose
/// request was not seen).
pub fn looks_like_build(events: &[StreamEvent]) -> Option<&'static str> {
    events.iter().find_map(|e| match e {
        StreamEvent::Step(_) | StreamEvent::RunningIn(_) | StreamEvent::SuccessfullyBuilt(_) => {
            Some("legacy")
        }
        StreamEvent::Vertex(_) | StreamEvent::Status(_) => Some("buildkit"),
        _ => None,
    })
}

/// Parses one captured write.
pub fn parse(text: &str) -> Vec<StreamEvent> {
    let mut out = Vec::new();
    // A request refused before the stream began (e.g. a Dockerfile that does not parse):
    // `HTTP/1.1 400 Bad Request` and a `{"message": ...}` body.
    if let Some(code) = http_error_status(text) {
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        let msg = body
            .find('{')
            .and_then(|i| string_field(&body[i..], "message"))
            .unwrap_or_else(|| format!("the daemon answered HTTP {code}"));
        out.push(StreamEvent::Error(msg));
        return out;
    }
    let end = is_last_chunk(text);
    for line in text.split('\n') {
        let line = line.trim();
        let Some(start) = line.find('{') else {
            continue;
        };
        let json = &line[start..];
        match serde_json::from_str::<Value>(json) {
            Ok(v) => message(&v, &mut out),
            Err(_) => lenient(json, &mut out),
        }
    }
    if end {
        out.push(StreamEvent::End);
    }
    out
}

/// Whether a captured write ends the chunked body: Go's `net/http` writes the zero-size last
/// chunk when the handler returns. JSON messages escape CR and LF, so the sequence cannot
/// occur inside one.
fn is_last_chunk(text: &str) -> bool {
    text == "0\r\n\r\n" || text.ends_with("\r\n0\r\n\r\n")
}

fn http_error_status(text: &str) -> Option<u16> {
    let rest = text.strip_prefix("HTTP/1.")?;
    let code: u16 = rest.get(2..5)?.parse().ok()?;
    (code >= 400).then_some(code)
}

fn message(v: &Value, out: &mut Vec<StreamEvent>) {
    if let Some(s) = v.get("stream").and_then(Value::as_str) {
        stream_text(s, out);
    }
    let id = v.get("id").and_then(Value::as_str);
    match (id, v.get("aux")) {
        (Some("moby.buildkit.trace"), Some(Value::String(b64))) => trace_events(b64, out),
        (None | Some("moby.image.id"), Some(aux)) => {
            if let Some(image) = aux.get("ID").and_then(Value::as_str) {
                out.push(StreamEvent::ImageId(image.to_string()));
            }
        }
        _ => {}
    }
    let detail = v
        .get("errorDetail")
        .and_then(|d| d.get("message"))
        .and_then(Value::as_str);
    if let Some(e) = detail.or_else(|| v.get("error").and_then(Value::as_str)) {
        out.push(StreamEvent::Error(e.to_string()));
    }
}

fn trace_events(b64: &str, out: &mut Vec<StreamEvent>) {
    let status = trace::decode(b64);
    out.extend(status.vertices.into_iter().map(StreamEvent::Vertex));
    out.extend(status.statuses.into_iter().map(StreamEvent::Status));
}

/// A message cut off by the capture: take the string fields that are there.
fn lenient(json: &str, out: &mut Vec<StreamEvent>) {
    if let Some(s) = string_field(json, "stream") {
        // The last line may be cut: keep only whole lines, unless there is just one.
        let whole: &str = match s.rfind('\n') {
            Some(i) => &s[..i],
            None => &s,
        };
        stream_text(whole, out);
    }
    if json.contains("\"moby.buildkit.trace\"")
        && let Some(b64) = string_field(json, "aux")
    {
        trace_events(&b64, out);
    }
    if let Some(e) = string_field(json, "message").or_else(|| string_field(json, "error")) {
        out.push(StreamEvent::Error(e));
    }
    if !json.contains("\"moby.buildkit.trace\"")
        && let Some(id) = string_field(json, "ID")
        && id.len() == 71
    {
        out.push(StreamEvent::ImageId(id));
    }
}

/// The (unescaped) value of the first `"key":"..."` in possibly truncated JSON.
fn string_field(json: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\":\"");
    let start = json.find(&pat)? + pat.len();
    let mut s = String::new();
    let mut chars = json[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(s),
            '\\' => match chars.next() {
                Some('n') => s.push('\n'),
                Some('t') => s.push('\t'),
                Some('r') => s.push('\r'),
                Some('u') => {
                    let hex: String = chars.by_ref().take(4).collect();
                    if let Some(c) = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                        s.push(c);
                    }
                }
                Some(c) => s.push(c),
                None => break,
            },
            c => s.push(c),
        }
    }
    Some(s)
}

fn stream_text(s: &str, out: &mut Vec<StreamEvent>) {
    for line in s.split('\n') {
        let l = line.trim();
        if l.starts_with("Step ") && l.contains(" : ") {
            out.push(StreamEvent::Step(l.to_string()));
        } else if let Some(id) = l.strip_prefix("---> Running in ") {
            out.push(StreamEvent::RunningIn(id.trim().to_string()));
        } else if let Some(id) = l.strip_prefix("---> ") {
            let id = id.trim();
            if id.len() >= 12 && id.chars().all(|c| c.is_ascii_hexdigit()) {
                out.push(StreamEvent::Layer(id.to_string()));
            }
        } else if let Some(id) = l.strip_prefix("Successfully built ") {
            out.push(StreamEvent::SuccessfullyBuilt(id.trim().to_string()));
        } else if let Some(t) = l.strip_prefix("Successfully tagged ") {
            out.push(StreamEvent::SuccessfullyTagged(t.trim().to_string()));
        } else if is_image_id(l) {
            // A quiet build (`q=1`) writes nothing but the image id, as a stream line.
            out.push(StreamEvent::ImageId(l.to_string()));
        }
    }
}

/// `sha256:` and 64 hex digits.
pub fn is_image_id(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The RUN instruction a legacy `Step N/M : RUN x` or BuildKit `[2/3] RUN x` line names.
pub fn run_instruction(line: &str) -> Option<&str> {
    let rest = match line.split_once(" : ") {
        Some((head, rest)) if head.starts_with("Step ") => rest,
        _ => match line.split_once("] ") {
            Some((head, rest)) if head.starts_with('[') => rest,
            _ => line,
        },
    };
    rest.strip_prefix("RUN ").map(str::trim)
}

/// The FROM reference a `Step 1/3 : FROM x [AS y]` or `[1/2] FROM x` line names.
pub fn from_reference(line: &str) -> Option<&str> {
    let rest = match line.split_once(" : ") {
        Some((head, rest)) if head.starts_with("Step ") => rest,
        _ => match line.split_once("] ") {
            Some((head, rest)) if head.starts_with('[') => rest,
            _ => return None,
        },
    };
    let r = rest
        .strip_prefix("FROM ")
        .or_else(|| rest.strip_prefix("from "))?;
    let r = r.split_whitespace().find(|w| !w.starts_with("--"))?;
    Some(r)
}

/// The exit code in a step failure message (`returned a non-zero code: 3`, `exit code: 3`).
pub fn failure_exit_code(msg: &str) -> Option<i32> {
    for pat in ["returned a non-zero code: ", "exit code: "] {
        if let Some(i) = msg.rfind(pat) {
            let digits: String = msg[i + pat.len()..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            if let Ok(n) = digits.parse() {
                return Some(n);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_stream_in_one_write_with_headers_and_chunks() {
        let text = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
            2d\r\n{\"stream\":\"Step 1/3 : FROM localbase:1\"}\r\n\r\n\
            {\"stream\":\"\\n\"}\r\n{\"stream\":\" ---\\u003e 0123456789ab\\n\"}\r\n\
            {\"stream\":\"Step 2/3 : RUN exit 3\"}\r\n{\"stream\":\" ---\\u003e Running in fedcba987654\\n\"}\r\n";
        let ev = parse(text);
        assert_eq!(
            ev,
            vec![
                StreamEvent::Step("Step 1/3 : FROM localbase:1".into()),
                StreamEvent::Layer("0123456789ab".into()),
                StreamEvent::Step("Step 2/3 : RUN exit 3".into()),
                StreamEvent::RunningIn("fedcba987654".into()),
            ]
        );
    }

    #[test]
    fn aux_ids_errors_and_truncated_messages() {
        let id = format!("sha256:{}", "a".repeat(64));
        let ev = parse(&format!("{{\"aux\":{{\"ID\":\"{id}\"}}}}\n"));
        assert_eq!(ev, vec![StreamEvent::ImageId(id.clone())]);
        let ev = parse(&format!(
            "{{\"id\":\"moby.image.id\",\"aux\":{{\"ID\":\"{id}\"}}}}"
        ));
        assert_eq!(ev, vec![StreamEvent::ImageId(id)]);
        let ev = parse(
            "{\"errorDetail\":{\"code\":3,\"message\":\"The command '/bin/sh -c exit 3' returned a non-zero code: 3\"},\"error\":\"x\"}",
        );
        assert_eq!(
            failure_exit_code(match &ev[0] {
                StreamEvent::Error(m) => m,
                _ => panic!(),
            }),
            Some(3)
        );
        let ev =
            parse("{\"stream\":\"Successfully built 0123456789ab\\nSuccessfully tagged x:1\\nSucc");
        assert_eq!(
            ev,
            vec![
                StreamEvent::SuccessfullyBuilt("0123456789ab".into()),
                StreamEvent::SuccessfullyTagged("x:1".into()),
            ]
        );
    }

    #[test]
    fn quiet_stream_names_the_image_and_the_last_chunk_ends_it() {
        let id = format!("sha256:{}", "4b".repeat(32));
        let text = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n58\r\n{{\"stream\":\"{id}\\n\"}}\r\n\r\n"
        );
        assert_eq!(parse(&text), vec![StreamEvent::ImageId(id.clone())]);
        assert_eq!(parse("0\r\n\r\n"), vec![StreamEvent::End]);
        let both = format!("{{\"stream\":\"{id}\\n\"}}\r\n\r\n0\r\n\r\n");
        assert_eq!(
            parse(&both),
            vec![StreamEvent::ImageId(id), StreamEvent::End]
        );
        // Not an id: too short, or words around it.
        assert!(parse("{\"stream\":\"sha256:abc\\n\"}").is_empty());
        assert!(parse("{\"stream\":\"see sha256:abc\\n\"}").is_empty());
    }

    #[test]
    fn refused_request_is_an_error() {
        let ev = parse(
            "HTTP/1.1 400 Bad Request\r\nContent-Length: 83\r\n\r\n{\"message\":\"dockerfile parse error line 2: unknown instruction: X\"}\n",
        );
        assert_eq!(
            ev,
            vec![StreamEvent::Error(
                "dockerfile parse error line 2: unknown instruction: X".into()
            )]
        );
        assert!(parse("HTTP/1.1 200 OK\r\n\r\n").is_empty());
    }

    #[test]
    fn instruction_helpers() {
        assert_eq!(run_instruction("Step 2/3 : RUN exit 3"), Some("exit 3"));
        assert_eq!(run_instruction("[2/3] RUN wget x"), Some("wget x"));
        assert_eq!(
            from_reference("Step 1/3 : FROM localbase:1 AS b"),
            Some("localbase:1")
        );
        assert_eq!(
            from_reference("[1/2] FROM docker.io/library/localbase:1"),
            Some("docker.io/library/localbase:1")
        );
        assert_eq!(
            failure_exit_code("executor failed running [/bin/sh -c exit 3]: exit code: 3"),
            Some(3)
        );
    }
}
