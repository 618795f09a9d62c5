//! `imgbuild init [DIR]`: a project to start from: recipes for a base image, a Java runtime and
//! ZooKeeper, and an image definition of three nodes with its templates. It passes `imgbuild
//! check` as written, and never replaces a file that exists.

use std::path::{Path, PathBuf};

use crate::error::{escape, Error, IoContext, Result};

use super::GlobalArgs;

#[derive(clap::Args)]
pub struct InitArgs {
    /// The project directory to write (created if needed) [default: --project, or .]
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The image's name [default: from the directory's name]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
}

/// The skeleton: (path under the project, text), `@NAME@` standing for the image's name.
const SKELETON: &[(&str, &str)] = &[
    ("recipes/base.toml", include_str!("../assets/init/recipes/base.toml")),
    ("recipes/jdk.toml", include_str!("../assets/init/recipes/jdk.toml")),
    ("recipes/zookeeper.toml", include_str!("../assets/init/recipes/zookeeper.toml")),
    ("images/@NAME@.toml", include_str!("../assets/init/images/cluster.toml")),
    ("images/@NAME@/zoo.cfg", include_str!("../assets/init/images/cluster/zoo.cfg")),
    ("images/@NAME@/myid", include_str!("../assets/init/images/cluster/myid")),
];

/// The skeleton's files for an image called `name`.
pub(super) fn skeleton(name: &str) -> Vec<(PathBuf, String)> {
    SKELETON
        .iter()
        .map(|(path, text)| (PathBuf::from(path.replace("@NAME@", name)), text.replace("@NAME@", name)))
        .collect()
}

pub(super) fn run(global: &GlobalArgs, args: &InitArgs) -> Result<()> {
    let dir = args.dir.clone().unwrap_or_else(|| global.project.clone());
    let name = image_name(&dir, args.name.as_deref())?;
    let files = skeleton(&name);
    let existing: Vec<String> = files
        .iter()
        .map(|(rel, _)| dir.join(rel))
        .filter(|p| p.symlink_metadata().is_ok())
        .map(|p| escape(&p.display().to_string()))
        .collect();
    if !existing.is_empty() {
        return Err(Error::Usage(format!(
            "not writing a project over existing files: {} (choose another directory)",
            existing.join(", ")
        )));
    }
    write_all(&dir, &files)?;
    let written: Vec<String> = files.iter().map(|(rel, _)| rel.display().to_string()).collect();
    if global.json {
        super::print_json(&serde_json::json!({ "dir": dir, "image": name, "files": written }))?;
    } else if !global.quiet {
        errln!("wrote {} in {}", written.join(", "), escape(&dir.display().to_string()));
        errln!("{}", next_steps(&dir, &name));
    }
    Ok(())
}

/// The image's name: `--name`, or the directory's name made into one.
fn image_name(dir: &Path, chosen: Option<&str>) -> Result<String> {
    if let Some(name) = chosen {
        let valid = name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
            && !name.trim_matches('.').is_empty();
        if !valid {
            return Err(Error::Usage(format!("--name `{}`: use only a-z, 0-9, `.`, `_`, `-`", escape(name))));
        }
        return Ok(name.to_string());
    }
    let absolute = std::path::absolute(dir).at(dir)?;
    let from_dir = absolute
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .next_back()
        .map(|n| crate::pin::name::clean_name(&n))
        .filter(|n| !n.is_empty());
    Ok(from_dir.unwrap_or_else(|| "cluster".into()))
}

/// Creates every file (never over an existing one); on a failure, removes the ones it made.
fn write_all(dir: &Path, files: &[(PathBuf, String)]) -> Result<()> {
    // The directory named is the user's; below it, a link anywhere is refused before any write.
    std::fs::create_dir_all(dir).at(dir)?;
    for (rel, _) in files {
        crate::tree_path::refuse_links(dir, rel)?;
    }
    let mut made: Vec<PathBuf> = Vec::new();
    let result = files.iter().try_for_each(|(rel, text)| {
        let path = dir.join(rel);
        let parent = rel.parent().expect("skeleton paths have a parent");
        crate::tree_path::make_dirs(dir, parent)?;
        crate::atomic_file::write(&path, text.as_bytes(), crate::atomic_file::Options::NEW)?;
        made.push(path.clone());
        Ok(())
    });
    if result.is_err() {
        for path in &made {
            let _ = std::fs::remove_file(path);
        }
    }
    result
}

fn next_steps(dir: &Path, name: &str) -> String {
    let cd =
        if dir == Path::new(".") { String::new() } else { format!("\n  cd {}", escape(&dir.display().to_string())) };
    format!(
        "next:{cd}
  imgbuild check                                       # valid as written: base image, Java, ZooKeeper, three nodes
  imgbuild recipe --add --update recipes/NAME.toml FILE  # pin a file you have instead (README: \"Your own cluster\")
  imgbuild build                                       # one image per node in out/{name}
then put your hosts in images/{name}.toml"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The skeleton is a valid project, and pins exactly what the built-in example pins (so its
    /// hashes are the publishers', and cannot drift from the example's).
    #[test]
    fn the_skeleton_loads_and_pins_what_the_example_pins() {
        let dir = tempfile::tempdir().unwrap();
        write_all(dir.path(), &skeleton("zk")).unwrap();
        let project = crate::project::Project::load(dir.path(), None).unwrap();
        assert_eq!(project.image.name, "zk");
        assert_eq!(project.image.nodes.len(), 3);
        let example = crate::recipe::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes")).unwrap();
        for (ours, theirs) in [("base", "debian-bookworm-slim"), ("jdk", "temurin-jdk8"), ("zookeeper", "zookeeper")] {
            let pins = |r: &crate::recipe::Recipe| -> Vec<(Option<String>, String)> {
                r.sources.iter().map(|s| (s.platform.as_ref().map(|p| p.to_string()), s.hash.to_string())).collect()
            };
            assert_eq!(pins(&project.recipes[ours]), pins(&example[theirs]), "{ours}");
        }
    }

    #[test]
    fn names_come_from_the_directory() {
        assert_eq!(image_name(Path::new("/srv/My Cluster"), None).unwrap(), "my-cluster");
        assert_eq!(image_name(Path::new("/"), None).unwrap(), "cluster");
        assert!(image_name(Path::new("x"), Some("..")).is_err());
        assert!(image_name(Path::new("x"), Some("Big")).is_err());
    }
}
