//! A readable listing of an exported ONNX model: opset, inputs and
//! outputs with their types, initializers with their shapes (not their
//! values), and every node with its op type, inputs, outputs and
//! attributes, in graph order. For reviews and golden tests.

use super::proto::attribute_proto::AttributeType;
use super::proto::tensor_proto::DataType;
use super::proto::tensor_shape_proto::dimension;
use super::proto::{type_proto, AttributeProto, ModelProto, ValueInfoProto};
use std::fmt::Write;

/// The listing of `model`.
pub fn model_text(model: &ModelProto) -> String {
    let mut s = String::new();
    let opsets: Vec<String> = model
        .opset_import
        .iter()
        .map(|o| {
            let domain = o.domain.as_deref().unwrap_or("");
            let domain = if domain.is_empty() { "ai.onnx" } else { domain };
            format!("{domain} {}", o.version.unwrap_or(0))
        })
        .collect();
    let _ = writeln!(
        s,
        "ir_version {}, opset {}, producer {}",
        model.ir_version.unwrap_or(0),
        opsets.join(", "),
        model.producer_name.as_deref().unwrap_or("?")
    );
    let Some(g) = &model.graph else {
        return s;
    };
    let _ = writeln!(s, "graph {} {{", g.name.as_deref().unwrap_or(""));
    for i in &g.input {
        let _ = writeln!(s, "  input {}", value_text(i));
    }
    for o in &g.output {
        let _ = writeln!(s, "  output {}", value_text(o));
    }
    for t in &g.initializer {
        let dims: Vec<String> = t.dims.iter().map(|d| d.to_string()).collect();
        let _ = writeln!(
            s,
            "  initializer {}: {}[{}]",
            t.name.as_deref().unwrap_or(""),
            elem_name(t.data_type.unwrap_or(0)),
            dims.join(", ")
        );
    }
    for n in &g.node {
        let ins: Vec<&str> = n
            .input
            .iter()
            .map(|i| if i.is_empty() { "_" } else { i.as_str() })
            .collect();
        let outs: Vec<&str> = n
            .output
            .iter()
            .map(|o| if o.is_empty() { "_" } else { o.as_str() })
            .collect();
        let attrs: Vec<String> = n.attribute.iter().map(attribute_text).collect();
        let attrs = if attrs.is_empty() {
            String::new()
        } else {
            format!(" {{{}}}", attrs.join(", "))
        };
        let _ = writeln!(
            s,
            "  {} = {}({}){attrs}",
            outs.join(", "),
            n.op_type.as_deref().unwrap_or("?"),
            ins.join(", ")
        );
    }
    s.push_str("}\n");
    s
}

fn elem_name(t: i32) -> &'static str {
    match DataType::try_from(t) {
        Ok(DataType::Float) => "float",
        Ok(DataType::Int64) => "int64",
        _ => "?",
    }
}

fn value_text(v: &ValueInfoProto) -> String {
    let name = v.name.as_deref().unwrap_or("");
    let Some(type_proto::Value::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return format!("{name}: ?");
    };
    let dims: Vec<String> = t
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match &d.value {
                    Some(dimension::Value::DimValue(v)) => v.to_string(),
                    Some(dimension::Value::DimParam(p)) => p.clone(),
                    None => "?".into(),
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "{name}: {}[{}]",
        elem_name(t.elem_type.unwrap_or(0)),
        dims.join(", ")
    )
}

fn attribute_text(a: &AttributeProto) -> String {
    let name = a.name.as_deref().unwrap_or("");
    let value = match AttributeType::try_from(a.r#type.unwrap_or(0)) {
        Ok(AttributeType::Int) => a.i.unwrap_or(0).to_string(),
        Ok(AttributeType::Float) => a.f.unwrap_or(0.0).to_string(),
        Ok(AttributeType::String) => {
            format!(
                "{:?}",
                String::from_utf8_lossy(a.s.as_deref().unwrap_or(&[]))
            )
        }
        Ok(AttributeType::Ints) => format!(
            "[{}]",
            a.ints
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => "?".into(),
    };
    format!("{name}: {value}")
}
