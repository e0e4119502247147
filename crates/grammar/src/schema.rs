//! A request's JSON Schema → the schema llguidance compiles.
//!
//! llguidance compiles a subset of JSON Schema, refuses some keywords, and reads an object
//! without `additionalProperties` as open (a small model then invents keys until `max_tokens`).
//! This pass rewrites the schema, once per compile, into an equivalent one (or, where stated, a
//! narrower one whose every instance is still valid) that llguidance compiles exactly:
//!
//! - **Drafts**: the root `$schema` picks the draft (2020-12 when absent or unknown; draft 3 is
//!   refused). Keywords the draft does not define are annotations and are dropped, as the
//!   draft's own validator ignores them; `$ref` siblings are dropped up to draft 7.
//! - **Closed objects by default**: an object schema with `properties` and no
//!   `additionalProperties` gets `"additionalProperties": false`, except where that could exclude
//!   every valid instance or change the meaning: `required` (or a dependency) naming a key outside
//!   the properties, `patternProperties`, `unevaluatedProperties`, or an unresolvable or cyclic
//!   composition. An object composed from parts (`allOf`, `$ref` beside other keywords,
//!   `anyOf`/`oneOf` next to its own object keywords, `if`/`then`/`else`, dependent schemas) is
//!   closed as a whole, to the union of the properties its parts declare; the parts themselves
//!   stay open (closing each part would exclude the other parts' properties). Subschemas merged
//!   from several parts (a property two parts both define) stay open.
//! - **Unknown `format`s** are annotations (dropped); known ones are enforced by llguidance.
//! - **Keywords that only narrow** are rewritten into ones llguidance enforces: `not` (negated
//!   into an equivalent schema where the negation is expressible), `if`/`then`/`else` (as
//!   `anyOf [if ∧ then, ¬if ∧ else]`), `dependencies` / `dependentRequired` /
//!   `dependentSchemas` (as `anyOf [key absent, key present ∧ dependency]`), `propertyNames`
//!   (as a name pattern), `unevaluatedProperties: false` (as the closed union, when only `allOf`
//!   and `$ref` compose the object), `uniqueItems` (only where it holds trivially: at most one
//!   item), `contains: {}` (as `minItems: 1`). What cannot be enforced is refused ([`GrammarError::Unsupported`], naming
//!   the keyword and where it is), never silently dropped.
//! - **`oneOf`** is compiled as `anyOf` (llguidance's `coerce_one_of`), as vLLM, llama.cpp and
//!   xgrammar do: an instance may match more than one branch. Whole types that two branches
//!   accept are excluded first (every such value would match both; `one_of.rs`).
//!
//! `$ref`s must point inside the schema (`#/…`, or the root's own `$id` followed by `#/…`).
//! A referenced subschema is compiled in the form its use needs (closed where it stands alone,
//! open where it is a part of a composition): a second form is copied under
//! `$defs/__cordial_N` when both are needed.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use llguidance::derivre::RegexBuilder;
use serde_json::{json, Map, Value};

use crate::compile::GrammarError;

mod compose;
mod negate;
mod one_of;
mod refs;

use compose::*;
use negate::*;
use refs::*;

/// Formats llguidance enforces (`json/formats.rs` in llguidance 1.9.1); others are annotations.
pub(crate) const KNOWN_FORMATS: [&str; 11] = [
    "date-time",
    "time",
    "date",
    "duration",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "uuid",
    "uri",
    "unknown",
];

/// Conditional dependencies (and `if`s) per object: each doubles the object's alternatives.
pub(crate) const MAX_CONDITIONALS: usize = 6;
/// Subschemas visited while preparing one schema (copies and negations included).
const VISIT_BUDGET: usize = 200_000;
/// Work spent collecting the parts of compositions (parts visited, and 64-byte units of
/// subschema text compared); past it, compositions are left open.
const COLLECT_BUDGET: usize = 4_000_000;
/// How deep `not` may nest through `$ref`s and applicators.
const MAX_NEGATION_DEPTH: usize = 16;
/// Most characters of string literals a `not` of an `enum`/`const` is written out for.
const MAX_COMPLEMENT_CHARS: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Draft {
    D4,
    D6,
    D7,
    D2019,
    D2020,
}

