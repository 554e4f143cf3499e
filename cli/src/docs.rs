//! `pam-lite completions SHELL` and `pam-lite man`: generated from the clap definitions at run time, so
//! they always match the binary that prints them.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;

use crate::args::Cli;
use crate::exit::CliError;

/// The completion script for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell) -> Result<(), CliError> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "pam-lite", &mut out);
    write_stdout(&out)
}

/// `pam-lite.1` on stdout, or every page (one per command) into `dir`.
pub fn man(dir: Option<&Path>) -> Result<(), CliError> {
    let cmd = Cli::command();
    match dir {
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .map_err(|e| CliError::local("cannot render the man page", e))?;
            write_stdout(&out)
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| CliError::local(format!("cannot create {}", dir.display()), e))?;
            clap_mangen::generate_to(cmd, dir)
                .map_err(|e| CliError::local(format!("cannot write into {}", dir.display()), e))?;
            eprintln!("pam-lite: man pages written to {}", dir.display());
            Ok(())
        }
    }
}

fn write_stdout(bytes: &[u8]) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| CliError::local("cannot write to stdout", e))
}
