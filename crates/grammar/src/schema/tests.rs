//! The preparation, rule by rule, on the schema it writes (what llguidance then compiles is
//! checked over the real vocabulary in `tests/schemas.rs`).

use super::*;

fn prep(s: Value) -> Value {
    prepare(&s, false)
        .unwrap_or_else(|e| panic!("{e}: {s}"))
        .schema
}

fn refused(s: Value) -> (String, String) {
    match prepare(&s, false) {
        Err(GrammarError::Unsupported { keyword, at, .. }) => (keyword, at),
        other => panic!("expected Unsupported for {s}, got {other:?}"),
    }
}

#[test]
fn an_object_with_properties_is_closed_by_default() {
    let v = prep(
        json!({"type": "object", "properties": {"a": {"type": "integer"},
        "b": {"type": "object", "properties": {"c": {}}}}}),
    );
    assert_eq!(v["additionalProperties"], false);
    // Nested objects too.
    assert_eq!(v["properties"]["b"]["additionalProperties"], false);
    // Inside arrays, definitions and anyOf members standing alone as well.
    let v = prep(json!({"type": "array", "items": {"properties": {"a": {}}}}));
    assert_eq!(v["items"]["additionalProperties"], false);
    let v = prep(json!({"$defs": {"d": {"properties": {"a": {}}}}, "$ref": "#/$defs/d"}));
    assert_eq!(v["$defs"]["d"]["additionalProperties"], false);
    assert_eq!(v["$ref"], "#/$defs/d");
    let v = prep(json!({"anyOf": [{"properties": {"a": {}}}, {"type": "string"}]}));
    assert_eq!(v["anyOf"][0]["additionalProperties"], false);
}

#[test]
fn explicit_or_unsafe_objects_stay_open() {
    // Said so.
    for ap in [json!(true), json!({"type": "string"})] {
        let v = prep(json!({"properties": {"a": {}}, "additionalProperties": ap}));
        assert_eq!(v["additionalProperties"], ap);
    }
    // `required` naming a key outside `properties`: closing would exclude every answer.
    let v = prep(json!({"properties": {"a": {}}, "required": ["a", "b"]}));
    assert!(v.get("additionalProperties").is_none(), "{v}");
    // A dependency naming one likewise.
    let v = prep(json!({"properties": {"a": {}}, "dependencies": {"a": ["z"]}}));
    assert!(v.get("additionalProperties").is_none(), "{v}");
    // Pattern properties say which other names are welcome.
    let v = prep(json!({"properties": {"a": {}}, "patternProperties": {"^x": {}}}));
    assert!(v.get("additionalProperties").is_none(), "{v}");
    // unevaluatedProperties: true keeps it open.
    let v = prep(json!({"properties": {"a": {}}, "unevaluatedProperties": true}));
    assert!(v.get("additionalProperties").is_none(), "{v}");
    // An empty `properties` says nothing about which keys to expect.
    let v = prep(json!({"type": "object", "properties": {}}));
    assert!(v.get("additionalProperties").is_none(), "{v}");
    // A part with additionalProperties: true opens the whole composition.
    let v = prep(json!({"properties": {"a": {}}, "allOf": [{"additionalProperties": true}]}));
    assert!(v.get("additionalProperties").is_none(), "{v}");
}

