//! A fake Kubernetes API server, small but speaking the real list/watch
//! protocol, so that kube-rs's real client and watcher code runs against it:
//!
//! - list: `{kind: XList, metadata: {resourceVersion}, items}`;
//! - watch (`?watch=true&resourceVersion=N`): newline-delimited
//!   `{type, object}` events after N, live, with BOOKMARK events when asked;
//!   a resourceVersion older than the compaction point gets a 410 Gone
//!   `ERROR` event, as etcd compaction does;
//! - get / create / replace (optimistic concurrency on resourceVersion) and
//!   merge-patch of `/status`;
//! - `/version`, SelfSubjectAccessReviews (allowed unless denied with
//!   [`FakeApi::deny`]), the API server's proxy to services and pods
//!   (answers set with [`FakeApi::proxy_answer`]), server-side dry runs and
//!   a stand-in for the injector webhook ([`FakeApi::set_injects`]), for
//!   `weft check`;
//! - test controls: apply, delete, compact, and drop every open watch.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::broadcast;

type Body = BoxBody<Bytes, Infallible>;

/// (api path prefix, plural) of a resource, e.g. ("/api/v1", "services").
type Resource = (String, String);
/// (resource, namespace, name)
type ObjKey = (Resource, String, String);

#[derive(Clone, Debug)]
struct WatchEvent {
    rv: u64,
    resource: Resource,
    namespace: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<ObjKey, Value>,
    log: Vec<WatchEvent>,
    /// Watches from before this resourceVersion get 410 Gone.
    compacted: u64,
    /// Status patches received, per (plural, namespace, name).
    status_writes: BTreeMap<(String, String, String), usize>,
    /// `/version`'s (major, minor).
    version: (String, String),
    /// Access reviews answered "not allowed": (verb, group, resource).
    denied: Vec<(String, String, String)>,
    /// Proxy path (after `/proxy`, with the target) -> (status, body).
    proxied: BTreeMap<String, (u16, String)>,
    /// New pods get a weft-proxy container, as the injector webhook would
    /// give them (a stand-in for admission).
    injects: bool,
}

#[derive(Clone)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<WatchEvent>,
    /// Incremented to end every open watch.
    drops: broadcast::Sender<()>,
    pub addr: SocketAddr,
}

/// The path prefix and plural of an object, from its apiVersion and kind.
fn resource_of(api_version: &str, kind: &str) -> Resource {
    let prefix = if api_version == "v1" {
        "/api/v1".to_string()
    } else {
        format!("/apis/{api_version}")
    };
    let plural = match kind {
        "EndpointSlice" => "endpointslices".to_string(),
        "RetryPolicy" => "retrypolicies".to_string(),
        k => format!("{}s", k.to_ascii_lowercase()),
    };
    (prefix, plural)
}

fn kind_of(plural: &str) -> &'static str {
    match plural {
        "namespaces" => "Namespace",
        "services" => "Service",
        "pods" => "Pod",
        "endpointslices" => "EndpointSlice",
        "trafficsplits" => "TrafficSplit",
        "httproutegroups" => "HTTPRouteGroup",
        "retrypolicies" => "RetryPolicy",
        "authorizationpolicies" => "AuthorizationPolicy",
        "leases" => "Lease",
        "deployments" => "Deployment",
        "secrets" => "Secret",
        "customresourcedefinitions" => "CustomResourceDefinition",
        "mutatingwebhookconfigurations" => "MutatingWebhookConfiguration",
        _ => "Unknown",
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap()
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code})
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

