//! Units, the generator, completion scripts and man pages, from the real `vmsilo` binary:
//!
//! - the units for `examples/vmsilo.toml` match the golden files (`tests/golden/units/`;
//!   `VMSILO_UPDATE_GOLDEN=1` rewrites them) and pass `systemd-analyze verify`;
//! - `vmsilo-generator NORMAL EARLY LATE` writes exactly what `vmsilo units` writes (the flake
//!   check's `diff -r`), nothing for a disabled or absent configuration, and for an invalid
//!   one an error unit (exit 0: a generator never breaks the boot);
//! - bash completion offers the configured VM names where a VM goes;
//! - man pages exist for `vmsilo`, its subcommands and the `vm-*` names.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Scratch, multi_call, vmsilo, vmsilo_bin};

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/vmsilo.toml")
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/units")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `systemd-analyze verify` only checks that ExecStart= programs exist and are executable, so
/// all three point at the real vmsilo binary here. The host is taken as one without the NixOS
/// module (vmsilo-net.service is generated), whatever this machine is.
fn bins(cmd: &mut Command) -> &mut Command {
    let b = vmsilo_bin();
    cmd.env("VMSILO_BIN", &b)
        .env("VMSILO_VM_SWITCH_BIN", &b)
        .env("VMSILO_BALLOOND_BIN", &b)
        .env("VMSILO_HOST_SETUP", "vmsilo")
}

/// Every file under `dir` (relative path → content, or `-> target` for symlinks).
fn tree(dir: &Path) -> Vec<(String, String)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").path())
            .collect();
        entries.sort();
        for p in entries {
            let rel = p
                .strip_prefix(base)
                .expect("prefix")
                .to_string_lossy()
                .into_owned();
            let meta = std::fs::symlink_metadata(&p).expect("stat");
            if meta.file_type().is_symlink() {
                let t = std::fs::read_link(&p).expect("link");
                out.push((rel, format!("-> {}", t.display())));
            } else if meta.is_dir() {
                walk(base, &p, out);
            } else {
                out.push((rel, std::fs::read_to_string(&p).expect("read")));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out
}

fn units(dir: &Scratch, config: &Path) -> PathBuf {
    let out = dir.path().join("units");
    let o = bins(&mut vmsilo())
        .args([
            "--config",
            config.to_str().expect("utf-8"),
            "units",
            "--out",
        ])
        .arg(&out)
        .output()
        .expect("vmsilo units");
    assert!(o.status.success(), "{}", stderr(&o));
    out
}

#[test]
fn test_units_for_the_example_match_the_golden_files() {
    let dir = Scratch::new("golden");
    let out = units(&dir, &example());
    let config = example();
    let config = config.to_str().expect("utf-8");
    let bin = vmsilo_bin();
    let bin = bin.to_str().expect("utf-8");
    let normalize = |text: &str| text.replace(config, "<CONFIG>").replace(bin, "<BIN>");
    let mut actual = tree(&out.join("systemd"));
    actual.push((
        "polkit/50-vmsilo.rules".into(),
        std::fs::read_to_string(out.join("polkit/50-vmsilo.rules")).expect("polkit rule"),
    ));
    actual.sort();
    let golden = golden_dir();
    if std::env::var_os("VMSILO_UPDATE_GOLDEN").is_some() {
        let _ = std::fs::remove_dir_all(&golden);
        for (rel, text) in &actual {
            let p = golden.join(format!("{rel}.golden"));
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, normalize(text)).expect("write golden");
        }
    }
    let expected: Vec<(String, String)> = tree(&golden)
        .into_iter()
        .map(|(rel, text)| (rel.trim_end_matches(".golden").to_owned(), text))
        .collect();
    let actual: Vec<(String, String)> = actual
        .into_iter()
        .map(|(rel, text)| (rel, normalize(&text)))
        .collect();
    let names = |v: &[(String, String)]| v.iter().map(|(r, _)| r.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&actual),
        names(&expected),
        "the set of generated files"
    );
    for ((rel, a), (_, e)) in actual.iter().zip(&expected) {
        assert_eq!(
            a, e,
            "{rel} differs from its golden file (VMSILO_UPDATE_GOLDEN=1)"
        );
    }
}

