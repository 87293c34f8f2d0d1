//! The body deadline: a request body must be complete a fixed time after its head.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_http::error::PayloadError;
use actix_http::BoxedPayloadStream;
use actix_web::dev::{Payload, ServiceRequest};
use actix_web::HttpMessage as _;

/// A request body that was not complete in time.
#[derive(Debug, thiserror::Error)]
#[error("request body not complete within {} s", .limit.as_secs())]
pub struct BodyTimedOut {
    limit: Duration,
}

/// The body-deadline error inside an extractor's error, if that is what it is.
pub(crate) fn body_timed_out(e: &actix_web::Error) -> Option<&BodyTimedOut> {
    match e.as_error::<PayloadError>()? {
        PayloadError::Io(io) => io.get_ref()?.downcast_ref::<BodyTimedOut>(),
        _ => None,
    }
}

/// Makes `req`'s body fail with [`BodyTimedOut`] if it is not complete `limit` from now (the
/// end of its head): the handler's body extractor then fails, and it answers 408.
pub(crate) fn with_body_deadline(mut req: ServiceRequest, limit: Duration) -> ServiceRequest {
    let body = req.take_payload();
    if matches!(body, Payload::None) {
        req.set_payload(body);
        return req;
    }
    let timed: BoxedPayloadStream = Box::pin(TimedBody {
        body,
        deadline: Box::pin(tokio::time::sleep(limit)),
        limit,
        done: false,
    });
    req.set_payload(Payload::from(timed));
    req
}

struct TimedBody {
    body: Payload,
    deadline: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
    done: bool,
}

impl futures_core::Stream for TimedBody {
    type Item = Result<actix_web::web::Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        // The deadline first: a body trickled a byte at a time must not outrun it.
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.done = true;
            let late = BodyTimedOut { limit: this.limit };
            return Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                late,
            )))));
        }
        let next = Pin::new(&mut this.body).poll_next(cx);
        if matches!(next, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.done = true;
        }
        next
    }
}
