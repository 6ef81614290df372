//! `vmsilo desktop-entries` as the NixOS module runs it: real `.desktop` files of Debian
//! packages (vim, python3.11 and qemu from this machine's `/usr/share/applications`, copied
//! into `tests/data/desktop/`) and a browser-like entry with actions and a subdirectory, a
//! missing `--from` directory, and extra entries from JSON. Every written file passes the
//! freedesktop reference validator `desktop-file-validate` (installed by `cargo xtask setup`),
//! and GLib's launcher (`gio launch`) hands a URL opened with an entry on to `vm-run`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Scratch, entries, vmsilo};

fn data(pkg: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/desktop")
        .join(pkg)
        .join("share/applications")
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn validate(path: &Path) {
    let o = Command::new("desktop-file-validate")
        .arg(path)
        .output()
        .expect("desktop-file-validate (cargo xtask setup installs desktop-file-utils)");
    assert!(
        o.status.success() && o.stdout.is_empty(),
        "{}: {}{}\n{}",
        path.display(),
        String::from_utf8_lossy(&o.stdout),
        text(&o),
        std::fs::read_to_string(path).unwrap_or_default()
    );
}

#[test]
fn test_desktop_entries_from_packages_and_json_launch_through_vm_run() {
    let dir = Scratch::new("desktop");
    let out = dir.path().join("applications");
    let json = dir.path().join("entries.json");
    std::fs::write(
        &json,
        r#"[{"name": "Terminal", "exec": "xterm -e \"sh -c 'echo hi; exec sh'\"", "icon": "utilities-terminal", "categories": ["System", "TerminalEmulator"]},
            {"name": "Vim", "exec": "vim", "icon": null, "categories": []}]"#,
    )
    .expect("json");
    let o = vmsilo()
        .args(["desktop-entries", "--vm", "banking", "--color", "#2e7d32"])
        .arg("--from")
        .arg(data("vim"))
        .arg("--from")
        .arg(data("python3"))
        .arg("--from")
        .arg(data("qemu"))
        .arg("--from")
        .arg(data("browser"))
        .arg("--from")
        .arg(dir.path().join("no-such-package/share/applications"))
        .arg("--entries")
        .arg(&json)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("desktop-entries");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        entries(&out),
        [
            "vmsilo-banking-kde4-settings.desktop",
            "vmsilo-banking-org.example.Browser.desktop",
            "vmsilo-banking-terminal.desktop",
            "vmsilo-banking-vim-2.desktop",
            "vmsilo-banking-vim.desktop",
        ]
    );
    // python3.11 and qemu are NoDisplay; the Link is not an application.
    assert!(
        text(&o).contains("link.desktop: skipped: not an application (Type=Link)"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("wrote 5 desktop entries"), "{}", text(&o));

    let vim = read(&out, "vmsilo-banking-vim.desktop");
    // Terminal=true: vm-run waits, so the terminal stays while vim runs; %F is dropped.
    assert!(vim.contains("\nExec=vm-run -w banking vim\n"), "{vim}");
    assert!(vim.contains("\nName=[banking] Vim\n"), "{vim}");
    assert!(vim.contains("\nName[de]=[banking] Vim\n"), "{vim}");
    assert!(vim.contains("\nGenericName[de]=Texteditor\n"), "{vim}");
    assert!(vim.contains("\nIcon=gvim\n"), "{vim}");
    assert!(vim.contains("\nCategories=Utility;TextEditor;\n"), "{vim}");
    assert!(
        !vim.contains("TryExec") && !vim.contains("MimeType"),
        "{vim}"
    );
    assert!(
        vim.contains("\nX-Vmsilo-VM=banking\nX-Vmsilo-Color=#2e7d32\n"),
        "{vim}"
    );

    let browser = read(&out, "vmsilo-banking-org.example.Browser.desktop");
    assert!(
        browser.contains(
            "\nExec=vm-run banking /usr/lib/example-browser/browser --class \"Example Browser\" %u\n"
        ),
        "{browser}"
    );
    assert!(
        browser
            .contains("\nExec=vm-run banking /usr/lib/example-browser/browser --new-window %u\n"),
        "{browser}"
    );
    assert!(
        browser.contains(
            "\nExec=vm-run banking /usr/lib/example-browser/browser --private-window \"a b\" %u\n"
        ),
        "{browser}"
    );
    assert!(
        browser.contains("\nStartupWMClass=example-browser\n"),
        "{browser}"
    );
    let settings = read(&out, "vmsilo-banking-kde4-settings.desktop");
    assert!(
        settings.contains("\nExec=vm-run banking browser-settings --page=%%general\n"),
        "{settings}"
    );
    let terminal = read(&out, "vmsilo-banking-terminal.desktop");
    assert!(
        terminal.contains("\nExec=vm-run banking xterm -e \"sh -c 'echo hi; exec sh'\"\n"),
        "{terminal}"
    );
    assert!(
        terminal.contains("\nCategories=System;TerminalEmulator;\n"),
        "{terminal}"
    );
    for name in entries(&out) {
        validate(&out.join(name));
    }
}

