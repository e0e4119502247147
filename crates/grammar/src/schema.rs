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
//!   xgrammar do: an instance may match more than one branch.
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

/// The object keywords whose subschemas or names merge with other parts' at the same location.
const OBJECT_KEYWORDS: [&str; 12] = [
    "properties",
    "patternProperties",
    "additionalProperties",
    "required",
    "minProperties",
    "maxProperties",
    "propertyNames",
    "dependencies",
    "dependentRequired",
    "dependentSchemas",
    "unevaluatedProperties",
    "unevaluatedItems",
];
const ARRAY_KEYWORDS: [&str; 5] = [
    "items",
    "prefixItems",
    "additionalItems",
    "contains",
    "uniqueItems",
];
/// Applicators whose subschemas apply to the instance itself, beside anyOf/oneOf.
const IN_PLACE: [&str; 8] = [
    "allOf",
    "not",
    "if",
    "then",
    "else",
    "dependentSchemas",
    "dependencies",
    "$ref",
];

/// What the parts of one location's composition declare (see `Prep::group`).
#[derive(Default)]
struct Group {
    /// Parts besides the node itself that declare object keys or schemas.
    object_parts: usize,
    /// What each member (the node first, then its parts) declares for object keys.
    members: Vec<Member>,
    /// Distinct `items`/`prefixItems`/`additionalItems` declarations among the members.
    items: Vec<String>,
    /// Names that must be present in some case (`required`, dependencies).
    required: Vec<String>,
    /// A part keeps the object open (`patternProperties`, `additionalProperties` other than
    /// false, `unevaluatedProperties`).
    open: bool,
    /// A reference could not be followed (cyclic through in-place applicators).
    unresolved: bool,
    /// A part is conditional (`anyOf`, `oneOf`, `if`, `not`, dependent schema).
    conditional: bool,
}

/// One member's object declarations, each subschema named by its identity (a `$ref`'s target
/// or the subschema's JSON text).
#[derive(Default)]
struct Member {
    props: Vec<(String, String)>,
    patterns: Vec<(String, String)>,
    /// `additionalProperties` when it is a schema (an object).
    additional: Option<String>,
}

impl Group {
    /// Property names in first-declared order.
    fn union(&self) -> Vec<String> {
        let mut seen: HashSet<&str> = HashSet::new();
        let mut out: Vec<String> = Vec::new();
        for m in &self.members {
            for (k, _) in &m.props {
                if seen.insert(k) {
                    out.push(k.clone());
                }
            }
        }
        out
    }

    fn shared(&self) -> Shared {
        let mut matchers: HashMap<String, Option<NameMatcher>> = HashMap::new();
        let mut matches = |pattern: &str, name: &str| -> bool {
            let m = matchers
                .entry(pattern.to_string())
                .or_insert_with(|| NameMatcher::new(pattern).ok());
            m.as_mut().is_none_or(|m| m.is_match(name))
        };
        let names = self.union();
        // Every subschema that applies to each property name, by identity.
        let mut ids: HashMap<&str, Vec<&str>> = HashMap::new();
        for m in &self.members {
            for (k, id) in &m.props {
                ids.entry(k).or_default().push(id);
            }
        }
        let mut patterns: BTreeSet<String> = BTreeSet::new();
        for m in self
            .members
            .iter()
            .filter(|m| !m.patterns.is_empty() || m.additional.is_some())
        {
            let own: HashMap<&str, &str> = m
                .props
                .iter()
                .map(|(n, id)| (n.as_str(), id.as_str()))
                .collect();
            for k in &names {
                let mut matched = false;
                for (p, pid) in &m.patterns {
                    if matches(p, k) {
                        matched = true;
                        ids.entry(k).or_default().push(pid);
                        if own.get(k.as_str()).is_some_and(|o| o != pid) {
                            patterns.insert(p.clone());
                        }
                    }
                }
                if !matched && !own.contains_key(k.as_str()) {
                    if let Some(a) = &m.additional {
                        ids.entry(k).or_default().push(a);
                    }
                }
            }
        }
        let mut props = BTreeSet::new();
        for (k, mut v) in ids {
            v.sort_unstable();
            v.dedup();
            if v.len() > 1 {
                props.insert(k.to_string());
            }
        }
        if self.object_parts > 0 {
            // Pattern properties of several parts merge by key and with each other's
            // `additionalProperties`: all of them stay open.
            for m in &self.members {
                for (p, _) in &m.patterns {
                    patterns.insert(p.clone());
                }
            }
        }
        let mut items = self.items.clone();
        items.sort();
        items.dedup();
        Shared {
            all: self.unresolved,
            props,
            patterns,
            items: items.len() > 1,
            additional: self.object_parts > 0,
        }
    }
}

