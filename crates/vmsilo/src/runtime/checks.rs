//! Checks made before anything is created: the guest's files exist, the programs exist, and
//! every passed-through PCI device's IOMMU group is fully owned by vfio-pci.

use std::path::{Path, PathBuf};

use vmsilo_config::Vm;
use vmsilo_config::pci::PciAddress;

/// A check that failed: what is wrong, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// A file the guest boots from or uses is missing or unreadable.
    #[error(
        "{field} {path} cannot be used: {error}: build or install the guest image, or fix \
         `{field}` in the configuration"
    )]
    GuestFile {
        /// The configuration field.
        field: String,
        /// The file.
        path: String,
        /// Why (in the message, before the advice).
        error: std::io::Error,
    },
    /// A TAP of the VM does not exist.
    #[error(
        "network.interfaces.{iface}: the TAP {tap:?} does not exist: start vmsilo-net.service \
         (systemctl reload-or-restart vmsilo-net.service after a configuration change; it runs \
         `vmsilo net up`), or on NixOS rebuild the system"
    )]
    MissingTap {
        /// The interface.
        iface: String,
        /// Its TAP.
        tap: String,
    },
    /// A passed-through PCI device does not exist.
    #[error(
        "PCI device {addr} does not exist ({} is missing): check `pciDevices` and \
         `isolatedPciDevices`",
        dev.display()
    )]
    NoPciDevice {
        /// The device.
        addr: PciAddress,
        /// Its sysfs directory.
        dev: PathBuf,
    },
    /// A passed-through PCI device has no IOMMU group.
    #[error(transparent)]
    NoIommuGroup(#[from] super::vfio::NoIommuGroup),
    /// The members of an IOMMU group could not be listed.
    #[error("PCI device {addr}: cannot list its IOMMU group {group} ({})", dir.display())]
    ListGroup {
        /// The device.
        addr: PciAddress,
        /// Its group.
        group: String,
        /// The group's device directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A device of the group is bound to another driver.
    #[error(
        "PCI device {addr}: IOMMU group {group} is not fully bound to vfio-pci; its devices: \
         {devices}. Every device of the group must be passed through together: add them all to \
         `isolatedPciDevices` (vfio-pci takes them at VM start; on NixOS at boot, after a \
         rebuild), or unbind them from their drivers"
    )]
    GroupNotVfio {
        /// The device.
        addr: PciAddress,
        /// Its group.
        group: String,
        /// The group's devices and their drivers.
        devices: String,
    },
    /// crosvm's sandbox directory is missing.
    #[error(
        "crosvm's sandbox needs the empty directory {dir} and it does not exist: create it \
         (mkdir -m 0555 {dir}), or pass crosvm.extraRunArgs = [\"--pivot-root\" \"DIR\"]",
        dir = dir.display()
    )]
    NoPivotRoot {
        /// The directory.
        dir: PathBuf,
    },
}

/// The files a VM boots from and uses: (configuration field, path).
pub fn guest_files(vm: &Vm) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(k) = &vm.kernel {
        out.push(("kernel".to_owned(), k.clone()));
    }
    if let Some(i) = &vm.initramfs {
        out.push(("initramfs".to_owned(), i.clone()));
    }
    if let Some(r) = &vm.root_disk {
        out.push(("rootDisk".to_owned(), r.path.clone()));
    }
    for (n, d) in vm.additional_disks.iter().enumerate() {
        out.push((format!("additionalDisks[{n}]"), d.path.clone()));
    }
    for (n, d) in vm.shared_directories.iter().enumerate() {
        out.push((format!("sharedDirectories[{n}]"), d.path.clone()));
    }
    out
}

/// The first missing guest file, as a message.
pub fn check_guest_files(vm: &Vm) -> Result<(), CheckError> {
    for (field, path) in guest_files(vm) {
        if let Err(error) = std::fs::metadata(&path) {
            return Err(CheckError::GuestFile { field, path, error });
        }
    }
    Ok(())
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds a program as `execvp` would: a name with `/` as is, else in `$PATH`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// The Debian package or crate that provides a program, for messages.
pub fn provider(program: &str) -> &'static str {
    match program {
        "qemu-system-x86_64" => "install QEMU (Debian: qemu-system-x86)",
        "qemu-img" => "install qemu-img (Debian: qemu-utils)",
        "crosvm" => "install crosvm",
        "virtiofsd" => "install virtiofsd (cargo install virtiofsd)",
        "vhost-device-vsock" => "install vhost-device-vsock (cargo install vhost-device-vsock)",
        "vhost-device-sound" => "install vhost-device-sound (cargo install vhost-device-sound)",
        "vmsilo-gate" => {
            "install vmsilo-gate (it ships with vmsilo: cargo install --path crates/vmsilo-gate), \
             or set gpu = false"
        }
        "waypipe" => "install waypipe (Debian: waypipe), or set gpu = false",
        _ => "install it or fix PATH",
    }
}

/// The first of the VM's TAPs missing from `<sys>/class/net`, as a message: the VMM would fail
/// with a terse error, or (QEMU, as root) create a TAP nobody owns.
pub fn check_taps(sys: &Path, vm: &Vm) -> Result<(), CheckError> {
    for t in crate::hostnet::vm_taps(vm) {
        let dev = sys.join("class/net").join(&t.name);
        if std::fs::symlink_metadata(&dev).is_err() {
            return Err(CheckError::MissingTap {
                iface: t.iface,
                tap: t.name,
            });
        }
    }
    Ok(())
}

/// Drivers a device in a passed-through IOMMU group may have: vfio-pci owns it, pci-stub
/// parks it, or (for PCI bridges only) the kernel's port driver. A device without a driver is
/// fine too; the kernel's own viability rule is the same.
fn viable(driver: Option<&str>, class: u32) -> bool {
    match driver {
        None | Some("vfio-pci") | Some("pci-stub") => true,
        Some("pcieport") => class >> 8 == 0x0604,
        Some(_) => false,
    }
}

