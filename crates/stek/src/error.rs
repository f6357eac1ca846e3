//! Errors shown with their causes.
//!
//! stek's error types say what failed and return why from [`std::error::Error::source`]; their
//! `Display` never repeats the cause. Whoever prints one on a single line (a log line, a scan
//! report, `stek: ...` on stderr) shows the whole chain with [`Chain`], or with `anyhow`'s
//! `{:#}`.

use std::error::Error;
use std::fmt;

/// An error and its causes on one line, outermost first, joined by `": "`:
/// `etcd (/v3/kv/range) is unavailable: etcd at 127.0.0.1:2379: client error (Connect): tcp
/// connect error: Connection refused (os error 111)`.
///
/// A cause whose message the previous one already ends with is left out: some libraries print
/// their inner error and also return it from `source()`.
#[derive(Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn Error + 'a));

impl fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        f.write_str(&shown)?;
        let mut next = self.0.source();
        while let Some(cause) = next {
            let text = cause.to_string();
            if !text.is_empty() && !shown.ends_with(&text) {
                write!(f, ": {text}")?;
            }
            shown = text;
            next = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[derive(Debug)]
    struct Outer(io::Error);

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("cannot read the thing")
        }
    }

    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    /// Prints its cause and also returns it, as `redis::RedisError` does.
    #[derive(Debug)]
    struct Repeats(Outer);

    impl fmt::Display for Repeats {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            self.0.fmt(f)
        }
    }

    impl Error for Repeats {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn chains_causes_once_each() {
        let e = Outer(io::Error::other("disk on fire"));
        assert_eq!(Chain(&e).to_string(), "cannot read the thing: disk on fire");
        let e = Repeats(Outer(io::Error::other("disk on fire")));
        assert_eq!(Chain(&e).to_string(), "cannot read the thing: disk on fire");
        let plain = io::Error::other("alone");
        assert_eq!(Chain(&plain).to_string(), "alone");
    }
}
