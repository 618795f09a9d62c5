//! `imgbuild load`: node images into the local Podman or Docker, streamed as a docker-archive
//! into `podman load` / `docker load` (no archive file is written).

use std::io::{BufWriter, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::build::build;
use crate::error::{Error, Result};
use crate::output::archive;
use crate::project::Project;
use crate::registry::Reference;

use super::build::ImageChoice;
use super::GlobalArgs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    Podman,
    Docker,
}

impl Engine {
    fn program(self) -> &'static str {
        match self {
            Engine::Podman => "podman",
            Engine::Docker => "docker",
        }
    }

    /// The Debian package that installs it (from the host's table).
    fn package(self) -> &'static str {
        crate::host::package_of(self.program())
    }
}

#[derive(clap::Args)]
pub struct LoadArgs {
    /// The container engine to load into
    #[arg(long, value_enum, default_value = "podman")]
    pub engine: Engine,
    /// Load this node's image only [default: every node, and the node-less `cluster` image]
    #[arg(long)]
    pub id: Option<u32>,
    #[command(flatten)]
    pub choice: ImageChoice,
}

pub(super) fn run(global: &GlobalArgs, args: &LoadArgs) -> Result<()> {
    let settings = super::build::settings(global, &args.choice)?;
    if settings.platforms.len() != 1 {
        return Err(Error::Usage("an engine loads one platform; pass a single --platform".into()));
    }
    let project = Project::load(&global.project, args.choice.image.as_deref())?;
    let def = &project.image;
    if let Some(id) = args.id {
        def.node(id)?;
    }
    let repository = format!("localhost/{}", def.name);
    repository
        .parse::<Reference>()
        .map_err(|e| Error::Usage(format!("the image name `{}` cannot name an engine's image: {e}", def.name)))?;
    // Before the build, which can take minutes: the engine must be there to load into.
    crate::host::require_program(args.engine.program(), "imgbuild load")?;
    let store = global.open_store()?;
    let _building = store.build_lock_shared()?;
    let reporter = global.reporter();
    let nodes: Vec<u32> = args.id.into_iter().collect();
    let result = build(&store, def, &nodes, &settings, reporter.as_ref())?;
    let images = match args.id {
        Some(_) => result.nodes.iter().map(|n| n.image.clone()).collect(),
        None => result.images(),
    };
    reporter.status(&format!("loading {} image(s) into {}", images.len(), args.engine.program()));
    // A docker-archive alone: both engines read it, and take the names from its manifest.json.
    stream_into(args.engine, |stdin, what| {
        let out = BufWriter::with_capacity(256 * 1024, stdin);
        archive::write_to(&store, out, what, &images, Some(&repository), false, settings.layer.epoch).map(drop)
    })?;
    let loaded: Vec<serde_json::Value> = images
        .iter()
        .map(|img| {
            serde_json::json!({
                "reference": format!("{repository}:{}", img.tag),
                "digest": img.digest.to_string(),
                "config_digest": img.platforms.first().map(|p| p.config_digest.to_string()),
            })
        })
        .collect();
    if global.json {
        super::print_json(&serde_json::json!({ "engine": args.engine.program(), "loaded": loaded }))?;
    } else {
        // The image ID the engine shows (`podman images`, `docker images`) is the config's digest.
        for l in &loaded {
            outln!(
                "{}\t{}",
                l["reference"].as_str().unwrap_or_default(),
                l["config_digest"].as_str().unwrap_or_default()
            )?;
        }
    }
    Ok(())
}

/// Runs `ENGINE load` with `write` streaming the archive into its standard input; the engine's
/// own messages are kept for the error when it fails.
fn stream_into(engine: Engine, write: impl FnOnce(std::process::ChildStdin, &Path) -> Result<()>) -> Result<()> {
    let program = engine.program();
    let mut child = Command::new(program)
        .arg("load")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::tool(program, engine.package(), format!("cannot run `{program} load`: {e}")))?;
    let stdin = child.stdin.take().ok_or_else(|| Error::Internal("the engine's stdin is piped".into()))?;
    let output = drain(&mut child);
    let written = write(stdin, Path::new(&format!("`{program} load`")));
    let status = child.wait().map_err(|e| Error::tool(program, engine.package(), e.to_string()))?;
    let (stdout, stderr) = output.join().unwrap_or_default();
    if !status.success() {
        let said = if stderr.trim().is_empty() { stdout } else { stderr };
        return Err(Error::tool(
            program,
            engine.package(),
            format!("`{program} load` failed ({status}): {}", crate::error::escape(said.trim())),
        ));
    }
    // The engine took everything it read and succeeded, but the archive did not reach it whole.
    written
}

/// Reads the child's stdout and stderr on a thread, so that neither pipe fills while the
/// archive is being written.
fn drain(child: &mut Child) -> std::thread::JoinHandle<(String, String)> {
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    std::thread::spawn(move || {
        let err_reader = std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(e) = err.as_mut() {
                let _ = e.read_to_string(&mut text);
            }
            text
        });
        let mut text = String::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_string(&mut text);
        }
        (text, err_reader.join().unwrap_or_default())
    })
}
