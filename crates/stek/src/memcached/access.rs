//! Who may read the keys over a unix socket.
//!
//! The socket file's mode decides who can connect; this decides who is *served*, from the
//! peer's credentials as the kernel recorded them at `connect` (`SO_PEERCRED`): they cannot be
//! forged, and a mode mistake (a socket directory made too open, a group with a stray member)
//! still does not hand the keys to a user outside the policy.
//!
//! Served: root, the uid stek runs as, and, with a group, every member of it: a peer whose
//! effective gid is the group's (nginx workers after `user www-data;`, a systemd unit with
//! `Group=`), or whose uid has it as its primary group in `/etc/passwd` or is listed in its
//! line of `/etc/group`. Only the local files are read (no NSS: LDAP or sssd members must run
//! their client with the group as its gid). Both files are read again when they change (their
//! size, mtime or inode), so adding a user to the group takes effect without a restart.
//!
//! TCP has no credentials: every local user can connect to a loopback port, which is why the
//! unix socket is the default.

use std::collections::HashSet;
use std::fmt;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The largest `/etc/group` or `/etc/passwd` read: far above any real local database, small
/// enough that a corrupt or hostile file cannot exhaust memory.
const MAX_DB_LEN: u64 = 8 << 20;

const GROUP_FILE: &str = "/etc/group";
const PASSWD_FILE: &str = "/etc/passwd";

/// Why a group cannot be used.
#[derive(Debug)]
#[non_exhaustive]
pub enum AccessError {
    /// No group of that name (or number) in the group database.
    UnknownGroup {
        /// The name given.
        name: String,
        /// The file searched.
        file: PathBuf,
    },
    /// The group database could not be read.
    Read {
        /// The file.
        file: PathBuf,
        /// The system's error.
        source: io::Error,
    },
}

impl fmt::Display for AccessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccessError::UnknownGroup { name, file } => write!(
                f,
                "no group {name:?} in {} (create it with groupadd, or name an existing group such as the TLS server's: www-data, nginx, haproxy)",
                file.display()
            ),
            AccessError::Read { file, .. } => write!(f, "cannot read {}", file.display()),
        }
    }
}

impl std::error::Error for AccessError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AccessError::Read { source, .. } => Some(source),
            AccessError::UnknownGroup { .. } => None,
        }
    }
}

/// The credentials of a unix socket peer, as the kernel recorded them at `connect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerCred {
    /// The peer's effective uid.
    pub uid: u32,
    /// The peer's effective gid.
    pub gid: u32,
}

impl PeerCred {
    /// The credentials of the process at the other end of `socket`.
    pub fn of(socket: impl std::os::fd::AsFd) -> io::Result<PeerCred> {
        let c = rustix::net::sockopt::socket_peercred(socket)?;
        Ok(PeerCred {
            uid: c.uid.as_raw(),
            gid: c.gid.as_raw(),
        })
    }
}

/// Who is served on a unix socket: root, stek's own uid, and the members of one group.
#[derive(Debug, Clone)]
pub struct Access {
    own_uid: u32,
    group: Option<Arc<GroupAccess>>,
}

impl Default for Access {
    fn default() -> Self {
        Access::owner()
    }
}

#[derive(Debug)]
struct GroupAccess {
    name: String,
    gid: u32,
    group_file: PathBuf,
    passwd_file: PathBuf,
    members: Mutex<Members>,
}

/// The uids of the group's members, and the versions of the files they were read from.
#[derive(Debug, Default)]
struct Members {
    stamp: Option<(FileStamp, FileStamp)>,
    uids: HashSet<u32>,
}

/// What changes when a file is rewritten (in place or by rename, as `usermod` does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_ns: i64,
}

impl FileStamp {
    fn of(path: &Path) -> io::Result<FileStamp> {
        let m = std::fs::metadata(path)?;
        Ok(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: m.mtime(),
            mtime_ns: m.mtime_nsec(),
        })
    }
}

impl Access {
    /// Root and the uid this process runs as (effective uid): what a 0600 socket allows.
    pub fn owner() -> Access {
        Access {
            own_uid: rustix::process::geteuid().as_raw(),
            group: None,
        }
    }

    /// Root, this process's uid and the members of `group` (a name from `/etc/group`, or a
    /// number).
    pub fn with_group(group: &str) -> Result<Access, AccessError> {
        Access::with_group_in(group, Path::new(GROUP_FILE), Path::new(PASSWD_FILE))
    }