impl Shared {
    fn open_part() -> Role {
        Role::Part(Shared::everything())
    }

    fn prop_role(&self, name: &str) -> Role {
        if self.all || self.props.contains(name) {
            Shared::open_part()
        } else {
            Role::Plain
        }
    }

    fn pattern_role(&self, pattern: &str) -> Role {
        if self.all || self.patterns.contains(pattern) {
            Shared::open_part()
        } else {
            Role::Plain
        }
    }

    fn items_role(&self) -> Role {
        if self.all || self.items {
            Shared::open_part()
        } else {
            Role::Plain
        }
    }

    fn additional_role(&self) -> Role {
        if self.all || self.additional {
            Shared::open_part()
        } else {
            Role::Plain
        }
    }
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

/// A pointer segment as it is written in a `$ref` (`~0`, `~1`).
fn escape_segment(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

fn child(at: &str, segs: &[&str]) -> String {
    let mut s = at.to_string();
    for seg in segs {
        s.push('/');
        s.push_str(&escape_segment(seg));
    }
    s
}

fn percent_decode(s: &str) -> String {
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
fn lookup<'v>(root: &'v Value, ptr: &str) -> Option<&'v Value> {
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

    /// The pointer a `$ref` names (escaped form, "" for the root), checked to exist.
    fn resolve(&self, r: &Value, at: &str) -> Result<String, GrammarError> {
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
    fn ref_to(&mut self, target: String, role: Role) -> Value {
        let role = match role {
            Role::Part(s) if s.all && self.fewer_copies => Role::Plain,
            r => r,
        };
        self.refs.push((target, role));
        Value::String(format!("{PLACEHOLDER}{}", self.refs.len() - 1))
    }

    /// Whether the node at `m` is a `$ref` with nothing else that constrains (up to draft 7,
    /// siblings of `$ref` are ignored).
    fn is_pure_ref(&self, m: &Map<String, Value>) -> bool {
        m.contains_key("$ref")
            && (self.draft <= Draft::D7
                || m.keys().all(|k| k == "$ref" || !is_keyword(k, self.draft)))
    }

    /// Collects what the parts composed with node `m` (at `at`) declare. `branches`: whether
    /// `anyOf`/`oneOf` members are parts (else each is its own location's schema).
    fn group(&self, m: &Map<String, Value>, at: &str, branches: bool) -> Group {
        let mut g = Group::default();
        self.declare(m, &mut g, true);
        let mut stack = vec![at.to_string()];
        if m.contains_key("$ref") {
            self.follow_ref(&m["$ref"], at, &mut g, &mut stack, 0);
        }
        self.collect_parts(m, at, branches, &mut g, &mut stack, 0);
        // Past the budget nothing more is closed (open is always safe).
        g.unresolved |= self.collected.get() > COLLECT_BUDGET;
        g
    }

    fn collect_parts(
        &self,
        m: &Map<String, Value>,
        at: &str,
        branches: bool,
        g: &mut Group,
        stack: &mut Vec<String>,
        depth: usize,
    ) {
        for (sub, rel) in self.parts(m, branches) {
            if !rel.starts_with("/allOf") {
                g.conditional = true;
            }
            if rel == "/not" {
                // A negation's properties merge with the node's (`¬{properties: {k: S}}` is
                // `k` present with `¬S`): each is counted as a distinct declaration.
                if let Value::Object(n) = sub {
                    let mut member = Member::default();
                    for (k, v) in n
                        .get("properties")
                        .and_then(Value::as_object)
                        .into_iter()
                        .flatten()
                    {
                        member.props.push((k.clone(), format!("not:{v}")));
                    }
                    g.members.push(member);
                }
                continue;
            }
            self.collect_part(sub, &format!("{at}{rel}"), g, stack, depth + 1);
        }
    }

    fn collect_part(
        &self,
        v: &Value,
        at: &str,
        g: &mut Group,
        stack: &mut Vec<String>,
        depth: usize,
    ) {
        let Value::Object(m) = v else { return };
        if depth > 64 || !self.spend(1) {
            g.unresolved = true;
            return;
        }
        if m.contains_key("$ref") {
            self.follow_ref(&m["$ref"], at, g, stack, depth);
            if self.is_pure_ref(m) {
                return;
            }
        }
        self.declare(m, g, false);
        self.collect_parts(m, at, true, g, stack, depth);
    }

    fn follow_ref(
        &self,
        r: &Value,
        at: &str,
        g: &mut Group,
        stack: &mut Vec<String>,
        depth: usize,
    ) {
        match self.resolve(r, at) {
            Ok(ptr) if !stack.contains(&ptr) => {
                if let Some(target) = lookup(self.root, &ptr) {
                    stack.push(ptr.clone());
                    self.collect_part(target, &ptr, g, stack, depth + 1);
                    stack.pop();
                }
            }
            _ => g.unresolved = true,
        }
    }

    /// Adds what node `m` itself declares (`own`: the node whose group this is).
    fn declare(&self, m: &Map<String, Value>, g: &mut Group, own: bool) {
        let mut member = Member::default();
        for (k, v) in m
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            member.props.push((k.clone(), self.identity(v)));
        }
        for (k, v) in m
            .get("patternProperties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            member.patterns.push((k.clone(), self.identity(v)));
        }
        let mut declares = !member.props.is_empty() || m.contains_key("patternProperties");
        g.open |= !own && m.contains_key("patternProperties");
        match m.get("additionalProperties") {
            Some(Value::Bool(false)) | None => {}
            Some(ap) => {
                g.open |= !own;
                if ap.is_object() {
                    member.additional = Some(self.identity(ap));
                }
                declares = true;
            }
        }
        if !own
            && self.draft.defines("unevaluatedProperties")
            && m.contains_key("unevaluatedProperties")
        {
            g.open = true;
            declares = true;
        }
        let items: Vec<String> = ["items", "prefixItems", "additionalItems"]
            .iter()
            .filter(|k| self.draft.defines(k))
            .filter_map(|k| m.get(*k).map(|v| format!("{k}:{}", self.identity(v))))
            .collect();
        if !items.is_empty() {
            g.items.push(items.join(","));
        }
        if declares && !own {
            g.object_parts += 1;
        }
        g.members.push(member);
        self.required_of(m, &mut g.required);
    }

    /// Names a subschema for merge comparisons: equal identities are the same subschema.
    fn identity(&self, v: &Value) -> String {
        if let Value::Object(m) = v {
            if self.is_pure_ref(m) {
                if let Ok(p) = self.resolve(&m["$ref"], "") {
                    return format!("ref:{p}");
                }
            }
        }
        let s = v.to_string();
        self.spend(s.len() / 64);
        s
    }

    /// Takes `n` units of the collection budget; false once it is spent.
    fn spend(&self, n: usize) -> bool {
        let spent = self.collected.get() + n;
        self.collected.set(spent);
        spent <= COLLECT_BUDGET
    }

    fn required_of(&self, m: &Map<String, Value>, out: &mut Vec<String>) {
        out.extend(str_list(m.get("required")));
        for kw in ["dependencies", "dependentRequired"] {
            if !self.draft.defines(kw) {
                continue;
            }
            for (k, v) in m.get(kw).and_then(Value::as_object).into_iter().flatten() {
                if let Value::Array(names) = v {
                    out.push(k.clone());
                    out.extend(names.iter().filter_map(Value::as_str).map(str::to_string));
                }
            }
        }
    }

    /// The in-place parts of node `m` held in it: (subschema, pointer relative to `m`).
    fn parts<'v>(&self, m: &'v Map<String, Value>, branches: bool) -> Vec<(&'v Value, String)> {
        let mut out = Vec::new();
        for kw in ["allOf", "anyOf", "oneOf"] {
            if kw != "allOf" && !branches {
                continue;
            }
            for (i, v) in m
                .get(kw)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                out.push((v, format!("/{kw}/{i}")));
            }
        }
        for kw in ["if", "then", "else", "not"] {
            if self.draft.defines(kw) {
                if let Some(v) = m.get(kw) {
                    out.push((v, format!("/{kw}")));
                }
            }
        }
        for kw in ["dependentSchemas", "dependencies"] {
            if !self.draft.defines(kw) {
                continue;
            }
            for (k, v) in m.get(kw).and_then(Value::as_object).into_iter().flatten() {
                if !v.is_array() {
                    out.push((v, format!("/{kw}/{}", escape_segment(k))));
                }
            }
        }
        out
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

