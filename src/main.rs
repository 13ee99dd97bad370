//! The `botdb` command: migrations, schema check, demo. See `botdb --help`.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
