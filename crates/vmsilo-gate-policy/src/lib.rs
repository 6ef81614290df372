//! The classified allowlist of globals a guest client may see and bind. Sans-IO.
//!
//! Every interface the gate knows is in [`TABLE`] with a [`Class`], a version cap and a
//! reason. A global the compositor offers is shown to a guest only if its class offers it (after
//! the `--allow`/`--deny` overrides), at `min(compositor version, cap)`. Interfaces not in the
//! table are hidden. This module has no dependency on wl-proxy so that the configuration
//! compiler can validate the same overrides with [`Policy::with_overrides`] and list the same
//! table with [`entries`].
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::fmt;

/// How the gate treats an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// Every Wayland application needs it; always offered, cannot be denied.
    RequiredBaseline,
    /// Faster or better-looking rendering; offered, may be denied.
    AcceleratedRendering,
    /// Ordinary application features; offered, may be denied.
    AppDefault,
    /// Harmless for most uses but easy to abuse; hidden, may be allowed.
    OffDefault,
    /// Served by the gate itself (per-VM); never forwarded to the compositor.
    Virtualized,
    /// Would let a guest read or write the host's clipboard behind the user's back; never
    /// offered.
    ClipboardBoundary,
    /// Lets a client see or control other clients, the screen or the input; never offered.
    HighRisk,
    /// Used by the gate itself; hidden from guests.
    GateOnly,
}

impl Class {
    /// Whether the class is offered when no override names the interface.
    pub fn offered_by_default(self) -> bool {
        matches!(
            self,
            Class::RequiredBaseline
                | Class::AcceleratedRendering
                | Class::AppDefault
                | Class::Virtualized
        )
    }

