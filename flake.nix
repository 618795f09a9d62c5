{
  description = "imgbuild: reproducible OCI images and VM disks for clusters whose every input is pinned";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      # The tools the integration tests drive, as `.ci/install` lists them for Debian (Podman runs
      # containers only where the host allows it; the validators' Python venv is `.ci/install`'s).
      testTools = pkgs: with pkgs; [
        skopeo umoci docker-distribution openssl shellcheck  # images, registry, TLS, the entrypoint's lint
        dash zsh fish man-db                                 # the shells and man the tests run under (busybox: the
                                                             # host's; its applets would shadow coreutils here)
        podman podman-compose docker-compose                 # node images as containers, compose files
        xz bzip2 zstd pigz time                              # the layer tests' sources; the bench's baselines
        e2fsprogs xorriso qemu libvirt libxml2 cloud-init    # VM disks, seeds, templates and their validators
        python3                                              # the Kubernetes, SPDX and CycloneDX validators' venv
      ];
    in
    {
      packages = forAllSystems (pkgs: rec {
        imgbuild = pkgs.rustPlatform.buildRustPackage {
          pname = "imgbuild";
          version = (builtins.fromTOML (builtins.readFile ./Cargo.toml)).package.version;
          src = pkgs.lib.cleanSource ./.;
          cargoLock.lockFile = ./Cargo.lock;
          # In the sandbox: the unit and property tests. The integration suite needs root, mounts,
          # Podman and qemu; `nix develop` then `cargo test` runs it, as `.ci/run` does.
          cargoTestFlags = [ "--lib" ];
          # The layer tests compress their sources with the reference tools; the compressor tests
          # run again under qemu-x86_64 as a CPU without SSE4, AVX2, BMI2 or SHA.
          nativeCheckInputs = [ pkgs.xz pkgs.bzip2 pkgs.zstd ]
            ++ pkgs.lib.optional pkgs.stdenv.hostPlatform.isx86_64 pkgs.qemu;
          meta = {
            description = "Reproducible, Nix-style OCI image and VM disk builder";
            license = pkgs.lib.licenses.asl20;
            mainProgram = "imgbuild";
          };
        };
        default = imgbuild;
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.imgbuild ];
          packages = (testTools pkgs) ++ [ pkgs.cargo pkgs.rustc pkgs.rustfmt pkgs.clippy pkgs.rust-analyzer ];
        };
      });
    };
}
