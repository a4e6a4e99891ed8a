//! The module layering (issue 15), checked by reading the sources: the leaves (`domain`,
//! `bindings`, `hygiene`) import no other module of this crate, `store` sees only the leaves it
//! needs (so it compiles without wasmtime), and `capabilities` sees `domain` and `bindings` but
//! neither `store` nor `runtime`; `app` wires them together. ARCHITECTURE.md's module table says
//! the same in prose.
//!
//! Reads `use crate::…` paths (and `crate::…` anywhere in code, `$crate::…` in macros) on
//! non-comment lines; a grouped `crate::{…}` is refused in these modules so every import names
//! its module on its own line.

use std::path::{Path, PathBuf};

/// What one module (a file or a directory under `src/`) may reach.
struct Rule {
    /// `src/`-relative path of the module's file or directory.
    module: &'static str,
    /// Other crate modules it may import (itself always).
    may_use: &'static [&'static str],
    /// Words that must not appear in its code (external crates of other layers).
    never: &'static [&'static str],
}

const RULES: &[Rule] = &[
    Rule {
        module: "domain",
        may_use: &[],
        never: &["wasmtime", "sqlx"],
    },
    Rule {
        module: "bindings.rs",
        may_use: &[],
        never: &["sqlx"],
    },
    Rule {
        module: "hygiene.rs",
        may_use: &[],
        never: &["wasmtime", "sqlx"],
    },
    Rule {
        module: "store",
        may_use: &["domain", "hygiene"],
        never: &["wasmtime"],
    },
    Rule {
        module: "capabilities",
        may_use: &["domain", "bindings"],
        never: &["sqlx"],
    },
];

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
            .map(|entry| entry.expect("directory entry").path())
            .collect();
        entries.sort();
        for entry in entries {
            rust_files(&entry, out);
        }
    } else if path.extension().is_some_and(|ext| ext == "rs") {
        out.push(path.to_path_buf());
    }
}

/// The violations of `rule` in `text` (the file `shown`), one line each.
fn check(rule: &Rule, shown: &str, text: &str) -> Vec<String> {
    let own = rule.module.trim_end_matches(".rs");
    let mut found = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let at = format!("{shown}:{}", index + 1);
        for (offset, _) in code.match_indices("crate::") {
            let rest = &code[offset + "crate::".len()..];
            let module: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if module.is_empty() {
                found.push(format!(
                    "{at}: a grouped `crate::{{…}}` import; write one `use crate::<module>::…` \
                     per module"
                ));
            } else if module != own && !rule.may_use.contains(&module.as_str()) {
                found.push(format!(
                    "{at}: `crate::{module}`; {own} may import only {:?}",
                    rule.may_use
                ));
            }
        }
        for word in rule.never {
            if code.contains(word) {
                found.push(format!("{at}: `{word}` has no place in {own}"));
            }
        }
    }
    found
}

/// Where a module's sources live: the leaves and the store moved to the `switchboard-core`
/// crate (`crates/core`, which Cargo keeps free of wasmtime), the rest is this crate.
fn root_of(module: &str) -> &'static str {
    match module {
        "domain" | "hygiene.rs" | "store" => "crates/core/src",
        _ => "host/src",
    }
}

#[test]
fn the_store_domain_and_capabilities_keep_their_layers() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut violations = Vec::new();
    for rule in RULES {
        let root = root_of(rule.module);
        let src = workspace.join(root);
        let mut files = Vec::new();
        rust_files(&src.join(rule.module), &mut files);
        assert!(!files.is_empty(), "no sources under {root}/{}", rule.module);
        for file in files {
            let text = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
            let shown = file.strip_prefix(&src).unwrap_or(&file).display();
            violations.extend(check(rule, &format!("{root}/{shown}"), &text));
        }
    }
    assert!(
        violations.is_empty(),
        "module layering broken (see ARCHITECTURE.md, Host modules):\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_check_names_the_file_and_line() {
    let store = &RULES[3];
    assert_eq!(store.module, "store");
    let text = "//! mentions crate::runtime in a comment\n\
                use crate::domain::KvScope;\n\
                use crate::runtime::InstallationContext;\n\
                use crate::{capabilities, domain};\n\
                let x: $crate::store::Message = Default::default();\n\
                fn f(_: wasmtime::Engine) {}\n";
    assert_eq!(
        check(store, "host/src/store/x.rs", text),
        [
            "host/src/store/x.rs:3: `crate::runtime`; store may import only [\"domain\", \"hygiene\"]",
            "host/src/store/x.rs:4: a grouped `crate::{…}` import; write one `use crate::<module>::…` per module",
            "host/src/store/x.rs:6: `wasmtime` has no place in store",
        ]
    );
}
