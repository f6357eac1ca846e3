//! How stek reaches a shared store across sites: TLS (`rediss://`, `etcds://`) with the store's
//! CA and an optional client certificate, and credentials (a user and a password file). The URL
//! never carries a password: it would show in `ps` and in every log line that names the store.
//!
//! [`StoreAccess`] holds paths only, as settings do; [`StoreAccess::load`] reads the files when
//! the store is opened: the password and the client key through [`crate::keyfile::read_private`]
//! (no link followed, owned by this user or root, mode 0600 or stricter, size-capped, zeroized).

use std::fmt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::keyfile::{read_private, KeyFileError, MAX_KEY_FILE_LEN};

/// The URL schemes stek knows, and whether each speaks TLS.
pub const SCHEMES: &[(&str, bool)] = &[
    ("redis", false),
    ("rediss", true),
    ("redis+sentinel", false),
    ("rediss+sentinel", true),
    ("etcd", false),
    ("etcds", true),
];

/// The scheme of `url` and whether it speaks TLS, if stek knows it.
pub fn scheme(url: &str) -> Option<(&'static str, bool)> {
    let (scheme, _) = url.split_once("://")?;
    SCHEMES.iter().copied().find(|(s, _)| *s == scheme)
}

/// Why a store URL or its access settings are refused before anything is contacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessError(pub String);

impl fmt::Display for AccessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AccessError {}

/// TLS and credentials for a store: paths and a name, no secret (see [`StoreAccess::load`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreAccess {
    /// The CA bundle (PEM) that verifies the store's certificate; the system's roots if absent.
    pub ca: Option<PathBuf>,
    /// A client certificate chain (PEM) to present.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM), a private file.
    pub key: Option<PathBuf>,
    /// The user (Redis ACL user, etcd user).
    pub user: Option<String>,
    /// A private file whose first line is the password.
    pub password_file: Option<PathBuf>,
}

