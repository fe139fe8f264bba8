//! Which pipeline serves the model: `HF_TASK` (with the pipeline aliases) or, as the DLC does,
//! inferred from `config.json` `architectures[0]`.

use std::fmt;

use anyhow::{bail, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    TextClassification,
    TokenClassification,
    QuestionAnswering,
    FillMask,
    FeatureExtraction,
    ZeroShotClassification,
    SentenceEmbeddings,
    SentenceSimilarity,
    SentenceRanking,
    TextGeneration,
    Text2TextGeneration,
    Summarization,
    /// `translation` and `translation_xx_to_yy`.
    Translation,
    ImageClassification,
    ZeroShotImageClassification,
    ImageFeatureExtraction,
    ObjectDetection,
    AutomaticSpeechRecognition,
    ImageToText,
    TextToImage,
}

impl Task {
    pub const SUPPORTED: &'static [&'static str] = &[
        "text-classification (alias sentiment-analysis)",
        "token-classification (alias ner)",
        "question-answering",
        "fill-mask",
        "feature-extraction",
        "zero-shot-classification",
        "sentence-embeddings",
        "sentence-similarity",
        "sentence-ranking (alias text-ranking)",
        "text-generation",
        "text2text-generation",
        "summarization",
        "translation (and translation_xx_to_yy)",
        "image-classification",
        "zero-shot-image-classification",
        "image-feature-extraction",
        "object-detection",
        "automatic-speech-recognition",
        "image-to-text",
        "text-to-image",
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Task::TextClassification => "text-classification",
            Task::TokenClassification => "token-classification",
            Task::QuestionAnswering => "question-answering",
            Task::FillMask => "fill-mask",
            Task::FeatureExtraction => "feature-extraction",
            Task::ZeroShotClassification => "zero-shot-classification",
            Task::SentenceEmbeddings => "sentence-embeddings",
            Task::SentenceSimilarity => "sentence-similarity",
            Task::SentenceRanking => "sentence-ranking",
            Task::TextGeneration => "text-generation",
            Task::Text2TextGeneration => "text2text-generation",
            Task::Summarization => "summarization",
            Task::Translation => "translation",
            Task::ImageClassification => "image-classification",
            Task::ZeroShotImageClassification => "zero-shot-image-classification",
            Task::ImageFeatureExtraction => "image-feature-extraction",
            Task::ObjectDetection => "object-detection",
            Task::AutomaticSpeechRecognition => "automatic-speech-recognition",
            Task::ImageToText => "image-to-text",
            Task::TextToImage => "text-to-image",
        }
    }

    /// Whether the task generates text (the generation engine serves it).
    pub fn generates(&self) -> bool {
        matches!(
            self,
            Task::TextGeneration
                | Task::Text2TextGeneration
                | Task::Summarization
                | Task::Translation
        )
    }

    /// Parses an `HF_TASK` value. Tasks that `transformers.pipeline` knows but this server does
    /// not serve yet get an error that says so, instead of a generic "unknown task".
    pub fn from_hf_task(name: &str) -> Result<Task> {
        match name.trim() {
            "text-classification" | "sentiment-analysis" => Ok(Task::TextClassification),
            "token-classification" | "ner" => Ok(Task::TokenClassification),
            "question-answering" => Ok(Task::QuestionAnswering),
            "fill-mask" => Ok(Task::FillMask),
            "feature-extraction" => Ok(Task::FeatureExtraction),
            "zero-shot-classification" => Ok(Task::ZeroShotClassification),
            "sentence-embeddings" => Ok(Task::SentenceEmbeddings),
            "sentence-similarity" => Ok(Task::SentenceSimilarity),
            "sentence-ranking" | "text-ranking" => Ok(Task::SentenceRanking),
            "text-generation" => Ok(Task::TextGeneration),
            "text2text-generation" => Ok(Task::Text2TextGeneration),
            "summarization" => Ok(Task::Summarization),
            "translation" => Ok(Task::Translation),
            "image-classification" => Ok(Task::ImageClassification),
            "zero-shot-image-classification" => Ok(Task::ZeroShotImageClassification),
            "image-feature-extraction" => Ok(Task::ImageFeatureExtraction),
            "object-detection" => Ok(Task::ObjectDetection),
            "automatic-speech-recognition" => Ok(Task::AutomaticSpeechRecognition),
            "image-to-text" => Ok(Task::ImageToText),
            "text-to-image" => Ok(Task::TextToImage),
            t if t.starts_with("translation_") && t.contains("_to_") => Ok(Task::Translation),
            other if KNOWN_PIPELINE_TASKS.contains(&other) || other.starts_with("translation_") => bail!(
                "HF_TASK `{other}` is a Hugging Face pipeline task that this server does not serve yet; supported: {}",
                Task::SUPPORTED.join(", ")
            ),
            other => bail!(
                "HF_TASK `{other}` is not a known pipeline task; supported: {}",
                Task::SUPPORTED.join(", ")
            ),
        }
    }

    /// The DLC's `infer_task_from_model_architecture`: suffix tests in this order, and the *last*
    /// match wins (the toolkit's loop has no `break`).
    pub fn infer_from_architecture(architecture: &str) -> Result<Task> {
        // Ours: the DLC's table reads Whisper's and BLIP's `...ForConditionalGeneration` (and
        // `VisionEncoderDecoderModel`) as text2text-generation, which cannot run them.
        if let Some((_, task)) = EXACT_ARCHITECTURES.iter().find(|(a, _)| *a == architecture) {
            return Task::from_hf_task(task);
        }
        let mut inferred = None;
        for (suffix, task) in ARCHITECTURE_SUFFIXES {
            if architecture.ends_with(suffix) {
                inferred = Some(*task);
            }
        }
        // Ours: the DLC's table has no image architectures (it needs HF_TASK for them).
        if inferred.is_none() {
            inferred = IMAGE_ARCHITECTURE_SUFFIXES
                .iter()
                .find(|(suffix, _)| architecture.ends_with(suffix))
                .map(|(_, task)| *task);
        }
        match inferred {
            Some(task) => Task::from_hf_task(task),
            None => bail!(
                "Task couldn't be inferred from the architecture `{architecture}`: it must end with one of [{}]. Set HF_TASK.",
                ARCHITECTURE_SUFFIXES.iter().map(|(s, _)| *s).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `transformers_utils.py` `ARCHITECTURES_2_TASK`, in its order.
const ARCHITECTURE_SUFFIXES: &[(&str, &str)] = &[
    ("TapasForQuestionAnswering", "table-question-answering"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForTokenClassification", "token-classification"),
    ("ForSequenceClassification", "text-classification"),
    ("ForMultipleChoice", "multiple-choice"),
    ("ForMaskedLM", "fill-mask"),
    ("ForCausalLM", "text-generation"),
    ("ForConditionalGeneration", "text2text-generation"),
    ("MTModel", "text2text-generation"),
    ("EncoderDecoderModel", "text2text-generation"),
    ("GPT2LMHeadModel", "text-generation"),
    ("T5WithLMHeadModel", "text2text-generation"),
];

/// Architectures the DLC cannot infer a task from and we can (a difference, in the README).
const IMAGE_ARCHITECTURE_SUFFIXES: &[(&str, &str)] = &[
    ("ForImageClassification", "image-classification"),
    ("ForImageClassificationWithTeacher", "image-classification"),
    ("CLIPModel", "zero-shot-image-classification"),
    ("SiglipModel", "zero-shot-image-classification"),
    ("ViTModel", "image-feature-extraction"),
    ("Dinov2Model", "image-feature-extraction"),
    ("DeiTModel", "image-feature-extraction"),
    ("ResNetModel", "image-feature-extraction"),
    ("ConvNextModel", "image-feature-extraction"),
    ("CLIPVisionModel", "image-feature-extraction"),
    ("ForObjectDetection", "object-detection"),
    // (speech too: the DLC's table has no `...ForCTC`)
    ("ForCTC", "automatic-speech-recognition"),
];

const EXACT_ARCHITECTURES: &[(&str, &str)] = &[
    (
        "WhisperForConditionalGeneration",
        "automatic-speech-recognition",
    ),
    // (the DLC's table reads `...EncoderDecoderModel` as text2text-generation)
    ("VisionEncoderDecoderModel", "image-to-text"),
    ("BlipForConditionalGeneration", "image-to-text"),
];

const KNOWN_PIPELINE_TASKS: &[&str] = &[
    "audio-classification",
    "automatic-speech-recognition",
    "depth-estimation",
    "document-question-answering",
    "feature-extraction",
    "fill-mask",
    "image-classification",
    "image-feature-extraction",
    "image-segmentation",
    "image-text-to-text",
    "image-to-image",
    "mask-generation",
    "multiple-choice",
    "ner",
    "object-detection",
    "question-answering",
    "sentence-embeddings",
    "sentence-ranking",
    "sentence-similarity",
    "summarization",
    "table-question-answering",
    "text-generation",
    "text-to-audio",
    "text-to-speech",
    "text2text-generation",
    "token-classification",
    "translation",
    "video-classification",
    "visual-question-answering",
    "vqa",
    "zero-shot-audio-classification",
    "zero-shot-classification",
    "zero-shot-image-classification",
    "zero-shot-object-detection",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases() {
        assert_eq!(
            Task::from_hf_task("sentiment-analysis").unwrap(),
            Task::TextClassification
        );
        assert_eq!(
            Task::from_hf_task("text-classification").unwrap(),
            Task::TextClassification
        );
    }

    #[test]
    fn known_but_unserved_and_unknown_tasks_are_distinct_errors() {
        assert_eq!(
            Task::from_hf_task("ner").unwrap(),
            Task::TokenClassification
        );
        assert_eq!(
            Task::from_hf_task("text-ranking").unwrap(),
            Task::SentenceRanking
        );
        assert_eq!(
            Task::from_hf_task("translation_en_to_de").unwrap(),
            Task::Translation
        );
        assert_eq!(
            Task::from_hf_task("automatic-speech-recognition").unwrap(),
            Task::AutomaticSpeechRecognition
        );
        assert_eq!(
            Task::infer_from_architecture("WhisperForConditionalGeneration").unwrap(),
            Task::AutomaticSpeechRecognition
        );
        for ctc in [
            "Wav2Vec2ForCTC",
            "HubertForCTC",
            "Data2VecAudioForCTC",
            "WavLMForCTC",
            "UniSpeechForCTC",
            "UniSpeechSatForCTC",
        ] {
            assert_eq!(
                Task::infer_from_architecture(ctc).unwrap(),
                Task::AutomaticSpeechRecognition
            );
        }
        let e = Task::from_hf_task("audio-classification")
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not serve yet"), "{e}");
        let e = Task::from_hf_task("dance").unwrap_err().to_string();
        assert!(e.contains("not a known pipeline task"), "{e}");
    }

    #[test]
    fn architecture_suffixes() {
        for arch in [
            "BertForSequenceClassification",
            "DistilBertForSequenceClassification",
            "RobertaForSequenceClassification",
            "XLMRobertaForSequenceClassification",
        ] {
            assert_eq!(
                Task::infer_from_architecture(arch).unwrap(),
                Task::TextClassification
            );
        }
        let e = Task::infer_from_architecture("BertModel")
            .unwrap_err()
            .to_string();
        assert!(e.contains("Set HF_TASK"), "{e}");
        // Last match wins: Tapas QA resolves to question-answering.
        assert_eq!(
            Task::infer_from_architecture("TapasForQuestionAnswering").unwrap(),
            Task::QuestionAnswering
        );
        assert_eq!(
            Task::infer_from_architecture("DistilBertForTokenClassification").unwrap(),
            Task::TokenClassification
        );
        assert_eq!(
            Task::infer_from_architecture("RobertaForMaskedLM").unwrap(),
            Task::FillMask
        );
    }
}
