//! A `tokenizer.json` for Marian (opus-mt) repositories, which ship SentencePiece files
//! (`source.spm`, `target.spm`) and a `vocab.json` but no fast tokenizer (`transformers` has no
//! fast Marian tokenizer either). MarianTokenizer splits a text with the source model's
//! SentencePiece Unigram and looks the pieces up in `vocab.json`, then appends `</s>`; decoding
//! joins the pieces and turns `▁` into spaces. The same here, as `transformers`' SpmConverter
//! builds a Unigram tokenizer from a SentencePiece model (its normalisation table, `▁` prefix),
//! with the vocabulary in `vocab.json`'s id order: a piece of the joint vocabulary that the
//! source model lacks scores so low that it is never chosen over the source model's pieces.
//!
//! Also SigLIP's `spiece.model` (`SiglipTokenizer`, which has no fast class): the text lowercased,
//! its ASCII punctuation removed, whitespace collapsed and trimmed (`canonicalize_text`), then
//! the SentencePiece normalisation and Unigram with a `▁` prefix, and `</s>` appended.
//!
//! And XLM-R's `sentencepiece.bpe.model` (`XLMRobertaTokenizer` without its tokenizer.json, as
//! `microsoft/trocr-small-*` ship it), as `transformers`' XLMRobertaConverter builds the fast
//! tokenizer: fairseq's ids (`<s>` `<pad>` `</s>` `<unk>` first, the model's pieces one place
//! later, `<mask>` last) on the SentencePiece Unigram.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use sentencepiece_model::SentencePieceModel;
use tokenizers::decoders::metaspace::Metaspace as MetaspaceDecoder;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, Precompiled, Replace, Sequence, Strip};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, NormalizerWrapper, Tokenizer};

/// Files that make a Marian tokenizer, fetched from the Hub when a repo has no tokenizer.json.
pub(crate) const MARIAN_FILES: &[&str] = &["source.spm", "target.spm", "vocab.json"];

/// SigLIP's SentencePiece model, fetched from the Hub when a repo has no tokenizer.json.
pub(crate) const SIGLIP_FILE: &str = "spiece.model";

/// XLM-R's SentencePiece model, fetched from the Hub when a repo has no tokenizer.json.
pub(crate) const XLM_ROBERTA_FILE: &str = "sentencepiece.bpe.model";

/// Files copied next to a generated tokenizer.json (the tokenizer's settings are read there).
const TOKENIZER_SETTINGS: &[&str] = &["tokenizer_config.json", "special_tokens_map.json"];

/// Scores of joint-vocabulary pieces that the source model does not have. (Not lower: the
/// Unigram model scores an unknown character 10 below its lowest piece.)
const ABSENT_PIECE_SCORE: f64 = -1.0e4;

/// `dir/tokenizer.json`, or one built from the slow tokenizer's files there (SigLIP's, Marian's,
/// CLIP's, GPT-2's / RoBERTa's / BART's; written under the system's temporary directory, with
/// the tokenizer's settings files beside it).
pub fn tokenizer_file(dir: &Path) -> Result<PathBuf> {
    let file = dir.join("tokenizer.json");
    if file.is_file() {
        return Ok(file);
    }
    let (tokenizer, what) = if let Some(lowercase) = siglip_lowercase(dir) {
        (siglip_tokenizer(dir, lowercase)?, "SigLIP's spiece.model")
    } else if tokenizer_class(dir).as_deref() == Some("XLMRobertaTokenizer")
        && dir.join(XLM_ROBERTA_FILE).is_file()
    {
        (
            xlm_roberta_tokenizer(dir)?,
            "XLMRobertaTokenizer's sentencepiece.bpe.model",
        )
    } else if dir.join("source.spm").is_file() && dir.join("vocab.json").is_file() {
        (marian_tokenizer(dir)?, "the Marian tokenizer files")
    } else if super::clip_bpe::is_clip(dir) {
        (
            super::clip_bpe::clip_tokenizer(dir)?,
            "CLIPTokenizer's vocab.json and merges.txt",
        )
    } else if let Some(wrapped) = super::byte_level_bpe::detect(dir) {
        (
            super::byte_level_bpe::tokenizer(dir, wrapped)?,
            "a GPT-2 / RoBERTa / BART tokenizer's vocab.json and merges.txt",
        )
    } else {
        bail!(
            "no tokenizer.json in {}: this server needs a fast-tokenizer file (save the tokenizer with `AutoTokenizer.from_pretrained(...).save_pretrained(dir)`), or a GPT-2 / RoBERTa / BART tokenizer's vocab.json and merges.txt, a Marian tokenizer's source.spm and vocab.json, a SigLIP tokenizer's spiece.model or an XLM-R tokenizer's sentencepiece.bpe.model",
            dir.display()
        );
    };
    let out = generated_dir(dir);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let file = out.join("tokenizer.json");
    tokenizer
        .save(&file, false)
        .map_err(|e| anyhow!("writing {}: {e}", file.display()))?;
    for name in TOKENIZER_SETTINGS {
        let from = dir.join(name);
        if from.is_file() {
            std::fs::copy(&from, out.join(name))
                .with_context(|| format!("copying {}", from.display()))?;
        }
    }
    tracing::info!("built {} from {what} in {}", file.display(), dir.display());
    Ok(file)
}

