# programs.vmsilo: the NixOS module.
#
# The logic lives in Rust. This module declares the options (those of the original vmsilo
# README, same names, types and defaults), checks early what Nix can check, builds each VM's
# guest, writes the whole configuration as JSON to /etc/vmsilo/vmsilo.json for the Rust tools,
# installs the Rust generator that turns it into systemd units, and wires the parts of the host
# a generator cannot: TAP interfaces, bridges, NAT, vfio-pci, directories, polkit, completion,
# desktop entries, KSM.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption mkEnableOption mkIf types literalExpression;

  cfg = config.programs.vmsilo;
  vmsilo = cfg.package;
  # The vhost-user backends: nixpkgs' where it has them, else built from crates.io
  # (nix/vhost-device.nix; nixpkgs 24.05 has neither).
  vhostDevice = pkgs.callPackage ./vhost-device.nix { };
  vhostDeviceSound = pkgs.vhost-device-sound or vhostDevice.vhost-device-sound;
  vhostDeviceVsock = pkgs.vhost-device-vsock or vhostDevice.vhost-device-vsock;

  # ---------------------------------------------------------------------------------------
  # Option types
  # ---------------------------------------------------------------------------------------

  # Free-form key=value tables passed on to the VMM (`additionalDisks`, `gpu`, ...).
  kvValue = types.oneOf [ types.bool types.int types.str ];
  kvTable = types.attrsOf kvValue;
  diskType = types.submodule {
    freeformType = kvTable;
    options.path = mkOption {
      type = types.str;
      description = "Disk image path (positional argument of crosvm `--block`).";
    };
  };

  routeTable = types.attrsOf (types.submodule {
    options.via = mkOption {
      type = types.str;
      description = "Gateway address.";
    };
  });

  interfaceModule = { name, ... }: {
    options = {
      type = mkOption {
        type = types.enum [ "tap" "vm-switch" ];
        default = "vm-switch";
        description = ''Interface type: a host TAP device, or a port on a vm-switch network.'';
      };
      macAddress = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "MAC address (auto-generated from SHA1(\"<vmName>-<ifName>\") if null).";
      };
      tap = {
        name = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "TAP interface name on the host (default: `<vmname>-<ifIndex>`).";
        };
        hostAddress = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "10.0.0.254/24";
          description = "Host-side IP with prefix. Mutually exclusive with `tap.bridge`.";
        };
        bridge = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "Bridge to add the TAP to (via `networking.bridges`). Mutually exclusive with `tap.hostAddress`.";
        };
      };
      vmNetwork = {
        name = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "vm-switch network name (required for `type = \"vm-switch\"`).";
        };
        receiveBroadcast = mkOption {
          type = types.bool;
          default = false;
          description = "Whether this VM receives broadcast traffic.";
        };
        routes = mkOption {
          type = types.listOf types.str;
          default = [ ];
          example = [ "192.168.1.0/24" ];
          description = "CIDR prefixes this VM routes for its peers (subnet routing).";
        };
      };
      dhcp = mkOption {
        type = types.bool;
        default = false;
        description = "Enable DHCP for this interface.";
      };
      addresses = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "10.0.0.1/24" ];
        description = "Static IPv4 addresses with prefix.";
      };
      routes = mkOption {
        type = routeTable;
        default = { };
        example = literalExpression ''{ "0.0.0.0/0" = { via = "10.0.0.254"; }; }'';
        description = "IPv4 routes (destination -> { via = gateway; }).";
      };
      v6Addresses = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Static IPv6 addresses with prefix.";
      };
      v6Routes = mkOption {
        type = routeTable;
        default = { };
        description = "IPv6 routes.";
      };
    };
  };

  desktopEntryType = types.submodule {
    options = {
      name = mkOption { type = types.str; description = "Entry name."; };
      exec = mkOption { type = types.str; description = "Command run in the guest."; };
      icon = mkOption { type = types.nullOr types.str; default = null; description = "Icon name or path."; };
      categories = mkOption { type = types.listOf types.str; default = [ ]; description = "Desktop categories."; };
    };
  };

  vmModule = { config, ... }: {
    options = {
      name = mkOption {
        type = types.str;
        description = "VM name for scripts, units and sockets.";
      };
      memory = mkOption {
        type = types.ints.positive;
        default = 1024;
        description = "Memory allocation in MiB.";
      };
      cpus = mkOption {
        type = types.ints.positive;
        default = 2;
        description = "Number of virtual CPUs.";
      };
      color = mkOption {
        type = types.str;
        default = "red";
        example = "#2ecc71";
        description = "Window decoration color (named color, `#rrggbb` or `rgb(r,g,b)`).";
      };
      network = {
        nameservers = mkOption {
          type = types.listOf types.str;
          default = [ ];
          description = "DNS nameservers for this VM.";
        };
        interfaces = mkOption {
          type = types.attrsOf (types.submodule interfaceModule);
          default = { };
          description = "Network interfaces; the keys are the guest-visible names.";
        };
      };
      autoShutdown = {
        enable = mkOption {
          type = types.bool;
          default = false;
          description = "Shut the VM down when idle (after `autoShutdown.after` seconds).";
        };
        after = mkOption {
          type = types.ints.positive;
          default = 60;
          description = "Seconds of idleness before shutdown.";
        };
      };
      autoStart = mkOption {
        type = types.bool;
        default = false;
        description = "Start the VM at boot instead of on demand.";
      };
      dependsOn = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "VM names to also start when this VM starts.";
      };
      additionalDisks = mkOption {
        type = types.listOf diskType;
        default = [ ];
        example = literalExpression ''[ { path = "/tmp/data.qcow2"; ro = false; sparse = true; id = "data"; } ]'';
        description = "Additional disks: free-form crosvm `--block` options, `path` required.";
      };
      rootDisk = mkOption {
        type = types.nullOr (types.either types.str diskType);
        default = null;
        description = "Custom root disk (defaults to the VM's built read-only root image).";
      };
      kernel = mkOption {
        type = types.nullOr (types.either types.path types.str);
        default = null;
        description = "Custom kernel image (defaults to the guest build's kernel).";
      };
      initramfs = mkOption {
        type = types.nullOr (types.either types.path types.str);
        default = null;
        description = "Custom initramfs (defaults to the guest build's initrd).";
      };
      rootDiskReadonly = mkOption {
        type = types.bool;
        default = true;
        description = "Whether the root disk is read-only.";
      };
      sharedHome = mkOption {
        type = types.either types.bool types.str;
        default = true;
        description = ''
          Share a host directory as /home/user over virtiofs: `true` = /shared/<vmname>,
          a string = that path, `false` = disabled.
        '';
      };
      kernelParams = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Extra kernel command line parameters.";
      };
      gpu = mkOption {
        type = types.either types.bool kvTable;
        default = true;
        description = ''
          GPU and windows: false = disabled, true = `context-types=cross-domain:virgl2`, attrset =
          custom crosvm `--gpu` options. Either way the VM's windows reach the desktop through its
          own vmsilo-gate, never straight to the compositor. QEMU VMs (`vmm = "qemu"`) take only
          true: their windows travel through waypipe over vsock (waypipe is installed in the
          guest).
        '';
      };
      gate = {
        frame = mkOption {
          type = types.bool;
          default = true;
          description = "Whether vmsilo-gate draws a frame in the VM's `color`, with a label naming the VM, around each of its windows.";
        };
        allowGlobals = mkOption {
          type = types.listOf (types.strMatching "[a-z0-9_]+");
          default = [ ];
          example = [ "wp_fractional_scale_manager_v1" ];
          description = ''
            Wayland globals (interface names) vmsilo-gate offers this VM on top of its allowlist
            (`vmsilo-gate --print-policy` shows it). Only off-default globals can be allowed:
            high-risk ones (screen capture, virtual input, layer shell, session lock, foreign
            toplevel, data control, security context) are refused by the configuration check.
          '';
        };
        denyGlobals = mkOption {
          type = types.listOf (types.strMatching "[a-z0-9_]+");
          default = [ ];
          example = [ "wp_presentation" ];
          description = "Wayland globals of the gate's allowlist hidden from this VM.";
        };
      };
      sound = mkOption {
        type = types.either types.bool kvTable;
        default = true;
        description = "Sound: false = disabled, true = default (vhost-device-sound, PipeWire, playback only), attrset = custom: { backend = \"pulse\" | \"pipewire\" | \"alsa\" | \"null\"; capture = bool (default false: the guest cannot record); }.";
      };
      sharedDirectories = mkOption {
        type = types.listOf (types.submodule {
          freeformType = kvTable;
          options = {
            path = mkOption { type = types.str; description = "Host directory."; };
            tag = mkOption {
              type = types.nullOr types.str;
              default = null;
              description = "Mount tag in the guest (`tag` or its alias `id` is required).";
            };
            id = mkOption {
              type = types.nullOr types.str;
              default = null;
              description = "Alias of `tag`, as the seed's README spells it (`id = \"home\"`).";
            };
          };
        });
        default = [ ];
        description = "Shared directories: `path`, `tag` (or its alias `id`) and crosvm `--shared-dir` key/value options.";
      };
      pciDevices = mkOption {
        type = types.listOf (types.submodule {
          freeformType = kvTable;
          options.path = mkOption {
            type = types.str;
            description = "PCI address in BDF form (`01:00.0`), must be in `isolatedPciDevices`.";
          };
        });
        default = [ ];
        description = "PCI devices to pass through (path + optional crosvm `--vfio` options).";
      };
      guestPrograms = mkOption {
        type = types.listOf types.package;
        default = [ ];
        description = "Packages installed in the VM.";
      };
      guestConfig = mkOption {
        type = types.either (types.listOf types.deferredModule) types.deferredModule;
        default = [ ];
        description = "VM-specific NixOS configuration (a module, a list of modules, or a path).";
      };
      guestDesktopEntries = mkOption {
        type = types.listOf desktopEntryType;
        default = [ ];
        description = "Extra host desktop entries for guest programs (the programs' own .desktop files are found automatically).";
      };
      vhostUser = mkOption {
        type = types.listOf (types.submodule {
          freeformType = kvTable;
          options = {
            type = mkOption { type = types.str; description = "vhost-user device type (net, fs, sound, ...)."; };
            socket = mkOption { type = types.str; description = "Backend socket path."; };
          };
        });
        default = [ ];
        description = "Manual vhost-user devices (vm-switch interfaces are added automatically).";
      };
      crosvm = {
        logLevel = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "Per-VM crosvm log level (the global one when null).";
        };
        extraArgs = mkOption {
          type = types.listOf types.str;
          default = [ ];
          description = "Per-VM extra crosvm args (appended to the global `crosvm.extraArgs`).";
        };
        extraRunArgs = mkOption {
          type = types.listOf types.str;
          default = [ ];
          description = "Per-VM extra crosvm run args (appended to the global `crosvm.extraRunArgs`).";
        };
      };
      qemu.extraArgs = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Per-VM extra QEMU args (QEMU VMs only).";
      };
      rootOverlay = {
        type = mkOption {
          type = types.enum [ "qcow2" "tmpfs" ];
          default = "qcow2";
          description = "Overlay upper layer: disk-backed (qcow2) or RAM-backed (tmpfs).";
        };
        size = mkOption {
          type = types.str;
          default = "10G";
          description = "Maximum ephemeral disk size (qcow2 only).";
        };
      };
      waylandProxy = mkOption {
        type = types.enum [ "wayland-proxy-virtwl" "sommelier" ];
        default = "wayland-proxy-virtwl";
        description = "The guest's Wayland proxy.";
      };
      vmm = mkOption {
        type = types.enum [ "crosvm" "qemu" ];
        default = "crosvm";
        description = "The VMM: crosvm, or QEMU for machines without a usable KVM.";
      };
    };
  };

  # ---------------------------------------------------------------------------------------
  # Guests
  # ---------------------------------------------------------------------------------------

  guestFor = vm: import ./guest-system.nix {
    inherit pkgs lib vm;
    inherit (cfg) user;
    agent = cfg.guestAgentPackage;
  };
  guests = lib.listToAttrs (map (vm: lib.nameValuePair vm.name (guestFor vm)) cfg.nixosVms);

  sharedDirTag = d: if d.tag != null then d.tag else d.id;

  # One VM as JSON: its options unchanged, with the guest build filled in where the user left
  # kernel, initramfs and root disk null, and the guest's boot parameters added.
  vmJson = vm:
    let
      g = guests.${vm.name};
      built = vm.kernel == null || vm.initramfs == null || vm.rootDisk == null;
    in
    (builtins.removeAttrs vm [ "guestConfig" "_module" ]) // {
      guestPrograms = map toString vm.guestPrograms;
      # Modules are functions and cannot be written as JSON; the guest build has used them.
      guestConfig = null;
      kernel = if vm.kernel != null then toString vm.kernel else g.kernel;
      initramfs = if vm.initramfs != null then toString vm.initramfs else g.initramfs;
      rootDisk = if vm.rootDisk != null then vm.rootDisk else g.rootDisk;
      kernelParams = (lib.optionals built g.kernelParams) ++ vm.kernelParams;
      # `id` is the seed's spelling of `tag`: the JSON carries one `tag` when they agree, both
      # when they differ, and neither when neither is set, so that `vmsilo check` reports the
      # last two with its own messages.
      sharedDirectories = map
        (d: (builtins.removeAttrs d [ "id" "tag" ]) // (
          if d.tag != null && d.id != null && d.tag != d.id then { inherit (d) tag id; }
          else lib.optionalAttrs (sharedDirTag d != null) { tag = sharedDirTag d; }))
        vm.sharedDirectories;
    };

  jsonConfig = {
    inherit (cfg) enable user hostNetworking enableBashIntegration isolatedPciDevices qemu;
    crosvm = cfg.crosvm;
    "vm-switch" = cfg."vm-switch";
    "vmsilo-balloond" = cfg."vmsilo-balloond";
    clipboard = cfg.clipboard;
    nixosVms = map vmJson cfg.nixosVms;
  };

  # ---------------------------------------------------------------------------------------
  # Host networking derived from the interfaces
  # ---------------------------------------------------------------------------------------

  # Interfaces in name order with their index (the default TAP name uses it, as in Rust).
  indexed = vm: lib.imap0 (i: n: { inherit i n; iface = vm.network.interfaces.${n}; })
    (lib.attrNames vm.network.interfaces);
  taps = lib.concatMap
    (vm: map
      (x: {
        vm = vm.name;
        tapName = if x.iface.tap.name != null then x.iface.tap.name else "${vm.name}-${toString x.i}";
        inherit (x) iface;
      })
      (lib.filter (x: x.iface.type == "tap") (indexed vm)))
    cfg.nixosVms;
  splitCidr = s:
    let parts = lib.splitString "/" s; in
    { address = lib.head parts; prefixLength = lib.toInt (lib.last parts); };
  # The network of an IPv4 CIDR, for NAT's internalIPs (e.g. 10.0.0.254/24 -> 10.0.0.0/24).
  ipv4Network = cidr:
    let
      c = splitCidr cidr;
      octets = map lib.toInt (lib.splitString "." c.address);
      pow2 = n: if n == 0 then 1 else 2 * pow2 (n - 1);
      keep = i: let bits = lib.min 8 (lib.max 0 (c.prefixLength - 8 * i)); in
        builtins.bitAnd (builtins.elemAt octets i) (256 - (pow2 (8 - bits)));
    in
    "${lib.concatMapStringsSep "." toString (map keep [ 0 1 2 3 ])}/${toString c.prefixLength}";
  hostAddressed = lib.filter (t: t.iface.tap.hostAddress != null) taps;
  bridged = lib.filter (t: t.iface.tap.bridge != null) taps;

  # A PCI address in its full, lowercase form: `01:00.0` and `0000:01:00.0` (and `0000:01:00.0`
  # in capitals) are the same device, as the Rust side reads them.
  normPci = bdf:
    lib.toLower (if lib.length (lib.splitString ":" bdf) == 2 then "0000:${bdf}" else bdf);
  isolatedPci = map normPci cfg.isolatedPciDevices;
  pciSysfs = bdf: "/sys/bus/pci/devices/${normPci bdf}";
  vfioBind = pkgs.writeShellScript "vmsilo-vfio-bind" ''
    # Claim the isolated PCI devices for vfio-pci (idempotent).
    for dev in ${lib.concatMapStringsSep " " pciSysfs cfg.isolatedPciDevices}; do
      [ -e "$dev" ] || { echo "vmsilo: PCI device $dev not present" >&2; continue; }
      echo vfio-pci > "$dev/driver_override"
      if [ -e "$dev/driver" ] && [ "$(basename "$(readlink -f "$dev/driver")")" != vfio-pci ]; then
        echo "$(basename "$dev")" > "$dev/driver/unbind"
      fi
      [ -e "$dev/driver" ] || echo "$(basename "$dev")" > /sys/bus/pci/drivers_probe
    done
  '';

  # The package on the host's PATH. With `enableBashIntegration = false` it is a copy without
  # its bash completion (share/bash-completion), so none is installed: NixOS links every system
  # package's completion whenever programs.bash.enableCompletion is on, its default.
  hostPackage =
    if cfg.enableBashIntegration then vmsilo
    else pkgs.symlinkJoin {
      name = "${vmsilo.name or "vmsilo"}-no-bash-completion";
      paths = [ vmsilo ];
      postBuild = "rm -rf $out/share/bash-completion";
    };

  # Host .desktop files for each VM's guest programs, launching them through vm-run.
  desktopEntries = vm: pkgs.runCommand "vmsilo-desktop-${vm.name}" {
    entries = builtins.toJSON vm.guestDesktopEntries;
    passAsFile = [ "entries" ];
  } ''
    mkdir -p $out/share/applications
    ${vmsilo}/bin/vmsilo desktop-entries --vm ${lib.escapeShellArg vm.name} \
      --color ${lib.escapeShellArg vm.color} \
      ${lib.concatMapStringsSep " " (p: "--from ${p}/share/applications") vm.guestPrograms} \
      --entries "$entriesPath" \
      --out $out/share/applications
  '';

  # `vmsilo check` on the JSON, as a build step of the system (system.checks): an invalid
  # configuration fails nixos-rebuild with vmsilo's own messages. The JSON's store paths (the
  # guest builds) are not read by the check, so their context is dropped: the check does not
  # wait for the guest images, and leaves no trace in the system.
  configCheck = pkgs.runCommand "vmsilo-config-check"
    {
      nativeBuildInputs = [ vmsilo ];
      json = builtins.unsafeDiscardStringContext cfg.configJson;
      passAsFile = [ "json" ];
    } ''
    cp "$jsonPath" vmsilo.json
    # The build sandbox is not the host: the module sets up TAPs, NAT and vfio itself.
    if ! vmsilo --config vmsilo.json check --host-setup nixos; then
      echo "programs.vmsilo is invalid: vmsilo check found the problems above" \
        "(nixosVms[N] counts programs.vmsilo.nixosVms from 0)" >&2
      exit 1
    fi
    touch "$out"
  '';
  vmNames = map (vm: vm.name) cfg.nixosVms;
  allInterfaces = lib.concatMap
    (vm: map (n: { vm = vm.name; name = n; iface = vm.network.interfaces.${n}; })
      (lib.attrNames vm.network.interfaces))
    cfg.nixosVms;

  # The units the generator writes (crates/vmsilo/src/systemd_units.rs `managed_units`, the same
  # list `vmsilo units` puts into its polkit rule): the configured user may start, stop and
  # restart exactly these, not every unit whose name starts with "vmsilo-".
  vmSwitchNetworks = lib.unique (map (x: x.iface.vmNetwork.name)
    (lib.filter (x: x.iface.type == "vm-switch" && x.iface.vmNetwork.name != null)
      allInterfaces));
  managedUnits = lib.sort (a: b: a < b) (
    lib.concatMap
      (n: [ "vmsilo-${n}.socket" "vmsilo-${n}-command.service" "vmsilo-${n}-vm.service" ])
      vmNames
    ++ map (n: "vm-switch-${n}.service") vmSwitchNetworks
    ++ [ "vmsilo-balloond.service" ]
  );
