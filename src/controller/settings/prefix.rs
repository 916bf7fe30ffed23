//! `--default-prefix-template`: where a SiteCache that names no `spec.storage.prefix` keeps its
//! objects. The default, `{site}/`, is the prefix every release before the template used, so an
//! install that does not set it moves nothing; `{namespace}/{site}/` keeps the sites of two
//! namespaces apart in one bucket.
//!
//! The template is read once, at start-up: only the prefix of a SiteCache that has none recorded
//! (`status.url`) comes from it, so changing it on a live install moves no existing cache.

use crate::storage::validate_prefix;

/// The template of releases before it: the site's name.
pub const DEFAULT_PREFIX_TEMPLATE: &str = "{site}/";

/// The placeholders, as written in a template.
const PLACEHOLDERS: [(&str, Part); 3] = [
    ("{namespace}", Part::Namespace),
    ("{name}", Part::Name),
    ("{site}", Part::Site),
];

/// The longest template: its rendering stays well within `spec.storage.prefix`'s 512 characters
/// whatever the names.
const MAX_LEN: usize = 128;

/// A parsed `--default-prefix-template`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// The SiteCache's namespace.
    Namespace,
    /// The SiteCache's name.
    Name,
    /// `spec.site`.
    Site,
}

impl Part {
    fn is_placeholder(&self) -> bool {
        !matches!(self, Part::Literal(_))
    }
}

/// Whether `c` can occur in a namespace, a SiteCache name or a site (DNS labels and
/// subdomains): a literal between two placeholders needs one character that cannot, or two
/// different pairs of names would render to the same prefix (`{namespace}-{site}/`: `a-b`+`c`
/// and `a`+`b-c`).
fn in_names(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'
}

impl PrefixTemplate {
    /// Parses and checks a template; the error says what is wrong with it (the caller names the
    /// flag).
    pub fn parse(template: &str) -> Result<Self, String> {
        if template.len() > MAX_LEN {
            return Err(format!("is longer than {MAX_LEN} characters"));
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('{') {
                let Some(end) = after.find('}') else {
                    return Err(format!("has a '{{' without its '}}' in {rest:?}"));
                };
                let written = &rest[..end + 2];
                let Some((_, part)) = PLACEHOLDERS.iter().find(|(p, _)| *p == written) else {
                    return Err(format!(
                        "has an unknown placeholder {written} (known: {{namespace}}, {{name}}, \
                         {{site}})"
                    ));
                };
                parts.push(part.clone());
                rest = &rest[end + 2..];
            } else {
                let end = rest.find('{').unwrap_or(rest.len());
                let literal = &rest[..end];
                if literal.contains('}') {
                    return Err(format!("has a '}}' without its '{{' in {literal:?}"));
                }
                if let Some(c) = literal.chars().find(|c| !c.is_ascii_graphic()) {
                    return Err(format!(
                        "has the character {c:?}: only printable ASCII without spaces"
                    ));
                }
                parts.push(Part::Literal(literal.to_owned()));
                rest = &rest[end..];
            }
        }
        if !parts.iter().any(|p| matches!(p, Part::Site | Part::Name)) {
            return Err(
                "names neither {site} nor {name}: every SiteCache of a namespace would have the \
                 same prefix"
                    .into(),
            );
        }
        for pair in parts.windows(2) {
            if pair[0].is_placeholder() && pair[1].is_placeholder() {
                return Err("has two placeholders side by side: separate them with '/'".into());
            }
        }
        for three in parts.windows(3) {
            if let [a, Part::Literal(between), b] = three
                && a.is_placeholder()
                && b.is_placeholder()
                && between.chars().all(in_names)
            {
                return Err(format!(
                    "separates two placeholders with {between:?}, which names can contain: two \
                     SiteCaches could get the same prefix; separate them with '/'"
                ));
            }
        }
        let t = PrefixTemplate { parts };
        // Names hold no '/', "..", or leading '/': the rendering of sample names tells for all.
        validate_prefix(&t.render("ns", "name", "site"))
            .map_err(|e| format!("renders a prefix that is not valid: {e}"))?;
        Ok(t)
    }

    /// The prefix of SiteCache `namespace`/`name` of site `site`.
    pub fn render(&self, namespace: &str, name: &str, site: &str) -> String {
        let mut out = String::new();
        for part in &self.parts {
            out.push_str(match part {
                Part::Literal(l) => l,
                Part::Namespace => namespace,
                Part::Name => name,
                Part::Site => site,
            });
        }
        out
    }

    /// Whether prefixes differ across namespaces (the template names `{namespace}`).
    pub fn per_namespace(&self) -> bool {
        self.parts.contains(&Part::Namespace)
    }
}

impl Default for PrefixTemplate {
    fn default() -> Self {
        PrefixTemplate::parse(DEFAULT_PREFIX_TEMPLATE).expect("the default template is valid")
    }
}

impl std::fmt::Display for PrefixTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for part in &self.parts {
            match part {
                Part::Literal(l) => f.write_str(l)?,
                Part::Namespace => f.write_str("{namespace}")?,
                Part::Name => f.write_str("{name}")?,
                Part::Site => f.write_str("{site}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_the_site_as_before() {
        let t = PrefixTemplate::default();
        assert_eq!(t.render("web", "shop-cache", "shop"), "shop/");
        assert!(!t.per_namespace());
        assert_eq!(t.to_string(), DEFAULT_PREFIX_TEMPLATE);
    }

    #[test]
    fn placeholders_render_the_sitecaches_names() {
        let t = PrefixTemplate::parse("{namespace}/{site}/").unwrap();
        assert_eq!(t.render("team-a", "shop-cache", "shop"), "team-a/shop/");
        assert!(t.per_namespace());
        let t = PrefixTemplate::parse("tenants/{namespace}/{name}/deno/").unwrap();
        assert_eq!(
            t.render("b", "shop.cache", "shop"),
            "tenants/b/shop.cache/deno/"
        );
        assert_eq!(t.to_string(), "tenants/{namespace}/{name}/deno/");
        let t = PrefixTemplate::parse("{namespace}_{site}/").unwrap();
        assert_eq!(t.render("a", "x", "b"), "a_b/");
    }

    #[test]
    fn bad_templates_say_what_is_wrong() {
        let cases = [
            ("{ns}/{site}/", "unknown placeholder {ns}"),
            (
                "{namespace/{site}/",
                "unknown placeholder {namespace/{site}",
            ),
            ("{site}/{", "without its '}'"),
            ("site}/", "'}' without its '{'"),
            ("{namespace}/", "names neither {site} nor {name}"),
            ("caches/", "names neither {site} nor {name}"),
            ("{site}", "must end with '/'"),
            ("/{site}/", "must not start with '/'"),
            ("{namespace}//{site}/", "must not contain '//'"),
            ("../{site}/", "must not contain '..'"),
            ("{namespace}{site}/", "side by side"),
            ("{namespace}-{site}/", "which names can contain"),
            ("{namespace}.{site}/", "which names can contain"),
            ("{site} x/", "printable ASCII without spaces"),
            ("", "names neither"),
        ];
        for (template, expected) in cases {
            let e = PrefixTemplate::parse(template).unwrap_err();
            assert!(e.contains(expected), "{template:?}: {e}");
        }
        let long = format!("{}/{{site}}/", "a".repeat(MAX_LEN));
        assert!(PrefixTemplate::parse(&long).unwrap_err().contains("longer"));
    }
}
