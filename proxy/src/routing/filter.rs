//! What a route does to the requests it takes, before they are sent (the
//! Gateway API's filters): header changes on the request and on its
//! response, a redirect answered by the proxy itself, and URL rewrites
//! (RequestMirror is [`super::mirror`]). Compiled once per config version:
//! header names and values are parsed here, so the data path only copies
//! them.

use http::header::{HOST, LOCATION};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use weft_proto::model::{self, Filter, PathModifier};

/// `set`, `add` and `remove` of one header modifier.
#[derive(Debug, Default)]
struct HeaderOps {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderOps {
    fn compile(m: &model::HeaderModifier) -> Result<Self, String> {
        let pair = |h: &model::Header| -> Result<(HeaderName, HeaderValue), String> {
            Ok((
                HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| format!("'{}' is not a header name", h.name))?,
                HeaderValue::from_str(&h.value)
                    .map_err(|_| format!("'{}' is not a header value", h.value))?,
            ))
        };
        Ok(Self {
            set: m.set.iter().map(pair).collect::<Result<_, _>>()?,
            add: m.add.iter().map(pair).collect::<Result<_, _>>()?,
            remove: m
                .remove
                .iter()
                .map(|n| {
                    HeaderName::from_bytes(n.as_bytes())
                        .map_err(|_| format!("'{n}' is not a header name"))
                })
                .collect::<Result<_, _>>()?,
        })
    }

    fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

#[derive(Debug)]
struct Redirect {
    scheme: Option<Scheme>,
    hostname: Option<String>,
    path: Option<PathModifier>,
    port: Option<u16>,
    status: StatusCode,
}

#[derive(Debug)]
struct Rewrite {
    hostname: Option<HeaderValue>,
    path: Option<PathModifier>,
}

/// A route's filters, compiled.
#[derive(Debug, Default)]
pub struct Filters {
    request: Vec<HeaderOps>,
    response: Vec<HeaderOps>,
    redirect: Option<Redirect>,
    rewrite: Option<Rewrite>,
    /// The route match's path prefix, which `ReplacePrefixMatch` replaces.
    prefix: Option<String>,
}

impl Filters {
    pub fn compile(filters: &[Filter], prefix: Option<String>) -> Result<Self, String> {
        let mut out = Filters {
            prefix,
            ..Filters::default()
        };
        for f in filters {
            match f {
                Filter::RequestHeaders(m) => out.request.push(HeaderOps::compile(m)?),
                Filter::ResponseHeaders(m) => out.response.push(HeaderOps::compile(m)?),
                Filter::Redirect(r) => {
                    out.redirect = Some(Redirect {
                        scheme: r
                            .scheme
                            .as_deref()
                            .map(|s| {
                                s.parse::<Scheme>()
                                    .map_err(|_| format!("'{s}' is not a scheme"))
                            })
                            .transpose()?,
                        hostname: r.hostname.clone(),
                        path: r.path.clone(),
                        port: r.port,
                        status: StatusCode::from_u16(r.status)
                            .map_err(|_| format!("{} is not a status", r.status))?,
                    })
                }
                Filter::Rewrite(r) => {
                    out.rewrite = Some(Rewrite {
                        hostname: r
                            .hostname
                            .as_deref()
                            .map(|h| {
                                HeaderValue::from_str(h)
                                    .map_err(|_| format!("'{h}' is not a host name"))
                            })
                            .transpose()?,
                        path: r.path.clone(),
                    })
                }
                // Not a change to the request: see routing::mirror.
                Filter::Mirror(_) => {}
            }
        }
        let replaces_prefix = |p: &Option<PathModifier>| matches!(p, Some(PathModifier::Prefix(_)));
        let needs_prefix = out
            .redirect
            .as_ref()
            .is_some_and(|r| replaces_prefix(&r.path))
            || out
                .rewrite
                .as_ref()
                .is_some_and(|r| replaces_prefix(&r.path));
        if needs_prefix && out.prefix.is_none() {
            return Err("ReplacePrefixMatch needs a path prefix match".into());
        }
        Ok(out)
    }