    /// The name printed by `--print-policy`.
    pub fn name(self) -> &'static str {
        match self {
            Class::RequiredBaseline => "required",
            Class::AcceleratedRendering => "accelerated-rendering",
            Class::AppDefault => "app-default",
            Class::OffDefault => "off-default",
            Class::Virtualized => "virtualized",
            Class::ClipboardBoundary => "clipboard-boundary",
            Class::HighRisk => "high-risk",
            Class::GateOnly => "gate-only",
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One interface the gate knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The Wayland interface name of the global.
    pub interface: &'static str,
    /// Its class.
    pub class: Class,
    /// The highest version offered to guests (the compositor's may be lower).
    pub max_version: u32,
    /// Why it is in this class.
    pub why: &'static str,
}

const fn e(interface: &'static str, class: Class, max_version: u32, why: &'static str) -> Entry {
    Entry {
        interface,
        class,
        max_version,
        why,
    }
}

use Class::*;

/// The table. Version caps are what the gate (and the frame around guest toplevels) is written
/// and tested against.
pub const TABLE: &[Entry] = &[
    // Required baseline.
    e("wl_compositor", RequiredBaseline, 6, "surfaces and regions"),
    e("wl_subcompositor", RequiredBaseline, 1, "subsurfaces"),
    e("wl_shm", RequiredBaseline, 2, "shared-memory buffers"),
    e(
        "wl_output",
        RequiredBaseline,
        4,
        "output geometry and scale",
    ),
    e(
        "wl_seat",
        RequiredBaseline,
        9,
        "input: pointer, keyboard, touch of the app's own windows",
    ),
    e(
        "xdg_wm_base",
        RequiredBaseline,
        6,
        "toplevels and popups (wrapped in the VM's frame)",
    ),
    // Accelerated rendering.
    e(
        "zwp_linux_dmabuf_v1",
        AcceleratedRendering,
        5,
        "GPU buffers; fds pass through untouched",
    ),
    e(
        "wp_viewporter",
        AcceleratedRendering,
        1,
        "scaling and cropping of buffers",
    ),
    e(
        "wp_fractional_scale_manager_v1",
        AcceleratedRendering,
        1,
        "sharp rendering at fractional scales",
    ),
    e(
        "wp_presentation",
        AcceleratedRendering,
        2,
        "presentation timing feedback",
    ),
    e(
        "wp_color_manager_v1",
        AcceleratedRendering,
        1,
        "colour management of the app's own surfaces",
    ),
    e(
        "wp_tearing_control_manager_v1",
        AcceleratedRendering,
        1,
        "tearing hints for games",
    ),
    e(
        "wp_single_pixel_buffer_manager_v1",
        AcceleratedRendering,
        1,
        "solid-colour buffers",
    ),
    e(
        "wp_alpha_modifier_v1",
        AcceleratedRendering,
        1,
        "surface opacity",
    ),
    e(
        "wp_fifo_manager_v1",
        AcceleratedRendering,
        1,
        "FIFO presentation",
    ),
    e(
        "wp_commit_timing_manager_v1",
        AcceleratedRendering,
        1,
        "timed commits",
    ),
    e(
        "wp_content_type_manager_v1",
        AcceleratedRendering,
        1,
        "content-type hints",
    ),
    // Application defaults.
    e(
        "zxdg_output_manager_v1",
        AppDefault,
        3,
        "logical output geometry",
    ),
    e(
        "zwp_relative_pointer_manager_v1",
        AppDefault,
        1,
        "relative motion of the app's own pointer (games)",
    ),
    e(
        "zwp_pointer_constraints_v1",
        AppDefault,
        1,
        "pointer lock within the app's own surface (games)",
    ),
    e(
        "wp_cursor_shape_manager_v1",
        AppDefault,
        1,
        "named cursor shapes",
    ),
    e(
        "xdg_activation_v1",
        AppDefault,
        1,
        "focus requests with a token from the compositor",
    ),
    e(
        "zwp_idle_inhibit_manager_v1",
        AppDefault,
        1,
        "keep the screen on while the app's surface is visible (video)",
    ),
    e(
        "zwp_text_input_manager_v3",
        AppDefault,
        1,
        "input methods for the app's own text fields",
    ),
    e("wl_fixes", AppDefault, 1, "destroying registries"),
    // Off by default.
    e(
        "zwp_keyboard_shortcuts_inhibit_manager_v1",
        OffDefault,
        1,
        "takes the compositor's shortcuts away while the app has focus",
    ),
    e(
        "zwp_tablet_manager_v2",
        OffDefault,
        1,
        "drawing tablets (device names and serials)",
    ),
    // Virtualised.
    e(
        "wl_data_device_manager",
        Virtualized,
        3,
        "the VM's own clipboard, served by the gate; never reaches the compositor",
    ),
    // Clipboard boundary.
    e(
        "zwlr_data_control_manager_v1",
        ClipboardBoundary,
        0,
        "reads and writes every clipboard without focus",
    ),
    e(
        "ext_data_control_manager_v1",
        ClipboardBoundary,
        0,
        "reads and writes every clipboard without focus",
    ),
    e(
        "xdg_toplevel_drag_manager_v1",
        ClipboardBoundary,
        0,
        "drags toplevels and data across the VM boundary",
    ),
    e(
        "zwp_primary_selection_device_manager_v1",
        ClipboardBoundary,
        0,
        "primary selection would cross the VM boundary (not virtualised yet)",
    ),
    e(
        "gtk_primary_selection_device_manager",
        ClipboardBoundary,
        0,
        "primary selection would cross the VM boundary",
    ),
    // High risk.
    e(
        "zwlr_screencopy_manager_v1",
        HighRisk,
        0,
        "captures the whole screen",
    ),
    e(
        "ext_image_copy_capture_manager_v1",
        HighRisk,
        0,
        "captures the screen and other windows",
    ),
    e(
        "ext_output_image_capture_source_manager_v1",
        HighRisk,
        0,
        "captures the screen",
    ),
    e(
        "ext_foreign_toplevel_image_capture_source_manager_v1",
        HighRisk,
        0,
        "captures other windows",
    ),
    e(
        "zwlr_export_dmabuf_manager_v1",
        HighRisk,
        0,
        "captures the screen",
    ),
    e(
        "zwp_virtual_keyboard_manager_v1",
        HighRisk,
        0,
        "types into other windows",
    ),
    e(
        "zwlr_virtual_pointer_manager_v1",
        HighRisk,
        0,
        "moves and clicks the pointer anywhere",
    ),
    e(
        "zwp_input_method_manager_v2",
        HighRisk,
        0,
        "reads and injects text in other windows",
    ),
    e(
        "zwp_input_panel_v1",
        HighRisk,
        0,
        "input-method panel over other windows",
    ),
    e(
        "zwlr_layer_shell_v1",
        HighRisk,
        0,
        "unframed surfaces over everything (fake lock screens, fake bars)",
    ),
    e(
        "ext_session_lock_manager_v1",
        HighRisk,
        0,
        "locks the session: a fake lock screen",
    ),
    e(
        "zwlr_foreign_toplevel_manager_v1",
        HighRisk,
        0,
        "lists and controls other windows",
    ),
    e(
        "ext_foreign_toplevel_list_v1",
        HighRisk,
        0,
        "lists other windows",
    ),
    e(
        "zwlr_output_manager_v1",
        HighRisk,
        0,
        "reconfigures outputs",
    ),
    e(
        "zwlr_output_power_manager_v1",
        HighRisk,
        0,
        "turns outputs off",
    ),
    e(
        "zwlr_gamma_control_manager_v1",
        HighRisk,
        0,
        "changes the gamma of every output",
    ),
    e(
        "zwlr_input_inhibit_manager_v1",
        HighRisk,
        0,
        "grabs all input",
    ),
    e(
        "ext_idle_notifier_v1",
        HighRisk,
        0,
        "observes whether the user is present",
    ),
    e(
        "ext_workspace_manager_v1",
        HighRisk,
        0,
        "lists and controls workspaces",
    ),
    e(
        "wp_drm_lease_device_v1",
        HighRisk,
        0,
        "takes a display away from the compositor",
    ),
    e(
        "wp_security_context_manager_v1",
        HighRisk,
        0,
        "the gate tags the VM's connections itself; a guest must not create contexts",
    ),
    e(
        "wl_shell",
        HighRisk,
        0,
        "legacy shell: its windows would bypass the VM's frame",
    ),
    e(
        "weston_debug_v1",
        HighRisk,
        0,
        "compositor debug streams (every client's protocol)",
    ),
    e("weston_screenshooter", HighRisk, 0, "captures the screen"),
    e("weston_capture_v1", HighRisk, 0, "captures the screen"),
    // Gate only.
    e(
        "zxdg_decoration_manager_v1",
        GateOnly,
        0,
        "the gate requests server-side decorations itself",
    ),
    e(
        "org_kde_kwin_server_decoration_manager",
        GateOnly,
        0,
        "decorations are the gate's business",
    ),
];

/// All entries of the table, in table order (for the configuration compiler and
/// `--print-policy`).
pub fn entries() -> &'static [Entry] {
    TABLE
}

