//! The DynamoDB lease and state items other workers (and people) write to the shared tables,
//! as read back. The input is an item in DynamoDB's JSON form
//! (`{"leaseKey": {"S": "..."}, "leaseCounter": {"N": "7"}, ...}`).
#![no_main]
use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn attribute(v: &Value) -> Option<AttributeValue> {
    let (k, x) = v.as_object()?.iter().next()?;
    Some(match (k.as_str(), x) {
        ("S", Value::String(s)) => AttributeValue::S(s.clone()),
        ("N", Value::String(s)) => AttributeValue::N(s.clone()),
        ("BOOL", Value::Bool(b)) => AttributeValue::Bool(*b),
        ("NULL", _) => AttributeValue::Null(true),
        ("SS", Value::Array(a)) => {
            AttributeValue::Ss(a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
        }
        ("L", Value::Array(a)) => AttributeValue::L(a.iter().filter_map(attribute).collect()),
        ("M", Value::Object(m)) => AttributeValue::M(
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), attribute(v)?)))
                .collect(),
        ),
        _ => return None,
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let item: HashMap<String, AttributeValue> = m
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), attribute(v)?)))
        .collect();
    let _ = credwatch::coord::dynamo::lease_from(&item);
    let _ = credwatch::coord::dynamo::home_from(&item, "");
    let _ = credwatch::coord::dynamo::home_from(&item, "prev");
});
