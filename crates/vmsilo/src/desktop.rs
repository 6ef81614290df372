//! Host `.desktop` files for guest programs (sans-IO: text in, text out).
//!
//! A guest program's entry becomes a host entry that runs it through `vm-run`:
//!
//! - `Exec=` becomes `vm-run <vm> <the original command>` (`vm-run -w` for `Terminal=true`,
//!   so the terminal stays while the program runs), in every `[Desktop Action …]` too. The URL
//!   field codes `%u` and `%U` are passed on where they stand alone as an argument, so that a
//!   URL opened with the entry on the host (a link dropped on it, "Open with") reaches the
//!   guest program as its argument (`vm-run` hands everything after the command to the guest
//!   unchanged). Every other field code (`%f`, `%F`, `%i`, ...) is dropped, as is a `%u`
//!   inside a longer argument: host file paths mean nothing in the guest;
//! - `Name=` (and each `Name[locale]=`) becomes `[<vm>] Name`;
//! - `TryExec=` (the program is not on the host), `DBusActivatable=` (the host would try to
//!   activate it on its own bus) and `MimeType=` (files cannot be handed over) are dropped;
//! - `X-Vmsilo-VM=<vm>` and `X-Vmsilo-Color=<color>` are added; everything else (Icon,
//!   Categories, Comment, translations) is kept.
//!
//! Entries with `NoDisplay=true` or `Hidden=true`, of a type other than `Application`, or
//! without `Exec=` are skipped. Parsing follows the Desktop Entry Specification 1.5 (string
//! escapes, `Exec` quoting) and is lenient where real files are (single quotes, unquoted
//! backslashes), as GLib is.

use std::fmt::Write as _;

/// Field codes of the `Exec` key (`%f`, `%U`, ...).
const FIELD_CODES: &str = "fFuUdDnNickvm";

/// Field codes passed on to `vm-run` when they form a whole argument: URLs mean the same in the
/// guest, host file paths do not.
const PASSED_CODES: &str = "uU";

/// One argument of a parsed `Exec` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecArg {
    /// A literal argument.
    Word(String),
    /// A field code standing alone (`%u` or `%U`), expanded by the host's launcher.
    Code(char),
}

impl ExecArg {
    /// The `Exec` form of the argument (before string escaping).
    fn quoted(&self) -> String {
        match self {
            ExecArg::Word(w) => quote_exec_arg(w),
            ExecArg::Code(c) => format!("%{c}"),
        }
    }
}

impl From<String> for ExecArg {
    fn from(w: String) -> Self {
        ExecArg::Word(w)
    }
}

/// Why an entry is not turned into a host entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    /// `NoDisplay=true` or `Hidden=true`.
    #[error("hidden (NoDisplay or Hidden)")]
    Hidden,
    /// `Type=Link`, `Type=Directory`, ...
    #[error("not an application (Type={0})")]
    NotApplication(String),
    /// No `[Desktop Entry]` group or no `Exec=`.
    #[error("no {0}")]
    Missing(&'static str),
    /// An `Exec` that cannot be parsed.
    #[error("Exec: {0}")]
    BadExec(String),
}

