//! Records as OCSF 1.x events, for sinks with `format=ocsf` (docs/collectors.md#ocsf).
//!
//! findings → Detection Finding (2004); process_exec/process_exit → Process Activity (1007);
//! connect/accept → Network Activity (4001); dns_query/dns_response → DNS Activity (4003);
//! api_request → HTTP Activity (4002); every other kind → Base Event (0) with the whole record
//! under `unmapped`. Every event carries `metadata.product`, the record's `host` as
//! `device.hostname` and the record's own id and time, so that it can be traced back to the NDJSON
//! record. The conversion runs on the sink's writer thread, never on the event loop.
use serde_json::{Map, Value, json};

use crate::output::record::{
    Accept, ApiClient, ApiRequest, Body, Connect, DnsQuery, DnsResponse, Finding, ProcessExec,
    ProcessExit, ProcessRef, Record,
};

/// The OCSF schema version the events follow (what py-ocsf-models 0.10 models).
pub const OCSF_VERSION: &str = "1.5.0";

/// ATT&CK techniques the findings name, with the tactic each is listed under for containers.
const TECHNIQUES: &[(&str, &str, &str, &str)] = &[
    ("T1612", "Build Image on Host", "TA0005", "Defense Evasion"),
    ("T1610", "Deploy Container", "TA0002", "Execution"),
];

/// The OCSF event for one NDJSON line. A line that is not a record of a known kind (it cannot
/// happen for lines the sensor wrote, but a sink must never fail) becomes a Base Event holding
/// the line in `raw_data`.
pub fn line_to_ocsf(line: &str) -> String {
    let event = match serde_json::from_str::<Record>(line) {
        Ok(rec) => to_ocsf(&rec),
        Err(_) => json!({
            "class_uid": 0, "class_name": "Base Event", "category_uid": 0,
            "category_name": "Uncategorized", "activity_id": 99, "activity_name": "Other",
            "type_uid": 99, "type_name": "Base Event: Other",
            "time": chrono::Utc::now().timestamp_millis(),
            "severity_id": 1, "severity": "Informational",
            "message": "a line that is not a sensor record",
            "metadata": metadata(None, "unknown"),
            "raw_data": line,
        }),
    };
    event.to_string()
}

pub fn to_ocsf(rec: &Record) -> Value {
    let mut ev = match &rec.body {
        Body::Finding(f) => finding(rec, f),
        Body::ProcessExec(p) => process_exec(p),
        Body::ProcessExit(p) => process_exit(p),
        Body::Connect(c) => connect(c),
        Body::Accept(a) => accept(a),
        Body::DnsQuery(q) => dns_query(q),
        Body::DnsResponse(r) => dns_response(r),
        Body::ApiRequest(a) => http_request(a),
        _ => base_event(rec),
    };
    // Common to every class: when, where, by what.
    let o = obj(&mut ev);
    o.insert("time".into(), json!(rec.ts.0.timestamp_millis()));
    o.insert("metadata".into(), metadata(Some(rec), rec.body.kind()));
    o.insert("device".into(), json!({"hostname": rec.host, "type_id": 0}));
    o.entry("severity_id").or_insert(json!(1));
    o.entry("severity").or_insert(json!("Informational"));
    ev
}

fn obj(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    match v {
        Value::Object(m) => m,
        // Made an object just above.
        _ => unreachable!(),
    }
}

fn metadata(rec: Option<&Record>, kind: &str) -> Value {
    let mut m = json!({
        "version": OCSF_VERSION,
        "product": {
            "name": "sensor",
            "vendor_name": "sensor project",
            "version": env!("CARGO_PKG_VERSION"),
        },
        "log_name": kind,
    });
    if let Some(r) = rec {
        let o = obj(&mut m);
        // The record id is unique within one sensor run; with host and time, across runs.
        o.insert("uid".into(), json!(record_uid(r)));
        o.insert("sequence".into(), json!(r.id));
        o.insert("original_time".into(), json!(r.ts));
    }
    m
}

fn record_uid(r: &Record) -> String {
    format!("{}:{}:{}", r.host, r.ts.unix_nanos(), r.id)
}

