# Regression checks of the module's behaviour that no JSON fixture shows, evaluated against a
# nixpkgs tree (builds nothing). Returns an attribute set of booleans, all true when the module
# behaves; `cargo xtask nixos-fixture [--check]` evaluates it and fails naming any false one.
#
#   nix-instantiate --eval --strict --json --readonly-mode nix/tests/module-checks.nix \
#     --arg nixpkgs /path/to/nixpkgs
{ nixpkgs, system ? "x86_64-linux" }:
let
  lib = import (nixpkgs + "/lib");
  evalWith = useModule: evalWithModules (lib.optionals useModule [ ../module.nix ./eval-only-packages.nix ]);
  evalWithModules = modules: config: (import (nixpkgs + "/nixos/lib/eval-config.nix") {
    inherit system;
    modules = modules ++ [
      config
      {
        boot.loader.grub.enable = false;
        fileSystems."/".device = "/dev/null";
        system.stateVersion = lib.trivial.release;
        users.users.david = { isNormalUser = true; uid = 1000; };
      }
    ];
  }).config;
  failed = c: map (a: a.message) (lib.filter (a: !a.assertion) c.assertions);
  vmsilo = vms: extra: evalWith true {
    programs.vmsilo = { enable = true; user = "david"; nixosVms = vms; } // extra;
  };

  # Everything a module can write into a system, for comparing enable = false with no module.
  footprint = c: {
    etc = lib.attrNames c.environment.etc;
    generators = c.systemd.generators;
    polkit = c.security.polkit.extraConfig;
    polkitEnabled = c.security.polkit.enable;
    tmpfiles = c.systemd.tmpfiles.rules;
    packages = map (p: p.name or "?") c.environment.systemPackages;
    interfaces = lib.attrNames c.networking.interfaces;
    bridges = lib.attrNames c.networking.bridges;
    nat = c.networking.nat.enable;
    sysctl = c.boot.kernel.sysctl;
    initrdModules = c.boot.initrd.kernelModules;
    activation = lib.attrNames c.system.activationScripts;
    services = lib.attrNames c.systemd.services;
    ksm = c.hardware.ksm.enable;
    completion = c.programs.bash.enableCompletion;
  };
  disabled = evalWith true {
    programs.vmsilo = {
      enable = false;
      user = "david";
      hostNetworking.nat = { enable = true; interface = "eth0"; };
      isolatedPciDevices = [ "01:00.0" ];
      enableBashIntegration = true;
      nixosVms = [{
        name = "banking";
        network.interfaces.wan = { type = "tap"; tap.hostAddress = "10.0.0.254/24"; };
        pciDevices = [{ path = "01:00.0"; }];
      }];
    };
  };
  hostPackageName = c: lib.head (lib.filter (n: lib.hasPrefix "vmsilo-0" n)
    (map (p: p.name or "") c.environment.systemPackages));
  noBash = vmsilo [{ name = "a"; }] { enableBashIntegration = false; };
  withBash = vmsilo [{ name = "a"; }] { };
  sharedBoth = vmsilo [{ name = "a"; sharedDirectories = [{ path = "/s"; id = "home"; tag = "data"; }]; }] { };
  sharedNone = vmsilo [{ name = "a"; sharedDirectories = [{ path = "/s"; }]; }] { };
  sharedId = vmsilo [{ name = "a"; sharedHome = false; sharedDirectories = [{ path = "/s"; id = "home"; } { path = "/t"; id = "t"; tag = "t"; }]; }] { };
  pciMixed = vmsilo [{ name = "a"; pciDevices = [{ path = "01:00.0"; } { path = "0000:0A:00.1"; }]; }]
    { isolatedPciDevices = [ "0000:01:00.0" "0a:00.1" ]; };
  pciOther = vmsilo [{ name = "a"; pciDevices = [{ path = "0001:01:00.0"; }]; }]
    { isolatedPciDevices = [ "01:00.0" ]; };
  dupes = vmsilo [{ name = "a"; } { name = "a"; dependsOn = [ "b" ]; }] { hostNetworking.nat.enable = true; };
  jsonVms = c: (builtins.fromJSON (builtins.unsafeDiscardStringContext c.programs.vmsilo.configJson)).nixosVms;
  firstDir = c: lib.head (lib.head (jsonVms c)).sharedDirectories;
  quickStart = evalWith true ../../examples/nixos-configuration.nix;
  # The packages on a VM service's PATH that provide `bin`, by name.
  provides = bin: p: lib.hasPrefix "${bin}-" (p.name or "");
  vmPath = c: vm: c.systemd.services."vmsilo-${vm.name}-vm".path;
  check = lib.head (lib.filter (p: (p.name or "") == "vmsilo-config-check") withBash.system.checks);

  # package.nix and the Rust it is built with.
  pkgs = import nixpkgs { inherit system; };
  rustVersion = (builtins.fromTOML (builtins.readFile ../../Cargo.toml)).workspace.package.rust-version;
  tooOld = lib.versionOlder pkgs.rustc.version rustVersion;
  evaluates = drv: (builtins.tryEval drv.drvPath).success;
  agentMarker = pkgs.writeText "vmsilo-agent-marker" "";
  # The module alone, without eval-only-packages.nix: its own defaults.
  moduleDefaults = evalWithModules [ ../module.nix ] {
    programs.vmsilo = { enable = true; user = "david"; nixosVms = [{ name = "a"; }]; };
  };
  withAgent = vmsilo [{ name = "a"; }] { guestAgentPackage = agentMarker; };