#[test]
fn a_composition_is_closed_as_a_whole_and_its_parts_stay_open() {
    let v = prep(json!({
        "$defs": {"base": {"properties": {"id": {"type": "integer"}}, "required": ["id"]}},
        "allOf": [{"$ref": "#/$defs/base"}, {"properties": {"name": {"type": "string"}}}],
        "properties": {"base": {"$ref": "#/$defs/base"}}
    }));
    // The composed object: every part's properties, nothing else.
    assert_eq!(v["additionalProperties"], false);
    let props = v["properties"].as_object().unwrap();
    assert!(
        props.contains_key("id") && props.contains_key("name"),
        "{v}"
    );
    // The parts stay open: a closed part would exclude the other parts' properties.
    assert!(v["allOf"][1].get("additionalProperties").is_none(), "{v}");
    let part_ref = v["allOf"][0]["$ref"].as_str().unwrap();
    assert_ne!(part_ref, "#/$defs/base", "the part needs an open copy: {v}");
    let copy = lookup(&v, &part_ref[1..]).unwrap();
    assert!(copy.get("additionalProperties").is_none(), "{v}");
    // Where `base` stands alone it is closed.
    assert_eq!(v["properties"]["base"]["$ref"], "#/$defs/base");
    assert_eq!(v["$defs"]["base"]["additionalProperties"], false);
    // anyOf members next to the object's own properties are parts too.
    let v = prep(json!({"properties": {"kind": {"type": "string"}},
        "anyOf": [{"properties": {"x": {}}}, {"properties": {"y": {}}}]}));
    assert_eq!(v["additionalProperties"], false);
    assert!(v["anyOf"][0].get("additionalProperties").is_none(), "{v}");
    assert_eq!(v["properties"]["y"], true);
    // A property two parts define differently stays open below (its schemas merge).
    let v = prep(json!({"allOf": [
        {"properties": {"p": {"properties": {"a": {}}}}},
        {"properties": {"p": {"properties": {"b": {}}}}}
    ]}));
    assert!(
        v["allOf"][0]["properties"]["p"]
            .get("additionalProperties")
            .is_none(),
        "{v}"
    );
}

#[test]
fn a_copy_equal_to_its_original_is_not_made() {
    // Nothing below `leaf` would be closed: parts may point to it as it stands.
    let v = prep(json!({
        "$defs": {"leaf": {"type": "object", "additionalProperties": false,
            "properties": {"a": {"type": "string"}}}},
        "allOf": [{"$ref": "#/$defs/leaf"}],
        "properties": {"x": {"$ref": "#/$defs/leaf"}}
    }));
    assert_eq!(v["allOf"][0]["$ref"], "#/$defs/leaf");
    assert!(v["$defs"].as_object().unwrap().len() == 1, "{v}");
}

#[test]
fn one_of_is_kept_for_llguidance_to_read_as_any_of() {
    // `coerce_one_of` is set with the other options (compile.rs); the keyword stays.
    let v = prep(json!({"oneOf": [{"type": "string"}, {"type": "integer"}]}));
    assert_eq!(v["oneOf"].as_array().unwrap().len(), 2);
}

#[test]
fn one_of_excludes_the_types_two_branches_accept_whole() {
    // Three object branches without `"type": "object"` (JSONSchemaBench o13024's `material`):
    // every non-object matches all three, so only objects can match exactly one.
    let v = prep(json!({
        "definitions": {
            "solid": {"properties": {"kind": {"enum": ["solid"]}}, "required": ["kind"]},
            "texture": {"properties": {"kind": {"enum": ["texture"]}, "path": {"type": "string"}},
                        "required": ["kind", "path"]}
        },
        "oneOf": [{"$ref": "#/definitions/solid"}, {"$ref": "#/definitions/texture"},
                  {"required": ["colour"]}]
    }));
    assert_eq!(v["oneOf"].as_array().unwrap().len(), 3, "{v}");
    assert_eq!(v["allOf"], json!([{"type": ["object"]}]), "{v}");
    // Strings accepted whole by two branches (no string keyword in either), numbers by one.
    let v = prep(
        json!({"oneOf": [{"type": ["string", "number"]}, {"type": "string"},
                                  {"type": "number", "minimum": 3}]}),
    );
    assert_eq!(
        v["allOf"],
        json!([{"type": ["null", "boolean", "number", "array", "object"]}]),
        "{v}"
    );
    // Branches that constrain what they share, or that this cannot read, exclude nothing.
    for s in [
        json!({"oneOf": [{"type": "string"}, {"type": "integer"}]}),
        json!({"oneOf": [{"type": "string", "maxLength": 3}, {"type": "string", "pattern": "a"}]}),
        json!({"oneOf": [{"type": "integer"}, {"type": "number", "minimum": 0}]}),
        json!({"oneOf": [{"enum": ["a", "b"]}, {"enum": ["b"]}]}),
        json!({"oneOf": [{"anyOf": [{"type": "string"}]}, {"type": "string"}]}),
        json!({"oneOf": [{"not": {"type": "null"}}, {}]}),
        // Every type excluded: left for the grammar as it is.
        json!({"oneOf": [{}, true]}),
    ] {
        let v = prep(s.clone());
        assert!(v.get("allOf").is_none(), "{s} -> {v}");
    }
    // An unknown format is an annotation: it does not constrain strings.
    let v = prep(json!({"oneOf": [{"type": "string", "format": "path"}, {"type": "string"}]}));
    assert_eq!(v["allOf"][0]["type"].as_array().unwrap().len(), 5, "{v}");
}

