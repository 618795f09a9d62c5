use clap::Parser;

use imgbuild::cli::{self, Cli};
use imgbuild::error::ExitCode;

fn main() {
    let cli = Cli::parse();
    let json = cli.global.json;
    let code = match cli::run(cli) {
        Ok(()) => ExitCode::Ok,
        Err(e) => {
            cli::report_error(&e, json);
            e.exit_code()
        }
    };
    std::process::exit(code as i32);
}