/// `class_uid`, names and `type_uid` (class × 100 + activity).
fn class(class_uid: u32, class_name: &str, category: (u32, &str), activity: (u32, &str)) -> Value {
    json!({
        "class_uid": class_uid, "class_name": class_name,
        "category_uid": category.0, "category_name": category.1,
        "activity_id": activity.0, "activity_name": activity.1,
        "type_uid": class_uid * 100 + activity.0,
        "type_name": format!("{class_name}: {}", activity.1),
    })
}

fn merge(mut base: Value, extra: Value) -> Value {
    if let Value::Object(e) = extra {
        obj(&mut base).extend(e);
    }
    base
}

fn process(p: &ProcessRef) -> Value {
    let mut v = json!({
        "pid": p.pid,
        "name": p.comm,
        "user": {"uid": p.uid.to_string()},
        "parent_process": {"pid": p.ppid},
    });
    let o = obj(&mut v);
    if let Some(exe) = &p.exe {
        o.insert("file".into(), file(exe));
    }
    if p.tid != 0 {
        o.insert("tid".into(), json!(p.tid));
    }
    if let Some(c) = &p.container_id {
        o.insert("container".into(), json!({"uid": c, "name": c}));
    }
    v
}

fn file(path: &str) -> Value {
    let name = path.rsplit('/').next().unwrap_or(path);
    json!({"path": path, "name": name, "type_id": 1, "type": "Regular File"})
}

fn actor(p: &ProcessRef) -> Value {
    json!({"process": process(p)})
}

fn process_exec(p: &ProcessExec) -> Value {
    let mut proc = process(&p.process);
    let o = obj(&mut proc);
    o.insert("cmd_line".into(), json!(p.argv.join(" ")));
    o.entry("file").or_insert(file(&p.filename));
    merge(
        class(
            1007,
            "Process Activity",
            (1, "System Activity"),
            (1, "Launch"),
        ),
        json!({
            "process": proc,
            // The parent launched it.
            "actor": {"process": {"pid": p.process.ppid}},
            "unmapped": {"argv": p.argv, "argv_truncated": p.argv_truncated,
                         "start_time_ns": p.start_time_ns, "role": p.process.role},
        }),
    )
}

fn process_exit(p: &ProcessExit) -> Value {
    let mut ev = merge(
        class(
            1007,
            "Process Activity",
            (1, "System Activity"),
            (2, "Terminate"),
        ),
        json!({"process": process(&p.process), "actor": actor(&p.process)}),
    );
    let o = obj(&mut ev);
    if let Some(c) = p.exit_code {
        o.insert("exit_code".into(), json!(c));
    }
    if let Some(s) = p.signal {
        o.insert("unmapped".into(), json!({"signal": s}));
    }
    if let Some(d) = p.duration_ms {
        o.insert("duration".into(), json!(d));
    }
    ev
}

fn endpoint(addr: Option<&str>, port: Option<u16>) -> Value {
    let mut v = json!({});
    let o = obj(&mut v);
    if let Some(a) = addr {
        o.insert("ip".into(), json!(a));
    }
    if let Some(p) = port {
        o.insert("port".into(), json!(p));
    }
    v
}

fn ip_version(family: &str) -> Value {
    match family {
        "ipv4" => {
            json!({"protocol_ver_id": 4, "protocol_ver": "Internet Protocol version 4 (IPv4)"})
        }
        "ipv6" => {
            json!({"protocol_ver_id": 6, "protocol_ver": "Internet Protocol version 6 (IPv6)"})
        }
        _ => json!({}),
    }
}

