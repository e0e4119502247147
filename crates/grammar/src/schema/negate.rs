//! Keywords that only narrow, rewritten into ones llguidance enforces: `not` (negation into
//! an equivalent schema) and `propertyNames` (a name pattern), with the regex and value
//! complements they need.

use super::*;

/// Values other than `vals` (scalars only), as a schema.
pub(super) fn negate_values(vals: &[Value]) -> Option<Value> {
    let mut alts = Vec::new();
    if !vals.iter().any(Value::is_null) {
        alts.push(json!({"type": "null"}));
    }
    let bools: Vec<bool> = vals.iter().filter_map(Value::as_bool).collect();
    match (bools.contains(&true), bools.contains(&false)) {
        (false, false) => alts.push(json!({"type": "boolean"})),
        (true, false) => alts.push(json!({"enum": [false]})),
        (false, true) => alts.push(json!({"enum": [true]})),
        (true, true) => {}
    }
    let strings: Vec<&str> = vals.iter().filter_map(Value::as_str).collect();
    if strings.is_empty() {
        alts.push(json!({"type": "string"}));
    } else {
        alts.push(json!({"type": "string", "pattern": not_literals(&strings)?}));
    }
    let mut nums: Vec<f64> = vals.iter().filter_map(Value::as_f64).collect();
    nums.sort_by(f64::total_cmp);
    nums.dedup();
    if nums.is_empty() {
        alts.push(json!({"type": "number"}));
    } else {
        alts.push(json!({"type": "number", "exclusiveMaximum": nums[0]}));
        for w in nums.windows(2) {
            alts.push(
                json!({"type": "number", "exclusiveMinimum": w[0], "exclusiveMaximum": w[1]}),
            );
        }
        alts.push(json!({"type": "number", "exclusiveMinimum": nums[nums.len() - 1]}));
    }
    if vals.iter().any(|v| v.is_array() || v.is_object()) {
        return None;
    }
    alts.push(json!({"type": "array"}));
    alts.push(json!({"type": "object"}));
    Some(json!({"anyOf": alts}))
}

/// The numbers outside a node's `minimum`/`maximum`/`exclusive*` range, plus non-numbers.
pub(super) fn negate_bounds(m: &Map<String, Value>) -> Option<Value> {
    let num = |k: &str| m.get(k).and_then(Value::as_f64);
    let flag = |k: &str| m.get(k).and_then(Value::as_bool).unwrap_or(false);
    // Draft 4 writes exclusiveness as a flag on minimum/maximum.
    let lower = match (num("minimum"), num("exclusiveMinimum")) {
        (Some(a), Some(b)) => Some(if b >= a { (b, true) } else { (a, false) }),
        (Some(a), None) => Some((a, flag("exclusiveMinimum"))),
        (None, Some(b)) => Some((b, true)),
        (None, None) => None,
    };
    let upper = match (num("maximum"), num("exclusiveMaximum")) {
        (Some(a), Some(b)) => Some(if b <= a { (b, true) } else { (a, false) }),
        (Some(a), None) => Some((a, flag("exclusiveMaximum"))),
        (None, Some(b)) => Some((b, true)),
        (None, None) => None,
    };
    let mut alts = vec![json!({"type": ["null", "boolean", "string", "array", "object"]})];
    if let Some((v, excl)) = lower {
        alts.push(if excl {
            json!({"type": "number", "maximum": v})
        } else {
            json!({"type": "number", "exclusiveMaximum": v})
        });
    }
    if let Some((v, excl)) = upper {
        alts.push(if excl {
            json!({"type": "number", "minimum": v})
        } else {
            json!({"type": "number", "exclusiveMinimum": v})
        });
    }
    if alts.len() == 1 {
        return None;
    }
    Some(json!({"anyOf": alts}))
}

/// One character written so that regex syntax reads it literally, in or out of a class.
pub(super) fn regex_char(c: char) -> String {
    if c.is_ascii_alphanumeric() {
        c.to_string()
    } else {
        format!("\\x{{{:x}}}", c as u32)
    }
}

pub(super) fn regex_literal(s: &str) -> String {
    s.chars().map(regex_char).collect()
}

