//! Human-readable plans: shell commands that could be pasted into a root shell.

use crate::plan::{LaunchPlan, RunAs};

/// Quotes `s` for a POSIX shell when it needs it.
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, '_' | '-' | '.' | '/' | ':' | ',' | '=' | '@' | '%' | '+')
        });
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn quote_all(args: &[String]) -> String {
    args.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The plan as shell commands: each backend (with how it is run), then the VMM with one option
/// group per line.
pub fn render_text(plan: &LaunchPlan) -> String {
    let mut out = String::new();
    for b in &plan.backends {
        let who = match b.run_as {
            RunAs::Root => "root".to_owned(),
            RunAs::User => "the configured user".to_owned(),
        };
        let env: Vec<String> = b.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!(
            "# backend {} (start before the VMM; runs as {who}{})\n",
            b.kind,
            if env.is_empty() {
                String::new()
            } else {
                format!(", env {}", env.join(" "))
            }
        ));
        out.push_str(&quote_all(&b.argv));
        out.push_str("\n\n");
    }
    out.push_str(&format!("# {} for VM {}\n", plan.vmm, plan.vm));
    let groups: Vec<Vec<String>> = if plan.argv_groups.is_empty() {
        plan.argv.iter().map(|a| vec![a.clone()]).collect()
    } else {
        plan.argv_groups.clone()
    };
    let lines: Vec<String> = groups.iter().map(|g| quote_all(g)).collect();
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            out.push_str("  ");
        }
        out.push_str(line);
        if i + 1 < lines.len() {
            out.push_str(" \\");
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_shell_quote() {
        assert_eq!(shell_quote("--mem"), "--mem");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(
            shell_quote("[[mode=windowed[1,2]]]"),
            "'[[mode=windowed[1,2]]]'"
        );
    }
}
