//! Every command's `--help` (and `coffer --help`) ends with examples, and every example parses
//! against the real definitions, so an example cannot outlive a flag.

use super::Cli;
use clap::{CommandFactory, Parser};

/// Each command and nested command (`key add`), clap's `help` left out.
fn all_commands(cmd: &clap::Command, out: &mut Vec<clap::Command>) {
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        out.push(sub.clone());
        all_commands(sub, out);
    }
}

/// A shell line's words as the shell would pass them, up to the first
/// pipe, redirection or comment (what follows is not coffer's).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quote = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.get_or_insert_default().push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                word.get_or_insert_default();
            }
            (None, c) if c.is_whitespace() => words.extend(word.take()),
            (None, '|' | '<' | '>' | '#') if word.is_none() => break,
            (None, c) => word.get_or_insert_default().push(c),
        }
    }
    assert!(quote.is_none(), "unterminated quote in {line:?}");
    words.extend(word);
    words
}

/// The example lines at the end of one command's long help.
fn examples(cmd: &mut clap::Command) -> Vec<String> {
    let name = cmd.get_bin_name().unwrap_or(cmd.get_name()).to_string();
    let help = cmd.render_long_help().to_string();
    let Some((_, tail)) = help.rsplit_once("\nExamples:\n") else {
        panic!("`{name} --help` does not end with an Examples: block:\n{help}");
    };
    let lines: Vec<String> = tail.lines().map(|l| l.trim().to_string()).collect();
    for l in &lines {
        assert!(
            l.starts_with("coffer "),
            "`{name} --help`: {l:?} after Examples: is not a coffer command"
        );
    }
    assert!(
        !lines.is_empty(),
        "`{name} --help` has an empty Examples: block"
    );
    lines
}

#[test]
fn every_command_help_ends_with_examples_that_parse() {
    let mut root = Cli::command();
    root.build();
    let mut commands = vec![root.clone()];
    all_commands(&root, &mut commands);
    assert!(commands.len() > 20, "{} commands", commands.len());
    for mut cmd in commands {
        for line in examples(&mut cmd) {
            let words = shell_words(&line);
            if let Err(e) = Cli::try_parse_from(&words) {
                panic!("the example {line:?} does not parse: {e}");
            }
        }
    }
}

#[test]
fn shell_words_split_like_a_shell_and_stop_at_redirections() {
    assert_eq!(
        shell_words("coffer find '*.sql' \"a b\" --long | wc -l"),
        ["coffer", "find", "*.sql", "a b", "--long"]
    );
    assert_eq!(
        shell_words("coffer dump latest /etc > etc.tar"),
        ["coffer", "dump", "latest", "/etc"]
    );
    assert_eq!(shell_words("coffer x '' y"), ["coffer", "x", "", "y"]);
}
