//! Strategic merge patch behaviour, one table per directive.
//!
//! Cases marked `apimachinery:` are taken from k8s.io/apimachinery
//! `pkg/util/strategicpatch/patch_test.go` (the three-way patch applied to `Current` must give
//! `Result`, or the two-way patch applied to `Original` must give `Modified`), over a schema
//! shaped like its `MergeItem` test type. The others follow the reference implementation's code.

use meshwork_orchestrator_patch::{
    apply, apply_value, FieldDef, PatchError, PatchType, Schema, Strategy, TypeDef,
};
use serde_json::{json, Value};

/// Mirrors apimachinery's `MergeItem` test struct.
static MERGE_ITEM: TypeDef = TypeDef {
    name: "MergeItem",
    fields: &[
        FieldDef::merge_by("mergingList", "name", Some(&MERGE_ITEM)),
        FieldDef::merge_by("mergeItemPtr", "name", Some(&MERGE_ITEM)),
        FieldDef::merge_by("retainKeysMergingList", "name", Some(&MERGE_ITEM)),
        FieldDef::set("mergingIntList"),
        FieldDef::atomic("nonMergingList"),
        FieldDef::atomic("nonMergingIntList"),
        FieldDef::object("retainKeysMap", &MERGE_ITEM),
        FieldDef::object("simpleMap", &MERGE_ITEM),
        FieldDef {
            name: "replacingItem",
            strategy: Strategy::Replace,
            ty: None,
        },
    ],
};

const SCHEMA: Schema = Schema::from_type(&MERGE_ITEM);

fn smp(original: &Value, patch: &Value) -> Result<Value, PatchError> {
    apply_value(original, patch, PatchType::StrategicMerge, SCHEMA)
}

/// Runs `(description, original, patch, want)` cases.
fn check(cases: &[(&str, Value, Value, Value)]) {
    for (description, original, patch, want) in cases {
        match smp(original, patch) {
            Ok(got) => assert_eq!(&got, want, "{description}"),
            Err(err) => panic!("{description}: unexpected error {err}"),
        }
    }
}

#[test]
fn plain_maps_merge_like_merge_patch() {
    check(&[
        (
            "add field",
            json!({"a": 1}),
            json!({"b": 2}),
            json!({"a": 1, "b": 2}),
        ),
        (
            "replace scalar",
            json!({"a": 1}),
            json!({"a": "x"}),
            json!({"a": "x"}),
        ),
        (
            "null deletes field",
            json!({"a": 1, "b": 2}),
            json!({"b": null}),
            json!({"a": 1}),
        ),
        (
            "null for a missing field is not stored",
            json!({"a": 1}),
            json!({"z": null}),
            json!({"a": 1}),
        ),
        (
            "nested merge",
            json!({"simpleMap": {"a": 1, "b": {"c": 1, "d": 2}}}),
            json!({"simpleMap": {"b": {"c": null, "e": 3}}}),
            json!({"simpleMap": {"a": 1, "b": {"d": 2, "e": 3}}}),
        ),
        (
            "nulls inside a new object are dropped",
            json!({}),
            json!({"simpleMap": {"a": null, "b": {"c": null, "d": 1}}}),
            json!({"simpleMap": {"b": {"d": 1}}}),
        ),
        (
            "type change replaces",
            json!({"a": [1]}),
            json!({"a": {"b": 1}}),
            json!({"a": {"b": 1}}),
        ),
        (
            "replace strategy on a map",
            json!({"replacingItem": {"Some": "Generic", "Yaml": "Inside"}}),
            json!({"replacingItem": {"Newly": "Modified"}}),
            json!({"replacingItem": {"Newly": "Modified"}}),
        ),
    ]);
}

#[test]
fn patch_directive_on_maps() {
    check(&[
        (
            "$patch: replace keeps only the patch",
            json!({"simpleMap": {"a": 1, "b": 2}}),
            json!({"simpleMap": {"$patch": "replace", "c": 3}}),
            json!({"simpleMap": {"c": 3}}),
        ),
        (
            "$patch: delete empties the map",
            json!({"simpleMap": {"a": 1}, "other": 1}),
            json!({"simpleMap": {"$patch": "delete"}}),
            json!({"simpleMap": {}, "other": 1}),
        ),
        (
            "$patch: delete at the root",
            json!({"a": 1}),
            json!({"$patch": "delete"}),
            json!({}),
        ),
        (
            "a new map carrying $patch is not stored",
            json!({"a": 1}),
            json!({"simpleMap": {"$patch": "delete"}}),
            json!({"a": 1}),
        ),
    ]);
}