/// A full-match pattern for every string except the `words` (a trie of the words, each node
/// written as: stop here if no word ends here, or leave the trie by a character no word
/// continues with, or follow a word's next character).
pub(super) fn not_literals(words: &[&str]) -> Option<String> {
    #[derive(Default)]
    struct Node {
        end: bool,
        next: BTreeMap<char, Node>,
    }
    pub(super) fn write(n: &Node) -> String {
        let mut alts: Vec<String> = Vec::new();
        if !n.end {
            alts.push(String::new());
        }
        if n.next.is_empty() {
            alts.push("(?s:.)+".into());
        } else {
            let class: String = n.next.keys().map(|&c| regex_char(c)).collect();
            alts.push(format!("[^{class}](?s:.)*"));
            for (&c, child) in &n.next {
                alts.push(format!("{}{}", regex_char(c), write(child)));
            }
        }
        format!("(?:{})", alts.join("|"))
    }
    if words.iter().map(|w| w.chars().count()).sum::<usize>() > MAX_COMPLEMENT_CHARS {
        return None;
    }
    let mut root = Node::default();
    for w in words {
        let mut n = &mut root;
        for c in w.chars() {
            n = n.next.entry(c).or_default();
        }
        n.end = true;
    }
    Some(format!("^{}$", write(&root)))
}

/// The complement of a pattern that is one anchored character class repeated
/// (`^[…]+$` or `^[…]*$`), the usual "only these characters" check; `None` for other patterns.
pub(super) fn complement_class_pattern(p: &str) -> Option<String> {
    let body = p.strip_prefix("^[")?;
    let (class, rest) = {
        let bytes: Vec<char> = body.chars().collect();
        let mut i = 0;
        let mut end = None;
        while i < bytes.len() {
            match bytes[i] {
                '\\' => i += 2,
                '[' => return None,
                ']' if i > 0 => {
                    end = Some(i);
                    break;
                }
                _ => i += 1,
            }
        }
        let end = end?;
        let class: String = bytes[..end].iter().collect();
        let rest: String = bytes[end + 1..].iter().collect();
        (class, rest)
    };
    let (negated, inner) = match class.strip_prefix('^') {
        Some(i) => (true, i.to_string()),
        None => (false, class.clone()),
    };
    if inner.is_empty() {
        return None;
    }
    let other = if negated {
        format!("[{inner}]")
    } else {
        format!("[^{inner}]")
    };
    match rest.as_str() {
        "+$" => Some(format!("^(?:|(?s:.)*{other}(?s:.)*)$")),
        "*$" => Some(format!("^(?s:.)*{other}(?s:.)*$")),
        _ => None,
    }
}

/// Whether property names match a JSON Schema `pattern` (search semantics), as llguidance
/// matches pattern properties.
pub(super) struct NameMatcher(llguidance::derivre::Regex);

impl NameMatcher {
    pub(super) fn new(pattern: &str) -> Result<NameMatcher, String> {
        let mut b = RegexBuilder::new();
        let e = b
            .mk_regex_for_serach(&llguidance::regex_to_lark(pattern, "dw"))
            .map_err(|e| format!("bad pattern {pattern:?}: {e}"))?;
        let rx = b
            .to_regex_limited(e, 10_000)
            .map_err(|e| format!("pattern {pattern:?} is too complex: {e}"))?;
        Ok(NameMatcher(rx))
    }

    pub(super) fn is_match(&mut self, s: &str) -> bool {
        self.0.is_match(s)
    }
}

