# Builds one VM's guest: a NixOS system from nix/guest.nix, the VM's guestPrograms and its
# guestConfig, plus the read-only ext4 root image holding its closure. Returns the paths the
# host configuration needs (all computed without building anything).
{ pkgs, lib, vm, user, agent }:

let
  system = import (pkgs.path + "/nixos/lib/eval-config.nix") {
    system = pkgs.stdenv.hostPlatform.system;
    modules = [
      ./guest.nix
      {
        vmsilo.guest = {
          # The agent: programs.vmsilo.guestAgentPackage (statically linked by default, and
          # built with the flake's nixpkgs-rust, as the guest's own nixpkgs may have too old a Rust).
          vmsilo = agent;
          vmName = vm.name;
          inherit (vm) waylandProxy color network;
          overlay = vm.rootOverlay.type;
          sharedHome = vm.sharedHome != false;
          autoShutdown = vm.autoShutdown;
          sound = vm.sound != false;
          gpu = vm.gpu != false;
          # QEMU VMs show windows through waypipe over vsock instead of a virtual GPU.
          waypipe = vm.gpu != false && (vm.vmm or "crosvm") == "qemu";
          # Directories without a tag are left to `vmsilo check`, which rejects them.
          sharedDirectories = lib.filter (t: t != null)
            (map (d: if d.tag != null then d.tag else d.id) vm.sharedDirectories);
        };
        environment.systemPackages = vm.guestPrograms;
        # The guest follows the host's nixpkgs configuration (overlays, allowUnfree).
        nixpkgs.pkgs = pkgs;
      }
    ] ++ lib.toList vm.guestConfig;
  };
  inherit (system) config;

  rootImage = pkgs.callPackage (pkgs.path + "/nixos/lib/make-ext4-fs.nix") {
    storePaths = [ config.system.build.toplevel ];
    volumeLabel = "vmsilo-root";
  };
in
{
  inherit system;
  kernel = "${config.system.build.kernel}/${config.system.boot.loader.kernelFile}";
  initramfs = "${config.system.build.initialRamdisk}/${config.system.boot.loader.initrdFile}";
  rootDisk = "${rootImage}";
  # Stage 1 needs to know where stage 2 is; the rest are the guest's own parameters.
  kernelParams = [ "init=${config.system.build.toplevel}/init" ] ++ config.boot.kernelParams;
}