fn connect(c: &Connect) -> Value {
    let activity = match c.result.as_str() {
        "established" => (1, "Open"),
        "failed" => (4, "Fail"),
        _ => (99, "Other"),
    };
    let mut info = merge(
        json!({"protocol_name": c.protocol, "direction_id": 2, "direction": "Outbound"}),
        ip_version(&c.family),
    );
    if c.protocol == "tcp" {
        obj(&mut info).insert("protocol_num".into(), json!(6));
    }
    let mut dst = endpoint(c.dst_addr.as_deref(), c.dst_port);
    if let Some(path) = &c.path {
        // A unix socket has no address: its path names the endpoint.
        obj(&mut dst).insert("name".into(), json!(path));
    }
    let mut ev = merge(
        class(4001, "Network Activity", (4, "Network Activity"), activity),
        json!({
            "src_endpoint": endpoint(c.src_addr.as_deref(), c.src_port),
            "dst_endpoint": dst,
            "connection_info": info,
            "actor": actor(&c.process),
            "status_id": if c.result == "failed" { 2 } else { 1 },
            "status": if c.result == "failed" { "Failure" } else { "Success" },
            "unmapped": {"result": c.result, "family": c.family},
        }),
    );
    if let Some(l) = c.latency_us {
        obj(&mut ev).insert("duration".into(), json!(l / 1000));
    }
    ev
}

fn accept(a: &Accept) -> Value {
    merge(
        class(
            4001,
            "Network Activity",
            (4, "Network Activity"),
            (1, "Open"),
        ),
        json!({
            "src_endpoint": endpoint(Some(&a.peer_addr), Some(a.peer_port)),
            "dst_endpoint": endpoint(Some(&a.local_addr), Some(a.local_port)),
            "connection_info": merge(
                json!({"protocol_name": "tcp", "protocol_num": 6, "direction_id": 1, "direction": "Inbound"}),
                ip_version(&a.family),
            ),
            "actor": actor(&a.process),
            "status_id": 1, "status": "Success",
        }),
    )
}

fn dns_query_object(name: Option<&str>, qtype: Option<&str>) -> Value {
    let mut q = json!({"hostname": name.unwrap_or(""), "class": "IN"});
    if let Some(t) = qtype {
        obj(&mut q).insert("type".into(), json!(t));
    }
    q
}

fn dns_query(q: &DnsQuery) -> Value {
    merge(
        class(4003, "DNS Activity", (4, "Network Activity"), (1, "Query")),
        json!({
            "query": dns_query_object(q.query_name.as_deref(), q.query_type.as_deref()),
            "dst_endpoint": endpoint(Some(&q.server_addr), Some(q.server_port)),
            "actor": actor(&q.process),
        }),
    )
}

/// OCSF's rcode_id: the DNS RCODE number for the names it lists.
fn rcode_id(rcode: &str) -> u32 {
    match rcode {
        "NOERROR" => 0,
        "FORMERR" => 1,
        "SERVFAIL" => 2,
        "NXDOMAIN" => 3,
        "NOTIMP" => 4,
        "REFUSED" => 5,
        "YXDOMAIN" => 6,
        "YXRRSET" => 7,
        "NXRRSET" => 8,
        "NOTAUTH" => 9,
        "NOTZONE" => 10,
        _ => 99,
    }
}

fn dns_response(r: &DnsResponse) -> Value {
    let answers: Vec<Value> = r
        .addrs
        .iter()
        .map(|a| {
            let t = if a.contains(':') { "AAAA" } else { "A" };
            json!({"rdata": a, "type": t, "class": "IN"})
        })
        .collect();
    merge(
        class(
            4003,
            "DNS Activity",
            (4, "Network Activity"),
            (2, "Response"),
        ),
        json!({
            "query": dns_query_object(Some(&r.query_name), Some(&r.query_type)),
            "answers": answers,
            "rcode": r.rcode,
            "rcode_id": rcode_id(&r.rcode),
            "dst_endpoint": endpoint(r.server_addr.as_deref(), r.server_port),
            "actor": actor(&r.process),
        }),
    )
}

fn client_endpoint(c: &ApiClient) -> Value {
    let mut v = endpoint(c.addr.as_deref(), c.port);
    if c.transport == "unix" {
        obj(&mut v).insert("name".into(), json!("unix socket"));
    }
    v
}

