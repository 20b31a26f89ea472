//! The one listener registry: callbacks a component calls with what it decided (a breaker's
//! state change, a downshift, a sampler event). Listeners are added at any time, from any
//! thread; a notification calls them outside the registry's lock, so a listener may add
//! another or read the component without deadlocking.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

/// One registered callback.
pub(crate) type Listener<E> = Arc<dyn Fn(&E) + Send + Sync>;

/// Callbacks for events of type `E`.
pub(crate) struct Listeners<E: ?Sized> {
    list: Mutex<Vec<Listener<E>>>,
}

impl<E: ?Sized> Default for Listeners<E> {
    fn default() -> Self {
        Self {
            list: Mutex::new(Vec::new()),
        }
    }
}

impl<E: ?Sized> fmt::Debug for Listeners<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listeners")
            .field("count", &self.snapshot().len())
            .finish()
    }
}

impl<E: ?Sized> Listeners<E> {
    /// Adds `listener`.
    pub(crate) fn add<F>(&self, listener: F)
    where
        F: Fn(&E) + Send + Sync + 'static,
    {
        self.add_shared(Arc::new(listener));
    }

    /// Adds a listener that is also registered elsewhere.
    pub(crate) fn add_shared(&self, listener: Listener<E>) {
        self.list
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(listener);
    }

    /// The listeners now registered, in order.
    pub(crate) fn snapshot(&self) -> Vec<Listener<E>> {
        self.list
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Calls every listener with `event`, in the order they were added.
    pub(crate) fn notify(&self, event: &E) {
        for listener in self.snapshot() {
            listener(event);
        }
    }
}
