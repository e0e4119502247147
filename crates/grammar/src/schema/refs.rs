//! `$ref`s: JSON pointers, resolving a reference, the placeholders written while preparing,
//! and the final pass that points each one to the form of its target its use needs.

use super::*;

/// A pointer segment as it is written in a `$ref` (`~0`, `~1`).
pub(super) fn escape_segment(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

pub(super) fn child(at: &str, segs: &[&str]) -> String {
    let mut s = at.to_string();
    for seg in segs {
        s.push('/');
        s.push_str(&escape_segment(seg));
    }
    s
}

pub(super) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value at an (escaped) JSON pointer.
pub(super) fn lookup<'v>(root: &'v Value, ptr: &str) -> Option<&'v Value> {
    if ptr.is_empty() {
        return Some(root);
    }
    let mut v = root;
    for seg in ptr.strip_prefix('/')?.split('/') {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        v = match v {
            Value::Object(m) => m.get(&seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

/// Whether llguidance can follow a pointer (it splits on `/` and unescapes nothing).
pub(super) fn expressible(ptr: &str) -> bool {
    !ptr.contains("~1")
}

pub(super) const PLACEHOLDER: &str = "\u{1}cordial-ref:";

pub(super) fn placeholder_of(v: &Value) -> Option<usize> {
    v.as_str()?.strip_prefix(PLACEHOLDER)?.parse().ok()
}

/// `v` with each placeholder `$ref` replaced by `f(its number)`.
pub(super) fn canonical(v: &Value, f: &dyn Fn(usize) -> String) -> Value {
    let mut v = v.clone();
    replace_refs(&mut v, f);
    v
}

/// Replaces the placeholder `$ref`s of schema `v`, walking only where schemas are (so data in
/// `enum`, `const` and the like is never touched, whatever it holds).
pub(super) fn replace_refs(v: &mut Value, f: &dyn Fn(usize) -> String) {
    let Value::Object(m) = v else { return };
    for (k, x) in m.iter_mut() {
        match k.as_str() {
            "$ref" => {
                if let Some(n) = placeholder_of(x) {
                    *x = Value::String(f(n));
                }
            }
            // Maps of name → schema.
            "properties" | "patternProperties" | "$defs" | "definitions" | "dependentSchemas"
            | "dependencies" => {
                if let Value::Object(named) = x {
                    for s in named.values_mut() {
                        replace_refs(s, f);
                    }
                }
            }
            // One schema or a list of schemas.
            "additionalProperties"
            | "items"
            | "prefixItems"
            | "additionalItems"
            | "allOf"
            | "anyOf"
            | "oneOf"
            | "not"
            | "contains"
            | "propertyNames" => match x {
                Value::Array(a) => a.iter_mut().for_each(|s| replace_refs(s, f)),
                s => replace_refs(s, f),
            },
            _ => {}
        }
    }
}

impl Prep<'_> {
    /// The pointer a `$ref` names (escaped form, "" for the root), checked to exist.
    pub(super) fn resolve(&self, r: &Value, at: &str) -> Result<String, GrammarError> {
        let Some(r) = r.as_str() else {
            return Err(invalid(at, "`$ref` must be a string"));
        };
        let frag = match &self.base {
            Some(base) => r.strip_prefix(base.as_str()).unwrap_or(r),
            None => r,
        };
        let ptr = match frag {
            "#" => String::new(),
            "" if frag.len() < r.len() => String::new(),
            f if f.starts_with("#/") => percent_decode(&f[1..]),
            _ => {
                return Err(unsupported(
                    "$ref",
                    at,
                    format!("{r:?}: only references inside the schema (\"#/…\") are supported"),
                ))
            }
        };
        if lookup(self.root, &ptr).is_none() {
            return Err(unsupported(
                "$ref",
                at,
                format!("{r:?} points to nothing in the schema"),
            ));
        }
        Ok(ptr)
    }

    /// A placeholder `$ref` to `target` as used with `role`; made real by `finish_refs`.
    pub(super) fn ref_to(&mut self, target: String, role: Role) -> Value {
        let role = match role {
            Role::Part(s) if s.all && self.fewer_copies => Role::Plain,
            r => r,
        };
        self.refs.push((target, role));
        Value::String(format!("{PLACEHOLDER}{}", self.refs.len() - 1))
    }

    /// Whether the node at `m` is a `$ref` with nothing else that constrains (up to draft 7,
    /// siblings of `$ref` are ignored).
    pub(super) fn is_pure_ref(&self, m: &Map<String, Value>) -> bool {
        m.contains_key("$ref")
            && (self.draft <= Draft::D7
                || m.keys().all(|k| k == "$ref" || !is_keyword(k, self.draft)))
    }

    /// Replaces the placeholder `$ref`s: a pointer to the subschema where it stands when it was
    /// prepared for the same role there, else to a copy prepared for the role (under `$defs`).
    /// A copy that comes out the same as the original (nothing below it would be closed) is
    /// dropped for the original: fewer copies, and llguidance's order of resolving recursive
    /// references stays the schema's own.
    pub(super) fn finish_refs(&mut self, out: &mut Value) -> Result<(), GrammarError> {
        let taken: HashSet<String> = out
            .get("$defs")
            .and_then(Value::as_object)
            .map(|d| d.keys().cloned().collect())
            .unwrap_or_default();
        // Where each placeholder points: `Ok(pointer)` in place, `Err(copy index)`.
        let mut resolved: Vec<Result<String, usize>> = Vec::new();
        // Copies: (name, target, prepared value).
        let mut copies: Vec<(String, String, Value)> = Vec::new();
        let mut next_name = 0;
        let mut i = 0;
        while i < self.refs.len() {
            let (target, role) = self.refs[i].clone();
            let direct = self.in_place.get(&target) == Some(&role) && expressible(&target);
            let to = if direct {
                Ok(target)
            } else if let Some(&c) = self.copies.get(&(target.clone(), role.clone())) {
                Err(c)
            } else {
                let name = loop {
                    let n = format!("__cordial_{next_name}");
                    next_name += 1;
                    if !taken.contains(&n) {
                        break n;
                    }
                };
                let c = copies.len();
                self.copies.insert((target.clone(), role.clone()), c);
                copies.push((name, target.clone(), Value::Null));
                let v = lookup(self.root, &target)
                    .cloned()
                    .unwrap_or(Value::Bool(true));
                copies[c].2 = self.node(&v, &target, &role, false)?;
                Err(c)
            };
            resolved.push(to);
            i += 1;
        }
        // Which copies equal their original once references to equal copies are read as
        // references to the originals: start from all candidates, drop those that differ, until
        // nothing changes.
        let mut same: Vec<bool> = copies
            .iter()
            .map(|(_, t, _)| self.in_place.contains_key(t) && expressible(t))
            .collect();
        loop {
            let pointer_of = |n: usize, same: &[bool]| -> String {
                match &resolved[n] {
                    Ok(p) => p.clone(),
                    Err(c) if same[*c] => copies[*c].1.clone(),
                    Err(c) => format!("copy:{c}"),
                }
            };
            let mut changed = false;
            for c in 0..copies.len() {
                if !same[c] {
                    continue;
                }
                let original = lookup(out, &copies[c].1).cloned().unwrap_or(Value::Null);
                let a = canonical(&copies[c].2, &|n| pointer_of(n, &same));
                let b = canonical(&original, &|n| pointer_of(n, &same));
                if a != b {
                    same[c] = false;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        let final_ref = |n: usize| -> String {
            match &resolved[n] {
                Ok(p) => format!("#{}", p.replace("~0", "~")),
                Err(c) if same[*c] => format!("#{}", copies[*c].1.replace("~0", "~")),
                Err(c) => format!("#/$defs/{}", copies[*c].0),
            }
        };
        let mut defs: BTreeMap<String, Value> = BTreeMap::new();
        for (c, (name, _, v)) in copies.iter().enumerate() {
            if !same[c] {
                defs.insert(name.clone(), v.clone());
            }
        }
        if !defs.is_empty() {
            if let Value::Object(m) = out {
                let d = m
                    .entry("$defs")
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(d) = d {
                    d.extend(defs);
                }
            }
        }
        replace_refs(out, &|n| final_ref(n));
        Ok(())
    }
}