/// The API client as an OCSF actor: its process and user, when local.
fn client_actor(c: &ApiClient) -> Value {
    let mut p = json!({});
    let o = obj(&mut p);
    if let Some(pid) = c.pid {
        o.insert("pid".into(), json!(pid));
    }
    if let Some(exe) = &c.exe {
        o.insert("file".into(), file(exe));
        o.insert("name".into(), json!(exe.rsplit('/').next().unwrap_or(exe)));
    }
    if !c.argv.is_empty() {
        o.insert("cmd_line".into(), json!(c.argv.join(" ")));
    }
    let mut a = json!({"process": p});
    if c.uid.is_some() || c.user.is_some() {
        let mut u = json!({});
        let uo = obj(&mut u);
        if let Some(uid) = c.uid {
            uo.insert("uid".into(), json!(uid.to_string()));
        }
        if let Some(n) = &c.user {
            uo.insert("name".into(), json!(n));
        }
        obj(&mut a).insert("user".into(), u);
    }
    a
}

fn http_method_activity(m: &str) -> (u32, &'static str) {
    match m {
        "CONNECT" => (1, "Connect"),
        "DELETE" => (2, "Delete"),
        "GET" => (3, "Get"),
        "HEAD" => (4, "Head"),
        "OPTIONS" => (5, "Options"),
        "POST" => (6, "Post"),
        "PUT" => (7, "Put"),
        "TRACE" => (8, "Trace"),
        _ => (99, "Other"),
    }
}

fn http_request(a: &ApiRequest) -> Value {
    let mut url = json!({"path": a.path});
    if let Some(q) = &a.query {
        obj(&mut url).insert("query_string".into(), json!(q));
    }
    let mut req = json!({"http_method": a.method, "url": url});
    let ro = obj(&mut req);
    if let Some(ua) = &a.user_agent {
        ro.insert("user_agent".into(), json!(ua));
    }
    if let Some(l) = a.content_length {
        ro.insert("length".into(), json!(l));
    }
    let mut dst = json!({"name": a.process.comm});
    if let Some(l) = &a.client.listener
        && let Some((ip, port)) = l.rsplit_once(':')
    {
        let o = obj(&mut dst);
        o.insert("ip".into(), json!(ip));
        if let Ok(p) = port.parse::<u16>() {
            o.insert("port".into(), json!(p));
        }
    }
    merge(
        class(
            4002,
            "HTTP Activity",
            (4, "Network Activity"),
            http_method_activity(&a.method),
        ),
        json!({
            "http_request": req,
            "src_endpoint": client_endpoint(&a.client),
            "dst_endpoint": dst,
            "actor": client_actor(&a.client),
            "unmapped": {"endpoint": a.endpoint, "api_version": a.api_version,
                         "transport": a.client.transport, "truncated": a.truncated,
                         "server_pid": a.process.pid},
        }),
    )
}

fn severity(s: &str) -> (u32, &'static str) {
    match s {
        "low" => (2, "Low"),
        "medium" => (3, "Medium"),
        "high" => (4, "High"),
        "critical" => (5, "Critical"),
        _ => (0, "Unknown"),
    }
}

fn attacks(ids: &[String]) -> Vec<Value> {
    ids.iter()
        .map(|id| match TECHNIQUES.iter().find(|t| t.0 == id) {
            Some((t, name, tactic, tactic_name)) => json!({
                "technique": {"uid": t, "name": name,
                              "src_url": format!("https://attack.mitre.org/techniques/{t}/")},
                "tactic": {"uid": tactic, "name": tactic_name,
                           "src_url": format!("https://attack.mitre.org/tactics/{tactic}/")},
            }),
            None => json!({"technique": {"uid": id, "name": id}}),
        })
        .collect()
}

/// One destination from a finding's details: `{"addr","port","dns_name"}` objects or
/// `"addr:port (name) policy"` strings.
fn destination(d: &Value) -> Option<Value> {
    if let Some(addr) = d.get("addr").and_then(Value::as_str) {
        let mut e = json!({"ip": addr});
        if let Some(p) = d.get("port").and_then(Value::as_u64) {
            obj(&mut e).insert("port".into(), json!(p));
        }
        if let Some(n) = d.get("dns_name").and_then(Value::as_str) {
            obj(&mut e).insert("hostname".into(), json!(n));
        }
        return Some(e);
    }
    let s = d.as_str()?;
    let hostport = s.split(' ').next()?;
    let (ip, port) = hostport.rsplit_once(':')?;
    let mut e = json!({"ip": ip});
    if let Ok(p) = port.parse::<u16>() {
        obj(&mut e).insert("port".into(), json!(p));
    }
    if let (Some(a), Some(b)) = (s.find('('), s.find(')'))
        && a < b
    {
        obj(&mut e).insert("hostname".into(), json!(&s[a + 1..b]));
    }
    Some(e)
}

