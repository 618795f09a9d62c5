//! `imgbuild completions SHELL` and `imgbuild man`: shell completions and manual pages,
//! generated from the clap definition the parser itself uses, so they list exactly the
//! commands and options there are.

use std::path::PathBuf;

use clap::CommandFactory;

use crate::error::{Error, IoContext, Result};

use super::Cli;

#[derive(clap::Args)]
pub struct CompletionsArgs {
    /// The shell (load the output with `source <(imgbuild completions bash)`, or save it where
    /// the shell reads completions)
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(clap::Args)]
pub struct ManArgs {
    /// The command whose page to print (imgbuild-COMMAND(1)) [default: imgbuild(1)]
    #[arg(value_name = "COMMAND", conflicts_with = "dir")]
    pub command: Option<String>,
    /// Write imgbuild.1 and a page per command (imgbuild-build.1, …) into DIR instead
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// The command line as clap defines it, without the `help` pseudo-command.
fn command() -> clap::Command {
    Cli::command().disable_help_subcommand(true)
}

pub(super) fn completions(args: &CompletionsArgs) -> Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command(), "imgbuild", &mut script);
    super::write_stdout(&script)
}

pub(super) fn man(args: &ManArgs) -> Result<()> {
    if let Some(dir) = &args.dir {
        std::fs::create_dir_all(dir).at(dir)?;
        return clap_mangen::generate_to(command(), dir).at(dir);
    }
    let mut cmd = command();
    if let Some(name) = &args.command {
        // Built, so that the page shows the global options and `imgbuild-NAME` as its title.
        cmd.build();
        cmd = cmd.find_subcommand(name).cloned().ok_or_else(|| {
            let all = command();
            let names: Vec<&str> = all.get_subcommands().map(|c| c.get_name()).collect();
            Error::Usage(format!("no command `{}` (commands: {})", crate::error::escape(name), names.join(", ")))
        })?;
    }
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut page).map_err(|e| Error::Internal(format!("man page: {e}")))?;
    super::write_stdout(&page)
}