    /// Changes the request as the route says; a redirect is the proxy's
    /// own answer, returned instead. `port` is the port the client
    /// addressed (the Service's), for a redirect that keeps it.
    pub fn on_request<B>(&self, req: &mut Request<B>, port: u16) -> Option<Response<()>> {
        for ops in &self.request {
            ops.apply(req.headers_mut());
        }
        if let Some(r) = &self.redirect {
            return Some(self.redirect(r, req, port));
        }
        if let Some(r) = &self.rewrite {
            if let Some(host) = &r.hostname {
                req.headers_mut().insert(HOST, host.clone());
                if req.uri().authority().is_some()
                    && let Ok(a) = host.to_str().unwrap_or("").parse::<Authority>()
                {
                    let mut parts = req.uri().clone().into_parts();
                    parts.authority = Some(a);
                    if let Ok(uri) = Uri::from_parts(parts) {
                        *req.uri_mut() = uri;
                    }
                }
            }
            if let Some(p) = &r.path {
                let path = self.new_path(p, req.uri().path());
                let pq = match req.uri().query() {
                    Some(q) => format!("{path}?{q}"),
                    None => path,
                };
                if let Ok(pq) = pq.parse::<PathAndQuery>() {
                    let mut parts = req.uri().clone().into_parts();
                    parts.path_and_query = Some(pq);
                    if let Ok(uri) = Uri::from_parts(parts) {
                        *req.uri_mut() = uri;
                    }
                }
            }
        }
        None
    }

    /// Changes the response headers as the route says.
    pub fn on_response<B>(&self, rsp: &mut Response<B>) {
        for ops in &self.response {
            ops.apply(rsp.headers_mut());
        }
    }

    fn new_path(&self, p: &PathModifier, path: &str) -> String {
        match p {
            PathModifier::Full(full) => full.clone(),
            PathModifier::Prefix(with) => {
                let prefix = self.prefix.as_deref().unwrap_or("");
                let rest = path.strip_prefix(prefix).unwrap_or(path);
                // "/" replacing "/a" in "/a/b" gives "/b", not "//b".
                let with = with.trim_end_matches('/');
                match (with.is_empty(), rest.is_empty()) {
                    (true, true) => "/".to_string(),
                    (true, false) => rest.to_string(),
                    (false, _) => format!("{with}{rest}"),
                }
            }
        }
    }

    fn redirect<B>(&self, r: &Redirect, req: &Request<B>, port: u16) -> Response<()> {
        let scheme = r
            .scheme
            .clone()
            .or_else(|| req.uri().scheme().cloned())
            .unwrap_or(Scheme::HTTP);
        let host = r.hostname.clone().unwrap_or_else(|| request_host(req));
        // A new scheme brings its own well-known port; otherwise the port
        // the client addressed is kept.
        let port = r
            .port
            .or(if r.scheme.is_some() { None } else { Some(port) });
        let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
        let authority = match port {
            Some(p) if p != default_port => format!("{host}:{p}"),
            _ => host,
        };
        let path = match &r.path {
            Some(p) => self.new_path(p, req.uri().path()),
            None => req.uri().path().to_string(),
        };
        let location = match req.uri().query() {
            Some(q) => format!("{scheme}://{authority}{path}?{q}"),
            None => format!("{scheme}://{authority}{path}"),
        };
        let mut rsp = Response::new(());
        *rsp.status_mut() = r.status;
        if let Ok(v) = HeaderValue::from_str(&location) {
            rsp.headers_mut().insert(LOCATION, v);
        }
        rsp
    }
}

/// The host the client asked for, without its port.
fn request_host<B>(req: &Request<B>) -> String {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.host().to_string())
        .or_else(|| {
            let host = req.headers().get(HOST)?.to_str().ok()?;
            Some(
                host.parse::<Authority>()
                    .map(|a| a.host().to_string())
                    .unwrap_or_else(|_| host.to_string()),
            )
        });
    authority.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filters(fs: Vec<Filter>, prefix: Option<&str>) -> Filters {
        Filters::compile(&fs, prefix.map(str::to_string)).unwrap()
    }

