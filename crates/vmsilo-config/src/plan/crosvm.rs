//! The crosvm command line, in crosvm's current syntax (`google/crosvm` `src/crosvm/cmdline.rs`
//! at f1e797a6, where every flag used here was checked to parse).
//!
//! Order: global options (`--log-level`, `--extended-status`, `crosvm.extraArgs`), `run`, the
//! machine (`--name`, `--mem`, `--cpus`), disks (root first, then the qcow2 overlay, then
//! additional disks, so the guest sees them as vda, vdb, ...), kernel parameters and initrd,
//! network, vhost-user devices, shared directories, GPU, VFIO, balloon, vsock, control socket,
//! console, `extraRunArgs`, and the kernel last. No removed or deprecated flag is emitted.

use crate::derive::{self, GUEST_USER_ID, HOME_TAG};
use crate::model::{OptValue, Options, OverlayType, Vm};
use crate::plan::{
    DEFAULT_GPU_OPTIONS, LaunchPlan, PlanOptions, VM_SWITCH_QUEUE_SIZE, gate_backend, push_extra,
    sound_backends,
};
use crate::validate::ValidConfig;

fn group(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

/// `key=value,key=value` in key order; booleans as `true`/`false`.
fn kv_list<'a>(opts: impl IntoIterator<Item = (&'a String, &'a OptValue)>) -> Vec<String> {
    opts.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The `--gpu` value.
fn gpu_value(opts: Option<&Options>) -> String {
    let Some(opts) = opts else {
        return DEFAULT_GPU_OPTIONS.to_owned();
    };
    let mut parts = Vec::new();
    for (k, v) in opts {
        if k == "width" || k == "height" {
            continue;
        }
        parts.push(format!("{k}={v}"));
    }
    // crosvm deprecated width/height; the same request in the current syntax:
    if let (Some(w), Some(h)) = (opts.get("width"), opts.get("height")) {
        parts.push(format!("displays=[[mode=windowed[{w},{h}]]]"));
        parts.sort();
    }
    parts.join(",")
}

/// The `--vfio` value: sysfs path, then options, with the seed's `iommu=on` spelled `viommu`
/// (crosvm replaced it in Dec 2022 and no longer parses `on`).
fn vfio_value(sysfs: &str, opts: &Options) -> String {
    let mut parts = vec![sysfs.to_owned()];
    for (k, v) in opts {
        match (k.as_str(), v) {
            ("iommu", OptValue::Str(s)) if s == "on" => parts.push("iommu=viommu".into()),
            _ => parts.push(format!("{k}={v}")),
        }
    }
    parts.join(",")
}

/// The `--shared-dir` value: `PATH:TAG:type=fs:key=value...` (colon-separated).
fn shared_dir_value(path: &str, tag: &str, opts: &Options) -> String {
    let kind = match opts.get("type") {
        Some(t) => t.to_string(),
        None => "fs".to_owned(),
    };
    let mut parts = vec![path.to_owned(), tag.to_owned(), format!("type={kind}")];
    parts.extend(
        opts.iter()
            .filter(|(k, _)| k.as_str() != "type")
            .map(|(k, v)| format!("{k}={v}")),
    );
    parts.join(":")
}

pub(super) fn fill(cfg: &ValidConfig, vm: &Vm, opts: &PlanOptions, plan: &mut LaunchPlan) {
    let d = &opts.dirs;
    let mut g: Vec<Vec<String>> = vec![vec!["crosvm".into()]];

    // Global options, before `run`.
    let level = vm
        .crosvm
        .log_level
        .clone()
        .unwrap_or_else(|| cfg.crosvm.log_level.clone());
    g.push(vec!["--log-level".into(), level]);
    // Distinguishes stop (0), guest reboot (32), crash (33) and panic (34) in the exit status.
    g.push(group(&["--extended-status"]));
    push_extra(
        &mut g,
        cfg.crosvm.extra_args.iter().chain(&vm.crosvm.extra_args),
    );
    g.push(group(&["run"]));

    g.push(vec!["--name".into(), vm.name.clone()]);
    g.push(vec!["--mem".into(), vm.memory.to_string()]);
    g.push(vec!["--cpus".into(), vm.cpus.to_string()]);

    // Disks: the root disk is vda, the overlay vdb.
    if let Some(root) = &vm.root_disk {
        let mut v = vec![root.path.clone(), "root".into()];
        if vm.root_disk_readonly {
            v.push("ro".into());
        }
        v.extend(kv_list(
            root.options.iter().filter(|(k, _)| k.as_str() != "format"),
        ));
        g.push(vec!["--block".into(), v.join(",")]);
    }
    if vm.root_overlay.kind == OverlayType::Qcow2 {
        g.push(vec!["--block".into(), d.overlay_image(&vm.name)]);
    }
    for disk in &vm.additional_disks {
        let mut v = vec![disk.path.clone()];
        v.extend(kv_list(
            disk.options.iter().filter(|(k, _)| k.as_str() != "format"),
        ));
        g.push(vec!["--block".into(), v.join(",")]);
    }

    for p in &plan.kernel_params {
        g.push(vec!["-p".into(), p.clone()]);
    }
    if let Some(initrd) = &vm.initramfs {
        g.push(vec!["--initrd".into(), initrd.clone()]);
    }

    // Network: TAPs in interface order, then vm-switch ports.
    for i in &plan.interfaces {
        if let Some(tap) = &i.tap {
            g.push(vec![
                "--net".into(),
                format!("tap-name={},mac={}", tap.name, i.mac),
            ]);
        }
    }
    for i in &plan.interfaces {
        if let Some(s) = &i.vm_switch {
            g.push(vec![
                "--vhost-user".into(),
                format!(
                    "net,socket={},max-queue-size={VM_SWITCH_QUEUE_SIZE}",
                    s.socket
                ),
            ]);
        }
    }

    // Sound: crosvm has no PulseAudio/PipeWire backend; vhost-device-sound serves it
    // (behind `vmsilo sound-filter` unless the VM may record).
    if let Some((socket, backends)) = sound_backends(vm, opts) {
        g.push(vec![
            "--vhost-user".into(),
            format!("sound,socket={socket}"),
        ]);
        plan.backends.extend(backends);
    }
    for v in &vm.vhost_user {
        let mut parts = vec![v.kind.clone(), format!("socket={}", v.socket)];
        parts.extend(kv_list(&v.options));
        g.push(vec!["--vhost-user".into(), parts.join(",")]);
    }

    // Shared directories, in-process virtio-fs. The shared home maps the guest user to the
    // configured host user and nothing else.
    if let Some(home) = derive::shared_home_dir(vm) {
        let mut o = Options::new();
        o.insert("uid".into(), OptValue::Int(GUEST_USER_ID.into()));
        o.insert("gid".into(), OptValue::Int(GUEST_USER_ID.into()));
        o.insert(
            "uidmap".into(),
            OptValue::Str(format!("{GUEST_USER_ID} {} 1", opts.uid)),
        );
        o.insert(
            "gidmap".into(),
            OptValue::Str(format!("{GUEST_USER_ID} {} 1", opts.gid)),
        );
        g.push(vec![
            "--shared-dir".into(),
            shared_dir_value(&home, HOME_TAG, &o),
        ]);
    }
    for s in &vm.shared_directories {
        g.push(vec![
            "--shared-dir".into(),
            shared_dir_value(&s.path, &s.tag, &s.options),
        ]);
    }

    // The GPU's cross-domain context connects to the VM's gate, never to the compositor.
    if let Some(gate) = gate_backend(cfg, vm, opts) {
        g.push(vec!["--gpu".into(), gpu_value(vm.gpu.options.as_ref())]);
        g.push(vec!["--wayland-sock".into(), gate.socket.clone()]);
        plan.backends.push(gate);
    }

    for p in &vm.pci_devices {
        g.push(vec![
            "--vfio".into(),
            vfio_value(&p.address.sysfs_path(), &p.options),
        ]);
    }

    // The balloon is on by default in crosvm; page reporting hands freed guest pages back.
    g.push(group(&["--balloon-page-reporting"]));
    g.push(vec!["--vsock".into(), format!("cid={}", plan.vsock_cid)]);
    let control = d.control_socket(&vm.name);
    g.push(vec!["-s".into(), control.clone()]);
    plan.paths.control_socket = Some(control);
    g.push(vec![
        "--serial".into(),
        format!(
            "type=unix-stream,path={},input-unix-stream,hardware=serial,num=1,console",
            plan.paths.console_socket
        ),
    ]);

    push_extra(
        &mut g,
        cfg.crosvm
            .extra_run_args
            .iter()
            .chain(&vm.crosvm.extra_run_args),
    );
    if let Some(kernel) = &vm.kernel {
        g.push(vec![kernel.clone()]);
    }
    plan.argv_groups = g;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, OptValue)]) -> Options {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    #[test]
    fn test_gpu_default_and_width_height_translation() {
        assert_eq!(gpu_value(None), "context-types=cross-domain:virgl2");
        let o = opts(&[
            ("context-types", OptValue::Str("cross-domain:virgl2".into())),
            ("width", OptValue::Int(1920)),
            ("height", OptValue::Int(1080)),
        ]);
        assert_eq!(
            gpu_value(Some(&o)),
            "context-types=cross-domain:virgl2,displays=[[mode=windowed[1920,1080]]]"
        );
    }

    #[test]
    fn test_vfio_maps_iommu_on_to_viommu() {
        let o = opts(&[("iommu", OptValue::Str("on".into()))]);
        assert_eq!(
            vfio_value("/sys/bus/pci/devices/0000:01:00.0", &o),
            "/sys/bus/pci/devices/0000:01:00.0,iommu=viommu"
        );
    }

    #[test]
    fn test_shared_dir_defaults_to_virtio_fs_and_keeps_p9() {
        let o = opts(&[("cache", OptValue::Str("auto".into()))]);
        assert_eq!(shared_dir_value("/d", "t", &o), "/d:t:type=fs:cache=auto");
        let p9 = opts(&[("type", OptValue::Str("p9".into()))]);
        assert_eq!(shared_dir_value("/d", "t", &p9), "/d:t:type=p9");
    }
}
