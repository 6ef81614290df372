# The original vmsilo README's examples that cannot join nix/tests/seed-readme-examples.nix, in a
# minimal configuration (marked "frame"; the seed's text is marked "seed:"):
# - "Window Decoration Colors", verbatim but for its `...` (the rest of each VM, left out): it
#   names the quick start's VMs again;
# - "PCI Passthrough Configuration" (pciDevices items): it passes through 01:00.0, which the PCI
#   passthrough example of seed-readme-examples.nix gives sys-usb.
# `cargo xtask nixos-fixture` keeps its JSON in nix/tests/seed-readme-examples-2.json.
{ ... }: {
  # frame
  users.users.david = { isNormalUser = true; uid = 1000; };
  programs.vmsilo = {
    enable = true; # frame
    user = "david"; # frame
    isolatedPciDevices = [ "0000:01:00.0" ]; # frame (the long form: the module normalises)

    # seed: Window Decoration Colors
    nixosVms = [
      { name = "banking"; color = "#2ecc71"; } # Green
      { name = "shopping"; color = "#3498db"; } # Blue
      { name = "untrusted"; color = "red"; } # Red (default)
    ] ++ [
      {
        name = "pci-iommu"; # frame
        # seed: PCI Passthrough Configuration
        pciDevices = [{
          path = "01:00.0"; # BDF format, auto-converted to sysfs path
          iommu = "on"; # Optional: enable IOMMU
        }];
      }
    ];
  };
}
