//! token-classification's `offset_mapping` parameter: character offsets a client sends in
//! place of the tokenizer's (meant for slow tokenizers), read as the pipeline reads them.

use serde_json::Value;
use tokenizers::Encoding;

use crate::error::ServerError;

/// `offset_mapping`: one list of `[start, end]` per input (`TokenClassificationArgumentHandler`;
/// null: the tokenizer's). The pipeline reads the first list for every input.
pub fn parse_offset_mapping(
    value: Option<Value>,
    inputs: usize,
) -> Result<Option<Vec<(usize, usize)>>, ServerError> {
    let bad = |why: &str| ServerError::bad_request(format!("parameter `offset_mapping`: {why}"));
    let lists = match value {
        None | Some(Value::Null) => return Ok(None),
        // The pipeline passes `[]` on and fails at `offset_mapping[0]`.
        Some(Value::Array(lists)) if lists.is_empty() => {
            return Err(bad("is empty (list index out of range)"))
        }
        Some(Value::Array(lists)) => lists,
        Some(_) => {
            return Err(bad(
                "must be a list with one list of [start, end] per input",
            ))
        }
    };
    if lists.len() != inputs {
        return Err(bad(
            "offset_mapping should have the same batch size as the input (one list of [start, end] per input)",
        ));
    }
    let pair = |v: &Value| -> Option<(usize, usize)> {
        match v.as_array()?.as_slice() {
            [s, e] => Some((s.as_u64()? as usize, e.as_u64()? as usize)),
            _ => None,
        }
    };
    match &lists[0] {
        Value::Array(pairs) => pairs.iter().map(pair).collect::<Option<Vec<_>>>(),
        _ => None,
    }
    .map(Some)
    .ok_or_else(|| bad("each entry must be a [start, end] pair of non-negative integers"))
}

/// Every token that is not a special token needs an entry (the pipeline: IndexError).
pub fn check_offsets_cover(
    offsets: &[(usize, usize)],
    chunks: &[Encoding],
) -> Result<(), ServerError> {
    for chunk in chunks {
        let mask = chunk.get_special_tokens_mask();
        if let Some(idx) = (offsets.len()..chunk.len()).find(|&i| mask[i] == 0) {
            return Err(ServerError::bad_request(format!(
                "parameter `offset_mapping` has {} entries but token {idx} of the input needs one (list index out of range)",
                offsets.len()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_list_per_input_and_pairs_only() {
        let got = parse_offset_mapping(Some(json!([[[0, 0], [0, 1]]])), 1).unwrap();
        assert_eq!(got, Some(vec![(0, 0), (0, 1)]));
        assert_eq!(parse_offset_mapping(Some(json!(null)), 1).unwrap(), None);
        for bad in [
            json!([]),
            json!([[0, 1]]),
            json!([[[0, 1]], [[0, 1]]]),
            json!(["x"]),
            json!([[[-1, 2]]]),
        ] {
            let e = parse_offset_mapping(Some(bad.clone()), 1).err().unwrap();
            assert!(e.to_string().contains("offset_mapping"), "{bad}: {e}");
        }
    }
}