    fn req(uri: &str, host: &str) -> Request<()> {
        Request::builder()
            .uri(uri)
            .header(HOST, host)
            .body(())
            .unwrap()
    }

    #[test]
    fn header_modifiers_set_add_and_remove() {
        let f = filters(
            vec![Filter::RequestHeaders(model::HeaderModifier {
                set: vec![model::Header {
                    name: "x-env".into(),
                    value: "canary".into(),
                }],
                add: vec![model::Header {
                    name: "x-tag".into(),
                    value: "b".into(),
                }],
                remove: vec!["x-drop".into()],
            })],
            None,
        );
        let mut r = req("/", "web");
        r.headers_mut().insert("x-env", "prod".parse().unwrap());
        r.headers_mut().insert("x-tag", "a".parse().unwrap());
        r.headers_mut().insert("x-drop", "1".parse().unwrap());
        assert!(f.on_request(&mut r, 80).is_none());
        assert_eq!(r.headers()["x-env"], "canary");
        let tags: Vec<_> = r.headers().get_all("x-tag").iter().collect();
        assert_eq!(tags, ["a", "b"]);
        assert!(!r.headers().contains_key("x-drop"));
    }

    #[test]
    fn redirect_keeps_what_it_does_not_replace() {
        let f = filters(
            vec![Filter::Redirect(model::Redirect {
                hostname: Some("new.shop".into()),
                path: Some(PathModifier::Prefix("/v2".into())),
                status: 301,
                ..Default::default()
            })],
            Some("/v1"),
        );
        let rsp = f
            .on_request(&mut req("/v1/items?id=3", "web:8080"), 8080)
            .unwrap();
        assert_eq!(rsp.status(), 301);
        assert_eq!(
            rsp.headers()[LOCATION],
            "http://new.shop:8080/v2/items?id=3"
        );
        let https = filters(
            vec![Filter::Redirect(model::Redirect {
                scheme: Some("https".into()),
                status: 302,
                ..Default::default()
            })],
            None,
        );
        let rsp = https.on_request(&mut req("/a", "web:8080"), 8080).unwrap();
        assert_eq!(rsp.headers()[LOCATION], "https://web/a");
    }

    #[test]
    fn rewrite_replaces_the_prefix_or_the_path_and_the_host() {
        let f = filters(
            vec![Filter::Rewrite(model::Rewrite {
                hostname: Some("api.internal".into()),
                path: Some(PathModifier::Prefix("/".into())),
            })],
            Some("/api"),
        );
        let mut r = req("/api/users?x=1", "web");
        f.on_request(&mut r, 80);
        assert_eq!(r.uri(), "/users?x=1");
        assert_eq!(r.headers()[HOST], "api.internal");
        let mut r = req("/api", "web");
        f.on_request(&mut r, 80);
        assert_eq!(r.uri().path(), "/");
        let full = filters(
            vec![Filter::Rewrite(model::Rewrite {
                hostname: None,
                path: Some(PathModifier::Full("/health".into())),
            })],
            None,
        );
        let mut r = req("/anything/else", "web");
        full.on_request(&mut r, 80);
        assert_eq!(r.uri(), "/health");
    }

    #[test]
    fn replace_prefix_without_a_prefix_match_is_refused() {
        let err = Filters::compile(
            &[Filter::Rewrite(model::Rewrite {
                hostname: None,
                path: Some(PathModifier::Prefix("/x".into())),
            })],
            None,
        )
        .unwrap_err();
        assert!(err.contains("ReplacePrefixMatch"), "{err}");
    }
}
