//! A kustomize Component's patches applied to objects `install` rendered
//! from deploy/, so that a component's changes live in its own
//! `kustomization.yaml` only: JSON patches (`op: add`) on a `target` kind and
//! name, and `$patch: delete` of an object. Anything else in a component is
//! refused by name, so deploy/ cannot grow a patch `install` would skip.

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

/// Applies every patch of `kustomization` (the component's file, `file` in
/// errors) to `objects`.
pub fn apply(file: &str, kustomization: &str, objects: &mut Vec<Value>) -> Result<()> {
    let k: Value = serde_saphyr::from_str(kustomization).with_context(|| format!("{file} does not parse"))?;
    for (i, p) in at(&k, "/patches").as_array().map(Vec::as_slice).unwrap_or_default().iter().enumerate() {
        let text = at(p, "/patch").as_str().with_context(|| format!("{file}: patches[{i}] has no inline patch"))?;
        let body: Value = serde_saphyr::from_str(text).with_context(|| format!("{file}: patches[{i}] does not parse"))?;
        if p.get("target").is_none() {
            if at(&body, "/$patch") != "delete" {
                bail!("{file}: patches[{i}]: only `$patch: delete` is applied without a target");
            }
            objects.retain(|o| !(at(o, "/kind") == at(&body, "/kind") && at(o, "/metadata/name") == at(&body, "/metadata/name")));
            continue;
        }
        let (kind, name) = (at(p, "/target/kind"), at(p, "/target/name"));
        let ops = body.as_array().with_context(|| format!("{file}: patches[{i}] is not a JSON patch (a list of operations)"))?;
        let mut matched = false;
        for o in objects.iter_mut().filter(|o| at(o, "/kind") == kind && at(o, "/metadata/name") == name) {
            matched = true;
            for op in ops {
                add(o, op).with_context(|| format!("{file}: patches[{i}] on {kind} {name}"))?;
            }
        }
        if !matched {
            bail!("{file}: patches[{i}]: no {kind} {name} among the rendered objects");
        }
    }
    Ok(())
}

/// The value at a JSON pointer, or null.
fn at<'v>(v: &'v Value, pointer: &str) -> &'v Value {
    v.pointer(pointer).unwrap_or(&Value::Null)
}

/// One `op: add` at its path (`-` appends to a list).
fn add(target: &mut Value, op: &Value) -> Result<()> {
    if at(op, "/op") != "add" {
        bail!("only `op: add` is applied, not {}", at(op, "/op"));
    }
    let path = at(op, "/path").as_str().context("an operation without a path")?;
    let (parent, last) = path.rsplit_once('/').context("a path that does not start with /")?;
    let last = last.replace("~1", "/").replace("~0", "~");
    let value = at(op, "/value").clone();
    match target.pointer_mut(parent).with_context(|| format!("{path}: {parent} does not exist"))? {
        Value::Array(a) if last == "-" => a.push(value),
        Value::Array(a) => {
            let at: usize = last.parse().with_context(|| format!("{path}: {last} is not an index"))?;
            anyhow::ensure!(at <= a.len(), "{path}: index {at} is past the end");
            a.insert(at, value);
        }
        Value::Object(m) => {
            m.insert(last, value);
        }
        _ => bail!("{path}: {parent} is neither a list nor a map"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn adds_append_insert_and_set_and_a_delete_removes() {
        let k = r#"
patches:
- patch: |-
    $patch: delete
    kind: EnvoyFilter
    metadata: {name: f}
- target: {kind: Role, name: r}
  patch: |-
    - op: add
      path: /rules/-
      value: {verbs: [get]}
    - op: add
      path: /rules/0
      value: first
    - op: add
      path: /metadata/labels
      value: {a: b}
"#;
        let mut objs = vec![
            json!({"kind": "EnvoyFilter", "metadata": {"name": "f"}}),
            json!({"kind": "Role", "metadata": {"name": "r"}, "rules": ["x"]}),
        ];
        apply("k.yaml", k, &mut objs).unwrap();
        assert_eq!(
            objs,
            [json!({"kind": "Role", "metadata": {"name": "r", "labels": {"a": "b"}}, "rules": ["first", "x", {"verbs": ["get"]}]})]
        );
    }

    #[test]
    fn a_patch_it_cannot_apply_is_refused_by_name() {
        let mut objs = vec![json!({"kind": "Role", "metadata": {"name": "r"}, "rules": []})];
        let replace = "patches:\n- target: {kind: Role, name: r}\n  patch: |-\n    - op: replace\n      path: /rules\n      value: []\n";
        let e = format!("{:#}", apply("k.yaml", replace, &mut objs).unwrap_err());
        assert!(e.contains("k.yaml: patches[0]") && e.contains("only `op: add`"), "{e}");
        let missing = "patches:\n- target: {kind: DaemonSet, name: d}\n  patch: |-\n    - op: add\n      path: /a\n      value: 1\n";
        let e = format!("{:#}", apply("k.yaml", missing, &mut objs).unwrap_err());
        assert!(e.contains("no \"DaemonSet\" \"d\""), "{e}");
    }
}
