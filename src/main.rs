use clap::Parser;

use imgbuild::cli::{self, Cli};
use imgbuild::error::{printable, ExitCode};

fn main() {
    let cli = Cli::parse();
    let json = cli.global.json;
    let code = match cli::run(cli) {
        Ok(()) => ExitCode::Ok,
        Err(e) => {
            eprintln!("error: {}", printable(&e.to_string()));
            if let Some(hint) = e.hint() {
                eprintln!("hint: {}", printable(&hint));
            }
            if json {
                let missing = match &e {
                    imgbuild::error::Error::MissingInputs(m) => serde_json::to_value(m).unwrap_or_default(),
                    _ => serde_json::Value::Null,
                };
                cli::print_json(
                    &serde_json::json!({ "error": e.to_string(), "exit_code": e.exit_code() as i32, "missing": missing }),
                );
            }
            e.exit_code()
        }
    };
    std::process::exit(code as i32);
}