#[test]
fn unknown_formats_are_annotations_known_ones_stay() {
    let v = prep(json!({"type": "string", "format": "path"}));
    assert!(v.get("format").is_none(), "{v}");
    for f in KNOWN_FORMATS {
        let v = prep(json!({"type": "string", "format": f}));
        assert_eq!(v["format"], f);
    }
}

#[test]
fn unique_items_is_refused_unless_it_holds_trivially() {
    let (kw, at) = refused(json!({"properties": {"tags": {"type": "array", "uniqueItems": true}}}));
    assert_eq!(
        (kw.as_str(), at.as_str()),
        ("uniqueItems", "#/properties/tags")
    );
    let v = prep(json!({"type": "array", "uniqueItems": true, "maxItems": 1}));
    assert!(v.get("uniqueItems").is_none());
    let v = prep(json!({"type": "array", "uniqueItems": false}));
    assert!(v.get("uniqueItems").is_none());
}

#[test]
fn not_is_negated_where_expressible_else_refused() {
    let v = prep(json!({"not": {"type": "string"}}));
    let types = &v["allOf"][0]["type"];
    assert!(!types.as_array().unwrap().contains(&json!("string")), "{v}");
    assert!(types.as_array().unwrap().contains(&json!("number")), "{v}");
    // not required → the key absent (objects only).
    let v = prep(json!({"type": "object", "properties": {"a": {}, "b": {}},
        "not": {"required": ["a"]}}));
    assert_eq!(
        v["allOf"][0],
        json!({"type": "object", "anyOf": [{"properties": {"a": false}}]})
    );
    // not of a string enum → a pattern for every other string.
    let v = prep(json!({"type": "string", "not": {"enum": ["a", "ab"]}}));
    let s = v.to_string();
    assert!(s.contains("pattern"), "{v}");
    // not of a bound → the other side.
    let v = prep(json!({"type": "integer", "not": {"minimum": 3}}));
    assert!(v.to_string().contains("\"exclusiveMaximum\":3"), "{v}");
    // The usual "only these characters" pattern.
    let v = prep(json!({"type": "string", "not": {"pattern": "^[a-z]+$"}}));
    assert!(v.to_string().contains("[^a-z]"), "{v}");
    // What cannot be written as a grammar.
    assert_eq!(refused(json!({"not": {"multipleOf": 3}})).0, "not");
    assert_eq!(refused(json!({"not": {"pattern": "ab+c"}})).0, "not");
    assert_eq!(refused(json!({"not": {"type": "integer"}})).0, "not");
}

#[test]
fn the_negation_helpers_are_exact() {
    // Every string but the listed ones, checked with llguidance's own regex engine.
    let p = not_literals(&["ab", "a", "é"]).unwrap();
    let mut m = NameMatcher::new(&p).unwrap();
    for yes in ["", "b", "abc", "aa", "ba", "e", "éé", "a\n"] {
        assert!(m.is_match(yes), "{yes:?} should match {p}");
    }
    for no in ["ab", "a", "é"] {
        assert!(!m.is_match(no), "{no:?} should not match {p}");
    }
    let p = complement_class_pattern("^[a-z0-9]+$").unwrap();
    let mut m = NameMatcher::new(&p).unwrap();
    for yes in ["", "A", "ab-", "-"] {
        assert!(m.is_match(yes), "{yes:?} {p}");
    }
    for no in ["a", "abc9"] {
        assert!(!m.is_match(no), "{no:?} {p}");
    }
    assert!(complement_class_pattern("^[a-z]+x$").is_none());
    assert!(complement_class_pattern("[a-z]+").is_none());
}

