//! vfio-pci binding at VM start, for hosts where nothing claimed `isolatedPciDevices` at boot
//! (the NixOS module does it in early boot and at activation; there every device is already
//! on vfio-pci and nothing is written).
//!
//! For each passed-through device: its IOMMU group is read first, and every member bound to a
//! driver other than vfio-pci (or pci-stub, or a bridge's pcieport) must be in
//! `isolatedPciDevices`, else nothing is written. Then the device and the isolated members of
//! its group that are not on vfio-pci get, in order: `vfio-pci` into `driver_override`, their
//! address into their current driver's `unbind`, and their address into
//! `bus/pci/drivers_probe` (which binds them to vfio-pci through the override). Devices stay
//! on vfio-pci when the VM stops, as after the NixOS module's early-boot claim.
//!
//! The sysfs root is a parameter (tests use a fake tree). Root writes only to attribute files
//! whose directories resolve inside that root: the device directory must resolve under
//! `<root>/devices/`, a driver's directory under `<root>/bus/pci/drivers/`, the driver's name
//! comes from the link's last component (never its target path), and every attribute is
//! opened without following a final symlink and without creating anything.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use vmsilo_config::pci::PciAddress;

/// A PCI device has no IOMMU group (both the start-up checks and the binding report it).
#[derive(Debug, thiserror::Error)]
#[error(
    "PCI device {addr} has no IOMMU group ({} is missing): enable the IOMMU (intel_iommu=on \
     or amd_iommu=on on the kernel command line, VT-d/AMD-Vi in the firmware)",
    link.display()
)]
pub struct NoIommuGroup {
    /// The device.
    pub addr: PciAddress,
    /// The missing `iommu_group` link.
    pub link: PathBuf,
}

