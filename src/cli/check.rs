//! `imgbuild check`: loads and validates every recipe and the image definition.

use crate::error::{escape, Result};
use crate::project::Project;

use super::GlobalArgs;

#[derive(clap::Args)]
pub struct CheckArgs {
    /// The image definition: a name in images/ or a path [default: the only one]
    #[arg(long, value_name = "NAME")]
    pub image: Option<String>,
}

pub(super) fn run(global: &GlobalArgs, args: &CheckArgs) -> Result<()> {
    let project = Project::load(&global.project, args.image.as_deref())?;
    let def = &project.image;
    if global.json {
        let recipes: Vec<_> = project
            .recipes
            .values()
            .map(|r| serde_json::json!({ "name": r.name, "version": r.version, "platforms": r.platforms(), "file": r.file, "homepage": r.homepage, "license": r.license }))
            .collect();
        super::print_json(&serde_json::json!({
            "image": def.name,
            "recipes": recipes,
            "layers": def.layers.iter().map(|r| &r.name).collect::<Vec<_>>(),
            "base": def.base.as_ref().map(|b| &b.name),
            "nodes": def.nodes,
        }))?;
        return Ok(());
    }
    // Parsing refused control characters already; what reaches a terminal is escaped anyway.
    for r in project.recipes.values() {
        outln!("recipe {} {} [{}]", escape(&r.name), escape(&r.version), escape(&r.platforms().join(", ")))?;
    }
    let layers: Vec<&str> = def.layers.iter().map(|r| r.name.as_str()).collect();
    let line = format!(
        "image {}: base {}, layers {}",
        def.name,
        def.base.as_ref().map_or("none", |b| b.name.as_str()),
        layers.join(" → ")
    );
    outln!("{}", escape(&line))?;
    for n in &def.nodes {
        outln!("node {} at {}", n.id, escape(&n.host))?;
    }
    Ok(())
}