    /// [`Access::with_group`] over other database files (tests).
    pub(crate) fn with_group_in(
        group: &str,
        group_file: &Path,
        passwd_file: &Path,
    ) -> Result<Access, AccessError> {
        let text = read_db(group_file).map_err(|source| AccessError::Read {
            file: group_file.to_owned(),
            source,
        })?;
        let gid = groups(&text)
            .find(|g| g.name == group)
            .map(|g| g.gid)
            .or_else(|| group.parse::<u32>().ok())
            .ok_or_else(|| AccessError::UnknownGroup {
                name: group.to_owned(),
                file: group_file.to_owned(),
            })?;
        Ok(Access {
            own_uid: rustix::process::geteuid().as_raw(),
            group: Some(Arc::new(GroupAccess {
                name: group.to_owned(),
                gid,
                group_file: group_file.to_owned(),
                passwd_file: passwd_file.to_owned(),
                members: Mutex::new(Members::default()),
            })),
        })
    }

    /// The group's gid, if a group is allowed.
    pub fn gid(&self) -> Option<u32> {
        self.group.as_ref().map(|g| g.gid)
    }

    /// The group's name as given, if a group is allowed.
    pub fn group_name(&self) -> Option<&str> {
        self.group.as_ref().map(|g| g.name.as_str())
    }

    /// Whether `peer` is served.
    pub fn allows(&self, peer: PeerCred) -> bool {
        if peer.uid == 0 || peer.uid == self.own_uid {
            return true;
        }
        match &self.group {
            None => false,
            Some(g) => peer.gid == g.gid || g.is_member(peer.uid),
        }
    }
}

impl GroupAccess {
    /// Whether `uid` belongs to the group by the database files, read again if they changed.
    /// A file that cannot be read serves no one by it (the peer's gid still counts).
    fn is_member(&self, uid: u32) -> bool {
        let mut m = self.members.lock().unwrap_or_else(|p| p.into_inner());
        let stamp = FileStamp::of(&self.group_file)
            .and_then(|g| Ok((g, FileStamp::of(&self.passwd_file)?)))
            .ok();
        if stamp.is_none() || stamp != m.stamp {
            m.uids = self.read_members().unwrap_or_else(|e| {
                tracing::warn!(
                    "cannot read the members of group {}: {}",
                    self.name,
                    crate::error::Chain(&e)
                );
                HashSet::new()
            });
            m.stamp = stamp;
        }
        m.uids.contains(&uid)
    }

    fn read_members(&self) -> Result<HashSet<u32>, AccessError> {
        let read = |file: &Path| {
            read_db(file).map_err(|source| AccessError::Read {
                file: file.to_owned(),
                source,
            })
        };
        let group = read(&self.group_file)?;
        let passwd = read(&self.passwd_file)?;
        Ok(members(&group, &passwd, self.gid))
    }
}

/// Reads a database file, refusing one larger than [`MAX_DB_LEN`] before reading it.
fn read_db(path: &Path) -> io::Result<String> {
    let file = std::fs::File::open(path)?;
    let mut text = String::new();
    file.take(MAX_DB_LEN + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_DB_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {MAX_DB_LEN} bytes"),
        ));
    }
    Ok(text)
}

/// One line of `/etc/group`.
struct GroupLine<'a> {
    name: &'a str,
    gid: u32,
    members: &'a str,
}

/// The well-formed lines of a group file; comments, NIS `+`/`-` entries and malformed lines
/// are skipped (as glibc does).
fn groups(text: &str) -> impl Iterator<Item = GroupLine<'_>> {
    text.lines().filter_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _password = f.next()?;
        let gid = f.next()?.parse().ok()?;
        let members = f.next().unwrap_or("");
        (!name.is_empty() && !name.starts_with(['#', '+', '-'])).then_some(GroupLine {
            name,
            gid,
            members,
        })
    })
}

