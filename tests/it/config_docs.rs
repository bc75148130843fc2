//! The README's configuration table is the documentation of every variable: each
//! variable the code reads must be in it, with the field it overrides.

use std::path::Path;

use whatsapp_webhook::config::{
    DEFAULT_ACCESS_TOKEN_ENV, DEFAULT_APP_SECRET_ENV, ENV_OVERRIDES, OTHER_ENV,
};

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The README's section "Configuration", up to the next heading of its level.
fn configuration_section() -> String {
    let readme = read("README.md");
    let start = readme
        .find("\n## Configuration")
        .expect("README has a Configuration section");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_string()
}

#[test]
fn every_env_override_is_in_the_readme_table_with_its_field() {
    let section = configuration_section();
    for o in ENV_OVERRIDES {
        let row = section
            .lines()
            .find(|l| l.starts_with(&format!("| `{}` ", o.field)))
            .unwrap_or_else(|| panic!("README table has no row for {}", o.field));
        assert!(
            row.contains(&format!("`{}`", o.name)),
            "README row of {} does not name {}: {row}",
            o.field,
            o.name
        );
    }
}

#[test]
fn every_variable_the_code_reads_is_documented() {
    let section = configuration_section();
    let mut names: Vec<&str> = ENV_OVERRIDES.iter().map(|o| o.name).collect();
    names.extend(OTHER_ENV);
    names.extend([DEFAULT_ACCESS_TOKEN_ENV, DEFAULT_APP_SECRET_ENV]);
    // Variables read directly anywhere in src/ must be listed too.
    let mut sources = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(dir) = sources.pop() {
        for entry in std::fs::read_dir(&dir).expect("src dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                sources.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("source");
                for name in read_env_names(&text) {
                    assert!(
                        names.contains(&name.as_str()),
                        "{} reads {name}, which is neither in ENV_OVERRIDES nor OTHER_ENV",
                        path.display()
                    );
                }
            }
        }
    }
    for name in names {
        assert!(
            section.contains(&format!("`{name}`")),
            "README's Configuration section does not mention `{name}`"
        );
    }
}

/// Literal names in `env("X")`, `var("X")` and `var_os("X")` calls.
fn read_env_names(source: &str) -> Vec<String> {
    let mut names = Vec::new();
    for call in ["env(\"", "var(\"", "var_os(\""] {
        let mut rest = source;
        while let Some(i) = rest.find(call) {
            rest = &rest[i + call.len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if !name.is_empty() && rest[name.len()..].starts_with('"') {
                names.push(name);
            }
        }
    }
    names
}

#[test]
fn the_reader_of_env_names_finds_direct_reads() {
    let found = read_env_names(r#"env("LOG_LEVEL"); std::env::var_os("AWS_X"); env(&name)"#);
    assert_eq!(found, ["LOG_LEVEL", "AWS_X"]);
}
