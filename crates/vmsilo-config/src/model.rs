//! The configuration model: every vmsilo option with its default, and how it is read.
//!
//! The names are the NixOS module's (`programs.vmsilo.*`), in camelCase, identical in TOML and
//! JSON; `docs/configuration.md` lists them all. Reading checks types, formats (addresses,
//! sizes, colours, PCI addresses) and unknown keys; the cross-field rules live in
//! [`mod@crate::validate`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

use crate::color::Color;
use crate::diag::{Diagnostic, Diagnostics, Seg, did_you_mean};
use crate::measure::{ByteSize, format_duration, parse_duration, parse_image_size};
use crate::net::{Cidr, MacAddr};
use crate::pci::PciAddress;
use crate::value::{Fields, FromValue, Reader, read_ranged, render};

/// Declares a string-valued enum option: its spellings, parsing with suggestions, Display and
/// Serialize.
macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident, $what:literal { $($(#[$vm:meta])* $var:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vm])* $var),+
        }
        impl $name {
            /// Every accepted spelling.
            pub const NAMES: &'static [&'static str] = &[$($text),+];
            /// The spelling used in configuration files.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$var => $text),+ }
            }
            /// Parses one of [`Self::NAMES`].
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some(Self::$var),)+ _ => None }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl FromValue for $name {
            fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
                read_enum(r, v, $what, Self::NAMES, Self::parse)
            }
        }
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "{s:?} is not a valid {}: expected one of {}",
                        $what,
                        quoted_list(Self::NAMES)
                    ))
                })
            }
        }
    };
}

fn read_enum<T>(
    r: &mut Reader,
    v: &Value,
    what: &str,
    names: &[&str],
    parse: impl Fn(&str) -> Option<T>,
) -> Option<T> {
    let Value::String(s) = v else {
        r.type_error(v, &format!("{what} (one of {})", quoted_list(names)));
        return None;
    };
    if let Some(x) = parse(s) {
        return Some(x);
    }
    let hint = did_you_mean(s, names)
        .map(|n| format!("; did you mean {n:?}?"))
        .unwrap_or_default();
    r.error(
        Some(v),
        format!(
            "{s:?} is not a valid {what}: expected one of {}{hint}",
            quoted_list(names)
        ),
    );
    None
}

fn quoted_list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

string_enum!(
    /// The virtual machine monitor that runs a VM.
    Vmm, "VMM" {
        /// crosvm (the default).
        Crosvm = "crosvm",
        /// QEMU, for machines without a usable KVM or for debugging.
        Qemu = "qemu",
    }
);

string_enum!(
    /// How a guest interface is connected on the host.
    InterfaceType, "interface type" {
        /// A host TAP device.
        Tap = "tap",
        /// A port of a vm-switch network (vhost-user-net).
        VmSwitch = "vm-switch",
    }
);

string_enum!(
    /// The upper layer of the guest's overlay root file system.
    OverlayType, "overlay type" {
        /// An ephemeral qcow2 disk created at each start (disk-backed).
        Qcow2 = "qcow2",
        /// A tmpfs inside the guest (RAM-backed).
        Tmpfs = "tmpfs",
    }
);

string_enum!(
    /// The Wayland proxy the guest runs.
    WaylandProxy, "Wayland proxy" {
        /// wayland-proxy-virtwl by Thomas Leonard (the default).
        WaylandProxyVirtwl = "wayland-proxy-virtwl",
        /// ChromeOS sommelier.
        Sommelier = "sommelier",
    }
);

string_enum!(
    /// Log level of vmsilo's own daemons.
    LogLevel, "log level" {
        /// Errors only.
        Error = "error",
        /// Warnings and errors.
        Warn = "warn",
        /// The default.
        Info = "info",
        /// Debugging detail.
        Debug = "debug",
        /// Everything.
        Trace = "trace",
    }
);

string_enum!(
    /// QEMU's accelerator.
    Accel, "QEMU accelerator" {
        /// Hardware virtualization (the default).
        Kvm = "kvm",
        /// Software emulation, for machines whose KVM is missing or unusable.
        Tcg = "tcg",
    }
);

string_enum!(
    /// Where vhost-device-sound sends and takes audio.
    SoundBackend, "sound backend" {
        /// PipeWire of the configured user (the default).
        Pipewire = "pipewire",
        /// The desktop's sound server, whatever it is: vhost-device-sound's PipeWire backend
        /// when the user's PipeWire socket exists at VM start (PipeWire desktops, with or
        /// without pipewire-pulse), else its ALSA backend on the default device, which a
        /// PulseAudio desktop routes to PulseAudio (alsa-plugins' pulse plugin).
        Pulse = "pulse",
        /// ALSA.
        Alsa = "alsa",
        /// Discard output, silent input.
        Null = "null",
    }
);

/// A value in a free-form option table (`additionalDisks`, `sharedDirectories`, `gpu`, ...),
/// passed on to the VMM as `key=value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum OptValue {
    /// `true` / `false`.
    Bool(bool),
    /// A whole number.
    Int(i64),
    /// Text.
    Str(String),
}

impl fmt::Display for OptValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptValue::Bool(b) => write!(f, "{b}"),
            OptValue::Int(i) => write!(f, "{i}"),
            OptValue::Str(s) => f.write_str(s),
        }
    }
}

impl FromValue for OptValue {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        match v {
            Value::Bool(b) => Some(OptValue::Bool(*b)),
            Value::String(s) => Some(OptValue::Str(s.clone())),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Some(OptValue::Int(i)),
                None => {
                    r.error(Some(v), format!("{n} is not a whole number"));
                    None
                }
            },
            _ => {
                r.type_error(v, "a string, a whole number or true/false");
                None
            }
        }
    }
}

/// Free-form `key=value` options, sorted by key (as Nix sorts attribute sets).
pub type Options = BTreeMap<String, OptValue>;

/// Reads every key of `map` except `skip` into [`Options`], rejecting keys not in `known`.
fn read_options(
    r: &mut Reader,
    map: &Map<String, Value>,
    skip: &[&str],
    known: &[&str],
) -> Options {
    let mut out = Options::new();
    for (k, v) in map {
        if skip.contains(&k.as_str()) {
            continue;
        }
        if !known.contains(&k.as_str()) {
            let mut all: Vec<&str> = known.to_vec();
            all.extend_from_slice(skip);
            r.unknown_key(k, v, &all);
            continue;
        }
        if let Some(x) = r.at_key(k, |r| OptValue::from_value(r, v)) {
            out.insert(k.clone(), x);
        }
    }
    out
}

