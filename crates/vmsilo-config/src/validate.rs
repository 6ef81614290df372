//! Cross-field validation: the rules a configuration must follow beyond types and formats.
//!
//! [`validate`] checks everything and returns every problem found; on success it returns a
//! [`ValidConfig`], the only input the plan builders accept.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;

use crate::derive::{self, HOME_TAG};
use crate::diag::{Diagnostic, Diagnostics, Scope};
use crate::model::{
    self, Config, ConfigError, Format, Interface, InterfaceType, OptValue, Options, SharedHome, Vm,
    Vmm, path_of, str_value,
};
use crate::net::{Cidr, MacAddr, check_ifname};
use crate::pci::PciAddress;

/// Longest VM name (keeps every derived socket path under the 108-byte `sun_path` limit with
/// the default directories).
pub const MAX_VM_NAME: usize = 40;
/// Longest vm-switch network name.
pub const MAX_NET_NAME: usize = 40;
/// Longest shared-directory tag (virtio-fs allows 36 bytes).
pub const MAX_TAG: usize = 36;

/// A configuration that passed validation, with the values derived across VMs (vsock CIDs).
#[derive(Debug, Clone, PartialEq)]
pub struct ValidConfig {
    config: Config,
    cids: BTreeMap<String, u32>,
    left_out: Vec<LeftOutVm>,
}

/// A VM [`load_str_lenient`] left out of a configuration because of its own problems.
#[derive(Debug, Clone, PartialEq)]
pub struct LeftOutVm {
    /// Its name, when one could be read and is a valid VM name (usable in unit names).
    pub name: Option<String>,
    /// Its position in the file's `nixosVms`.
    pub index: usize,
    /// Its problems (paths relative to the file, as `vmsilo check` prints them).
    pub problems: Diagnostics,
}

impl ValidConfig {
    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }
    /// The vsock CID of a VM.
    pub fn cid(&self, vm: &str) -> Option<u32> {
        self.cids.get(vm).copied()
    }
    /// Every VM's CID, by name.
    pub fn cids(&self) -> &BTreeMap<String, u32> {
        &self.cids
    }
    /// The VMs left out by [`load_str_lenient`] (empty after a strict load).
    pub fn left_out(&self) -> &[LeftOutVm] {
        &self.left_out
    }
    /// The left-out VM called `name`.
    pub fn left_out_vm(&self, name: &str) -> Option<&LeftOutVm> {
        self.left_out
            .iter()
            .find(|v| v.name.as_deref() == Some(name))
    }
    /// Gives the configuration back.
    pub fn into_inner(self) -> Config {
        self.config
    }
}

impl Deref for ValidConfig {
    type Target = Config;
    fn deref(&self) -> &Config {
        &self.config
    }
}

/// Reads and validates configuration text: the one call most users of this crate need.
///
/// Every problem is reported at once: those found while reading (types, formats, unknown keys)
/// and those of the cross-field rules. A rule whose input could not be read is not checked
/// (the reading problem is reported instead), so one mistake does not show up twice.
pub fn load_str(text: &str, format: Format) -> Result<ValidConfig, ConfigError> {
    let tree = model::parse_tree(text, format)?;
    load_tree(&tree)
}

/// [`load_str`], but a VM whose problems are all its own (every problem of the configuration
/// is either global or belongs to one VM) is left out instead of failing the whole
/// configuration: the rest is validated again without it, until what is left is valid. What
/// the generator and the runtime use, so that one broken VM does not take the others down;
/// `vmsilo check` stays strict. Global problems (or a syntax error) fail as [`load_str`] does,
/// with every problem of the file.
pub fn load_str_lenient(text: &str, format: Format) -> Result<ValidConfig, ConfigError> {
    let tree = model::parse_tree(text, format)?;
    load_tree_lenient(&tree)
}

/// [`load_str_lenient`] for an already parsed tree.
pub fn load_tree_lenient(tree: &serde_json::Value) -> Result<ValidConfig, ConfigError> {
    let first = match load_tree(tree) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let mut tree = tree.clone();
    // Positions in the file of the VMs still in `tree`.
    let mut positions: Vec<usize> = match tree.get("nixosVms") {
        Some(serde_json::Value::Array(a)) => (0..a.len()).collect(),
        _ => return Err(first),
    };
    let mut left_out = Vec::new();
    let mut err = first.clone();
    // Each round leaves out at least one VM, so this ends.
    loop {
        let ConfigError::Invalid(Diagnostics(diags)) = &err else {
            return Err(first);
        };
        let mut broken: BTreeMap<usize, Vec<Diagnostic>> = BTreeMap::new();
        for d in diags {
            match &d.scope {
                Scope::Vm { index, .. } if *index < positions.len() => {
                    broken.entry(*index).or_default().push(d.clone());
                }
                _ => return Err(first),
            }
        }
        if broken.is_empty() {
            return Err(first);
        }
        let Some(serde_json::Value::Array(vms)) = tree.get_mut("nixosVms") else {
            return Err(first);
        };
        for (index, problems) in broken.into_iter().rev() {
            let vm = vms.remove(index);
            let name = vm
                .get("name")
                .and_then(|n| n.as_str())
                .filter(|n| check_name(n, "VM name", MAX_VM_NAME).is_ok())
                .map(str::to_owned);
            let file_index = positions.remove(index);
            let problems = problems
                .into_iter()
                .map(|mut d| {
                    d.scope = Scope::Vm {
                        index: file_index,
                        name: name.clone(),
                    };
                    d
                })
                .collect();
            left_out.push(LeftOutVm {
                name,
                index: file_index,
                problems: Diagnostics(problems),
            });
        }
        match load_tree(&tree) {
            Ok(mut v) => {
                left_out.sort_by_key(|l| l.index);
                v.left_out = left_out;
                return Ok(v);
            }
            Err(e) => err = e,
        }
    }
}