/// The evidences of a finding: the build, the image, the container, the client and the
/// destinations it names, each tagged with what it is in `data.evidence`.
fn evidences(f: &Finding) -> Vec<Value> {
    let mut out = Vec::new();
    let tag = |what: &str| json!({"evidence": what});
    if let Some(b) = &f.build_id {
        out.push(json!({
            "resources": [{"uid": b, "name": b, "type": "Container Image Build"}],
            "data": tag("build"),
        }));
    }
    let image_name = f
        .details
        .get("image")
        .or_else(|| f.details.get("pushed_reference"))
        .and_then(Value::as_str);
    if let Some(i) = &f.image_id {
        let name = image_name.unwrap_or(i);
        out.push(json!({
            "resources": [{"uid": i, "name": name, "type": "Container Image"}],
            "data": tag("image"),
        }));
    }
    if let Some(c) = &f.container_id {
        let mut cont = json!({"uid": c, "name": c});
        if let Some(i) = &f.image_id {
            obj(&mut cont).insert(
                "image".into(),
                json!({"uid": i, "name": image_name.unwrap_or(i)}),
            );
        }
        out.push(json!({
            "resources": [{"uid": c, "name": c, "type": "Container"}],
            "container": cont,
            "data": tag("container"),
        }));
    }
    let client = f
        .details
        .get("client")
        .and_then(|c| serde_json::from_value::<ApiClient>(c.clone()).ok());
    let remote = f.details.get("remote_addr").and_then(Value::as_str);
    if client.is_some() || remote.is_some() {
        let mut e = json!({"data": tag("client")});
        let o = obj(&mut e);
        if let Some(c) = &client {
            o.insert("actor".into(), client_actor(c));
            o.insert("src_endpoint".into(), client_endpoint(c));
        }
        if let Some(addr) = remote {
            let port = f
                .details
                .get("remote_port")
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok());
            o.insert("src_endpoint".into(), endpoint(Some(addr), port));
        }
        out.push(e);
    }
    let dests = f
        .details
        .get("destinations")
        .or_else(|| f.details.get("build_outbound_not_allowed"))
        .and_then(Value::as_array);
    for d in dests.into_iter().flatten().filter_map(destination) {
        out.push(json!({"dst_endpoint": d, "data": tag("destination")}));
    }
    out
}

fn finding(rec: &Record, f: &Finding) -> Value {
    let (sev_id, sev) = severity(&f.severity);
    let related: Vec<Value> = f
        .analytics
        .iter()
        .map(|a| json!({"uid": a, "name": a, "type_id": 99, "type": "MITRE ATT&CK Analytic"}))
        .collect();
    merge(
        class(2004, "Detection Finding", (2, "Findings"), (1, "Create")),
        json!({
            "severity_id": sev_id,
            "severity": sev,
            "status_id": 1,
            "status": "New",
            "message": f.summary,
            "finding_info": {
                "uid": record_uid(rec),
                "title": f.rule,
                "desc": f.summary,
                "types": [f.rule],
                "analytic": {"uid": f.rule, "name": f.rule, "type_id": 1, "type": "Rule"},
                "related_analytics": related,
                "attacks": attacks(&f.attack),
                "created_time": rec.ts.0.timestamp_millis(),
            },
            "evidences": evidences(f),
            "unmapped": {"details": f.details, "evidence_record_ids": f.evidence.record_ids},
        }),
    )
}

