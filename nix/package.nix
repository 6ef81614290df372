# The vmsilo Rust workspace as one package: the host CLI (`vmsilo` and its multi-call names
# `vm-run`, `vm-start`, `vm-stop`, `vm-start-debug`, `vm-shell`, `vmsilo-generator`), the guest
# agent `vmsilo-guest`, `vm-switch` and `vmsilo-balloond`.
#
# With `guestOnly = true` it builds just the guest agent; the module builds that with
# `pkgsStatic` (musl, static), which keeps the idle agent under 2 MiB resident (a dynamically
# linked build is about 2.3 MiB, see `cargo xtask bench guest-agent`).
{ lib, rustPlatform, pkg-config, installShellFiles, guestOnly ? false }:

let
  src = lib.cleanSourceWith {
    src = ../.;
    # Only what cargo needs: no target/, no nix/ (so editing Nix files does not rebuild Rust).
    filter = path: type:
      let rel = lib.removePrefix (toString ../. + "/") (toString path); in
      !(lib.hasPrefix "target" rel || lib.hasPrefix "nix" rel || lib.hasPrefix ".git" rel
        || lib.hasPrefix "fuzz" rel || lib.hasPrefix "examples" rel);
  };
in
rustPlatform.buildRustPackage {
  pname = if guestOnly then "vmsilo-guest" else "vmsilo";
  version = "0.1.0";
  inherit src;

  cargoLock.lockFile = ../Cargo.lock;

  nativeBuildInputs = [ pkg-config installShellFiles ];

  # The shipped binaries only; xtask and the test kit stay out.
  cargoBuildFlags = if guestOnly then [ "--package" "vmsilo-guest" ] else [
    "--package" "vmsilo"
    "--package" "vmsilo-guest"
    "--package" "vm-switch"
    "--package" "vmsilo-balloond"
    "--package" "vmsilo-gate"
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
