//! `switchboard plugins new NAME [--lang rust|python]`: writes a plugin project that builds,
//! passes its own tests and replays its fixtures — the integrator's first step.
//!
//! The templates are embedded in the binary (`host/src/cli/scaffold/`; the Rust manifest is
//! `Cargo.toml.template` there, so no tool takes it for a package), so the command works
//! from an installed binary; the SDK is referenced by path (the one this binary was built beside
//! when it still exists, else `--sdk`). A Python project also gets the contract's WIT files, the
//! ones this binary implements, since componentize-py reads them at build time.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};

use crate::runtime::manifest::CONTRACT_VERSION;

/// Arguments of `switchboard plugins new`.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The plugin's name, also its channel type: lowercase letters, digits and `-`, starting with
    /// a letter (e.g. `mychannel`).
    name: String,

    /// The language of the project.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    lang: Lang,

    /// Where to write the project (default: `./NAME`). It must not exist yet.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,

    /// The SDK to depend on: switchboard's `plugins/sdk` (Rust) or `plugins/sdk-python` (Python).
    /// Default: the one beside the sources this binary was built from, when it still exists.
    #[arg(long, value_name = "PATH")]
    sdk: Option<PathBuf>,
}

/// The language of a new plugin project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Lang {
    /// A Rust crate on `switchboard-plugin-sdk`, built with cargo for wasm32-wasip2.
    Rust,
    /// A Python module on `switchboard_sdk`, built with componentize-py.
    Python,
}

/// One file of a template: its path in the project and its text with `{{…}}` placeholders.
struct TemplateFile {
    path: &'static str,
    text: &'static str,
    executable: bool,
}

macro_rules! template {
    ($path:literal, $source:literal) => {
        TemplateFile {
            path: $path,
            text: include_str!($source),
            executable: false,
        }
    };
    ($path:literal, $source:literal, executable) => {
        TemplateFile {
            path: $path,
            text: include_str!($source),
            executable: true,
        }
    };
}

const RUST_TEMPLATE: &[TemplateFile] = &[
    template!("Cargo.toml", "scaffold/rust/Cargo.toml.template"),
    template!("manifest.toml", "scaffold/rust/manifest.toml"),
    template!("src/lib.rs", "scaffold/rust/src/lib.rs"),
    template!("tests/decode.rs", "scaffold/rust/tests/decode.rs"),
    template!(
        "fixtures/message.json",
        "scaffold/rust/fixtures/message.json"
    ),
    template!(
        "fixtures/webhook.json",
        "scaffold/rust/fixtures/webhook.json"
    ),
    template!("outbound/reply.json", "scaffold/rust/outbound/reply.json"),
    template!("README.md", "scaffold/rust/README.md"),
    template!(".gitignore", "scaffold/rust/gitignore"),
];

const PYTHON_TEMPLATE: &[TemplateFile] = &[
    template!("app.py", "scaffold/python/app.py"),
    template!("test_app.py", "scaffold/python/test_app.py"),
    template!("build.sh", "scaffold/python/build.sh", executable),
    template!("manifest.toml", "scaffold/python/manifest.toml"),
    template!(
        "fixtures/message.json",
        "scaffold/python/fixtures/message.json"
    ),
    template!(
        "fixtures/webhook.json",
        "scaffold/python/fixtures/webhook.json"
    ),
    template!("outbound/reply.json", "scaffold/python/outbound/reply.json"),
    template!("README.md", "scaffold/python/README.md"),
    template!(".gitignore", "scaffold/python/gitignore"),
    // The contract this binary implements, for componentize-py.
    template!("wit/channel.wit", "../../../wit/channel.wit"),
    template!("wit/host.wit", "../../../wit/host.wit"),
    template!("wit/types.wit", "../../../wit/types.wit"),
];

/// The pinned build tool of Python plugins, as the SDK's requirements file names it.
const PYTHON_BUILD_REQUIREMENTS: &str =
    include_str!("../../../plugins/sdk-python/requirements-build.txt");

/// The SDKs beside the sources this binary was built from.
const RUST_SDK_AT_BUILD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/sdk");
const PYTHON_SDK_AT_BUILD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/sdk-python");