fn read_class(dev: &Path) -> u32 {
    std::fs::read_to_string(dev.join("class"))
        .ok()
        .and_then(|s| u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok())
        .unwrap_or(0)
}

fn driver_of(dev: &Path) -> Option<String> {
    std::fs::read_link(dev.join("driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// Checks one device's IOMMU group under the sysfs root `sys` (`/sys`).
pub fn check_iommu_group(sys: &Path, addr: &PciAddress) -> Result<(), CheckError> {
    let dev = sys.join("bus/pci/devices").join(addr.to_string());
    if std::fs::symlink_metadata(&dev).is_err() {
        return Err(CheckError::NoPciDevice { addr: *addr, dev });
    }
    let group_link = dev.join("iommu_group");
    let Ok(group) = std::fs::read_link(&group_link) else {
        return Err(super::vfio::NoIommuGroup {
            addr: *addr,
            link: group_link,
        }
        .into());
    };
    let group_name = group
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let members_dir = sys
        .join("kernel/iommu_groups")
        .join(&group_name)
        .join("devices");
    let mut members: Vec<String> = std::fs::read_dir(&members_dir)
        .map_err(|source| CheckError::ListGroup {
            addr: *addr,
            group: group_name.clone(),
            dir: members_dir.clone(),
            source,
        })?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    members.sort();
    let mut described = Vec::new();
    let mut bad = false;
    for m in &members {
        let mdev = sys.join("bus/pci/devices").join(m);
        let driver = driver_of(&mdev);
        if !viable(driver.as_deref(), read_class(&mdev)) {
            bad = true;
        }
        described.push(format!(
            "{m} ({})",
            driver.as_deref().unwrap_or("no driver")
        ));
    }
    if bad {
        return Err(CheckError::GroupNotVfio {
            addr: *addr,
            group: group_name,
            devices: described.join(", "),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_missing_tap_names_the_interface_and_the_service() {
        let cfg = vmsilo_config::load_str(
            "enable = true\nuser = \"u\"\n[[nixosVms]]\nname = \"work\"\nkernel = \"/k\"\n\
             initramfs = \"/i\"\nrootDisk = \"/r\"\n[nixosVms.network.interfaces.wan]\n\
             type = \"tap\"\ntap.hostAddress = \"10.0.0.254/24\"\n",
            vmsilo_config::Format::Toml,
        )
        .expect("valid");
        let vm = &cfg.nixos_vms[0];
        let sys = std::env::temp_dir().join(format!("vmsilo-taps-{}", std::process::id()));
        std::fs::create_dir_all(sys.join("class/net")).expect("mkdir");
        let err = check_taps(&sys, vm).expect_err("missing").to_string();
        assert!(
            err.contains("network.interfaces.wan: the TAP \"work-0\" does not exist"),
            "{err}"
        );
        assert!(err.contains("vmsilo-net.service"), "{err}");
        std::fs::create_dir_all(sys.join("class/net/work-0")).expect("mkdir");
        assert!(check_taps(&sys, vm).is_ok());
        let _ = std::fs::remove_dir_all(&sys);
    }

    #[test]
    fn test_bridges_may_keep_pcieport_but_other_drivers_may_not() {
        assert!(viable(Some("vfio-pci"), 0x020000));
        assert!(viable(None, 0x020000));
        assert!(viable(Some("pcieport"), 0x060400));
        assert!(!viable(Some("pcieport"), 0x020000));
        assert!(!viable(Some("e1000e"), 0x020000));
    }
}

/// crosvm's sandbox (minijail) pivots every device process into an empty directory,
/// `/var/empty` unless the argv names another with `--pivot-root` or turns the sandbox off
/// with `--disable-sandbox`. Without it every device fails to start with a terse minijail
/// error, so say it before starting.
pub fn check_crosvm_pivot_root(argv: &[String], default_root: &Path) -> Result<(), CheckError> {
    if argv
        .iter()
        .any(|a| a == "--disable-sandbox" || a.starts_with("--pivot-root"))
    {
        return Ok(());
    }
    if default_root.is_dir() {
        return Ok(());
    }
    Err(CheckError::NoPivotRoot {
        dir: default_root.to_owned(),
    })
}

#[cfg(test)]
mod pivot_root_tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| (*a).to_owned()).collect()
    }

    #[test]
    fn test_crosvm_without_var_empty_is_a_clear_error() {
        let missing = Path::new("/nonexistent/vmsilo-test/var-empty");
        let err = check_crosvm_pivot_root(&argv(&["crosvm", "run", "k"]), missing)
            .expect_err("missing pivot root")
            .to_string();
        assert!(err.contains("/nonexistent/vmsilo-test/var-empty"), "{err}");
        assert!(err.contains("mkdir -m 0555"), "{err}");
    }

    #[test]
    fn test_crosvm_pivot_root_ok_when_present_or_not_needed() {
        let missing = Path::new("/nonexistent/vmsilo-test/var-empty");
        let tmp = std::env::temp_dir();
        assert!(check_crosvm_pivot_root(&argv(&["crosvm", "run", "k"]), &tmp).is_ok());
        for extra in ["--disable-sandbox", "--pivot-root=/srv/empty"] {
            assert!(
                check_crosvm_pivot_root(&argv(&["crosvm", "run", extra, "k"]), missing).is_ok()
            );
        }
        let split = argv(&["crosvm", "run", "--pivot-root", "/srv/empty", "k"]);
        assert!(check_crosvm_pivot_root(&split, missing).is_ok());
    }
}