/// tokenizer_config.json's `tokenizer_class`, if the folder has one.
fn tokenizer_class(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("tokenizer_config.json")).ok()?;
    let config: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(config.get("tokenizer_class")?.as_str()?.to_string())
}

/// For a SigLIP tokenizer folder (`spiece.model`, tokenizer_config.json's `SiglipTokenizer`):
/// its `do_lower_case` (default true).
fn siglip_lowercase(dir: &Path) -> Option<bool> {
    if !dir.join(SIGLIP_FILE).is_file() {
        return None;
    }
    let text = std::fs::read_to_string(dir.join("tokenizer_config.json")).ok()?;
    let config: serde_json::Value = serde_json::from_str(&text).ok()?;
    (config.get("tokenizer_class")?.as_str()? == "SiglipTokenizer").then(|| {
        config
            .get("do_lower_case")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(true)
    })
}

/// `SiglipTokenizer` as a fast tokenizer: `tokenize` lowercases, `canonicalize_text` removes
/// `string.punctuation` and collapses whitespace, and the SentencePiece model (its
/// `add_dummy_prefix` turned off, a `▁` prepended by hand instead) splits the result.
fn siglip_tokenizer(dir: &Path, lowercase: bool) -> Result<Tokenizer> {
    let spm_path = dir.join(SIGLIP_FILE);
    let spm = SentencePieceModel::from_file(&spm_path)
        .with_context(|| format!("reading {}", spm_path.display()))?;
    let pieces: Vec<(String, f64)> = spm
        .pieces()
        .iter()
        .map(|p| (p.piece().to_string(), f64::from(p.score())))
        .collect();
    let id_of = |token: &str| {
        pieces
            .iter()
            .position(|(p, _)| p == token)
            .with_context(|| format!("{} has no {token}", spm_path.display()))
    };
    let (eos, unk) = (id_of("</s>")?, id_of("<unk>")?);
    let model = Unigram::from(pieces.clone(), Some(unk), false)
        .map_err(|e| anyhow!("building the Unigram model: {e}"))?;
    let mut tokenizer = Tokenizer::new(model);
    let regex = |pattern: &str, with: &str| -> Result<NormalizerWrapper> {
        Ok(Replace::new(ReplacePattern::Regex(pattern.into()), with)
            .map_err(|e| anyhow!("{e}"))?
            .into())
    };
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    if lowercase {
        normalizers.push(Lowercase.into());
    }
    // Python's string.punctuation.
    normalizers.push(regex(r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]"##, "")?);
    normalizers.push(regex(r"\s+", " ")?);
    normalizers.push(Strip::new(true, true).into());
    normalizers.extend(precompiled_normalizer(&spm)?);
    tokenizer.with_normalizer(Some(Sequence::new(normalizers)));
    with_eos_template(&mut tokenizer, eos as u32, "$A </s> $B </s>", |t| {
        pieces.iter().any(|(p, _)| p == t)
    })?;
    Ok(tokenizer)
}

/// `XLMRobertaTokenizer` as XLMRobertaConverter makes it fast: the Unigram over
/// `<s> <pad> </s> <unk>`, the model's pieces from its fourth (fairseq's offset of one) and
/// `<mask>`; SpmConverter's normalisation and `▁` boundaries; `<s> $A </s>` around a text.
fn xlm_roberta_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let spm_path = dir.join(XLM_ROBERTA_FILE);
    let spm = SentencePieceModel::from_file(&spm_path)
        .with_context(|| format!("reading {}", spm_path.display()))?;
    if let Some(trainer) = spm.trainer() {
        if trainer.model_type() != sentencepiece_model::ModelType::Unigram {
            bail!(
                "{} is a {:?} model; XLM-R's tokenizer is built from Unigram ones only",
                spm_path.display(),
                trainer.model_type()
            );
        }
    }
    let specials = ["<s>", "<pad>", "</s>", "<unk>"];
    let pieces: Vec<(String, f64)> = specials
        .iter()
        .map(|t| (t.to_string(), 0.0))
        .chain(
            spm.pieces()
                .iter()
                .skip(3)
                .map(|p| (p.piece().to_string(), f64::from(p.score()))),
        )
        .chain([("<mask>".to_string(), 0.0)])
        .collect();
    let mask = pieces.len() - 1;
    let model = Unigram::from(pieces, Some(3), false)
        .map_err(|e| anyhow!("building the Unigram model: {e}"))?;
    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_normalizer(Some(Sequence::new(spm_normalizers(&spm)?)));
    with_metaspace(&mut tokenizer);
    tokenizer.with_post_processor(Some(
        TemplateProcessing::builder()
            .try_single("<s> $A </s>")
            .map_err(|e| anyhow!("{e}"))?
            .try_pair("<s> $A </s> </s> $B </s>")
            .map_err(|e| anyhow!("{e}"))?
            .special_tokens(vec![("<s>", 0), ("</s>", 2)])
            .build()
            .map_err(|e| anyhow!("{e}"))?,
    ));
    let mut special: Vec<AddedToken> = specials
        .iter()
        .map(|t| AddedToken::from(t.to_string(), true))
        .collect();
    special.push(AddedToken::from("<mask>", true).lstrip(true));
    tokenizer.add_special_tokens(&special);
    debug_assert_eq!(tokenizer.token_to_id("<mask>"), Some(mask as u32));
    Ok(tokenizer)
}