/// The table entry for `interface`, if the gate knows it.
pub fn lookup(interface: &str) -> Option<&'static Entry> {
    TABLE.iter().find(|e| e.interface == interface)
}

/// An override the gate refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// `--allow` of an interface that must never reach a guest.
    #[error(
        "cannot allow {interface}: it is {class} ({why}); only app-default and off-default \
         interfaces can be allowed or denied"
    )]
    Forbidden {
        /// The interface.
        interface: String,
        /// Its class.
        class: Class,
        /// The table's reason.
        why: &'static str,
    },
    /// `--deny` of an interface every client needs.
    #[error("cannot deny {interface}: it is {class} ({why}); applications do not work without it")]
    Required {
        /// The interface.
        interface: String,
        /// Its class.
        class: Class,
        /// The table's reason.
        why: &'static str,
    },
    /// An interface not in the table.
    #[error(
        "unknown interface {0:?}: the gate hides every global it does not know; see \
         `vmsilo-gate --print-policy` for the list"
    )]
    Unknown(String),
    /// The same interface both allowed and denied.
    #[error("{0} is both allowed and denied: keep one")]
    Conflict(String),
}

/// Which globals a guest may see, at which version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    allowed: BTreeSet<&'static str>,
    denied: BTreeSet<&'static str>,
}

/// Whether and why one interface is offered, for `--print-policy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The table entry.
    pub entry: Entry,
    /// Whether guests see it.
    pub offered: bool,
    /// The reason, including an override if one applies.
    pub why: String,
}

impl Policy {
    /// The default policy plus overrides. Allowing is possible for [`Class::OffDefault`] (and is
    /// a no-op for classes already offered); denying for [`Class::AppDefault`],
    /// [`Class::AcceleratedRendering`] and [`Class::OffDefault`] (a no-op for the latter and for
    /// classes never offered).
    pub fn with_overrides<A, D>(allow: A, deny: D) -> Result<Policy, PolicyError>
    where
        A: IntoIterator,
        A::Item: AsRef<str>,
        D: IntoIterator,
        D::Item: AsRef<str>,
    {
        let mut p = Policy::default();
        for name in allow {
            let name = name.as_ref();
            let entry = lookup(name).ok_or_else(|| PolicyError::Unknown(name.to_string()))?;
            match entry.class {
                RequiredBaseline | AcceleratedRendering | AppDefault | OffDefault => {
                    p.allowed.insert(entry.interface);
                }
                Virtualized | ClipboardBoundary | HighRisk | GateOnly => {
                    return Err(PolicyError::Forbidden {
                        interface: name.to_string(),
                        class: entry.class,
                        why: entry.why,
                    });
                }
            }
        }
        for name in deny {
            let name = name.as_ref();
            let entry = lookup(name).ok_or_else(|| PolicyError::Unknown(name.to_string()))?;
            match entry.class {
                RequiredBaseline | Virtualized => {
                    return Err(PolicyError::Required {
                        interface: name.to_string(),
                        class: entry.class,
                        why: entry.why,
                    });
                }
                _ => {
                    if p.allowed.contains(entry.interface) {
                        return Err(PolicyError::Conflict(name.to_string()));
                    }
                    p.denied.insert(entry.interface);
                }
            }
        }
        Ok(p)
    }

