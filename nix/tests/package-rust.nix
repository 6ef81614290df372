# What `cargo xtask nixos-fixture` checks of nix/package.nix against a nixpkgs tree (builds
# nothing): the Rust the workspace needs (Cargo.toml's rust-version), the tree's rustc, and the
# package and static guest agent themselves, which with a too-old rustc stop evaluation with a
# message naming both versions and the flake input `nixpkgs-rust`.
#
#   nix-instantiate --eval --strict --json --readonly-mode nix/tests/package-rust.nix \
#     --arg nixpkgs /path/to/nixpkgs -A versions      # then -A package, -A guestAgent
{ nixpkgs, system ? "x86_64-linux" }:
let
  pkgs = import nixpkgs { inherit system; };
  needed = (builtins.fromTOML (builtins.readFile ../../Cargo.toml)).workspace.package.rust-version;
in
{
  versions = {
    inherit needed;
    rustc = pkgs.rustc.version;
    tooOld = pkgs.lib.versionOlder pkgs.rustc.version needed;
  };
  package = (pkgs.callPackage ../package.nix { }).drvPath;
  guestAgent = (pkgs.pkgsStatic.callPackage ../package.nix { guestOnly = true; }).drvPath;
}