/// Names that cannot be a Rust crate (keywords and the toolchain's own crates).
const RESERVED_NAMES: &[&str] = &[
    "alloc",
    "core",
    "std",
    "test",
    "proc-macro",
    "self",
    "super",
    "crate",
    "fn",
    "mod",
    "use",
    "type",
    "impl",
    "struct",
    "enum",
    "trait",
    "match",
    "loop",
    "while",
    "for",
    "if",
    "else",
    "let",
    "const",
    "static",
    "async",
    "await",
    "dyn",
    "move",
    "ref",
    "return",
    "true",
    "false",
    "where",
    "unsafe",
    "extern",
    "pub",
    "in",
    "as",
    "break",
    "continue",
    "box",
    "yield",
    "try",
];

/// `plugins new`.
pub fn run(args: NewArgs) -> anyhow::Result<()> {
    check_name(&args.name)?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists() {
        anyhow::bail!(
            "{} already exists; `plugins new` never overwrites: choose another --dir or remove it",
            dir.display()
        );
    }
    let sdk = sdk_path(args.lang, args.sdk.as_deref())?;
    let values = Values {
        name: &args.name,
        lib: &args.name.replace('-', "_"),
        sdk: &sdk,
        contract: &CONTRACT_VERSION.to_string(),
        componentize_py: componentize_py_version()?,
    };
    let template = match args.lang {
        Lang::Rust => RUST_TEMPLATE,
        Lang::Python => PYTHON_TEMPLATE,
    };
    let written = write_project(&dir, template, &values)?;

    println!(
        "wrote a {} plugin project `{}` in {}:",
        match args.lang {
            Lang::Rust => "Rust",
            Lang::Python => "Python",
        },
        args.name,
        dir.display()
    );
    for path in &written {
        println!("  {path}");
    }
    println!("SDK: {sdk}");
    let cd = shell_word(&dir.display().to_string());
    match args.lang {
        Lang::Rust => println!(
            "next: cd {cd} && cargo test && cargo build --target wasm32-wasip2 --release \
             (then `switchboard replay`: see README.md)"
        ),
        Lang::Python => println!(
            "next: cd {cd} && ./build.sh && python3 -m unittest \
             (then `switchboard replay`: see README.md)"
        ),
    }
    Ok(())
}

/// The placeholders' values.
struct Values<'a> {
    name: &'a str,
    lib: &'a str,
    sdk: &'a str,
    contract: &'a str,
    componentize_py: &'a str,
}

fn render(text: &str, values: &Values<'_>) -> String {
    text.replace("{{name}}", values.name)
        .replace("{{lib}}", values.lib)
        .replace("{{sdk}}", values.sdk)
        .replace("{{contract}}", values.contract)
        .replace("{{componentize_py}}", values.componentize_py)
}

/// A plugin name: it becomes the manifest's name and channel, the crate's name, a file name
/// and part of webhook URLs, so it is kept to what is valid in all of them.
fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = (1..=40).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && !name.contains("--")
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        anyhow::bail!(
            "invalid plugin name {name:?}: use 1 to 40 lowercase letters, digits and single `-`, \
             starting with a letter and not ending with `-` (e.g. `mychannel`)"
        );
    }
    if RESERVED_NAMES.contains(&name) {
        anyhow::bail!("invalid plugin name {name:?}: it is reserved by Rust; choose another");
    }
    Ok(())
}

/// The SDK directory to reference, absolute, after checking it is the SDK.
fn sdk_path(lang: Lang, given: Option<&Path>) -> anyhow::Result<String> {
    let (default, marker, what) = match lang {
        Lang::Rust => (
            RUST_SDK_AT_BUILD,
            "Cargo.toml",
            "switchboard's plugins/sdk (the Rust SDK)",
        ),
        Lang::Python => (
            PYTHON_SDK_AT_BUILD,
            "switchboard_sdk/__init__.py",
            "switchboard's plugins/sdk-python (the Python SDK)",
        ),
    };
    let path = match given {
        Some(path) => path.to_path_buf(),
        None if Path::new(default).join(marker).is_file() => PathBuf::from(default),
        None => anyhow::bail!(
            "no SDK found where this binary was built ({default}); pass --sdk PATH to {what}"
        ),
    };
    if !path.join(marker).is_file() {
        anyhow::bail!("--sdk {} is not {what}: it has no {marker}", path.display());
    }
    if lang == Lang::Rust {
        let manifest = std::fs::read_to_string(path.join(marker))?;
        if !manifest.contains("name = \"switchboard-plugin-sdk\"") {
            anyhow::bail!(
                "--sdk {} is not {what}: its Cargo.toml is not the switchboard-plugin-sdk package",
                path.display()
            );
        }
    }
    let absolute = path
        .canonicalize()
        .map_err(|e| anyhow::anyhow!("cannot resolve the SDK path {}: {e}", path.display()))?;
    let text = absolute
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("the SDK path {} is not UTF-8", absolute.display()))?;
    // The path is written into TOML strings, a shell script and Python strings as it is.
    if text.contains(['"', '\\', '$', '`', '\'', '\n']) {
        anyhow::bail!(
            "the SDK path {text} contains a quote, backslash, `$` or newline; move the SDK to a \
             plainer path"
        );
    }
    Ok(text.to_string())
}

