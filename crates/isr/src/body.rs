//! The response body isr sends: cached bytes (zero-copy), or an origin body streamed
//! through (bypass, oversized pages); and [`Boxed`], the one type isr uses for bodies it
//! streams from elsewhere (hyper's, or an in-process app's).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

/// Any error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The error a streamed body ended with (hyper's, or an app's).
#[derive(Debug)]
pub struct BodyError(BoxError);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// A body streamed from elsewhere: a visitor's request, an origin's response, or the
/// response of the app behind an [`crate::layer::IsrLayer`].
pub type Boxed = http_body_util::combinators::BoxBody<Bytes, BodyError>;

/// Boxes a body of bytes into a [`Boxed`].
pub fn boxed<B>(body: B) -> Boxed
where
    B: HttpBody<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(|e| BodyError(e.into())).boxed()
}

/// Boxes a body that is `Send` but not `Sync` (axum's, for one): it is polled through
/// `&mut` as usual; the two `&self` queries take an uncontended lock.
pub fn boxed_unsync<B>(body: B) -> Boxed
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    boxed(Syncing(std::sync::Mutex::new(Box::pin(body))))
}

struct Syncing<B>(std::sync::Mutex<B>);

impl<B: HttpBody + Unpin> HttpBody for Syncing<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let inner = self
            .get_mut()
            .0
            .get_mut()
            .unwrap_or_else(|e| e.into_inner());
        Pin::new(inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).size_hint()
    }
}

/// A response body.
#[derive(Debug)]
pub enum Body {
    /// Bytes already in memory (a cached page, an error message).
    Full(Option<Bytes>),
    /// Bytes already read, then the rest of an origin body.
    Stream {
        /// Read before deciding the page was too large to store.
        prefix: Option<Bytes>,
        /// The remainder, streamed as it arrives.
        rest: Boxed,
    },
}

impl Body {
    /// An empty body.
    pub fn empty() -> Body {
        Body::Full(None)
    }

    /// A body of `bytes`.
    pub fn full(bytes: impl Into<Bytes>) -> Body {
        let b = bytes.into();
        Body::Full((!b.is_empty()).then_some(b))
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream { prefix, rest } => match prefix.take() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => Pin::new(rest).poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(b) => b.is_none(),
            Body::Stream { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Stream { prefix, rest } => {
                let p = prefix.as_ref().map_or(0, |b| b.len() as u64);
                let r = rest.size_hint();
                let mut h = SizeHint::new();
                h.set_lower(r.lower() + p);
                if let Some(u) = r.upper() {
                    h.set_upper(u + p);
                }
                h
            }
        }
    }
}
