//! The shared home against a hostile local user, with real root file operations: vm-service
//! prepares `/shared/<vm>` as root in a directory the user owns, from a template the user owns.
//! The user here is a real unprivileged uid (65534, `nobody`); the tests need root to act as
//! vm-service and skip, saying so, without it.
//!
//! - a home (or a directory on its path) replaced by a symbolic link to a root-owned directory
//!   is refused, and nothing is written there;
//! - symbolic links planted in the home where the copy is about to write (what a user racing
//!   the copy does, made deterministic by planting them first) are not written through: a
//!   root-owned 0600 file keeps its content and mode;
//! - the template is read with the user's rights (a root-only file in it is not copied);
//! - the normal copy works and everything in the home is the user's.

mod common;

use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use common::{Scratch, vmsilo_bin};
use vmsilo::runtime::home::{self, Prepared};

const USER: u32 = 65534;
const GROUP: u32 = 65534;

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: acting as vm-service (root) for a real unprivileged user needs root");
    false
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).expect("chown");
}

/// A scratch directory everyone can traverse, with `shared/` owned by the user (as the NixOS
/// module makes `/shared`) and a template (files, a subdirectory, a symlink) the user owns.
struct Setup {
    dir: Scratch,
    shared: PathBuf,
    template: PathBuf,
}

impl Setup {
    fn new(label: &str) -> Setup {
        let dir = Scratch::new(label);
        chmod(dir.path(), 0o755);
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).expect("mkdir shared");
        chown(&shared, USER, GROUP);
        let template = dir.path().join("template");
        std::fs::create_dir_all(template.join(".config")).expect("mkdir template");
        std::fs::write(template.join(".bashrc"), "PS1=vm\n").expect("write");
        std::fs::write(template.join(".config/x"), "from the template\n").expect("write");
        std::fs::write(template.join("run.sh"), "#!/bin/sh\n").expect("write");
        chmod(&template.join("run.sh"), 0o750);
        symlink(".bashrc", template.join("link")).expect("symlink");
        for p in [
            &template,
            &template.join(".config"),
            &template.join(".bashrc"),
            &template.join(".config/x"),
            &template.join("run.sh"),
            &template.join("link"),
        ] {
            chown(p, USER, GROUP);
        }
        Setup {
            dir,
            shared,
            template,
        }
    }

    /// A root-owned file, mode 0600.
    fn secret(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write secret");
        chmod(&p, 0o600);
        p
    }

    /// A root-owned directory, mode 0755 (standing for /run/systemd/system or /etc).
    fn root_dir(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir(&p).expect("mkdir root dir");
        chmod(&p, 0o755);
        p
    }
}

/// `home::prepare`, its error as the text vm-service prints (the tests check the messages).
fn prepare(home: &Path, template: &Path) -> Result<Prepared, String> {
    home::prepare(home, template, USER, GROUP, &vmsilo_bin()).map_err(|e| e.to_string())
}

