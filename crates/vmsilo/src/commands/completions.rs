//! `vmsilo completions <shell> --out DIR`, `vmsilo man --out DIR` and `vmsilo list-vms`: shell
//! completion and man pages from the clap definition, for `vmsilo` and every `vm-*` name.
//!
//! bash completion also completes VM names: each script wraps clap's completion function and
//! offers `vmsilo list-vms` (the configured VMs, read when Tab is pressed) where a VM argument
//! goes. zsh and fish get clap's static completion.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell as Generator;

use crate::CliError;
use crate::cli::{self, CompletionsArgs, ManArgs, Shell};
use crate::config_file;

/// Subcommands of `vmsilo` whose first positional argument is a VM.
const VM_SUBCOMMANDS: &[&str] = &[
    "plan",
    "status",
    "run",
    "command-service",
    "start",
    "stop",
    "start-debug",
    "shell",
    "vm-service",
];

/// The commands that get completion scripts: `vmsilo` and the interactive multi-call names.
fn commands() -> Vec<(String, clap::Command)> {
    let mut out = vec![("vmsilo".to_owned(), cli::Cli::command())];
    for (name, _) in cli::MULTI_CALL {
        if *name == "vmsilo-generator" {
            continue;
        }
        if let Some(cmd) = cli::multi_call_command(name) {
            out.push(((*name).to_owned(), cmd));
        }
    }
    out
}

/// Long options (anywhere in the definition) that take a value: the completion must skip
/// their values when it looks for the VM argument.
fn options_with_values() -> BTreeSet<String> {
    fn walk(cmd: &clap::Command, out: &mut BTreeSet<String>) {
        for a in cmd.get_arguments() {
            if a.get_action().takes_values() {
                if let Some(l) = a.get_long() {
                    out.insert(format!("--{l}"));
                }
                if let Some(s) = a.get_short() {
                    out.insert(format!("-{s}"));
                }
            }
        }
        for s in cmd.get_subcommands() {
            walk(s, out);
        }
    }
    let mut out = BTreeSet::new();
    walk(&cli::Cli::command(), &mut out);
    out
}

fn ident(name: &str) -> String {
    name.replace('-', "_")
}

/// The bash wrapper that completes VM names for `name`, around clap's function `_<name>`.
fn bash_vm_names(name: &str) -> String {
    let opts: Vec<String> = options_with_values().into_iter().collect();
    let id = ident(name);
    let subs = VM_SUBCOMMANDS.join("|");
    let (first, subcommand_check) = if name == "vmsilo" {
        (
            "$sub_index + 1",
            format!(
                "    case ${{COMP_WORDS[sub_index]}} in\n        {subs}) ;;\n        *) return 1 ;;\n    esac\n"
            ),
        )
    } else {
        ("1", String::new())
    };
    let find_sub = if name == "vmsilo" {
        format!(
            "    local sub_index\n    sub_index=$(__vmsilo_{id}_next_positional 1) || return 1\n    (( sub_index < COMP_CWORD )) || return 1\n"
        )
    } else {
        String::new()
    };
    format!(
        r#"
# vmsilo: VM names from the configuration (`vmsilo list-vms`), where a VM argument goes.
__vmsilo_{id}_next_positional() {{
    local i skip=0
    for ((i = $1; i < COMP_CWORD; i++)); do
        if ((skip)); then skip=0; continue; fi
        case ${{COMP_WORDS[i]}} in
            {opts}) skip=1 ;;
            --*=*|-*) ;;
            *) echo "$i"; return 0 ;;
        esac
    done
    ((skip)) && return 2
    echo "$COMP_CWORD"
    return 1
}}
__vmsilo_{id}_wants_vm() {{
{find_sub}{subcommand_check}    local pos
    pos=$(__vmsilo_{id}_next_positional $(( {first} )))
    (( $? == 1 && pos == COMP_CWORD )) || return 1
    [[ ${{COMP_WORDS[COMP_CWORD]}} != -* ]]
}}
__vmsilo_{id}_complete() {{
    if __vmsilo_{id}_wants_vm; then
        local config=()
        [[ -n ${{VMSILO_CONFIG-}} ]] && config=(--config "$VMSILO_CONFIG")
        COMPREPLY=($(compgen -W "$(vmsilo "${{config[@]}}" list-vms 2>/dev/null)" -- "${{COMP_WORDS[COMP_CWORD]}}"))
        return 0
    fi
    _{id} "$@"
}}
complete -F __vmsilo_{id}_complete -o nosort -o bashdefault -o default {name}
"#,
        opts = opts.join("|"),
    )
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CliError {
    let path = path.to_owned();
    move |source| CliError::Io { what, path, source }
}

/// Runs `vmsilo completions`.
pub fn completions(args: &CompletionsArgs) -> Result<(), CliError> {
    std::fs::create_dir_all(&args.out).map_err(io("create", &args.out))?;
    let shell = match args.shell {
        Shell::Bash => Generator::Bash,
        Shell::Zsh => Generator::Zsh,
        Shell::Fish => Generator::Fish,
    };
    for (name, mut cmd) in commands() {
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut cmd, name.as_str(), &mut text);
        let mut text = String::from_utf8_lossy(&text).into_owned();
        if args.shell == Shell::Bash {
            // clap names the function after the command, '-' included; the wrapper calls it
            // through an alias with '_' (bash accepts both, other tools may not).
            if name.contains('-') {
                text.push_str(&format!(
                    "\n_{id}() {{ _{name} \"$@\"; }}\n",
                    id = ident(&name)
                ));
            }
            text.push_str(&bash_vm_names(&name));
        }
        let path = args
            .out
            .join(clap_complete::Generator::file_name(&shell, &name));
        std::fs::write(&path, text).map_err(io("write", &path))?;
    }
    Ok(())
}

fn write_man(dir: &Path, file: &str, cmd: clap::Command) -> Result<(), CliError> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut buf)
        .map_err(io("render", Path::new(file)))?;
    let path = dir.join(file);
    std::fs::write(&path, buf).map_err(io("write", &path))
}

/// Runs `vmsilo man`: `vmsilo.1`, `vmsilo-<subcommand>.1` and `vm-start.1` etc.
pub fn man(args: &ManArgs) -> Result<(), CliError> {
    std::fs::create_dir_all(&args.out).map_err(io("create", &args.out))?;
    let mut root = cli::Cli::command();
    root.build();
    write_man(&args.out, "vmsilo.1", root.clone())?;
    for sub in root.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("vmsilo-{}", sub.get_name());
        write_man(
            &args.out,
            &format!("{name}.1"),
            sub.clone().name(name.clone()),
        )?;
    }
    for (name, _) in cli::MULTI_CALL {
        if let Some(cmd) = cli::multi_call_command(name) {
            write_man(&args.out, &format!("{name}.1"), cmd)?;
        }
    }
    Ok(())
}

/// Runs `vmsilo list-vms`.
pub fn list_vms(config: Option<&Path>) -> Result<(), CliError> {
    let (_, cfg) = config_file::resolve_and_load(config)?;
    let mut out = std::io::stdout().lock();
    for vm in &cfg.nixos_vms {
        writeln!(out, "{}", vm.name).map_err(CliError::Output)?;
    }
    Ok(())
}
