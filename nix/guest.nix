# The NixOS system inside every vmsilo VM.
#
# - Root: a read-only ext4 image holding the system's closure (the first disk, /dev/vda) is the
#   lower layer of /nix/store; the upper layer is the runtime's ephemeral qcow2 disk (/dev/vdb,
#   formatted at every boot) or a tmpfs, as the VM's rootOverlay.type says.
# - vmsilo-guest is socket-activated on vsock port 5000 (Accept=yes, one agent per command);
#   detached commands become transient user services after graphical-session.target; the idle
#   watchdog powers the VM off when autoShutdown is on.
# - The session: user `user` (uid 1000) lingers; a user service imports the display variables,
#   starts the Wayland proxy and graphical-session.target.
# - Interfaces are renamed at boot from `vmsilo.ifname=<name>,<mac>` on the kernel command line
#   (udev), and get the addresses, routes, nameservers and DHCP of the VM's configuration.
# - Sound: PulseAudio on the virtio-snd card (the host side is vhost-device-sound).
# - /home/user is the shared home over virtiofs (tag `home`).
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption types mkIf;
  g = config.vmsilo.guest;
  vmsilo = g.vmsilo;

  splitCidr = s:
    let parts = lib.splitString "/" s; in
    { address = lib.head parts; prefixLength = lib.toInt (lib.last parts); };
  routesOf = table: lib.mapAttrsToList
    (dest: r: splitCidr dest // { via = r.via; })
    table;

  # `vmsilo.ifname=<name>,<mac>` → the name for the interface with that MAC (udev PROGRAM).
  ifnameFor = pkgs.writeShellScript "vmsilo-ifname" ''
    mac="$(echo "$1" | ${pkgs.coreutils}/bin/tr A-F a-f)"
    for word in $(${pkgs.coreutils}/bin/cat /proc/cmdline); do
      case "$word" in
        vmsilo.ifname=*)
          spec="''${word#vmsilo.ifname=}"
          name="''${spec%%,*}"
          want="$(echo "''${spec#*,}" | ${pkgs.coreutils}/bin/tr A-F a-f)"
          if [ "$want" = "$mac" ]; then echo "$name"; exit 0; fi
          ;;
      esac
    done
    exit 1
  '';

  proxyCommand =
    if g.waylandProxy == "sommelier" then
      "${pkgs.sommelier}/bin/sommelier --virtgpu-channel --display=wayland-0 --socket=wayland-1 --noop-driver"
    else
      "${pkgs.wayland-proxy-virtwl}/bin/wayland-proxy-virtwl --virtio-gpu --tag='[${g.vmName}] ' --wayland-display=wayland-1";
in
{
  options.vmsilo.guest = {
    vmsilo = mkOption { type = types.package; description = "The package providing the guest agent `vmsilo-guest`."; };
    vmName = mkOption { type = types.str; description = "The VM's name."; };
    color = mkOption { type = types.str; default = "red"; description = "Window decoration colour."; };
    waylandProxy = mkOption { type = types.enum [ "wayland-proxy-virtwl" "sommelier" ]; default = "wayland-proxy-virtwl"; description = "The Wayland proxy."; };
    overlay = mkOption { type = types.enum [ "qcow2" "tmpfs" ]; default = "qcow2"; description = "Upper layer of the root overlay."; };
    sharedHome = mkOption { type = types.bool; default = true; description = "Mount the shared home (virtiofs tag `home`) at /home/user."; };
    sharedDirectories = mkOption { type = types.listOf types.str; default = [ ]; description = "Tags of extra shared directories, mounted at /mnt/<tag>."; };
    sound = mkOption { type = types.bool; default = true; description = "Whether the VM has a sound device."; };
    gpu = mkOption { type = types.bool; default = true; description = "Whether the VM shows windows (a GPU and a Wayland proxy, or waypipe)."; };
    waypipe = mkOption { type = types.bool; default = false; description = "Windows through waypipe over vsock (QEMU VMs) instead of the GPU's cross-domain proxy: the agent runs each command under `waypipe server` (it reads `vmsilo.waypipe=<port>` from the kernel command line)."; };
    autoShutdown = mkOption { type = types.attrs; default = { enable = false; after = 60; }; description = "The VM's autoShutdown options."; };
    network = mkOption { type = types.attrs; default = { nameservers = [ ]; interfaces = { }; }; description = "The VM's network options."; };
  };

  config = {
    system.stateVersion = lib.mkDefault lib.trivial.release;
    networking.hostName = g.vmName;

    # ---- boot and root --------------------------------------------------------------------
    boot.loader.grub.enable = false;
    boot.initrd.availableKernelModules = [ "virtio_pci" "virtio_blk" "virtio_net" "virtio_console" "virtio_balloon" "virtiofs" "ext4" "overlay" ];
    boot.initrd.kernelModules = [ "virtio_pci" "virtio_blk" "ext4" "overlay" ];
    boot.kernelModules = [ "vmw_vsock_virtio_transport" ] ++ lib.optional g.sound "snd_virtio" ++ lib.optional (g.gpu && !g.waypipe) "virtio_gpu";
    # The agent wraps every command in `waypipe server` (found on PATH).
    environment.systemPackages = lib.optional g.waypipe pkgs.waypipe;
    boot.kernelParams = [ "console=ttyS0" ];

    fileSystems = lib.mkMerge [
    {
    "/" =
      if g.overlay == "qcow2" then {
        device = "/dev/vdb";
        fsType = "ext4";
        autoFormat = true; # a fresh, empty qcow2 at every start
      } else {
        device = "none";
        fsType = "tmpfs";
        options = [ "mode=0755" "size=50%" ];
      };
    "/nix/.ro-store" = {
      device = "/dev/vda";
      fsType = "ext4";
      options = [ "ro" ];
      neededForBoot = true;
    };
    "/nix/store" = {
      overlay = {
        lowerdir = [ "/nix/.ro-store/nix/store" ];
        upperdir = "/nix/.rw-store/store";
        workdir = "/nix/.rw-store/work";
      };
      neededForBoot = true;
    };
    }
    (mkIf g.sharedHome {
      "/home/user" = {
        device = "home";
        fsType = "virtiofs";
        options = [ "nofail" ];
      };
    })
    (lib.listToAttrs (map
      (tag: lib.nameValuePair "/mnt/${tag}" { device = tag; fsType = "virtiofs"; options = [ "nofail" ]; })
      g.sharedDirectories))
    ];
    # No Nix inside: the store is the image's.
    nix.enable = false;
    documentation.enable = false;

    # ---- network --------------------------------------------------------------------------
    services.udev.extraRules = ''
      SUBSYSTEM=="net", ACTION=="add", DRIVERS=="virtio_net", PROGRAM="${ifnameFor} $attr{address}", NAME="%c"
    '';
    networking.useDHCP = false;
    networking.nameservers = g.network.nameservers or [ ];
    networking.interfaces = lib.mapAttrs
      (name: i: {
        useDHCP = i.dhcp;
        ipv4.addresses = map splitCidr i.addresses;
        ipv4.routes = routesOf i.routes;
        ipv6.addresses = map splitCidr i.v6Addresses;
        ipv6.routes = routesOf i.v6Routes;
      })
      (g.network.interfaces or { });
    networking.firewall.enable = lib.mkDefault false;

    # ---- user and session -----------------------------------------------------------------
    users.users.user = {
      isNormalUser = true;
      uid = 1000;
      group = "users";
      extraGroups = [ "audio" "video" ];
      linger = true;
    };
    environment.variables.VMSILO_VM = g.vmName;
    environment.variables.VMSILO_COLOR = g.color;

    systemd.user.services.vmsilo-session-setup = mkIf (g.gpu && !g.waypipe) {
      description = "vmsilo session: Wayland proxy and graphical-session.target";
      wantedBy = [ "default.target" ];
      serviceConfig = {
        Type = "simple";
        ExecStartPre = "${pkgs.systemd}/bin/systemctl --user import-environment WAYLAND_DISPLAY XDG_SESSION_TYPE";
        ExecStart = proxyCommand;
        ExecStartPost = "${pkgs.systemd}/bin/systemctl --user start --no-block vmsilo-session.target";
        Restart = "on-failure";
      };
      environment = {
        WAYLAND_DISPLAY = "wayland-1";
        XDG_SESSION_TYPE = "wayland";
      };
    };
    # graphical-session.target refuses manual starts; a target bound to it starts it.
    systemd.user.targets.vmsilo-session = {
      description = "vmsilo guest session";
      bindsTo = [ "graphical-session.target" ];
      wants = [ "graphical-session-pre.target" ];
      after = [ "graphical-session-pre.target" ];
    };
    # Under waypipe the agent gives each command its own WAYLAND_DISPLAY.
    environment.sessionVariables = mkIf (g.gpu && !g.waypipe) {
      WAYLAND_DISPLAY = "wayland-1";
      XDG_SESSION_TYPE = "wayland";
      QT_QPA_PLATFORM = "wayland";
      MOZ_ENABLE_WAYLAND = "1";
    };

    hardware.pulseaudio.enable = g.sound;
    hardware.opengl.enable = g.gpu && !g.waypipe;

    # ---- the guest agent ------------------------------------------------------------------
    systemd.sockets.vmsilo-guest = {
      description = "vmsilo guest agent (vsock)";
      wantedBy = [ "sockets.target" ];
      listenStreams = [ "vsock::5000" ];
      socketConfig.Accept = true;
    };
    systemd.services."vmsilo-guest@" = {
      description = "vmsilo guest agent connection";
      serviceConfig = {
        ExecStart = "${vmsilo}/bin/vmsilo-guest serve --listen-fd --session systemd --user user --state-dir /run/vmsilo-guest --idle-shutdown off";
        StandardInput = "socket";
        StandardOutput = "journal";
        StandardError = "journal";
        RuntimeDirectory = "vmsilo-guest";
        RuntimeDirectoryPreserve = true;
      };
    };
    systemd.services.vmsilo-idle-watchdog = mkIf (g.autoShutdown.enable or false) {
      description = "vmsilo idle watchdog (autoShutdown)";
      wantedBy = [ "multi-user.target" ];
      after = [ "vmsilo-guest.socket" ];
      serviceConfig = {
        ExecStart = "${vmsilo}/bin/vmsilo-guest idle-watchdog --idle-shutdown ${toString g.autoShutdown.after} --state-dir /run/vmsilo-guest";
        RuntimeDirectory = "vmsilo-guest";
        RuntimeDirectoryPreserve = true;
      };
    };
  };
}
