//! What QEMU 7.2 and its vhost-user backends (virtiofsd, vhost-device-vsock) can honour: the
//! option tables the QEMU plan ([`crate::plan::qemu`]) renders from, and [`unsupported`], the
//! check validation runs on every QEMU VM. Shared by both, so that validation does not depend
//! on the planner.

use crate::model::{OptValue, Vm};

/// Disk keys QEMU honours (see `plan::qemu`'s `drive_value`).
pub(crate) const QEMU_DISK_KEYS: &[&str] =
    &["ro", "sparse", "direct", "o_direct", "lock", "format"];

/// Shared-directory keys QEMU (virtiofsd) honours. `uid`/`gid` pick crosvm's device-process
/// identity; virtiofsd runs as root and takes each request's mapped ID, so they add nothing.
pub(crate) const QEMU_SHARED_DIR_KEYS: &[&str] = &[
    "type",
    "uid",
    "gid",
    "uidmap",
    "gidmap",
    "cache",
    "cache_policy",
    "writeback",
    "posix_acl",
];

/// vhost-user device types QEMU 7.2 has a frontend for, and its device name.
pub(crate) const QEMU_VHOST_USER: &[(&str, &str)] = &[
    ("net", "virtio-net-pci"),
    ("block", "vhost-user-blk-pci"),
    ("rng", "vhost-user-rng-pci"),
    ("input", "vhost-user-input-pci"),
    ("scsi", "vhost-user-scsi-pci"),
];

/// One thing a QEMU VM asks for that QEMU cannot do: (field path, message, offending value).
pub(crate) type Unsupported = (String, String, Option<String>);

pub(crate) fn opt_bool(v: &OptValue) -> Option<bool> {
    match v {
        OptValue::Bool(b) => Some(*b),
        OptValue::Str(s) if s == "true" || s == "on" => Some(true),
        OptValue::Str(s) if s == "false" || s == "off" => Some(false),
        _ => None,
    }
}