#[test]
fn merging_list_of_objects() {
    check(&[
        (
            "merge element by key, append new",
            json!({"mergingList": [{"name": "1", "value": "a"}, {"name": "2", "value": "b"}]}),
            json!({"mergingList": [{"name": "2", "value": "B", "other": "x"}, {"name": "3"}]}),
            json!({"mergingList": [{"name": "1", "value": "a"}, {"name": "2", "value": "B", "other": "x"}, {"name": "3"}]}),
        ),
        (
            "null inside an element deletes that field",
            json!({"mergingList": [{"name": "1", "value": "a", "other": "b"}]}),
            json!({"mergingList": [{"name": "1", "value": null}]}),
            json!({"mergingList": [{"name": "1", "other": "b"}]}),
        ),
        (
            // apimachinery's ordering: with no $setElementOrder, an element the server does not
            // have is placed before the server-only ones (kubectl always sends the order).
            "nested merging list inside an element",
            json!({"mergingList": [{"name": "1", "mergingList": [{"name": "a", "value": "1"}]}]}),
            json!({"mergingList": [{"name": "1", "mergingList": [{"name": "b"}]}]}),
            json!({"mergingList": [{"name": "1", "mergingList": [{"name": "b"}, {"name": "a", "value": "1"}]}]}),
        ),
        (
            "$patch: delete removes every element with the key",
            json!({"mergingList": [{"name": "1"}, {"name": "2"}, {"name": "1", "dup": true}]}),
            json!({"mergingList": [{"name": "1", "$patch": "delete"}]}),
            json!({"mergingList": [{"name": "2"}]}),
        ),
        (
            "$patch: delete of a missing element is a no-op",
            json!({"mergingList": [{"name": "1"}]}),
            json!({"mergingList": [{"name": "9", "$patch": "delete"}]}),
            json!({"mergingList": [{"name": "1"}]}),
        ),
        (
            "$patch: replace makes the other elements the whole list",
            json!({"mergingList": [{"name": "1"}, {"name": "2"}]}),
            json!({"mergingList": [{"$patch": "replace"}, {"name": "3", "value": "x"}]}),
            json!({"mergingList": [{"name": "3", "value": "x"}]}),
        ),
        (
            "$patch: replace alone empties the list",
            json!({"mergingList": [{"name": "1"}]}),
            json!({"mergingList": [{"$patch": "replace"}]}),
            json!({"mergingList": []}),
        ),
        (
            "numbers as merge keys compare by value",
            json!({"mergingList": [{"name": 80, "value": "a"}]}),
            json!({"mergingList": [{"name": 80.0, "value": "b"}]}),
            json!({"mergingList": [{"name": 80.0, "value": "b"}]}),
        ),
        (
            "apimachinery: nested patch merge with empty list (two-way)",
            json!({"name": "hi"}),
            json!({"mergingList": [{"name": "hello"}, {"$patch": "delete", "name": "doesntexist"}]}),
            json!({"name": "hi", "mergingList": [{"name": "hello"}]}),
        ),
    ]);
}

#[test]
fn non_merging_lists_are_replaced() {
    check(&[
        (
            "atomic list replaced",
            json!({"nonMergingList": [{"name": "1"}, {"name": "2"}]}),
            json!({"nonMergingList": [{"name": "3"}]}),
            json!({"nonMergingList": [{"name": "3"}]}),
        ),
        (
            "redundant $patch: replace marker dropped",
            json!({"nonMergingIntList": [1, 2]}),
            json!({"nonMergingList": [{"$patch": "replace"}, {"name": "3"}]}),
            json!({"nonMergingIntList": [1, 2], "nonMergingList": [{"name": "3"}]}),
        ),
        (
            "scalar list replaced",
            json!({"nonMergingIntList": [1, 2]}),
            json!({"nonMergingIntList": [3]}),
            json!({"nonMergingIntList": [3]}),
        ),
        (
            "list deleted by null",
            json!({"nonMergingIntList": [1]}),
            json!({"nonMergingIntList": null}),
            json!({}),
        ),
    ]);
}

#[test]
fn merging_list_of_scalars() {
    check(&[
        (
            "union keeps order",
            json!({"mergingIntList": [1, 2]}),
            json!({"mergingIntList": [2, 3]}),
            json!({"mergingIntList": [1, 2, 3]}),
        ),
        (
            "duplicates dropped",
            json!({"mergingIntList": [1, 1, 2]}),
            json!({"mergingIntList": [1]}),
            json!({"mergingIntList": [1, 2]}),
        ),
        (
            "apimachinery: preserve the order from the patch in a merging int list",
            json!({"mergingIntList": [1, 2, 3]}),
            json!({"mergingIntList": [3, 1]}),
            json!({"mergingIntList": [2, 3, 1]}),
        ),
        (
            "new list",
            json!({}),
            json!({"mergingIntList": ["a"]}),
            json!({"mergingIntList": ["a"]}),
        ),
    ]);
}

