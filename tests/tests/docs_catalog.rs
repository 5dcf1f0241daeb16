//! The catalog examples of `docs/catalog.md` parse as the guide says they do.
//!
//! Fragments are completed the way the guide's complete example declares
//! them: a fragment of keys becomes a component of its own; a fragment of a
//! component's table gets that component, with an image, depending on
//! `postgres`.

use e2e_infra::Catalog;
use e2e_infra_tests::guide::{blocks, lay_out, page, root};

/// A whole catalog from a block of the guide.
fn complete(block: &str) -> String {
    let first = block.lines().next().unwrap_or_default();
    match first.strip_prefix("[components.") {
        Some(table) if table.matches('.').count() == 1 => {
            let component = table.split('.').next().unwrap_or_default();
            format!(
                "[components.postgres]\nimage = \"postgres:16\"\ndocker = {{ ports = [5432] }}\n\n[components.{component}]\nimage = \"{component}:1\"\ndepends_on = [\"postgres\"]\n\n{block}"
            )
        }
        Some(_) => block.to_owned(),
        None => format!("[components.example]\n{block}"),
    }
}

/// Each component with its dependencies, of `catalog` laid out in a
/// directory of its own.
fn parse(catalog: &str) -> Vec<(String, String)> {
    let dir = tempfile::tempdir().expect("temporary directory");
    lay_out(dir.path(), catalog);
    let parsed = Catalog::parse(&dir.path().join("e2e-infra.toml"), catalog);
    let parsed = parsed.unwrap_or_else(|e| panic!("{e}\nin:\n{catalog}"));
    parsed.components().iter().map(|(name, c)| (name.clone(), c.dependencies().collect::<Vec<_>>().join(","))).collect()
}

#[test]
fn every_catalog_example_of_the_guide_parses() {
    let examples = blocks(&page("catalog.md"), "toml");
    assert_eq!(examples.len(), 6, "the guide's TOML examples: {examples:#?}");
    for block in examples {
        assert!(!parse(&complete(&block)).is_empty());
    }
}

#[test]
fn the_complete_example_is_the_example_suites_catalog() {
    let example = std::fs::read_to_string(root().join("examples/notification/e2e-infra.toml")).expect("the example");
    assert_eq!(parse(&blocks(&page("catalog.md"), "toml")[0]), parse(&example));
}

#[test]
fn the_guide_says_a_catalog_is_trusted_like_code() {
    let guide = page("catalog.md");
    let section = guide.split("## A catalog is trusted like code").nth(1).expect("the section");
    let section = section.split("\n## ").next().unwrap_or_default();
    for says in ["files to read", "commands to run", "review a change to it"] {
        assert!(section.contains(says), "{says}: {section}");
    }
}