/// The uids whose primary group is `gid` or whose name is listed as a member of a group with
/// that gid.
fn members(group: &str, passwd: &str, gid: u32) -> HashSet<u32> {
    let listed: HashSet<&str> = groups(group)
        .filter(|g| g.gid == gid)
        .flat_map(|g| g.members.split(',').map(str::trim))
        .filter(|n| !n.is_empty())
        .collect();
    passwd
        .lines()
        .filter_map(|line| {
            let mut f = line.split(':');
            let name = f.next()?;
            let _password = f.next()?;
            let uid: u32 = f.next()?.parse().ok()?;
            let primary: u32 = f.next()?.parse().ok()?;
            (!name.starts_with(['#', '+', '-']) && (primary == gid || listed.contains(name)))
                .then_some(uid)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROUP: &str = "root:x:0:\n# comment\nweb:x:1500:alice, bob\nbad line\n+nis:x:7:\nother:x:1600:carol\nweb2:x:1500:dave\n";
    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nalice:x:1001:1001::/:/bin/sh\nbob:x:1002:1002::/:/bin/sh\ncarol:x:1003:1003::/:/bin/sh\nerin:x:1005:1500::/:/bin/sh\nnotanumber:x:zz:1500::/:/bin/sh\ndave:x:1004:1004::/:/bin/sh\n";

    #[test]
    fn members_by_list_or_primary_group() {
        let m = members(GROUP, PASSWD, 1500);
        // alice, bob listed (spaces trimmed); dave listed under another name of the same gid;
        // erin by her primary group; carol is in another group.
        let want: HashSet<u32> = [1001, 1002, 1004, 1005].into();
        assert_eq!(m, want);
        assert!(members(GROUP, PASSWD, 4242).is_empty());
    }

    fn files(group: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let (g, p) = (dir.path().join("group"), dir.path().join("passwd"));
        std::fs::write(&g, group).unwrap();
        std::fs::write(&p, PASSWD).unwrap();
        (dir, g, p)
    }

    #[test]
    fn the_group_is_resolved_and_its_members_served() {
        let (_dir, g, p) = files(GROUP);
        let a = Access::with_group_in("web", &g, &p).unwrap();
        assert_eq!(a.gid(), Some(1500));
        let own = rustix::process::geteuid().as_raw();
        let cred = |uid, gid| PeerCred { uid, gid };
        assert!(a.allows(cred(0, 99)), "root");
        assert!(a.allows(cred(own, 99)), "stek's own uid");
        assert!(a.allows(cred(1001, 1001)), "listed");
        assert!(a.allows(cred(1005, 1005)), "primary group in passwd");
        assert!(a.allows(cred(4000, 1500)), "the peer's gid");
        assert!(!a.allows(cred(1003, 1003)), "another group's member");
        assert!(!a.allows(cred(65534, 65534)), "nobody");
        // A number is taken as a gid when no group has that name.
        assert_eq!(
            Access::with_group_in("1600", &g, &p).unwrap().gid(),
            Some(1600)
        );
        let e = Access::with_group_in("nope", &g, &p).unwrap_err();
        assert!(matches!(e, AccessError::UnknownGroup { .. }));
        assert!(e.to_string().contains("no group \"nope\""), "{e}");
        let e = Access::with_group_in("web", Path::new("/nonexistent/group"), &p).unwrap_err();
        assert!(matches!(e, AccessError::Read { .. }));
        assert!(std::error::Error::source(&e).is_some());
        // Without a group: root and stek's uid only.
        let o = Access::owner();
        assert!(o.allows(cred(0, 0)) && o.allows(cred(own, 1500)));
        if own != 1001 {
            assert!(!o.allows(cred(1001, 1500)));
        }
    }

    #[test]
    fn a_changed_database_is_read_again() {
        let (_dir, g, p) = files(GROUP);
        let a = Access::with_group_in("web", &g, &p).unwrap();
        let carol = PeerCred {
            uid: 1003,
            gid: 1003,
        };
        assert!(!a.allows(carol));
        // Rewritten by rename, as usermod does: a new inode.
        let tmp = g.with_extension("new");
        std::fs::write(&tmp, GROUP.replace("alice, bob", "alice, bob,carol")).unwrap();
        std::fs::rename(&tmp, &g).unwrap();
        assert!(a.allows(carol));
        // Unreadable: nobody by the files, the peer's gid still counts.
        std::fs::remove_file(&g).unwrap();
        assert!(!a.allows(carol));
        assert!(a.allows(PeerCred {
            uid: 1003,
            gid: 1500
        }));
    }

    #[test]
    fn a_huge_database_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let g = dir.path().join("group");
        let f = std::fs::File::create(&g).unwrap();
        f.set_len(MAX_DB_LEN + 10).unwrap();
        let e = read_db(&g).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
