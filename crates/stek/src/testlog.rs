//! What code logs, for unit tests that assert on it: the operator's record of erasures,
//! retries and rejections is behaviour too.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

/// The log lines (level, target-less, no colour) `f` emits on this thread, with its result.
pub(crate) fn capture<T>(f: impl FnOnce() -> T) -> (T, String) {
    let buf = Buffer::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_target(false)
        .without_time()
        .with_max_level(tracing::Level::TRACE)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = buf.0.lock().unwrap_or_else(PoisonError::into_inner).clone();
    (out, String::from_utf8_lossy(&text).into_owned())
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
