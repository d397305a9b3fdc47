//! A layer on kube's HTTP client that marks a watched resource in sync whenever a list or
//! watch request for it succeeds. kube's watcher emits nothing when it re-establishes a watch
//! on a quiet cluster, so without this a recovered API server would look failing until the
//! next change.

use std::{future::Future, pin::Pin, sync::Arc, task::Poll};

use hyper::{Request, Response};

use super::status::Status;

/// The resource a request path is for: its last segment when it names a watched resource
/// (`/apis/networking.istio.io/v1/serviceentries`).
pub fn resource_of<'a>(path: &str, watched: &[&'a str]) -> Option<&'a str> {
    let last = path.trim_end_matches('/').rsplit('/').next()?;
    watched.iter().copied().find(|r| *r == last)
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    status: Arc<Status>,
    watched: &'static [&'static str],
}

/// Wraps a client's service in [`Observe`].
pub struct ObserveLayer {
    pub status: Arc<Status>,
    pub watched: &'static [&'static str],
}

impl<S> tower_layer::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            status: Arc::clone(&self.status),
            watched: self.watched,
        }
    }
}

impl<S, B, R> tower_service::Service<Request<B>> for Observe<S>
where
    S: tower_service::Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    R: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<R>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let resource = resource_of(req.uri().path(), self.watched);
        let status = Arc::clone(&self.status);
        let answer = self.inner.call(req);
        Box::pin(async move {
            let r = answer.await;
            if let (Some(res), Ok(resp)) = (resource, &r)
                && resp.status().is_success()
            {
                status.ok(res, std::time::Instant::now());
            }
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_resource() {
        let w = &["serviceentries", "pods"];
        assert_eq!(
            resource_of("/apis/networking.istio.io/v1/serviceentries", w),
            Some("serviceentries")
        );
        assert_eq!(resource_of("/api/v1/pods", w), Some("pods"));
        assert_eq!(resource_of("/apis/networking.istio.io/v1", w), None);
        assert_eq!(resource_of("/apis", w), None);
    }
}
