//! `imgbuild doctor [FEATURE…]`: what this host has of what each feature needs ([`crate::host`]'s
//! table), as a table for people or JSON for scripts; exit 1 when a feature asked about is not
//! ready.

use std::path::Path;

use crate::error::{Error, Result};
use crate::host::{self, Checked, Feature, Report, Status};

use super::GlobalArgs;

#[derive(clap::Args)]
pub struct DoctorArgs {
    /// The features to check [default: every one but `tests`]
    #[arg(value_name = "FEATURE", value_parser = feature_parser())]
    pub features: Vec<Feature>,
}

fn feature_parser() -> impl clap::builder::TypedValueParser<Value = Feature> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(Feature::names())
        .map(|name| name.parse::<Feature>().expect("a listed name"))
}

/// The probes' context: the store this command line names, the kernel `imgbuild vm` would use.
pub(crate) fn context(global: &GlobalArgs, probe: bool) -> host::Context {
    let (boot, _) = crate::output::vm::default_boot(Path::new("/boot"));
    host::Context {
        store: global.store.clone().unwrap_or_else(crate::store::Store::default_root),
        kernel: boot.kernel.into(),
        initrd: boot.initrd.into(),
        probe,
    }
}

pub(super) fn run(global: &GlobalArgs, args: &DoctorArgs) -> Result<()> {
    let mut features = if args.features.is_empty() { Feature::user() } else { args.features.clone() };
    features.sort();
    features.dedup();
    let report = host::check(&features, &context(global, true));
    if global.json {
        super::print_json(&serde_json::to_value(&report).map_err(|e| Error::Internal(e.to_string()))?)?;
    } else {
        print_table(&report)?;
    }
    if report.ready {
        Ok(())
    } else {
        Err(Error::NotReady)
    }
}

fn status_word(c: &Checked) -> &'static str {
    if c.instead.is_some() {
        return "not needed";
    }
    match c.status {
        Status::Found => "found",
        Status::Missing => "MISSING",
        Status::Broken => "BROKEN",
        Status::Advice => "advice",
        Status::Untried => "UNTRIED",
    }
}

/// What is said below a need's line: where it was looked for, what was found or why not; for an
/// alternative that is not needed, which one was found instead.
fn said(c: &Checked) -> String {
    let found: Vec<&str> = [c.path.as_deref(), c.detail.as_deref()].into_iter().flatten().collect();
    match c.instead {
        Some(other) if found.is_empty() => format!("not needed: {other} found (either will do)"),
        Some(other) => format!("not needed: {other} found (either will do); {}", found.join(": ")),
        None => found.join(": "),
    }
}

fn print_table(report: &Report) -> Result<()> {
    let width = report.needs.iter().map(|c| c.need.len()).max().unwrap_or(4).max(4);
    let vwidth = report.needs.iter().map(|c| c.version.as_deref().map_or(0, str::len)).max().unwrap_or(0).max(7);
    let pwidth = report.needs.iter().map(|c| c.package.len()).max().unwrap_or(0).max(7);
    let swidth = report.needs.iter().map(|c| status_word(c).len()).max().unwrap_or(0).max(6);
    outln!("{:<swidth$}  {:<width$}  {:<vwidth$}  {:<pwidth$}  NEEDED BY", "STATUS", "NEED", "VERSION", "PACKAGE")?;
    for c in &report.needs {
        let version = c.version.as_deref().unwrap_or("-");
        let package = if c.package.is_empty() { "-" } else { c.package };
        let status = status_word(c);
        outln!("{status:<swidth$}  {:<width$}  {version:<vwidth$}  {package:<pwidth$}  {}", c.need, c.commands)?;
        let said = said(c);
        if !said.is_empty() {
            outln!("{:<swidth$}  {said}", "")?;
        }
    }
    outln!("")?;
    for f in &report.features {
        match f.ready {
            true => outln!("{}: ready", f.feature)?,
            false => outln!("{}: NOT READY: {}", f.feature, f.missing.join("; "))?,
        }
    }
    let mut packages: Vec<&str> = report.features.iter().flat_map(|f| f.packages.iter().copied()).collect();
    packages.sort_unstable();
    packages.dedup();
    if !packages.is_empty() {
        outln!("install (Debian and Ubuntu): apt-get install {}", packages.join(" "))?;
    }
    Ok(())
}