/// SpmConverter's normalisation: the model's table, trailing spaces stripped, runs of spaces
/// turned into one `▁`.
fn spm_normalizers(spm: &SentencePieceModel) -> Result<Vec<NormalizerWrapper>> {
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    normalizers.extend(precompiled_normalizer(spm)?);
    normalizers.push(Strip::new(false, true).into());
    normalizers.push(
        Replace::new(ReplacePattern::Regex(" {2,}".into()), "▁")
            .map_err(|e| anyhow!("{e}"))?
            .into(),
    );
    Ok(normalizers)
}

/// `▁` word boundaries, one prepended to a text, as SentencePiece's `add_dummy_prefix`.
fn with_metaspace(tokenizer: &mut Tokenizer) {
    tokenizer.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::Always, true)));
    tokenizer.with_decoder(Some(MetaspaceDecoder::new(
        '▁',
        PrependScheme::Always,
        true,
    )));
}

/// The SentencePiece model's own normalisation table (`precompiled_charsmap`), if it has one.
fn precompiled_normalizer(spm: &SentencePieceModel) -> Result<Option<NormalizerWrapper>> {
    let charsmap = spm
        .normalizer()
        .map(|n| n.precompiled_charsmap().to_vec())
        .unwrap_or_default();
    if charsmap.is_empty() {
        return Ok(None);
    }
    let table = Precompiled::from(&charsmap)
        .map_err(|e| anyhow!("the SentencePiece normalisation table: {e}"))?;
    Ok(Some(table.into()))
}