fn base_event(rec: &Record) -> Value {
    merge(
        class(0, "Base Event", (0, "Uncategorized"), (99, "Other")),
        json!({
            "message": rec.body.kind(),
            "unmapped": serde_json::to_value(rec).unwrap_or(Value::Null),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(line: &str) -> Value {
        serde_json::from_str(&line_to_ocsf(line)).unwrap()
    }

    const ENVELOPE: &str =
        r#""schema_version":1,"id":42,"ts":"2026-11-23T16:36:14.431100344Z","host":"nodea""#;

    fn line(body: &str) -> String {
        format!("{{{ENVELOPE},{body}}}")
    }

    fn assert_class(v: &Value, class_uid: u64, activity: u64) {
        assert_eq!(v["class_uid"], class_uid, "{v}");
        assert_eq!(v["activity_id"], activity, "{v}");
        assert_eq!(v["type_uid"], class_uid * 100 + activity, "{v}");
        assert_eq!(v["metadata"]["version"], OCSF_VERSION);
        assert_eq!(v["metadata"]["product"]["name"], "sensor");
        assert_eq!(v["metadata"]["sequence"], 42);
        assert_eq!(v["device"]["hostname"], "nodea");
        assert_eq!(v["time"], 1_795_451_774_431i64);
    }

    const PROC: &str = r#""process":{"pid":7,"ppid":1,"uid":0,"gid":0,"comm":"wget","exe":"/bin/busybox","cgroup_id":1,"container_id":"abc","role":"descendant"}"#;

    #[test]
    fn finding_is_a_detection_finding_with_attack_and_evidences() {
        let v = rec(&line(
            r#""kind":"finding","rule":"deploy_soon_after_build","severity":"high","summary":"s.","attack":["T1612"],"analytics":["AN1261"],"build_id":"b-1","container_id":"c1","image_id":"sha256:i","details":{"image":"x:1","client":{"transport":"tcp","addr":"10.0.0.2","port":4000},"build_outbound_not_allowed":["10.9.9.2:8080 (c2.example) unknown"]},"evidence":{"record_ids":[1,2]}"#,
        ));
        assert_class(&v, 2004, 1);
        assert_eq!(v["category_uid"], 2);
        assert_eq!(v["severity_id"], 4);
        let fi = &v["finding_info"];
        assert_eq!(fi["title"], "deploy_soon_after_build");
        assert_eq!(fi["types"][0], "deploy_soon_after_build");
        assert!(fi["uid"].as_str().unwrap().ends_with(":42"));
        assert_eq!(fi["attacks"][0]["technique"]["uid"], "T1612");
        assert_eq!(fi["attacks"][0]["tactic"]["uid"], "TA0005");
        assert_eq!(fi["related_analytics"][0]["uid"], "AN1261");
        let ev = v["evidences"].as_array().unwrap();
        let what: Vec<&str> = ev
            .iter()
            .map(|e| e["data"]["evidence"].as_str().unwrap())
            .collect();
        assert_eq!(
            what,
            ["build", "image", "container", "client", "destination"]
        );
        assert_eq!(ev[1]["resources"][0]["name"], "x:1");
        assert_eq!(ev[2]["container"]["image"]["uid"], "sha256:i");
        assert_eq!(ev[3]["src_endpoint"]["ip"], "10.0.0.2");
        assert_eq!(ev[4]["dst_endpoint"]["ip"], "10.9.9.2");
        assert_eq!(ev[4]["dst_endpoint"]["port"], 8080);
        assert_eq!(ev[4]["dst_endpoint"]["hostname"], "c2.example");
        assert_eq!(v["unmapped"]["evidence_record_ids"][1], 2);
    }

    #[test]
    fn outbound_finding_names_its_destinations() {
        let v = rec(&line(
            r#""kind":"finding","rule":"build_outbound_not_allowed","severity":"medium","summary":"s.","attack":["T1612"],"analytics":["AN1261"],"build_id":"b-1","details":{"destinations":[{"addr":"10.9.9.2","port":80,"dns_name":null}]},"evidence":{}"#,
        ));
        let ev = v["evidences"].as_array().unwrap();
        assert_eq!(ev.len(), 2, "{v}");
        assert_eq!(ev[1]["dst_endpoint"], json!({"ip": "10.9.9.2", "port": 80}));
        assert_eq!(v["severity_id"], 3);
    }

    #[test]
    fn process_records_are_process_activity() {
        let v = rec(&line(&format!(
            r#""kind":"process_exec",{PROC},"filename":"/proc/self/exe","argv":["wget","-q","x"],"start_time_ns":5"#
        )));
        assert_class(&v, 1007, 1);
        assert_eq!(v["process"]["pid"], 7);
        assert_eq!(v["process"]["cmd_line"], "wget -q x");
        assert_eq!(v["process"]["file"]["path"], "/bin/busybox");
        assert_eq!(v["process"]["container"]["uid"], "abc");
        assert_eq!(v["actor"]["process"]["pid"], 1);
        let v = rec(&line(&format!(
            r#""kind":"process_exit",{PROC},"exit_code":3,"duration_ms":9"#
        )));
        assert_class(&v, 1007, 2);
        assert_eq!(v["exit_code"], 3);
    }

    #[test]
    fn connections_are_network_activity() {
        let v = rec(&line(&format!(
            r#""kind":"connect",{PROC},"protocol":"tcp","family":"ipv4","dst_addr":"10.9.9.2","dst_port":8080,"result":"failed""#
        )));
        assert_class(&v, 4001, 4);
        assert_eq!(v["dst_endpoint"], json!({"ip": "10.9.9.2", "port": 8080}));
        assert_eq!(v["connection_info"]["direction_id"], 2);
        assert_eq!(v["connection_info"]["protocol_ver_id"], 4);
        let v = rec(&line(&format!(
            r#""kind":"connect",{PROC},"protocol":"unix","family":"unix","path":"/var/run/docker.sock","result":"attempted""#
        )));
        assert_class(&v, 4001, 99);
        assert_eq!(v["dst_endpoint"]["name"], "/var/run/docker.sock");
        let v = rec(&line(&format!(
            r#""kind":"accept",{PROC},"family":"ipv4","local_addr":"10.0.0.1","local_port":2375,"peer_addr":"10.0.0.2","peer_port":5000"#
        )));
        assert_class(&v, 4001, 1);
        assert_eq!(v["src_endpoint"]["ip"], "10.0.0.2");
        assert_eq!(v["connection_info"]["direction_id"], 1);
    }

    #[test]
    fn dns_records_are_dns_activity() {
        let v = rec(&line(&format!(
            r#""kind":"dns_query",{PROC},"server_addr":"10.0.0.53","server_port":53,"query_name":"c2.example","query_type":"A""#
        )));
        assert_class(&v, 4003, 1);
        assert_eq!(v["query"]["hostname"], "c2.example");
        let v = rec(&line(&format!(
            r#""kind":"dns_response",{PROC},"query_name":"c2.example","query_type":"A","rcode":"NXDOMAIN","addrs":["10.9.9.2","fd00::1"]"#
        )));
        assert_class(&v, 4003, 2);
        assert_eq!(v["rcode_id"], 3);
        assert_eq!(v["answers"][1]["type"], "AAAA");
    }

    #[test]
    fn api_request_is_http_activity() {
        let v = rec(&line(&format!(
            r#""kind":"api_request",{PROC},"fd":3,"method":"POST","path":"/v1.41/build","endpoint":"/build","query":"t=x","user_agent":"curl/8","client":{{"transport":"tcp","addr":"10.0.0.2","port":5000,"listener":"10.0.0.1:2375"}}"#
        )));
        assert_class(&v, 4002, 6);
        assert_eq!(v["http_request"]["http_method"], "POST");
        assert_eq!(v["http_request"]["url"]["query_string"], "t=x");
        assert_eq!(v["src_endpoint"]["ip"], "10.0.0.2");
        assert_eq!(v["dst_endpoint"]["port"], 2375);
    }

    #[test]
    fn other_kinds_are_base_events_with_the_record_unmapped() {
        let l = line(
            r#""kind":"image_push","reference":"r/x:1","registry":"r","client":{"transport":"unix"},"evidence":{}"#,
        );
        let v = rec(&l);
        assert_class(&v, 0, 99);
        let back: Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["unmapped"], back);
        // Not a record at all: still one well-formed event.
        let v = rec("not json");
        assert_eq!(v["class_uid"], 0);
        assert_eq!(v["raw_data"], "not json");
    }
}