#[test]
fn delete_from_primitive_list() {
    check(&[
        (
            "removes listed values",
            json!({"mergingIntList": [1, 2, 3, 2]}),
            json!({"$deleteFromPrimitiveList/mergingIntList": [2]}),
            json!({"mergingIntList": [1, 3]}),
        ),
        (
            "absent list stays absent",
            json!({"a": 1}),
            json!({"$deleteFromPrimitiveList/mergingIntList": [2]}),
            json!({"a": 1}),
        ),
        (
            // Without $setElementOrder a value new to the server goes first (as in apimachinery).
            "delete and add in one patch",
            json!({"mergingIntList": [1, 2]}),
            json!({"$deleteFromPrimitiveList/mergingIntList": [1], "mergingIntList": [3]}),
            json!({"mergingIntList": [3, 2]}),
        ),
        (
            "apimachinery: delete items in lists of scalars (two-way)",
            json!({"mergingIntList": [1, 2, 3]}),
            json!({"$setElementOrder/mergingIntList": [1, 2], "$deleteFromPrimitiveList/mergingIntList": [3]}),
            json!({"mergingIntList": [1, 2]}),
        ),
        (
            "apimachinery: delete from and reorder an int list",
            json!({"mergingIntList": [1, 2, 3]}),
            json!({"$setElementOrder/mergingIntList": [2, 1], "$deleteFromPrimitiveList/mergingIntList": [3]}),
            json!({"mergingIntList": [2, 1]}),
        ),
    ]);
}

#[test]
fn set_element_order() {
    check(&[
        (
            "apimachinery: add an item in a list and preserve order (three-way)",
            json!({"mergingList": [{"name": "1", "other": "a"}, {"name": "2", "value": "2", "other": "b"}]}),
            json!({"$setElementOrder/mergingList": [{"name": "3"}, {"name": "1"}, {"name": "2"}], "mergingList": [{"name": "3", "value": "3"}]}),
            json!({"mergingList": [{"name": "3", "value": "3"}, {"name": "1", "other": "a"}, {"name": "2", "value": "2", "other": "b"}]}),
        ),
        (
            "apimachinery: add map and delete map from merging list with conflict (three-way)",
            json!({"mergingList": [{"name": "1", "other": "a"}, {"name": "4", "other": "c"}]}),
            json!({"$setElementOrder/mergingList": [{"name": "2"}, {"name": "3"}], "mergingList": [{"name": "2"}, {"name": "3"}, {"name": "1", "$patch": "delete"}]}),
            json!({"mergingList": [{"name": "4", "other": "c"}, {"name": "2"}, {"name": "3"}]}),
        ),
        (
            "apimachinery: delete and reorder in one list, reorder in another",
            json!({"mergingList": [{"name": "a", "value": "a"}, {"name": "b", "value": "b"}], "mergeItemPtr": [{"name": "c", "value": "c"}, {"name": "d", "value": "d"}]}),
            json!({"$setElementOrder/mergingList": [{"name": "b"}], "$setElementOrder/mergeItemPtr": [{"name": "d"}, {"name": "c"}], "mergingList": [{"$patch": "delete", "name": "a"}]}),
            json!({"mergingList": [{"name": "b", "value": "b"}], "mergeItemPtr": [{"name": "d", "value": "d"}, {"name": "c", "value": "c"}]}),
        ),
        (
            "apimachinery: $setElementOrder contains item that is not present in the list to be merged",
            json!({"mergingList": [{"name": "1"}, {"name": "3"}]}),
            json!({"$setElementOrder/mergingList": [{"name": "3"}, {"name": "2"}, {"name": "1"}], "mergingList": [{"name": "3", "value": "3"}, {"name": "1", "value": "1"}]}),
            json!({"mergingList": [{"name": "3", "value": "3"}, {"name": "1", "value": "1"}]}),
        ),
        (
            "apimachinery: $setElementOrder contains item that is not present in the int list",
            json!({"mergingIntList": [1, 3]}),
            json!({"$setElementOrder/mergingIntList": [3, 2, 1]}),
            json!({"mergingIntList": [3, 1]}),
        ),
        (
            "apimachinery: nested patch merge with empty list (three-way)",
            json!({"name": "hi", "mergingList": [{"name": "hello2"}]}),
            json!({"$setElementOrder/mergingList": [{"name": "hello"}, {"name": "doesntexist"}], "mergingList": [{"name": "hello"}]}),
            json!({"name": "hi", "mergingList": [{"name": "hello"}, {"name": "hello2"}]}),
        ),
        (
            "apimachinery: behavior of set element order for a merging list with duplicate",
            json!({"mergingList": [{"name": 1}, {"name": 2, "value": "dup1"}, {"name": 3}, {"name": 2, "value": "dup2"}, {"name": 4}]}),
            json!({"$setElementOrder/mergingList": [{"name": 2}, {"name": 1}, {"name": 4}, {"name": 3}, {"name": 2}]}),
            json!({"mergingList": [{"name": 2, "value": "dup1"}, {"name": 2, "value": "dup2"}, {"name": 1}, {"name": 4}, {"name": 3}]}),
        ),
        (
            "apimachinery: RawExtension field and merge list (three-way)",
            json!({"name": "my-object", "mergingList": [{"name": "1"}, {"name": "3"}], "replacingItem": {"Some": "Generic", "Yaml": "Inside", "The": "RawExtension", "Field": "Period"}}),
            json!({"$setElementOrder/mergingList": [{"name": "1"}, {"name": "2"}], "mergingList": [{"name": "2"}], "replacingItem": {"Newly": "Modified", "Yaml": "Inside", "The": "RawExtension"}}),
            json!({"name": "my-object", "mergingList": [{"name": "1"}, {"name": "2"}, {"name": "3"}], "replacingItem": {"Newly": "Modified", "Yaml": "Inside", "The": "RawExtension"}}),
        ),
        (
            // A server-only element is emitted before the next named one if the live list had
            // it earlier: x and y both preceded b, the first name in the order.
            "server-only elements keep their relative order around named ones",
            json!({"mergingList": [{"name": "x"}, {"name": "a"}, {"name": "y"}, {"name": "b"}]}),
            json!({"$setElementOrder/mergingList": [{"name": "b"}, {"name": "a"}]}),
            json!({"mergingList": [{"name": "x"}, {"name": "y"}, {"name": "b"}, {"name": "a"}]}),
        ),
        (
            "order for a list the object does not have yet",
            json!({}),
            json!({"$setElementOrder/mergingList": [{"name": "b"}, {"name": "a"}], "mergingList": [{"name": "b"}, {"name": "a"}]}),
            json!({"mergingList": [{"name": "b"}, {"name": "a"}]}),
        ),
    ]);
}

