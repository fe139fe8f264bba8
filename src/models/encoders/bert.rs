//! BERT, RoBERTa / XLM-RoBERTa / CamemBERT and ELECTRA: `encoder.layer.{i}` with
//! `attention.self.{query,key,value}`; ELECTRA projects narrower embeddings with
//! `embeddings_project`.

use crate::models::config::EncoderConfig;
use crate::models::encoder::{EncoderLayout, LayerNames};

pub fn layout(config: &EncoderConfig) -> EncoderLayout {
    EncoderLayout {
        layers: (0..config.num_layers)
            .map(|i| LayerNames {
                prefix: format!("encoder.layer.{i}"),
                query: "attention.self.query",
                key: "attention.self.key",
                value: "attention.self.value",
                attention_out: "attention.output.dense",
                attention_norm: "attention.output.LayerNorm",
                ffn_in: "intermediate.dense",
                ffn_out: "output.dense",
                ffn_norm: "output.LayerNorm",
            })
            .collect(),
        embeddings_project: "embeddings_project",
    }
}
