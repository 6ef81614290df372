//! Resolving the configured user's uid and gid from `/etc/passwd`.
//!
//! Only the local passwd file is read (where NixOS declares users); users that exist only in
//! NSS services (LDAP, systemd-homed) are not found: pass `--uid`/`--gid` for them.

use std::path::Path;

/// A user's numeric ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserIds {
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
}

/// Finds `name` in passwd-format text (`name:x:uid:gid:gecos:home:shell`). Malformed lines are
/// skipped.
pub fn lookup(passwd: &str, name: &str) -> Option<UserIds> {
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        if f.next()? != name {
            return None;
        }
        let _password = f.next()?;
        let uid = f.next()?.parse().ok()?;
        let gid = f.next()?.parse().ok()?;
        Some(UserIds { uid, gid })
    })
}

/// Looks `name` up in the passwd file at `path` (`/etc/passwd`).
pub fn lookup_file(path: &Path, name: &str) -> std::io::Result<Option<UserIds>> {
    let text = std::fs::read_to_string(path)?;
    Ok(lookup(&text, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_lookup_finds_user_and_skips_malformed_lines() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\n\
                      broken line\n\
                      david:x:1000:100:David:/home/david:/bin/bash\n\
                      eve:x:notanumber:100::/:/bin/sh\n";
        assert_eq!(
            lookup(passwd, "david"),
            Some(UserIds {
                uid: 1000,
                gid: 100
            })
        );
        assert_eq!(lookup(passwd, "eve"), None);
        assert_eq!(lookup(passwd, "nobody"), None);
        assert_eq!(lookup(passwd, "dav"), None);
    }
}