/// Undoes the string escapes of a desktop file value (`\s`, `\n`, `\t`, `\r`, `\\`); other
/// backslashes are kept.
pub fn unescape_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut it = v.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('s') => out.push(' '),
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('\\') => out.push('\\'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// Applies the string escapes for writing a value.
pub fn escape_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// Splits an (unescaped) `Exec` value into its literal arguments, dropping every field code.
/// `%%` is a `%`.
pub fn parse_exec(exec: &str) -> Result<Vec<String>, String> {
    Ok(parse_exec_args(exec)?
        .into_iter()
        .filter_map(|a| match a {
            ExecArg::Word(w) => Some(w),
            ExecArg::Code(_) => None,
        })
        .collect())
}

/// Splits an (unescaped) `Exec` value into arguments. A `%u` or `%U` that is a whole argument is
/// kept as [`ExecArg::Code`]; every other field code is dropped. `%%` is a `%`. The command
/// itself must be a literal word.
pub fn parse_exec_args(exec: &str) -> Result<Vec<ExecArg>, String> {
    let mut args = Vec::new();
    let mut cur = String::new();
    // The argument has content (or quotes), whether it was only field codes, and the code when
    // it was exactly one.
    let mut started = false;
    let mut only_code = false;
    let mut sole_code: Option<char> = None;
    let finish = |args: &mut Vec<ExecArg>, cur: &mut String, only: bool, sole: Option<char>| {
        if !only {
            args.push(ExecArg::Word(std::mem::take(cur)));
        } else if let Some(c) = sole.filter(|c| PASSED_CODES.contains(*c)) {
            args.push(ExecArg::Code(c));
        }
    };
    let mut chars = exec.chars().peekable();
    let push_code = |cur: &mut String, code: char, only: bool| -> Result<bool, String> {
        match code {
            '%' => {
                cur.push('%');
                Ok(false)
            }
            c if FIELD_CODES.contains(c) => Ok(only),
            c => Err(format!("unknown field code %{c}")),
        }
    };
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if started {
                    finish(&mut args, &mut cur, only_code, sole_code);
                }
                cur.clear();
                started = false;
                only_code = false;
                sole_code = None;
            }
            '"' => {
                started = true;
                only_code = false;
                loop {
                    match chars.next() {
                        None => return Err("unterminated double quote".into()),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(e @ ('"' | '`' | '$' | '\\')) => cur.push(e),
                            Some(other) => {
                                cur.push('\\');
                                cur.push(other);
                            }
                            None => return Err("unterminated double quote".into()),
                        },
                        Some('%') => match chars.next() {
                            Some(code) => {
                                push_code(&mut cur, code, false)?;
                            }
                            None => return Err("a lone % at the end".into()),
                        },
                        Some(c) => cur.push(c),
                    }
                }
            }
            '\'' => {
                started = true;
                only_code = false;
                loop {
                    match chars.next() {
                        None => return Err("unterminated single quote".into()),
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                    }
                }
            }
            '\\' => {
                started = true;
                only_code = false;
                match chars.next() {
                    Some(e) => cur.push(e),
                    None => cur.push('\\'),
                }
            }
            '%' => {
                let code = chars.next().ok_or("a lone % at the end")?;
                let fresh = !started;
                started = true;
                only_code = push_code(&mut cur, code, fresh || only_code)? && cur.is_empty();
                sole_code = if fresh { Some(code) } else { None };
            }
            c => {
                started = true;
                only_code = false;
                cur.push(c);
            }
        }
    }
    if started {
        finish(&mut args, &mut cur, only_code, sole_code);
    }
    match args.first() {
        None => Err("empty command".into()),
        Some(ExecArg::Code(c)) => Err(format!("the command is the field code %{c}")),
        Some(ExecArg::Word(_)) => Ok(args),
    }
}

/// Quotes one argument for an `Exec` value (before string escaping): reserved characters
/// put it in double quotes, `%` is doubled.
pub fn quote_exec_arg(arg: &str) -> String {
    const RESERVED: &str = " \t\n\"'\\><~|&;$*?#()`";
    let arg = arg.replace('%', "%%");
    if !arg.is_empty() && !arg.chars().any(|c| RESERVED.contains(c) || c.is_control()) {
        return arg;
    }
    let mut out = String::from("\"");
    for c in arg.chars() {
        if matches!(c, '"' | '`' | '$' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The `Exec` value (escaped for the file) that runs `argv` in `vm`; field codes in `argv` are
/// written as such, for the host's launcher to expand.
pub fn vm_run_exec(vm: &str, wait: bool, argv: &[ExecArg]) -> String {
    let mut words = vec![quote_exec_arg("vm-run")];
    if wait {
        words.push("-w".into());
    }
    words.push(quote_exec_arg(vm));
    words.extend(argv.iter().map(ExecArg::quoted));
    escape_value(&words.join(" "))
}

/// The key of a `Key[locale]=value` line and its locale suffix: `("Name", "[de]")`.
fn split_key(line: &str) -> Option<(&str, &str, &str)> {
    let (key, value) = line.split_once('=')?;
    let key = key.trim_end();
    let (base, locale) = match key.find('[') {
        Some(i) => (&key[..i], &key[i..]),
        None => (key, ""),
    };
    Some((base, locale, value.trim_start()))
}

/// Rewrites one guest `.desktop` file for `vm`; `source` is named in the header comment.
pub fn rewrite(text: &str, vm: &str, color: Option<&str>, source: &str) -> Result<String, Skip> {
    // First pass: the main group's keys that decide what happens.
    let mut group = String::new();
    let mut has_main = false;
    let mut terminal = false;
    let mut exec_seen = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            group = t.to_owned();
            has_main |= group == "[Desktop Entry]";
            continue;
        }
        if group != "[Desktop Entry]" {
            continue;
        }
        let Some((key, locale, value)) = split_key(t) else {
            continue;
        };
        if !locale.is_empty() {
            continue;
        }
        match key {
            "NoDisplay" | "Hidden" if value == "true" => return Err(Skip::Hidden),
            "Type" if value != "Application" => {
                return Err(Skip::NotApplication(value.to_owned()));
            }
            "Terminal" => terminal = value == "true",
            "Exec" => exec_seen = true,
            _ => {}
        }
    }
    if !has_main {
        return Err(Skip::Missing("[Desktop Entry] group"));
    }
    if !exec_seen {
        return Err(Skip::Missing("Exec"));
    }

    let mut out = format!(
        "# Generated by vmsilo desktop-entries from {}: runs in VM {vm}.\n",
        source.replace('\n', " ")
    );
    let mut group = String::new();
    // Blank lines at the end of the main group go after the added keys.
    let mut blanks = 0usize;
    let extra = |out: &mut String, blanks: &mut usize| {
        let _ = writeln!(out, "X-Vmsilo-VM={vm}");
        if let Some(c) = color {
            let _ = writeln!(out, "X-Vmsilo-Color={}", escape_value(c));
        }
        out.push_str(&"\n".repeat(std::mem::take(blanks)));
    };
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            if group == "[Desktop Entry]" {
                extra(&mut out, &mut blanks);
            }
            group = t.to_owned();
            out.push_str(t);
            out.push('\n');
            continue;
        }
        let in_main = group == "[Desktop Entry]";
        if in_main && t.is_empty() {
            blanks += 1;
            continue;
        }
        out.push_str(&"\n".repeat(std::mem::take(&mut blanks)));
        let in_action = group.starts_with("[Desktop Action ");
        let parsed = split_key(t).filter(|_| !t.starts_with('#'));
        match parsed {
            Some(("Exec", "", value)) if in_main || in_action => {
                let argv = parse_exec_args(&unescape_value(value)).map_err(Skip::BadExec)?;
                let _ = writeln!(out, "Exec={}", vm_run_exec(vm, terminal, &argv));
            }
            Some(("Name", locale, value)) if in_main => {
                let _ = writeln!(out, "Name{locale}=[{vm}] {value}");
            }
            Some(("TryExec" | "DBusActivatable" | "MimeType", _, _)) if in_main => {}
            Some(("X-Vmsilo-VM" | "X-Vmsilo-Color", _, _)) if in_main => {}
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    if group == "[Desktop Entry]" {
        extra(&mut out, &mut blanks);
    }
    Ok(out)
}

/// An extra entry (the NixOS module's `guestDesktopEntries`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraEntry {
    /// Display name.
    pub name: String,
    /// The command line run in the guest (`Exec` syntax: quotes for arguments with blanks).
    pub exec: String,
    /// Icon name or path.
    #[serde(default)]
    pub icon: Option<String>,
    /// Menu categories.
    #[serde(default)]
    pub categories: Vec<String>,
}