impl FakeApi {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (events, _) = broadcast::channel(4096);
        let (drops, _) = broadcast::channel(16);
        let api = FakeApi {
            state: Arc::default(),
            events,
            drops,
            addr: listener.local_addr().unwrap(),
        };
        let server = api.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let api = server.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let api = api.clone();
                        async move { Ok::<_, Infallible>(api.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        api
    }

    /// What `/version` answers.
    pub fn set_version(&self, major: &str, minor: &str) {
        self.state.lock().unwrap().version = (major.into(), minor.into());
    }

    /// Whether new pods come back with weft-proxy added (the injector
    /// webhook reachable) or as they were sent (not reachable).
    pub fn set_injects(&self, injects: bool) {
        self.state.lock().unwrap().injects = injects;
    }

    /// SelfSubjectAccessReviews for this verb on this resource are refused.
    pub fn deny(&self, verb: &str, group: &str, resource: &str) {
        self.state
            .lock()
            .unwrap()
            .denied
            .push((verb.into(), group.into(), resource.into()));
    }

    /// What a GET through the API server's proxy answers, e.g. for
    /// `services/https:weft-webhook:443/proxy/inject` in namespace `weft`:
    /// `proxy_answer("weft", "services", "https:weft-webhook:443", "/inject", 405, "")`.
    /// Unset targets answer 503, as an unreachable backend does.
    pub fn proxy_answer(
        &self,
        ns: &str,
        kind: &str,
        target: &str,
        path: &str,
        status: u16,
        body: &str,
    ) {
        self.state
            .lock()
            .unwrap()
            .proxied
            .insert(format!("{ns}/{kind}/{target}{path}"), (status, body.into()));
    }

    pub fn client(&self) -> kube::Client {
        let mut config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        // A 503 here is an answer under test, not a reason to wait.
        config.default_retry = false;
        kube::Client::try_from(config).unwrap()
    }

    /// Creates or replaces an object (YAML), as `kubectl apply` would.
    pub fn apply(&self, yaml: &str) {
        for doc in yaml.split("\n---\n") {
            let obj: Value = serde_yaml_ng::from_str(doc).unwrap();
            self.store(obj);
        }
    }

    /// Creates or replaces an object given as JSON (for loading many
    /// objects without parsing YAML).
    pub fn apply_object(&self, obj: Value) {
        self.store(obj);
    }

    fn store(&self, mut obj: Value) -> Value {
        let mut st = self.state.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        let resource = resource_of(
            obj["apiVersion"].as_str().unwrap(),
            obj["kind"].as_str().unwrap(),
        );
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        let key = (resource.clone(), ns.clone(), name.clone());
        let existed = st.objects.contains_key(&key);
        let meta = obj["metadata"].as_object_mut().unwrap();
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        meta.entry("uid")
            .or_insert(json!(format!("uid-{name}-{rv}")));
        meta.entry("creationTimestamp")
            .or_insert(json!("2026-01-01T00:00:00Z"));
        st.objects.insert(key, obj.clone());
        let ev = WatchEvent {
            rv,
            resource,
            namespace: ns,
            kind: if existed { "MODIFIED" } else { "ADDED" },
            object: obj.clone(),
        };
        st.log.push(ev.clone());
        let _ = self.events.send(ev);
        obj
    }

    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) {
        let mut st = self.state.lock().unwrap();
        let resource = resource_of(api_version, kind);
        let Some(mut obj) = st
            .objects
            .remove(&(resource.clone(), namespace.into(), name.into()))
        else {
            return;
        };
        st.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        let ev = WatchEvent {
            rv: st.rv,
            resource,
            namespace: namespace.into(),
            kind: "DELETED",
            object: obj,
        };
        st.log.push(ev.clone());
        let _ = self.events.send(ev);
    }

    /// Forgets history: watches resuming from before now get 410 Gone.
    pub fn compact(&self) {
        let mut st = self.state.lock().unwrap();
        st.compacted = st.rv + 1;
        st.log.clear();
    }

    /// Drops the history before now, as etcd compaction at the current
    /// revision does: a watch from the latest resourceVersion (a fresh
    /// list's) still works, an older one gets 410 Gone.
    pub fn compact_to_now(&self) {
        let mut st = self.state.lock().unwrap();
        st.compacted = st.rv;
        st.log.clear();
    }