in
{
  enable_false_writes_nothing = footprint disabled == footprint (evalWith false { });
  bash_integration_false_installs_no_completion =
    lib.hasSuffix "-no-bash-completion" (hostPackageName noBash)
    && lib.hasInfix "rm -rf $out/share/bash-completion" (lib.head (lib.filter
      (p: lib.hasSuffix "-no-bash-completion" (p.name or "")) noBash.environment.systemPackages)).buildCommand;
  bash_integration_true_installs_the_package = !(lib.hasSuffix "-no-bash-completion" (hostPackageName withBash));
  shared_dir_id_is_the_tag = failed sharedId == [ ]
    && map (d: d.tag) (lib.head (builtins.fromJSON (builtins.unsafeDiscardStringContext sharedId.programs.vmsilo.configJson)).nixosVms).sharedDirectories == [ "home" "t" ];
  # Differing tag and id, or neither, reach vmsilo check as written (it rejects them).
  shared_dir_tag_and_id_differing_reach_vmsilo_check = (firstDir sharedBoth).tag == "data" && (firstDir sharedBoth).id == "home";
  shared_dir_without_tag_reaches_vmsilo_check = !(firstDir sharedNone ? tag) && !(firstDir sharedNone ? id);
  # No assertion repeats a rule of vmsilo check (which runs at build time, below).
  no_assertion_repeats_a_vmsilo_rule = lib.all (c: failed c == [ ]) [ pciMixed pciOther sharedBoth sharedNone dupes ];
  # nixpkgs 24.05 has no vhost-device-sound: the quick start's VMs (crosvm, sound on by
  # default) find the one nix/vhost-device.nix builds on their service's PATH, so their
  # preflight passes; QEMU VMs would find vhost-device-vsock there too.
  quick_start_vms_find_their_sound_backend = quickStart.programs.vmsilo.nixosVms != [ ]
    && lib.all (vm: vm.sound == false || lib.any (provides "vhost-device-sound") (vmPath quickStart vm))
      quickStart.programs.vmsilo.nixosVms
    && lib.all (vm: lib.any (provides "vhost-device-vsock") (vmPath quickStart vm))
      quickStart.programs.vmsilo.nixosVms;
  # The system's build runs vmsilo check on the JSON /etc/vmsilo/vmsilo.json gets.
  # With a nixpkgs whose rustc is older than Cargo.toml's rust-version (24.05's 1.77), package.nix
  # stops evaluation (its message is checked by `cargo xtask nixos-fixture`); with a new enough
  # one it evaluates. The static guest agent the same.
  package_refuses_too_old_rust = tooOld == !(evaluates (pkgs.callPackage ../package.nix { }))
    && tooOld == !(evaluates (pkgs.pkgsStatic.callPackage ../package.nix { guestOnly = true; }));
  # The module's defaults are those same calls: they fail alike on such a nixpkgs.
  module_defaults_need_new_rust = tooOld == !(evaluates moduleDefaults.programs.vmsilo.package)
    && tooOld == !(evaluates moduleDefaults.programs.vmsilo.guestAgentPackage);
  # Every guest runs programs.vmsilo.guestAgentPackage (the flake sets it from nixpkgs-rust).
  guest_agent_is_the_option = withAgent.programs.vmsilo.guests.a.system.config.vmsilo.guest.vmsilo == agentMarker
    && lib.hasInfix "vmsilo-agent-marker"
      (builtins.unsafeDiscardStringContext withAgent.programs.vmsilo.guests.a.system.config.systemd.services."vmsilo-guest@".serviceConfig.ExecStart);
  the_build_runs_vmsilo_check = lib.hasInfix "vmsilo --config vmsilo.json check" check.buildCommand
    && check.json == builtins.unsafeDiscardStringContext withBash.programs.vmsilo.configJson
    && withBash.environment.etc."vmsilo/vmsilo.json".text == withBash.programs.vmsilo.configJson;
}
