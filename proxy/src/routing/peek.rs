//! A gRPC status that only the trailers carry, read before the response
//! goes to the client, so that a retry can act on it.
//!
//! A gRPC server that fails a call after sending headers puts
//! `grpc-status` in the trailers, not the headers. To retry on it, a try
//! reads the first frame of the body and, when that is data, the next one
//! if it is already there: a unary response's message and trailers arrive
//! together. A response still streaming after that is not waited for (it is
//! judged by its headers, as before); the frames read are handed on to the
//! client unchanged. Only tries under a retry with gRPC conditions peek.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::FutureExt;
use http::Response;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::http::body::{Body, BoxError};
use crate::http::headers::{grpc_status, has_grpc_content_type};
use crate::upstream::ResponseBody;

/// Whether a response is gRPC and still has to tell its status.
pub fn needs_peek(rsp: &Response<ResponseBody>) -> bool {
    has_grpc_content_type(rsp.headers())
        && grpc_status(rsp.headers()).is_none()
        && !rsp.body().is_end_stream()
}

/// Reads what of `rsp`'s body is at hand for its trailers: the response
/// with the frames read put back in front, and the gRPC status if the
/// trailers came. `Err` when the stream broke before any frame.
pub async fn grpc_status_of(
    rsp: Response<ResponseBody>,
) -> Result<(Response<ResponseBody>, Option<u16>), BoxError> {
    let (parts, mut body) = rsp.into_parts();
    let mut read = VecDeque::with_capacity(2);
    let mut code = None;
    match body.frame().await {
        None => {}
        Some(Err(e)) => return Err(e),
        Some(Ok(first)) => {
            let is_data = first.is_data();
            code = first.trailers_ref().and_then(grpc_status);
            read.push_back(Ok(first));
            // The trailers of a unary response follow its message at once;
            // anything later is a stream, not waited for.
            if is_data && let Some(Some(next)) = body.frame().now_or_never() {
                if let Ok(f) = &next {
                    code = f.trailers_ref().and_then(grpc_status);
                }
                read.push_back(next);
            }
        }
    }
    let peeked = Peeked { read, rest: body };
    Ok((
        Response::from_parts(parts, ResponseBody::new(Body::Boxed(Box::pin(peeked)))),
        code,
    ))
}

/// A body whose first frames were read already.
struct Peeked {
    read: VecDeque<Result<Frame<Bytes>, BoxError>>,
    rest: ResponseBody,
}

impl HttpBody for Peeked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(f) = self.read.pop_front() {
            return Poll::Ready(Some(f));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.read.is_empty() {
            self.rest.size_hint()
        } else {
            SizeHint::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use http_body_util::{StreamBody, combinators::BoxBody};

    fn grpc_response(frames: Vec<Frame<Bytes>>) -> Response<ResponseBody> {
        let stream = futures_util::stream::iter(frames.into_iter().map(Ok::<_, BoxError>));
        let body: BoxBody<Bytes, BoxError> = BoxBody::new(StreamBody::new(stream));
        Response::builder()
            .header("content-type", "application/grpc")
            .body(ResponseBody::new(Body::Boxed(Box::pin(body))))
            .unwrap()
    }

    fn trailers(code: &str) -> Frame<Bytes> {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", code.parse().unwrap());
        Frame::trailers(t)
    }

    async fn all_frames(rsp: Response<ResponseBody>) -> (Vec<Bytes>, Option<HeaderMap>) {
        let collected = rsp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        (vec![collected.to_bytes()], trailers)
    }

    #[tokio::test]
    async fn a_unary_responses_trailers_are_read_and_its_frames_kept() {
        let rsp = grpc_response(vec![
            Frame::data(Bytes::from_static(b"msg")),
            trailers("14"),
        ]);
        assert!(needs_peek(&rsp));
        let (rsp, code) = grpc_status_of(rsp).await.unwrap();
        assert_eq!(code, Some(14));
        let (data, t) = all_frames(rsp).await;
        assert_eq!(data, vec![Bytes::from_static(b"msg")]);
        assert_eq!(t.unwrap()["grpc-status"], "14");
    }

    #[tokio::test]
    async fn trailers_without_data_are_read() {
        let rsp = grpc_response(vec![trailers("0")]);
        let (rsp, code) = grpc_status_of(rsp).await.unwrap();
        assert_eq!(code, Some(0));
        assert_eq!(all_frames(rsp).await.1.unwrap()["grpc-status"], "0");
    }

    #[tokio::test]
    async fn a_stream_still_running_is_not_waited_for() {
        // Data, then nothing yet: the peek returns without a status and the
        // client still gets every frame once they come.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        tx.send(Ok(Frame::data(Bytes::from_static(b"one"))))
            .await
            .unwrap();
        let body: BoxBody<Bytes, BoxError> = BoxBody::new(StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ));
        let rsp = Response::builder()
            .header("content-type", "application/grpc")
            .body(ResponseBody::new(Body::Boxed(Box::pin(body))))
            .unwrap();
        let (rsp, code) = grpc_status_of(rsp).await.unwrap();
        assert_eq!(code, None);
        tx.send(Ok(Frame::data(Bytes::from_static(b"two"))))
            .await
            .unwrap();
        tx.send(Ok(trailers("0"))).await.unwrap();
        drop(tx);
        let (data, t) = all_frames(rsp).await;
        assert_eq!(data, vec![Bytes::from_static(b"onetwo")]);
        assert_eq!(t.unwrap()["grpc-status"], "0");
    }

    #[test]
    fn only_grpc_responses_without_a_status_are_peeked() {
        let plain = Response::new(ResponseBody::new(Body::from(Bytes::from_static(b"x"))));
        assert!(!needs_peek(&plain));
        let trailers_only = Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "14")
            .body(ResponseBody::new(Body::Empty))
            .unwrap();
        assert!(!needs_peek(&trailers_only));
    }
}