fn verify(unit_dir: &Path) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(unit_dir)
        .expect("units")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty());
    let o = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&files)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .expect("systemd-analyze (Debian: systemd)");
    let text = stderr(&o);
    // Complaints about the machine's own units are not ours.
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.contains(unit_dir.to_str().expect("utf-8"))
                || l.contains("vmsilo")
                || l.contains("vm-switch")
        })
        .collect();
    assert!(o.status.success(), "systemd-analyze verify failed:\n{text}");
    assert!(
        ours.is_empty(),
        "systemd-analyze complains:\n{}",
        ours.join("\n")
    );
}

#[test]
fn test_units_for_the_example_pass_systemd_analyze_verify() {
    let dir = Scratch::new("verify");
    let out = units(&dir, &example());
    verify(&out.join("systemd"));
}

#[test]
fn test_units_with_vm_switch_depends_on_and_autostart_pass_verify() {
    let dir = Scratch::new("verify2");
    let cfg = dir.path().join("vmsilo.toml");
    std::fs::write(
        &cfg,
        r#"
enable = true
user = "root"
[vm-switch]
extraArgs = ["--buffer-size", "1m"]
[vmsilo-balloond]
extraArgs = ["--request-timeout", "1s"]
[[nixosVms]]
name = "gw"
kernel = "/k"
initramfs = "/i"
rootDisk = "/r"
autoStart = true
sharedHome = "/home/alice/vms/gw home"
[nixosVms.network.interfaces.lan]
vmNetwork.name = "lan"
addresses = ["10.9.0.1/24"]
[[nixosVms]]
name = "app"
kernel = "/k"
initramfs = "/i"
rootDisk = "/r"
dependsOn = ["gw"]
sharedDirectories = [{ path = "/srv/data 50%", tag = "data" }]
[nixosVms.network.interfaces.lan]
vmNetwork.name = "lan"
addresses = ["10.9.0.2/24"]
"#,
    )
    .expect("config");
    let out = units(&dir, &cfg);
    let unit = std::fs::read_to_string(out.join("systemd/vmsilo-app-vm.service")).expect("unit");
    assert!(
        unit.contains("Wants=vmsilo-balloond.service vm-switch-lan.service vmsilo-gw-vm.service"),
        "{unit}"
    );
    assert!(
        unit.contains("ReadWritePaths=-/shared -/shared/app \"-/srv/data 50%%\""),
        "{unit}"
    );
    assert!(
        out.join("systemd/multi-user.target.wants/vmsilo-gw-vm.service")
            .is_symlink()
    );
    // vm-switch mounts its own /proc in a user namespace, which the kernel refuses when /proc
    // has mounts over parts of it (ProtectKernelTunables=, ProtectKernelLogs=); and it creates
    // namespaces.
    let switch = std::fs::read_to_string(out.join("systemd/vm-switch-lan.service")).expect("unit");
    for forbidden in [
        "ProtectKernelTunables",
        "ProtectKernelLogs",
        "RestrictNamespaces",
    ] {
        assert!(!switch.contains(forbidden), "{forbidden} in:\n{switch}");
    }
    assert!(
        switch.contains("ReadWritePaths=/run/vm-switch/lan"),
        "{switch}"
    );
    let balloond =
        std::fs::read_to_string(out.join("systemd/vmsilo-balloond.service")).expect("unit");
    assert!(balloond.contains("ProtectKernelTunables=yes"), "{balloond}");
    verify(&out.join("systemd"));
}

