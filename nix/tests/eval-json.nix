# Evaluates the NixOS module with the seed's example configuration and returns the JSON it
# writes to /etc/vmsilo/vmsilo.json. Builds nothing.
#
#   nix-instantiate --eval --strict --json --readonly-mode nix/tests/eval-json.nix \
#     --arg nixpkgs /path/to/nixpkgs
#
# `cargo xtask nixos-fixture` runs this and keeps the result in nix/tests/seed-example.json,
# which the test suite checks with `vmsilo check` on machines without nixpkgs.
{ nixpkgs, system ? "x86_64-linux" }:
let
  eval = import (nixpkgs + "/nixos/lib/eval-config.nix") {
    inherit system;
    modules = [
      ../module.nix
      ../../examples/nixos-configuration.nix
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
