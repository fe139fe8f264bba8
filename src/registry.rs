//! Which of our networks serves a `config.json`, and which tasks it serves: the one table the
//! encoder tasks, text generation and the start-up checks all read.
//!
//! Adding an architecture: its network in one file under `models/` (with its typed config and
//! heads), one line in [`ARCHITECTURES`], and its golden tests (see the README's recipe).

use anyhow::{bail, Result};

use crate::task::Task;

/// Encoder families: each is our fused BERT-family encoder with its own weight names, or a
/// candle-transformers network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderFamily {
    Bert,
    /// RoBERTa, XLM-RoBERTa and CamemBERT: BERT layers, positions offset by the padding index.
    Roberta,
    DistilBert,
    /// ELECTRA: BERT layers; embeddings may be narrower than the hidden size (projected).
    Electra,
    /// ALBERT: BERT layers shared across depth; narrower embeddings, projected.
    Albert,
    /// DeBERTa-v2/v3: disentangled relative attention (candle-transformers' network).
    DebertaV2,
    /// ModernBERT: rotary positions, GeGLU, alternating local/global attention (candle-transformers).
    ModernBert,
}

/// Decoder-only families of `models::causal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderFamily {
    /// Llama and SmolLM; also the base of the variants below.
    Llama,
    Mistral,
    /// Qwen2: biases on the Q, K and V projections by default.
    Qwen2,
    /// Qwen3: per-head RMSNorm of queries and keys.
    Qwen3,
    /// Phi-3: fused QKV and gate/up matrices.
    Phi3,
    /// Gemma: (1 + weight) RMSNorm, embeddings scaled by sqrt(hidden), GELU gates.
    Gemma,
    Gpt2,
}

/// The network that serves a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    Encoder(EncoderFamily),
    Decoder(DecoderFamily),
    /// T5 and Flan-T5 (`models::t5`).
    T5,
    /// BART and Marian (`models::bart`).
    Bart,
    /// Image networks (`models::vision`), in f32.
    Vision,
    Whisper,
    /// Wav2Vec2, HuBERT or Data2VecAudio with its CTC head (`models::wav2vec2`).
    Wav2Vec2,
    /// Image captioners (`models::captioner`): VisionEncoderDecoder (an image encoder and a
    /// GPT-2 decoder) and BLIP.
    Captioner,
}

/// One row of the table: the `model_type`s a network serves and the tasks it serves them for.
pub struct Architecture {
    pub model_types: &'static [&'static str],
    /// What the first model type also covers, for messages (`T5, Flan-T5`).
    pub covers: Option<&'static str>,
    pub network: Network,
    pub tasks: &'static [Task],
}

const ENCODER_TASKS: &[Task] = &[
    Task::TextClassification,
    Task::TokenClassification,
    Task::QuestionAnswering,
    Task::FillMask,
    Task::FeatureExtraction,
    Task::ZeroShotClassification,
    Task::SentenceEmbeddings,
    Task::SentenceSimilarity,
    Task::SentenceRanking,
];
const GENERATION: &[Task] = &[Task::TextGeneration];
const ZERO_SHOT_IMAGE: &[Task] = &[Task::ZeroShotImageClassification];
const OBJECT_DETECTION: &[Task] = &[Task::ObjectDetection];
const IMAGE_FEATURES: &[Task] = &[Task::ImageClassification, Task::ImageFeatureExtraction];
const SPEECH: &[Task] = &[Task::AutomaticSpeechRecognition];
const IMAGE_TO_TEXT: &[Task] = &[Task::ImageToText];
const TEXT2TEXT: &[Task] = &[
    Task::Text2TextGeneration,
    Task::Summarization,
    Task::Translation,
];

const fn row(
    model_types: &'static [&'static str],
    network: Network,
    tasks: &'static [Task],
) -> Architecture {
    Architecture {
        model_types,
        covers: None,
        network,
        tasks,
    }
}

impl Architecture {
    /// Also naming the models a type covers, for messages.
    const fn covering(self, covers: &'static str) -> Architecture {
        Architecture {
            covers: Some(covers),
            ..self
        }
    }
}

use self::DecoderFamily as D;
use self::EncoderFamily as E;
use self::Network::{Decoder, Encoder};