fn generator(dir: &Scratch, config: Option<&Path>) -> (Output, PathBuf) {
    let gen_dir = dir.path().join("gen");
    for d in ["normal", "early", "late"] {
        std::fs::create_dir_all(gen_dir.join(d)).expect("mkdir");
    }
    let program = multi_call(dir.path(), "vmsilo-generator");
    let mut cmd = common::command(&program);
    bins(&mut cmd);
    if let Some(c) = config {
        cmd.env("VMSILO_CONFIG", c);
    }
    let o = cmd
        .arg(gen_dir.join("normal"))
        .arg(gen_dir.join("early"))
        .arg(gen_dir.join("late"))
        .output()
        .expect("generator");
    (o, gen_dir)
}

#[test]
fn test_generator_writes_what_vmsilo_units_writes() {
    let dir = Scratch::new("gen");
    let (o, gen_dir) = generator(&dir, Some(&example()));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(o.stderr.is_empty(), "{}", stderr(&o));
    let units = units(&dir, &example());
    assert_eq!(tree(&gen_dir.join("normal")), tree(&units.join("systemd")));
    assert!(tree(&gen_dir.join("early")).is_empty());
    assert!(tree(&gen_dir.join("late")).is_empty());
}

#[test]
fn test_generator_on_nixos_leaves_host_networking_to_the_module() {
    let dir = Scratch::new("gen-nixos");
    let gen_dir = dir.path().join("gen");
    for d in ["normal", "early", "late"] {
        std::fs::create_dir_all(gen_dir.join(d)).expect("mkdir");
    }
    let o = bins(&mut Command::new(vmsilo_bin()))
        .env("VMSILO_HOST_SETUP", "nixos")
        .env("VMSILO_CONFIG", example())
        .arg("generator")
        .arg(gen_dir.join("normal"))
        .output()
        .expect("generator");
    assert!(o.status.success(), "{}", stderr(&o));
    let files = tree(&gen_dir.join("normal"));
    assert!(
        !files.iter().any(|(p, _)| p.contains("vmsilo-net.service")),
        "{files:?}"
    );
    assert!(files.iter().any(|(p, _)| p == "vmsilo-banking-vm.service"));
    // Without NixOS the same configuration gets it (the seed's VMs have TAPs and NAT).
    let units = units(&dir, &example());
    assert!(units.join("systemd/vmsilo-net.service").is_file());
}

