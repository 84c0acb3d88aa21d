//! Writing trained weights back into an ONNX graph, by initializer name, without Python.
//!
//! This edits the protobuf wire format directly: it walks `ModelProto.graph` (field 7) ->
//! `GraphProto.initializer` (field 5) -> `TensorProto`, and replaces `raw_data` (field 9) of the named float
//! tensors. Every other byte of the model (nodes, opsets, metadata, fields this code does not know) is copied
//! unchanged, which a decode/re-encode through generated structs would not guarantee.

use std::collections::{BTreeMap, HashMap, HashSet};

const MODEL_GRAPH: u64 = 7;
const GRAPH_INITIALIZER: u64 = 5;
const TENSOR_DIMS: u64 = 1;
const TENSOR_DATA_TYPE: u64 = 2;
const TENSOR_FLOAT_DATA: u64 = 4;
const TENSOR_NAME: u64 = 8;
const TENSOR_RAW_DATA: u64 = 9;
const TENSOR_DATA_LOCATION: u64 = 14;
const ONNX_FLOAT: u64 = 1;

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OnnxWeightsError {
    #[error("malformed ONNX protobuf: {0}")]
    Malformed(String),
    #[error(
        "initializer `{name}` has shape {dims:?} ({expected} values) but {actual} values were given"
    )]
    Shape {
        name: String,
        dims: Vec<i64>,
        expected: usize,
        actual: usize,
    },
    #[error("initializer `{name}` is not a float tensor stored in the model file")]
    NotFloat { name: String },
    #[error("the ONNX graph has no initializers named {0:?}")]
    Unknown(Vec<String>),
}

/// One initializer of the graph: its name, shape and ONNX data type.
#[derive(Debug, Clone, PartialEq)]
pub struct InitializerInfo {
    pub name: String,
    pub dims: Vec<i64>,
    pub data_type: u64,
}

struct Field<'a> {
    number: u64,
    wire: u8,
    /// The whole field, key included, to copy it unchanged.
    raw: &'a [u8],
    /// The payload of a length-delimited field, or the value bytes of the others.
    payload: &'a [u8],
    varint: u64,
}

fn read_varint(bytes: &[u8], pos: &mut usize) -> Result<u64, OnnxWeightsError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes
            .get(*pos)
            .ok_or_else(|| OnnxWeightsError::Malformed("truncated varint".into()))?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(OnnxWeightsError::Malformed(
        "varint longer than 10 bytes".into(),
    ))
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn fields(bytes: &[u8]) -> Result<Vec<Field<'_>>, OnnxWeightsError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let start = pos;
        let key = read_varint(bytes, &mut pos)?;
        let wire = (key & 7) as u8;
        let number = key >> 3;
        let (payload, varint) = match wire {
            WIRE_VARINT => {
                let v = read_varint(bytes, &mut pos)?;
                (&bytes[pos..pos], v)
            }
            WIRE_FIXED64 | WIRE_FIXED32 => {
                let len = if wire == WIRE_FIXED64 { 8 } else { 4 };
                let end = pos + len;
                let payload = bytes
                    .get(pos..end)
                    .ok_or_else(|| OnnxWeightsError::Malformed("truncated fixed field".into()))?;
                pos = end;
                (payload, 0)
            }
            WIRE_LEN => {
                let len = read_varint(bytes, &mut pos)? as usize;
                let end = pos
                    .checked_add(len)
                    .filter(|end| *end <= bytes.len())
                    .ok_or_else(|| OnnxWeightsError::Malformed("length past the end".into()))?;
                let payload = &bytes[pos..end];
                pos = end;
                (payload, 0)
            }
            other => {
                return Err(OnnxWeightsError::Malformed(format!(
                    "unsupported wire type {other}"
                )));
            }
        };
        out.push(Field {
            number,
            wire,
            raw: &bytes[start..pos],
            payload,
            varint,
        });
    }
    Ok(out)
}

