{
  description = "vmsilo: VM compartmentalization for Linux desktops, in the spirit of Qubes OS";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.05";

  outputs = { self, nixpkgs }:
    let
      system = "x86_64-linux";
      pkgs = nixpkgs.legacyPackages.${system};

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
        default = pkgs.callPackage ./nix/package.nix { };
        # The vhost-user backends nixpkgs 24.05 lacks (the module uses these there).
        inherit (pkgs.callPackage ./nix/vhost-device.nix { }) vhost-device-sound vhost-device-vsock;
      };

      nixosModules.default = { lib, pkgs, ... }: {
        imports = [ ./nix/module.nix ];
        programs.vmsilo.package =
          lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      };

      checks.${system} = {
        package = self.packages.${system}.default;
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
