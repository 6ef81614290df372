//! Guest accounts, read from `/etc/passwd` and `/etc/group` directly (no NSS: the test guest
//! has none, and a NixOS guest's local accounts are in these files).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// A guest account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids (from `/etc/group`), without the primary group.
    pub groups: Vec<u32>,
    /// Home directory.
    pub home: PathBuf,
    /// Login shell.
    pub shell: PathBuf,
}

/// Finds `name` in passwd-format text.
pub fn parse_passwd(text: &str, name: &str) -> Option<Account> {
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 || f[0] != name {
            return None;
        }
        Some(Account {
            name: f[0].to_owned(),
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            groups: Vec::new(),
            home: PathBuf::from(f[5]),
            shell: PathBuf::from(f[6]),
        })
    })
}

/// The supplementary groups of `name` in group-format text (`name:x:gid:member,member`),
/// excluding `primary`.
pub fn parse_groups(text: &str, name: &str, primary: u32) -> Vec<u32> {
    let mut gids: Vec<u32> = text
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 || !f[3].split(',').any(|m| m.trim() == name) {
                return None;
            }
            f[2].parse().ok()
        })
        .filter(|gid| *gid != primary)
        .collect();
    gids.sort_unstable();
    gids.dedup();
    gids
}

/// Looks `name` up in `<etc>/passwd` and `<etc>/group`. `Ok(None)`: no such account (or no
/// passwd file at all, as in the test guest).
pub fn lookup(etc: &Path, name: &str) -> io::Result<Option<Account>> {
    let passwd = match fs::read_to_string(etc.join("passwd")) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some(mut account) = parse_passwd(&passwd, name) else {
        return Ok(None);
    };
    if let Ok(group) = fs::read_to_string(etc.join("group")) {
        account.groups = parse_groups(&group, name, account.gid);
    }
    Ok(Some(account))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:System administrator:/root:/run/current-system/sw/bin/bash\n\
        user:x:1000:100::/home/user:/run/current-system/sw/bin/bash\n\
        broken:x:notanumber:1::/:/bin/sh\n";
    const GROUP: &str =
        "root:x:0:\nusers:x:100:user\nvideo:x:26:user,other\naudio:x:17:user\nwheel:x:1:root\n";

    #[test]
    fn test_finds_an_account_with_its_groups() {
        let mut a = parse_passwd(PASSWD, "user").unwrap();
        a.groups = parse_groups(GROUP, "user", a.gid);
        assert_eq!(a.uid, 1000);
        assert_eq!(a.gid, 100);
        assert_eq!(a.home, PathBuf::from("/home/user"));
        assert_eq!(a.groups, [17, 26]);
    }

    #[test]
    fn test_missing_and_malformed_entries_are_none() {
        assert_eq!(parse_passwd(PASSWD, "nobody"), None);
        assert_eq!(parse_passwd(PASSWD, "broken"), None);
        assert_eq!(parse_passwd("user:x:1000", "user"), None);
        assert_eq!(parse_passwd(PASSWD, "use"), None);
    }

    #[test]
    fn test_lookup_without_passwd_file_is_none() {
        assert_eq!(
            lookup(Path::new("/nonexistent-etc-dir"), "root").unwrap(),
            None
        );
    }
}