in
{
  options.programs.vmsilo = {
    enable = mkEnableOption "vmsilo VM management";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = literalExpression "the flake's packages.default (built with its nixpkgs-rust input); without the flake, pkgs.callPackage ./nix/package.nix { }";
      description = ''
        The vmsilo package (host tools, guest agent, vm-switch, vmsilo-balloond). It needs a
        nixpkgs whose Rust is at least Cargo.toml's rust-version: nixpkgs 24.05's is too old, so
        the flake sets this from its `nixpkgs-rust` input (docs/nixos.md).
      '';
    };

    guestAgentPackage = mkOption {
      type = types.package;
      default = pkgs.pkgsStatic.callPackage ./package.nix { guestOnly = true; };
      defaultText = literalExpression "the flake's packages.vmsilo-guest (static, built with its nixpkgs-rust input); without the flake, pkgs.pkgsStatic.callPackage ./nix/package.nix { guestOnly = true; }";
      description = ''
        The package providing the guest agent `vmsilo-guest` in every NixOS guest. Statically
        linked by default (less resident memory per VM); like `package`, it needs a nixpkgs with
        a new enough Rust.
      '';
    };

    user = mkOption {
      type = types.str;
      description = "User who owns TAP interfaces and runs VMs (must have an explicit UID).";
    };

    hostNetworking.nat = {
      enable = mkOption {
        type = types.bool;
        default = false;
        description = "Enable NAT for VM internet access.";
      };
      interface = mkOption {
        type = types.str;
        default = "";
        description = "External interface for NAT (required if `nat.enable`).";
      };
    };

    nixosVms = mkOption {
      type = types.listOf (types.submodule vmModule);
      default = [ ];
      description = "List of NixOS-based VMs to create.";
    };

    enableBashIntegration = mkOption {
      type = types.bool;
      default = true;
      description = "Enable bash completion for the vm-* commands.";
    };

    crosvm = {
      logLevel = mkOption {
        type = types.str;
        default = "info";
        description = "Log level for crosvm (error, warn, info, debug, trace).";
      };
      extraArgs = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Extra args passed to crosvm before the `run` subcommand.";
      };
      extraRunArgs = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Extra args passed to crosvm after the `run` subcommand.";
      };
    };

    qemu = {
      accel = mkOption {
        type = types.enum [ "kvm" "tcg" ];
        default = "kvm";
        description = "QEMU accelerator for `vmm = \"qemu\"` VMs; `tcg` for machines without a usable KVM.";
      };
      extraArgs = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Extra args appended to every QEMU command line.";
      };
    };

    "vm-switch" = {
      logLevel = mkOption {
        type = types.enum [ "error" "warn" "info" "debug" "trace" ];
        default = "info";
        description = "Log level for the vm-switch daemon.";
      };
      extraArgs = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Extra command line arguments for the vm-switch daemon.";
      };
    };

    "vmsilo-balloond" = {
      logLevel = mkOption {
        type = types.enum [ "error" "warn" "info" "debug" "trace" ];
        default = "info";
        description = "Log level for the vmsilo-balloond daemon.";
      };
      pollInterval = mkOption {
        type = types.str;
        default = "2s";
        description = "Policy evaluation interval (e.g. \"2s\", \"1s\", \"500ms\").";
      };
      criticalHostPercent = mkOption {
        type = types.ints.between 0 100;
        default = 5;
        description = "Host critical threshold as a percentage of total RAM.";
      };
      guestAvailableBias = mkOption {
        type = types.str;
        default = "300m";
        description = "Guest bias term (e.g. \"300m\", \"500m\").";
      };
      extraArgs = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Extra command line arguments for the vmsilo-balloond daemon.";
      };
    };

    clipboard = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = ''
          The two-level clipboard (docs/clipboard.md): a per-user vmsilo-clipd holds one global
          clipboard; the copy chord in a VM window copies that VM's clipboard into it, the
          paste chord in another VM's window makes it that VM's clipboard and empties it.
        '';
      };
      policy = mkOption {
        type = types.listOf (types.submodule {
          options = {
            from = mkOption { type = types.str; description = "A VM name, \"*\" (any VM, never the host) or \"host\"."; };
            to = mkOption { type = types.str; description = "A VM name, \"*\" (any VM, never the host) or \"host\"."; };
            action = mkOption { type = types.enum [ "allow" "ask" "deny" ]; description = "allow, ask (paste again within 10 s to confirm) or deny."; };
          };
        });
        default = [
          { from = "*"; to = "host"; action = "ask"; }
          { from = "*"; to = "*"; action = "allow"; }
          { from = "host"; to = "*"; action = "allow"; }
        ];
        description = "Paste policy per source → destination; the first matching rule wins, no match denies.";
      };
      maxSize = mkOption {
        type = types.ints.between 1 16777216;
        default = 64000;
        description = "The size cap of one transfer: characters for text, bytes otherwise.";
      };
      mimeTypes = mkOption {
        type = types.listOf (types.enum [ "text/plain;charset=utf-8" "text/plain" "text/html" "image/png" ]);
        default = [ "text/plain;charset=utf-8" "text/plain" ];
        description = "MIME types that may cross, preferred first (text/html and image/png are opt-in).";
      };
      wipeAfter = mkOption {
        type = types.str;
        default = "60s";
        description = "An unpasted global clipboard is wiped after this (1s to 24h).";
      };
      chords = {
        copy = mkOption { type = types.str; default = "ctrl+shift+c"; description = "Copy the focused VM's clipboard into the global clipboard."; };
        paste = mkOption { type = types.str; default = "ctrl+shift+v"; description = "Paste the global clipboard into the focused VM's clipboard."; };
      };
    };

    isolatedPciDevices = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "01:00.0" ];
      description = "PCI devices to isolate with vfio-pci.";
    };

    runtimePackages = mkOption {
      type = types.listOf types.package;
      default = [ pkgs.crosvm pkgs.qemu_kvm pkgs.qemu-utils pkgs.virtiofsd pkgs.waypipe
        vhostDeviceVsock vhostDeviceSound ];
      defaultText = literalExpression "[ crosvm qemu_kvm qemu-utils virtiofsd waypipe vhost-device-vsock vhost-device-sound ] (the last two from nixpkgs, else built from crates.io by nix/vhost-device.nix)";
      description = ''
        Programs on the PATH of the VM services: the VMMs, qemu-img, and the backends the launch
        plans start (virtiofsd, vhost-device-vsock and waypipe for QEMU VMs, vhost-device-sound
        for crosvm VMs with sound). vmsilo-gate comes from `package` and is always on that PATH.
        Where nixpkgs lacks vhost-device-sound or vhost-device-vsock (24.05), the default builds
        them from crates.io (nix/vhost-device.nix).
      '';
    };

    ksm.enable = mkOption {
      type = types.bool;
      default = false;
      description = "Enable kernel same-page merging (memory deduplication between VMs; a known side channel).";
    };

    # Read-only results, for other modules and for tests.
    configJson = mkOption {
      type = types.str;
      readOnly = true;
      description = "The configuration as JSON, as written to /etc/vmsilo/vmsilo.json.";
    };
    guests = mkOption {
      type = types.attrsOf types.raw;
      readOnly = true;
      description = "Each VM's guest build (NixOS system, kernel, initramfs, root image).";
    };
  };

  config = mkIf cfg.enable {
    programs.vmsilo.configJson = builtins.toJSON jsonConfig;
    programs.vmsilo.guests = guests;

    assertions = [
      {
        assertion = cfg.user != "" && config.users.users ? ${cfg.user};
        message = "programs.vmsilo.user: \"${cfg.user}\" is not a user of this system (users.users.<name>)";
      }
      {
        assertion = !(config.users.users ? ${cfg.user}) || config.users.users.${cfg.user}.uid != null;
        message = "programs.vmsilo.user: users.users.${cfg.user}.uid must be set explicitly (vmsilo maps it into the VMs)";
      }
    ];
    # Every other rule is vmsilo's own: `vmsilo check` runs on the JSON while the system is
    # built (system.checks), so nixos-rebuild fails with vmsilo's messages, and the Nix side
    # repeats none of them. The two assertions above are what only Nix can know.
    system.checks = [ configCheck ];

    # The configuration for the Rust tools, and the generator that turns it into units
    # (vmsilo-<vm>.socket, vmsilo-<vm>-vm.service, vm-switch-<net>.service,
    # vmsilo-balloond.service) at every boot and daemon-reload.
    environment.etc."vmsilo/vmsilo.json".text = cfg.configJson;
    systemd.generators.vmsilo = "${vmsilo}/bin/vmsilo-generator";

    environment.systemPackages = [ hostPackage ] ++ map desktopEntries cfg.nixosVms;
    programs.bash.enableCompletion = mkIf cfg.enableBashIntegration true;

    # The configured user starts and stops vmsilo's units (exactly those) without sudo.
    security.polkit.enable = true;
    security.polkit.extraConfig = ''
      // vmsilo: let ${cfg.user} start, stop and restart vmsilo's units.
      polkit.addRule(function(action, subject) {
        var units = ${builtins.toJSON managedUnits};
        if (action.id == "org.freedesktop.systemd1.manage-units" &&
            subject.user == ${builtins.toJSON cfg.user}) {
          var unit = action.lookup("unit");
          if (unit && units.indexOf(unit) >= 0) {
            var verb = action.lookup("verb");
            if (verb == "start" || verb == "stop" || verb == "restart") {
              return polkit.Result.YES;
            }
          }
        }
      });
    '';

    systemd.tmpfiles.rules = [
      "d /run/vmsilo 0755 root root -"
      "d /run/vm-switch 0755 root root -"
      "d /var/lib/vmsilo 0755 root root -"
      "d /var/lib/vmsilo/overlays 0700 root root -"
      "d /shared 0755 ${cfg.user} users -"
      "d /var/lib/vmsilo/home-template 0755 ${cfg.user} users -"
    ];

    # Persistent TAP interfaces owned by the user.
    networking.interfaces = lib.listToAttrs (map
      (t: lib.nameValuePair t.tapName {
        virtual = true;
        virtualType = "tap";
        virtualOwner = cfg.user;
        ipv4.addresses = lib.optional (t.iface.tap.hostAddress != null) (splitCidr t.iface.tap.hostAddress);
      })
      taps);
    networking.bridges = lib.foldl'
      (acc: t: acc // {
        ${t.iface.tap.bridge}.interfaces = (acc.${t.iface.tap.bridge}.interfaces or [ ]) ++ [ t.tapName ];
      })
      { }
      bridged;

    networking.nat = mkIf cfg.hostNetworking.nat.enable {
      enable = true;
      externalInterface = cfg.hostNetworking.nat.interface;
      internalIPs = lib.unique (map (t: ipv4Network t.iface.tap.hostAddress) hostAddressed);
    };
    boot.kernel.sysctl = mkIf cfg.hostNetworking.nat.enable { "net.ipv4.ip_forward" = 1; };

    # PCI passthrough: vfio-pci claims the devices in early boot, before their drivers load,
    # and activation rebinds any that a driver took anyway.
    boot.initrd.kernelModules = mkIf (cfg.isolatedPciDevices != [ ]) [ "vfio_pci" "vfio" "vfio_iommu_type1" ];
    boot.initrd.preDeviceCommands = mkIf (cfg.isolatedPciDevices != [ ]) ''
      for dev in ${lib.concatMapStringsSep " " pciSysfs cfg.isolatedPciDevices}; do
        [ -e "$dev/driver_override" ] && echo vfio-pci > "$dev/driver_override"
      done
    '';
    system.activationScripts.vmsilo-vfio = mkIf (cfg.isolatedPciDevices != [ ]) {
      text = "${vfioBind}";
      deps = [ ];
    };

    hardware.ksm.enable = cfg.ksm.enable;

    # vmsilo-clipd: a user service in the configured user's graphical session (it needs the
    # session's runtime directory and D-Bus for notifications); the gates, system units that
    # run as the user, reach it at /run/user/<uid>/vmsilo-clipd.socket.
    systemd.user.services.vmsilo-clipd = mkIf cfg.clipboard.enable {
      description = "vmsilo global clipboard daemon";
      wantedBy = [ "graphical-session.target" ];
      partOf = [ "graphical-session.target" ];
      unitConfig.ConditionUser = cfg.user;
      path = [ vmsilo pkgs.libnotify ];
      serviceConfig = {
        ExecStart = "${vmsilo}/bin/vmsilo clipboard daemon";
        Restart = "on-failure";
        NoNewPrivileges = true;
      };
    };

    # The generator writes the units; these drop-ins only give them their programs (generated
    # units get systemd's default PATH, which on NixOS holds none of them).
    systemd.services = lib.listToAttrs (lib.concatMap
      (vm: [
        (lib.nameValuePair "vmsilo-${vm.name}-vm" {
          overrideStrategy = "asDropin";
          # vmsilo-gate (every VM with `gpu`) is in the vmsilo package.
          path = cfg.runtimePackages ++ [ vmsilo ];
        })
        (lib.nameValuePair "vmsilo-${vm.name}-command" {
          overrideStrategy = "asDropin";
          path = [ config.systemd.package ];
        })
      ])
      cfg.nixosVms);
  };
}
