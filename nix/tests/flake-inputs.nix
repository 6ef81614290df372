# The flake's wiring of its two nixpkgs, evaluated offline and without flakes: flake.nix's
# outputs are called with inputs made from one nixpkgs tree (24.05 in CI). `nixpkgs` is the tree
# as it is. `nixpkgs-rust` is either the same tree (what `inputs.vmsilo.inputs.nixpkgs-rust.follows
# = "nixpkgs"` gives), or a stand-in for a newer nixpkgs: the tree with `rustc.version` raised to
# Cargo.toml's rust-version. Nothing is built, so the stand-in's compiler never runs; it only lets
# package.nix's version check pass, so that whatever evaluates was taken from `nixpkgs-rust` (the
# plain tree is refused). Returns a set of booleans, all true when the wiring holds;
# `cargo xtask nixos-fixture` evaluates it.
{ nixpkgs, system ? "x86_64-linux" }:
let
  lib = import (nixpkgs + "/lib");
  rustVersion = (builtins.fromTOML (builtins.readFile ../../Cargo.toml)).workspace.package.rust-version;

  # A flake input of the nixpkgs tree: its flake.nix's outputs, as `nix` would give them.
  nixpkgsInput =
    let out = (import (nixpkgs + "/flake.nix")).outputs { self = out // { outPath = nixpkgs; }; };
    in out // { outPath = nixpkgs; };
  standIn = {
    legacyPackages.${system} = import nixpkgs {
      inherit system;
      overlays = [ (final: prev: { rustc = prev.rustc // { version = "${rustVersion}.0"; }; }) ];
    };
  };
  flakeWith = rustInput:
    let
      out = (import ../../flake.nix).outputs {
        self = out // { outPath = ../..; };
        nixpkgs = nixpkgsInput;
        nixpkgs-rust = rustInput;
      };
    in out;
  good = flakeWith standIn;
  follows = flakeWith nixpkgsInput;

  # A host with the flake's module and the seed's quick start (the system's pkgs: `nixpkgs`).
  hostOf = flake: (nixpkgsInput.lib.nixosSystem {
    inherit system;
    modules = [
      flake.nixosModules.default
      ../../examples/nixos-configuration.nix
      {
        boot.loader.grub.enable = false;
        fileSystems."/".device = "/dev/null";
        system.stateVersion = lib.trivial.release;
      }
    ];
  }).config;
  host = hostOf good;
  systemPkgs = nixpkgsInput.legacyPackages.${system};
  evaluates = v: (builtins.tryEval (builtins.deepSeq v true)).success;
  drv = p: p.drvPath;
  # Same derivation; false (not an evaluation error) when either side is refused.
  same = a: b: let r = builtins.tryEval (drv a == drv b); in r.success && r.value;
  agentOf = c: vm: c.programs.vmsilo.guests.${vm}.system.config.vmsilo.guest.vmsilo;
in
{
  # The flake's packages are built with nixpkgs-rust: the stand-in is accepted ...
  packages_come_from_nixpkgs_rust = evaluates (drv good.packages.${system}.default)
    && evaluates (drv good.packages.${system}.vmsilo-guest);
  # ... and a nixpkgs-rust that follows the system's 24.05 is refused, by package.nix's check.
  follows_old_nixpkgs_is_refused = !(evaluates (drv follows.packages.${system}.default))
    && !(evaluates (drv follows.packages.${system}.vmsilo-guest));
  # The module's package and every guest's agent are those packages, while the system (and the
  # guests' NixOS) stay on the system's nixpkgs.
  module_uses_the_flake_packages = same host.programs.vmsilo.package good.packages.${system}.default
    && same host.programs.vmsilo.guestAgentPackage good.packages.${system}.vmsilo-guest
    && lib.all (vm: same (agentOf host vm.name) good.packages.${system}.vmsilo-guest)
      host.programs.vmsilo.nixosVms
    && host.programs.vmsilo.nixosVms != [ ];
  system_stays_on_nixpkgs = host.system.nixos.release == lib.trivial.release
    && lib.any (p: same p systemPkgs.crosvm) host.programs.vmsilo.runtimePackages;
  # The module's JSON (which contains every guest build) evaluates with the flake's packages.
  module_json_evaluates = evaluates host.programs.vmsilo.configJson
    && lib.hasInfix "nixos-system-" host.programs.vmsilo.configJson;
}
