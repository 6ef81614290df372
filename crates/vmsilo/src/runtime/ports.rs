//! vm-switch port files (`<vm-switch>/<net>/<vm>.port`), in the format vm-switch reads
//! (`crates/vm-switch/src/config.rs`): TOML with `name`, `mac`, `addresses`, `v6Addresses`,
//! `receiveBroadcast`, `routes`.

use serde::Serialize;
use vmsilo_config::plan::PlanInterface;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PortFile<'a> {
    name: &'a str,
    mac: &'a str,
    addresses: Vec<&'a str>,
    v6_addresses: Vec<&'a str>,
    receive_broadcast: bool,
    routes: Vec<&'a str>,
}

/// The port file text for VM `vm`'s interface `iface`; `None` for non-vm-switch interfaces.
pub fn port_file(vm: &str, iface: &PlanInterface) -> Option<String> {
    let sw = iface.vm_switch.as_ref()?;
    let (v6, v4): (Vec<&str>, Vec<&str>) = iface
        .addresses
        .iter()
        .map(String::as_str)
        .partition(|a| a.contains(':'));
    let f = PortFile {
        name: vm,
        mac: &iface.mac,
        addresses: v4,
        v6_addresses: v6,
        receive_broadcast: sw.receive_broadcast,
        routes: sw.routes.iter().map(String::as_str).collect(),
    };
    toml::to_string(&f).ok()
}
