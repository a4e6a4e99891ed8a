//! Guards the "one test per fixture" rule: every file in `tests/fixtures/lark` (except the
//! README) must be named by one of the fixture test files.

mod common;

const FIXTURE_TEST_SOURCES: [&str; 4] = [
    include_str!("fixtures_events.rs"),
    include_str!("fixtures_transport.rs"),
    include_str!("fixtures_webhook.rs"),
    include_str!("fixtures_rest.rs"),
];

#[test]
fn every_fixture_file_has_a_test() {
    let mut names: Vec<String> = std::fs::read_dir(common::fixtures_dir())
        .expect("fixtures directory is readable")
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".json"))
        .collect();
    names.sort();
    assert!(
        names.len() >= 58,
        "expected the full fixture set, found {}",
        names.len()
    );
    let untested: Vec<&String> = names
        .iter()
        .filter(|name| {
            let stem = name.trim_end_matches(".json");
            !FIXTURE_TEST_SOURCES.iter().any(|source| {
                source.contains(name.as_str()) || source.contains(&format!("fn {stem}()"))
            })
        })
        .collect();
    assert!(untested.is_empty(), "fixtures without a test: {untested:?}");
}
