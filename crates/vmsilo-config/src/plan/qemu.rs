//! The QEMU command line (`vmm = "qemu"`), for machines without a usable KVM and for debugging.
//! Checked against QEMU 7.2 (Debian 12), vhost-device-vsock 0.3 and virtiofsd 1.14.
//!
//! QEMU provides what crosvm does in-process through vhost-user backends the runtime starts
//! first: vhost-device-vsock (host↔guest vsock as a hybrid-vsock unix socket) and one virtiofsd
//! per shared directory. Guest RAM is a shared memfd (`share=on`), which vhost-user needs.
//! Everything QEMU cannot do here (GPU/Wayland forwarding, sound, PCI passthrough, some disk and
//! shared-directory options) is rejected during validation (`qemu_caps::unsupported`),
//! never dropped.
//!
//! Windows (`gpu = true`) take waypipe instead of crosvm's cross-domain GPU: the guest agent
//! runs each command under `waypipe server`, whose stream reaches the host over vsock port
//! [`WAYPIPE_VSOCK_PORT`], and `waypipe client` on the host hands it to the VM's vmsilo-gate.

use std::collections::BTreeMap;

use crate::derive::{self, GUEST_USER_ID, HOME_TAG, WAYPIPE_VSOCK_PORT, kernel_cmdline};
use crate::model::{Accel, Disk, Options, OverlayType, SharedDir, Vm};
use crate::plan::{
    Backend, ConsoleListener, LaunchPlan, PlanOptions, RunAs, gate_backend, push_extra, sandbox,
};
use crate::qemu_caps::{IdRange, QEMU_VHOST_USER, opt_bool, parse_id_map};
use crate::validate::ValidConfig;

/// `argv[0]`.
pub const QEMU: &str = "qemu-system-x86_64";

/// Queue size of vhost-user-fs devices.
pub const FS_QUEUE_SIZE: u32 = 1024;

/// virtiofsd `--translate-uid`/`--translate-gid` values reproducing a crosvm-style map: each
/// range maps both ways, and every guest ID outside the ranges is forbidden (crosvm's user
/// namespace leaves them unmapped, so they cannot own files either).
pub(crate) fn translate_args(flag: &str, ranges: &[IdRange]) -> Vec<String> {
    let mut sorted = ranges.to_vec();
    sorted.sort_by_key(|r| r.guest);
    let mut out = Vec::new();
    for r in &sorted {
        out.push(format!("{flag}=map:{}:{}:{}", r.guest, r.host, r.count));
    }
    // Forbid the gaps in [0, u32::MAX) (u32::MAX means "unchanged" in chown).
    let mut next = 0u32;
    for r in &sorted {
        if r.guest > next {
            out.push(format!("{flag}=forbid-guest:{next}:{}", r.guest - next));
        }
        next = r.guest + r.count;
    }
    if next < u32::MAX {
        out.push(format!("{flag}=forbid-guest:{next}:{}", u32::MAX - next));
    }
    out
}

/// One directory a virtiofsd serves.
struct Share {
    dir: String,
    tag: String,
    options: Options,
    uids: Vec<IdRange>,
    gids: Vec<IdRange>,
}

fn virtiofsd_backend(vm: &Vm, opts: &PlanOptions, share: &Share) -> Backend {
    let Share {
        dir,
        tag,
        options,
        uids,
        gids,
    } = share;
    let socket = opts.dirs.fs_socket(&vm.name, tag);
    let mut argv = vec![
        "virtiofsd".to_owned(),
        format!("--socket-path={socket}"),
        format!("--shared-dir={dir}"),
        // Runs as root in its own mount namespace rooted at the shared directory.
        "--sandbox=namespace".to_owned(),
    ];
    if let Some(c) = options.get("cache").or_else(|| options.get("cache_policy")) {
        argv.push(format!("--cache={c}"));
    }
    if options.get("writeback").and_then(opt_bool) == Some(true) {
        argv.push("--writeback".to_owned());
    }
    argv.extend(translate_args("--translate-uid", uids));
    argv.extend(translate_args("--translate-gid", gids));
    // No --tag: the tag is set on QEMU's device (QEMU 7.1–8.0 crash on the CONFIG feature
    // virtiofsd announces with --tag).
    Backend {
        kind: "virtiofsd".into(),
        argv,
        socket,
        run_as: RunAs::Root,
        env: BTreeMap::new(),
        sandbox: None,
    }
}