/// crosvm `--block` keys (`DiskOption`), besides the path. `root` is reserved for `rootDisk`;
/// `format` is vmsilo's own (QEMU needs it; crosvm detects the format itself).
pub const DISK_KEYS: &[&str] = &[
    "ro",
    "sparse",
    "block-size",
    "block_size",
    "id",
    "direct",
    "o_direct",
    "lock",
    "multiple-workers",
    "async-executor",
    "packed-queue",
    "bootindex",
    "pci-address",
    "dontcache",
    "format",
    "root",
];

/// crosvm `--shared-dir` keys, besides path and tag.
pub const SHARED_DIR_KEYS: &[&str] = &[
    "type",
    "uid",
    "gid",
    "uidmap",
    "gidmap",
    "timeout",
    "negative_timeout",
    "cache",
    "cache_policy",
    "writeback",
    "dax",
    "use_dax",
    "posix_acl",
    "rewrite_security_xattrs",
    "ascii_casefold",
    "max_dynamic_perm",
    "max_dynamic_xattr",
    "security_ctx",
];

/// crosvm `--gpu` keys. `width`/`height` are deprecated in crosvm; vmsilo turns them into
/// `displays=[[mode=windowed[W,H]]]`.
pub const GPU_KEYS: &[&str] = &[
    "backend",
    "context-types",
    "displays",
    "max-num-displays",
    "egl",
    "gles",
    "glx",
    "surfaceless",
    "vulkan",
    "wsi",
    "udmabuf",
    "cache-path",
    "cache-size",
    "pci-address",
    "pci-bar-size",
    "external-blob",
    "system-blob",
    "fixed-blob-mapping",
    "implicit-render-server",
    "renderer-features",
    "snapshot-scratch-path",
    "width",
    "height",
];

/// crosvm `--vfio` keys, besides the path.
pub const VFIO_KEYS: &[&str] = &["iommu", "guest-address", "dt-symbol"];

/// crosvm `--vhost-user` keys, besides type and socket.
pub const VHOST_USER_KEYS: &[&str] = &["max-queue-size", "pci-address"];

/// crosvm's vhost-user device types (`DeviceType`, kebab-case).
pub const VHOST_USER_TYPES: &[&str] = &[
    "net",
    "block",
    "console",
    "rng",
    "balloon",
    "scsi",
    "9p",
    "gpu",
    "input",
    "vsock",
    "iommu",
    "sound",
    "fs",
    "pmem",
    "mac80211-hwsim",
    "video-encoder",
    "video-decoder",
    "scmi",
    "wl",
    "tpm",
    "pvclock",
    "media",
];

/// The whole vmsilo configuration (`programs.vmsilo` in NixOS).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    /// Whether vmsilo manages VMs at all (false).
    pub enable: bool,
    /// The desktop user who owns TAP interfaces, shared homes and runs VMs (required).
    pub user: String,
    /// Host networking.
    pub host_networking: HostNetworking,
    /// The VMs.
    pub nixos_vms: Vec<Vm>,
    /// Bash completion for the vm-* commands (true).
    pub enable_bash_integration: bool,
    /// crosvm options shared by all VMs.
    pub crosvm: CrosvmGlobal,
    /// vm-switch daemon options.
    #[serde(rename = "vm-switch")]
    pub vm_switch: VmSwitchGlobal,
    /// vmsilo-balloond options.
    #[serde(rename = "vmsilo-balloond")]
    pub balloond: Balloond,
    /// QEMU options shared by all VMs with `vmm = "qemu"`.
    pub qemu: QemuGlobal,
    /// PCI devices claimed by vfio-pci at boot so that VMs can own them.
    pub isolated_pci_devices: Vec<PciAddress>,
    /// The two-level clipboard between VMs (vmsilo-clipd and the gates' chords).
    pub clipboard: Clipboard,
}

/// Global `clipboard.*`: the two-level clipboard. See docs/clipboard.md.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Clipboard {
    /// Whether the gates take the chords and vmsilo-clipd runs (true).
    pub enable: bool,
    /// Rules, first match wins; no match denies. Default: `* → host` ask, `* → *` allow,
    /// `host → *` allow.
    pub policy: Vec<ClipboardRule>,
    /// The size cap: characters for text, bytes otherwise (64000).
    pub max_size: u64,
    /// Allowed MIME types, preferred first (text/plain;charset=utf-8, text/plain).
    pub mime_types: Vec<String>,
    /// An unpasted global clipboard is wiped after this ("60s").
    #[serde(serialize_with = "ser_duration")]
    pub wipe_after: Duration,
    /// The chords.
    pub chords: ClipboardChords,
}

/// One `clipboard.policy` rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClipboardRule {
    /// A VM name, `*` (any VM) or `host`.
    pub from: String,
    /// A VM name, `*` (any VM) or `host`.
    pub to: String,
    /// `allow`, `ask` or `deny`.
    pub action: String,
}

/// `clipboard.chords`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClipboardChords {
    /// Copy the focused VM's clipboard into the global one ("ctrl+shift+c").
    pub copy: String,
    /// Paste the global clipboard into the focused VM's ("ctrl+shift+v").
    pub paste: String,
}

/// MIME types the clipboard can allow.
pub const CLIPBOARD_MIME_TYPES: &[&str] = &[
    "text/plain;charset=utf-8",
    "text/plain",
    "text/html",
    "image/png",
];

impl Clipboard {
    fn default_value() -> Self {
        let rule = |from: &str, to: &str, action: &str| ClipboardRule {
            from: from.into(),
            to: to.into(),
            action: action.into(),
        };
        Clipboard {
            enable: true,
            policy: vec![
                rule("*", "host", "ask"),
                rule("*", "*", "allow"),
                rule("host", "*", "allow"),
            ],
            max_size: 64_000,
            mime_types: vec!["text/plain;charset=utf-8".into(), "text/plain".into()],
            wipe_after: Duration::from_secs(60),
            chords: ClipboardChords {
                copy: "ctrl+shift+c".into(),
                paste: "ctrl+shift+v".into(),
            },
        }
    }

    /// vmsilo-clipd's arguments (after the program name).
    pub fn clipd_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        for r in &self.policy {
            a.push("--policy".into());
            a.push(format!("{}:{}:{}", r.from, r.to, r.action));
        }
        a.push("--max-size".into());
        a.push(self.max_size.to_string());
        for m in &self.mime_types {
            a.push("--mime".into());
            a.push(m.clone());
        }
        a.push("--wipe-after".into());
        a.push(self.wipe_after.as_secs().max(1).to_string());
        a
    }
}

