# The original vmsilo README's quick start, as a NixOS configuration module.
#
# In a flake: add `inputs.vmsilo.url = ...;` and `imports = [ inputs.vmsilo.nixosModules.default ];`
# (the module is nix/module.nix of this repository). Everything below is the seed's example,
# unchanged.
{ config, pkgs, ... }: {
  # User must have explicit UID for vmsilo
  users.users.david = {
    isNormalUser = true;
    uid = 1000;
  };

  programs.vmsilo = {
    enable = true;
    user = "david";
    hostNetworking.nat = {
      enable = true;
      interface = "eth0";
    };

    nixosVms = [
      {
        name = "banking";
        memory = 4096;
        cpus = 4;
        autoShutdown = { enable = true; after = 120; };
        network = {
          nameservers = [ "1.1.1.1" ];
          interfaces.wan = {
            type = "tap";
            tap.hostAddress = "10.0.0.254/24";
            addresses = [ "10.0.0.1/24" ];
            routes."0.0.0.0/0" = { via = "10.0.0.254"; };
          };
        };
        guestPrograms = with pkgs; [ firefox konsole ];
      }
      {
        name = "shopping";
        memory = 2048;
        cpus = 2;
        autoShutdown.enable = true;
        network = {
          nameservers = [ "1.1.1.1" ];
          interfaces.wan = {
            type = "tap";
            tap.hostAddress = "10.0.1.254/24";
            addresses = [ "10.0.1.1/24" ];
            routes."0.0.0.0/0" = { via = "10.0.1.254"; };
          };
        };
        guestPrograms = with pkgs; [ firefox konsole ];
      }
      {
        name = "personal";
        memory = 4096;
        cpus = 4;
        # No network.interfaces = offline VM
        guestPrograms = with pkgs; [ libreoffice ];
      }
    ];
  };
}
