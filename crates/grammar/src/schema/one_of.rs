//! `oneOf` narrowed by whole JSON types: when two or more branches accept every value of a
//! type (a branch with only object keywords accepts every string, number, …), every value of
//! that type matches two branches, which `oneOf` forbids, so the type is excluded. Compiled as
//! `anyOf` without this, such a `oneOf` would let those values through (a string where three
//! object branches lack `"type": "object"`).

use super::*;

/// The JSON types, as bits of a set.
const NULL: u8 = 1;
const BOOLEAN: u8 = 2;
const NUMBER: u8 = 4;
const STRING: u8 = 8;
const ARRAY: u8 = 16;
const OBJECT: u8 = 32;
const ALL: u8 = 63;
const NAMES: [(u8, &str); 6] = [
    (NULL, "null"),
    (BOOLEAN, "boolean"),
    (NUMBER, "number"),
    (STRING, "string"),
    (ARRAY, "array"),
    (OBJECT, "object"),
];

/// Most `$ref`s followed from one branch.
const MAX_DEPTH: u32 = 16;

/// The types whose values the keyword `k` constrains (all of them where unsure).
fn constrains(k: &str, v: &Value) -> u8 {
    match k {
        "minLength" | "maxLength" | "pattern" => STRING,
        "format" => match v.as_str() {
            Some(f) if !KNOWN_FORMATS.contains(&f) => 0,
            _ => STRING,
        },
        "minimum" | "maximum" | "exclusiveMinimum" | "exclusiveMaximum" | "multipleOf" => NUMBER,
        "items" | "prefixItems" | "additionalItems" | "minItems" | "maxItems" | "uniqueItems"
        | "contains" | "minContains" | "maxContains" | "unevaluatedItems" => ARRAY,
        "properties"
        | "patternProperties"
        | "additionalProperties"
        | "required"
        | "minProperties"
        | "maxProperties"
        | "propertyNames"
        | "dependencies"
        | "dependentRequired"
        | "dependentSchemas"
        | "unevaluatedProperties" => OBJECT,
        _ => ALL,
    }
}

impl Prep<'_> {
    /// The types of which `s` accepts every value; conservative (a type is left out whenever
    /// this cannot tell, e.g. beside `enum`, compositions or an integer-only `type`).
    fn accepts_whole(&self, s: &Value, depth: u32) -> u8 {
        let m = match s {
            Value::Bool(true) => return ALL,
            Value::Object(m) => m,
            _ => return 0,
        };
        let mut set = ALL;
        if let Some(r) = m.get("$ref") {
            if depth >= MAX_DEPTH {
                return 0;
            }
            let target = self.resolve(r, "").ok().and_then(|p| lookup(self.root, &p));
            let Some(target) = target else { return 0 };
            set &= self.accepts_whole(target, depth + 1);
            if self.draft <= Draft::D7 {
                return set; // `$ref` siblings are ignored up to draft 7.
            }
        }
        for (k, v) in m {
            if k == "$ref" || !is_keyword(k, self.draft) {
                continue;
            }
            if k == "type" {
                let names: Vec<&str> = match v {
                    Value::String(t) => vec![t.as_str()],
                    Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                    _ => return 0,
                };
                let listed = NAMES
                    .iter()
                    .filter(|(_, n)| names.contains(n))
                    .fold(0, |acc, (b, _)| acc | b);
                set &= listed;
                continue;
            }
            set &= !constrains(k, v);
        }
        set
    }

    /// The types no instance of `oneOf: branches` can have, as a `type` list of the others
    /// (`None` when no type is excluded, or every one would be).
    pub(super) fn one_of_types(&self, branches: &[Value]) -> Option<Value> {
        let sets: Vec<u8> = branches.iter().map(|b| self.accepts_whole(b, 0)).collect();
        let excluded = NAMES
            .iter()
            .filter(|(bit, _)| sets.iter().filter(|s| *s & bit != 0).count() >= 2)
            .fold(0, |acc, (b, _)| acc | b);
        if excluded == 0 || excluded == ALL {
            return None;
        }
        let left: Vec<&str> = NAMES
            .iter()
            .filter(|(bit, _)| excluded & bit == 0)
            .map(|(_, n)| *n)
            .collect();
        Some(json!({ "type": left }))
    }
}
