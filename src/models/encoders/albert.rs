//! ALBERT (`AlbertModel` and its task heads): BERT's post-LN layers with two twists —
//! embeddings narrower than the hidden size (`embedding_size`), projected by
//! `encoder.embedding_hidden_mapping_in`, and layers shared across depth: `num_hidden_groups`
//! groups of `inner_group_num` layers, where layer `i` of `num_hidden_layers` runs group
//! `i / (num_hidden_layers / num_hidden_groups)` (`AlbertTransformer.forward`). Shared layers
//! are loaded once.

use anyhow::{bail, Result};
use serde::Deserialize;

use crate::models::config::{EncoderConfig, ModelConfig};
use crate::models::encoder::{EncoderLayout, LayerNames};

/// ALBERT's own `config.json` fields (`AlbertConfig`'s defaults).
#[derive(Debug, Deserialize)]
pub struct AlbertConfig {
    #[serde(default = "one")]
    pub num_hidden_groups: usize,
    #[serde(default = "one")]
    pub inner_group_num: usize,
}

fn one() -> usize {
    1
}

pub fn layout(config: &EncoderConfig, model: &ModelConfig) -> Result<EncoderLayout> {
    let albert: AlbertConfig = model.family()?;
    let (layers, groups) = (config.num_layers, albert.num_hidden_groups);
    if groups == 0 || albert.inner_group_num == 0 || groups > layers {
        bail!(
            "ALBERT with {groups} layer groups of {} layers for {layers} hidden layers is not a valid configuration",
            albert.inner_group_num
        );
    }
    // (a float division, as `int(i / (num_hidden_layers / num_hidden_groups))`)
    let per_group = layers as f64 / groups as f64;
    let mut names = Vec::with_capacity(layers * albert.inner_group_num);
    for i in 0..layers {
        let group = ((i as f64 / per_group) as usize).min(groups - 1);
        for inner in 0..albert.inner_group_num {
            names.push(LayerNames {
                prefix: format!("encoder.albert_layer_groups.{group}.albert_layers.{inner}"),
                query: "attention.query",
                key: "attention.key",
                value: "attention.value",
                attention_out: "attention.dense",
                attention_norm: "attention.LayerNorm",
                ffn_in: "ffn",
                ffn_out: "ffn_output",
                ffn_norm: "full_layer_layer_norm",
            });
        }
    }
    Ok(EncoderLayout {
        layers: names,
        embeddings_project: "encoder.embedding_hidden_mapping_in",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn groups_run(layers: usize, groups: usize, inner: usize) -> Vec<String> {
        let model = ModelConfig::from_json(json!({
            "model_type": "albert", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": layers,
            "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 8,
            "embedding_size": 4, "num_hidden_groups": groups, "inner_group_num": inner,
        }))
        .unwrap();
        let config = EncoderConfig::from_config(&model).unwrap();
        layout(&config, &model)
            .unwrap()
            .layers
            .into_iter()
            .map(|l| l.prefix.replace("encoder.albert_layer_groups.", ""))
            .collect()
    }

    #[test]
    fn layers_run_their_group_as_albert_transformer_does() {
        // One shared group (every released ALBERT): the same layer, num_hidden_layers times.
        assert_eq!(groups_run(3, 1, 1), vec!["0.albert_layers.0"; 3]);
        // int(i / (12 / 5)) with a float division: 0,0,0,1,1,2,2,2,3,3,4,4.
        let groups: Vec<char> = groups_run(12, 5, 1)
            .iter()
            .map(|p| p.chars().next().unwrap())
            .collect();
        assert_eq!(groups.iter().collect::<String>(), "000112223344");
        // Each group runs all its inner layers.
        assert_eq!(
            groups_run(2, 2, 2),
            [
                "0.albert_layers.0",
                "0.albert_layers.1",
                "1.albert_layers.0",
                "1.albert_layers.1"
            ]
        );
    }
}
