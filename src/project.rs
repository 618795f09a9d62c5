//! A project: the directory holding `recipes/` and `images/`, loaded in one place for every
//! command (builds, `check`, `store add` and `store gc`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::image_def::ImageDef;
use crate::recipe::{self, Recipe};

/// A project's recipes and one of its image definitions.
pub struct Project {
    pub recipes: BTreeMap<String, Recipe>,
    pub image: ImageDef,
}

impl Project {
    /// Loads `DIR/recipes/*.toml` and the image `name` (or the only one) of `DIR/images/`.
    pub fn load(dir: &Path, image: Option<&str>) -> Result<Project> {
        let images_dir = dir.join("images");
        if !images_dir.is_dir() {
            return Err(Error::Usage(format!(
                "{} has no images/ directory; run imgbuild in a project (or pass --project DIR)",
                dir.display()
            )));
        }
        let recipes = Project::recipes_in(dir)?;
        let path = image_path(&images_dir, image)?;
        let image = ImageDef::load(&path, &recipes)?;
        Ok(Project { recipes, image })
    }

    /// The recipes of the project at `dir`, by name; none when it has no `recipes/` (so that
    /// `store add` and `store gc` work outside a project too).
    pub fn recipes_in(dir: &Path) -> Result<BTreeMap<String, Recipe>> {
        let recipes_dir = dir.join("recipes");
        if recipes_dir.is_dir() {
            recipe::load_dir(&recipes_dir)
        } else {
            Ok(BTreeMap::new())
        }
    }
}

/// The definition `--image` names: a name in `images/`, a path, or the only definition there is.
fn image_path(images_dir: &Path, image: Option<&str>) -> Result<PathBuf> {
    let path = match image {
        Some(name) if name.ends_with(".toml") || name.contains('/') => PathBuf::from(name),
        Some(name) => images_dir.join(format!("{name}.toml")),
        None => {
            let all = crate::toml_file::toml_files_in(images_dir)?;
            match all.as_slice() {
                [only] => only.clone(),
                _ => {
                    let names: Vec<String> =
                        all.iter().filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned())).collect();
                    return Err(Error::Usage(format!("choose an image with --image (one of: {})", names.join(", "))));
                }
            }
        }
    };
    if !path.is_file() {
        return Err(Error::Usage(format!("no image definition at {}", path.display())));
    }
    Ok(path)
}