impl FromValue for Clipboard {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        r.object(v, |r, o| {
            let d = Clipboard::default_value();
            let wipe_after: Duration = r.field_or(o, "wipeAfter", d.wipe_after);
            if !(Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&wipe_after) {
                r.at_key("wipeAfter", |r| {
                    r.error(o.get("wipeAfter"), "is out of range: expected 1s to 24h")
                });
            }
            let mime_types: Vec<String> = r.field_or(o, "mimeTypes", d.mime_types.clone());
            for m in &mime_types {
                if !CLIPBOARD_MIME_TYPES.contains(&m.as_str()) {
                    r.at_key("mimeTypes", |r| {
                        r.error(
                            o.get("mimeTypes"),
                            format!(
                                "{m:?} cannot be allowed: choose from {}",
                                CLIPBOARD_MIME_TYPES.join(", ")
                            ),
                        )
                    });
                }
            }
            if mime_types.is_empty() {
                r.at_key("mimeTypes", |r| {
                    r.error(o.get("mimeTypes"), "is empty: allow at least text/plain")
                });
            }
            Some(Clipboard {
                enable: r.field_or(o, "enable", d.enable),
                policy: r.field_or(o, "policy", d.policy),
                max_size: ranged(r, o, "maxSize", 1, 16 << 20, " (characters)")
                    .unwrap_or(d.max_size),
                mime_types,
                wipe_after,
                chords: r.field_or(o, "chords", d.chords),
            })
        })
    }
}

fn is_endpoint(s: &str) -> bool {
    s == "*"
        || s == "host"
        || (!s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

impl FromValue for ClipboardRule {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        r.object(v, |r, o| {
            // Every key is looked up before the first early return: these are the keys accepted.
            let _ = (o.get("from"), o.get("to"), o.get("action"));
            let get = |r: &mut Reader, key: &str| -> Option<String> {
                let s: Option<String> = r.field(o, key);
                if s.is_none() && !o.contains_key(key) {
                    r.error(
                        Some(v),
                        format!("{key} is required: a VM name, \"*\" (any VM) or \"host\""),
                    );
                }
                s
            };
            let from = get(r, "from")?;
            let to = get(r, "to")?;
            for (key, val) in [("from", &from), ("to", &to)] {
                if !is_endpoint(val) {
                    r.at_key(key, |r| {
                        r.error(o.get(key), "is not a VM name, \"*\" (any VM) or \"host\"")
                    });
                }
            }
            let action: String = match r.field(o, "action") {
                Some(a) => a,
                None => {
                    r.error(Some(v), "action is required: allow, ask or deny");
                    return None;
                }
            };
            if !["allow", "ask", "deny"].contains(&action.as_str()) {
                r.at_key("action", |r| {
                    r.error(o.get("action"), "is not allow, ask or deny")
                });
            }
            Some(ClipboardRule { from, to, action })
        })
    }
}

fn check_chord(s: &str) -> Result<(), String> {
    let parts: Vec<&str> = s.split('+').map(str::trim).collect();
    let (key, mods) = parts.split_last().ok_or("is empty")?;
    if key.is_empty() {
        return Err("has no key: write e.g. \"ctrl+shift+c\"".into());
    }
    let mut strong = false;
    for m in mods {
        match m.to_ascii_lowercase().as_str() {
            "ctrl" | "control" | "alt" | "super" | "logo" => strong = true,
            "shift" => {}
            other => {
                return Err(format!(
                    "has an unknown modifier {other:?} (ctrl, shift, alt, super)"
                ));
            }
        }
    }
    if !strong {
        return Err("needs ctrl, alt or super, or typing would trigger it".into());
    }
    Ok(())
}

impl FromValue for ClipboardChords {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        r.object(v, |r, o| {
            let d = Clipboard::default_value().chords;
            let c = ClipboardChords {
                copy: r.field_or(o, "copy", d.copy),
                paste: r.field_or(o, "paste", d.paste),
            };
            for (key, val) in [("copy", &c.copy), ("paste", &c.paste)] {
                if let Err(e) = check_chord(val) {
                    r.at_key(key, |r| r.error(o.get(key), e.clone()));
                }
            }
            if c.copy.eq_ignore_ascii_case(&c.paste) {
                r.error(Some(v), "copy and paste must be different chords");
            }
            Some(c)
        })
    }
}

/// `hostNetworking`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct HostNetworking {
    /// `hostNetworking.nat`.
    pub nat: Nat,
}

/// `hostNetworking.nat`: masquerade VM traffic out of one host interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Nat {
    /// Whether NAT is on (false).
    pub enable: bool,
    /// The external interface ("", required when enabled).
    pub interface: String,
}

/// Global `crosvm.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CrosvmGlobal {
    /// crosvm `--log-level` filter ("info").
    pub log_level: String,
    /// Arguments before `run` ([]).
    pub extra_args: Vec<String>,
    /// Arguments after `run`, before the kernel ([]).
    pub extra_run_args: Vec<String>,
}

/// Global `vm-switch.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VmSwitchGlobal {
    /// Log level ("info").
    pub log_level: LogLevel,
    /// Extra daemon arguments ([]).
    pub extra_args: Vec<String>,
}

/// Global `vmsilo-balloond.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Balloond {
    /// Log level ("info").
    pub log_level: LogLevel,
    /// Policy evaluation interval ("2s").
    #[serde(serialize_with = "ser_duration")]
    pub poll_interval: Duration,
    /// Host critical threshold, percent of total RAM (5).
    pub critical_host_percent: u8,
    /// Guest bias term ("300m").
    pub guest_available_bias: ByteSize,
    /// Extra daemon arguments ([]).
    pub extra_args: Vec<String>,
}

fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

/// Global `qemu.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QemuGlobal {
    /// Accelerator ("kvm"; "tcg" where KVM is missing or unusable).
    pub accel: Accel,
    /// Arguments appended to every QEMU command line ([]).
    pub extra_args: Vec<String>,
}