/// What the `</s>`-terminated SentencePiece tokenizers (Marian, SigLIP) share: `▁` word
/// boundaries (one prepended), `</s>` after a text (`pair`: where it goes for two), and
/// `</s>`, `<unk>`, `<pad>` (those the vocabulary `has`) kept whole and skipped when decoding.
fn with_eos_template(
    tokenizer: &mut Tokenizer,
    eos: u32,
    pair: &str,
    has: impl Fn(&str) -> bool,
) -> Result<()> {
    with_metaspace(tokenizer);
    tokenizer.with_post_processor(Some(
        TemplateProcessing::builder()
            .try_single("$A </s>")
            .map_err(|e| anyhow!("{e}"))?
            .try_pair(pair)
            .map_err(|e| anyhow!("{e}"))?
            .special_tokens(vec![("</s>", eos)])
            .build()
            .map_err(|e| anyhow!("{e}"))?,
    ));
    let special: Vec<AddedToken> = ["</s>", "<unk>", "<pad>"]
        .iter()
        .filter(|t| has(t))
        .map(|t| AddedToken::from(t.to_string(), true))
        .collect();
    tokenizer.add_special_tokens(&special);
    Ok(())
}

/// One folder per model directory (its path hashed), so that two servers do not collide.
fn generated_dir(dir: &Path) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    dir.canonicalize()
        .unwrap_or_else(|_| dir.to_path_buf())
        .hash(&mut hasher);
    std::env::temp_dir()
        .join("sagemaker-hf-server-tokenizers")
        .join(format!("{:016x}", hasher.finish()))
}

fn marian_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let spm_path = dir.join("source.spm");
    let spm = SentencePieceModel::from_file(&spm_path)
        .with_context(|| format!("reading {}", spm_path.display()))?;
    let vocab_path = dir.join("vocab.json");
    let vocab: HashMap<String, u32> = serde_json::from_str(
        &std::fs::read_to_string(&vocab_path)
            .with_context(|| format!("reading {}", vocab_path.display()))?,
    )
    .with_context(|| format!("parsing {}", vocab_path.display()))?;
    let scores: HashMap<&str, f32> = spm
        .pieces()
        .iter()
        .map(|p| (p.piece(), p.score()))
        .collect();

    // The Unigram vocabulary in vocab.json's id order (ids without a token get a placeholder).
    let size = vocab.values().max().map_or(0, |&m| m as usize + 1);
    let mut pieces: Vec<(String, f64)> = (0..size)
        .map(|i| (format!("<unused {i}>"), ABSENT_PIECE_SCORE))
        .collect();
    for (token, &id) in &vocab {
        let score = scores
            .get(token.as_str())
            .map_or(ABSENT_PIECE_SCORE, |&s| f64::from(s));
        pieces[id as usize] = (token.clone(), score);
    }
    let id_of = |token: &str| {
        vocab
            .get(token)
            .copied()
            .with_context(|| format!("vocab.json has no {token}"))
    };
    let (eos, unk) = (id_of("</s>")?, id_of("<unk>")?);
    let model = Unigram::from(pieces, Some(unk as usize), false)
        .map_err(|e| anyhow!("building the Unigram model: {e}"))?;

    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_normalizer(Some(Sequence::new(spm_normalizers(&spm)?)));
    // Language codes (>>fra<<) stay whole too.
    with_eos_template(&mut tokenizer, eos, "$A $B </s>", |t| vocab.contains_key(t))?;
    let codes: Vec<AddedToken> = vocab
        .keys()
        .filter(|t| t.starts_with(">>") && t.ends_with("<<"))
        .map(|t| AddedToken::from(t.clone(), false).normalized(false))
        .collect();
    tokenizer.add_tokens(&codes);
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tokenizer built from trocr-small-style files encodes as transformers' converted
    /// XLMRobertaTokenizerFast does (models/make_image_to_text_fixtures.py: runs of spaces,
    /// unseen words, Unicode the model's table normalises, `<mask>`, the empty text).
    #[test]
    fn xlm_roberta_sentencepiece_encodes_as_transformers() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let dir = root.join("tiny/vision-trocr-small-captioner");
        let tokenizer = xlm_roberta_tokenizer(&dir).unwrap();
        let golden: Vec<serde_json::Value> = serde_json::from_str(
            &std::fs::read_to_string(
                root.join("golden/image-to-text/trocr-small-captioner-tokenizer.json"),
            )
            .unwrap(),
        )
        .unwrap();
        assert!(golden.len() >= 8);
        for record in golden {
            let text = record["text"].as_str().unwrap();
            let want: Vec<u32> = serde_json::from_value(record["ids"].clone()).unwrap();
            let got = tokenizer.encode(text, true).unwrap().get_ids().to_vec();
            assert_eq!(got, want, "{text:?}");
        }
    }
}