#[test]
fn retain_keys() {
    check(&[
        (
            "drops keys not listed",
            json!({"retainKeysMap": {"name": "foo", "value": "v", "other": "o"}}),
            json!({"retainKeysMap": {"$retainKeys": ["name", "value"], "value": "w"}}),
            json!({"retainKeysMap": {"name": "foo", "value": "w"}}),
        ),
        (
            "apimachinery: retainKeys map nested merging list with no change (three-way)",
            json!({"retainKeysMap": {"name": "foo", "mergingList": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}}),
            json!({"retainKeysMap": {"$retainKeys": ["mergingList", "name", "value"], "$setElementOrder/mergingList": [{"name": "a"}, {"name": "b"}], "value": "bar"}}),
            json!({"retainKeysMap": {"name": "foo", "value": "bar", "mergingList": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}}),
        ),
        (
            "null fields need not be listed",
            json!({"retainKeysMergingList": [{"name": "foo", "value": "v"}]}),
            json!({"retainKeysMergingList": [{"$retainKeys": ["name"], "name": "foo", "value": null}]}),
            json!({"retainKeysMergingList": [{"name": "foo"}]}),
        ),
    ]);
}

#[test]
fn untyped_schema_merges_maps_and_replaces_lists() {
    let original = json!({"spec": {"containers": [{"name": "a", "image": "x"}], "replicas": 1}});
    let patch = json!({"spec": {"containers": [{"name": "b"}], "paused": true}});
    let got = apply_value(
        &original,
        &patch,
        PatchType::StrategicMerge,
        Schema::UNTYPED,
    )
    .unwrap();
    assert_eq!(
        got,
        json!({"spec": {"containers": [{"name": "b"}], "replicas": 1, "paused": true}})
    );
    assert!(!Schema::for_kind("example.com", "Widget").is_typed());
}

