//! `RELEASE_NOTES.md`: the version's section of CHANGELOG.md (Keep a Changelog), which the release
//! workflow publishes as the release's description. A release proper needs its section (`##
//! [<version>] - <date>`); a build of any other commit takes the Unreleased section and says so.

use anyhow::{Result, bail};

use super::{Options, Release};

/// The notes' file name.
pub const NOTES: &str = "RELEASE_NOTES.md";

/// Writes the notes into `opts.out`.
pub fn build(opts: &Options, release: &Release) -> Result<()> {
    let changelog = std::fs::read_to_string(opts.repo.join("CHANGELOG.md"))?;
    let notes = match section(&changelog, &release.version) {
        Some(text) => format!("# sitecache {}\n\n{text}", release.version),
        None if opts.strict => bail!(
            "CHANGELOG.md has no section \"## [{}] - <date>\": move Unreleased there first \
             (docs/releasing.md)",
            release.version
        ),
        None => match section(&changelog, "Unreleased") {
            Some(text) => format!(
                "# sitecache {} (unreleased: {})\n\n{text}",
                release.version, release.revision
            ),
            None => bail!(
                "CHANGELOG.md has neither a section for {} nor Unreleased",
                release.version
            ),
        },
    };
    std::fs::write(opts.out.join(NOTES), notes)?;
    Ok(())
}

/// The body of the section `## [name]…` of a Keep a Changelog file, up to the next `## ` heading
/// (or the link references at the end), trimmed.
pub fn section(changelog: &str, name: &str) -> Option<String> {
    let heading = format!("## [{name}]");
    let mut lines = changelog.lines().skip_while(|l| !l.starts_with(&heading));
    lines.next()?;
    let body: Vec<&str> = lines
        .take_while(|l| !(l.starts_with("## ") || is_link_reference(l)))
        .collect();
    Some(body.join("\n").trim().to_owned() + "\n")
}

/// A link reference definition (`[0.1.0]: https://…`), as the end of a changelog has them.
fn is_link_reference(line: &str) -> bool {
    line.starts_with('[') && line.contains("]: ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHANGELOG: &str = "# Changelog\n\nIntro.\n\n## [Unreleased]\n\n### Added\n\n- b\n\n## [0.1.0] - 2026-12-07\n\n### Added\n\n- a\n\n[Unreleased]: https://x/compare/v0.1.0...HEAD\n[0.1.0]: https://x/releases/tag/v0.1.0\n";

    #[test]
    fn a_section_ends_at_the_next_heading_or_the_links() {
        assert_eq!(
            section(CHANGELOG, "Unreleased").unwrap(),
            "### Added\n\n- b\n"
        );
        assert_eq!(section(CHANGELOG, "0.1.0").unwrap(), "### Added\n\n- a\n");
        assert_eq!(section(CHANGELOG, "0.2.0"), None);
    }
}
