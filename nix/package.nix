# The vmsilo Rust workspace as one package: the host CLI (`vmsilo` and its multi-call names
# `vm-run`, `vm-start`, `vm-stop`, `vm-start-debug`, `vm-shell`, `vmsilo-generator`), the guest
# agent `vmsilo-guest`, `vm-switch`, `vmsilo-balloond`, `vmsilo-gate` and `vmsilo-clipd`.
#
# With `guestOnly = true` it builds just the guest agent; the module builds that with
# `pkgsStatic` (musl, static), which keeps the idle agent under 2 MiB resident (a dynamically
# linked build is about 2.3 MiB, see `cargo xtask bench guest-agent`).
#
# The workspace needs rustc >= the `rust-version` of Cargo.toml (edition 2024). nixpkgs 24.05 has
# Rust 1.77 (1.80 as rust_1_80), so the flake builds this file with its `nixpkgs-rust` input, not
# with the system's nixpkgs. With a too-old `rustc` evaluation stops with a message saying so;
# `rustc` must be the compiler of `rustPlatform` (callPackage gives the pair of one nixpkgs; pass
# both when overriding either). `allowOldRust = true` skips that check: only for tests that
# evaluate the module against nixpkgs 24.05 without building anything.
{ lib, rustPlatform, rustc, pkg-config, installShellFiles, libxkbcommon, guestOnly ? false
, allowOldRust ? false }:

let
  # Read, not repeated: Cargo.toml is the one place the minimum is stated.
  rustVersion = (builtins.fromTOML (builtins.readFile ../Cargo.toml)).workspace.package.rust-version;
  rustNewEnough = !lib.versionOlder rustc.version rustVersion;
  src = lib.cleanSourceWith {
    src = ../.;
    # Only what cargo needs: no target/, no nix/ (so editing Nix files does not rebuild Rust).
    filter = path: type:
      let rel = lib.removePrefix (toString ../. + "/") (toString path); in
      !(lib.hasPrefix "target" rel || lib.hasPrefix "nix" rel || lib.hasPrefix ".git" rel
        || lib.hasPrefix "fuzz" rel || lib.hasPrefix "examples" rel);
  };
in
assert lib.assertMsg (rustNewEnough || allowOldRust) ''
  vmsilo needs rustc >= ${rustVersion} (rust-version in Cargo.toml), but the nixpkgs this
  package.nix was called with has rustc ${rustc.version}.
  - With the vmsilo flake: its packages and its NixOS module's defaults are built with the flake
    input `nixpkgs-rust`, whatever nixpkgs your system uses. If you made that input follow your
    own nixpkgs (inputs.vmsilo.inputs.nixpkgs-rust.follows), point it at one whose Rust is
    ${rustVersion} or newer instead.
  - Without the flake: call nix/package.nix with such a nixpkgs (`newPkgs.callPackage
    ./nix/package.nix { }`) and set programs.vmsilo.package and programs.vmsilo.guestAgentPackage
    (the latter `newPkgs.pkgsStatic.callPackage ./nix/package.nix { guestOnly = true; }`).
  See docs/nixos.md, "Which nixpkgs builds vmsilo".'';
rustPlatform.buildRustPackage {
  pname = if guestOnly then "vmsilo-guest" else "vmsilo";
  version = "0.1.0";
  inherit src;

  cargoLock.lockFile = ../Cargo.lock;

  nativeBuildInputs = [ pkg-config installShellFiles ];
  # vmsilo-gate compiles the compositor's keymap (the clipboard chords) with libxkbcommon.
  buildInputs = lib.optionals (!guestOnly) [ libxkbcommon ];

  # The shipped binaries only; xtask and the test kit stay out.
  cargoBuildFlags = if guestOnly then [ "--package" "vmsilo-guest" ] else [
    "--package" "vmsilo"
    "--package" "vmsilo-guest"
    "--package" "vm-switch"
    "--package" "vmsilo-balloond"
    "--package" "vmsilo-gate"
    "--package" "vmsilo-clipd"
  ];
  # The unit and component tiers run in the sandbox; the e2e tier needs QEMU guests and is
  # run by `cargo xtask ci`, not here.
  cargoTestFlags = [ "--workspace" "--exclude" "xtask" "--exclude" "vmsilo-testkit" ];
  doCheck = false;

  postInstall = lib.optionalString (!guestOnly) ''
    # Multi-call entry points of the one host binary.
    for name in vm-run vm-start vm-stop vm-start-debug vm-shell vmsilo-generator; do
      ln -s vmsilo "$out/bin/$name"
    done
    # Shell completion and man pages come from the same clap definition.
    for shell in bash zsh fish; do
      "$out/bin/vmsilo" completions "$shell" --out "completions-$shell"
    done
    installShellCompletion --bash completions-bash/*
    installShellCompletion --zsh completions-zsh/*
    installShellCompletion --fish completions-fish/*
    "$out/bin/vmsilo" man --out man
    installManPage man/*
  '';

  meta = {
    description = "VM compartmentalization for Linux desktops, in the spirit of Qubes OS";
    license = with lib.licenses; [ mit asl20 ];
    platforms = [ "x86_64-linux" ];
    mainProgram = "vmsilo";
  };
}
