{
  description = "imgbuild: reproducible OCI images and VM disks for clusters whose every input is pinned";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      # The tools the integration tests drive; they run on loopback only, which the Nix sandbox allows.
      testTools = pkgs: [ pkgs.skopeo pkgs.umoci ];
    in
    {
      packages = forAllSystems (pkgs: rec {
        imgbuild = pkgs.rustPlatform.buildRustPackage {
          pname = "imgbuild";
          version = (builtins.fromTOML (builtins.readFile ./Cargo.toml)).package.version;
          src = pkgs.lib.cleanSource ./.;
          cargoLock.lockFile = ./Cargo.lock;
          nativeCheckInputs = testTools pkgs;
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
