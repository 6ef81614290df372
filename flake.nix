{
  description = "vmsilo: VM compartmentalization for Linux desktops, in the spirit of Qubes OS";

  # The system: NixOS 24.05, what the module is written and tested against.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.05";
  # Only vmsilo's own Rust binaries (packages.default, the static guest agent): the workspace
  # needs rustc >= Cargo.toml's rust-version (1.95, edition 2024) and nixpkgs 24.05 has 1.77. They
  # are built entirely from this nixpkgs (its own glibc, musl for the agent), so their closure
  # does not mix with the system's. nixos-unstable as of 2026-06-29; nix/package.nix stops
  # evaluation with a clear message if this ever points at a nixpkgs with an older Rust. To use
  # your own: inputs.vmsilo.inputs.nixpkgs-rust.follows = "<an input with Rust >= 1.95>".
  inputs.nixpkgs-rust.url = "github:NixOS/nixpkgs/b5aa0fbd538984f6e3d201be0005b4463d8b09f8";

  outputs = { self, nixpkgs, nixpkgs-rust }:
    let
      system = "x86_64-linux";
      pkgs = nixpkgs.legacyPackages.${system};
      rustPkgs = nixpkgs-rust.legacyPackages.${system};

      # The seed's quick-start configuration (examples/nixos-configuration.nix) as a system.
      seedSystem = nixpkgs.lib.nixosSystem {
        inherit system;
        modules = [
          self.nixosModules.default
          ./examples/nixos-configuration.nix
          {
            boot.loader.grub.enable = false;
            fileSystems."/".device = "/dev/null";
            system.stateVersion = "24.05";
          }
        ];
      };
    in
    {
      packages.${system} = {
        # vmsilo's binaries, built with nixpkgs-rust (see the inputs).
        default = rustPkgs.callPackage ./nix/package.nix { };
        # The guest agent alone, static (musl): what every NixOS guest runs.
        vmsilo-guest = rustPkgs.pkgsStatic.callPackage ./nix/package.nix { guestOnly = true; };
        # The vhost-user backends nixpkgs 24.05 lacks (the module uses these there).
        inherit (pkgs.callPackage ./nix/vhost-device.nix { }) vhost-device-sound vhost-device-vsock;
      };

      # The module evaluates with the system's nixpkgs; only the two vmsilo builds come from
      # nixpkgs-rust.
      nixosModules.default = { lib, pkgs, ... }: {
        imports = [ ./nix/module.nix ];
        programs.vmsilo.package =
          lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        programs.vmsilo.guestAgentPackage =
          lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.vmsilo-guest;
      };

      checks.${system} = {
        package = self.packages.${system}.default;
        inherit (self.packages.${system}) vmsilo-guest;
        inherit (self.packages.${system}) vhost-device-sound vhost-device-vsock;
        # The seed's example evaluates and builds as a NixOS system.
        seed-example = seedSystem.config.system.build.toplevel;
        # The JSON the module writes is accepted by the Rust side, and the generator
        # produces the same units as `vmsilo units` for it.
        seed-example-json = pkgs.runCommand "vmsilo-seed-example-check" { } ''
          json=${pkgs.writeText "vmsilo.json" seedSystem.config.programs.vmsilo.configJson}
          ${self.packages.${system}.default}/bin/vmsilo check --config "$json"
          mkdir -p gen/normal gen/early gen/late units
          VMSILO_CONFIG="$json" ${self.packages.${system}.default}/bin/vmsilo-generator gen/normal gen/early gen/late
          ${self.packages.${system}.default}/bin/vmsilo units --config "$json" --out units
          diff -r gen/normal units/systemd
          touch $out
        '';
      };
    };
}
