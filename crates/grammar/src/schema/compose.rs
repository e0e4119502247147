//! Compositions: what the parts composed at one location (`allOf`, `$ref` beside other
//! keywords, `anyOf`/`oneOf` beside object keywords, conditionals) declare, so the location
//! can be closed to the union of their properties while the parts stay open.

use super::*;

/// The object keywords whose subschemas or names merge with other parts' at the same location.
pub(super) const OBJECT_KEYWORDS: [&str; 12] = [
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
pub(super) const ARRAY_KEYWORDS: [&str; 5] = [
    "items",
    "prefixItems",
    "additionalItems",
    "contains",
    "uniqueItems",
];
/// Applicators whose subschemas apply to the instance itself, beside anyOf/oneOf.
pub(super) const IN_PLACE: [&str; 8] = [
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
pub(super) struct Group {
    /// Parts besides the node itself that declare object keys or schemas.
    pub(super) object_parts: usize,
    /// What each member (the node first, then its parts) declares for object keys.
    pub(super) members: Vec<Member>,
    /// Distinct `items`/`prefixItems`/`additionalItems` declarations among the members.
    pub(super) items: Vec<String>,
    /// Names that must be present in some case (`required`, dependencies).
    pub(super) required: Vec<String>,
    /// A part keeps the object open (`patternProperties`, `additionalProperties` other than
    /// false, `unevaluatedProperties`).
    pub(super) open: bool,
    /// A reference could not be followed (cyclic through in-place applicators).
    pub(super) unresolved: bool,
    /// A part is conditional (`anyOf`, `oneOf`, `if`, `not`, dependent schema).
    pub(super) conditional: bool,
}

/// One member's object declarations, each subschema named by its identity (a `$ref`'s target
/// or the subschema's JSON text).
#[derive(Default)]
pub(super) struct Member {
    pub(super) props: Vec<(String, String)>,
    pub(super) patterns: Vec<(String, String)>,
    /// `additionalProperties` when it is a schema (an object).
    pub(super) additional: Option<String>,
}

impl Group {
    /// Property names in first-declared order.
    pub(super) fn union(&self) -> Vec<String> {
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

    pub(super) fn shared(&self) -> Shared {
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
    pub(super) fn open_part() -> Role {
        Role::Part(Shared::everything())
    }

    pub(super) fn prop_role(&self, name: &str) -> Role {
        if self.all || self.props.contains(name) {
            Shared::open_part()
        } else {
            Role::Plain
        }
    }

    pub(super) fn pattern_role(&self, pattern: &str) -> Role {
        if self.all || self.patterns.contains(pattern) {
            Shared::open_part()
        } else {
            Role::Plain
        }
    }

    pub(super) fn items_role(&self) -> Role {
        if self.all || self.items {
            Shared::open_part()
        } else {
            Role::Plain
        }
    }

    pub(super) fn additional_role(&self) -> Role {
        if self.all || self.additional {
            Shared::open_part()
        } else {
            Role::Plain
        }
    }
}

impl Prep<'_> {
    /// Collects what the parts composed with node `m` (at `at`) declare. `branches`: whether
    /// `anyOf`/`oneOf` members are parts (else each is its own location's schema).
    pub(super) fn group(&self, m: &Map<String, Value>, at: &str, branches: bool) -> Group {
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

    pub(super) fn collect_parts(
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

    pub(super) fn collect_part(
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

    pub(super) fn follow_ref(
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
    pub(super) fn declare(&self, m: &Map<String, Value>, g: &mut Group, own: bool) {
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
    pub(super) fn identity(&self, v: &Value) -> String {
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
    pub(super) fn spend(&self, n: usize) -> bool {
        let spent = self.collected.get() + n;
        self.collected.set(spent);
        spent <= COLLECT_BUDGET
    }

    pub(super) fn required_of(&self, m: &Map<String, Value>, out: &mut Vec<String>) {
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
    pub(super) fn parts<'v>(
        &self,
        m: &'v Map<String, Value>,
        branches: bool,
    ) -> Vec<(&'v Value, String)> {
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
}