/// The `.desktop` text of an extra entry.
pub fn extra_entry(e: &ExtraEntry, vm: &str, color: Option<&str>) -> Result<String, Skip> {
    let argv = parse_exec_args(&e.exec).map_err(Skip::BadExec)?;
    let mut out = format!(
        "# Generated by vmsilo desktop-entries: runs in VM {vm}.\n[Desktop Entry]\n\
         Type=Application\n"
    );
    let _ = writeln!(out, "Name=[{vm}] {}", escape_value(&e.name));
    let _ = writeln!(out, "Exec={}", vm_run_exec(vm, false, &argv));
    if let Some(icon) = &e.icon {
        let _ = writeln!(out, "Icon={}", escape_value(icon));
    }
    if !e.categories.is_empty() {
        let cats: String = e
            .categories
            .iter()
            .map(|c| format!("{};", escape_value(c).replace(';', "\\;")))
            .collect();
        let _ = writeln!(out, "Categories={cats}");
    }
    let _ = writeln!(out, "X-Vmsilo-VM={vm}");
    if let Some(c) = color {
        let _ = writeln!(out, "X-Vmsilo-Color={}", escape_value(c));
    }
    Ok(out)
}

/// A file name part from a display name: lower case, runs of anything but letters, digits,
/// `.` and `_` become `-`.
pub fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_matches('-').to_owned();
    if out.is_empty() { "entry".into() } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_exec_field_codes_and_quoting() {
        assert_eq!(parse_exec("vim %F").expect("ok"), ["vim"]);
        assert_eq!(
            parse_exec("firefox-esr --new-window %u").expect("ok"),
            ["firefox-esr", "--new-window"]
        );
        assert_eq!(
            parse_exec(r#"sh -c "echo \"a b\" \$HOME 100%%" --file=%f"#).expect("ok"),
            ["sh", "-c", "echo \"a b\" $HOME 100%", "--file="]
        );
        assert_eq!(
            parse_exec("a 'b c' d\\ e").expect("ok"),
            ["a", "b c", "d e"]
        );
        assert!(parse_exec("a \"b").is_err());
        assert!(parse_exec("%U").is_err());
        assert!(parse_exec("a %z").is_err());
    }

    #[test]
    fn test_exec_url_field_codes_are_kept_only_where_they_stand_alone() {
        let w = |s: &str| ExecArg::Word(s.into());
        assert_eq!(
            parse_exec_args("firefox --new-window %u").expect("ok"),
            [w("firefox"), w("--new-window"), ExecArg::Code('u')]
        );
        assert_eq!(
            parse_exec_args("browser %U --x").expect("ok"),
            [w("browser"), ExecArg::Code('U'), w("--x")]
        );
        // Files, icons, names and codes inside a longer argument are dropped; %% is literal.
        assert_eq!(
            parse_exec_args("vim %F %f %i %c --url=%u %u%U %%U \"%u\"").expect("ok"),
            [w("vim"), w("--url="), w("%U"), w("")]
        );
        assert_eq!(
            parse_exec_args("%u firefox"),
            Err("the command is the field code %u".into())
        );
        assert!(parse_exec_args("%f").is_err());
    }

    #[test]
    fn test_exec_round_trips_through_quote_and_escape() {
        let mut argv: Vec<ExecArg> = ["sh", "-c", "echo \"$x\" \\ `y` 50%", "plain", "", "%U"]
            .map(|w| ExecArg::Word(w.into()))
            .to_vec();
        argv.push(ExecArg::Code('U'));
        let exec = vm_run_exec("banking", false, &argv);
        let back = parse_exec_args(&unescape_value(&exec)).expect("parses");
        let mut expect = vec![
            ExecArg::Word("vm-run".into()),
            ExecArg::Word("banking".into()),
        ];
        expect.extend(argv);
        assert_eq!(back, expect);
        assert_eq!(
            vm_run_exec("b", true, &[ExecArg::Word("vim".into())]),
            "vm-run -w b vim"
        );
    }

    #[test]
    fn test_rewrite_renames_drops_and_tags() {
        let text = "[Desktop Entry]\nName=Files\nName[de]=Dateien\nExec=nautilus \
                    --new-window %F\nTryExec=nautilus\nIcon=org.gnome.Nautilus\nMimeType=\
                    inode/directory;\nDBusActivatable=true\nActions=new;\n\n[Desktop Action \
                    new]\nName=New Window\nExec=nautilus --new-window\n";
        let out = rewrite(text, "work", Some("#00ff00"), "/pkg/x.desktop").expect("rewritten");
        assert!(out.contains("Name=[work] Files\n"), "{out}");
        assert!(out.contains("Name[de]=[work] Dateien\n"), "{out}");
        assert!(
            out.contains("Exec=vm-run work nautilus --new-window\n"),
            "{out}"
        );
        assert!(!out.contains("TryExec"), "{out}");
        assert!(!out.contains("MimeType"), "{out}");
        assert!(!out.contains("DBusActivatable"), "{out}");
        assert!(out.contains("Icon=org.gnome.Nautilus\n"), "{out}");
        // The tags go at the end of the main group, not into the action.
        let main_end = out.find("[Desktop Action new]").expect("action kept");
        assert!(out[..main_end].contains("X-Vmsilo-VM=work\nX-Vmsilo-Color=#00ff00\n"));
        assert!(
            out[main_end..].contains("Name=New Window\nExec=vm-run work nautilus --new-window\n")
        );
        assert!(!out[main_end..].contains("X-Vmsilo"), "{out}");
    }

    #[test]
    fn test_rewrite_skips_hidden_links_and_entries_without_exec() {
        assert_eq!(
            rewrite("[Desktop Entry]\nExec=a\nNoDisplay=true\n", "v", None, "x"),
            Err(Skip::Hidden)
        );
        assert_eq!(
            rewrite("[Desktop Entry]\nExec=a\nHidden=true\n", "v", None, "x"),
            Err(Skip::Hidden)
        );
        assert_eq!(
            rewrite("[Desktop Entry]\nType=Link\nURL=x\n", "v", None, "x"),
            Err(Skip::NotApplication("Link".into()))
        );
        assert_eq!(
            rewrite("[Desktop Entry]\nName=a\n", "v", None, "x"),
            Err(Skip::Missing("Exec"))
        );
        assert_eq!(
            rewrite("garbage\n\u{0}\n", "v", None, "x"),
            Err(Skip::Missing("[Desktop Entry] group"))
        );
    }

    #[test]
    fn test_extra_entry_and_slug() {
        let e: ExtraEntry = serde_json::from_str(
            r#"{"name": "Web browser", "exec": "firefox --private-window %U", "icon": null, "categories": ["Network", "WebBrowser"]}"#,
        )
        .expect("json");
        let out = extra_entry(&e, "shop", Some("red")).expect("entry");
        assert!(out.contains("Name=[shop] Web browser\n"), "{out}");
        assert!(
            out.contains("Exec=vm-run shop firefox --private-window %U\n"),
            "{out}"
        );
        assert!(out.contains("Categories=Network;WebBrowser;\n"), "{out}");
        assert!(!out.contains("Icon="), "{out}");
        assert!(out.contains("X-Vmsilo-Color=red\n"), "{out}");
        assert_eq!(slug("Web browser (private)"), "web-browser-private");
        assert_eq!(slug("!!!"), "entry");
    }
}