#[test]
fn test_generator_reports_an_invalid_configuration_with_a_failing_unit_and_exit_0() {
    let dir = Scratch::new("gen-bad");
    let cfg = dir.path().join("vmsilo.toml");
    // A global problem: no VM can be trusted, so none gets units.
    std::fs::write(
        &cfg,
        "enable = true\nuser = \"x\"\nisolatedPciDevices = [\"zz\"]\n[[nixosVms]]\nname = \"a\"\n\
         kernel = \"/k\"\ninitramfs = \"/i\"\nrootDisk = \"/r\"\n",
    )
    .expect("config");
    let (o, gen_dir) = generator(&dir, Some(&cfg));
    assert_eq!(o.status.code(), Some(0), "a generator never fails the boot");
    let err = stderr(&o);
    assert!(err.contains("isolatedPciDevices"), "{err}");
    assert!(err.contains("vmsilo-config-error.service"), "{err}");
    let normal = gen_dir.join("normal");
    let files: Vec<String> = tree(&normal).into_iter().map(|(r, _)| r).collect();
    assert_eq!(
        files,
        [
            "multi-user.target.wants/vmsilo-config-error.service",
            "vmsilo-config-error.service"
        ]
    );
    let unit = std::fs::read_to_string(normal.join("vmsilo-config-error.service")).expect("unit");
    assert!(
        unit.contains(&format!("--config {} check", cfg.display())),
        "{unit}"
    );
    verify(&normal);
    // The unit's command fails, with the problems.
    let o = vmsilo()
        .args(["--config", cfg.to_str().expect("utf-8"), "check"])
        .output()
        .expect("check");
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn test_generator_leaves_out_only_the_broken_vm() {
    let dir = Scratch::new("gen-one-bad");
    let cfg = dir.path().join("vmsilo.toml");
    std::fs::write(
        &cfg,
        "enable = true\nuser = \"x\"\n\
         [[nixosVms]]\nname = \"good\"\nkernel = \"/k\"\ninitramfs = \"/i\"\nrootDisk = \"/r\"\n\
         sound = { backend = \"pulse\", capture = true }\n\
         [[nixosVms]]\nname = \"bad\"\nkernel = \"/k\"\ninitramfs = \"/i\"\nrootDisk = \"/r\"\n\
         memroy = 1\n",
    )
    .expect("config");
    let (o, gen_dir) = generator(&dir, Some(&cfg));
    assert_eq!(o.status.code(), Some(0));
    let err = stderr(&o);
    assert!(err.contains("did you mean \"memory\""), "{err}");
    assert!(err.contains("VM bad (nixosVms[1]) is left out"), "{err}");
    let normal = gen_dir.join("normal");
    let files: Vec<String> = tree(&normal).into_iter().map(|(r, _)| r).collect();
    assert_eq!(
        files,
        [
            "multi-user.target.wants/vmsilo-bad-config-error.service",
            "sockets.target.wants/vmsilo-good.socket",
            "vmsilo-bad-config-error.service",
            "vmsilo-balloond.service",
            "vmsilo-good-command.service",
            "vmsilo-good-vm.service",
            "vmsilo-good.socket",
        ],
        "the good VM keeps its units; the bad one has only its error unit"
    );
    let unit =
        std::fs::read_to_string(normal.join("vmsilo-bad-config-error.service")).expect("unit");
    assert!(
        unit.contains("# VM \"bad\": memroy: unknown option \"memroy\""),
        "the unit says why: {unit}"
    );
    assert!(
        unit.contains(&format!("--config {} check", cfg.display())),
        "{unit}"
    );
    verify(&normal);
    // Its command fails with the problems; the strict check still fails the file.
    let o = vmsilo()
        .args(["--config", cfg.to_str().expect("utf-8"), "check"])
        .output()
        .expect("check");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("memroy"), "{}", stderr(&o));
    // The good VM plans; asking for the bad one says why it is not there.
    let plan = |vm: &str| {
        vmsilo()
            .args(["--config", cfg.to_str().expect("utf-8"), "plan", vm])
            .args(["--uid", "1000", "--gid", "1000"])
            .output()
            .expect("plan")
    };
    let o = plan("good");
    assert!(o.status.success(), "{}", stderr(&o));
    let o = plan("bad");
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("VM \"bad\" is left out: its configuration is invalid")
            && err.contains("memroy"),
        "{err}"
    );
}

#[test]
fn test_generator_writes_nothing_when_disabled_or_unconfigured() {
    let dir = Scratch::new("gen-off");
    let cfg = dir.path().join("vmsilo.toml");
    let text = std::fs::read_to_string(example())
        .expect("example")
        .replace("enable = true", "enable = false");
    std::fs::write(&cfg, text).expect("config");
    let (o, gen_dir) = generator(&dir, Some(&cfg));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(tree(&gen_dir.join("normal")).is_empty());
    if !Path::new("/etc/vmsilo").exists() {
        let (o, gen_dir) = generator(&dir, None);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(o.stderr.is_empty(), "{}", stderr(&o));
        assert!(tree(&gen_dir.join("normal")).is_empty());
    }
}

#[test]
fn test_generator_exits_1_when_it_cannot_write() {
    let dir = Scratch::new("gen-ro");
    let program = multi_call(dir.path(), "vmsilo-generator");
    let o = bins(&mut common::command(&program))
        .env("VMSILO_CONFIG", example())
        .arg(dir.path().join("vmsilo-generator/not-a-dir"))
        .output()
        .expect("generator");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot create"), "{}", stderr(&o));
}

