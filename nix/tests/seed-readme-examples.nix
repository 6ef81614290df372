# Every configuration example of the original vmsilo README (the seed), verbatim, as one NixOS
# configuration. The README's examples are fragments: the quick start is a whole module, the
# others are options of one VM (or of programs.vmsilo). Each fragment below is copied unchanged
# into its own module; the NixOS module system concatenates the `nixosVms` lists of all of them.
# Where a fragment needed a frame (a VM to live in), the frame is marked "frame" and the
# fragment "seed:"; the seed's own comments are kept.
#
# `cargo xtask nixos-fixture` evaluates this with nix/module.nix (nix/tests/eval-json.nix) and
# keeps the JSON in nix/tests/seed-readme-examples.json, which the test suite checks with
# `vmsilo check` and the generator. Two examples cannot join this configuration and are in
# nix/tests/seed-readme-examples-2.nix: the colour example names the quick start's VMs again, and
# the pciDevices example passes through 01:00.0, which the PCI passthrough example gives sys-usb
# (vmsilo check: a device can belong to one VM).
#
# The shared-directory examples mount their directory with tag "home" (`id = "home"`), the tag
# of the default shared home (sharedHome = true), which vmsilo check rejects ("tag \"home\" is
# used by the shared home"): their frames set sharedHome = false, as that message says.
{ lib, ... }:
let
  # seed: Quick Start. Verbatim but for the `imports` line: eval-json.nix imports the module
  # (in a flake it is `inputs.vmsilo.nixosModules.default`).
  quickStart = { config, pkgs, ... }: {
    # imports = [ inputs.vmsilo.nixosModules.default ];

    # User must have explicit UID for vmsilo
    users.users.david.uid = 1000;

    programs.vmsilo = {
      enable = true;
      user = "david";
      hostNetworking.nat = {
        enable = true;
        interface = "eth0";
      };

      nixosVms = [
        {
          name = "banking";
          memory = 4096;
          cpus = 4;
          autoShutdown = { enable = true; after = 120; };
          network = {
            nameservers = [ "1.1.1.1" ];
            interfaces.wan = {
              type = "tap";
              tap.hostAddress = "10.0.0.254/24";
              addresses = [ "10.0.0.1/24" ];
              routes."0.0.0.0/0" = { via = "10.0.0.254"; };
            };
          };
          guestPrograms = with pkgs; [ firefox konsole ];
        }
        {
          name = "shopping";
          memory = 2048;
          cpus = 2;
          autoShutdown.enable = true;
          network = {
            nameservers = [ "1.1.1.1" ];
            interfaces.wan = {
              type = "tap";
              tap.hostAddress = "10.0.1.254/24";
              addresses = [ "10.0.1.1/24" ];
              routes."0.0.0.0/0" = { via = "10.0.1.254"; };
            };
          };
          guestPrograms = with pkgs; [ firefox konsole ];
        }
        {
          name = "personal";
          memory = 4096;
          cpus = 4;
          # No network.interfaces = offline VM
          guestPrograms = with pkgs; [ libreoffice ];
        }
      ];
    };
  };

  # seed: Shared directories, both examples (each in a VM of its own: frame).
  sharedDirectories = {
    programs.vmsilo.nixosVms = [
      {
        name = "shared-all"; # frame
        sharedHome = false; # frame: the directory below takes the shared home's tag
        sharedDirectories = [ { path = "/shared/personal"; id = "home"; uidmap = "0 0 65535"; gidmap = "0 0 65535"; } ];
      }
      {
        name = "shared-1000"; # frame
        sharedHome = false; # frame: the directory below takes the shared home's tag
        sharedDirectories = [ { path = "/shared/personal"; id = "home"; uid = 1000; gid = 1000; uidmap = "1000 1000 1"; gidmap = "1000 1000 1"; } ];
      }
    ];
  };

  # seed: Disk Configuration (additionalDisks items).
  disks = {
    programs.vmsilo.nixosVms = [
      {
        name = "disks"; # frame
        additionalDisks = [{
          path = "/tmp/data.qcow2"; # required, positional
          ro = false; # read-only
          sparse = true; # enable discard/trim
          block-size = 4096; # reported block size
          id = "data"; # device identifier
          direct = false; # O_DIRECT mode
        }];
      }
    ];
  };

  # seed: Wayland Proxy, both values.
  wayland = {
    programs.vmsilo.nixosVms = [
      { name = "wayland-virtwl"; /* frame */ waylandProxy = "wayland-proxy-virtwl"; } # Default: wayland-proxy-virtwl by Thomas Leonard
      { name = "wayland-sommelier"; /* frame */ waylandProxy = "sommelier"; } # ChromeOS sommelier
    ];
  };

  # seed: GPU Configuration, all three forms.
  gpu = {
    programs.vmsilo.nixosVms = [
      { name = "gpu-off"; /* frame */ gpu = false; } # Disabled
      { name = "gpu-default"; /* frame */ gpu = true; } # Default: context-types=cross-domain:virgl2
      { name = "gpu-custom"; /* frame */ gpu = { context-types = "cross-domain:virgl2"; width = 1920; height = 1080; }; } # Custom
    ];
  };

  # seed: Sound Configuration, the three forms.
  sound = {
    programs.vmsilo.nixosVms = [
      { name = "sound-off"; /* frame */ sound = false; } # Disabled
      { name = "sound-default"; /* frame */ sound = true; } # Default PulseAudio config
      { name = "sound-custom"; /* frame */ sound = { backend = "pulse"; capture = true; }; } # Custom
    ];
  };

  # seed: vhost-user Devices.
  vhostUser = {
    programs.vmsilo.nixosVms = [
      {
        name = "vhost-user"; # frame
        vhostUser = [{
          type = "net";
          socket = "/path/to/socket";
        }];
      }
    ];
  };

  # seed: PCI Passthrough, Configuration.
  pciPassthrough = {
    programs.vmsilo = {
      # Devices to isolate from host (claimed by vfio-pci)
      isolatedPciDevices = [ "01:00.0" "02:00.0" ];

      nixosVms = [{
        name = "sys-usb";
        memory = 1024;
        pciDevices = [{ path = "01:00.0"; }]; # USB controller
      }
      {
        name = "sys-net";
        memory = 1024;
        pciDevices = [{ path = "02:00.0"; }]; # Network card
      }];
    };

    # Recommended: blacklist native drivers for reliability
    boot.blacklistedKernelModules = [ "xhci_hcd" ]; # for USB controllers
  };
in
{
  imports = [
    quickStart
    sharedDirectories
    disks
    wayland
    gpu
    sound
    vhostUser
    pciPassthrough
  ];

  # frame: NixOS requires a user to be a normal or a system user; the seed only sets the UID.
  users.users.david.isNormalUser = true;
}
