//! The Docker Engine API, interpreted once: what an `api_request` asks the daemon to do.
//!
//! Every engine that acts on requests (builds, lineage, findings) takes the call from here,
//! so a path or query is read the same way everywhere. Queries are
//! `application/x-www-form-urlencoded` as Go's `url.ParseQuery` reads them (`+` is a space);
//! path segments are percent-decoded without that rule (`+` stays, as in Go's `url.PathUnescape`).
use std::borrow::Cow;

/// A decoded query string: (key, value) pairs in order, repeated keys kept.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Query {
        Query(
            form_urlencoded::parse(raw.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The first non-empty value of `key`.
    pub fn non_empty(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|v| !v.is_empty())
    }
}

/// One query component decoded as a query value (`+` is a space).
pub fn decode_component(s: &str) -> String {
    form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// One path segment, percent-decoded (`+` kept); invalid UTF-8 becomes U+FFFD.
pub fn decode_path_segment(s: &str) -> String {
    match percent_encoding::percent_decode_str(s).decode_utf8_lossy() {
        Cow::Borrowed(b) => b.to_string(),
        Cow::Owned(o) => o,
    }
}

/// What a request asks for, as far as the engines care.
#[derive(Clone, Debug, PartialEq)]
pub enum ApiCall {
    /// `POST /build`: an image build (its parameters are in the query).
    Build {
        query: Query,
    },
    /// `POST /build/cancel?id=...`: cancel a BuildKit build by its `buildid`.
    BuildCancel {
        id: Option<String>,
    },
    /// `POST /containers/create[?name=...]`.
    ContainerCreate {
        name: Option<String>,
    },
    /// `POST /containers/{id or name}/start`.
    ContainerStart {
        reference: String,
    },
    /// `POST /images/create?fromImage=...&tag=...` (a pull or an import).
    ImageCreate {
        from_image: Option<String>,
        tag: Option<String>,
    },
    /// `POST /images/{name}/push?tag=...` (no tag: every tag of the repository).
    ImagePush {
        name: String,
        tag: String,
    },
    Other,
}

impl ApiCall {
    /// Interprets a request: `endpoint` is the path without the `/v1.xx` prefix.
    pub fn interpret(method: &str, endpoint: &str, query: Option<&str>) -> ApiCall {
        if method != "POST" {
            return ApiCall::Other;
        }
        let ep = endpoint.trim_end_matches('/');
        let q = || Query::parse(query);
        match ep {
            "/build" => return ApiCall::Build { query: q() },
            "/build/cancel" => {
                return ApiCall::BuildCancel {
                    id: q().non_empty("id").map(str::to_string),
                };
            }
            "/containers/create" => {
                return ApiCall::ContainerCreate {
                    name: q().non_empty("name").map(str::to_string),
                };
            }
            "/images/create" => {
                let q = q();
                return ApiCall::ImageCreate {
                    from_image: q.non_empty("fromImage").map(str::to_string),
                    tag: q.non_empty("tag").map(str::to_string),
                };
            }
            _ => {}
        }
        if let Some(r) = ep
            .strip_prefix("/containers/")
            .and_then(|r| r.strip_suffix("/start"))
            .filter(|r| !r.is_empty() && !r.contains('/'))
        {
            return ApiCall::ContainerStart {
                reference: decode_path_segment(r),
            };
        }
        // An image name may have slashes (`registry:5000/team/app`): everything between
        // `/images/` and `/push`.
        if let Some(name) = ep
            .strip_prefix("/images/")
            .and_then(|r| r.strip_suffix("/push"))
            .filter(|r| !r.is_empty())
        {
            return ApiCall::ImagePush {
                name: decode_path_segment(name),
                tag: q().get("tag").unwrap_or("").to_string(),
            };
        }
        ApiCall::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plus_is_a_space_in_queries_and_kept_in_paths() {
        let q = Query::parse(Some("t=a%3A1&t=b+c&buildargs=%7B%7D&flag"));
        assert_eq!(
            q.pairs(),
            [
                ("t".to_string(), "a:1".to_string()),
                ("t".to_string(), "b c".to_string()),
                ("buildargs".to_string(), "{}".to_string()),
                ("flag".to_string(), String::new()),
            ]
        );
        assert_eq!(decode_component("a+b%2Fc"), "a b/c");
        assert_eq!(decode_path_segment("a+b%2Fc%zz"), "a+b/c%zz");
    }

    #[test]
    fn calls() {
        assert!(matches!(
            ApiCall::interpret("POST", "/build", Some("q=1&t=x")),
            ApiCall::Build { query } if query.get("q") == Some("1")
        ));
        assert_eq!(
            ApiCall::interpret("POST", "/build/cancel", Some("id=abc")),
            ApiCall::BuildCancel {
                id: Some("abc".into())
            }
        );
        assert_eq!(
            ApiCall::interpret("POST", "/containers/my%2Bapp/start", None),
            ApiCall::ContainerStart {
                reference: "my+app".into()
            }
        );
        assert_eq!(
            ApiCall::interpret(
                "POST",
                "/images/127.0.0.1:5000/team/app/push",
                Some("tag=v+1")
            ),
            ApiCall::ImagePush {
                name: "127.0.0.1:5000/team/app".into(),
                tag: "v 1".into()
            }
        );
        assert_eq!(
            ApiCall::interpret(
                "POST",
                "/images/create",
                Some("fromImage=busybox&tag=latest")
            ),
            ApiCall::ImageCreate {
                from_image: Some("busybox".into()),
                tag: Some("latest".into())
            }
        );
        assert_eq!(
            ApiCall::interpret("POST", "/containers/create", Some("name=web")),
            ApiCall::ContainerCreate {
                name: Some("web".into())
            }
        );
        assert_eq!(ApiCall::interpret("GET", "/build", None), ApiCall::Other);
        assert_eq!(
            ApiCall::interpret("POST", "/containers/a/b/start", None),
            ApiCall::Other
        );
    }
}
