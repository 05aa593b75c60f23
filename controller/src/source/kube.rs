//! The Kubernetes API as the source of objects: one kube-runtime watcher
//! per kind (list, then watch; relists on 410 Gone and reconnects with
//! backoff are the watcher's), translated into index events. (Problems
//! found in custom resources go back as status conditions: crate::status.)

use std::fmt::Debug;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::Event;
use crate::crd::{
    AuthorizationPolicy, GRPCRoute, HTTPRoute, HTTPRouteGroup, ReferenceGrant, RetryPolicy,
    TrafficSplit,
};
use crate::index::{Kind, Object};

/// Starts a watcher for every kind.
pub fn spawn(client: Client, events: mpsc::Sender<Event>) {
    watch_all::<Namespace>(&client, &events, Object::Namespace, Kind::Namespace);
    watch_all::<Service>(&client, &events, Object::Service, Kind::Service);
    watch_all::<EndpointSlice>(&client, &events, Object::EndpointSlice, Kind::EndpointSlice);
    watch_all::<Pod>(&client, &events, Object::Pod, Kind::Pod);
    watch_all::<TrafficSplit>(&client, &events, Object::TrafficSplit, Kind::TrafficSplit);
    watch_all::<HTTPRouteGroup>(
        &client,
        &events,
        Object::HTTPRouteGroup,
        Kind::HTTPRouteGroup,
    );
    watch_all::<RetryPolicy>(&client, &events, Object::RetryPolicy, Kind::RetryPolicy);
    watch_all::<AuthorizationPolicy>(
        &client,
        &events,
        Object::AuthorizationPolicy,
        Kind::AuthorizationPolicy,
    );
    tokio::spawn(watch_gateway_api(client, events));
}

/// The Gateway API's kinds are watched when their CRDs are installed (they
/// are the user's, and optional). Without them the kinds count as synced
/// and empty, so the controller still becomes ready; installing them later
/// takes a controller restart, which the log says.
async fn watch_gateway_api(client: Client, events: mpsc::Sender<Event>) {
    let served = |group_version: &'static str, kind: &'static str| {
        let client = client.clone();
        async move {
            client
                .list_api_group_resources(group_version)
                .await
                .is_ok_and(|list| list.resources.iter().any(|r| r.kind == kind))
        }
    };
    let kinds = [
        (
            Kind::HTTPRoute,
            served("gateway.networking.k8s.io/v1", "HTTPRoute").await,
        ),
        (
            Kind::GRPCRoute,
            served("gateway.networking.k8s.io/v1", "GRPCRoute").await,
        ),
        (
            Kind::ReferenceGrant,
            served("gateway.networking.k8s.io/v1beta1", "ReferenceGrant").await,
        ),
    ];
    for (kind, installed) in kinds {
        if installed {
            match kind {
                Kind::HTTPRoute => {
                    watch_all::<HTTPRoute>(&client, &events, Object::HTTPRoute, kind)
                }
                Kind::GRPCRoute => {
                    watch_all::<GRPCRoute>(&client, &events, Object::GRPCRoute, kind)
                }
                _ => watch_all::<ReferenceGrant>(&client, &events, Object::ReferenceGrant, kind),
            }
            continue;
        }
        tracing::info!(
            kind = kind.as_str(),
            "the Gateway API CRD for {}s is not installed: not watched (restart the controller after installing it)",
            kind.as_str()
        );
        for e in [Event::Reset(kind, Vec::new()), Event::Synced(kind)] {
            if events.send(e).await.is_err() {
                return;
            }
        }
    }
}

fn watch_all<K>(client: &Client, events: &mpsc::Sender<Event>, wrap: fn(K) -> Object, kind: Kind)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::all(client.clone());
    let events = events.clone();
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        futures_util::pin_mut!(stream);
        let (mut buffer, mut synced) = (Vec::new(), false);
        while let Some(ev) = stream.next().await {
            let out = match ev {
                Ok(watcher::Event::Init) => {
                    buffer.clear();
                    continue;
                }
                Ok(watcher::Event::InitApply(o)) => {
                    buffer.push(wrap(o));
                    continue;
                }
                Ok(watcher::Event::InitDone) => {
                    let mut out = vec![Event::Reset(kind, std::mem::take(&mut buffer))];
                    if !synced {
                        synced = true;
                        out.push(Event::Synced(kind));
                    }
                    out
                }
                Ok(watcher::Event::Apply(o)) => vec![Event::Apply(wrap(o))],
                Ok(watcher::Event::Delete(o)) => vec![Event::Delete(wrap(o).object_ref())],
                Err(e) => {
                    let hint = if matches!(
                        kind,
                        Kind::TrafficSplit
                            | Kind::HTTPRouteGroup
                            | Kind::RetryPolicy
                            | Kind::AuthorizationPolicy
                    ) {
                        " (are Weft's CRDs installed? `weft install` or the Helm chart adds them)"
                    } else if kind.is_gateway_route() || kind == Kind::ReferenceGrant {
                        " (does the controller's ServiceAccount have list/watch on the Gateway API's routes?)"
                    } else {
                        " (does the controller's ServiceAccount have list/watch on it?)"
                    };
                    vec![Event::Error {
                        source: "kubernetes".into(),
                        message: format!("watching {}s failed: {e}{hint}; retrying", kind.as_str()),
                    }]
                }
            };
            for e in out {
                if events.send(e).await.is_err() {
                    return;
                }
            }
        }
    });
}