/// Why the PCI devices could not be moved to vfio-pci (nothing is written when a check fails).
#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    /// A sysfs path could not be resolved.
    #[error("cannot resolve {}", path.display())]
    Resolve {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The device does not exist.
    #[error(
        "PCI device {addr} does not exist ({} is missing): check `pciDevices` and \
         `isolatedPciDevices` (lspci -D lists the devices)",
        link.display()
    )]
    NoDevice {
        /// The device.
        addr: PciAddress,
        /// Its missing link.
        link: PathBuf,
    },
    /// The device's directory is not where devices are.
    #[error(
        "PCI device {addr}: {} resolves to {}, outside {}/devices: refusing to write there",
        link.display(),
        real.display(),
        root.display()
    )]
    DeviceOutside {
        /// The device.
        addr: PciAddress,
        /// Its link.
        link: PathBuf,
        /// Where it leads.
        real: PathBuf,
        /// The sysfs root.
        root: PathBuf,
    },
    /// A device's driver link could not be read.
    #[error("cannot read {}", link.display())]
    ReadDriver {
        /// The link.
        link: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A driver link's last component is not a driver name.
    #[error("{} points to {}, which is not a driver name", link.display(), target.display())]
    NotADriver {
        /// The link.
        link: PathBuf,
        /// Its target.
        target: PathBuf,
    },
    /// The device is in no IOMMU group.
    #[error(transparent)]
    NoGroup(#[from] NoIommuGroup),
    /// The group link's last component is not a group number.
    #[error("{} points to {}, which is not an IOMMU group", link.display(), target.display())]
    NotAGroup {
        /// The link.
        link: PathBuf,
        /// Its target.
        target: PathBuf,
    },
    /// The group's members could not be listed.
    #[error("PCI device {addr}: cannot list {}", dir.display())]
    ListGroup {
        /// The device.
        addr: PciAddress,
        /// The group's device directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading the group's directory failed midway.
    #[error("cannot list {}", dir.display())]
    ListEntry {
        /// The group's device directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The group's directory holds something that is not a PCI address.
    #[error("{}: unexpected entry {name:?}: {why}", dir.display())]
    BadEntry {
        /// The group's device directory.
        dir: PathBuf,
        /// The entry.
        name: String,
        /// Why it is not an address.
        why: String,
    },
    /// A member of the group is on another driver and not isolated.
    #[error(
        "PCI device {addr}: IOMMU group {group} is not fully bound to vfio-pci; its devices: \
         {devices}. {member} is bound to {driver} and is not in isolatedPciDevices: every device \
         of a group goes to the VM together, so add {member} to isolatedPciDevices (vmsilo then \
         moves it to vfio-pci when the VM starts), or unbind it from its driver"
    )]
    ForeignMember {
        /// The device.
        addr: PciAddress,
        /// Its group.
        group: String,
        /// The group's devices and their drivers.
        devices: String,
        /// The member in the way.
        member: PciAddress,
        /// Its driver.
        driver: String,
    },
    /// vfio-pci is needed and not loaded.
    #[error(
        "the vfio-pci driver is not loaded ({} is missing), so {devices} cannot be passed \
         through: load it (modprobe vfio-pci) and list it in /etc/modules-load.d/ so it loads at \
         boot",
        dir.display()
    )]
    NoVfioDriver {
        /// vfio-pci's missing directory.
        dir: PathBuf,
        /// The devices that need it.
        devices: String,
    },
    /// A device's driver is not where drivers are.
    #[error(
        "PCI device {bdf}: its driver {driver:?} resolves to {}, outside {}: refusing to write \
         there",
        real.display(),
        drivers.display()
    )]
    DriverOutside {
        /// The device.
        bdf: String,
        /// Its driver.
        driver: String,
        /// Where the driver's directory leads.
        real: PathBuf,
        /// The drivers' directory.
        drivers: PathBuf,
    },
    /// A sysfs attribute could not be opened.
    #[error("cannot open {} for writing", path.display())]
    OpenAttr {
        /// The attribute.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A sysfs attribute could not be written.
    #[error("cannot write {value:?} into {}", path.display())]
    WriteAttr {
        /// The attribute.
        path: PathBuf,
        /// The text.
        value: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Unbinding a device from its driver failed.
    #[error("cannot unbind PCI device {bdf} from {driver}")]
    Unbind {
        /// The device.
        bdf: String,
        /// Its driver.
        driver: String,
        /// Why.
        #[source]
        source: Box<VfioError>,
    },
    /// Binding a device to vfio-pci failed.
    #[error("cannot bind PCI device {bdf} to vfio-pci")]
    Bind {
        /// The device.
        bdf: String,
        /// Why.
        #[source]
        source: Box<VfioError>,
    },
}

/// One write into sysfs: the attribute and the text written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysfsWrite {
    /// The attribute file.
    pub path: PathBuf,
    /// What was written.
    pub value: String,
}

/// The drivers a group member may keep without being isolated (see `checks::viable`).
fn harmless(driver: Option<&str>, class: u32) -> bool {
    match driver {
        None | Some("vfio-pci") | Some("pci-stub") => true,
        Some("pcieport") => class >> 8 == 0x0604,
        Some(_) => false,
    }
}

fn canonical(p: &Path) -> Result<PathBuf, VfioError> {
    std::fs::canonicalize(p).map_err(|source| VfioError::Resolve {
        path: p.to_owned(),
        source,
    })
}

/// A device's real directory, checked to lie under `<root>/devices/`.
fn device_dir(root: &Path, addr: &PciAddress) -> Result<PathBuf, VfioError> {
    let link = root.join("bus/pci/devices").join(addr.to_string());
    if std::fs::symlink_metadata(&link).is_err() {
        return Err(VfioError::NoDevice { addr: *addr, link });
    }
    let real = canonical(&link)?;
    if !real.starts_with(root.join("devices")) {
        return Err(VfioError::DeviceOutside {
            addr: *addr,
            link,
            real,
            root: root.to_owned(),
        });
    }
    Ok(real)
}

/// The name of the driver bound to the device in `dev`, from the link's last component.
fn driver_name(dev: &Path) -> Result<Option<String>, VfioError> {
    let link = dev.join("driver");
    let target = match std::fs::read_link(&link) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(VfioError::ReadDriver { link, source }),
    };
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| {
            !n.is_empty()
                && *n != "."
                && *n != ".."
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
        .ok_or_else(|| VfioError::NotADriver {
            link: link.clone(),
            target: target.clone(),
        })?;
    Ok(Some(name.to_owned()))
}