impl StoreAccess {
    /// Checks these settings against `url` without reading a file: a known scheme, no
    /// credentials in the URL, TLS files only for a TLS scheme, a certificate and its key
    /// together, a user name fit for the store.
    pub fn check(&self, url: &str) -> Result<(), AccessError> {
        let Some((name, tls)) = scheme(url) else {
            return Err(AccessError(format!(
                "unknown store URL scheme (use one of {})",
                SCHEMES
                    .iter()
                    .map(|(s, _)| format!("{s}://"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let rest = &url[name.len() + 3..];
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.contains('@') {
            // The URL itself is left out: it holds the secret.
            return Err(AccessError(format!(
                "the {name}:// URL carries credentials (USER:PASSWORD@), which would show in `ps` and in logs: remove them and give --store-user NAME and --store-password-file FILE (a 0600 file holding the password)"
            )));
        }
        if !tls {
            let given: Vec<&str> = [
                ("--store-ca", self.ca.is_some()),
                ("--store-cert", self.cert.is_some()),
                ("--store-key", self.key.is_some()),
            ]
            .iter()
            .filter(|(_, set)| *set)
            .map(|(flag, _)| *flag)
            .collect();
            if !given.is_empty() {
                let tls_name = name
                    .replacen("redis", "rediss", 1)
                    .replacen("etcd", "etcds", 1);
                return Err(AccessError(format!(
                    "{} given, but {name}:// does not use TLS: use {tls_name}://",
                    given.join(", ")
                )));
            }
        }
        match (&self.cert, &self.key) {
            (Some(_), None) => {
                return Err(AccessError(
                    "--store-cert needs --store-key (the certificate's private key)".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(AccessError(
                    "--store-key needs --store-cert (the client certificate)".into(),
                ))
            }
            _ => {}
        }
        if let Some(user) = &self.user {
            let fit = !user.is_empty()
                && user.len() <= 128
                && user
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'@' && b != b':');
            if !fit {
                return Err(AccessError(
                    "--store-user: 1 to 128 printable characters, no spaces, '@' or ':'".into(),
                ));
            }
        }
        if name.starts_with("etcd") && self.password_file.is_some() && self.user.is_none() {
            return Err(AccessError(
                "--store-password-file needs --store-user for etcd (etcd authenticates users)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Reads the files: the CA bundle and client certificate (public, size-capped) and the
    /// password and client key (private files: see the module documentation).
    pub fn load(&self) -> Result<LoadedAccess, LoadError> {
        let public = |path: &Path| -> Result<Vec<u8>, LoadError> {
            use std::io::Read as _;
            let mut bytes = Vec::new();
            std::fs::File::open(path)
                .and_then(|f| f.take(MAX_KEY_FILE_LEN * 4 + 1).read_to_end(&mut bytes))
                .map_err(|source| LoadError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
            if bytes.len() as u64 > MAX_KEY_FILE_LEN * 4 {
                return Err(LoadError::TooLarge {
                    path: path.to_path_buf(),
                });
            }
            Ok(bytes)
        };
        let password = match &self.password_file {
            None => None,
            Some(path) => {
                let text = read_private(path).map_err(LoadError::Private)?;
                let line = text.lines().next().unwrap_or_default();
                if line.is_empty() {
                    return Err(LoadError::EmptyPassword { path: path.clone() });
                }
                Some(Zeroizing::new(line.to_owned()))
            }
        };
        Ok(LoadedAccess {
            ca_pem: self.ca.as_deref().map(public).transpose()?,
            cert_pem: self.cert.as_deref().map(public).transpose()?,
            key_pem: self
                .key
                .as_deref()
                .map(read_private)
                .transpose()
                .map_err(LoadError::Private)?,
            user: self.user.clone(),
            password,
        })
    }
}

/// The contents of a [`StoreAccess`]'s files. The password and the client key are zeroized when
/// dropped (copies too); `Debug` shows neither. The default is plain access: no TLS, no
/// credentials.
#[derive(Default, Clone)]
pub struct LoadedAccess {
    /// The CA bundle (PEM), if given.
    pub ca_pem: Option<Vec<u8>>,
    /// The client certificate chain (PEM), if given.
    pub cert_pem: Option<Vec<u8>>,
    /// The client key (PEM), if given.
    pub key_pem: Option<Zeroizing<String>>,
    /// The user, if given.
    pub user: Option<String>,
    /// The password, if given.
    pub password: Option<Zeroizing<String>>,
}

impl LoadedAccess {
    /// Whether anything is set (TLS material or credentials).
    pub fn is_set(&self) -> bool {
        self.ca_pem.is_some()
            || self.cert_pem.is_some()
            || self.key_pem.is_some()
            || self.user.is_some()
            || self.password.is_some()
    }
}

impl fmt::Debug for LoadedAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedAccess")
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .field("cert_pem", &self.cert_pem.as_ref().map(Vec::len))
            .field("key_pem", &self.key_pem.as_ref().map(|_| "(private)"))
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "(private)"))
            .finish()
    }
}

/// Why a [`StoreAccess`]'s files could not be read.
#[derive(Debug)]
#[non_exhaustive]
pub enum LoadError {
    /// A public file (CA bundle, client certificate) could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
    /// A public file is larger than any certificate bundle stek reads.
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The password file or client key failed the private-file checks.
    Private(KeyFileError),
    /// The password file's first line is empty.
    EmptyPassword {
        /// The file.
        path: PathBuf,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Read { path, .. } => write!(f, "cannot read {}", path.display()),
            LoadError::TooLarge { path } => write!(
                f,
                "{} is larger than {} bytes: not a certificate bundle",
                path.display(),
                MAX_KEY_FILE_LEN * 4
            ),
            LoadError::Private(e) => e.fmt(f),
            LoadError::EmptyPassword { path } => {
                write!(
                    f,
                    "the password file {} has an empty first line",
                    path.display()
                )
            }
        }
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LoadError::Read { source, .. } => Some(source),
            LoadError::Private(e) => e.source(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn err(a: &StoreAccess, url: &str) -> String {
        a.check(url).unwrap_err().to_string()
    }

    #[test]
    fn urls_and_settings_are_checked_before_anything_is_read() {
        let none = StoreAccess::default();
        for ok in [
            "redis://h:6379",
            "rediss://h:6380",
            "redis+sentinel://a:26379,b:26379/mymaster",
            "etcd://a:2379,b:2379",
            "etcds://a:2379",
        ] {
            assert_eq!(none.check(ok), Ok(()), "{ok}");
        }
        assert!(err(&none, "http://h")
            .starts_with("unknown store URL scheme (use one of redis://, rediss://"));
        let e = err(&none, "rediss://default:hunter2@h:6380");
        assert!(
            e.contains("carries credentials") && e.contains("--store-password-file"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "the secret is never repeated: {e}");
        assert!(err(&none, "etcd://u@h:2379").contains("carries credentials"));
        // An '@' after the authority is not a credential.
        assert_eq!(none.check("redis+sentinel://a:1/mymaster@x"), Ok(()));

        let ca = StoreAccess {
            ca: Some("/etc/ssl/ca.pem".into()),
            ..Default::default()
        };
        assert_eq!(
            err(&ca, "redis://h:6379"),
            "--store-ca given, but redis:// does not use TLS: use rediss://"
        );
        assert_eq!(
            err(&ca, "etcd://h:2379"),
            "--store-ca given, but etcd:// does not use TLS: use etcds://"
        );
        assert_eq!(ca.check("etcds://h:2379"), Ok(()));
        let cert = StoreAccess {
            cert: Some("c.pem".into()),
            ..Default::default()
        };
        assert!(err(&cert, "rediss://h:1").starts_with("--store-cert needs --store-key"));
        let bad_user = StoreAccess {
            user: Some("a b".into()),
            ..Default::default()
        };
        assert!(err(&bad_user, "rediss://h:1").starts_with("--store-user:"));
        let pw_only = StoreAccess {
            password_file: Some("p".into()),
            ..Default::default()
        };
        assert_eq!(
            pw_only.check("redis://h:1"),
            Ok(()),
            "Redis: the default user"
        );
        assert!(err(&pw_only, "etcds://h:1").contains("needs --store-user for etcd"));
    }

    #[test]
    fn the_password_file_is_a_private_file_and_its_first_line_the_password() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("pw");
        std::fs::write(&path, "s3cret\nignored\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let a = StoreAccess {
            user: Some("agent".into()),
            password_file: Some(path.clone()),
            ..Default::default()
        };
        let loaded = a.load().unwrap();
        assert_eq!(
            loaded.password.as_deref().map(String::as_str),
            Some("s3cret")
        );
        assert!(!format!("{loaded:?}").contains("s3cret"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = a.load().unwrap_err().to_string();
        assert!(
            e.contains("has mode 0644") && e.contains("chmod 600"),
            "{e}"
        );
        std::fs::write(&path, "\nx\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(a
            .load()
            .unwrap_err()
            .to_string()
            .contains("empty first line"));
        let missing = StoreAccess {
            ca: Some(d.path().join("nope.pem")),
            ..Default::default()
        };
        assert!(missing
            .load()
            .unwrap_err()
            .to_string()
            .starts_with("cannot read "));
    }
}
