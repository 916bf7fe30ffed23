use serde_json::json;

use super::*;

const FULL: &str = r#"
agentResources:
  requests: {cpu: 1, memory: 256Mi}
  limits: {memory: 1Gi}
imagePullSecrets: [{name: registry}]
nodeSelector: {pool: batch}
tolerations:
  - {key: batch, operator: Exists, effect: NoSchedule}
"#;

fn snapshot(value: serde_json::Value) -> SnapshotSpec {
    serde_json::from_value(value).unwrap()
}

fn error_of(text: &str) -> (Option<String>, String) {
    JobDefaults::parse(text).expect_err(text)
}

#[test]
fn parses_every_field_with_yaml_numbers_as_quantities() {
    let d = JobDefaults::parse(FULL).unwrap();
    let r = d.agent_resources.as_ref().unwrap();
    assert_eq!(r.requests.as_ref().unwrap()["cpu"].0, "1");
    assert_eq!(r.requests.as_ref().unwrap()["memory"].0, "256Mi");
    assert_eq!(r.limits.as_ref().unwrap()["memory"].0, "1Gi");
    assert_eq!(d.image_pull_secrets[0].name, "registry");
    assert_eq!(d.node_selector["pool"], "batch");
    assert_eq!(d.tolerations[0].operator.as_deref(), Some("Exists"));
    // JSON is YAML too, and an empty document (the chart's `jobDefaults: {}`) is no defaults.
    let from_json = JobDefaults::parse(r#"{"nodeSelector": {"pool": "batch"}}"#).unwrap();
    assert_eq!(from_json.node_selector["pool"], "batch");
    for empty in ["", "{}", "null", "# nothing\n"] {
        assert_eq!(JobDefaults::parse(empty).unwrap(), JobDefaults::default());
    }
}

#[test]
fn without_own_settings_a_sitecache_gets_every_default() {
    let d = JobDefaults::parse(FULL).unwrap();
    let spec = snapshot(json!({}));
    let e = d.for_snapshot(&spec);
    assert_eq!(e.agent_resources, d.agent_resources.as_ref());
    assert_eq!(e.image_pull_secrets, d.image_pull_secrets.as_slice());
    assert_eq!(e.node_selector, &d.node_selector);
    assert_eq!(e.tolerations, d.tolerations.as_slice());
}

#[test]
fn a_sitecaches_own_field_wins_as_a_whole_and_only_that_field() {
    let d = JobDefaults::parse(FULL).unwrap();
    // Its own node selector and requests: the default's other keys and its limits do not apply;
    // the fields it leaves unset still come from the defaults.
    let spec = snapshot(json!({
        "agentResources": {"requests": {"cpu": "50m"}},
        "pod": {"nodeSelector": {"zone": "a"}},
    }));
    let e = d.for_snapshot(&spec);
    let r = e.agent_resources.unwrap();
    assert_eq!(r.requests.as_ref().unwrap().len(), 1);
    assert_eq!(r.requests.as_ref().unwrap()["cpu"].0, "50m");
    assert_eq!(r.limits, None);
    assert_eq!(
        e.node_selector,
        &BTreeMap::from([("zone".to_owned(), "a".to_owned())])
    );
    assert_eq!(e.image_pull_secrets, d.image_pull_secrets.as_slice());
    assert_eq!(e.tolerations, d.tolerations.as_slice());

    // Its own lists replace the default's, not added to them.
    let spec = snapshot(json!({"pod": {
        "imagePullSecrets": [{"name": "own"}],
        "tolerations": [{"key": "gpu", "operator": "Exists"}],
    }}));
    let e = d.for_snapshot(&spec);
    assert_eq!(e.image_pull_secrets.len(), 1);
    assert_eq!(e.image_pull_secrets[0].name, "own");
    assert_eq!(e.tolerations.len(), 1);
    assert_eq!(e.tolerations[0].key.as_deref(), Some("gpu"));
    assert_eq!(e.node_selector, &d.node_selector);
    assert_eq!(e.agent_resources, d.agent_resources.as_ref());
}

#[test]
fn without_defaults_a_sitecache_gets_its_own_or_nothing() {
    let d = JobDefaults::default();
    let none = snapshot(json!({}));
    let e = d.for_snapshot(&none);
    assert_eq!(e.agent_resources, None);
    assert!(e.image_pull_secrets.is_empty() && e.node_selector.is_empty());
    assert!(e.tolerations.is_empty());
    let spec = snapshot(json!({"pod": {"nodeSelector": {"zone": "a"}}}));
    assert_eq!(d.for_snapshot(&spec).node_selector["zone"], "a");
}

#[test]
fn errors_name_the_field() {
    let cases: &[(&str, &str, &str)] = &[
        ("nodeSelectr: {a: b}", "nodeSelectr", "unknown field"),
        ("tolerations: {key: a}", "tolerations", "must be a list"),
        (
            "tolerations: [{key: a, operator: Exists}, {keys: b, operator: Exists}]",
            "tolerations[1]",
            "unknown field \"keys\"",
        ),
        (
            "tolerations: [{key: a, operator: Sometimes}]",
            "tolerations[0].operator",
            "\"Sometimes\" is not Equal or Exists",
        ),
        (
            "tolerations: [{key: a, operator: Exists, effect: NoRun}]",
            "tolerations[0].effect",
            "NoRun",
        ),
        (
            "tolerations: [{operator: Equal, value: x}]",
            "tolerations[0].operator",
            "without a key",
        ),
        (
            "tolerations: [{key: a, operator: Exists, value: x}]",
            "tolerations[0].value",
            "must be empty",
        ),
        (
            "tolerations: [{key: a, tolerationSeconds: 5}]",
            "tolerations[0].tolerationSeconds",
            "NoExecute",
        ),
        (
            "nodeSelector: {\"bad key!\": x}",
            "nodeSelector[\"bad key!\"]",
            "the key",
        ),
        (
            "nodeSelector: {pool: \"not a value\"}",
            "nodeSelector[\"pool\"]",
            "the value",
        ),
        (
            "imagePullSecrets: [{name: Registry_Creds}]",
            "imagePullSecrets[0].name",
            "not a Secret name",
        ),
        (
            "imagePullSecrets: [{nam: registry}]",
            "imagePullSecrets[0]",
            "unknown field \"nam\"",
        ),
        (
            "agentResources: {requests: {cpu: lots}}",
            "agentResources.requests[\"cpu\"]",
            "\"lots\" is not a quantity",
        ),
        (
            "agentResources: {request: {cpu: 1}}",
            "agentResources",
            "unknown field \"request\"",
        ),
        (
            "agentResources: {limits: [1]}",
            "agentResources",
            "invalid type",
        ),
    ];
    for (text, field, why) in cases {
        let (f, w) = error_of(text);
        assert_eq!(f.as_deref(), Some(*field), "{text}: {w}");
        assert!(w.contains(why), "{text}: {w:?} does not say {why:?}");
    }
    // A document that is not a mapping, or not YAML, names no field.
    let (f, w) = error_of("[1, 2]");
    assert_eq!(f, None);
    assert!(w.contains("must be a mapping"), "{w}");
    let (f, w) = error_of("nodeSelector: {pool: [unclosed");
    assert_eq!(f, None);
    assert!(w.contains("is not a YAML or JSON document"), "{w}");
}

#[test]
fn a_file_error_names_the_file_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job-defaults.yaml");
    std::fs::write(&path, "tolerations: [{key: a, operator: Sometimes}]").unwrap();
    let e = JobDefaults::load(&path).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "--job-defaults {}: tolerations[0].operator: \"Sometimes\" is not Equal or Exists",
            path.display()
        )
    );
    let missing = dir.path().join("missing.yaml");
    let e = JobDefaults::load(&missing).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "--job-defaults {}: cannot be read",
            missing.display()
        )),
        "{e}"
    );
    std::fs::write(&path, FULL).unwrap();
    assert_eq!(
        JobDefaults::load(&path).unwrap(),
        JobDefaults::parse(FULL).unwrap()
    );
}

#[test]
fn quantities() {
    for ok in [
        "1", "0.5", ".5", "250m", "128Mi", "1G", "1e3", "1E-2", "+1", "2Ki",
    ] {
        assert!(is_quantity(ok), "{ok}");
    }
    for bad in ["", "m", "lots", "1.2.3", "1mi", "1KiB", "1e", "."] {
        assert!(!is_quantity(bad), "{bad}");
    }
}
