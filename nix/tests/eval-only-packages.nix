# For the evaluation-only tests (eval-json.nix, module-checks.nix): the vmsilo package and guest
# agent built from the nixpkgs under test even when its Rust is older than Cargo.toml's
# rust-version, as nixpkgs 24.05's is. These tests compute store paths and build nothing; a real
# system takes both from a new enough nixpkgs (the flake's nixpkgs-rust input).
{ lib, pkgs, ... }:
{
  programs.vmsilo.package = lib.mkDefault (pkgs.callPackage ../package.nix { allowOldRust = true; });
  programs.vmsilo.guestAgentPackage = lib.mkDefault
    (pkgs.pkgsStatic.callPackage ../package.nix { guestOnly = true; allowOldRust = true; });
}