/// The format of a disk image: the `format` option, else by extension.
fn disk_format(d: &Disk) -> String {
    match d.options.get("format") {
        Some(f) => f.to_string(),
        None if d.path.ends_with(".qcow2") => "qcow2".into(),
        None => "raw".into(),
    }
}

/// The `-drive` value of a virtio disk.
fn drive_value(d: &Disk, readonly: bool) -> String {
    let mut parts = vec![
        format!("file={}", d.path),
        "if=virtio".to_owned(),
        format!("format={}", disk_format(d)),
    ];
    let ro = readonly || d.options.get("ro").and_then(opt_bool) == Some(true);
    if ro {
        parts.push("readonly=on".into());
    }
    if let Some(s) = d.options.get("sparse").and_then(opt_bool) {
        parts.push(format!("discard={}", if s { "unmap" } else { "ignore" }));
    }
    let direct = d
        .options
        .get("direct")
        .or_else(|| d.options.get("o_direct"))
        .and_then(opt_bool);
    if direct == Some(true) {
        parts.push("cache.direct=on".into());
    }
    if let Some(l) = d.options.get("lock").and_then(opt_bool) {
        parts.push(format!("file.locking={}", if l { "on" } else { "off" }));
    }
    parts.join(",")
}

fn arg(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

pub(super) fn fill(cfg: &ValidConfig, vm: &Vm, opts: &PlanOptions, plan: &mut LaunchPlan) {
    let d = &opts.dirs;
    let name = &vm.name;
    let mut g: Vec<Vec<String>> = vec![vec![QEMU.into()]];
    g.push(vec!["-name".into(), name.clone()]);
    g.push(vec!["-accel".into(), cfg.qemu.accel.as_str().into()]);
    if cfg.qemu.accel == Accel::Kvm {
        g.push(arg(&["-cpu", "host"]));
    }
    let mem = format!("{}M", vm.memory);
    g.push(vec!["-m".into(), mem.clone()]);
    // vhost-user backends map guest RAM: it must be a shared memfd.
    g.push(vec![
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={mem},share=on"),
    ]);
    g.push(arg(&["-numa", "node,memdev=mem"]));
    g.push(vec!["-smp".into(), vm.cpus.to_string()]);
    g.push(arg(&["-nodefaults"]));
    g.push(arg(&["-display", "none"]));
    // A guest reboot or panic (panic=-1) ends QEMU, like crosvm; the runtime decides.
    g.push(arg(&["-no-reboot"]));

    if let Some(k) = &vm.kernel {
        g.push(vec!["-kernel".into(), k.clone()]);
    }
    if let Some(i) = &vm.initramfs {
        g.push(vec!["-initrd".into(), i.clone()]);
    }
    let cmdline = kernel_cmdline(vm);
    g.push(vec!["-append".into(), cmdline.join(" ")]);
    plan.kernel_params = cmdline;

    // Disks in crosvm's order: root (vda), overlay (vdb), additional disks.
    if let Some(root) = &vm.root_disk {
        g.push(vec![
            "-drive".into(),
            drive_value(root, vm.root_disk_readonly),
        ]);
    }
    if vm.root_overlay.kind == OverlayType::Qcow2 {
        g.push(vec![
            "-drive".into(),
            format!("file={},if=virtio,format=qcow2", d.overlay_image(name)),
        ]);
    }
    for disk in &vm.additional_disks {
        g.push(vec!["-drive".into(), drive_value(disk, false)]);
    }

    // Console and QMP: QEMU listens; the runtime connects after starting it.
    g.push(vec![
        "-serial".into(),
        format!("unix:{},server=on,wait=off", plan.paths.console_socket),
    ]);
    plan.paths.console_listener = ConsoleListener::Vmm;
    let qmp = d.qmp_socket(name);
    g.push(vec![
        "-qmp".into(),
        format!("unix:{qmp},server=on,wait=off"),
    ]);
    plan.paths.qmp_socket = Some(qmp);
    g.push(arg(&[
        "-device",
        "virtio-balloon-pci,id=balloon0,deflate-on-oom=on,free-page-reporting=on",
    ]));
    g.push(arg(&["-device", "virtio-rng-pci"]));

    // vsock through vhost-device-vsock (no /dev/vhost-vsock needed): hybrid vsock on the host.
    let vhost_vsock = d.vhost_vsock_socket(name);
    let vsock = d.vsock_socket(name);
    plan.backends.push(Backend {
        kind: "vhost-device-vsock".into(),
        argv: vec![
            "vhost-device-vsock".into(),
            "--vm".into(),
            format!(
                "guest-cid={},socket={vhost_vsock},uds-path={vsock}",
                plan.vsock_cid
            ),
        ],
        socket: vhost_vsock.clone(),
        run_as: RunAs::Root,
        env: BTreeMap::new(),
        sandbox: None,
    });
    g.push(vec![
        "-chardev".into(),
        format!("socket,id=vsock,path={vhost_vsock}"),
    ]);
    g.push(arg(&[
        "-device",
        "vhost-user-vsock-pci,chardev=vsock,vectors=0",
    ]));
    plan.paths.vhost_vsock_socket = Some(vhost_vsock);
    plan.paths.vsock_socket = Some(vsock);

    // Network, in interface order.
    for (n, i) in plan.interfaces.iter().enumerate() {
        let id = format!("net{n}");
        if let Some(tap) = &i.tap {
            g.push(vec![
                "-netdev".into(),
                format!("tap,id={id},ifname={},script=no,downscript=no", tap.name),
            ]);
            g.push(vec![
                "-device".into(),
                format!("virtio-net-pci,netdev={id},mac={}", i.mac),
            ]);
        } else if let Some(s) = &i.vm_switch {
            g.push(vec![
                "-chardev".into(),
                format!("socket,id={id}-chr,path={}", s.socket),
            ]);
            g.push(vec![
                "-netdev".into(),
                format!("vhost-user,id={id},chardev={id}-chr"),
            ]);
            g.push(vec![
                "-device".into(),
                format!("virtio-net-pci,netdev={id},mac={},vectors=0", i.mac),
            ]);
        }
    }

    // Shared directories through virtiofsd; the tag is set on the device.
    let mut shares: Vec<Share> = Vec::new();
    if let Some(home) = derive::shared_home_dir(vm) {
        let one = |host| {
            vec![IdRange {
                guest: GUEST_USER_ID,
                host,
                count: 1,
            }]
        };
        shares.push(Share {
            dir: home,
            tag: HOME_TAG.to_owned(),
            options: Options::new(),
            uids: one(opts.uid),
            gids: one(opts.gid),
        });
    }
    for SharedDir { path, tag, options } in &vm.shared_directories {
        // crosvm's default map is "0 <euid> 1" with crosvm running as root: guest root only.
        let map = |key: &str| {
            options
                .get(key)
                .and_then(|v| parse_id_map(&v.to_string()).ok())
                .unwrap_or_else(|| {
                    vec![IdRange {
                        guest: 0,
                        host: 0,
                        count: 1,
                    }]
                })
        };
        shares.push(Share {
            dir: path.clone(),
            tag: tag.clone(),
            options: options.clone(),
            uids: map("uidmap"),
            gids: map("gidmap"),
        });
    }
    for (n, share) in shares.iter().enumerate() {
        let tag = &share.tag;
        let b = virtiofsd_backend(vm, opts, share);
        g.push(vec![
            "-chardev".into(),
            format!("socket,id=fs{n},path={}", b.socket),
        ]);
        g.push(vec![
            "-device".into(),
            format!("vhost-user-fs-pci,chardev=fs{n},tag={tag},queue-size={FS_QUEUE_SIZE}"),
        ]);
        plan.paths.fs_sockets.insert(tag.clone(), b.socket.clone());
        plan.backends.push(b);
    }

    // Manual vhost-user devices.
    for (n, v) in vm.vhost_user.iter().enumerate() {
        let Some((_, device)) = QEMU_VHOST_USER.iter().find(|(t, _)| *t == v.kind) else {
            continue; // rejected by validation
        };
        let chr = format!("vhu{n}");
        g.push(vec![
            "-chardev".into(),
            format!("socket,id={chr},path={}", v.socket),
        ]);
        if v.kind == "net" {
            g.push(vec![
                "-netdev".into(),
                format!("vhost-user,id={chr}-net,chardev={chr}"),
            ]);
            g.push(vec![
                "-device".into(),
                format!("{device},netdev={chr}-net,vectors=0"),
            ]);
        } else {
            g.push(vec![
                "-device".into(),
                format!("{device},chardev={chr},vectors=0"),
            ]);
        }
    }

    // Windows: the gate, then waypipe client in front of it (both before QEMU).
    if let Some(gate) = gate_backend(cfg, vm, opts) {
        let waypipe = waypipe_backend(vm, opts, &gate.socket);
        plan.paths.waypipe_socket = Some(waypipe.socket.clone());
        plan.paths.waypipe_vsock_link = Some(d.vsock_port_socket(name, WAYPIPE_VSOCK_PORT));
        plan.backends.push(gate);
        plan.backends.push(waypipe);
    }

    push_extra(
        &mut g,
        cfg.qemu.extra_args.iter().chain(&vm.qemu.extra_args),
    );
    plan.argv_groups = g;
}

/// `waypipe client` for a QEMU VM with `gpu`: listens on the waypipe socket (which the runtime
/// links at `<vsock socket>_6000`) and connects to the VM's gate, never to the compositor.
/// `--no-gpu` keeps guest-supplied DMABUF and video streams away from the host's GPU and
/// codecs (a QEMU guest has no GPU to make them anyway).
fn waypipe_backend(vm: &Vm, opts: &PlanOptions, gate_socket: &str) -> Backend {
    let socket = opts.dirs.waypipe_socket(&vm.name);
    let mut env = BTreeMap::new();
    // libwayland (and waypipe) take an absolute WAYLAND_DISPLAY as the socket path.
    env.insert("WAYLAND_DISPLAY".to_owned(), gate_socket.to_owned());
    env.insert("XDG_RUNTIME_DIR".to_owned(), opts.user_runtime_dir());
    Backend {
        kind: "waypipe".into(),
        argv: vec![
            "waypipe".into(),
            "--no-gpu".into(),
            "--socket".into(),
            socket.clone(),
            "client".into(),
        ],
        socket,
        run_as: RunAs::User,
        env,
        // It needs nothing of the user's session: its runtime directory is hidden too.
        sandbox: Some(sandbox(
            opts.dirs.gate_dir(&vm.name),
            &[opts.user_runtime_dir()],
            &[gate_socket],
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::OptValue;

    #[test]
    fn test_parse_id_map() {
        assert_eq!(
            parse_id_map("0 0 65535").expect("valid"),
            [IdRange {
                guest: 0,
                host: 0,
                count: 65535
            }]
        );
        assert_eq!(parse_id_map("1000 1000 1,0 0 1").expect("valid").len(), 2);
        for bad in [
            "",
            "1 2",
            "1 2 3 4",
            "a b c",
            "0 0 0",
            "0 0 10,5 100 1",
            "4294967295 0 2",
        ] {
            assert!(parse_id_map(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn test_translate_args_map_ranges_and_forbid_the_rest() {
        let r = [IdRange {
            guest: 1000,
            host: 4242,
            count: 1,
        }];
        assert_eq!(
            translate_args("--translate-uid", &r),
            [
                "--translate-uid=map:1000:4242:1",
                "--translate-uid=forbid-guest:0:1000",
                "--translate-uid=forbid-guest:1001:4294966294",
            ]
        );
        let all = [IdRange {
            guest: 0,
            host: 0,
            count: u32::MAX,
        }];
        assert_eq!(
            translate_args("--translate-gid", &all),
            ["--translate-gid=map:0:0:4294967295"]
        );
    }

    #[test]
    fn test_disk_format_and_drive_options() {
        let mut d = Disk {
            path: "/img/root.qcow2".into(),
            options: Options::new(),
        };
        assert_eq!(
            drive_value(&d, true),
            "file=/img/root.qcow2,if=virtio,format=qcow2,readonly=on"
        );
        d.path = "/img/data.img".into();
        d.options.insert("sparse".into(), OptValue::Bool(true));
        d.options.insert("direct".into(), OptValue::Bool(true));
        d.options.insert("lock".into(), OptValue::Bool(false));
        assert_eq!(
            drive_value(&d, false),
            "file=/img/data.img,if=virtio,format=raw,discard=unmap,cache.direct=on,file.locking=off"
        );
    }
}