#[test]
fn dependencies_become_alternatives() {
    let v = prep(
        json!({"type": "object", "properties": {"a": {}, "b": {}, "c": {}},
        "dependencies": {"a": ["b"], "c": {"required": ["a"]}}}),
    );
    let all = v["allOf"].as_array().unwrap();
    assert_eq!(
        all[0],
        json!({"anyOf": [{"properties": {"a": false}}, {"required": ["a", "b"]}]})
    );
    assert_eq!(all[1]["anyOf"][0], json!({"properties": {"c": false}}));
    // A required key's dependencies are simply required.
    let v = prep(json!({"properties": {"a": {}, "b": {}}, "required": ["a"],
        "dependentRequired": {"a": ["b"]}}));
    assert_eq!(v["required"], json!(["a", "b"]));
    assert!(v.get("allOf").is_none());
    // Each conditional dependency doubles the grammar: there is a limit, and it names the keyword.
    let props: Map<String, Value> = (0..8).map(|i| (format!("k{i}"), json!({}))).collect();
    let deps: Map<String, Value> = (0..7)
        .map(|i| (format!("k{i}"), json!([format!("k{}", i + 1)])))
        .collect();
    let (kw, _) = refused(json!({"properties": props, "dependencies": deps}));
    assert_eq!(kw, "dependencies");
}

#[test]
fn if_then_else_becomes_two_alternatives() {
    let v = prep(json!({"type": "object",
        "properties": {"kind": {"type": "string"}, "n": {"type": "integer"}},
        "if": {"properties": {"kind": {"const": "num"}}, "required": ["kind"]},
        "then": {"required": ["n"]},
        "else": {"properties": {"n": false}}}));
    let alts = v["allOf"][0]["anyOf"].as_array().unwrap();
    assert_eq!(alts.len(), 2);
    assert_eq!(alts[0]["allOf"][1], json!({"required": ["n"]}));
    // The condition's negation: kind absent, or kind present and not "num".
    assert!(
        alts[1]["allOf"][0].to_string().contains("\"kind\":false"),
        "{v}"
    );
    // `if` alone does nothing; a condition we cannot negate is refused naming `if`.
    let v = prep(json!({"if": {"type": "string"}}));
    assert!(v.get("allOf").is_none(), "{v}");
    assert_eq!(
        refused(json!({"if": {"multipleOf": 2}, "then": {"minimum": 0}})).0,
        "if"
    );
}

#[test]
fn property_names_become_a_name_pattern() {
    let v = prep(
        json!({"type": "object", "additionalProperties": {"type": "string"},
        "propertyNames": {"pattern": "^[0-9]+$"}}),
    );
    assert_eq!(
        v["patternProperties"],
        json!({"^[0-9]+$": {"type": "string"}})
    );
    assert_eq!(v["additionalProperties"], false);
    // Declared names that fail it must be absent.
    let v = prep(json!({"properties": {"1": {}, "xy": {}}, "propertyNames": {"maxLength": 1}}));
    assert_eq!(v["properties"]["xy"], false);
    assert_eq!(v["additionalProperties"], false);
    // An open object's other names: a pattern of the names allowed.
    let v = prep(json!({"additionalProperties": true, "propertyNames": {"enum": ["a", "b-c"]}}));
    assert_eq!(v["patternProperties"], json!({"^(?:a|b\\x{2d}c)$": true}));
    // What a single pattern cannot say.
    assert_eq!(
        refused(json!({"propertyNames": {"format": "email"}})).0,
        "propertyNames"
    );
    let (kw, _) = refused(json!({"additionalProperties": true,
        "propertyNames": {"maxLength": 1, "pattern": "^[0-9]$"}}));
    assert_eq!(kw, "propertyNames");
}

#[test]
fn unevaluated_properties_false_closes_an_allof_union_and_nothing_else() {
    let v = prep(
        json!({"allOf": [{"properties": {"a": {}}}, {"properties": {"b": {}}}],
        "unevaluatedProperties": false}),
    );
    assert_eq!(v["additionalProperties"], false);
    assert!(v.get("unevaluatedProperties").is_none());
    let (kw, _) = refused(json!({"anyOf": [{"properties": {"a": {}}}],
        "properties": {"c": {}}, "unevaluatedProperties": false}));
    assert_eq!(kw, "unevaluatedProperties");
    assert_eq!(
        refused(json!({"unevaluatedItems": false})).0,
        "unevaluatedItems"
    );
}

#[test]
fn contains_only_as_non_empty() {
    let v = prep(json!({"type": "array", "contains": {}}));
    assert_eq!(v["minItems"], 1);
    assert_eq!(
        refused(json!({"type": "array", "contains": {"const": 1}})).0,
        "contains"
    );
}