/// One VM (`nixosVms.*`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Vm {
    /// The VM's name (required), used in commands, unit names, sockets and tap names.
    pub name: String,
    /// Memory in MiB (1024).
    pub memory: u32,
    /// Virtual CPUs (2).
    pub cpus: u32,
    /// Window decoration colour ("red").
    pub color: Color,
    /// Networking.
    pub network: Network,
    /// Idle shutdown.
    pub auto_shutdown: AutoShutdown,
    /// Start at boot instead of on demand (false).
    pub auto_start: bool,
    /// VMs started together with this one ([]).
    pub depends_on: Vec<String>,
    /// Extra disks ([]).
    pub additional_disks: Vec<Disk>,
    /// The root disk (null: filled by the NixOS module from the guest build).
    pub root_disk: Option<Disk>,
    /// The guest kernel (null: filled by the NixOS module).
    pub kernel: Option<String>,
    /// The guest initramfs (null: filled by the NixOS module).
    pub initramfs: Option<String>,
    /// Whether the root disk is read-only (true).
    pub root_disk_readonly: bool,
    /// The shared home directory (true = `/shared/<vm>`).
    pub shared_home: SharedHome,
    /// Extra kernel parameters ([]).
    pub kernel_params: Vec<String>,
    /// Virtual GPU (true).
    pub gpu: Gpu,
    /// The VM's vmsilo-gate (its Wayland proxy on the host), when `gpu` is on.
    pub gate: Gate,
    /// Sound (true).
    pub sound: Sound,
    /// Shared directories ([]).
    pub shared_directories: Vec<SharedDir>,
    /// PCI passthrough ([]).
    pub pci_devices: Vec<PciDevice>,
    /// Guest packages, for the NixOS guest build ([]); carried through untouched.
    pub guest_programs: Vec<String>,
    /// Guest NixOS configuration, carried through untouched ([]).
    pub guest_config: Value,
    /// Desktop entries of guest programs, for `vmsilo desktop-entries` ([]).
    pub guest_desktop_entries: Vec<DesktopEntry>,
    /// Manual vhost-user devices ([]); vm-switch ones are added automatically.
    pub vhost_user: Vec<VhostUser>,
    /// Per-VM crosvm options.
    pub crosvm: CrosvmVm,
    /// Overlay root.
    pub root_overlay: RootOverlay,
    /// The guest's Wayland proxy ("wayland-proxy-virtwl").
    pub wayland_proxy: WaylandProxy,
    /// The VMM ("crosvm").
    pub vmm: Vmm,
    /// Per-VM QEMU options.
    pub qemu: QemuVm,
}

/// `network`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Network {
    /// DNS servers ([]).
    pub nameservers: Vec<IpAddr>,
    /// Interfaces by guest-visible name ({}), in name order.
    pub interfaces: BTreeMap<String, Interface>,
}

/// `network.interfaces.<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    /// "tap" or "vm-switch" (default "vm-switch").
    #[serde(rename = "type")]
    pub kind: InterfaceType,
    /// Fixed MAC (null: derived from `SHA1("<vm>-<interface>")`).
    pub mac_address: Option<MacAddr>,
    /// TAP options.
    pub tap: Tap,
    /// vm-switch options.
    pub vm_network: VmNetwork,
    /// DHCP in the guest (false).
    pub dhcp: bool,
    /// Static IPv4 addresses with prefix ([]).
    pub addresses: Vec<Cidr>,
    /// IPv4 routes: destination → gateway ({}).
    pub routes: BTreeMap<Cidr, Route>,
    /// Static IPv6 addresses with prefix ([]).
    pub v6_addresses: Vec<Cidr>,
    /// IPv6 routes ({}).
    pub v6_routes: BTreeMap<Cidr, Route>,
}

/// `tap.*` of an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Tap {
    /// Host TAP name (null: `<vm>-<index>`).
    pub name: Option<String>,
    /// Host-side address with prefix (exclusive with `bridge`).
    pub host_address: Option<Cidr>,
    /// Bridge to add the TAP to (exclusive with `hostAddress`).
    pub bridge: Option<String>,
}

/// `vmNetwork.*` of a vm-switch interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct VmNetwork {
    /// The vm-switch network (required for vm-switch interfaces).
    pub name: Option<String>,
    /// Whether this VM receives broadcasts (false).
    pub receive_broadcast: bool,
    /// Prefixes this VM routes for the others, e.g. a default gateway ([]).
    pub routes: Vec<Cidr>,
}

/// A static route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    /// The gateway.
    pub via: IpAddr,
}

/// `autoShutdown`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AutoShutdown {
    /// Shut the VM down when idle (false).
    pub enable: bool,
    /// Idle seconds before shutdown (60).
    pub after: u64,
}

/// A disk: a path and crosvm `--block` options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Image path.
    pub path: String,
    /// Other `--block` keys.
    pub options: Options,
}

impl Serialize for Disk {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.options.len() + 1))?;
        m.serialize_entry("path", &self.path)?;
        for (k, v) in &self.options {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// `sharedHome`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedHome {
    /// `true`: `/shared/<vm>`.
    Default,
    /// A host path.
    Path(String),
    /// `false`: no shared home.
    Disabled,
}

impl Serialize for SharedHome {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SharedHome::Default => s.serialize_bool(true),
            SharedHome::Disabled => s.serialize_bool(false),
            SharedHome::Path(p) => s.serialize_str(p),
        }
    }
}

/// `gpu`: false, true (`context-types=cross-domain:virgl2`) or custom `--gpu` options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    /// Whether the VM has a GPU.
    pub enabled: bool,
    /// Custom options (`None`: the default).
    pub options: Option<Options>,
}

impl Serialize for Gpu {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match (&self.options, self.enabled) {
            (Some(o), true) => o.serialize(s),
            (_, enabled) => s.serialize_bool(enabled),
        }
    }
}

/// `gate`: how the VM's vmsilo-gate (the Wayland proxy between the VM and the compositor)
/// treats it. Only used when `gpu` is on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Gate {
    /// Draw the frame in the VM's colour around its windows (true).
    pub frame: bool,
    /// Globals to offer on top of the gate's allowlist (`--allow`), by interface name ([]).
    pub allow_globals: Vec<String>,
    /// Globals of the gate's allowlist to hide (`--deny`), by interface name ([]).
    pub deny_globals: Vec<String>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            frame: true,
            allow_globals: Vec::new(),
            deny_globals: Vec::new(),
        }
    }
}

/// `sound`: false, true (PipeWire, playback only) or `{ backend = ...; capture = ...; }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sound {
    /// Whether the VM has sound.
    pub enabled: bool,
    /// The vhost-device-sound backend.
    pub backend: SoundBackend,
    /// Whether the guest may record (microphone). Without it the VMM reaches
    /// vhost-device-sound through `vmsilo sound-filter`, which withholds the capture ring.
    pub capture: bool,
}

impl Serialize for Sound {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !self.enabled || (self.backend == SoundBackend::Pipewire && !self.capture) {
            return s.serialize_bool(self.enabled);
        }
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("backend", &self.backend)?;
        m.serialize_entry("capture", &self.capture)?;
        m.end()
    }
}

/// A shared directory: host path, guest tag, crosvm `--shared-dir` options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedDir {
    /// Host directory.
    pub path: String,
    /// Mount tag in the guest.
    pub tag: String,
    /// Other `--shared-dir` keys.
    pub options: Options,
}

