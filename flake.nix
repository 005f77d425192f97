{
  description = "vmbuild: build kernels, root images and test bundles; test them in VMs";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.05";

  outputs = { self, nixpkgs }:
    let
      system = "x86_64-linux";
      pkgs = nixpkgs.legacyPackages.${system};
      runtime = with pkgs; [ qemu_kvm busybox e2fsprogs cpio dpkg apt gnumake gcc flex bison bc elfutils openssl perl xz ];
    in {
      packages.${system}.default = pkgs.rustPlatform.buildRustPackage {
        pname = "vmbuild";
        version = "0.1.0";
        src = ./.;
        cargoLock.lockFile = ./Cargo.lock;
        # The integration tests boot VMs and fetch Debian packages: run them outside the sandbox.
        doCheck = false;
      };
      devShells.${system}.default = pkgs.mkShell {
        packages = runtime ++ (with pkgs; [ cargo rustc clippy rustfmt hyperfine python3Packages.junitparser ]);
      };
    };
}