/// The componentize-py version pinned in the Python SDK's build requirements.
fn componentize_py_version() -> anyhow::Result<&'static str> {
    PYTHON_BUILD_REQUIREMENTS
        .lines()
        .find_map(|line| line.trim().strip_prefix("componentize-py=="))
        .ok_or_else(|| anyhow::anyhow!("the Python SDK's requirements pin no componentize-py"))
}

/// Writes every file of `template` under `dir` (which must not exist); the relative paths
/// written, in order.
fn write_project(
    dir: &Path,
    template: &[TemplateFile],
    values: &Values<'_>,
) -> anyhow::Result<Vec<&'static str>> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", parent.display()))?;
    }
    // `create_dir`, not `create_dir_all`: a directory that appeared since the check is not ours.
    std::fs::create_dir(dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    let mut written = Vec::new();
    for file in template {
        let path = dir.join(file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, render(file.text, values))
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        if file.executable {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        }
        written.push(file.path);
    }
    Ok(written)
}

/// `word` as one shell word, quoted when it needs to be.
fn shell_word(word: &str) -> String {
    if word
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Values<'static> {
        Values {
            name: "my-channel",
            lib: "my_channel",
            sdk: "/sdk",
            contract: "0.2.0",
            componentize_py: "0.25.1",
        }
    }

    #[test]
    fn every_placeholder_of_every_template_is_filled() {
        for file in RUST_TEMPLATE.iter().chain(PYTHON_TEMPLATE) {
            let text = render(file.text, &values());
            assert!(
                !text.contains("{{name") && !text.contains("{{lib") && !text.contains("{{sdk"),
                "{} keeps a placeholder",
                file.path
            );
            assert!(!text.contains("{{contract") && !text.contains("{{componentize"));
        }
    }

    #[test]
    fn the_manifests_parse_and_ask_for_an_installation_schema() {
        for template in [RUST_TEMPLATE, PYTHON_TEMPLATE] {
            let file = template.iter().find(|f| f.path == "manifest.toml").unwrap();
            let manifest =
                crate::runtime::manifest::Manifest::parse(&render(file.text, &values()), "test")
                    .unwrap();
            assert_eq!(manifest.name, "my-channel");
            assert_eq!(manifest.channel, "my-channel");
        }
    }

    #[test]
    fn names_are_checked() {
        for good in ["mychannel", "my-channel", "c2", "a"] {
            check_name(good).unwrap();
        }
        for bad in [
            "",
            "My",
            "my_channel",
            "-x",
            "x-",
            "a--b",
            "2fa",
            "my channel",
            "test",
            "std",
            &"a".repeat(41),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn an_existing_directory_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let existing = dir.path().join("taken");
        std::fs::create_dir(&existing).unwrap();
        std::fs::write(existing.join("keep.txt"), "mine").unwrap();
        let error = run(NewArgs {
            name: "taken".into(),
            lang: Lang::Rust,
            dir: Some(existing.clone()),
            sdk: Some(PathBuf::from(RUST_SDK_AT_BUILD)),
        })
        .unwrap_err();
        assert!(error.to_string().contains("never overwrites"), "{error}");
        assert_eq!(
            std::fs::read_to_string(existing.join("keep.txt")).unwrap(),
            "mine"
        );
    }

    #[test]
    fn a_wrong_sdk_is_refused_naming_what_is_expected() {
        let dir = tempfile::tempdir().unwrap();
        let error = sdk_path(Lang::Rust, Some(dir.path())).unwrap_err();
        assert!(error.to_string().contains("plugins/sdk"), "{error}");
        let error = sdk_path(Lang::Python, Some(dir.path())).unwrap_err();
        assert!(error.to_string().contains("sdk-python"), "{error}");
    }
}
