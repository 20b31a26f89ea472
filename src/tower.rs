//! tower layers for the breaker, the bulkhead and the rate limiter (tower itself has no
//! circuit breaker).
//!
//! Each layer decides per call: a refused call completes at once with the guard's error
//! (`CircuitOpen`, `BulkheadFull`, `RateLimited`) and never reaches the inner service.
//! `poll_ready` is the inner service's. The services' error type is [`GuardrailError`]; the
//! inner service's error converts into it (a tower `BoxError` holding a guard error comes back
//! as that error, see `From<BoxError>`).
//!
//! The bulkhead layer refuses when full rather than waiting; for backpressure, put tower's
//! `ConcurrencyLimit` in front of it.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> guardrails::Result<()> {
//! use guardrails::prelude::*;
//! use guardrails::tower::{BulkheadLayer, CircuitBreakerLayer, RateLimitLayer};
//! use guardrails::resilience::{
//!     BreakerConfig, Bulkhead, BulkheadConfig, CircuitBreaker, RateLimitConfig, RateLimiter,
//! };
//! use std::sync::Arc;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let breaker = Arc::new(CircuitBreaker::new("model", BreakerConfig::new())?);
//! let svc = ServiceBuilder::new()
//!     .layer(CircuitBreakerLayer::new(Arc::clone(&breaker)))
//!     .layer(RateLimitLayer::new(Arc::new(RateLimiter::new("model", RateLimitConfig::new())?)))
//!     .layer(BulkheadLayer::new(Arc::new(Bulkhead::new("model", BulkheadConfig::new())?)))
//!     .service_fn(|prompt: String| async move {
//!         Ok::<_, GuardrailError>(prompt.len())
//!     });
//! assert_eq!(svc.oneshot("hello".to_string()).await?, 5);
//! # Ok(()) }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use crate::error::GuardrailError;
use crate::resilience::{
    Bulkhead, CircuitBreaker, OwnedBreakerPermit, OwnedBulkheadPermit, RateLimiter,
};

pin_project_lite::pin_project! {
    /// The response future of the guard services: either refused at once, or the inner
    /// future with what the guard holds for the call's duration.
    pub struct GuardedFuture<F, G> {
        #[pin]
        inner: Option<F>,
        held: Option<G>,
        refused: Option<GuardrailError>,
    }
}

impl<F, G> GuardedFuture<F, G> {
    fn refused(err: GuardrailError) -> Self {
        Self {
            inner: None,
            held: None,
            refused: Some(err),
        }
    }

    fn running(inner: F, held: G) -> Self {
        Self {
            inner: Some(inner),
            held: Some(held),
            refused: None,
        }
    }
}

/// What a guard does with what it holds once the inner call has finished.
pub trait Held {
    /// Called with the call's result before the response is returned.
    fn finish(self, result: Result<(), &GuardrailError>);
}

impl Held for OwnedBreakerPermit {
    fn finish(self, result: Result<(), &GuardrailError>) {
        match result {
            Ok(()) => self.record_success(),
            Err(e) => self.record_error(e),
        }
    }
}

impl Held for OwnedBulkheadPermit {
    fn finish(self, _result: Result<(), &GuardrailError>) {}
}

impl Held for () {
    fn finish(self, _result: Result<(), &GuardrailError>) {}
}

impl<F, T, E, G> Future for GuardedFuture<F, G>
where
    F: Future<Output = Result<T, E>>,
    E: Into<GuardrailError>,
    G: Held,
{
    type Output = Result<T, GuardrailError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(err) = this.refused.take() {
            return Poll::Ready(Err(err));
        }
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Err(GuardrailError::Cancelled {
                operation: "guarded future polled after completion".into(),
            }));
        };
        let result = match inner.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => r.map_err(Into::into),
        };
        if let Some(held) = this.held.take() {
            held.finish(result.as_ref().map(|_| ()));
        }
        Poll::Ready(result)
    }
}

/// Wraps services in [`CircuitBreakerService`].
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer {
    breaker: Arc<CircuitBreaker>,
}

impl CircuitBreakerLayer {
    /// A layer over `breaker`; every service it wraps shares it.
    pub fn new(breaker: Arc<CircuitBreaker>) -> Self {
        Self { breaker }
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreakerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService {
            inner,
            breaker: Arc::clone(&self.breaker),
        }
    }
}

/// Calls the inner service while the breaker permits, and records each outcome.
#[derive(Debug, Clone)]
pub struct CircuitBreakerService<S> {
    inner: S,
    breaker: Arc<CircuitBreaker>,
}

impl<S, R> Service<R> for CircuitBreakerService<S>
where
    S: Service<R>,
    S::Error: Into<GuardrailError>,
{
    type Response = S::Response;
    type Error = GuardrailError;
    type Future = GuardedFuture<S::Future, OwnedBreakerPermit>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: R) -> Self::Future {
        match self.breaker.try_acquire_owned() {
            Ok(permit) => GuardedFuture::running(self.inner.call(req), permit),
            Err(e) => GuardedFuture::refused(e),
        }
    }
}

/// Wraps services in [`BulkheadService`].
#[derive(Debug, Clone)]
pub struct BulkheadLayer {
    bulkhead: Arc<Bulkhead>,
}

impl BulkheadLayer {
    /// A layer over `bulkhead`; every service it wraps shares its slots.
    pub fn new(bulkhead: Arc<Bulkhead>) -> Self {
        Self { bulkhead }
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = BulkheadService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BulkheadService {
            inner,
            bulkhead: Arc::clone(&self.bulkhead),
        }
    }
}

/// Holds a bulkhead slot for each call's whole duration; refuses when none is free.
#[derive(Debug, Clone)]
pub struct BulkheadService<S> {
    inner: S,
    bulkhead: Arc<Bulkhead>,
}

impl<S, R> Service<R> for BulkheadService<S>
where
    S: Service<R>,
    S::Error: Into<GuardrailError>,
{
    type Response = S::Response;
    type Error = GuardrailError;
    type Future = GuardedFuture<S::Future, OwnedBulkheadPermit>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: R) -> Self::Future {
        match self.bulkhead.try_acquire_owned() {
            Ok(slot) => GuardedFuture::running(self.inner.call(req), slot),
            Err(e) => GuardedFuture::refused(e),
        }
    }
}

/// Wraps services in [`RateLimitService`].
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    limiter: Arc<RateLimiter>,
}

impl RateLimitLayer {
    /// A layer over `limiter`; every service it wraps shares its rate.
    pub fn new(limiter: Arc<RateLimiter>) -> Self {
        Self { limiter }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            limiter: Arc::clone(&self.limiter),
        }
    }
}

/// Refuses calls past the rate with `RateLimited { retry_after }`.
#[derive(Debug, Clone)]
pub struct RateLimitService<S> {
    inner: S,
    limiter: Arc<RateLimiter>,
}

impl<S, R> Service<R> for RateLimitService<S>
where
    S: Service<R>,
    S::Error: Into<GuardrailError>,
{
    type Response = S::Response;
    type Error = GuardrailError;
    type Future = GuardedFuture<S::Future, ()>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: R) -> Self::Future {
        match self.limiter.check() {
            Ok(()) => GuardedFuture::running(self.inner.call(req), ()),
            Err(e) => GuardedFuture::refused(e),
        }
    }
}
