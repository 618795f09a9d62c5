//! `verify`'s rebuild: the image a provenance describes, built again from the files it
//! carries and the inputs it pins. It sits above `build`, which it runs; the documents it reads
//! and the comparison stay below, in `supply`.

use crate::build::{build, BuildSettings};
use crate::error::{Error, Result};
use crate::image::StoredImage;
use crate::progress::Reporter;
use crate::project::Project;
use crate::store::Store;
use crate::supply::provenance::{self, Provenance};
use crate::supply::verify::TempProject;

/// Builds the image the provenance describes, from the files it carries and the inputs it pins.
pub(crate) fn rebuild(
    store: &Store,
    provenance: &Provenance,
    settings: &BuildSettings,
    reporter: &dyn Reporter,
) -> Result<StoredImage> {
    let dir = TempProject::create("verify")?;
    let definition = provenance::materialize(provenance, dir.path())?;
    let project = Project::load(dir.path(), Some(&definition.to_string_lossy()))?;
    let nodes: Vec<u32> = provenance.node.into_iter().collect();
    let result = build(store, &project.image, &nodes, settings, reporter)?;
    let image = match provenance.node {
        Some(id) => result.nodes.into_iter().find(|n| n.node.id == id).map(|n| n.image),
        None => Some(result.cluster),
    };
    image.ok_or_else(|| Error::Internal("the rebuild has no image for the provenance's node".into()))
}