/// `(description, original, patch, expected error variant name)`.
#[test]
fn errors() {
    let list = json!({
        "mergingList": [{"name": "1"}],
        "mergingIntList": [1],
        "nonMergingList": [{"name": "1"}],
        "simpleMap": {"a": 1},
    });
    let cases = [
        ("patch not an object", json!([1]), "NotAnObject"),
        (
            "$patch: merge on a map (rejected by apimachinery too)",
            json!({"simpleMap": {"$patch": "merge"}}),
            "BadPatchDirective",
        ),
        (
            "unknown $patch value",
            json!({"simpleMap": {"$patch": "frob"}}),
            "BadPatchDirective",
        ),
        (
            "$patch: merge in a list",
            json!({"mergingList": [{"$patch": "merge", "name": "1"}]}),
            "BadPatchDirective",
        ),
        (
            "$patch: delete on a list without merge key",
            json!({"nonMergingList": [{"$patch": "delete", "name": "1"}]}),
            "DirectiveOnNonMergeList",
        ),
        (
            "$patch: delete without the merge key",
            json!({"mergingList": [{"$patch": "delete"}]}),
            "MissingMergeKey",
        ),
        (
            "element without the merge key",
            json!({"mergingList": [{"value": "x"}]}),
            "MissingMergeKey",
        ),
        (
            "$setElementOrder entry without the merge key",
            json!({"$setElementOrder/mergingList": [{"value": "x"}]}),
            "MissingMergeKey",
        ),
        (
            "unknown directive",
            json!({"$frobnicate": true}),
            "UnknownDirective",
        ),
        (
            "unknown directive in a nested map",
            json!({"simpleMap": {"$frobnicate": true}}),
            "UnknownDirective",
        ),
        (
            "unknown directive in an element",
            json!({"mergingList": [{"name": "1", "$frob/x": [1]}]}),
            "UnknownDirective",
        ),
        (
            "$retainKeys not a list",
            json!({"simpleMap": {"$retainKeys": "a"}}),
            "BadDirectiveValue",
        ),
        (
            "patch sets a key $retainKeys drops",
            json!({"simpleMap": {"$retainKeys": ["a"], "b": 1}}),
            "RetainKeysViolation",
        ),
        (
            "apimachinery: should check if order in $setElementOrder and patch list match",
            json!({"$setElementOrder/mergingList": [{"name": "1"}, {"name": "2"}], "mergingList": [{"name": "2"}, {"name": "1"}]}),
            "SetElementOrderMismatch",
        ),
        (
            "patch list element missing from $setElementOrder",
            json!({"$setElementOrder/mergingList": [{"name": "1"}], "mergingList": [{"name": "3"}]}),
            "SetElementOrderMismatch",
        ),
        (
            "$setElementOrder not a list",
            json!({"$setElementOrder/mergingList": {"name": "1"}}),
            "BadDirectiveValue",
        ),
        (
            "$setElementOrder without field name",
            json!({"$setElementOrder/": []}),
            "BadDirectiveValue",
        ),
        (
            "$deleteFromPrimitiveList not a list",
            json!({"$deleteFromPrimitiveList/mergingIntList": 1}),
            "BadDirectiveValue",
        ),
        (
            "$deleteFromPrimitiveList on a replaced list",
            json!({"$deleteFromPrimitiveList/nonMergingIntList": [1]}),
            "DirectiveOnNonMergeList",
        ),
        (
            "$deleteFromPrimitiveList on a list of objects",
            json!({"$deleteFromPrimitiveList/mergingList": [1]}),
            "DirectiveOnNonMergeList",
        ),
        (
            "mixed scalar types in a merging list",
            json!({"mergingIntList": ["a"]}),
            "MixedListElements",
        ),
        (
            "scalar in a list of objects",
            json!({"mergingList": ["a"]}),
            "MixedListElements",
        ),
    ];
    for (description, patch, want) in cases {
        let err = smp(&list, &patch).expect_err(description);
        let got = format!("{err:?}");
        assert!(got.starts_with(want), "{description}: got {got}");
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn error_messages_name_the_place() {
    let original = json!({"mergingList": [{"name": "1", "mergingList": [{"name": "a"}]}]});
    let patch = json!({"mergingList": [{"name": "1", "mergingList": [{"value": "x"}]}]});
    let err = smp(&original, &patch).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"mergingList[name="1"].mergingList: list element {"value":"x"} has no merge key "name""#
    );
    assert_eq!(err.http_status(), 400);
}

#[test]
fn original_is_not_modified_on_error() {
    let original = json!({"mergingList": [{"name": "1"}], "a": 1});
    let before = original.clone();
    let patch = br#"{"a": 2, "mergingList": [{"$patch": "frob", "name": "1"}]}"#;
    assert!(apply(&original, patch, PatchType::StrategicMerge, SCHEMA).is_err());
    assert_eq!(original, before);
}