    /// `propertyNames`: declared properties whose names fail are made absent; other names must
    /// match (a pattern property carrying what `additionalProperties` allowed).
    fn property_names(
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
    fn negate(&mut self, s: &Value, at: &str, depth: usize) -> Result<Option<Value>, GrammarError> {
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

    /// Replaces the placeholder `$ref`s: a pointer to the subschema where it stands when it was
    /// prepared for the same role there, else to a copy prepared for the role (under `$defs`).
    /// A copy that comes out the same as the original (nothing below it would be closed) is
    /// dropped for the original: fewer copies, and llguidance's order of resolving recursive
    /// references stays the schema's own.
    fn finish_refs(&mut self, out: &mut Value) -> Result<(), GrammarError> {
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

/// Whether llguidance can follow a pointer (it splits on `/` and unescapes nothing).
fn expressible(ptr: &str) -> bool {
    !ptr.contains("~1")
}

const PLACEHOLDER: &str = "\u{1}cordial-ref:";

fn placeholder_of(v: &Value) -> Option<usize> {
    v.as_str()?.strip_prefix(PLACEHOLDER)?.parse().ok()
}

/// `v` with each placeholder `$ref` replaced by `f(its number)`.
fn canonical(v: &Value, f: &dyn Fn(usize) -> String) -> Value {
    let mut v = v.clone();
    replace_refs(&mut v, f);
    v
}

/// Replaces the placeholder `$ref`s of schema `v`, walking only where schemas are (so data in
/// `enum`, `const` and the like is never touched, whatever it holds).
fn replace_refs(v: &mut Value, f: &dyn Fn(usize) -> String) {
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

/// Values other than `vals` (scalars only), as a schema.
fn negate_values(vals: &[Value]) -> Option<Value> {
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
fn negate_bounds(m: &Map<String, Value>) -> Option<Value> {
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
fn regex_char(c: char) -> String {
    if c.is_ascii_alphanumeric() {
        c.to_string()
    } else {
        format!("\\x{{{:x}}}", c as u32)
    }
}

fn regex_literal(s: &str) -> String {
    s.chars().map(regex_char).collect()
}

/// A full-match pattern for every string except the `words` (a trie of the words, each node
/// written as: stop here if no word ends here, or leave the trie by a character no word
/// continues with, or follow a word's next character).
fn not_literals(words: &[&str]) -> Option<String> {
    #[derive(Default)]
    struct Node {
        end: bool,
        next: BTreeMap<char, Node>,
    }
    fn write(n: &Node) -> String {
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
fn complement_class_pattern(p: &str) -> Option<String> {
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
struct NameMatcher(llguidance::derivre::Regex);

impl NameMatcher {
    fn new(pattern: &str) -> Result<NameMatcher, String> {
        let mut b = RegexBuilder::new();
        let e = b
            .mk_regex_for_serach(&llguidance::regex_to_lark(pattern, "dw"))
            .map_err(|e| format!("bad pattern {pattern:?}: {e}"))?;
        let rx = b
            .to_regex_limited(e, 10_000)
            .map_err(|e| format!("pattern {pattern:?} is too complex: {e}"))?;
        Ok(NameMatcher(rx))
    }

    fn is_match(&mut self, s: &str) -> bool {
        self.0.is_match(s)
    }
}

#[cfg(test)]
mod tests;