impl Prep<'_> {
    /// `propertyNames`: declared properties whose names fail are made absent; other names must
    /// match (a pattern property carrying what `additionalProperties` allowed).
    pub(super) fn property_names(
        &mut self,
        names: &Value,
        at: &str,
        m: &Map<String, Value>,
        out: &mut Map<String, Value>,
        group: &Group,
    ) -> Result<(), GrammarError> {
        let refuse = |why: &str| unsupported("propertyNames", at, why.to_string());
        let Value::Object(n) = names else {
            // `false`: only the empty object.
            out.insert("maxProperties".into(), json!(0));
            return Ok(());
        };
        let mut pattern: Option<String> = None;
        let mut min_len: Option<u64> = None;
        let mut max_len: Option<u64> = None;
        let mut allowed: Option<Vec<String>> = None;
        for (k, v) in n {
            if !is_keyword(k, self.draft) {
                continue;
            }
            match (k.as_str(), v) {
                ("type", Value::String(t)) if t == "string" => {}
                ("pattern", Value::String(p)) => pattern = Some(p.clone()),
                ("minLength", v) if v.is_u64() => min_len = v.as_u64(),
                ("maxLength", v) if v.is_u64() => max_len = v.as_u64(),
                ("enum", Value::Array(a)) => {
                    allowed = Some(a.iter().filter_map(Value::as_str).map(str::to_string).collect())
                }
                ("const", Value::String(s)) => allowed = Some(vec![s.clone()]),
                ("format", Value::String(f)) if !KNOWN_FORMATS.contains(&f.as_str()) => {}
                _ => return Err(refuse(&format!("`{k}` in propertyNames cannot be enforced (supported: pattern, minLength/maxLength, enum, const)"))),
            }
        }
        let length_ok = |s: &str| {
            let l = s.chars().count() as u64;
            min_len.is_none_or(|m| l >= m) && max_len.is_none_or(|m| l <= m)
        };
        let mut matcher = match &pattern {
            Some(p) => Some(NameMatcher::new(p).map_err(|e| refuse(&e))?),
            None => None,
        };
        let mut name_ok = |s: &str| -> bool {
            length_ok(s)
                && allowed.as_ref().is_none_or(|a| a.iter().any(|x| x == s))
                && matcher.as_mut().is_none_or(|mm| mm.is_match(s))
        };
        // Declared names that fail must be absent.
        if let Some(Value::Object(props)) = out.get_mut("properties") {
            for (k, v) in props.iter_mut() {
                if !name_ok(k) {
                    *v = Value::Bool(false);
                }
            }
        }
        if out.get("additionalProperties") == Some(&Value::Bool(false)) {
            return Ok(());
        }
        if m.contains_key("patternProperties") || group.object_parts > 0 {
            return Err(refuse(
                "only enforced on an object without patternProperties or composed parts",
            ));
        }
        let regex = match (&allowed, &pattern, min_len.is_some() || max_len.is_some()) {
            (Some(a), _, _) => {
                let names: Vec<String> = a
                    .iter()
                    .filter(|s| name_ok(s))
                    .map(|s| regex_literal(s))
                    .collect();
                if names.is_empty() {
                    out.insert("additionalProperties".into(), Value::Bool(false));
                    return Ok(());
                }
                format!("^(?:{})$", names.join("|"))
            }
            (None, Some(p), false) => p.clone(),
            (None, None, true) => format!(
                "^(?s:.){{{},{}}}$",
                min_len.unwrap_or(0),
                max_len.map(|x| x.to_string()).unwrap_or_default()
            ),
            (None, Some(_), true) => {
                return Err(refuse(
                    "a pattern together with a length bound cannot be enforced",
                ))
            }
            (None, None, false) => return Ok(()),
        };
        let addl = out
            .remove("additionalProperties")
            .unwrap_or(Value::Bool(true));
        if !is_true_schema(&addl, self.draft) {
            // The pattern's schema would also apply to declared properties whose names match.
            let declared: Vec<String> = out
                .get("properties")
                .and_then(Value::as_object)
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default();
            if declared.iter().any(|d| name_ok(d)) {
                return Err(refuse("cannot be combined with an `additionalProperties` schema and declared properties"));
            }
        }
        out.insert("patternProperties".into(), json!({ regex: addl }));
        out.insert("additionalProperties".into(), Value::Bool(false));
        Ok(())
    }

    /// A schema for exactly the instances `s` rejects, or `None` where that is not expressible.
    pub(super) fn negate(
        &mut self,
        s: &Value,
        at: &str,
        depth: usize,
    ) -> Result<Option<Value>, GrammarError> {
        self.visit()?;
        if depth > MAX_NEGATION_DEPTH {
            return Ok(None);
        }
        let m = match s {
            Value::Bool(b) => return Ok(Some(Value::Bool(!b))),
            Value::Object(m) => m,
            _ => return Err(invalid(at, "a schema must be an object or a boolean")),
        };
        if self.is_pure_ref(m) {
            let ptr = self.resolve(&m["$ref"], at)?;
            let target = lookup(self.root, &ptr)
                .cloned()
                .unwrap_or(Value::Bool(true));
            return self.negate(&target, &ptr, depth + 1);
        }
        let mut alts: Vec<Value> = Vec::new();
        let number_bound = |k: &str| {
            matches!(
                k,
                "minimum" | "maximum" | "exclusiveMinimum" | "exclusiveMaximum"
            )
        };
        let mut numeric_done = false;
        for (k, v) in m {
            if !is_keyword(k, self.draft) {
                continue;
            }
            let kat = child(at, &[k]);
            let alt = match (k.as_str(), v) {
                ("type", t) => {
                    let types: Vec<&str> = match t {
                        Value::String(s) => vec![s.as_str()],
                        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                        _ => return Ok(None),
                    };
                    let mut rest = Vec::new();
                    for t in ["null", "boolean", "string", "array", "object", "number"] {
                        if types.contains(&t) || (t == "number" && types.contains(&"integer")) {
                            continue;
                        }
                        rest.push(t);
                    }
                    if types.contains(&"integer") && !types.contains(&"number") {
                        // Non-integer numbers cannot be written as a type.
                        return Ok(None);
                    }
                    Some(json!({"type": rest}))
                }
                ("enum", Value::Array(vals)) => negate_values(vals),
                ("const", c) => negate_values(std::slice::from_ref(c)),
                ("required", Value::Array(names)) => {
                    let names: Vec<&str> = names.iter().filter_map(Value::as_str).collect();
                    if names.is_empty() {
                        Some(Value::Bool(false))
                    } else {
                        let absent: Vec<Value> = names
                            .iter()
                            .map(|n| json!({"properties": {*n: false}}))
                            .collect();
                        Some(json!({"type": "object", "anyOf": absent}))
                    }
                }
                ("properties", Value::Object(props)) => {
                    if m.contains_key("patternProperties") || m.contains_key("additionalProperties")
                    {
                        return Ok(None);
                    }
                    let mut any = Vec::new();
                    for (name, sub) in props {
                        if is_true_schema(sub, self.draft) {
                            continue;
                        }
                        let Some(ns) = self.negate(sub, &child(at, &[k, name]), depth + 1)? else {
                            return Ok(None);
                        };
                        if ns == Value::Bool(false) {
                            continue;
                        }
                        any.push(json!({"type": "object", "required": [name], "properties": {name.clone(): ns}}));
                    }
                    Some(match any.len() {
                        0 => Value::Bool(false),
                        1 => any.pop().unwrap_or(Value::Bool(false)),
                        _ => json!({"anyOf": any}),
                    })
                }
                ("pattern", Value::String(p)) => match complement_class_pattern(p) {
                    Some(c) => Some(json!({"type": "string", "pattern": c})),
                    None => return Ok(None),
                },
                ("minLength", n) => n.as_u64().map(|n| {
                    if n == 0 {
                        Value::Bool(false)
                    } else {
                        json!({"type": "string", "maxLength": n - 1})
                    }
                }),
                ("maxLength", n) => n
                    .as_u64()
                    .map(|n| json!({"type": "string", "minLength": n + 1})),
                ("minItems", n) => n.as_u64().map(|n| {
                    if n == 0 {
                        Value::Bool(false)
                    } else {
                        json!({"type": "array", "maxItems": n - 1})
                    }
                }),
                ("maxItems", n) => n
                    .as_u64()
                    .map(|n| json!({"type": "array", "minItems": n + 1})),
                (k, _) if number_bound(k) => {
                    if numeric_done {
                        continue;
                    }
                    numeric_done = true;
                    match negate_bounds(m) {
                        Some(v) => Some(v),
                        None => return Ok(None),
                    }
                }
                ("format", Value::String(f)) if !KNOWN_FORMATS.contains(&f.as_str()) => continue,
                ("uniqueItems", Value::Bool(false)) => continue,
                ("allOf", Value::Array(a)) => {
                    let mut any = Vec::new();
                    for (i, sub) in a.iter().enumerate() {
                        let Some(n) =
                            self.negate(sub, &child(at, &[k, &i.to_string()]), depth + 1)?
                        else {
                            return Ok(None);
                        };
                        any.push(n);
                    }
                    Some(json!({"anyOf": any}))
                }
                ("anyOf", Value::Array(a)) | ("oneOf", Value::Array(a))
                    if k == "anyOf" || a.len() == 1 =>
                {
                    let mut all = Vec::new();
                    for (i, sub) in a.iter().enumerate() {
                        let Some(n) =
                            self.negate(sub, &child(at, &[k, &i.to_string()]), depth + 1)?
                        else {
                            return Ok(None);
                        };
                        all.push(n);
                    }
                    Some(json!({"allOf": all}))
                }
                ("not", sub) => {
                    Some(self.node(sub, &kat, &Role::Part(Shared::everything()), false)?)
                }
                ("$ref", r) => {
                    let ptr = self.resolve(r, at)?;
                    let target = lookup(self.root, &ptr)
                        .cloned()
                        .unwrap_or(Value::Bool(true));
                    match self.negate(&target, &ptr, depth + 1)? {
                        Some(n) => Some(n),
                        None => return Ok(None),
                    }
                }
                _ => return Ok(None),
            };
            match alt {
                Some(a) => alts.push(a),
                None => return Ok(None),
            }
        }
        alts.retain(|a| *a != Value::Bool(false));
        Ok(Some(if alts.iter().any(|a| *a == Value::Bool(true)) {
            Value::Bool(true)
        } else {
            match alts.len() {
                0 => Value::Bool(false),
                1 => alts.pop().unwrap_or(Value::Bool(false)),
                _ => json!({"anyOf": alts}),
            }
        }))
    }
}