/// [`load_str`] for an already parsed tree.
pub fn load_tree(tree: &serde_json::Value) -> Result<ValidConfig, ConfigError> {
    let (config, read_diags) = model::read_tree(tree);
    let Some(config) = config else {
        return Err(ConfigError::Invalid(Diagnostics(read_diags)));
    };
    if read_diags.is_empty() {
        return validate(config).map_err(ConfigError::Invalid);
    }
    let failed: Vec<String> = read_diags.iter().map(Diagnostic::full_path).collect();
    // VM names that could not be read make "no VM called ..." meaningless.
    let names_reliable = !config.nixos_vms.iter().enumerate().any(|(i, _)| {
        let name = format!("nixosVms[{i}].name");
        failed.iter().any(|f| covers(f, &name))
    });
    // A failed `type`/`vmm` changes which rules apply to its whole table: skip that table.
    let mut skipped: Vec<String> = failed.clone();
    for f in &failed {
        for suffix in [".type", ".vmm"] {
            if let Some(parent) = f.strip_suffix(suffix) {
                skipped.push(parent.to_owned());
            }
        }
    }
    let mut checker = Checker {
        cfg: &config,
        diags: Vec::new(),
        names_reliable,
    };
    checker.run();
    let mut all = read_diags;
    all.extend(
        checker
            .diags
            .into_iter()
            .filter(|d| !skipped.iter().any(|s| covers(s, &d.full_path()))),
    );
    all.sort_by_key(|d| match d.scope {
        Scope::Global => 0,
        Scope::Vm { index, .. } => index + 1,
    });
    Err(ConfigError::Invalid(Diagnostics(all)))
}

/// Whether `path` is `prefix` or lies below it.
fn covers(prefix: &str, path: &str) -> bool {
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

/// Checks every cross-field rule; returns all problems at once.
pub fn validate(config: Config) -> Result<ValidConfig, Diagnostics> {
    let mut v = Checker {
        cfg: &config,
        diags: Vec::new(),
        names_reliable: true,
    };
    v.run();
    let diags = v.diags;
    if !diags.is_empty() {
        return Err(Diagnostics(diags));
    }
    let cids = derive::assign_cids(config.nixos_vms.iter().map(|v| v.name.as_str()));
    Ok(ValidConfig {
        config,
        cids,
        left_out: Vec::new(),
    })
}

struct Checker<'c> {
    cfg: &'c Config,
    diags: Vec<Diagnostic>,
    /// Whether every VM name could be read (else unknown-name checks are skipped).
    names_reliable: bool,
}

/// The log levels crosvm's `--log-level` filter understands.
const CROSVM_LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

/// crosvm flags removed upstream (`google/crosvm` `src/crosvm/cmdline.rs`): crosvm's argument
/// parser rejects them with exit status 35.
const REMOVED_CROSVM_FLAGS: &[(&str, &str)] = &[
    ("--vhost-user-fs", "--vhost-user fs,socket=PATH"),
    ("--vhost-user-net", "--vhost-user net,socket=PATH"),
    ("--vhost-user-blk", "--vhost-user block,socket=PATH"),
    ("--vhost-user-snd", "--vhost-user sound,socket=PATH"),
    ("--vhost-user-gpu", "--vhost-user gpu,socket=PATH"),
    ("--vhost-user-vsock", "--vhost-user vsock,socket=PATH"),
    ("--vhost-user-console", "--vhost-user console,socket=PATH"),
    ("--vhost-user-wl", "--vhost-user wl,socket=PATH"),
    (
        "--vhost-user-mac80211-hwsim",
        "--vhost-user mac80211-hwsim,socket=PATH",
    ),
    (
        "--vhost-user-video-decoder",
        "--vhost-user video-decoder,socket=PATH",
    ),
    ("--vhost-user-scmi", "--vhost-user scmi,socket=PATH"),
    (
        "--cfg",
        "command-line flags (the config-file feature was deleted)",
    ),
];

/// Values `--vfio ...,iommu=` accepts, plus the seed's `on` (mapped to `viommu`).
const IOMMU_VALUES: &[&str] = &["off", "viommu", "coiommu", "pkvm-iommu", "on"];

fn check_name(s: &str, what: &str, max: usize) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if s.len() > max {
        return Err(format!(
            "{s:?} is {} bytes; {what}s are at most {max} bytes",
            s.len()
        ));
    }
    if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!("{s:?} must start with a letter or digit"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "{s:?} contains {c:?}: {what}s may use letters, digits, '-' and '_' only (they \
             become unit, socket and interface names)"
        ));
    }
    Ok(())
}

