//! What goes wrong between receiving a request and returning a response,
//! and how each failure is shown to the client: a 4xx or 5xx with a
//! `weft-proxy-error` header naming the cause.

use http::{HeaderValue, Response, StatusCode};

use crate::authz::Refused;
use crate::http::PROXY_ERROR_HEADER;
use crate::http::body::Body;
use crate::routing::NoEndpoint;
use crate::routing::attempt::RouteError;
use crate::upstream::{self, ConnectError, ResponseBody};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("upstream reset or closed the connection")]
    UpstreamReset,
    #[error("upstream sent an invalid response: {0}")]
    UpstreamProtocol(String),
    #[error("{0} is not supported over HTTP/2")]
    Unsupported(&'static str),
    #[error("the proxy is shutting down")]
    Draining,
    #[error(transparent)]
    NoEndpoint(#[from] NoEndpoint),
    #[error("request timed out after {0:?} (the route's or RetryPolicy's timeout)")]
    Timeout(std::time::Duration),
    #[error("no response within the per-try timeout of {0:?}")]
    PerTryTimeout(std::time::Duration),
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error(
        "overloaded: the proxy is at its limit of requests in flight (WEFT_PROXY_MAX_IN_FLIGHT_REQUESTS)"
    )]
    Overloaded,
    #[error(
        "the request has both Content-Length and Transfer-Encoding, or several Content-Lengths"
    )]
    AmbiguousLength,
}

impl From<upstream::Error> for ProxyError {
    fn from(e: upstream::Error) -> Self {
        match e {
            upstream::Error::Connect(c) => ProxyError::Connect(c),
            upstream::Error::Reset => ProxyError::UpstreamReset,
            upstream::Error::Protocol(p) => ProxyError::UpstreamProtocol(p),
            upstream::Error::Unsupported(what) => ProxyError::Unsupported(what),
        }
    }
}

impl From<RouteError> for ProxyError {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::NoEndpoint(n) => ProxyError::NoEndpoint(n),
            RouteError::Upstream(u) => u.into(),
            RouteError::Timeout(t) => ProxyError::Timeout(t),
            RouteError::PerTryTimeout(t) => ProxyError::PerTryTimeout(t),
        }
    }
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Connect(ConnectError::Timeout(..))
            | ProxyError::Timeout(_)
            | ProxyError::PerTryTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Connect(_)
            | ProxyError::UpstreamReset
            | ProxyError::UpstreamProtocol(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
            // The Gateway API's answers: no rule matches, 404; a rule with
            // no backend or an invalid backend reference, 500.
            ProxyError::NoEndpoint(NoEndpoint::NoRoute { .. }) => StatusCode::NOT_FOUND,
            ProxyError::NoEndpoint(NoEndpoint::Unresolved { .. }) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ProxyError::Draining
            | ProxyError::NoEndpoint(NoEndpoint::NoEndpoints { .. })
            | ProxyError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::AmbiguousLength => StatusCode::BAD_REQUEST,
            ProxyError::Refused(Refused::Forbidden { .. }) => StatusCode::FORBIDDEN,
            ProxyError::Refused(Refused::RateLimited { .. }) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// A short, stable name for the `error` metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::Connect(c) => c.kind(),
            ProxyError::UpstreamReset => "upstream_reset",
            ProxyError::UpstreamProtocol(_) => "upstream_protocol",
            ProxyError::Unsupported(_) => "unsupported",
            ProxyError::Draining => "draining",
            ProxyError::Overloaded => "overloaded",
            ProxyError::AmbiguousLength => "ambiguous_length",
            ProxyError::Timeout(_) => "timeout",
            ProxyError::PerTryTimeout(_) => "per_try_timeout",
            ProxyError::NoEndpoint(NoEndpoint::NoRoute { .. }) => "no_route",
            ProxyError::NoEndpoint(NoEndpoint::NoEndpoints { .. }) => "no_endpoints",
            ProxyError::NoEndpoint(NoEndpoint::Unresolved { .. }) => "unresolved_backend",
            ProxyError::Refused(Refused::Forbidden { .. }) => "forbidden",
            ProxyError::Refused(Refused::RateLimited { .. }) => "rate_limited",
        }
    }

    /// The response the client sees.
    pub fn to_response(&self) -> Response<ResponseBody> {
        let mut rsp = Response::new(ResponseBody::new(Body::from(self.to_string())));
        *rsp.status_mut() = self.status();
        let value = HeaderValue::from_str(&self.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("proxy error"));
        rsp.headers_mut().insert(PROXY_ERROR_HEADER, value);
        rsp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
        if let ProxyError::Refused(Refused::RateLimited { retry_after, .. }) = self {
            // Whole seconds, rounded up: a client retrying then gets a token.
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            rsp.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        rsp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn statuses_by_cause() {
        let addr = "198.18.0.2:80".parse().unwrap();
        let cases = [
            (
                ProxyError::Connect(ConnectError::Refused(addr)),
                502,
                "connect_refused",
            ),
            (
                ProxyError::Connect(ConnectError::Timeout(addr, Duration::from_secs(1))),
                504,
                "connect_timeout",
            ),
            (ProxyError::UpstreamReset, 502, "upstream_reset"),
            (ProxyError::Unsupported("CONNECT"), 501, "unsupported"),
            (ProxyError::Draining, 503, "draining"),
            (
                ProxyError::Refused(Refused::Forbidden {
                    policy: "shop/deny-batch".into(),
                }),
                403,
                "forbidden",
            ),
        ];
        for (err, status, kind) in cases {
            let rsp = err.to_response();
            assert_eq!(rsp.status().as_u16(), status, "{err}");
            assert_eq!(err.kind(), kind);
            assert_eq!(rsp.headers()[PROXY_ERROR_HEADER], err.to_string().as_str());
        }
    }

    #[test]
    fn rate_limited_says_when_to_retry() {
        let err = ProxyError::Refused(Refused::RateLimited {
            policy: "shop/readers".into(),
            retry_after: Duration::from_millis(1200),
        });
        let rsp = err.to_response();
        assert_eq!(rsp.status().as_u16(), 429);
        assert_eq!(rsp.headers()[http::header::RETRY_AFTER], "2");
        assert_eq!(err.kind(), "rate_limited");
    }
}