#[test]
fn drafts_decide_which_keywords_count() {
    // Draft 4 has no `const`: an annotation there.
    let v = prep(json!({"$schema": "http://json-schema.org/draft-04/schema#", "const": 3}));
    assert!(v.get("const").is_none(), "{v}");
    assert_eq!(v["$schema"], "http://json-schema.org/draft-04/schema");
    // Up to draft 7, `$ref` siblings are ignored.
    let v = prep(json!({"$schema": "http://json-schema.org/draft-07/schema#",
        "definitions": {"s": {"type": "string"}}, "$ref": "#/definitions/s", "maxLength": 3}));
    assert!(v.get("maxLength").is_none(), "{v}");
    // Unknown $schema: 2020-12 (as the validators default to).
    let v = prep(json!({"$schema": "http://example.com/my-schema#", "prefixItems": [{}]}));
    assert_eq!(v["$schema"], "https://json-schema.org/draft/2020-12/schema");
    assert!(v.get("prefixItems").is_some());
    assert_eq!(
        refused(json!({"$schema": "http://json-schema.org/draft-03/schema#"})).0,
        "$schema"
    );
    // Unknown keywords and annotations are not passed on.
    let v = prep(json!({"type": "string", "x-foo": 1, "title": "t", "deprecated": true}));
    assert_eq!(
        v,
        json!({"type": "string", "$schema": "https://json-schema.org/draft/2020-12/schema"})
    );
}

#[test]
fn references_must_stay_inside_the_schema() {
    assert_eq!(refused(json!({"$ref": "other.json#/a"})).0, "$ref");
    assert_eq!(refused(json!({"$ref": "#/nowhere"})).0, "$ref");
    assert_eq!(refused(json!({"$dynamicRef": "#node"})).0, "$dynamicRef");
    // The root's own $id may prefix a reference; `~1` and `%25` are decoded.
    let v = prep(json!({"$id": "https://example.com/s.json",
        "$defs": {"a/b": {"type": "string"}, "c%d": {"type": "integer"}},
        "properties": {"x": {"$ref": "https://example.com/s.json#/$defs/a~1b"},
            "y": {"$ref": "#/$defs/c%25d"}}}));
    let x = v["properties"]["x"]["$ref"].as_str().unwrap();
    // llguidance cannot follow `~1`: a copy under a plain name.
    assert!(x.starts_with("#/$defs/__cordial_"), "{v}");
    assert_eq!(lookup(&v, &x[1..]).unwrap()["type"], "string");
    assert_eq!(v["properties"]["y"]["$ref"], "#/$defs/c%d");
}

#[test]
fn data_in_enum_and_const_is_never_rewritten() {
    let data = json!({"$ref": "\u{1}cordial-ref:0", "properties": {"a": {}}});
    let v =
        prep(json!({"properties": {"enum": {"enum": [data.clone()]}, "const": {"const": data}}}));
    assert_eq!(
        v["properties"]["enum"]["enum"][0],
        json!({"$ref": "\u{1}cordial-ref:0", "properties": {"a": {}}})
    );
}

#[test]
fn a_definition_that_cannot_be_prepared_fails_only_where_it_is_used() {
    let defs = json!({"bad": {"type": "array", "uniqueItems": true},
        "mixed": {"properties": {"ok": {"type": "string"}, "bad": {"not": {"multipleOf": 2}}}}});
    // Unused: compiled as if absent.
    let v = prep(json!({"$defs": defs, "type": "string"}));
    assert_eq!(v["type"], "string");
    // Used: refused, naming the keyword.
    assert_eq!(
        refused(json!({"$defs": defs, "$ref": "#/$defs/bad"})).0,
        "uniqueItems"
    );
    assert_eq!(
        refused(json!({"$defs": defs, "$ref": "#/$defs/mixed"})).0,
        "not"
    );
    // A reference to a part of it that can be prepared is fine.
    let v = prep(json!({"$defs": defs, "$ref": "#/$defs/mixed/properties/ok"}));
    let r = v["$ref"].as_str().unwrap();
    assert_eq!(lookup(&v, &r[1..]).unwrap()["type"], "string", "{v}");
}