impl Draft {
    /// The draft a `$schema` URI names; `Ok(None)` for a URI we do not know (2020-12 is used).
    fn from_uri(uri: &str) -> Result<Option<Draft>, ()> {
        let u = uri.trim().trim_end_matches('#').trim_end_matches('/');
        let u = u
            .strip_prefix("https://")
            .or_else(|| u.strip_prefix("http://"))
            .unwrap_or(u);
        Ok(Some(match u {
            "json-schema.org/draft-04/schema" => Draft::D4,
            "json-schema.org/draft-06/schema" => Draft::D6,
            "json-schema.org/draft-07/schema" => Draft::D7,
            "json-schema.org/draft/2019-09/schema" => Draft::D2019,
            "json-schema.org/draft/2020-12/schema" | "json-schema.org/schema" => Draft::D2020,
            "json-schema.org/draft-03/schema"
            | "json-schema.org/draft-02/schema"
            | "json-schema.org/draft-01/schema" => return Err(()),
            _ => return Ok(None),
        }))
    }

    /// The URI llguidance recognizes for the draft.
    fn uri(self) -> &'static str {
        match self {
            Draft::D4 => "http://json-schema.org/draft-04/schema",
            Draft::D6 => "http://json-schema.org/draft-06/schema",
            Draft::D7 => "http://json-schema.org/draft-07/schema",
            Draft::D2019 => "https://json-schema.org/draft/2019-09/schema",
            Draft::D2020 => "https://json-schema.org/draft/2020-12/schema",
        }
    }

    /// Whether the draft defines `kw` as an assertion or applicator (`dependencies` is kept in
    /// every draft: its successors split it in two, and schemas without `$schema` still use it;
    /// enforcing it only narrows).
    fn defines(self, kw: &str) -> bool {
        match kw {
            "const" | "contains" | "propertyNames" => self >= Draft::D6,
            "if" | "then" | "else" => self >= Draft::D7,
            "dependentRequired"
            | "dependentSchemas"
            | "unevaluatedProperties"
            | "unevaluatedItems"
            | "minContains"
            | "maxContains"
            | "$recursiveRef" => self >= Draft::D2019,
            "prefixItems" | "$dynamicRef" => self >= Draft::D2020,
            _ => true,
        }
    }
}

/// The schema for llguidance.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Prepared {
    pub schema: Value,
}

/// How a subschema is used where it stands.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Role {
    /// It alone describes the instance at its location (with its own in-place parts): it may
    /// be closed, and so may its children.
    Plain,
    /// It is a part merged with others at the same location: never closed itself; a child it
    /// shares with another part stays open too (`all`: every child).
    Part(Shared),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct Shared {
    /// Every child is shared.
    all: bool,
    /// Properties whose schema is merged from two or more different subschemas (two parts
    /// define it differently, or a pattern property or `additionalProperties` schema applies
    /// too). The same subschema merged with itself changes nothing and is not counted.
    props: BTreeSet<String>,
    /// `patternProperties` keys whose schemas merge with others.
    patterns: BTreeSet<String>,
    /// `items`, `prefixItems` or `additionalItems` differ between parts.
    items: bool,
    /// `additionalProperties` schemas merge with other parts' properties.
    additional: bool,
}

impl Shared {
    fn everything() -> Shared {
        Shared {
            all: true,
            ..Shared::default()
        }
    }
}

fn unsupported(keyword: &str, at: &str, reason: impl Into<String>) -> GrammarError {
    GrammarError::Unsupported {
        keyword: keyword.to_string(),
        at: format!("#{at}"),
        reason: reason.into(),
    }
}

fn invalid(at: &str, what: impl std::fmt::Display) -> GrammarError {
    GrammarError::Invalid(format!("{what} (at #{at})"))
}