impl Serialize for SharedDir {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.options.len() + 2))?;
        m.serialize_entry("path", &self.path)?;
        m.serialize_entry("tag", &self.tag)?;
        for (k, v) in &self.options {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// A PCI device to pass through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciDevice {
    /// Host address.
    pub address: PciAddress,
    /// Other `--vfio` keys.
    pub options: Options,
}

impl Serialize for PciDevice {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.options.len() + 1))?;
        m.serialize_entry("path", &self.address)?;
        for (k, v) in &self.options {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// A manual vhost-user device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostUser {
    /// Device type (`net`, `block`, ...).
    pub kind: String,
    /// The backend's socket.
    pub socket: String,
    /// Other `--vhost-user` keys.
    pub options: Options,
}

impl Serialize for VhostUser {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.options.len() + 2))?;
        m.serialize_entry("type", &self.kind)?;
        m.serialize_entry("socket", &self.socket)?;
        for (k, v) in &self.options {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// A guest application's desktop entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DesktopEntry {
    /// Display name.
    pub name: String,
    /// Command line to run in the guest.
    pub exec: String,
    /// Icon name or path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icon: Option<String>,
    /// Freedesktop categories.
    pub categories: Vec<String>,
}

/// Per-VM `crosvm.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct CrosvmVm {
    /// Log level (null: the global one).
    pub log_level: Option<String>,
    /// Appended to the global `crosvm.extraArgs`.
    pub extra_args: Vec<String>,
    /// Appended to the global `crosvm.extraRunArgs`.
    pub extra_run_args: Vec<String>,
}

/// `rootOverlay`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RootOverlay {
    /// "qcow2" (default) or "tmpfs".
    #[serde(rename = "type")]
    pub kind: OverlayType,
    /// Maximum size of the qcow2 upper layer ("10G", "10.5G": what `qemu-img` accepts, see
    /// [`crate::measure::parse_image_size`]).
    pub size: ByteSize,
}

/// Per-VM `qemu.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct QemuVm {
    /// Appended to the global `qemu.extraArgs`.
    pub extra_args: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Reading.

impl FromValue for Duration {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        let Value::String(s) = v else {
            r.type_error(v, "a duration such as \"2s\" or \"500ms\"");
            return None;
        };
        match parse_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                r.error(Some(v), e.to_string());
                None
            }
        }
    }
}

/// Reads a whole number and checks it is within `min..=max`; the message names the unit.
fn ranged(
    r: &mut Reader,
    obj: &impl Fields,
    key: &str,
    min: u64,
    max: u64,
    unit: &str,
) -> Option<u64> {
    let v = obj.lookup(key)?;
    r.at_key(key, |r| read_ranged(r, v, min, max, unit))
}

impl FromValue for Config {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        r.object(v, |r, o| {
            let user = match o.get("user") {
                None => {
                    r.at_key("user", |r| {
                        r.error(
                            None,
                            "is required: the desktop user who runs the VMs, e.g. user = \"alice\"",
                        )
                    });
                    String::new()
                }
                Some(_) => r.field_or(o, "user", String::new()),
            };
            let host_networking = r
                .field::<HostNetworking>(o, "hostNetworking")
                .unwrap_or_default();
            let nixos_vms = match o.get("nixosVms") {
                None => Vec::new(),
                Some(Value::Array(items)) => {
                    let mut vms = Vec::new();
                    for (i, item) in items.iter().enumerate() {
                        r.enter_vm(i);
                        // A VM that cannot be read at all keeps its place (with defaults), so that
                        // the positions in later messages stay right; its problem is reported.
                        let vm = Vm::read(r, item).unwrap_or_else(Vm::placeholder);
                        vms.push(vm);
                        r.leave_vm();
                    }
                    vms
                }
                Some(other) => {
                    r.at_key("nixosVms", |r| r.type_error(other, "a list of VMs"));
                    Vec::new()
                }
            };
            Some(Config {
                enable: r.field_or(o, "enable", false),
                user,
                host_networking,
                nixos_vms,
                enable_bash_integration: r.field_or(o, "enableBashIntegration", true),
                crosvm: r
                    .field(o, "crosvm")
                    .unwrap_or_else(CrosvmGlobal::default_value),
                vm_switch: r
                    .field(o, "vm-switch")
                    .unwrap_or_else(VmSwitchGlobal::default_value),
                balloond: r
                    .field(o, "vmsilo-balloond")
                    .unwrap_or_else(Balloond::default_value),
                qemu: r.field(o, "qemu").unwrap_or_else(QemuGlobal::default_value),
                isolated_pci_devices: r.field_or(o, "isolatedPciDevices", Vec::new()),
                clipboard: r
                    .field(o, "clipboard")
                    .unwrap_or_else(Clipboard::default_value),
            })
        })
    }
}

impl FromValue for HostNetworking {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        r.object(v, |r, o| {
            Some(HostNetworking {
                nat: r.field(o, "nat").unwrap_or_default(),
            })
        })
    }
}

impl FromValue for Nat {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        r.object(v, |r, o| {
            Some(Nat {
                enable: r.field_or(o, "enable", false),
                interface: r.field_or(o, "interface", String::new()),
            })
        })
    }
}

impl CrosvmGlobal {
    fn default_value() -> Self {
        CrosvmGlobal {
            log_level: "info".into(),
            extra_args: Vec::new(),
            extra_run_args: Vec::new(),
        }
    }
}

impl FromValue for CrosvmGlobal {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        r.object(v, |r, o| {
            Some(CrosvmGlobal {
                log_level: r.field_or(o, "logLevel", "info".into()),
                extra_args: r.field_or(o, "extraArgs", Vec::new()),
                extra_run_args: r.field_or(o, "extraRunArgs", Vec::new()),
            })
        })
    }
}

impl VmSwitchGlobal {
    fn default_value() -> Self {
        VmSwitchGlobal {
            log_level: LogLevel::Info,
            extra_args: Vec::new(),
        }
    }
}

impl FromValue for VmSwitchGlobal {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        r.object(v, |r, o| {
            Some(VmSwitchGlobal {
                log_level: r.field_or(o, "logLevel", LogLevel::Info),
                extra_args: r.field_or(o, "extraArgs", Vec::new()),
            })
        })
    }
}

impl Balloond {
    fn default_value() -> Self {
        Balloond {
            log_level: LogLevel::Info,
            poll_interval: Duration::from_secs(2),
            critical_host_percent: 5,
            guest_available_bias: ByteSize(300 << 20),
            extra_args: Vec::new(),
        }
    }
}

