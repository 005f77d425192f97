{
  description = "vmbuild: build kernels, root images and test bundles from TOML recipes into a content-addressed store, then boot them in VMs and run tests";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      cargoToml = builtins.fromTOML (builtins.readFile ./Cargo.toml);
    in
    {
      packages = forAllSystems (pkgs: {
        default = pkgs.rustPlatform.buildRustPackage {
          pname = cargoToml.package.name;
          version = cargoToml.package.version;
          src = ./.;
          cargoLock.lockFile = ./Cargo.lock;
          # The test suite boots VMs and builds a kernel from source: run it in the dev
          # shell (`cargo test --release`), not in the sandbox.
          doCheck = false;
          meta = {
            description = cargoToml.package.description;
            license = with pkgs.lib.licenses; [ mit asl20 ];
            mainProgram = "vmbuild";
          };
        };
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.default ];
          packages = with pkgs; [
            cargo rustc clippy rustfmt
            # Booting: qemu (every system emulator, aarch64's too, and qemu-img), UEFI
            # firmware for disk images.
            qemu OVMF
            # Root images: Debian roots, ext4 and cpio images, busybox, compression.
            mmdebstrap dpkg apt e2fsprogs busybox cpio xz zstd
            # Bootable disks: the ESP's FAT, and objcopy for the unified kernel image.
            dosfstools mtools binutils
            # The kernel's own build, and the cross compiler for arm64 guests' kernels
            # (aarch64-unknown-linux-gnu-gcc, which vmbuild uses where Debian's
            # aarch64-linux-gnu-gcc is not on PATH).
            gnumake gcc flex bison bc elfutils openssl perl
            pkgsCross.aarch64-multiplatform.buildPackages.gcc
            # The tests and benchmarks.
            nginx hyperfine rsync git python3 python3Packages.junitparser
          ];
        };
      });
    };
}