    /// Ends every open watch connection, as a restarting API server would.
    pub fn drop_watches(&self) {
        let _ = self.drops.send(());
    }

    pub fn status_writes(&self, plural: &str, namespace: &str, name: &str) -> usize {
        let st = self.state.lock().unwrap();
        st.status_writes
            .get(&(plural.into(), namespace.into(), name.into()))
            .copied()
            .unwrap_or(0)
    }

    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let st = self.state.lock().unwrap();
        st.objects
            .get(&(
                resource_of(api_version, kind),
                namespace.into(),
                name.into(),
            ))
            .cloned()
    }

    /// The API server's pod proxy: `GET .../pods/<name>:<port>/proxy<path>`
    /// to the pod's IP at that port, the answer streamed back. `None` when
    /// no such pod has an IP (then the caller answers 503).
    async fn forward_to_pod(&self, ns: &str, target: &str, path: &str) -> Option<Response<Body>> {
        let (name, port) = target.rsplit_once(':').unwrap_or((target, "80"));
        let ip = self
            .get("v1", "Pod", ns, name)?
            .pointer("/status/podIP")?
            .as_str()?
            .to_string();
        let addr = format!("{ip}:{port}");
        let Ok(stream) = tokio::net::TcpStream::connect(&addr).await else {
            let body = format!(
                "error trying to reach service: dial tcp {addr}: connect: connection refused"
            );
            return Some(
                Response::builder()
                    .status(503)
                    .body(Full::new(Bytes::from(body)).boxed())
                    .unwrap(),
            );
        };
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(conn);
        let req = Request::get(if path.is_empty() { "/" } else { path })
            .header(http::header::HOST, addr)
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let rsp = send.send_request(req).await.ok()?;
        // Stream the body through (tap never ends on its own).
        Some(rsp.map(|b| {
            let s = futures_util::StreamExt::filter_map(
                http_body_util::BodyStream::new(b),
                |f| async move { f.ok().map(Ok::<_, Infallible>) },
            );
            StreamBody::new(s).boxed()
        }))
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let query: BTreeMap<String, String> = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        if path == "/version" {
            let st = self.state.lock().unwrap();
            let (major, minor) = if st.version.0.is_empty() {
                ("1".to_string(), "31".to_string())
            } else {
                st.version.clone()
            };
            return json_response(
                StatusCode::OK,
                &json!({"major": major, "minor": minor, "gitVersion": format!("v{major}.{minor}.0"), "platform": "linux/amd64"}),
            );
        }
        if let Some(r) = path.strip_prefix("/api/v1/namespaces/") {
            // namespaces/NS/(services|pods)/TARGET/proxy/PATH
            let parts: Vec<&str> = r.splitn(5, '/').collect();
            if parts.len() >= 4 && parts[3] == "proxy" {
                let rest = parts.get(4).map(|p| format!("/{p}")).unwrap_or_default();
                let key = format!("{}/{}/{}{rest}", parts[0], parts[1], parts[2]);
                let answer = self.state.lock().unwrap().proxied.get(&key).cloned();
                if answer.is_none() && parts[1] == "pods" {
                    let query = req
                        .uri()
                        .query()
                        .map(|q| format!("?{q}"))
                        .unwrap_or_default();
                    if let Some(rsp) = self
                        .forward_to_pod(parts[0], parts[2], &format!("{rest}{query}"))
                        .await
                    {
                        return rsp;
                    }
                }
                let (status, body) = answer.unwrap_or((503, "no endpoints available".into()));
                return Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::from(body)).boxed())
                    .unwrap();
            }
        }
        if path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews" {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let mut review: Value = serde_json::from_slice(&body).unwrap();
            let attrs = &review["spec"]["resourceAttributes"];
            let asked = (
                attrs["verb"].as_str().unwrap_or("").to_string(),
                attrs["group"].as_str().unwrap_or("").to_string(),
                attrs["resource"].as_str().unwrap_or("").to_string(),
            );
            let allowed = !self.state.lock().unwrap().denied.contains(&asked);
            review["status"] = json!({"allowed": allowed});
            return json_response(StatusCode::CREATED, &review);
        }
        let (prefix, rest) = if let Some(r) = path.strip_prefix("/api/v1/") {
            ("/api/v1".to_string(), r.to_string())
        } else if let Some(r) = path.strip_prefix("/apis/") {
            let mut parts = r.splitn(3, '/');
            let (g, v, rest) = (
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
            );
            (format!("/apis/{g}/{v}"), rest.to_string())
        } else {
            return json_response(
                StatusCode::NOT_FOUND,
                &status_body(404, "NotFound", "no such path"),
            );
        };
        let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let (ns, plural, name, sub) = match segs.as_slice() {
            [plural] => (None, *plural, None, None),
            // A cluster-scoped object by name (including a namespace).
            [plural, name] => (None, *plural, Some(*name), None),
            ["namespaces", ns, plural] => (Some(*ns), *plural, None, None),
            ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name), None),
            ["namespaces", ns, plural, name, sub] => (Some(*ns), *plural, Some(*name), Some(*sub)),
            _ => {
                return json_response(
                    StatusCode::NOT_FOUND,
                    &status_body(404, "NotFound", "no such path"),
                );
            }
        };
        let resource = (prefix.clone(), plural.to_string());
        let method = req.method().clone();
        match (method, name) {
            (Method::GET, None) if query.get("watch").is_some_and(|w| w == "true" || w == "1") => {
                self.watch(resource, ns.map(String::from), &query)
            }
            (Method::GET, None) => {
                let st = self.state.lock().unwrap();
                let items: Vec<Value> = st
                    .objects
                    .iter()
                    .filter(|((r, o_ns, _), _)| *r == resource && ns.is_none_or(|n| n == o_ns))
                    .map(|(_, o)| o.clone())
                    .collect();
                let api_version = prefix
                    .trim_start_matches("/api/")
                    .trim_start_matches("/apis/");
                json_response(
                    StatusCode::OK,
                    &json!({"apiVersion": api_version, "kind": format!("{}List", kind_of(plural)), "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
                )
            }
            (Method::GET, Some(name)) => {
                let st = self.state.lock().unwrap();
                match st
                    .objects
                    .get(&(resource, ns.unwrap_or("").into(), name.into()))
                {
                    Some(o) => json_response(StatusCode::OK, o),
                    None => json_response(
                        StatusCode::NOT_FOUND,
                        &status_body(404, "NotFound", &format!("{plural} \"{name}\" not found")),
                    ),
                }
            }
            (Method::POST, None) => {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let mut obj: Value = serde_json::from_slice(&body).unwrap();
                if plural == "pods" && self.state.lock().unwrap().injects {
                    let inits = obj["spec"]["initContainers"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    let mut with_proxy = vec![json!({"name": "weft-proxy", "image": "weft-proxy"})];
                    with_proxy.extend(inits);
                    obj["spec"]["initContainers"] = json!(with_proxy);
                }
                if query.get("dryRun").is_some_and(|d| d == "All") {
                    // Admitted, not stored.
                    let obj = with_ns(obj, ns);
                    return json_response(StatusCode::CREATED, &obj);
                }
                let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
                let exists = self.state.lock().unwrap().objects.contains_key(&(
                    resource,
                    ns.unwrap_or("").into(),
                    name.clone(),
                ));
                if exists {
                    return json_response(
                        StatusCode::CONFLICT,
                        &status_body(
                            409,
                            "AlreadyExists",
                            &format!("{plural} \"{name}\" already exists"),
                        ),
                    );
                }
                json_response(StatusCode::CREATED, &self.store(with_ns(obj, ns)))
            }
            (Method::PUT, Some(name)) => {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let obj: Value = serde_json::from_slice(&body).unwrap();
                let current = self
                    .state
                    .lock()
                    .unwrap()
                    .objects
                    .get(&(resource, ns.unwrap_or("").into(), name.into()))
                    .map(|o| o["metadata"]["resourceVersion"].clone());
                match current {
                    None => json_response(
                        StatusCode::NOT_FOUND,
                        &status_body(404, "NotFound", "not found"),
                    ),
                    Some(rv) if obj["metadata"]["resourceVersion"] != rv => json_response(
                        StatusCode::CONFLICT,
                        &status_body(
                            409,
                            "Conflict",
                            "the object has been modified; please apply your changes to the latest version",
                        ),
                    ),
                    Some(_) => json_response(StatusCode::OK, &self.store(with_ns(obj, ns))),
                }
            }
            (Method::PATCH, Some(name)) if sub == Some("status") => {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let patch: Value = serde_json::from_slice(&body).unwrap();
                let key = (resource, ns.unwrap_or("").to_string(), name.to_string());
                let current = self.state.lock().unwrap().objects.get(&key).cloned();
                let Some(mut obj) = current else {
                    return json_response(
                        StatusCode::NOT_FOUND,
                        &status_body(404, "NotFound", "not found"),
                    );
                };
                merge(&mut obj, &json!({"status": patch["status"].clone()}));
                *self
                    .state
                    .lock()
                    .unwrap()
                    .status_writes
                    .entry((plural.to_string(), key.1.clone(), key.2.clone()))
                    .or_default() += 1;
                json_response(StatusCode::OK, &self.store(obj))
            }
            _ => json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &status_body(405, "MethodNotAllowed", "not supported by the fake"),
            ),
        }
    }

    fn watch(
        &self,
        resource: Resource,
        ns: Option<String>,
        query: &BTreeMap<String, String>,
    ) -> Response<Body> {
        let from: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let bookmarks = query
            .get("allowWatchBookmarks")
            .is_some_and(|v| v == "true");
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(290u64);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(256);
        let line = |v: Value| Ok(Frame::data(Bytes::from(format!("{v}\n"))));
        let matches = {
            let (resource, ns) = (resource.clone(), ns.clone());
            move |e: &WatchEvent| {
                e.resource == resource && ns.as_ref().is_none_or(|n| *n == e.namespace)
            }
        };
        let (backlog, gone, rv_now) = {
            let st = self.state.lock().unwrap();
            let gone = from != 0 && from < st.compacted;
            let backlog: Vec<WatchEvent> = st
                .log
                .iter()
                .filter(|e| e.rv > from && matches(e))
                .cloned()
                .collect();
            (backlog, gone, st.rv)
        };
        let mut live = self.events.subscribe();
        let mut drops = self.drops.subscribe();
        let kind = kind_of(&resource.1);
        let api_version = resource
            .0
            .trim_start_matches("/api/")
            .trim_start_matches("/apis/")
            .to_string();
        tokio::spawn(async move {
            if gone {
                let _ = tx
                    .send(line(json!({"type": "ERROR", "object": status_body(410, "Expired", &format!("too old resource version: {from}"))})))
                    .await;
                return;
            }
            let mut last = if from == 0 { rv_now } else { from };
            for e in backlog {
                last = e.rv;
                if tx
                    .send(line(json!({"type": e.kind, "object": e.object})))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let deadline = tokio::time::sleep(Duration::from_secs(timeout));
            tokio::pin!(deadline);
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = &mut deadline => return,
                    _ = drops.recv() => return,
                    ev = live.recv() => match ev {
                        Ok(e) if matches(&e) && e.rv > last => {
                            last = e.rv;
                            if tx.send(line(json!({"type": e.kind, "object": e.object}))).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    },
                    _ = tick.tick(), if bookmarks => {
                        let bm = json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": last.to_string()}}});
                        if tx.send(line(bm)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed())
            .unwrap()
    }
}

fn with_ns(mut obj: Value, ns: Option<&str>) -> Value {
    if let Some(ns) = ns {
        obj["metadata"]["namespace"] = json!(ns);
    }
    obj
}