fn owner_and_mode(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(p).expect("stat");
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

fn open_dir(p: &Path) -> OwnedFd {
    std::fs::File::open(p).expect("open dir").into()
}

#[test]
fn test_shared_home_symlinked_to_a_root_directory_is_refused_and_nothing_written() {
    if !is_root() {
        return;
    }
    let s = Setup::new("home-symlink");
    let target = s.root_dir("systemd-system");
    let home = s.shared.join("vm");
    symlink(&target, &home).expect("symlink");

    let e = prepare(&home, &s.template).expect_err("a symlinked home must be refused");

    assert!(e.contains("is a symbolic link"), "{e}");
    assert!(e.contains(&home.display().to_string()), "{e}");
    assert!(
        common::entries(&target).is_empty(),
        "{:?}",
        common::entries(&target)
    );
    assert_eq!(owner_and_mode(&target), (0, 0, 0o755));
    assert!(std::fs::symlink_metadata(&home).expect("link").is_symlink());
}

#[test]
fn test_shared_home_below_a_symlinked_directory_is_refused_and_nothing_written() {
    if !is_root() {
        return;
    }
    let s = Setup::new("home-parent-symlink");
    let target = s.root_dir("etc");
    let parent = s.shared.join("homes");
    symlink(&target, &parent).expect("symlink");
    let home = parent.join("vm");

    let e = prepare(&home, &s.template).expect_err("a symlink on the path must be refused");

    assert!(e.contains("is a symbolic link"), "{e}");
    assert!(e.contains(&parent.display().to_string()), "{e}");
    assert!(
        common::entries(&target).is_empty(),
        "{:?}",
        common::entries(&target)
    );
}

#[test]
fn test_home_copy_does_not_write_through_a_file_symlink_planted_in_the_home() {
    if !is_root() {
        return;
    }
    let s = Setup::new("home-plant-file");
    let secret = s.secret("shadow", "root secret\n");
    let home = s.shared.join("vm");
    std::fs::create_dir(&home).expect("mkdir home");
    chown(&home, USER, GROUP);
    chmod(&home, 0o700);
    // What the user plants while the copy runs, at the name the copy writes next.
    symlink(&secret, home.join(".bashrc")).expect("plant");

    let r = home::fill_as(&open_dir(&home), &s.template, USER, GROUP, &vmsilo_bin())
        .map_err(|e| e.to_string());

    assert_eq!(
        std::fs::read_to_string(&secret).expect("secret"),
        "root secret\n"
    );
    assert_eq!(owner_and_mode(&secret), (0, 0, 0o600));
    let e = r.expect_err("the copy must stop at the planted link");
    assert!(e.contains(".bashrc") && e.contains("EEXIST"), "{e}");
}

#[test]
fn test_home_copy_does_not_write_through_a_directory_symlink_planted_in_the_home() {
    if !is_root() {
        return;
    }
    let s = Setup::new("home-plant-dir");
    let target = s.root_dir("root-config");
    let secret = target.join("x");
    std::fs::write(&secret, "root x\n").expect("write");
    chmod(&secret, 0o600);
    let home = s.shared.join("vm");
    std::fs::create_dir(&home).expect("mkdir home");
    chown(&home, USER, GROUP);
    chmod(&home, 0o700);
    // The template has .config/x: the user points .config at a root directory with an x.
    symlink(&target, home.join(".config")).expect("plant");

    let r = home::fill_as(&open_dir(&home), &s.template, USER, GROUP, &vmsilo_bin())
        .map_err(|e| e.to_string());

    assert_eq!(std::fs::read_to_string(&secret).expect("x"), "root x\n");
    assert_eq!(owner_and_mode(&secret), (0, 0, 0o600));
    assert_eq!(common::entries(&target), ["x"]);
    assert_eq!(owner_and_mode(&target), (0, 0, 0o755));
    let e = r.expect_err("the copy must stop at the planted link");
    assert!(e.contains(".config") && e.contains("EEXIST"), "{e}");
}

#[test]
fn test_home_copy_into_a_root_directory_is_refused_by_the_kernel() {
    if !is_root() {
        return;
    }
    // Where a copy that followed a link (say, a directory swapped for a link between its
    // creation and the descent into it) would end up: the copy runs as the user, so the
    // kernel refuses every write there.
    let s = Setup::new("home-root-dir");
    let target = s.root_dir("root-config");
    let secret = target.join("secret");
    std::fs::write(&secret, "root x\n").expect("write");
    chmod(&secret, 0o600);

    let r = home::fill_as(&open_dir(&target), &s.template, USER, GROUP, &vmsilo_bin())
        .map_err(|e| e.to_string());

    assert_eq!(common::entries(&target), ["secret"]);
    assert_eq!(std::fs::read_to_string(&secret).expect("x"), "root x\n");
    assert_eq!(owner_and_mode(&secret), (0, 0, 0o600));
    let e = r.expect_err("the user cannot write there");
    assert!(e.contains("EACCES"), "{e}");
}

#[test]
fn test_home_template_is_read_with_the_users_rights() {
    if !is_root() {
        return;
    }
    let s = Setup::new("home-template-rights");
    // A root-only file in the user's template (a hard link to /etc/shadow would be one).
    let root_only = s.template.join("stolen");
    std::fs::write(&root_only, "root secret\n").expect("write");
    chmod(&root_only, 0o600);
    let home = s.shared.join("vm");

    let e = prepare(&home, &s.template).expect_err("the user cannot read it");

    assert!(e.contains("stolen") && e.contains("as uid 65534"), "{e}");
    assert!(
        e.contains("Permission denied") || e.contains("EACCES"),
        "{e}"
    );
    // Nothing half-copied is left: the home prepare created is gone.
    assert!(!home.exists(), "{:?}", common::entries(&s.shared));
}

#[test]
fn test_home_is_created_from_the_template_and_owned_by_the_user() {
    if !is_root() {
        return;
    }
    let s = Setup::new("home-normal");
    let home = s.shared.join("vm");

    let r = prepare(&home, &s.template);

    assert!(matches!(r, Ok(Prepared::Created(_))), "{r:?}");
    assert_eq!(owner_and_mode(&home), (USER, GROUP, 0o700));
    assert_eq!(
        std::fs::read_to_string(home.join(".bashrc")).expect("copied"),
        "PS1=vm\n"
    );
    assert_eq!(
        std::fs::read_to_string(home.join(".config/x")).expect("copied"),
        "from the template\n"
    );
    assert_eq!(
        std::fs::read_link(home.join("link")).expect("link"),
        Path::new(".bashrc")
    );
    assert_eq!(owner_and_mode(&home.join(".bashrc")), (USER, GROUP, 0o644));
    assert_eq!(owner_and_mode(&home.join(".config")), (USER, GROUP, 0o755));
    assert_eq!(
        owner_and_mode(&home.join(".config/x")),
        (USER, GROUP, 0o644)
    );
    assert_eq!(owner_and_mode(&home.join("run.sh")), (USER, GROUP, 0o750));
    let link = std::fs::symlink_metadata(home.join("link")).expect("link");
    assert_eq!((link.uid(), link.gid()), (USER, GROUP));

    // Second use: the user's changes stay.
    std::fs::write(home.join(".bashrc"), "changed").expect("write");
    assert_eq!(prepare(&home, &s.template), Ok(Prepared::Existing));
    assert_eq!(
        std::fs::read_to_string(home.join(".bashrc")).expect("kept"),
        "changed"
    );
}

#[test]
fn test_existing_empty_home_is_given_to_the_user_and_filled() {
    if !is_root() {
        return;
    }
    let s = Setup::new("home-empty");
    let home = s.shared.join("vm");
    std::fs::create_dir(&home).expect("mkdir home");
    chmod(&home, 0o750);

    assert_eq!(prepare(&home, &s.template), Ok(Prepared::Filled));

    assert_eq!(owner_and_mode(&home), (USER, GROUP, 0o750));
    assert_eq!(owner_and_mode(&home.join(".bashrc")), (USER, GROUP, 0o644));
}

#[test]
fn test_removing_a_created_home_leaves_what_the_user_could_not_remove() {
    if !is_root() {
        return;
    }
    let s = Setup::new("home-remove");
    let home = s.shared.join("vm");
    let Ok(Prepared::Created(id)) = prepare(&home, &s.template) else {
        panic!("the home is created");
    };
    // The user moves in one of their directories that holds a root-owned one (made there by
    // root, say with sudo): root must not clear it for them.
    let theirs = home.join("moved");
    std::fs::create_dir(&theirs).expect("mkdir");
    chown(&theirs, USER, GROUP);
    let roots = theirs.join("root-owned");
    std::fs::create_dir(&roots).expect("mkdir");
    std::fs::write(roots.join("f"), "root's\n").expect("write");

    let r = home::remove_created(&home, id, USER).map_err(|e| e.to_string());

    assert_eq!(
        std::fs::read_to_string(roots.join("f")).expect("kept"),
        "root's\n"
    );
    let e = r.expect_err("the root-owned directory stays, so the home does");
    assert!(e.contains("EPERM"), "{e}");
}

#[test]
fn test_removing_a_created_home_that_was_replaced_by_a_symlink_removes_nothing_behind_it() {
    if !is_root() {
        return;
    }
    let s = Setup::new("home-remove-link");
    let home = s.shared.join("vm");
    let Ok(Prepared::Created(id)) = prepare(&home, &s.template) else {
        panic!("the home is created");
    };
    let target = s.root_dir("etc");
    std::fs::write(target.join("passwd"), "root:x:0:0\n").expect("write");
    std::fs::rename(&home, s.shared.join("old")).expect("rename");
    symlink(&target, &home).expect("symlink");

    let r = home::remove_created(&home, id, USER).map_err(|e| e.to_string());

    assert_eq!(common::entries(&target), ["passwd"]);
    let e = r.expect_err("a link is not followed");
    assert!(e.contains("is a symbolic link"), "{e}");
}