/// Every architecture we serve.
pub const ARCHITECTURES: &[Architecture] = &[
    row(&["bert"], Encoder(E::Bert), ENCODER_TASKS),
    row(
        &["roberta", "xlm-roberta", "camembert"],
        Encoder(E::Roberta),
        ENCODER_TASKS,
    ),
    row(&["distilbert"], Encoder(E::DistilBert), ENCODER_TASKS),
    row(&["electra"], Encoder(E::Electra), ENCODER_TASKS),
    row(&["albert"], Encoder(E::Albert), ENCODER_TASKS),
    row(&["deberta-v2"], Encoder(E::DebertaV2), ENCODER_TASKS),
    row(&["modernbert"], Encoder(E::ModernBert), ENCODER_TASKS),
    row(&["llama"], Decoder(D::Llama), GENERATION).covering("SmolLM"),
    row(&["mistral"], Decoder(D::Mistral), GENERATION),
    row(&["qwen2"], Decoder(D::Qwen2), GENERATION),
    row(&["qwen3"], Decoder(D::Qwen3), GENERATION),
    row(&["phi3"], Decoder(D::Phi3), GENERATION),
    row(&["gemma"], Decoder(D::Gemma), GENERATION),
    row(&["gpt2"], Decoder(D::Gpt2), GENERATION),
    row(&["t5"], Network::T5, TEXT2TEXT).covering("T5, Flan-T5"),
    row(&["bart", "marian"], Network::Bart, TEXT2TEXT),
    row(
        &["vit", "dinov2", "deit", "resnet", "convnext"],
        Network::Vision,
        IMAGE_FEATURES,
    ),
    row(
        &["clip_vision_model"],
        Network::Vision,
        &[Task::ImageFeatureExtraction],
    ),
    row(&["clip", "siglip"], Network::Vision, ZERO_SHOT_IMAGE),
    row(&["detr", "yolos"], Network::Vision, OBJECT_DETECTION),
    row(&["whisper"], Network::Whisper, SPEECH),
    row(
        &[
            "wav2vec2",
            "hubert",
            "data2vec-audio",
            "wavlm",
            "unispeech",
            "unispeech-sat",
        ],
        Network::Wav2Vec2,
        SPEECH,
    ),
    row(
        &["vision-encoder-decoder", "blip"],
        Network::Captioner,
        IMAGE_TO_TEXT,
    ),
];

/// The architecture of a `model_type`, whatever the task.
pub fn architecture(model_type: &str) -> Option<&'static Architecture> {
    ARCHITECTURES
        .iter()
        .find(|a| a.model_types.contains(&model_type))
}

/// The network that serves `model_type` for `task`, or the error that lists the model types
/// that can serve the task.
pub fn network(model_type: &str, task: Task) -> Result<Network> {
    match architecture(model_type) {
        Some(a) if a.tasks.contains(&task) => Ok(a.network),
        _ => bail!(
            "model_type `{model_type}` is not supported for {task}; supported: {}",
            model_types_for(task).join(", ")
        ),
    }
}

/// The encoder family of `model_type` (for any encoder task).
pub fn encoder_family(model_type: &str) -> Result<EncoderFamily> {
    match architecture(model_type).map(|a| a.network) {
        Some(Network::Encoder(family)) => Ok(family),
        _ => bail!(
            "model_type `{model_type}` is not supported for this task; supported encoder families: {}",
            model_types_for(Task::FeatureExtraction).join(", ")
        ),
    }
}

/// Every `model_type` that can serve `task`, in table order (with what it covers).
pub fn model_types_for(task: Task) -> Vec<String> {
    ARCHITECTURES
        .iter()
        .filter(|a| a.tasks.contains(&task))
        .flat_map(|a| {
            a.model_types
                .iter()
                .enumerate()
                .map(|(i, t)| match a.covers {
                    Some(covers) if i == 0 => format!("{t} ({covers})"),
                    _ => t.to_string(),
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_model_type_is_listed_once() {
        let mut all: Vec<&str> = ARCHITECTURES
            .iter()
            .flat_map(|a| a.model_types.iter().copied())
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
    }

    #[test]
    fn tasks_pick_the_network_or_list_the_alternatives() {
        assert_eq!(
            network("xlm-roberta", Task::FillMask).unwrap(),
            Network::Encoder(EncoderFamily::Roberta)
        );
        assert_eq!(network("marian", Task::Translation).unwrap(), Network::Bart);
        let e = network("bert", Task::Summarization)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "model_type `bert` is not supported for summarization; supported: t5 (T5, Flan-T5), bart, marian"
        );
        let e = network("funnel", Task::TextClassification)
            .unwrap_err()
            .to_string();
        assert!(e.contains("distilbert") && e.contains("modernbert"), "{e}");
    }
}
