//! vm-switch port files (`<vm-switch>/<net>/<vm>.port`): `vmsilo_proto::port_file::PortFile`,
//! the type vm-switch reads them with, filled from the launch plan.

use vmsilo_config::plan::PlanInterface;
use vmsilo_proto::port_file::PortFile;

/// The port file text for VM `vm`'s interface `iface`; `None` for non-vm-switch interfaces.
pub fn port_file(vm: &str, iface: &PlanInterface) -> Option<String> {
    let sw = iface.vm_switch.as_ref()?;
    let (v6, v4): (Vec<String>, Vec<String>) = iface
        .addresses
        .iter()
        .cloned()
        .partition(|a| a.contains(':'));
    let f = PortFile {
        name: vm.to_owned(),
        mac: iface.mac.clone(),
        addresses: v4,
        v6_addresses: v6,
        receive_broadcast: sw.receive_broadcast,
        routes: sw.routes.clone(),
    };
    Some(f.to_toml())
}
