# vhost-device-sound and vhost-device-vsock (rust-vmm) from crates.io, for nixpkgs releases that
# lack them (24.05, the flake's pin, has neither). The module uses nixpkgs' own package where
# there is one. Versions match `cargo xtask setup` (xtask/src/setup.rs CARGO_TOOLS); the lock
# files are the crates' own Cargo.lock (the .crate tarballs ship them), and the source hashes
# are the crates.io checksums of the .crate files.
#
# vhost-device-sound is built with its ALSA and PipeWire backends (what `sound.backend` maps
# to: pulse, pipewire, alsa, null); its GStreamer backend, which vmsilo does not use, is left
# out. PipeWire's bindings are generated with bindgen (libclang, via bindgenHook).
{ lib, rustPlatform, rustc, fetchurl, pkg-config, alsa-lib, pipewire, rustPackages_1_80 ? null }:

let
  # nixpkgs 24.05's default Rust is 1.77; its 1.80 gives the crates' dependencies (clap 4.5
  # needs 1.74; the PipeWire bindings' minimum was not checked) more room. Newer nixpkgs'
  # default is newer still and is used as is.
  platform =
    if rustPackages_1_80 != null && lib.versionOlder rustc.version "1.80"
    then rustPackages_1_80.rustPlatform else rustPlatform;

  # A crate's .crate file (a .tar.gz) from crates.io.
  crate = pname: version: sha256: fetchurl {
    name = "${pname}-${version}.tar.gz";
    url = "https://crates.io/api/v1/crates/${pname}/${version}/download";
    inherit sha256;
  };
  metaFor = description: {
    inherit description;
    homepage = "https://github.com/rust-vmm/vhost-device";
    license = with lib.licenses; [ asl20 bsd3 ];
    platforms = lib.platforms.linux;
  };
in
{
  vhost-device-sound = platform.buildRustPackage rec {
    pname = "vhost-device-sound";
    version = "0.3.0";
    src = crate pname version "d5066471ca6bc631f92b3cd265509d3134ff3483a8768e9f67676923878d7bce";
    cargoLock.lockFile = ./vhost-device-sound.Cargo.lock;
    buildNoDefaultFeatures = true;
    buildFeatures = [ "alsa-backend" "pw-backend" ];
    nativeBuildInputs = [ pkg-config platform.bindgenHook ];
    buildInputs = [ alsa-lib pipewire ];
    # Its tests need a running PipeWire and ALSA devices.
    doCheck = false;
    meta = metaFor "virtio-sound device over vhost-user" // { mainProgram = pname; };
  };

  vhost-device-vsock = platform.buildRustPackage rec {
    pname = "vhost-device-vsock";
    version = "0.3.0";
    src = crate pname version "52ce95d81af89ad693d067c650e42df0f217addfbc96cc4820f7c62eb4a28b13";
    cargoLock.lockFile = ./vhost-device-vsock.Cargo.lock;
    doCheck = false;
    meta = metaFor "virtio-vsock device over vhost-user (hybrid vsock on a unix socket)" // { mainProgram = pname; };
  };
}