/// Runs a bash completion and returns COMPREPLY.
fn complete(dir: &Scratch, script: &Path, words: &[&str]) -> Vec<String> {
    let bin_dir = dir.path().join("bin");
    std::fs::create_dir_all(&bin_dir).expect("bin");
    multi_call(&bin_dir, "vmsilo");
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        "source {script}\nCOMP_WORDS=({words})\nCOMP_CWORD={cword}\nCOMP_LINE=\"${{COMP_WORDS[*]}}\"\nCOMP_POINT=${{#COMP_LINE}}\nfn=$(complete -p {cmd} | sed -E 's/.*-F ([^ ]+).*/\\1/')\n\"$fn\" {cmd} \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        script = script.display(),
        words = quoted.join(" "),
        cword = words.len() - 1,
        cmd = words[0],
    );
    let o = Command::new("bash")
        .args(["--norc", "-c", &program])
        .env("PATH", format!("{}:/usr/bin:/bin", bin_dir.display()))
        .env("VMSILO_CONFIG", example())
        .output()
        .expect("bash");
    assert!(o.status.success(), "{}", stderr(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn test_bash_completion_offers_vm_names_where_a_vm_goes() {
    let dir = Scratch::new("compl");
    let out = dir.path().join("bash");
    let o = vmsilo()
        .args(["completions", "bash", "--out"])
        .arg(&out)
        .output()
        .expect("completions");
    assert!(o.status.success(), "{}", stderr(&o));
    let vm_start = out.join("vm-start.bash");
    assert_eq!(complete(&dir, &vm_start, &["vm-start", "b"]), ["banking"]);
    assert_eq!(
        complete(&dir, &vm_start, &["vm-start", ""]),
        ["banking", "shopping", "personal"]
    );
    assert!(
        !complete(&dir, &vm_start, &["vm-start", "banking", ""]).contains(&"banking".to_owned())
    );
    let vmsilo_script = out.join("vmsilo.bash");
    assert_eq!(
        complete(
            &dir,
            &vmsilo_script,
            &["vmsilo", "--config", "x.toml", "status", "s"]
        ),
        ["shopping"]
    );
    let subs = complete(&dir, &vmsilo_script, &["vmsilo", "st"]);
    assert!(
        subs.contains(&"status".to_owned()) && subs.contains(&"start".to_owned()),
        "{subs:?}"
    );
    assert!(
        !complete(&dir, &vmsilo_script, &["vmsilo", "check", ""]).contains(&"banking".to_owned())
    );
    let shell = complete(
        &dir,
        &out.join("vm-shell.bash"),
        &["vm-shell", "--ssh", "p"],
    );
    assert_eq!(shell, ["personal"]);
    // vm-run: the VM after its options (also those with a value), then the command's words.
    let vm_run = out.join("vm-run.bash");
    assert_eq!(
        complete(&dir, &vm_run, &["vm-run", "-w", "-e", "A=1", "b"]),
        ["banking"]
    );
    assert!(!complete(&dir, &vm_run, &["vm-run", "banking", ""]).contains(&"banking".to_owned()));
    for shell in ["zsh", "fish"] {
        let out = dir.path().join(shell);
        let o = vmsilo()
            .args(["completions", shell, "--out"])
            .arg(&out)
            .output()
            .expect("completions");
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(
            common::entries(&out).len(),
            6,
            "vmsilo and the five vm-* commands"
        );
    }
}

#[test]
fn test_man_pages_for_vmsilo_subcommands_and_vm_names() {
    let dir = Scratch::new("man");
    let out = dir.path().join("man");
    let o = vmsilo()
        .args(["man", "--out"])
        .arg(&out)
        .output()
        .expect("man");
    assert!(o.status.success(), "{}", stderr(&o));
    let pages = common::entries(&out);
    for p in [
        "vmsilo.1",
        "vmsilo-status.1",
        "vmsilo-units.1",
        "vm-start.1",
        "vm-shell.1",
        "vmsilo-generator.1",
    ] {
        assert!(pages.contains(&p.to_owned()), "{p} in {pages:?}");
    }
    let page = std::fs::read_to_string(out.join("vm-shell.1")).expect("page");
    assert!(
        page.starts_with(".ie") || page.contains(".TH vm-shell"),
        "{page}"
    );
    assert!(page.contains("ssh"), "{page}");
}
