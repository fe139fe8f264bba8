//! DistilBERT: `transformer.layer.{i}` with `attention.{q,k,v}_lin`, `ffn.lin1/lin2` and its own
//! LayerNorm names.

use crate::models::config::EncoderConfig;
use crate::models::encoder::{EncoderLayout, LayerNames};

pub fn layout(config: &EncoderConfig) -> EncoderLayout {
    EncoderLayout {
        layers: (0..config.num_layers)
            .map(|i| LayerNames {
                prefix: format!("transformer.layer.{i}"),
                query: "attention.q_lin",
                key: "attention.k_lin",
                value: "attention.v_lin",
                attention_out: "attention.out_lin",
                attention_norm: "sa_layer_norm",
                ffn_in: "ffn.lin1",
                ffn_out: "ffn.lin2",
                ffn_norm: "output_layer_norm",
            })
            .collect(),
        embeddings_project: "embeddings_project",
    }
}