impl FromValue for Balloond {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        r.object(v, |r, o| {
            let d = Balloond::default_value();
            let poll_interval = r.field_or(o, "pollInterval", d.poll_interval);
            // vmsilo-balloond's own range for --poll-interval: caught here rather than at its start.
            if !(Duration::from_millis(50)..=Duration::from_secs(3600)).contains(&poll_interval) {
                r.at_key("pollInterval", |r| {
                    r.error(
                        o.get("pollInterval"),
                        "is out of range: expected 50ms to 1h",
                    )
                });
            }
            let critical = ranged(r, o, "criticalHostPercent", 0, 100, " (percent)")
                .and_then(|n| u8::try_from(n).ok())
                .unwrap_or(d.critical_host_percent);
            Some(Balloond {
                log_level: r.field_or(o, "logLevel", d.log_level),
                poll_interval,
                critical_host_percent: critical,
                guest_available_bias: r.field_or(o, "guestAvailableBias", d.guest_available_bias),
                extra_args: r.field_or(o, "extraArgs", Vec::new()),
            })
        })
    }
}

impl QemuGlobal {
    fn default_value() -> Self {
        QemuGlobal {
            accel: Accel::Kvm,
            extra_args: Vec::new(),
        }
    }
}

impl FromValue for QemuGlobal {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        r.object(v, |r, o| {
            Some(QemuGlobal {
                accel: r.field_or(o, "accel", Accel::Kvm),
                extra_args: r.field_or(o, "extraArgs", Vec::new()),
            })
        })
    }
}

impl Vm {
    /// A VM with every default and no name.
    fn placeholder() -> Vm {
        let mut scratch = Reader::default();
        let empty = Value::Object(Map::new());
        let vm = Vm::read(&mut scratch, &empty);
        vm.expect("an empty table is a table")
    }

    fn read(r: &mut Reader, v: &Value) -> Option<Vm> {
        // Read the name first so that every other message can name the VM.
        if let Some(Value::String(name)) = v.get("name") {
            r.set_vm_name(name);
        }
        r.object(v, |r, o| {
            let name = match o.get("name") {
                Some(_) => r.field_or(o, "name", String::new()),
                None => {
                    r.at_key("name", |r| {
                        r.error(
                            None,
                            "is required: every VM needs a name, e.g. name = \"banking\"",
                        )
                    });
                    String::new()
                }
            };
            let memory = ranged(r, o, "memory", 64, 1 << 20, " MiB").map_or(1024, |n| n as u32);
            let cpus = ranged(r, o, "cpus", 1, 255, " vCPUs").map_or(2, |n| n as u32);
            Some(Vm {
                name,
                memory,
                cpus,
                color: r.field(o, "color").unwrap_or_default(),
                network: r.field(o, "network").unwrap_or_default(),
                auto_shutdown: r.field(o, "autoShutdown").unwrap_or(AutoShutdown {
                    enable: false,
                    after: 60,
                }),
                auto_start: r.field_or(o, "autoStart", false),
                depends_on: r.field_or(o, "dependsOn", Vec::new()),
                additional_disks: r.field_or(o, "additionalDisks", Vec::new()),
                root_disk: r.nullable(o, "rootDisk"),
                kernel: r.nullable(o, "kernel"),
                initramfs: r.nullable(o, "initramfs"),
                root_disk_readonly: r.field_or(o, "rootDiskReadonly", true),
                shared_home: r.field(o, "sharedHome").unwrap_or(SharedHome::Default),
                kernel_params: r.field_or(o, "kernelParams", Vec::new()),
                gpu: r.field(o, "gpu").unwrap_or(Gpu {
                    enabled: true,
                    options: None,
                }),
                gate: r.field(o, "gate").unwrap_or_default(),
                sound: r.field(o, "sound").unwrap_or(Sound {
                    enabled: true,
                    backend: SoundBackend::Pipewire,
                    capture: false,
                }),
                shared_directories: r.field_or(o, "sharedDirectories", Vec::new()),
                pci_devices: r.field_or(o, "pciDevices", Vec::new()),
                guest_programs: r.field_or(o, "guestPrograms", Vec::new()),
                guest_config: r
                    .field(o, "guestConfig")
                    .unwrap_or_else(|| Value::Array(Vec::new())),
                guest_desktop_entries: r.field_or(o, "guestDesktopEntries", Vec::new()),
                vhost_user: r.field_or(o, "vhostUser", Vec::new()),
                crosvm: r.field(o, "crosvm").unwrap_or_default(),
                root_overlay: r.field(o, "rootOverlay").unwrap_or(RootOverlay {
                    kind: OverlayType::Qcow2,
                    size: ByteSize(10 << 30),
                }),
                wayland_proxy: r.field_or(o, "waylandProxy", WaylandProxy::WaylandProxyVirtwl),
                vmm: r.field_or(o, "vmm", Vmm::Crosvm),
                qemu: r.field(o, "qemu").unwrap_or_default(),
            })
        })
    }
}

impl FromValue for Network {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        r.object(v, |r, o| {
            Some(Network {
                nameservers: r.field_or(o, "nameservers", Vec::new()),
                interfaces: r.field_or(o, "interfaces", BTreeMap::new()),
            })
        })
    }
}

fn read_routes(r: &mut Reader, o: &impl Fields, key: &str) -> BTreeMap<Cidr, Route> {
    let Some(v) = o.lookup(key) else {
        return BTreeMap::new();
    };
    r.at_key(key, |r| {
        let mut out = BTreeMap::new();
        let Value::Object(map) = v else {
            r.type_error(
                v,
                "a table of destination = { via = gateway }, e.g. routes.\"0.0.0.0/0\".via = \"10.0.0.254\"",
            );
            return out;
        };
        for (dest, route) in map {
            r.at_key(dest, |r| {
                let cidr = match dest.parse::<Cidr>() {
                    Ok(c) => Some(c),
                    Err(e) => {
                        r.error(Some(&Value::String(dest.clone())), e);
                        None
                    }
                };
                let route = Route::from_value(r, route);
                if let (Some(c), Some(rt)) = (cidr, route)
                    && out.insert(c, rt).is_some() {
                        r.error(
                            Some(&Value::String(dest.clone())),
                            format!("the destination {c} is listed twice"),
                        );
                    }
            });
        }
        out
    })
}

impl FromValue for Route {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        r.object(v, |r, o| match r.field::<IpAddr>(o, "via") {
            Some(via) => Some(Route { via }),
            None => {
                if !o.contains_key("via") {
                    r.at_key("via", |r| {
                        r.error(None, "is required: the gateway address of the route")
                    });
                }
                None
            }
        })
    }
}

