//! A writer for the `newc` cpio format, the one the Linux kernel unpacks as an initramfs.
//!
//! Written here rather than piping a staging directory through `cpio -o` so the archive is
//! reproducible (fixed inode numbers, owners and mtimes) and needs no staging copy.

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
    CharDev { mode: u32, major: u32, minor: u32 },
}

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Appends a newc archive of `entries` (path without leading `/`, entry) to `out`. Parents
/// must come before children; the caller sorts.
pub(crate) fn write_archive<'a>(
    entries: impl IntoIterator<Item = (&'a str, &'a Entry)>,
    out: &mut Vec<u8>,
) {
    for (ino, (path, entry)) in (1u32..).zip(entries) {
        let (mode, nlink, data, rdev): (u32, u32, &[u8], (u32, u32)) = match entry {
            Entry::Dir { mode } => (S_IFDIR | (mode & 0o7777), 2, &[], (0, 0)),
            Entry::File { mode, data } => (S_IFREG | (mode & 0o7777), 1, data, (0, 0)),
            Entry::Symlink { target } => (S_IFLNK | 0o777, 1, target.as_bytes(), (0, 0)),
            Entry::CharDev { mode, major, minor } => {
                (S_IFCHR | (mode & 0o7777), 1, &[], (*major, *minor))
            }
        };
        write_member(out, ino, mode, nlink, path, data, rdev);
    }
    write_member(out, 0, 0, 1, "TRAILER!!!", &[], (0, 0));
}

fn write_member(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    name: &str,
    data: &[u8],
    rdev: (u32, u32),
) {
    let namesize = name.len() + 1;
    let filesize = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let fields: [u32; 13] = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        filesize,
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        u32::try_from(namesize).unwrap_or(u32::MAX),
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    fn sample() -> Vec<u8> {
        let entries = [
            ("bin", Entry::Dir { mode: 0o755 }),
            (
                "bin/hello",
                Entry::File {
                    mode: 0o755,
                    data: b"#!/bin/sh\necho hi\n".to_vec(),
                },
            ),
            (
                "bin/sh",
                Entry::Symlink {
                    target: "busybox".into(),
                },
            ),
            (
                "dev/console",
                Entry::CharDev {
                    mode: 0o600,
                    major: 5,
                    minor: 1,
                },
            ),
            (
                "odd",
                Entry::File {
                    mode: 0o644,
                    data: vec![7; 5],
                },
            ),
        ];
        let mut out = Vec::new();
        write_archive(entries.iter().map(|(p, e)| (*p, e)), &mut out);
        out
    }

    #[test]
    fn test_layout_is_aligned_and_ends_with_trailer() {
        let out = sample();
        assert!(out.len().is_multiple_of(4));
        assert!(out.starts_with(b"070701"));
        let trailer = out.windows(10).rposition(|w| w == b"TRAILER!!!");
        assert!(trailer.is_some());
    }

    /// The real peer: GNU cpio lists and extracts what we wrote.
    #[test]
    fn test_gnu_cpio_reads_the_archive() {
        let out = sample();
        let mut child = Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cpio is installed by `cargo xtask setup`");
        child.stdin.take().unwrap().write_all(&out).unwrap();
        let result = child.wait_with_output().unwrap();
        assert!(result.status.success(), "{result:?}");
        let listing = String::from_utf8(result.stdout).unwrap();
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 5, "{listing}");
        assert!(lines[0].starts_with("drwxr-xr-x") && lines[0].ends_with(" bin"));
        assert!(lines[1].starts_with("-rwxr-xr-x") && lines[1].contains(" 18 "));
        assert!(lines[2].starts_with("lrwxrwxrwx") && lines[2].ends_with("bin/sh -> busybox"));
        assert!(lines[3].starts_with("crw-------") && lines[3].contains("5,"));
        assert!(lines[4].starts_with("-rw-r--r--") && lines[4].ends_with(" odd"));
    }
}