/// Rewrites `schema` (the request's, `x-guidance` already taken out) for llguidance.
///
/// `fewer_copies`: a reference met inside a subschema merged from different parts (where
/// nothing is closed) points to the referenced subschema as prepared where it stands, closed
/// objects included, instead of to an open copy. Narrower; used when llguidance cannot compile
/// the copies (it refuses some recursive references that meet in a merge).
pub(crate) fn prepare(schema: &Value, fewer_copies: bool) -> Result<Prepared, GrammarError> {
    let draft = match schema.get("$schema") {
        None => Draft::D2020,
        Some(Value::String(uri)) => match Draft::from_uri(uri) {
            Ok(d) => d.unwrap_or(Draft::D2020),
            Err(()) => {
                return Err(unsupported(
                    "$schema",
                    "",
                    format!("{uri} is not supported; declare draft 4 or later"),
                ))
            }
        },
        Some(_) => return Err(invalid("", "`$schema` must be a string")),
    };
    let mut p = Prep {
        root: schema,
        draft,
        base: schema
            .get("$id")
            .or_else(|| schema.get("id"))
            .and_then(Value::as_str)
            .map(|s| s.trim_end_matches('#').to_string())
            .filter(|s| !s.is_empty()),
        visits: 0,
        in_place: HashMap::new(),
        refs: Vec::new(),
        copies: HashMap::new(),
        fewer_copies,
        collected: Cell::new(0),
    };
    let mut out = p.node(schema, "", &Role::Plain, true)?;
    p.finish_refs(&mut out)?;
    if let Value::Object(m) = &mut out {
        m.insert("$schema".into(), Value::String(draft.uri().into()));
    }
    Ok(Prepared { schema: out })
}

struct Prep<'a> {
    root: &'a Value,
    draft: Draft,
    /// The root's `$id`: references may start with it.
    base: Option<String>,
    visits: usize,
    /// Original pointer → the role its subschema was prepared with where it stands.
    in_place: HashMap<String, Role>,
    /// Every `$ref` written so far: (target pointer, role), by placeholder number.
    refs: Vec<(String, Role)>,
    /// (target, role) → the copy prepared for that role (see `finish_refs`).
    copies: HashMap<(String, Role), usize>,
    fewer_copies: bool,
    /// Spent of `COLLECT_BUDGET`.
    collected: Cell<usize>,
}

fn is_annotation_only(m: &Map<String, Value>, draft: Draft) -> bool {
    m.keys().all(|k| !is_keyword(k, draft))
}

/// Keywords this pass reads (assertions and applicators of some draft); anything else is an
/// annotation or unknown, and is dropped.
fn is_keyword(k: &str, draft: Draft) -> bool {
    let known = matches!(
        k,
        "type"
            | "enum"
            | "const"
            | "properties"
            | "patternProperties"
            | "additionalProperties"
            | "required"
            | "minProperties"
            | "maxProperties"
            | "propertyNames"
            | "dependencies"
            | "dependentRequired"
            | "dependentSchemas"
            | "unevaluatedProperties"
            | "unevaluatedItems"
            | "items"
            | "prefixItems"
            | "additionalItems"
            | "minItems"
            | "maxItems"
            | "uniqueItems"
            | "contains"
            | "minContains"
            | "maxContains"
            | "minLength"
            | "maxLength"
            | "pattern"
            | "format"
            | "minimum"
            | "maximum"
            | "exclusiveMinimum"
            | "exclusiveMaximum"
            | "multipleOf"
            | "allOf"
            | "anyOf"
            | "oneOf"
            | "not"
            | "if"
            | "then"
            | "else"
            | "$ref"
            | "$recursiveRef"
            | "$dynamicRef"
    );
    known && draft.defines(k)
}

fn is_true_schema(v: &Value, draft: Draft) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Object(m) => is_annotation_only(m, draft),
        _ => false,
    }
}

fn str_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