impl FromValue for Interface {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        r.object(v, |r, o| {
            Some(Interface {
                kind: r.field_or(o, "type", InterfaceType::VmSwitch),
                mac_address: r.nullable(o, "macAddress"),
                tap: r.field(o, "tap").unwrap_or_default(),
                vm_network: r.field(o, "vmNetwork").unwrap_or_default(),
                dhcp: r.field_or(o, "dhcp", false),
                addresses: r.field_or(o, "addresses", Vec::new()),
                routes: read_routes(r, o, "routes"),
                v6_addresses: r.field_or(o, "v6Addresses", Vec::new()),
                v6_routes: read_routes(r, o, "v6Routes"),
            })
        })
    }
}

impl FromValue for Tap {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        r.object(v, |r, o| {
            Some(Tap {
                name: r.nullable(o, "name"),
                host_address: r.nullable(o, "hostAddress"),
                bridge: r.nullable(o, "bridge"),
            })
        })
    }
}

impl FromValue for VmNetwork {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        r.object(v, |r, o| {
            Some(VmNetwork {
                name: r.nullable(o, "name"),
                receive_broadcast: r.field_or(o, "receiveBroadcast", false),
                routes: r.field_or(o, "routes", Vec::new()),
            })
        })
    }
}

impl FromValue for AutoShutdown {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        r.object(v, |r, o| {
            // At most a year, whichever way it is written.
            const MAX_AFTER: u64 = 31_536_000;
            let after = match o.get("after") {
                None => 60,
                // Seconds as a number (as in the NixOS module), or a duration such as "2min".
                Some(Value::String(s)) => r.at_key("after", |r| match parse_duration(s) {
                    Ok(d) if (1..=MAX_AFTER).contains(&d.as_secs()) && d.subsec_nanos() == 0 => {
                        d.as_secs()
                    }
                    Ok(_) => {
                        r.error(
                        o.get("after"),
                        format!(
                            "{s:?} is out of range: expected a whole number of seconds from 1s to \
                             {MAX_AFTER}s (365 days)"
                        ),
                    );
                        60
                    }
                    Err(e) => {
                        r.error(o.get("after"), e.to_string());
                        60
                    }
                }),
                Some(_) => ranged(r, o, "after", 1, MAX_AFTER, " seconds").unwrap_or(60),
            };
            Some(AutoShutdown {
                enable: r.field_or(o, "enable", false),
                after,
            })
        })
    }
}

/// Reads a required string key of a free-form table.
fn required_str(r: &mut Reader, o: &impl Fields, key: &str, why: &str) -> Option<String> {
    if o.lookup(key).is_some() {
        r.field(o, key)
    } else {
        r.at_key(key, |r| r.error(None, format!("is required: {why}")));
        None
    }
}

impl FromValue for Disk {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        // A bare string is a path with no options.
        if let Value::String(path) = v {
            return Some(Disk {
                path: path.clone(),
                options: Options::new(),
            });
        }
        let Value::Object(o) = v else {
            r.type_error(v, "a disk path or a table with path and --block options");
            return None;
        };
        let options = read_options(r, o, &["path"], DISK_KEYS);
        let path = required_str(
            r,
            o,
            "path",
            "the disk image, e.g. path = \"/var/lib/data.img\"",
        )?;
        Some(Disk { path, options })
    }
}

impl FromValue for SharedHome {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        match v {
            Value::Bool(true) => Some(SharedHome::Default),
            Value::Bool(false) => Some(SharedHome::Disabled),
            Value::String(p) => Some(SharedHome::Path(p.clone())),
            _ => {
                r.type_error(v, "true, false or a host directory path");
                None
            }
        }
    }
}

impl FromValue for Gpu {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        match v {
            Value::Bool(b) => Some(Gpu {
                enabled: *b,
                options: None,
            }),
            Value::Object(o) => {
                let options = read_options(r, o, &[], GPU_KEYS);
                Some(Gpu {
                    enabled: true,
                    options: (!options.is_empty()).then_some(options),
                })
            }
            _ => {
                r.type_error(v, "true, false or a table of --gpu options");
                None
            }
        }
    }
}

impl FromValue for Sound {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        match v {
            Value::Bool(b) => Some(Sound {
                enabled: *b,
                backend: SoundBackend::Pipewire,
                capture: false,
            }),
            Value::Object(o) => {
                for (k, val) in o {
                    if k != "backend" && k != "capture" {
                        r.at_key(k, |r| {
                            r.error(
                                Some(val),
                                format!(
                                    "unknown option {k:?}; the sound options are \"backend\" \
                                     and \"capture\""
                                ),
                            )
                        });
                    }
                }
                let backend = match o.get("backend") {
                    Some(Value::String(s)) if s == "pulseaudio" => Some(SoundBackend::Pulse),
                    Some(_) => r.field(o, "backend"),
                    None => Some(SoundBackend::Pipewire),
                };
                let capture = match o.get("capture") {
                    Some(_) => r.field(o, "capture"),
                    None => Some(false),
                };
                Some(Sound {
                    enabled: true,
                    backend: backend.unwrap_or(SoundBackend::Pipewire),
                    capture: capture.unwrap_or(false),
                })
            }
            _ => {
                r.type_error(
                    v,
                    "true, false or a table such as { backend = \"pulse\", capture = false }",
                );
                None
            }
        }
    }
}

impl FromValue for SharedDir {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        let Value::Object(o) = v else {
            r.type_error(v, "a table with path, tag and --shared-dir options");
            return None;
        };
        let options = read_options(r, o, &["path", "tag", "id"], SHARED_DIR_KEYS);
        let path = required_str(r, o, "path", "the host directory to share");
        // The seed's README spelled the tag `id`; accept it as an alias.
        let tag = match (o.get("tag"), o.get("id")) {
            (Some(_), Some(id)) => {
                r.at_key("id", |r| {
                    r.error(
                        Some(id),
                        "tag and id are the same option (id is an alias): keep tag",
                    )
                });
                None
            }
            (Some(_), None) => r.field(o, "tag"),
            (None, Some(_)) => r.field(o, "id"),
            (None, None) => {
                r.at_key("tag", |r| {
                    r.error(
                        None,
                        "is required: the mount tag the guest uses, e.g. tag = \"data\"",
                    )
                });
                None
            }
        };
        Some(SharedDir {
            path: path?,
            tag: tag?,
            options,
        })
    }
}

impl FromValue for PciDevice {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        let Value::Object(o) = v else {
            r.type_error(
                v,
                "a table with path (BDF such as \"01:00.0\") and --vfio options",
            );
            return None;
        };
        let options = read_options(r, o, &["path"], VFIO_KEYS);
        if !o.contains_key("path") {
            r.at_key("path", |r| {
                r.error(
                    None,
                    "is required: the device's PCI address, e.g. path = \"01:00.0\"",
                )
            });
            return None;
        }
        let address = r.field(o, "path")?;
        Some(PciDevice { address, options })
    }
}

