//! Hand-built records for the detection unit tests.
use crate::output::record::*;

pub fn ts(secs: i64) -> Timestamp {
    Timestamp::from_unix_nanos(1_700_000_000_000_000_000 + secs * 1_000_000_000)
}

pub fn rec(id: u64, secs: i64, body: Body) -> Record {
    Record {
        schema_version: SCHEMA_VERSION,
        id,
        ts: ts(secs),
        host: "h".into(),
        body,
    }
}

pub fn dockerd() -> ProcessRef {
    ProcessRef {
        pid: 500,
        comm: "dockerd".into(),
        exe: Some("/usr/bin/dockerd".into()),
        role: "runtime".into(),
        ..Default::default()
    }
}

pub fn unix_client(uid: u32) -> ApiClient {
    ApiClient {
        transport: "unix".into(),
        pid: Some(4242),
        uid: Some(uid),
        user: Some(if uid == 0 {
            "root".into()
        } else {
            format!("u{uid}")
        }),
        exe: Some("/usr/bin/curl".into()),
        ..Default::default()
    }
}

pub fn tcp_client(addr: &str) -> ApiClient {
    ApiClient {
        transport: "tcp".into(),
        addr: Some(addr.into()),
        port: Some(51000),
        listener: Some("0.0.0.0:2375".into()),
        ..Default::default()
    }
}

pub fn api_post(endpoint: &str, query: Option<&str>, client: ApiClient) -> Body {
    Body::ApiRequest(ApiRequest {
        process: dockerd(),
        fd: 9,
        method: "POST".into(),
        path: format!("/v1.41{endpoint}"),
        endpoint: endpoint.into(),
        api_version: Some("1.41".into()),
        query: query.map(str::to_string),
        user_agent: None,
        content_type: None,
        content_length: None,
        header_names: vec![],
        truncated: false,
        client,
    })
}

pub fn api_response(data: &str) -> Body {
    Body::ApiResponse(ApiResponse {
        process: dockerd(),
        fd: 9,
        data: data.into(),
        write_len: data.len() as u64,
        truncated: false,
    })
}

pub fn build_started(id: &str, client: ApiClient) -> Body {
    Body::BuildStarted(BuildStarted {
        build_id: id.into(),
        builder: "buildkit".into(),
        client,
        user_agent: None,
        params: BuildParams::default(),
        partial: false,
        evidence: Evidence {
            record_ids: vec![1],
            pids: vec![],
        },
        started: Timestamp::from_unix_nanos(0),
        dockerfile: None,
        dockerfile_status: "not_available".into(),
    })
}

/// A succeeded build with outbound destinations `(addr, port, policy)`.
pub fn build_finished(id: &str, image_id: Option<&str>, outbound: &[(&str, u16, &str)]) -> Body {
    Body::BuildFinished(BuildFinished {
        build_id: id.into(),
        builder: "buildkit".into(),
        client: unix_client(0),
        user_agent: None,
        params: BuildParams::default(),
        base_images: vec![],
        steps: vec![],
        started: ts(0),
        duration_ms: 1000,
        status: "succeeded".into(),
        failed_step: None,
        error: None,
        image_id: image_id.map(str::to_string),
        tags: vec![],
        partial: false,
        outbound: outbound
            .iter()
            .map(|(a, p, pol)| OutboundConnection {
                dst_addr: a.to_string(),
                dst_port: *p,
                protocol: "tcp".into(),
                dns_name: None,
                first: ts(1),
                last: ts(1),
                count: 1,
                failed: 0,
                made_by: "1".into(),
                policy: pol.to_string(),
            })
            .collect(),
        dockerfile: None,
        evidence: Evidence::default(),
        dockerfile_missing: None,
    })
}

pub fn container_start(
    id: &str,
    image_id: &str,
    build_id: Option<&str>,
    secs_since: Option<u64>,
) -> Body {
    Body::ContainerStart(ContainerStart {
        container_id: id.into(),
        name: Some("web".into()),
        image: "app:1".into(),
        image_id: Some(image_id.into()),
        runtime: "docker".into(),
        kubernetes: None,
        client: unix_client(0),
        build_id: build_id.map(str::to_string),
        seconds_since_build: secs_since,
        evidence: Evidence::default(),
        image_origin: None,
    })
}