    /// Whether guests see `interface` at all.
    pub fn is_offered(&self, interface: &str) -> bool {
        let Some(entry) = lookup(interface) else {
            return false;
        };
        match entry.class {
            RequiredBaseline | Virtualized => true,
            AcceleratedRendering | AppDefault => !self.denied.contains(entry.interface),
            OffDefault => self.allowed.contains(entry.interface),
            ClipboardBoundary | HighRisk | GateOnly => false,
        }
    }

    /// The version offered to guests for `interface` (capped at `compositor_version`), or
    /// `None` when the global is hidden.
    pub fn offered(&self, interface: &str, compositor_version: u32) -> Option<u32> {
        if !self.is_offered(interface) {
            return None;
        }
        let entry = lookup(interface)?;
        let v = entry.max_version.min(compositor_version);
        (v > 0).then_some(v)
    }

    /// One row per table entry: offered or not, and why.
    pub fn rows(&self) -> Vec<Row> {
        TABLE
            .iter()
            .map(|entry| {
                let offered = self.is_offered(entry.interface);
                let why = if self.allowed.contains(entry.interface)
                    && !entry.class.offered_by_default()
                {
                    format!("allowed by --allow; {}", entry.why)
                } else if self.denied.contains(entry.interface) && entry.class.offered_by_default()
                {
                    format!("denied by --deny; {}", entry.why)
                } else {
                    entry.why.to_string()
                };
                Row {
                    entry: *entry,
                    offered,
                    why,
                }
            })
            .collect()
    }