impl FromValue for VhostUser {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        let Value::Object(o) = v else {
            r.type_error(v, "a table with type, socket and --vhost-user options");
            return None;
        };
        let options = read_options(r, o, &["type", "socket"], VHOST_USER_KEYS);
        let kind = required_str(r, o, "type", "the device type, e.g. type = \"net\"");
        if let Some(k) = &kind
            && !VHOST_USER_TYPES.contains(&k.as_str())
        {
            let hint = did_you_mean(k, VHOST_USER_TYPES)
                .map(|n| format!(" (did you mean {n:?}?)"))
                .unwrap_or_default();
            r.at_key("type", |r| {
                r.error(
                    o.get("type"),
                    format!("{k:?} is not a crosvm vhost-user device type{hint}"),
                )
            });
        }
        let socket = required_str(r, o, "socket", "the backend's vhost-user socket path");
        Some(VhostUser {
            kind: kind?,
            socket: socket?,
            options,
        })
    }
}

impl FromValue for DesktopEntry {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        r.object(v, |r, o| {
            let name = required_str(r, o, "name", "the entry's display name");
            let exec = required_str(r, o, "exec", "the command to run in the guest");
            Some(DesktopEntry {
                name: name?,
                exec: exec?,
                icon: r.nullable(o, "icon"),
                categories: r.field_or(o, "categories", Vec::new()),
            })
        })
    }
}

impl FromValue for CrosvmVm {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        r.object(v, |r, o| {
            Some(CrosvmVm {
                log_level: r.nullable(o, "logLevel"),
                extra_args: r.field_or(o, "extraArgs", Vec::new()),
                extra_run_args: r.field_or(o, "extraRunArgs", Vec::new()),
            })
        })
    }
}

impl FromValue for RootOverlay {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        r.object(v, |r, o| {
            let size = match o.get("size") {
                None => ByteSize(10 << 30),
                Some(sv) => r.at_key("size", |r| match sv {
                    Value::String(s) => match parse_image_size(s) {
                        Ok(0) => {
                            r.error(Some(sv), "must be larger than 0");
                            ByteSize(10 << 30)
                        }
                        Ok(n) => ByteSize(n),
                        Err(e) => {
                            r.error(Some(sv), e.to_string());
                            ByteSize(10 << 30)
                        }
                    },
                    _ => {
                        r.type_error(sv, "a size such as \"10G\" or \"10.5G\"");
                        ByteSize(10 << 30)
                    }
                }),
            };
            Some(RootOverlay {
                kind: r.field_or(o, "type", OverlayType::Qcow2),
                size,
            })
        })
    }
}

impl FromValue for Gate {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        r.object(v, |r, o| {
            Some(Gate {
                frame: r.field_or(o, "frame", true),
                allow_globals: r.field_or(o, "allowGlobals", Vec::new()),
                deny_globals: r.field_or(o, "denyGlobals", Vec::new()),
            })
        })
    }
}

impl FromValue for QemuVm {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        r.object(v, |r, o| {
            Some(QemuVm {
                extra_args: r.field_or(o, "extraArgs", Vec::new()),
            })
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points.

/// The two file formats; both carry the same option names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// TOML (`vmsilo.toml`).
    Toml,
    /// JSON, as the NixOS module writes it with `builtins.toJSON`.
    Json,
}

impl Format {
    /// `.json` files are JSON, everything else TOML.
    pub fn from_path(path: &std::path::Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("json") => Format::Json,
            _ => Format::Toml,
        }
    }
}

/// Why a configuration could not be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// The text is not valid TOML/JSON.
    #[error("{format} syntax error: {message}")]
    Syntax {
        /// "TOML" or "JSON".
        format: &'static str,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The text parses but the configuration has problems (all of them are listed).
    #[error("{0}")]
    Invalid(Diagnostics),
}

impl ConfigError {
    /// The individual problems (one for a syntax error).
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        match self {
            ConfigError::Invalid(d) => d.0.clone(),
            ConfigError::Syntax { .. } => vec![Diagnostic {
                scope: crate::diag::Scope::Global,
                path: String::new(),
                value: None,
                message: self.to_string(),
            }],
        }
    }
}

/// Turns configuration text into a value tree.
pub fn parse_tree(text: &str, format: Format) -> Result<Value, ConfigError> {
    match format {
        Format::Toml => toml::from_str::<Value>(text).map_err(|e| ConfigError::Syntax {
            format: "TOML",
            message: e.to_string().trim_end().to_owned(),
        }),
        Format::Json => serde_json::from_str::<Value>(text).map_err(|e| ConfigError::Syntax {
            format: "JSON",
            message: e.to_string(),
        }),
    }
}

/// Reads a configuration tree: types, formats and unknown keys. Does not run the cross-field
/// validation (see [`mod@crate::validate`]).
pub fn from_tree(tree: &Value) -> Result<Config, Diagnostics> {
    match read_tree(tree) {
        (Some(cfg), diags) if diags.is_empty() => Ok(cfg),
        (_, diags) => Err(Diagnostics(diags)),
    }
}

/// Reads as much of a tree as possible: the configuration (with defaults where a value could not
/// be read; `None` only when the document is not a table) and every problem found.
pub(crate) fn read_tree(tree: &Value) -> (Option<Config>, Vec<Diagnostic>) {
    let mut r = Reader::default();
    let cfg = Config::from_value(&mut r, tree);
    (cfg, r.diags)
}

/// Reads configuration text without validating it.
pub fn parse_str(text: &str, format: Format) -> Result<Config, ConfigError> {
    let tree = parse_tree(text, format)?;
    from_tree(&tree).map_err(ConfigError::Invalid)
}

impl Config {
    /// The VM named `name`.
    pub fn vm(&self, name: &str) -> Option<&Vm> {
        self.nixos_vms.iter().find(|v| v.name == name)
    }

    /// The configuration as JSON, in the same form it is read from (round-trips).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// The path of a value in messages, used by validation (`network.interfaces.wan.tap`).
pub(crate) fn path_of(segs: &[&str]) -> String {
    crate::diag::format_path(
        &segs
            .iter()
            .map(|s| Seg::Key((*s).to_owned()))
            .collect::<Vec<_>>(),
    )
}

/// Renders a string value for diagnostics.
pub(crate) fn str_value(s: &str) -> String {
    render(&Value::String(s.to_owned()))
}