fn read_class(dev: &Path) -> u32 {
    std::fs::read_to_string(dev.join("class"))
        .ok()
        .and_then(|s| u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok())
        .unwrap_or(0)
}

/// The members of a device's IOMMU group, sorted.
fn group_members(root: &Path, addr: &PciAddress, dev: &Path) -> Result<Vec<PciAddress>, VfioError> {
    let link = dev.join("iommu_group");
    let Ok(group) = std::fs::read_link(&link) else {
        return Err(NoIommuGroup { addr: *addr, link }.into());
    };
    let name = group
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        .ok_or_else(|| VfioError::NotAGroup {
            link: link.clone(),
            target: group.clone(),
        })?;
    let dir = root.join("kernel/iommu_groups").join(name).join("devices");
    let mut members = Vec::new();
    for e in std::fs::read_dir(&dir).map_err(|source| VfioError::ListGroup {
        addr: *addr,
        dir: dir.clone(),
        source,
    })? {
        let e = e.map_err(|source| VfioError::ListEntry {
            dir: dir.clone(),
            source,
        })?;
        let n = e.file_name();
        let n = n.to_string_lossy();
        let m: PciAddress = n.parse::<PciAddress>().map_err(|why| VfioError::BadEntry {
            dir: dir.clone(),
            name: n.clone().into_owned(),
            why: why.to_string(),
        })?;
        members.push(m);
    }
    members.sort();
    Ok(members)
}

/// Writes `value` into an existing attribute file, not following a final symlink.
fn write_attr(path: &Path, value: &str) -> Result<SysfsWrite, VfioError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(|source| VfioError::OpenAttr {
            path: path.to_owned(),
            source,
        })?;
    f.write_all(value.as_bytes())
        .map_err(|source| VfioError::WriteAttr {
            path: path.to_owned(),
            value: value.to_owned(),
            source,
        })?;
    Ok(SysfsWrite {
        path: path.to_owned(),
        value: value.to_owned(),
    })
}

/// One device to move to vfio-pci.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebind {
    /// The device.
    pub addr: PciAddress,
    /// Its real directory in sysfs.
    dir: PathBuf,
    /// Its current driver, if any.
    pub driver: Option<String>,
}

/// What [`bind`] will do, found without writing anything: the devices among `devices` (a VM's
/// `pciDevices`) and the isolated members of their IOMMU groups that are not on vfio-pci yet.
/// Fails when a device is absent, is in no IOMMU group, or shares its group with a device on
/// another driver that is not in `isolated`, or when vfio-pci is needed and not loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindPlan {
    root: PathBuf,
    /// The devices to move, in order.
    pub rebinds: Vec<Rebind>,
}