/// An absolute path the VMM can take: no NUL, no newline, no `extra` characters.
fn check_path(p: &str, extra: &[char]) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} is not an absolute path"));
    }
    if p.contains(['\0', '\n']) {
        return Err(format!("{p:?} contains a NUL or newline"));
    }
    if let Some(c) = extra.iter().find(|c| p.contains(**c)) {
        return Err(format!(
            "{p:?} contains {c:?}, which the VMM's option syntax cannot carry: use a path without it"
        ));
    }
    Ok(())
}

/// A Wayland interface name as the gate takes it: `[a-z0-9_]+` (e.g. `wp_viewporter`), at most
/// 64 bytes.
pub fn check_interface_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(
            "a Wayland interface name has 1 to 64 characters, e.g. \"wp_viewporter\"".into(),
        );
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(format!(
            "{name:?} is not a Wayland interface name: only a-z, 0-9 and _ (e.g. \"wp_viewporter\")"
        ));
    }
    Ok(())
}

/// A value for a comma-separated `key=value` list (crosvm `--block`, `--gpu`, `--vfio`,
/// `--vhost-user`): no commas or quotes, unless it is a bracketed list (`[[mode=windowed]]`).
fn check_kv_value(v: &OptValue) -> Result<(), String> {
    let OptValue::Str(s) = v else { return Ok(()) };
    let bracketed = s.starts_with('[') && s.ends_with(']');
    if !bracketed && s.contains([',', '"', '\'', '[', ']']) {
        return Err(format!(
            "{s:?} contains a ',', quote or bracket, which crosvm's key=value syntax cannot carry"
        ));
    }
    if s.contains(['\0', '\n']) {
        return Err(format!("{s:?} contains a NUL or newline"));
    }
    Ok(())
}

fn check_crosvm_log_level(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("is empty: use error, warn, info, debug or trace".into());
    }
    for directive in s.split(',') {
        let level = directive.rsplit('=').next().unwrap_or(directive);
        let module_ok = directive
            .split_once('=')
            .is_none_or(|(m, _)| !m.is_empty() && !m.contains(char::is_whitespace));
        if !CROSVM_LEVELS.contains(&level) || !module_ok {
            return Err(format!(
                "{s:?} is not a crosvm log filter: use one of {} or module=level pairs such as \"info,disk=off\"",
                CROSVM_LEVELS.join(", ")
            ));
        }
    }
    Ok(())
}

