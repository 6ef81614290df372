//! `vmsilo check`: validate the configuration and summarise each VM.

use std::io::Write;
use std::path::Path;

use vmsilo_config::derive;
use vmsilo_config::model::Vm;

use crate::CliError;
use crate::cli::CheckArgs;
use crate::config_file;

/// One line describing a VM: name, memory, vCPUs, VMM, interfaces.
pub fn summary_line(vm: &Vm, name_width: usize) -> String {
    let ifaces: Vec<String> = derive::interfaces(vm)
        .iter()
        .map(|i| {
            let how = match (&i.tap_name, &i.iface.vm_network.name) {
                (Some(tap), _) => format!("tap {tap}"),
                (None, Some(net)) => format!("vm-switch {net}"),
                (None, None) => i.iface.kind.to_string(),
            };
            let mut addrs: Vec<String> = i
                .iface
                .addresses
                .iter()
                .chain(&i.iface.v6_addresses)
                .map(ToString::to_string)
                .collect();
            if i.iface.dhcp {
                addrs.push("dhcp".into());
            }
            if addrs.is_empty() {
                format!("{}: {how}", i.name)
            } else {
                format!("{}: {how} {}", i.name, addrs.join(" "))
            }
        })
        .collect();
    let net = if ifaces.is_empty() {
        "offline".to_owned()
    } else {
        ifaces.join("; ")
    };
    format!(
        "{:<name_width$}  {:>6} MiB  {:>3} vCPU{}  {:<6}  {net}",
        vm.name,
        vm.memory,
        vm.cpus,
        if vm.cpus == 1 { " " } else { "s" },
        vm.vmm.as_str(),
    )
}

/// Runs `vmsilo check`: the configuration, then (where vmsilo sets up the host itself, not
/// the NixOS module) whether its TAPs, bridges, NAT and PCI devices can work on this host:
/// warnings on stderr, or a failure with `--strict`.
pub fn run(config: Option<&Path>, args: &CheckArgs) -> Result<(), CliError> {
    let cfg = config_file::load_strict(&config_file::resolve(config)?)?;
    let host_problems = if args.host.vmsilo_sets_up() {
        let facts = crate::hostnet::check::gather(&cfg, &args.sysfs_root);
        crate::hostnet::check::problems(&cfg, &facts)
    } else {
        Vec::new()
    };
    let width = cfg
        .nixos_vms
        .iter()
        .map(|v| v.name.len())
        .max()
        .unwrap_or(0);
    let mut out = std::io::stdout().lock();
    for vm in &cfg.nixos_vms {
        writeln!(out, "{}", summary_line(vm, width)).map_err(CliError::Output)?;
    }
    let level = if args.strict { "" } else { "warning: " };
    for p in &host_problems {
        eprintln!("vmsilo: {level}{p}");
    }
    if args.strict && !host_problems.is_empty() {
        return Err(CliError::HostProblems {
            count: host_problems.len(),
        });
    }
    Ok(())
}