/// Checks the devices and their groups under the sysfs root `root`; see [`BindPlan`].
pub fn plan(
    root: &Path,
    devices: &[PciAddress],
    isolated: &[PciAddress],
) -> Result<BindPlan, VfioError> {
    let mut todo: Vec<Rebind> = Vec::new();
    if devices.is_empty() {
        return Ok(BindPlan {
            root: root.to_owned(),
            rebinds: todo,
        });
    }
    let root = canonical(root)?;
    for addr in devices {
        let dir = device_dir(&root, addr)?;
        let members = group_members(&root, addr, &dir)?;
        let mut described = Vec::new();
        let mut foreign = None;
        for m in &members {
            let mdir = device_dir(&root, m)?;
            let driver = driver_name(&mdir)?;
            described.push(format!(
                "{m} ({})",
                driver.as_deref().unwrap_or("no driver")
            ));
            let wanted = m == addr || isolated.contains(m);
            if !wanted {
                if foreign.is_none() && !harmless(driver.as_deref(), read_class(&mdir)) {
                    foreign = Some((*m, driver.unwrap_or_default()));
                }
                continue;
            }
            if driver.as_deref() == Some("vfio-pci") || todo.iter().any(|t| t.addr == *m) {
                continue;
            }
            todo.push(Rebind {
                addr: *m,
                dir: mdir,
                driver,
            });
        }
        if let Some((m, driver)) = foreign {
            let group = dir
                .join("iommu_group")
                .read_link()
                .ok()
                .and_then(|g| g.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default();
            return Err(VfioError::ForeignMember {
                addr: *addr,
                group,
                devices: described.join(", "),
                member: m,
                driver,
            });
        }
    }
    let drivers = root.join("bus/pci/drivers");
    if !todo.is_empty() && !drivers.join("vfio-pci").is_dir() {
        return Err(VfioError::NoVfioDriver {
            dir: drivers.join("vfio-pci"),
            devices: todo
                .iter()
                .map(|t| t.addr.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(BindPlan {
        root,
        rebinds: todo,
    })
}

/// Binds `devices` (a VM's `pciDevices`) and the isolated members of their IOMMU groups to
/// vfio-pci under the sysfs root `root`; returns the writes made, in order (none when all are
/// on vfio-pci already). Every check is made before the first write.
pub fn bind(
    root: &Path,
    devices: &[PciAddress],
    isolated: &[PciAddress],
) -> Result<Vec<SysfsWrite>, VfioError> {
    apply(&plan(root, devices, isolated)?)
}

/// Carries out a [`BindPlan`]: for each device, `vfio-pci` into `driver_override`, its address
/// into its driver's `unbind`, its address into `drivers_probe`.
pub fn apply(plan: &BindPlan) -> Result<Vec<SysfsWrite>, VfioError> {
    let root = &plan.root;
    let todo = &plan.rebinds;
    let drivers = root.join("bus/pci/drivers");
    let mut writes = Vec::new();
    for t in todo {
        let bdf = t.addr.to_string();
        writes.push(write_attr(&t.dir.join("driver_override"), "vfio-pci")?);
        if let Some(d) = &t.driver {
            let ddir = canonical(&drivers.join(d))?;
            if !ddir.starts_with(&drivers) {
                return Err(VfioError::DriverOutside {
                    bdf,
                    driver: d.clone(),
                    real: ddir,
                    drivers,
                });
            }
            writes.push(
                write_attr(&ddir.join("unbind"), &bdf).map_err(|e| VfioError::Unbind {
                    bdf: bdf.clone(),
                    driver: d.clone(),
                    source: Box::new(e),
                })?,
            );
        }
        writes.push(
            write_attr(&root.join("bus/pci/drivers_probe"), &bdf).map_err(|e| VfioError::Bind {
                bdf: bdf.clone(),
                source: Box::new(e),
            })?,
        );
    }
    Ok(writes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake sysfs: devices under `devices/pci0000:00/`, links from `bus/pci/devices/`,
    /// drivers under `bus/pci/drivers/` with their `unbind` files, IOMMU groups.
    struct FakeSys {
        root: PathBuf,
    }

    impl FakeSys {
        fn new(name: &str) -> FakeSys {
            let root =
                std::env::temp_dir().join(format!("vmsilo-vfio-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            for d in [
                "devices/pci0000:00",
                "bus/pci/devices",
                "kernel/iommu_groups",
            ] {
                std::fs::create_dir_all(root.join(d)).expect("mkdir");
            }
            std::fs::write(root.join("bus/pci/drivers_probe"), "").expect("probe");
            FakeSys { root }
        }

        fn driver(&self, name: &str) -> &Self {
            let d = self.root.join("bus/pci/drivers").join(name);
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(d.join("unbind"), "").expect("unbind");
            std::fs::write(d.join("bind"), "").expect("bind");
            self
        }

        fn device(&self, bdf: &str, group: u32, driver: Option<&str>, class: &str) -> &Self {
            let dev = self.root.join("devices/pci0000:00").join(bdf);
            std::fs::create_dir_all(&dev).expect("mkdir");
            std::fs::write(dev.join("driver_override"), "(null)\n").expect("override");
            std::fs::write(dev.join("class"), format!("{class}\n")).expect("class");
            let g = self
                .root
                .join(format!("kernel/iommu_groups/{group}/devices"));
            std::fs::create_dir_all(&g).expect("mkdir");
            std::os::unix::fs::symlink(
                format!("../../../kernel/iommu_groups/{group}"),
                dev.join("iommu_group"),
            )
            .expect("group link");
            std::os::unix::fs::symlink(
                format!("../../../../devices/pci0000:00/{bdf}"),
                g.join(bdf),
            )
            .expect("member link");
            std::os::unix::fs::symlink(
                format!("../../../devices/pci0000:00/{bdf}"),
                self.root.join("bus/pci/devices").join(bdf),
            )
            .expect("device link");
            if let Some(d) = driver {
                self.driver(d);
                std::os::unix::fs::symlink(
                    format!("../../../bus/pci/drivers/{d}"),
                    dev.join("driver"),
                )
                .expect("driver link");
            }
            self
        }

        fn read(&self, rel: &str) -> String {
            std::fs::read_to_string(self.root.join(rel)).expect("read")
        }
    }

    impl Drop for FakeSys {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    fn addr(s: &str) -> PciAddress {
        s.parse().expect("address")
    }

    #[test]
    fn test_bound_device_is_overridden_unbound_and_probed_in_order() {
        let sys = FakeSys::new("bind");
        sys.driver("vfio-pci")
            .device("0000:01:00.0", 5, Some("xhci_hcd"), "0x0c0330");
        let d = addr("01:00.0");
        let writes = bind(&sys.root, &[d], &[d]).expect("bind");
        let root = std::fs::canonicalize(&sys.root).expect("root");
        assert_eq!(
            writes,
            vec![
                SysfsWrite {
                    path: root.join("devices/pci0000:00/0000:01:00.0/driver_override"),
                    value: "vfio-pci".into()
                },
                SysfsWrite {
                    path: root.join("bus/pci/drivers/xhci_hcd/unbind"),
                    value: "0000:01:00.0".into()
                },
                SysfsWrite {
                    path: root.join("bus/pci/drivers_probe"),
                    value: "0000:01:00.0".into()
                },
            ]
        );
        assert_eq!(
            sys.read("devices/pci0000:00/0000:01:00.0/driver_override"),
            "vfio-pci"
        );
        assert_eq!(sys.read("bus/pci/drivers/xhci_hcd/unbind"), "0000:01:00.0");
        assert_eq!(sys.read("bus/pci/drivers_probe"), "0000:01:00.0");
    }

    #[test]
    fn test_device_already_on_vfio_pci_is_left_alone() {
        let sys = FakeSys::new("done");
        sys.device("0000:01:00.0", 5, Some("vfio-pci"), "0x0c0330");
        let d = addr("01:00.0");
        assert!(
            bind(&sys.root, &[d], &[d])
                .expect("nothing to do")
                .is_empty()
        );
        assert_eq!(
            sys.read("devices/pci0000:00/0000:01:00.0/driver_override"),
            "(null)\n"
        );
    }

    #[test]
    fn test_unbound_device_is_probed_without_unbind_and_isolated_group_member_follows() {
        let sys = FakeSys::new("group");
        sys.driver("vfio-pci")
            .device("0000:02:00.0", 7, None, "0x020000")
            .device("0000:02:00.1", 7, Some("snd_hda_intel"), "0x040300");
        let (a, b) = (addr("02:00.0"), addr("02:00.1"));
        let writes = bind(&sys.root, &[a], &[a, b]).expect("bind");
        let values: Vec<(String, &str)> = writes
            .iter()
            .map(|w| {
                let p = w
                    .path
                    .strip_prefix(std::fs::canonicalize(&sys.root).expect("root"))
                    .expect("under root");
                (p.display().to_string(), w.value.as_str())
            })
            .collect();
        assert_eq!(
            values,
            vec![
                (
                    "devices/pci0000:00/0000:02:00.0/driver_override".into(),
                    "vfio-pci"
                ),
                ("bus/pci/drivers_probe".into(), "0000:02:00.0"),
                (
                    "devices/pci0000:00/0000:02:00.1/driver_override".into(),
                    "vfio-pci"
                ),
                (
                    "bus/pci/drivers/snd_hda_intel/unbind".into(),
                    "0000:02:00.1"
                ),
                ("bus/pci/drivers_probe".into(), "0000:02:00.1"),
            ]
        );
    }

    #[test]
    fn test_group_member_on_another_driver_and_not_isolated_stops_before_any_write() {
        let sys = FakeSys::new("foreign");
        sys.driver("vfio-pci")
            .device("0000:03:00.0", 9, Some("xhci_hcd"), "0x0c0330")
            .device("0000:03:00.1", 9, Some("e1000e"), "0x020000")
            .device("0000:00:1c.0", 9, Some("pcieport"), "0x060400");
        let d = addr("03:00.0");
        let err = bind(&sys.root, &[d], &[d])
            .expect_err("foreign member")
            .to_string();
        assert!(
            err.contains(
                "IOMMU group 9 is not fully bound to vfio-pci; its devices: 0000:00:1c.0 \
                 (pcieport), 0000:03:00.0 (xhci_hcd), 0000:03:00.1 (e1000e). 0000:03:00.1 is \
                 bound to e1000e and is not in isolatedPciDevices"
            ),
            "{err}"
        );
        assert!(err.contains("isolatedPciDevices"), "{err}");
        assert_eq!(
            sys.read("devices/pci0000:00/0000:03:00.0/driver_override"),
            "(null)\n"
        );
        assert_eq!(sys.read("bus/pci/drivers/xhci_hcd/unbind"), "");
        assert_eq!(sys.read("bus/pci/drivers_probe"), "");
    }

    #[test]
    fn test_absent_device_missing_group_and_missing_vfio_driver_are_errors() {
        let sys = FakeSys::new("errors");
        let err = bind(&sys.root, &[addr("04:00.0")], &[])
            .expect_err("absent")
            .to_string();
        assert!(
            err.contains("PCI device 0000:04:00.0 does not exist"),
            "{err}"
        );

        sys.device("0000:05:00.0", 11, Some("xhci_hcd"), "0x0c0330");
        let d = addr("05:00.0");
        let err = bind(&sys.root, &[d], &[d])
            .expect_err("no vfio-pci")
            .to_string();
        assert!(err.contains("modprobe vfio-pci"), "{err}");
        assert_eq!(sys.read("bus/pci/drivers_probe"), "");

        std::fs::remove_file(sys.root.join("devices/pci0000:00/0000:05:00.0/iommu_group"))
            .expect("rm");
        let err = bind(&sys.root, &[d], &[d])
            .expect_err("no group")
            .to_string();
        assert!(err.contains("has no IOMMU group"), "{err}");
    }

    #[test]
    fn test_device_link_leading_outside_the_root_is_refused() {
        let sys = FakeSys::new("escape");
        let outside = FakeSys::new("escape-target");
        outside.device("0000:06:00.0", 13, None, "0x020000");
        sys.driver("vfio-pci");
        std::os::unix::fs::symlink(
            outside.root.join("devices/pci0000:00/0000:06:00.0"),
            sys.root.join("bus/pci/devices/0000:06:00.0"),
        )
        .expect("link");
        let d = addr("06:00.0");
        let err = bind(&sys.root, &[d], &[d])
            .expect_err("outside")
            .to_string();
        assert!(err.contains("refusing to write there"), "{err}");
        assert_eq!(
            outside.read("devices/pci0000:00/0000:06:00.0/driver_override"),
            "(null)\n"
        );
    }

    #[test]
    fn test_attribute_that_is_a_symlink_is_not_followed() {
        let sys = FakeSys::new("attr-link");
        sys.driver("vfio-pci")
            .device("0000:07:00.0", 15, None, "0x020000");
        let victim = sys.root.join("victim");
        std::fs::write(&victim, "keep").expect("victim");
        let attr = sys
            .root
            .join("devices/pci0000:00/0000:07:00.0/driver_override");
        std::fs::remove_file(&attr).expect("rm");
        std::os::unix::fs::symlink(&victim, &attr).expect("link");
        let d = addr("07:00.0");
        let err = bind(&sys.root, &[d], &[d])
            .expect_err("symlink")
            .to_string();
        assert!(err.contains("driver_override"), "{err}");
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "keep");
    }
}
