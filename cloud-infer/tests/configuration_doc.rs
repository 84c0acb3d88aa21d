//! docs/configuration.md must name every command-line flag and environment variable the three binaries define, so a
//! new option cannot ship undocumented. The options are read from the clap definitions in the sources (every
//! `#[arg(...)]` attribute and the field it sits on); regenerate the document with
//! `scripts/gen_configuration_doc.sh`.

use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crate inside the workspace")
        .to_path_buf()
}

/// One `#[arg(...)]` attribute: its text and the name of the field it annotates.
struct ArgAttribute {
    file: String,
    body: String,
    field: String,
}

impl ArgAttribute {
    fn env(&self) -> Option<String> {
        quoted_after(&self.body, "env =")
    }

    fn long_flag(&self) -> Option<String> {
        if let Some(name) = quoted_after(&self.body, "long =") {
            return Some(format!("--{name}"));
        }
        self.body
            .split(|c: char| c == ',' || c.is_whitespace())
            .any(|token| token == "long")
            .then(|| format!("--{}", self.field.replace('_', "-")))
    }
}

fn quoted_after(text: &str, key: &str) -> Option<String> {
    let rest = &text[text.find(key)? + key.len()..];
    let rest = rest.trim_start().strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_string())
}

fn arg_attributes(file: &Path) -> Vec<ArgAttribute> {
    let source = std::fs::read_to_string(file).expect("source readable");
    let mut found = Vec::new();
    let mut rest = source.as_str();
    while let Some(start) = rest.find("#[arg(") {
        let after = &rest[start + "#[arg(".len()..];
        // The attribute ends where its parentheses balance (values like `value_parser!(u16).range(1..=64)` nest).
        let mut depth = 1;
        let end = after
            .char_indices()
            .find_map(|(i, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                (depth == 0).then_some(i)
            })
            .expect("balanced #[arg(...)]");
        let body = after[..end].to_string();
        // The field follows, possibly after more attributes: `pub name: Type` or `name: Type`.
        let tail = &after[end..];
        let field = tail
            .lines()
            .skip(1)
            .map(str::trim)
            .find(|line| !line.starts_with("#[") && !line.starts_with("//") && line.contains(':'))
            .and_then(|line| line.trim_start_matches("pub ").split(':').next())
            .map(|name| name.trim().to_string())
            .expect("a field after #[arg(...)]");
        found.push(ArgAttribute {
            file: file.display().to_string(),
            body,
            field,
        });
        rest = tail;
    }
    found
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("source directory") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files
}

#[test]
fn every_flag_and_environment_variable_is_documented() {
    let root = workspace();
    let doc = std::fs::read_to_string(root.join("docs/configuration.md"))
        .expect("docs/configuration.md exists");
    let attributes: Vec<ArgAttribute> = ["edge-infer/src", "cloud-infer/src", "trainer/src"]
        .iter()
        .flat_map(|dir| rust_files(&root.join(dir)))
        .flat_map(|file| arg_attributes(&file))
        .collect();
    assert!(
        attributes.len() > 50,
        "found only {} #[arg] attributes: is the parser broken?",
        attributes.len()
    );
    let mut missing = Vec::new();
    for attribute in &attributes {
        let names = attribute.env().into_iter().chain(attribute.long_flag());
        for name in names {
            // Whole-word match: `--model` must not be satisfied by `--model-dir`, nor `INDEX` by `VAL_INDEX`.
            let word = |c: Option<char>| {
                c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            };
            let documented = doc.match_indices(&name).any(|(at, _)| {
                !word(doc[..at].chars().next_back()) && !word(doc[at + name.len()..].chars().next())
            });
            if !documented {
                missing.push(format!(
                    "{name} ({}, field {})",
                    attribute.file, attribute.field
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not in docs/configuration.md (run scripts/gen_configuration_doc.sh):\n{}",
        missing.join("\n")
    );
}
