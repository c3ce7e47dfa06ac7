//! W3C trace context in NATS headers: the hop from the gateway to the worker.

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};

/// Writes the current trace context ([`taskwire::propagation::current`]) into NATS headers.
pub fn inject_nats(headers: &mut async_nats::HeaderMap) {
    struct Nats<'a>(&'a mut async_nats::HeaderMap);
    impl Injector for Nats<'_> {
        fn set(&mut self, key: &str, value: String) {
            self.0.insert(key, value.as_str());
        }
    }
    taskwire::propagation::inject(&taskwire::propagation::current(), &mut Nats(headers));
}

/// Reads a trace context from NATS headers.
pub fn extract_nats(headers: Option<&async_nats::HeaderMap>) -> Context {
    struct Nats<'a>(&'a async_nats::HeaderMap);
    impl Extractor for Nats<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).map(|v| v.as_str())
        }
        fn keys(&self) -> Vec<&str> {
            Vec::new()
        }
    }
    match headers {
        Some(h) => taskwire::propagation::extract(&Nats(h)),
        None => Context::new(),
    }
}