impl Checker<'_> {
    fn run(&mut self) {
        self.check_global();
        for (i, vm) in self.cfg.nixos_vms.iter().enumerate() {
            self.check_vm(i, vm);
        }
        self.check_across_vms();
    }

    fn global(&mut self, path: &str, value: Option<String>, message: impl Into<String>) {
        self.diags.push(Diagnostic {
            scope: Scope::Global,
            path: path.into(),
            value,
            message: message.into(),
        });
    }

    fn vm(
        &mut self,
        index: usize,
        vm: &Vm,
        path: &str,
        value: Option<String>,
        message: impl Into<String>,
    ) {
        self.diags.push(Diagnostic {
            scope: Scope::Vm {
                index,
                name: (!vm.name.is_empty()).then(|| vm.name.clone()),
            },
            path: path.into(),
            value,
            message: message.into(),
        });
    }

    fn check_extra_args(&mut self, scope: Option<(usize, &Vm)>, path: &str, args: &[String]) {
        for (i, a) in args.iter().enumerate() {
            let flag = a.split_once('=').map_or(a.as_str(), |(f, _)| f);
            if let Some((_, instead)) = REMOVED_CROSVM_FLAGS.iter().find(|(f, _)| *f == flag) {
                let msg = format!("crosvm no longer has {flag}: use {instead}");
                let p = format!("{path}[{i}]");
                match scope {
                    None => self.global(&p, Some(str_value(a)), msg),
                    Some((idx, vm)) => self.vm(idx, vm, &p, Some(str_value(a)), msg),
                }
            }
        }
    }

    fn check_global(&mut self) {
        let cfg = self.cfg;
        // `user` missing entirely is reported while reading; an empty one here.
        if cfg.user.is_empty() {
            self.global(
                "user",
                Some(str_value("")),
                "is empty: set the desktop user who runs the VMs, e.g. user = \"alice\"",
            );
        } else if cfg.user.len() > 32
            || cfg.user.starts_with('-')
            || !cfg
                .user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'))
        {
            self.global(
                "user",
                Some(str_value(&cfg.user)),
                format!("{:?} is not a valid user name", cfg.user),
            );
        }
        let nat = &cfg.host_networking.nat;
        if nat.enable && nat.interface.is_empty() {
            self.global(
                "hostNetworking.nat.interface",
                Some(str_value("")),
                "must be set when hostNetworking.nat.enable is true: the host's external \
                 interface, e.g. \"eth0\"",
            );
        } else if !nat.interface.is_empty()
            && let Err(e) = check_ifname(&nat.interface)
        {
            self.global(
                "hostNetworking.nat.interface",
                Some(str_value(&nat.interface)),
                e,
            );
        }
        if let Err(e) = check_crosvm_log_level(&cfg.crosvm.log_level) {
            self.global("crosvm.logLevel", Some(str_value(&cfg.crosvm.log_level)), e);
        }
        self.check_extra_args(None, "crosvm.extraArgs", &cfg.crosvm.extra_args);
        self.check_extra_args(None, "crosvm.extraRunArgs", &cfg.crosvm.extra_run_args);
        let mut seen = BTreeSet::new();
        for (i, a) in cfg.isolated_pci_devices.iter().enumerate() {
            if !seen.insert(*a) {
                self.global(
                    &format!("isolatedPciDevices[{i}]"),
                    Some(str_value(&a.to_string())),
                    format!("{a} is listed twice"),
                );
            }
        }
    }

    fn check_vm(&mut self, i: usize, vm: &Vm) {
        let cfg = self.cfg;
        if vm.name.is_empty() {
            // Missing names are reported while reading; only an explicit "" reaches here.
            self.vm(
                i,
                vm,
                "name",
                Some(str_value("")),
                "is empty: every VM needs a name",
            );
        } else if let Err(e) = check_name(&vm.name, "VM name", MAX_VM_NAME) {
            self.vm(i, vm, "name", Some(str_value(&vm.name)), e);
        } else if cfg
            .nixos_vms
            .iter()
            .take(i)
            .any(|other| other.name == vm.name)
        {
            self.vm(
                i,
                vm,
                "name",
                Some(str_value(&vm.name)),
                format!(
                    "another VM is already called {:?}: VM names must be unique",
                    vm.name
                ),
            );
        }

        self.check_boot_files(i, vm);
        self.check_depends_on(i, vm);
        self.check_disks(i, vm);
        self.check_shared_dirs(i, vm);
        self.check_gpu(i, vm);
        self.check_gate(i, vm);
        self.check_pci(i, vm);
        self.check_vhost_user(i, vm);
        for (name, iface) in &vm.network.interfaces {
            self.check_interface(i, vm, name, iface);
        }
        self.check_vm_switch_networks(i, vm);

        if let Some(level) = &vm.crosvm.log_level
            && let Err(e) = check_crosvm_log_level(level)
        {
            self.vm(i, vm, "crosvm.logLevel", Some(str_value(level)), e);
        }
        self.check_extra_args(Some((i, vm)), "crosvm.extraArgs", &vm.crosvm.extra_args);
        self.check_extra_args(
            Some((i, vm)),
            "crosvm.extraRunArgs",
            &vm.crosvm.extra_run_args,
        );
        for (k, p) in vm.kernel_params.iter().enumerate() {
            if p.is_empty() || p.contains(['\0', '\n', '\r']) {
                self.vm(
                    i,
                    vm,
                    &format!("kernelParams[{k}]"),
                    Some(str_value(p)),
                    "kernel parameters cannot be empty or contain a newline",
                );
            }
        }
        let cmdline = derive::kernel_cmdline(vm);
        let len = derive::cmdline_len(&cmdline);
        if len > derive::CMDLINE_MAX {
            self.vm(
                i,
                vm,
                "kernelParams",
                None,
                format!(
                    "the kernel command line would be {len} bytes; x86 allows {}: drop \
                     kernelParams, nameservers, addresses or routes",
                    derive::CMDLINE_MAX
                ),
            );
        }
        match vm.vmm {
            Vmm::Crosvm => {
                if !vm.qemu.extra_args.is_empty() {
                    self.vm(
                        i,
                        vm,
                        "qemu.extraArgs",
                        None,
                        "only applies to QEMU VMs: this VM uses crosvm (use crosvm.extraRunArgs, or set vmm = \"qemu\")",
                    );
                }
            }
            Vmm::Qemu => self.check_qemu(i, vm),
        }
    }

    fn check_boot_files(&mut self, i: usize, vm: &Vm) {
        let images = format!("/var/lib/vmsilo/images/{}", vm.name);
        for (key, val, example) in [
            ("kernel", &vm.kernel, format!("{images}/bzImage")),
            ("initramfs", &vm.initramfs, format!("{images}/initrd")),
        ] {
            match val {
                None => self.vm(
                    i,
                    vm,
                    key,
                    None,
                    format!(
                        "is not set: the NixOS module fills it from the guest build; elsewhere \
                         set it, e.g. {key} = {example:?}"
                    ),
                ),
                Some(p) => {
                    if let Err(e) = check_path(p, &[]) {
                        self.vm(i, vm, key, Some(str_value(p)), e);
                    }
                }
            }
        }
        match &vm.root_disk {
            None => self.vm(
                i,
                vm,
                "rootDisk",
                None,
                format!(
                    "is not set: the NixOS module fills it from the guest build; elsewhere set \
                     it, e.g. rootDisk = \"{images}/root.img\""
                ),
            ),
            Some(d) => {
                if let Err(e) = check_path(&d.path, &[',']) {
                    self.vm(i, vm, "rootDisk.path", Some(str_value(&d.path)), e);
                }
                if d.options.contains_key("ro") {
                    self.vm(
                        i,
                        vm,
                        "rootDisk.ro",
                        None,
                        "use rootDiskReadonly to make the root disk writable or read-only",
                    );
                }
                if d.options.contains_key("root") {
                    self.vm(
                        i,
                        vm,
                        "rootDisk.root",
                        None,
                        "vmsilo marks the root disk itself: remove this key",
                    );
                }
                self.check_disk_options(i, vm, "rootDisk", &d.options);
            }
        }
    }

    fn check_disk_options(&mut self, i: usize, vm: &Vm, path: &str, opts: &Options) {
        for (k, v) in opts {
            if let Err(e) = check_kv_value(v) {
                self.vm(i, vm, &format!("{path}.{k}"), Some(v.to_string()), e);
            }
        }
        if let Some(f) = opts.get("format")
            && !matches!(f, OptValue::Str(s) if s == "raw" || s == "qcow2")
        {
            self.vm(
                i,
                vm,
                &format!("{path}.format"),
                Some(f.to_string()),
                format!("{f} is not a disk format: use \"raw\" or \"qcow2\""),
            );
        }
    }

    fn check_disks(&mut self, i: usize, vm: &Vm) {
        for (n, d) in vm.additional_disks.iter().enumerate() {
            let p = format!("additionalDisks[{n}]");
            if let Err(e) = check_path(&d.path, &[',']) {
                self.vm(i, vm, &format!("{p}.path"), Some(str_value(&d.path)), e);
            }
            if d.options.contains_key("root") {
                self.vm(
                    i,
                    vm,
                    &format!("{p}.root"),
                    None,
                    "only rootDisk is the root disk: remove this key",
                );
            }
            self.check_disk_options(i, vm, &p, &d.options);
        }
    }

    fn check_shared_dirs(&mut self, i: usize, vm: &Vm) {
        let mut tags: BTreeMap<&str, String> = BTreeMap::new();
        if let SharedHome::Path(p) = &vm.shared_home
            && let Err(e) = check_path(p, &[':'])
        {
            self.vm(i, vm, "sharedHome", Some(str_value(p)), e);
        }
        if vm.shared_home != SharedHome::Disabled {
            tags.insert(HOME_TAG, "sharedHome".into());
        }
        for (n, d) in vm.shared_directories.iter().enumerate() {
            let p = format!("sharedDirectories[{n}]");
            if let Err(e) = check_path(&d.path, &[':']) {
                self.vm(i, vm, &format!("{p}.path"), Some(str_value(&d.path)), e);
            }
            let tag_ok = check_name(&d.tag, "tag", MAX_TAG);
            if let Err(e) = tag_ok {
                self.vm(i, vm, &format!("{p}.tag"), Some(str_value(&d.tag)), e);
            } else if let Some(first) = tags.get(d.tag.as_str()) {
                let msg = if first == "sharedHome" {
                    format!(
                        "tag {:?} is used by the shared home: pick another tag, or set sharedHome = false",
                        d.tag
                    )
                } else {
                    format!(
                        "tag {:?} is already used by {first}: tags must be unique per VM",
                        d.tag
                    )
                };
                self.vm(i, vm, &format!("{p}.tag"), Some(str_value(&d.tag)), msg);
            } else {
                tags.insert(d.tag.as_str(), p.clone());
            }
            if let Some(t) = d.options.get("type")
                && !matches!(t, OptValue::Str(s) if s == "fs" || s == "p9")
            {
                self.vm(
                        i,
                        vm,
                        &format!("{p}.type"),
                        Some(t.to_string()),
                        format!("{t} is not a shared directory type: use \"fs\" (virtio-fs, the default) or \"p9\""),
                    );
            }
            for (k, v) in &d.options {
                if v.to_string().contains([':', '\0', '\n']) {
                    self.vm(
                        i,
                        vm,
                        &format!("{p}.{k}"),
                        Some(v.to_string()),
                        format!(
                            "{v:?} contains ':', which separates crosvm's --shared-dir options"
                        ),
                    );
                }
            }
        }
    }

    fn check_gpu(&mut self, i: usize, vm: &Vm) {
        let Some(opts) = vm.gpu.options.as_ref().filter(|_| vm.gpu.enabled) else {
            return;
        };
        for (k, v) in opts {
            if let Err(e) = check_kv_value(v) {
                self.vm(i, vm, &format!("gpu.{k}"), Some(v.to_string()), e);
            }
        }
        let (w, h) = (opts.get("width"), opts.get("height"));
        match (w, h) {
            (Some(_), None) | (None, Some(_)) => self.vm(
                i,
                vm,
                "gpu",
                None,
                "width and height go together (vmsilo turns them into displays=[[mode=windowed[W,H]]])",
            ),
            (Some(w), Some(h)) => {
                if opts.contains_key("displays") {
                    self.vm(
                        i,
                        vm,
                        "gpu.displays",
                        None,
                        "set either displays or width/height, not both",
                    );
                }
                for (k, v) in [("width", w), ("height", h)] {
                    if !matches!(v, OptValue::Int(n) if *n > 0) {
                        self.vm(
                            i,
                            vm,
                            &format!("gpu.{k}"),
                            Some(v.to_string()),
                            format!("{v} is not a positive number of pixels"),
                        );
                    }
                }
            }
            (None, None) => {}
        }
    }

    /// `gate.allowGlobals` / `gate.denyGlobals`: Wayland interface names, each in one list
    /// only, and overrides the gate accepts: the same rules as `vmsilo-gate --allow/--deny`
    /// (`vmsilo_gate_policy`), so that a VM whose gate would refuse to start is refused here
    /// (allowing a high-risk, clipboard-boundary or gate-only global, denying a required one,
    /// naming an interface the gate does not know).
    fn check_gate(&mut self, i: usize, vm: &Vm) {
        let g = &vm.gate;
        for (key, list) in [
            ("gate.allowGlobals", &g.allow_globals),
            ("gate.denyGlobals", &g.deny_globals),
        ] {
            let allow = key == "gate.allowGlobals";
            for (n, name) in list.iter().enumerate() {
                let none: [&str; 0] = [];
                let policy = if allow {
                    vmsilo_gate_policy::Policy::with_overrides([name], none)
                } else {
                    vmsilo_gate_policy::Policy::with_overrides(none, [name])
                };
                if let Err(e) = check_interface_name(name) {
                    self.vm(i, vm, &format!("{key}[{n}]"), Some(str_value(name)), e);
                } else if let Err(e) = policy {
                    self.vm(
                        i,
                        vm,
                        &format!("{key}[{n}]"),
                        Some(str_value(name)),
                        e.to_string(),
                    );
                } else if list[..n].contains(name) {
                    self.vm(
                        i,
                        vm,
                        &format!("{key}[{n}]"),
                        Some(str_value(name)),
                        format!("{name:?} is listed twice: remove one"),
                    );
                }
            }
        }
        for (n, name) in g.deny_globals.iter().enumerate() {
            if g.allow_globals.contains(name) {
                self.vm(
                    i,
                    vm,
                    &format!("gate.denyGlobals[{n}]"),
                    Some(str_value(name)),
                    format!("{name:?} is in both allowGlobals and denyGlobals: keep it in one"),
                );
            }
        }
    }

    fn check_pci(&mut self, i: usize, vm: &Vm) {
        let mut mine = BTreeSet::new();
        for (n, d) in vm.pci_devices.iter().enumerate() {
            let p = format!("pciDevices[{n}]");
            let addr = d.address;
            if !self.cfg.isolated_pci_devices.contains(&addr) {
                self.vm(
                    i,
                    vm,
                    &format!("{p}.path"),
                    Some(str_value(&addr.to_string())),
                    format!(
                        "{addr} is not in isolatedPciDevices: add it there so vfio-pci claims it \
                         at boot"
                    ),
                );
            }
            if !mine.insert(addr) {
                self.vm(
                    i,
                    vm,
                    &format!("{p}.path"),
                    Some(str_value(&addr.to_string())),
                    format!("{addr} is listed twice for this VM"),
                );
            }
            for (k, v) in &d.options {
                if let Err(e) = check_kv_value(v) {
                    self.vm(i, vm, &format!("{p}.{k}"), Some(v.to_string()), e);
                }
            }
            if let Some(v) = d.options.get("iommu")
                && !matches!(v, OptValue::Str(s) if IOMMU_VALUES.contains(&s.as_str()))
            {
                self.vm(
                        i,
                        vm,
                        &format!("{p}.iommu"),
                        Some(v.to_string()),
                        format!(
                            "{v} is not an IOMMU type: use one of off, viommu, coiommu, pkvm-iommu (\"on\" means viommu)"
                        ),
                    );
            }
        }
    }

    fn check_vhost_user(&mut self, i: usize, vm: &Vm) {
        for (n, d) in vm.vhost_user.iter().enumerate() {
            let p = format!("vhostUser[{n}]");
            if let Err(e) = check_path(&d.socket, &[',']) {
                self.vm(i, vm, &format!("{p}.socket"), Some(str_value(&d.socket)), e);
            }
            for (k, v) in &d.options {
                if let Err(e) = check_kv_value(v) {
                    self.vm(i, vm, &format!("{p}.{k}"), Some(v.to_string()), e);
                }
            }
        }
    }

    fn check_interface(&mut self, i: usize, vm: &Vm, name: &str, iface: &Interface) {
        let base = path_of(&["network", "interfaces", name]);
        let at = |field: &str| format!("{base}.{field}");
        if let Err(e) = check_ifname(name) {
            self.vm(
                i,
                vm,
                &base,
                Some(str_value(name)),
                format!("interface name {e}"),
            );
        }
        match iface.kind {
            InterfaceType::Tap => {
                if let (Some(addr), Some(bridge)) = (&iface.tap.host_address, &iface.tap.bridge) {
                    self.vm(
                        i,
                        vm,
                        &at("tap"),
                        Some(format!(
                            "hostAddress = {}, bridge = {}",
                            str_value(&addr.to_string()),
                            str_value(bridge)
                        )),
                        format!(
                            "hostAddress and bridge are mutually exclusive (hostAddress = \
                             \"{addr}\", bridge = {bridge:?}): keep one"
                        ),
                    );
                }
                if let Some(b) = &iface.tap.bridge
                    && let Err(e) = check_ifname(b)
                {
                    self.vm(i, vm, &at("tap.bridge"), Some(str_value(b)), e);
                }
                if let Some(net) = &iface.vm_network.name {
                    self.vm(
                        i,
                        vm,
                        &at("vmNetwork.name"),
                        Some(str_value(net)),
                        "only vm-switch interfaces join a vm-switch network: set type = \
                         \"vm-switch\" or remove vmNetwork.name",
                    );
                }
                if let Some(host) = &iface.tap.host_address
                    && let Some(a) = iface
                        .addresses
                        .iter()
                        .chain(&iface.v6_addresses)
                        .find(|a| a.addr == host.addr)
                {
                    self.vm(
                            i,
                            vm,
                            &at("addresses"),
                            Some(str_value(&a.to_string())),
                            format!(
                                "{} is the host's side of the TAP (tap.hostAddress): give the guest another address",
                                a.addr
                            ),
                        );
                }
            }
            InterfaceType::VmSwitch => {
                match &iface.vm_network.name {
                    None => self.vm(
                        i,
                        vm,
                        &at("vmNetwork.name"),
                        None,
                        "is required for vm-switch interfaces: the vm-switch network to join, \
                         e.g. vmNetwork.name = \"lan\"",
                    ),
                    Some(net) => {
                        if let Err(e) = check_name(net, "network name", MAX_NET_NAME) {
                            self.vm(i, vm, &at("vmNetwork.name"), Some(str_value(net)), e);
                        }
                    }
                }
                for (field, set) in [
                    ("tap.name", iface.tap.name.is_some()),
                    ("tap.hostAddress", iface.tap.host_address.is_some()),
                    ("tap.bridge", iface.tap.bridge.is_some()),
                ] {
                    if set {
                        self.vm(
                            i,
                            vm,
                            &at(field),
                            None,
                            "only applies to TAP interfaces: this one is type = \"vm-switch\" \
                             (set type = \"tap\" or remove the option)",
                        );
                    }
                }
                for (n, r) in iface.vm_network.routes.iter().enumerate() {
                    self.check_network_prefix(i, vm, &at(&format!("vmNetwork.routes[{n}]")), r);
                }
            }
        }
        if let Some(mac) = iface.mac_address
            && mac.is_multicast()
        {
            self.vm(
                i,
                vm,
                &at("macAddress"),
                Some(str_value(&mac.to_string())),
                format!(
                    "{mac} is a multicast address (lowest bit of the first byte set): an \
                         interface needs a unicast MAC"
                ),
            );
        }
        for (field, list, v4) in [
            ("addresses", &iface.addresses, true),
            ("v6Addresses", &iface.v6_addresses, false),
        ] {
            for (n, a) in list.iter().enumerate() {
                if a.is_ipv4() != v4 {
                    let (is, other) = if v4 {
                        ("an IPv6", "v6Addresses")
                    } else {
                        ("an IPv4", "addresses")
                    };
                    self.vm(
                        i,
                        vm,
                        &at(&format!("{field}[{n}]")),
                        Some(str_value(&a.to_string())),
                        format!("{a} is {is} address: put it in {other}"),
                    );
                }
            }
        }
        for (field, routes, v4) in [
            ("routes", &iface.routes, true),
            ("v6Routes", &iface.v6_routes, false),
        ] {
            for (dest, r) in routes {
                let rp = format!("{base}.{}", path_of(&[field, &dest.to_string()]));
                let fam = if v4 { "IPv4" } else { "IPv6" };
                let other = if v4 { "v6Routes" } else { "routes" };
                if dest.is_ipv4() != v4 {
                    self.vm(
                        i,
                        vm,
                        &rp,
                        Some(str_value(&dest.to_string())),
                        format!("{dest} is not an {fam} destination: put it in {other}"),
                    );
                } else {
                    self.check_network_prefix(i, vm, &rp, dest);
                }
                if r.via.is_ipv4() != v4 {
                    self.vm(
                        i,
                        vm,
                        &format!("{rp}.via"),
                        Some(str_value(&r.via.to_string())),
                        format!("gateway {} is not an {fam} address", r.via),
                    );
                }
            }
        }
    }

    fn check_network_prefix(&mut self, i: usize, vm: &Vm, path: &str, c: &Cidr) {
        if !c.is_network() {
            self.vm(
                i,
                vm,
                path,
                Some(str_value(&c.to_string())),
                format!(
                    "{c} has host bits set: a route destination is a network prefix, did you mean {}?",
                    c.network()
                ),
            );
        }
    }

    fn check_vm_switch_networks(&mut self, i: usize, vm: &Vm) {
        let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, iface) in &vm.network.interfaces {
            if iface.kind != InterfaceType::VmSwitch {
                continue;
            }
            let Some(net) = &iface.vm_network.name else {
                continue;
            };
            if let Some(first) = seen.insert(net, name) {
                self.vm(
                    i,
                    vm,
                    &path_of(&["network", "interfaces", name, "vmNetwork", "name"]),
                    Some(str_value(net)),
                    format!(
                        "interface {first:?} already joins vm-switch network {net:?}: a VM can \
                         have one port per network"
                    ),
                );
            }
        }
    }

    fn check_depends_on(&mut self, i: usize, vm: &Vm) {
        let mut seen = BTreeSet::new();
        for (n, dep) in vm.depends_on.iter().enumerate() {
            let p = format!("dependsOn[{n}]");
            if *dep == vm.name {
                self.vm(
                    i,
                    vm,
                    &p,
                    Some(str_value(dep)),
                    "a VM cannot depend on itself",
                );
            } else if self.cfg.vm(dep).is_none() && self.names_reliable {
                let names: Vec<&str> = self.cfg.nixos_vms.iter().map(|v| v.name.as_str()).collect();
                let hint = crate::diag::did_you_mean(dep, &names)
                    .map(|s| format!(" (did you mean {s:?}?)"))
                    .unwrap_or_default();
                self.vm(
                    i,
                    vm,
                    &p,
                    Some(str_value(dep)),
                    format!("there is no VM called {dep:?}{hint}"),
                );
            } else if !seen.insert(dep) {
                self.vm(
                    i,
                    vm,
                    &p,
                    Some(str_value(dep)),
                    format!("{dep:?} is listed twice"),
                );
            }
        }
    }

    fn check_across_vms(&mut self) {
        let cfg = self.cfg;
        // TAP names are host-wide; MACs should be unique on every segment; a PCI device can
        // belong to one VM.
        let mut taps: BTreeMap<String, String> = BTreeMap::new();
        let mut macs: BTreeMap<MacAddr, String> = BTreeMap::new();
        let mut pci: BTreeMap<PciAddress, String> = BTreeMap::new();
        for (i, vm) in cfg.nixos_vms.iter().enumerate() {
            for info in derive::interfaces(vm) {
                let base = path_of(&["network", "interfaces", info.name]);
                let owner = format!("VM {:?} interface {:?}", vm.name, info.name);
                if let Some(tap) = &info.tap_name {
                    let explicit = info.iface.tap.name.is_some();
                    let field = format!("{base}.tap.name");
                    if let Err(e) = check_ifname(tap) {
                        let msg = if explicit {
                            e
                        } else {
                            format!(
                                "the default TAP name (<vm>-<index>) {e}: set tap.name to a shorter name"
                            )
                        };
                        self.vm(i, vm, &field, Some(str_value(tap)), msg);
                    } else if let Some(first) = taps.get(tap) {
                        let msg = format!(
                            "TAP name {tap:?} is already used by {first}: TAP names must be unique on the host"
                        );
                        self.vm(i, vm, &field, Some(str_value(tap)), msg);
                    } else {
                        taps.insert(tap.clone(), owner.clone());
                    }
                }
                if let Some(first) = macs.get(&info.mac) {
                    let msg = format!("MAC {} is already used by {first}", info.mac);
                    self.vm(
                        i,
                        vm,
                        &format!("{base}.macAddress"),
                        Some(str_value(&info.mac.to_string())),
                        msg,
                    );
                } else {
                    macs.insert(info.mac, owner);
                }
            }
            for (n, d) in vm.pci_devices.iter().enumerate() {
                match pci.get(&d.address) {
                    Some(first) if *first != vm.name => {
                        let msg = format!(
                            "{} is already passed through to VM {first:?}: a device can belong to one VM",
                            d.address
                        );
                        self.vm(
                            i,
                            vm,
                            &format!("pciDevices[{n}].path"),
                            Some(str_value(&d.address.to_string())),
                            msg,
                        );
                    }
                    Some(_) => {}
                    None => {
                        pci.insert(d.address, vm.name.clone());
                    }
                }
            }
        }
        self.check_dependency_cycles();
    }

    fn check_dependency_cycles(&mut self) {
        let cfg = self.cfg;
        let index: BTreeMap<&str, usize> = cfg
            .nixos_vms
            .iter()
            .enumerate()
            .map(|(i, v)| (v.name.as_str(), i))
            .collect();
        // 0 = unvisited, 1 = on the stack, 2 = done.
        let mut state = vec![0u8; cfg.nixos_vms.len()];
        let mut reported = BTreeSet::new();
        for start in 0..cfg.nixos_vms.len() {
            let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
            if state[start] != 0 {
                continue;
            }
            state[start] = 1;
            while let Some((node, next)) = stack.last().copied() {
                let deps = &cfg.nixos_vms[node].depends_on;
                if next >= deps.len() {
                    state[node] = 2;
                    stack.pop();
                    continue;
                }
                if let Some(top) = stack.last_mut() {
                    top.1 += 1;
                }
                let Some(&dep) = index.get(deps[next].as_str()) else {
                    continue;
                };
                if dep == node {
                    continue; // self-dependency is reported on its own
                }
                match state[dep] {
                    0 => {
                        state[dep] = 1;
                        stack.push((dep, 0));
                    }
                    1 => {
                        let pos = stack.iter().position(|(n, _)| *n == dep).unwrap_or(0);
                        let members: Vec<usize> = stack[pos..].iter().map(|(n, _)| *n).collect();
                        let key: BTreeSet<usize> = members.iter().copied().collect();
                        if reported.insert(key) {
                            let mut names: Vec<&str> = members
                                .iter()
                                .map(|n| cfg.nixos_vms[*n].name.as_str())
                                .collect();
                            names.push(cfg.nixos_vms[dep].name.as_str());
                            let vm = &cfg.nixos_vms[dep];
                            self.vm(
                                dep,
                                vm,
                                "dependsOn",
                                None,
                                format!(
                                    "dependencies form a cycle: {}; remove one of these dependsOn entries",
                                    names.join(" -> ")
                                ),
                            );
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn check_qemu(&mut self, i: usize, vm: &Vm) {
        for (path, message, value) in crate::qemu_caps::unsupported(vm) {
            self.vm(i, vm, &path, value, message);
        }
    }
}