/// Everything in `vm` that a QEMU VM cannot honour, each with a way out.
pub(crate) fn unsupported(vm: &Vm) -> Vec<Unsupported> {
    let mut out: Vec<Unsupported> = Vec::new();
    let mut no = |path: &str, msg: String, value: Option<String>| {
        out.push((path.to_owned(), msg, value));
    };
    if vm.gpu.enabled && vm.gpu.options.is_some() {
        // QEMU VMs show windows through waypipe over vsock; there is no virtual GPU to tune.
        no(
            "gpu",
            "QEMU VMs have no virtual GPU (their windows reach the host through waypipe over \
             vsock), so crosvm's --gpu options do not apply: set gpu = true, or use vmm = \
             \"crosvm\""
                .into(),
            None,
        );
    }
    if vm.sound.enabled {
        no(
            "sound",
            "QEMU 7.2 has no vhost-user sound device: set sound = false, or use vmm = \"crosvm\""
                .into(),
            None,
        );
    }
    if !vm.pci_devices.is_empty() {
        no(
            "pciDevices",
            "PCI passthrough is only planned for crosvm VMs: remove pciDevices, or use vmm = \
             \"crosvm\""
                .into(),
            None,
        );
    }
    for (key, set) in [
        ("crosvm.logLevel", vm.crosvm.log_level.is_some()),
        ("crosvm.extraArgs", !vm.crosvm.extra_args.is_empty()),
        ("crosvm.extraRunArgs", !vm.crosvm.extra_run_args.is_empty()),
    ] {
        if set {
            no(
                key,
                "only applies to crosvm VMs: this VM uses QEMU (use qemu.extraArgs)".into(),
                None,
            );
        }
    }
    let disks = vm
        .root_disk
        .iter()
        .map(|d| ("rootDisk".to_owned(), d))
        .chain(
            vm.additional_disks
                .iter()
                .enumerate()
                .map(|(n, d)| (format!("additionalDisks[{n}]"), d)),
        );
    for (path, d) in disks {
        for (k, v) in &d.options {
            if !QEMU_DISK_KEYS.contains(&k.as_str()) {
                no(
                    &format!("{path}.{k}"),
                    format!(
                        "QEMU VMs do not support the disk option {k:?} (supported: {}): remove it",
                        QEMU_DISK_KEYS.join(", ")
                    ),
                    Some(v.to_string()),
                );
            }
        }
    }
    for (n, s) in vm.shared_directories.iter().enumerate() {
        let base = format!("sharedDirectories[{n}]");
        for (k, v) in &s.options {
            if !QEMU_SHARED_DIR_KEYS.contains(&k.as_str()) {
                no(
                    &format!("{base}.{k}"),
                    format!(
                        "virtiofsd (QEMU VMs) has no equivalent of {k:?}: remove it (supported: {})",
                        QEMU_SHARED_DIR_KEYS.join(", ")
                    ),
                    Some(v.to_string()),
                );
            }
        }
        if let Some(t) = s.options.get("type")
            && t.to_string() != "fs"
        {
            no(
                &format!("{base}.type"),
                format!(
                    "QEMU VMs share directories over virtio-fs only: use type = \"fs\", not {t}"
                ),
                Some(t.to_string()),
            );
        }
        if let Some(v) = s.options.get("posix_acl")
            && opt_bool(v) != Some(false)
        {
            no(
                &format!("{base}.posix_acl"),
                "virtiofsd cannot combine POSIX ACLs with the uid/gid translation vmsilo uses: \
                 remove posix_acl or set it to false"
                    .into(),
                Some(v.to_string()),
            );
        }
        for key in ["uidmap", "gidmap"] {
            if let Some(v) = s.options.get(key)
                && let Err(e) = parse_id_map(&v.to_string())
            {
                no(&format!("{base}.{key}"), e, Some(v.to_string()));
            }
        }
    }
    for (n, v) in vm.vhost_user.iter().enumerate() {
        let base = format!("vhostUser[{n}]");
        if !QEMU_VHOST_USER.iter().any(|(t, _)| *t == v.kind) {
            let why = match v.kind.as_str() {
                "fs" => "use sharedDirectories (vmsilo starts virtiofsd itself)",
                "vsock" => "vmsilo already attaches vhost-device-vsock to every QEMU VM",
                "sound" => "QEMU 7.2 has no vhost-user sound device",
                _ => "QEMU 7.2 has no frontend for it",
            };
            no(
                &format!("{base}.type"),
                format!(
                    "vhost-user type {:?} is not available for QEMU VMs: {why} (QEMU VMs take: {})",
                    v.kind,
                    QEMU_VHOST_USER
                        .iter()
                        .map(|(t, _)| *t)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Some(format!("{:?}", v.kind)),
            );
        }
        for (k, val) in &v.options {
            no(
                &format!("{base}.{k}"),
                format!("{k:?} is a crosvm --vhost-user option; QEMU VMs take none: remove it"),
                Some(val.to_string()),
            );
        }
    }
    out
}

/// One `inner outer count` range of a crosvm uid/gid map: guest IDs `inner..inner+count` are
/// host IDs `outer..outer+count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IdRange {
    pub(crate) guest: u32,
    pub(crate) host: u32,
    pub(crate) count: u32,
}

/// Parses crosvm's `"inner outer count[,inner outer count...]"`; ranges must not overlap.
pub(crate) fn parse_id_map(text: &str) -> Result<Vec<IdRange>, String> {
    let mut out: Vec<IdRange> = Vec::new();
    for part in text.split(',') {
        let nums: Vec<u32> = part
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|_| format!("{text:?} is not a list of \"inner outer count\" ranges"))?;
        let [guest, host, count] = nums[..] else {
            return Err(format!(
                "{text:?} is not a list of \"inner outer count\" ranges"
            ));
        };
        if count == 0 || guest.checked_add(count).is_none() || host.checked_add(count).is_none() {
            return Err(format!(
                "{text:?}: the range {part:?} is empty or overflows"
            ));
        }
        if out
            .iter()
            .any(|r| guest < r.guest + r.count && r.guest < guest + count)
        {
            return Err(format!("{text:?}: guest ranges overlap"));
        }
        out.push(IdRange { guest, host, count });
    }
    Ok(out)
}
