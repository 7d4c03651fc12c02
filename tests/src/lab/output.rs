//! Reading what a command printed.

/// One string field of every object in a JSON array: `field(&list["allowed"], "addr")`.
pub fn field<'a>(array: &'a serde_json::Value, name: &str) -> Vec<&'a str> {
    array
        .as_array()
        .expect("an array")
        .iter()
        .map(|item| item[name].as_str().expect("a string"))
        .collect()
}
