# Evaluates the NixOS module with a configuration (the seed's quick start by default) and returns
# the JSON it writes to /etc/vmsilo/vmsilo.json. Builds nothing; fails on a failed assertion.
#
#   nix-instantiate --eval --strict --json --readonly-mode nix/tests/eval-json.nix \
#     --arg nixpkgs /path/to/nixpkgs [--arg configuration ./nix/tests/seed-readme-examples.nix]
#
# `cargo xtask nixos-fixture` runs this for each configuration it knows and keeps the results
# (nix/tests/seed-example.json, seed-readme-examples.json, seed-readme-examples-2.json), which the
# test suite checks with `vmsilo check` on machines without nixpkgs.
{ nixpkgs, system ? "x86_64-linux", configuration ? ../../examples/nixos-configuration.nix }:
let
  eval = import (nixpkgs + "/nixos/lib/eval-config.nix") {
    inherit system;
    modules = [
      ../module.nix
      ./eval-only-packages.nix
      configuration
      ({ lib, ... }: {
        boot.loader.grub.enable = false;
        fileSystems."/".device = "/dev/null";
        system.stateVersion = lib.trivial.release;
      })
    ];
  };
  failed = builtins.filter (a: !a.assertion) eval.config.assertions;
in
if failed != [ ] then throw (builtins.concatStringsSep "\n" (map (a: a.message) failed))
else eval.config.programs.vmsilo.configJson
