//! What code logs, for unit tests that assert on it: the operator's record of erasures,
//! retries and rejections is behaviour too.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

/// The log lines (level, target-less, no colour) `f` emits on this thread, with its result.
pub(crate) fn capture<T>(f: impl FnOnce() -> T) -> (T, String) {
    let logs = start();
    let out = f();
    let text = logs.text();
    (out, text)
}

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl io::Write for Buffer {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Captures the log lines of this thread from now until the result is dropped: for async
/// tests on the current-thread runtime, where a closure cannot span the awaits.
pub(crate) fn start() -> Logs {
    let buf = Buffer::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_target(false)
        .without_time()
        .with_max_level(tracing::Level::TRACE)
        .finish();
    Logs {
        _guard: tracing::subscriber::set_default(subscriber),
        buf,
    }
}

/// The lines captured since [`start`].
pub(crate) struct Logs {
    _guard: tracing::subscriber::DefaultGuard,
    buf: Buffer,
}

impl Logs {
    pub(crate) fn text(&self) -> String {
        let text = self.buf.0.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&text).into_owned()
    }
}