fn push_len_field(out: &mut Vec<u8>, number: u64, payload: &[u8]) {
    write_varint(out, (number << 3) | u64::from(WIRE_LEN));
    write_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

fn tensor_info(tensor: &[u8]) -> Result<(InitializerInfo, bool), OnnxWeightsError> {
    let mut info = InitializerInfo {
        name: String::new(),
        dims: Vec::new(),
        data_type: 0,
    };
    let mut external = false;
    for field in fields(tensor)? {
        match (field.number, field.wire) {
            (TENSOR_NAME, WIRE_LEN) => {
                info.name = String::from_utf8_lossy(field.payload).into_owned()
            }
            (TENSOR_DATA_TYPE, WIRE_VARINT) => info.data_type = field.varint,
            (TENSOR_DIMS, WIRE_VARINT) => info.dims.push(field.varint as i64),
            (TENSOR_DIMS, WIRE_LEN) => {
                let mut pos = 0;
                while pos < field.payload.len() {
                    info.dims.push(read_varint(field.payload, &mut pos)? as i64);
                }
            }
            (TENSOR_DATA_LOCATION, WIRE_VARINT) => external = field.varint == 1,
            _ => {}
        }
    }
    Ok((info, external))
}

fn graph_of(model: &[u8]) -> Result<&[u8], OnnxWeightsError> {
    fields(model)?
        .into_iter()
        .find(|f| f.number == MODEL_GRAPH && f.wire == WIRE_LEN)
        .map(|f| f.payload)
        .ok_or_else(|| OnnxWeightsError::Malformed("the model has no graph".into()))
}

/// Lists the graph's initializers.
pub fn initializers(model: &[u8]) -> Result<Vec<InitializerInfo>, OnnxWeightsError> {
    fields(graph_of(model)?)?
        .into_iter()
        .filter(|f| f.number == GRAPH_INITIALIZER && f.wire == WIRE_LEN)
        .map(|f| tensor_info(f.payload).map(|(info, _)| info))
        .collect()
}

/// Reads the values of the named float initializers (stored as `raw_data` or `float_data`).
pub fn read_float_initializers(
    model: &[u8],
) -> Result<BTreeMap<String, Vec<f32>>, OnnxWeightsError> {
    let mut out = BTreeMap::new();
    for init in fields(graph_of(model)?)?
        .into_iter()
        .filter(|f| f.number == GRAPH_INITIALIZER && f.wire == WIRE_LEN)
    {
        let (info, _) = tensor_info(init.payload)?;
        if info.data_type != ONNX_FLOAT {
            continue;
        }
        let mut values = Vec::new();
        for field in fields(init.payload)? {
            match (field.number, field.wire) {
                (TENSOR_RAW_DATA, WIRE_LEN) => values.extend(
                    field
                        .payload
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                ),
                (TENSOR_FLOAT_DATA, WIRE_LEN) => values.extend(
                    field
                        .payload
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                ),
                (TENSOR_FLOAT_DATA, WIRE_FIXED32) => {
                    let c = field.payload;
                    values.push(f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
                }
                _ => {}
            }
        }
        out.insert(info.name, values);
    }
    Ok(out)
}

/// Returns a copy of `model` with the named float initializers replaced. Every name must exist and every
/// replacement must have exactly as many values as the initializer's shape.
pub fn replace_float_initializers(
    model: &[u8],
    weights: &HashMap<String, Vec<f32>>,
) -> Result<Vec<u8>, OnnxWeightsError> {
    let mut replaced = HashSet::new();
    let mut out = Vec::with_capacity(model.len());
    for field in fields(model)? {
        if field.number != MODEL_GRAPH || field.wire != WIRE_LEN {
            out.extend_from_slice(field.raw);
            continue;
        }
        let mut graph = Vec::with_capacity(field.payload.len());
        for gfield in fields(field.payload)? {
            if gfield.number != GRAPH_INITIALIZER || gfield.wire != WIRE_LEN {
                graph.extend_from_slice(gfield.raw);
                continue;
            }
            let (info, external) = tensor_info(gfield.payload)?;
            let Some(values) = weights.get(&info.name) else {
                graph.extend_from_slice(gfield.raw);
                continue;
            };
            if info.data_type != ONNX_FLOAT || external {
                return Err(OnnxWeightsError::NotFloat { name: info.name });
            }
            let expected: usize = info.dims.iter().map(|d| *d as usize).product();
            if expected != values.len() {
                return Err(OnnxWeightsError::Shape {
                    name: info.name,
                    dims: info.dims,
                    expected,
                    actual: values.len(),
                });
            }
            let mut tensor = Vec::with_capacity(values.len() * 4 + 64);
            for tfield in fields(gfield.payload)? {
                if !matches!(tfield.number, TENSOR_RAW_DATA | TENSOR_FLOAT_DATA) {
                    tensor.extend_from_slice(tfield.raw);
                }
            }
            let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            push_len_field(&mut tensor, TENSOR_RAW_DATA, &raw);
            push_len_field(&mut graph, GRAPH_INITIALIZER, &tensor);
            replaced.insert(info.name);
        }
        push_len_field(&mut out, MODEL_GRAPH, &graph);
    }
    let mut unknown: Vec<String> = weights
        .keys()
        .filter(|k| !replaced.contains(*k))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        unknown.sort();
        return Err(OnnxWeightsError::Unknown(unknown));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny ModelProto built by hand: ir_version, a graph with one node-ish field and two initializers.
    fn model() -> Vec<u8> {
        let tensor = |name: &str, dims: &[u64], values: &[f32]| {
            let mut t = Vec::new();
            for d in dims {
                write_varint(&mut t, TENSOR_DIMS << 3);
                write_varint(&mut t, *d);
            }
            write_varint(&mut t, TENSOR_DATA_TYPE << 3);
            write_varint(&mut t, ONNX_FLOAT);
            push_len_field(&mut t, TENSOR_NAME, name.as_bytes());
            let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            push_len_field(&mut t, TENSOR_RAW_DATA, &raw);
            t
        };
        let mut graph = Vec::new();
        push_len_field(&mut graph, 1, b"node bytes kept as they are");
        push_len_field(
            &mut graph,
            GRAPH_INITIALIZER,
            &tensor("conv.weight", &[2, 2], &[1.0, 2.0, 3.0, 4.0]),
        );
        push_len_field(
            &mut graph,
            GRAPH_INITIALIZER,
            &tensor("conv.bias", &[2], &[0.5, 0.5]),
        );
        let mut model = Vec::new();
        write_varint(&mut model, 1 << 3);
        write_varint(&mut model, 8);
        push_len_field(&mut model, MODEL_GRAPH, &graph);
        push_len_field(&mut model, 14, b"metadata");
        model
    }

    #[test]
    fn replaces_named_weights_and_keeps_everything_else() {
        let original = model();
        let infos = initializers(&original).unwrap();
        assert_eq!(infos[0].dims, vec![2, 2]);
        let new = HashMap::from([("conv.bias".to_string(), vec![-1.0, 7.0])]);
        let updated = replace_float_initializers(&original, &new).unwrap();
        let values = read_float_initializers(&updated).unwrap();
        assert_eq!(values["conv.bias"], vec![-1.0, 7.0]);
        assert_eq!(values["conv.weight"], vec![1.0, 2.0, 3.0, 4.0]);
        assert!(
            updated
                .windows(27)
                .any(|w| w == b"node bytes kept as they are")
        );
        assert!(updated.ends_with(b"metadata"));
        // Writing back the original values gives back the original bytes.
        let restore = HashMap::from([("conv.bias".to_string(), vec![0.5, 0.5])]);
        assert_eq!(
            replace_float_initializers(&updated, &restore).unwrap(),
            original
        );
    }

    #[test]
    fn refuses_wrong_sizes_unknown_names_and_garbage() {
        let original = model();
        let wrong = HashMap::from([("conv.bias".to_string(), vec![1.0])]);
        assert!(matches!(
            replace_float_initializers(&original, &wrong),
            Err(OnnxWeightsError::Shape {
                expected: 2,
                actual: 1,
                ..
            })
        ));
        let unknown = HashMap::from([("nope".to_string(), vec![1.0])]);
        assert_eq!(
            replace_float_initializers(&original, &unknown),
            Err(OnnxWeightsError::Unknown(vec!["nope".into()]))
        );
        assert!(matches!(
            replace_float_initializers(&original[..original.len() - 3], &HashMap::new()),
            Err(OnnxWeightsError::Malformed(_))
        ));
    }
}
