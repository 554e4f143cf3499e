//! `pam-lite ssh --ticket t.json [ssh args]`: the system's ssh with pam-lite as its ProxyCommand (as
//! `tsh ssh` and `boundary connect ssh` do), so users keep their ssh config, agent, keys and scp habits.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

use crate::args::{Runtime, SshArgs};
use crate::exit::CliError;
use crate::ticket::Ticket;

/// Environment variable naming the ssh program (default `ssh` from PATH).
pub const SSH_PROGRAM_ENV: &str = "PAM_LITE_SSH";

/// Quote `text` for the POSIX shell ssh runs its ProxyCommand with, and escape `%` (ssh expands `%h`,
/// `%p`, ... in ProxyCommand; `%%` is a literal percent sign).
pub fn proxy_quote(text: &OsStr) -> String {
    let s = String::from_utf8_lossy(text.as_bytes()).replace('%', "%%");
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The ProxyCommand that carries ssh's connection: this same binary, `tunnel --stdio`, the flags that
/// change how the tunnel is opened.
pub fn proxy_command(exe: &Path, ticket: &Path, args: &SshArgs) -> String {
    let mut parts = vec![
        proxy_quote(exe.as_os_str()),
        "tunnel".to_string(),
        "--stdio".to_string(),
        "--ticket".to_string(),
        proxy_quote(ticket.as_os_str()),
        "--runtime".to_string(),
        match args.common.runtime {
            Runtime::Smol => "smol".to_string(),
            Runtime::Blocking => "blocking".to_string(),
        },
        "--profile".to_string(),
        proxy_quote(OsStr::new(&args.common.profile)),
    ];
    if args.common.no_trickle_ice {
        parts.push("--no-trickle-ice".into());
    }
    if let Some(addr) = args.common.udp_bind {
        parts.push("--udp-bind".into());
        parts.push(addr.to_string());
    }
    if args.common.timing {
        parts.push("--timing".into());
    }
    if let Some(p) = &args.common.timing_json {
        parts.push("--timing-json".into());
        parts.push(proxy_quote(p.as_os_str()));
    }
    if args.common.verbose > 0 {
        parts.push(format!(
            "-{}",
            "v".repeat(usize::from(args.common.verbose.min(3)))
        ));
    }
    parts.join(" ")
}

/// Replace this process with ssh (returns only if ssh cannot be started).
pub fn run(args: &SshArgs) -> Result<(), CliError> {
    // Validate first: a bad ticket is clearer here than as a ProxyCommand failure inside ssh.
    let ticket = Ticket::load(&args.ticket)?;
    let ticket_path = std::fs::canonicalize(&args.ticket)
        .map_err(|e| CliError::local(format!("cannot resolve {}", args.ticket.display()), e))?;
    let exe = std::env::current_exe()
        .map_err(|e| CliError::local("cannot find the pam-lite executable", e))?;
    let program = std::env::var_os(SSH_PROGRAM_ENV).unwrap_or_else(|| OsString::from("ssh"));
    let mut cmd = std::process::Command::new(&program);
    cmd.arg("-o").arg(format!(
        "ProxyCommand={}",
        proxy_command(&exe, &ticket_path, args)
    ));
    if args.ssh_args.is_empty() {
        // No destination given: the ticket's target, as the user the record logs in with.
        let Some(target) = &ticket.target else {
            return Err(CliError::Usage(
                "the ticket has no target: give ssh a destination ([user@]host)".into(),
            ));
        };
        let user = ticket
            .guacd_params
            .0
            .get("username")
            .and_then(|v| v.as_str())
            .filter(|u| !u.is_empty());
        cmd.arg("-p").arg(target.port.to_string());
        cmd.arg(match user {
            Some(u) => format!("{u}@{}", target.host),
            None => target.host.clone(),
        });
    } else {
        cmd.args(&args.ssh_args);
    }
    tracing::info!(program = ?program, "running ssh");
    let err = cmd.exec();
    Err(CliError::local(
        format!("cannot run {}", Path::new(&program).display()),
        err,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_the_shell_and_ssh_percent_expansion() {
        assert_eq!(proxy_quote(OsStr::new("/a b/t.json")), "'/a b/t.json'");
        assert_eq!(proxy_quote(OsStr::new("it's")), r"'it'\''s'");
        assert_eq!(proxy_quote(OsStr::new("100%")), "'100%%'");
    }
}