    /// The `--print-policy` table.
    pub fn render(&self) -> String {
        let rows = self.rows();
        let w = rows
            .iter()
            .map(|r| r.entry.interface.len())
            .max()
            .unwrap_or(9);
        let cw = rows
            .iter()
            .map(|r| r.entry.class.name().len())
            .max()
            .unwrap_or(5);
        let mut out = format!(
            "{:w$}  {:cw$}  {:7}  {:11}  why\n",
            "interface", "class", "offered", "max-version"
        );
        for r in rows {
            let max = if r.offered {
                r.entry.max_version.to_string()
            } else {
                "-".to_string()
            };
            out.push_str(&format!(
                "{:w$}  {:cw$}  {:7}  {:11}  {}\n",
                r.entry.interface,
                r.entry.class.name(),
                if r.offered { "yes" } else { "no" },
                max,
                r.why
            ));
        }
        out.push_str("any other interface: hidden (unknown to the gate)\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: [&str; 0] = [];

    #[test]
    fn test_classes_decide_what_is_offered() {
        let p = Policy::default();
        for offered in [
            "wl_compositor",
            "wl_seat",
            "xdg_wm_base",
            "zwp_linux_dmabuf_v1",
            "wp_viewporter",
            "zxdg_output_manager_v1",
            "wl_data_device_manager",
        ] {
            assert!(p.is_offered(offered), "{offered}");
        }
        for hidden in [
            "zwp_keyboard_shortcuts_inhibit_manager_v1",
            "zwp_tablet_manager_v2",
            "zwlr_screencopy_manager_v1",
            "zwp_virtual_keyboard_manager_v1",
            "zwlr_layer_shell_v1",
            "zwlr_data_control_manager_v1",
            "ext_data_control_manager_v1",
            "zwp_primary_selection_device_manager_v1",
            "wp_security_context_manager_v1",
            "zxdg_decoration_manager_v1",
            "weston_debug_v1",
        ] {
            assert!(!p.is_offered(hidden), "{hidden}");
            assert_eq!(p.offered(hidden, 1), None, "{hidden}");
        }
    }

    #[test]
    fn test_unknown_globals_are_hidden() {
        let p = Policy::default();
        assert_eq!(p.offered("some_new_protocol_v1", 1), None);
        assert_eq!(p.offered("", 1), None);
        assert_eq!(p.offered("wl_compositor\0", 1), None);
    }

    #[test]
    fn test_versions_are_capped() {
        let p = Policy::default();
        assert_eq!(p.offered("wl_compositor", 7), Some(6));
        assert_eq!(p.offered("wl_compositor", 4), Some(4));
        assert_eq!(p.offered("wl_seat", 11), Some(9));
        assert_eq!(p.offered("wl_data_device_manager", 3), Some(3));
        assert_eq!(p.offered("wl_compositor", 0), None);
    }

    #[test]
    fn test_overrides_move_app_and_off_default_entries() {
        let p = Policy::with_overrides(["zwp_tablet_manager_v2"], ["wp_viewporter"]).unwrap();
        assert_eq!(p.offered("zwp_tablet_manager_v2", 2), Some(1));
        assert_eq!(p.offered("wp_viewporter", 1), None);
        assert_eq!(p.offered("wl_compositor", 6), Some(6));
        let p = Policy::with_overrides(NONE, ["zxdg_output_manager_v1"]).unwrap();
        assert!(!p.is_offered("zxdg_output_manager_v1"));
    }

    #[test]
    fn test_overrides_of_dangerous_or_required_entries_are_refused() {
        for bad in [
            "zwlr_screencopy_manager_v1",
            "zwlr_data_control_manager_v1",
            "wl_data_device_manager",
            "zxdg_decoration_manager_v1",
            "wp_security_context_manager_v1",
        ] {
            let err = Policy::with_overrides([bad], NONE).unwrap_err();
            assert!(matches!(err, PolicyError::Forbidden { .. }), "{bad}: {err}");
            assert!(err.to_string().contains(bad), "{err}");
        }
        let err = Policy::with_overrides(NONE, ["wl_compositor"]).unwrap_err();
        assert!(matches!(err, PolicyError::Required { .. }), "{err}");
        let err = Policy::with_overrides(["wl_screencopy"], NONE).unwrap_err();
        assert_eq!(err, PolicyError::Unknown("wl_screencopy".into()));
        let err = Policy::with_overrides(["zwp_tablet_manager_v2"], ["zwp_tablet_manager_v2"])
            .unwrap_err();
        assert_eq!(err, PolicyError::Conflict("zwp_tablet_manager_v2".into()));
        assert!(
            Policy::with_overrides(["zwlr_layer_shell_v1"], NONE)
                .unwrap_err()
                .to_string()
                .contains("cannot allow zwlr_layer_shell_v1: it is high-risk")
        );
    }

    #[test]
    fn test_table_has_each_interface_once() {
        let mut seen = BTreeSet::new();
        for e in TABLE {
            assert!(seen.insert(e.interface), "{} twice", e.interface);
            assert_eq!(
                e.max_version > 0,
                e.class.offered_by_default() || e.class == OffDefault,
                "{}",
                e.interface
            );
        }
    }

    #[test]
    fn test_print_policy_lists_every_entry_with_class_and_offer() {
        let p = Policy::with_overrides(["zwp_tablet_manager_v2"], ["wp_viewporter"]).unwrap();
        let out = p.render();
        assert!(out.starts_with("interface"));
        assert_eq!(out.lines().count(), TABLE.len() + 2);
        let line = |name: &str| {
            out.lines()
                .find(|l| l.split_whitespace().next() == Some(name))
                .unwrap_or_else(|| panic!("{name} missing in\n{out}"))
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        assert_eq!(line("wl_compositor")[1..4], ["required", "yes", "6"]);
        assert_eq!(
            line("zwlr_screencopy_manager_v1")[1..4],
            ["high-risk", "no", "-"]
        );
        assert_eq!(
            line("zxdg_decoration_manager_v1")[1..4],
            ["gate-only", "no", "-"]
        );
        assert_eq!(
            line("zwp_tablet_manager_v2")[1..4],
            ["off-default", "yes", "1"]
        );
        assert_eq!(
            line("zwp_tablet_manager_v2")[4..6],
            ["allowed", "by"],
            "{out}"
        );
        assert_eq!(
            line("wp_viewporter")[1..6],
            ["accelerated-rendering", "no", "-", "denied", "by"]
        );
        assert!(out.ends_with("any other interface: hidden (unknown to the gate)\n"));
    }
}