/// Issue 14: a URL opened with a generated entry on the host reaches the guest program. GLib's
/// launcher (`gio launch`, what GNOME and most toolkits use) runs the entry with a URL; a
/// stand-in `vm-run` on PATH records the arguments it gets, which `vm-run` hands to the guest
/// unchanged after the command.
#[test]
fn test_desktop_entry_passes_a_url_opened_on_the_host_to_vm_run() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Scratch::new("desktop-url");
    let out = dir.path().join("applications");
    let o = vmsilo()
        .args(["desktop-entries", "--vm", "banking"])
        .arg("--from")
        .arg(data("browser"))
        .arg("--out")
        .arg(&out)
        .output()
        .expect("desktop-entries");
    assert!(o.status.success(), "{}", text(&o));
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir bin");
    let record = dir.path().join("args");
    let fake = bin.join("vm-run");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do printf '<%s>\\n' \"$a\"; done > {0}.tmp && mv {0}.tmp {0}\n",
            record.display()
        ),
    )
    .expect("fake vm-run");
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let url = "https://example.org/a b?q=1&r=$HOME";
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let o = Command::new("gio")
        .arg("launch")
        .arg(out.join("vmsilo-banking-org.example.Browser.desktop"))
        .arg(url)
        .env("PATH", path)
        .output()
        .expect("gio (Debian: libglib2.0-bin; cargo xtask setup installs it)");
    assert!(o.status.success(), "gio launch: {}", text(&o));
    // gio does not wait for the program; a generous bound only guards against a hang.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !record.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "vm-run was never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        std::fs::read_to_string(&record).expect("recorded arguments"),
        format!(
            "<banking>\n</usr/lib/example-browser/browser>\n<--class>\n<Example Browser>\n<{url}>\n"
        )
    );
}

#[test]
fn test_desktop_entries_refuse_bad_input() {
    let dir = Scratch::new("desktop-bad");
    let out = dir.path().join("out");
    let run = |args: &[&str]| {
        vmsilo()
            .arg("desktop-entries")
            .args(args)
            .arg("--out")
            .arg(&out)
            .output()
            .expect("desktop-entries")
    };
    let o = run(&["--vm", "../x"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = run(&["--vm", "a", "--color", "not a colour"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--color"), "{}", text(&o));
    let json = dir.path().join("e.json");
    std::fs::write(&json, r#"[{"name": "x"}]"#).expect("json");
    let o = run(&["--vm", "a", "--entries", json.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("exec"), "{}", text(&o));
    std::fs::write(&json, r#"[{"name": "x", "exec": "a \"b"}]"#).expect("json");
    let o = run(&["--vm", "a", "--entries", json.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("unterminated double quote"),
        "{}",
        text(&o)
    );
    // A .desktop file that is not one is skipped with a note, never a failure.
    let from = dir.path().join("apps");
    std::fs::create_dir_all(&from).expect("mkdir");
    std::fs::write(from.join("junk.desktop"), b"\xff\xfe\x00garbage").expect("junk");
    let o = run(&["--vm", "a", "--from", from.to_str().expect("utf-8")]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("junk.desktop: skipped"), "{}", text(&o));
}