impl<'a> Prep<'a> {
    fn visit(&mut self) -> Result<(), GrammarError> {
        self.visits += 1;
        if self.visits > VISIT_BUDGET {
            return Err(GrammarError::Invalid(format!(
                "the schema needs more than {VISIT_BUDGET} subschemas to prepare; simplify it"
            )));
        }
        Ok(())
    }

    /// Prepares the subschema `v` found at pointer `at`, used with `role`. `in_place`: the
    /// result is written where `v` stands in the output (references may then point to it).
    fn node(
        &mut self,
        v: &Value,
        at: &str,
        role: &Role,
        in_place: bool,
    ) -> Result<Value, GrammarError> {
        self.visit()?;
        let m = match v {
            Value::Bool(_) => return Ok(v.clone()),
            Value::Object(m) => m,
            _ => return Err(invalid(at, "a schema must be an object or a boolean")),
        };
        if in_place {
            self.in_place.insert(at.to_string(), role.clone());
        }
        let mut out = Map::new();
        // Containers of subschemas that references may name: prepared where they stand.
        // (A copy's references point to the originals, so a copy leaves them out.)
        for kw in ["$defs", "definitions"] {
            if !in_place {
                break;
            }
            if let Some(Value::Object(defs)) = m.get(kw) {
                let mut o = Map::new();
                for (k, d) in defs {
                    let p = child(at, &[kw, k]);
                    let refs = self.refs.len();
                    match self.node(d, &p, &Role::Plain, in_place) {
                        Ok(v) => {
                            o.insert(k.clone(), v);
                        }
                        Err(_) => {
                            // A definition is compiled only where it is referenced: what it
                            // cannot be prepared for is an error only then (a reference into
                            // it gets a copy prepared from the original, which fails the same
                            // way). Until then it stands as written.
                            self.refs.truncate(refs);
                            let inside = format!("{p}/");
                            self.in_place
                                .retain(|q, _| *q != p && !q.starts_with(&inside));
                            o.insert(k.clone(), d.clone());
                        }
                    }
                }
                out.insert(kw.to_string(), Value::Object(o));
            }
        }
        if self.is_pure_ref(m) {
            let target = self.resolve(&m["$ref"], at)?;
            let r = self.ref_to(target, role.clone());
            out.insert("$ref".into(), r);
            return Ok(Value::Object(out));
        }
        for kw in ["$recursiveRef", "$dynamicRef"] {
            if m.contains_key(kw) && self.draft.defines(kw) {
                return Err(unsupported(
                    kw,
                    at,
                    "dynamic references are not supported; use $ref",
                ));
            }
        }
        let own_children = OBJECT_KEYWORDS
            .iter()
            .chain(ARRAY_KEYWORDS.iter())
            .any(|k| m.contains_key(*k) && self.draft.defines(k));
        let other_parts = IN_PLACE
            .iter()
            .any(|k| m.contains_key(*k) && self.draft.defines(k));
        // anyOf/oneOf members stand alone when nothing else at this location merges with them.
        let branches_alone = *role == Role::Plain && !own_children && !other_parts;
        let group = self.group(m, at, !branches_alone);
        let shared = match role {
            Role::Plain => group.shared(),
            Role::Part(s) => s.clone(),
        };

        // Closing.
        let unevaluated = if self.draft.defines("unevaluatedProperties") {
            m.get("unevaluatedProperties")
        } else {
            None
        };
        let own_props: Vec<String> = m
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        let mut close_with: Option<Vec<String>> = None;
        match unevaluated {
            Some(u) if is_true_schema(u, self.draft) => {}
            Some(Value::Bool(false)) => {
                if m.contains_key("additionalProperties") {
                    // additionalProperties evaluates every key: nothing is left unevaluated.
                } else if group.conditional
                    || group.unresolved
                    || group.open
                    || m.contains_key("patternProperties")
                {
                    return Err(unsupported(
                        "unevaluatedProperties",
                        at,
                        "only enforced when `allOf` and `$ref` alone compose the object (no anyOf, \
                         oneOf, if, not, dependent schemas, patternProperties)",
                    ));
                } else {
                    close_with = Some(group.union());
                }
            }
            Some(_) => {
                return Err(unsupported(
                    "unevaluatedProperties",
                    at,
                    "only `true` and `false` are supported",
                ))
            }
            None => {}
        }
        if close_with.is_none()
            && unevaluated.is_none()
            && *role == Role::Plain
            && !m.contains_key("additionalProperties")
            && !m.contains_key("patternProperties")
            && !group.open
            && !group.unresolved
        {
            let union = group.union();
            let names: HashSet<&String> = union.iter().collect();
            let covered = group.required.iter().all(|r| names.contains(r));
            let composed = group.object_parts > 0;
            if covered && ((!composed && !own_props.is_empty()) || (composed && !union.is_empty()))
            {
                close_with = Some(union);
            }
        }

        let mut extra_all_of: Vec<Value> = Vec::new();
        let mut required_extra: Vec<String> = Vec::new();
        let mut min_items_at_least: Option<u64> = None;
        for (k, val) in m {
            if !is_keyword(k, self.draft) {
                continue;
            }
            let kat = child(at, &[k]);
            match k.as_str() {
                "properties" => {
                    let Value::Object(props) = val else {
                        return Err(invalid(&kat, "`properties` must be an object"));
                    };
                    // llguidance intersects a property's schema with the pattern property
                    // matching its name; when both are the same subschema the property's own
                    // is left `true` (the same result, and no recursive merge for llguidance).
                    let mut patterns: Vec<(NameMatcher, String)> = Vec::new();
                    for (p, ps) in m
                        .get("patternProperties")
                        .and_then(Value::as_object)
                        .into_iter()
                        .flatten()
                    {
                        if let Ok(nm) = NameMatcher::new(p) {
                            patterns.push((nm, self.identity(ps)));
                        }
                    }
                    let mut o = Map::new();
                    for (name, s) in props {
                        let id = self.identity(s);
                        let mut first = None;
                        for (nm, pid) in patterns.iter_mut() {
                            if nm.is_match(name) {
                                first = Some(pid.as_str());
                                break;
                            }
                        }
                        if first == Some(id.as_str()) {
                            o.insert(name.clone(), Value::Bool(true));
                            continue;
                        }
                        let r = shared.prop_role(name);
                        o.insert(
                            name.clone(),
                            self.node(s, &child(at, &[k, name]), &r, in_place)?,
                        );
                    }
                    out.insert(k.clone(), Value::Object(o));
                }
                "patternProperties" => {
                    let Value::Object(props) = val else {
                        return Err(invalid(&kat, "`patternProperties` must be an object"));
                    };
                    let mut o = Map::new();
                    for (name, s) in props {
                        let r = shared.pattern_role(name);
                        o.insert(
                            name.clone(),
                            self.node(s, &child(at, &[k, name]), &r, in_place)?,
                        );
                    }
                    out.insert(k.clone(), Value::Object(o));
                }
                "additionalProperties" => {
                    let r = shared.additional_role();
                    out.insert(k.clone(), self.node(val, &kat, &r, in_place)?);
                }
                "items" | "prefixItems" | "additionalItems" => {
                    if k == "additionalItems"
                        && self.draft == Draft::D2020
                        && !m.get("items").is_some_and(Value::is_array)
                    {
                        continue;
                    }
                    let r = shared.items_role();
                    match val {
                        Value::Array(items) => {
                            let mut a = Vec::new();
                            for (i, s) in items.iter().enumerate() {
                                a.push(self.node(
                                    s,
                                    &child(at, &[k, &i.to_string()]),
                                    &r,
                                    in_place,
                                )?);
                            }
                            out.insert(k.clone(), Value::Array(a));
                        }
                        _ => {
                            out.insert(k.clone(), self.node(val, &kat, &r, in_place)?);
                        }
                    }
                }
                "allOf" | "anyOf" | "oneOf" => {
                    let Value::Array(members) = val else {
                        return Err(invalid(&kat, format!("`{k}` must be an array")));
                    };
                    let r = if k != "allOf" && branches_alone {
                        Role::Plain
                    } else {
                        Role::Part(shared.clone())
                    };
                    let mut a = Vec::new();
                    for (i, s) in members.iter().enumerate() {
                        a.push(self.node(s, &child(at, &[k, &i.to_string()]), &r, in_place)?);
                    }
                    out.insert(k.clone(), Value::Array(a));
                    if k == "oneOf" {
                        extra_all_of.extend(self.one_of_types(members));
                    }
                }
                "$ref" => {
                    let target = self.resolve(val, at)?;
                    let r = self.ref_to(target, Role::Part(shared.clone()));
                    out.insert(k.clone(), r);
                }
                "not" => {
                    match self.negate(val, &kat, 0)? {
                        Some(n) => extra_all_of.push(n),
                        None => return Err(unsupported(
                            "not",
                            at,
                            "this negation cannot be expressed as a grammar (supported: types, \
                             const/enum of scalars, required, properties, bounds, simple patterns, \
                             and their anyOf/allOf/not)",
                        )),
                    }
                }
                "if" | "then" | "else" => {}
                "dependencies" | "dependentRequired" | "dependentSchemas" => {}
                "propertyNames" => {}
                "unevaluatedProperties" => {}
                "unevaluatedItems" => {
                    if !is_true_schema(val, self.draft)
                        && m.get("items").is_none_or(|i| i.is_array())
                    {
                        return Err(unsupported(
                            "unevaluatedItems",
                            at,
                            "only supported beside an `items` schema (which evaluates every item)",
                        ));
                    }
                }
                "uniqueItems" => match val {
                    Value::Bool(false) => {}
                    Value::Bool(true) => {
                        if m.get("maxItems")
                            .and_then(Value::as_u64)
                            .is_some_and(|n| n <= 1)
                        {
                            continue;
                        }
                        return Err(unsupported(
                            "uniqueItems",
                            at,
                            "a grammar cannot keep array items distinct (only arrays of at most \
                             one item, `maxItems: 1`, are accepted with it)",
                        ));
                    }
                    _ => return Err(invalid(&kat, "`uniqueItems` must be a boolean")),
                },
                "contains" => {
                    let bounded = m.contains_key("minContains")
                        && self.draft.defines("minContains")
                        || m.contains_key("maxContains") && self.draft.defines("maxContains");
                    if is_true_schema(val, self.draft) && !bounded {
                        min_items_at_least = Some(1);
                    } else {
                        return Err(unsupported(
                            "contains",
                            at,
                            "only `contains: {}` (a non-empty array) can be enforced",
                        ));
                    }
                }
                "minContains" | "maxContains" => {
                    if !m.contains_key("contains") {
                        continue;
                    }
                }
                "format" => {
                    if let Some(f) = val.as_str() {
                        if KNOWN_FORMATS.contains(&f) {
                            out.insert(k.clone(), val.clone());
                        }
                    } else {
                        return Err(invalid(&kat, "`format` must be a string"));
                    }
                }
                "$recursiveRef" | "$dynamicRef" => {}
                _ => {
                    out.insert(k.clone(), val.clone());
                }
            }
        }

        // if / then / else.
        let mut conditionals = 0;
        if self.draft.defines("if") {
            if let Some(cond) = m.get("if") {
                let then = m.get("then").filter(|t| !is_true_schema(t, self.draft));
                let els = m.get("else").filter(|e| !is_true_schema(e, self.draft));
                if then.is_some() || els.is_some() {
                    let part = Role::Part(shared.clone());
                    let yes = self.node(cond, &child(at, &["if"]), &part, false)?;
                    let Some(no) = self.negate(cond, &child(at, &["if"]), 0)? else {
                        return Err(unsupported(
                            "if",
                            at,
                            "the condition cannot be negated as a grammar (supported: types, \
                             const/enum of scalars, required, properties, bounds, simple patterns)",
                        ));
                    };
                    let mut a = vec![yes];
                    if let Some(t) = then {
                        a.push(self.node(t, &child(at, &["then"]), &part, false)?);
                    }
                    let mut b = vec![no];
                    if let Some(e) = els {
                        b.push(self.node(e, &child(at, &["else"]), &part, false)?);
                    }
                    extra_all_of.push(json!({"anyOf": [{"allOf": a}, {"allOf": b}]}));
                    conditionals += 1;
                }
            }
        }

        // Dependencies.
        let own_required = str_list(m.get("required"));
        for kw in ["dependencies", "dependentRequired", "dependentSchemas"] {
            if !self.draft.defines(kw) {
                continue;
            }
            let Some(deps) = m.get(kw) else { continue };
            let Value::Object(deps) = deps else {
                return Err(invalid(
                    &child(at, &[kw]),
                    format!("`{kw}` must be an object"),
                ));
            };
            for (key, dep) in deps {
                let present = own_required.contains(key);
                match dep {
                    Value::Array(names) if kw != "dependentSchemas" => {
                        let names: Vec<String> = names
                            .iter()
                            .map(|n| {
                                n.as_str().map(str::to_string).ok_or_else(|| {
                                    invalid(
                                        &child(at, &[kw, key]),
                                        "dependency names must be strings",
                                    )
                                })
                            })
                            .collect::<Result<_, _>>()?;
                        if names.iter().all(|n| own_required.contains(n)) {
                            continue;
                        }
                        if present {
                            required_extra.extend(names);
                            continue;
                        }
                        conditionals += 1;
                        let mut req = vec![key.clone()];
                        req.extend(names);
                        extra_all_of.push(json!({"anyOf": [
                            {"properties": {key.clone(): false}},
                            {"required": req}
                        ]}));
                    }
                    Value::Array(_) => {
                        return Err(invalid(
                            &child(at, &[kw, key]),
                            "dependentSchemas values must be schemas",
                        ));
                    }
                    s if kw != "dependentRequired" => {
                        if is_true_schema(s, self.draft) {
                            continue;
                        }
                        let part = Role::Part(shared.clone());
                        let s = self.node(s, &child(at, &[kw, key]), &part, false)?;
                        if present {
                            extra_all_of.push(s);
                            continue;
                        }
                        conditionals += 1;
                        extra_all_of.push(json!({"anyOf": [
                            {"properties": {key.clone(): false}},
                            {"allOf": [{"required": [key]}, s]}
                        ]}));
                    }
                    _ => {
                        return Err(invalid(
                            &child(at, &[kw, key]),
                            "dependentRequired values must be arrays",
                        ));
                    }
                }
            }
            if conditionals > MAX_CONDITIONALS {
                return Err(unsupported(
                    kw,
                    at,
                    format!(
                        "more than {MAX_CONDITIONALS} conditional dependencies in one object \
                         (each doubles the grammar)"
                    ),
                ));
            }
        }

        if let Some(union) = close_with {
            let props = out
                .entry("properties")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(p) = props {
                for name in union {
                    p.entry(name).or_insert(Value::Bool(true));
                }
            }
            out.insert("additionalProperties".into(), Value::Bool(false));
        }

        // propertyNames, after closing: it limits the additional names that remain.
        if self.draft.defines("propertyNames") {
            if let Some(names) = m.get("propertyNames") {
                if !is_true_schema(names, self.draft) {
                    self.property_names(names, at, m, &mut out, &group)?;
                }
            }
        }

        if !required_extra.is_empty() {
            let mut req = str_list(out.get("required"));
            for r in required_extra {
                if !req.contains(&r) {
                    req.push(r);
                }
            }
            out.insert("required".into(), json!(req));
        }
        if let Some(n) = min_items_at_least {
            let cur = out.get("minItems").and_then(Value::as_u64).unwrap_or(0);
            out.insert("minItems".into(), json!(cur.max(n)));
        }
        if !extra_all_of.is_empty() {
            match out.get_mut("allOf") {
                Some(Value::Array(a)) => a.extend(extra_all_of),
                _ => {
                    out.insert("allOf".into(), Value::Array(extra_all_of));
                }
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests;
