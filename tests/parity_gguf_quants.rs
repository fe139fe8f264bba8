//! SmolLM2-135M-Instruct in each GGUF quantization (the Q4_1 file, and the Q4_0, Q8_0, Q4_K_S,
//! Q5_K_S and Q6_K files models/make_gguf_quants.py makes with llama.cpp's quantizer), run in its
//! quantized blocks: the next-token choice at every position of prompt + greedy continuation
//! agrees with transformers' own GGUF loader (weights dequantized to f32;
//! models/golden/text-generation/smollm2-quants.json). The prompts run batched, one decode step of
//! all of them per token, through the paged key/value cache.
//!
//! Q4_0, Q4_1 and Q8_0 run our kernels, on f32 activations (`SERVER_QUANTIZED_ACTIVATIONS=f32`)
//! a choice may differ only at a near tie (transformers' top-two margin under 0.01); on the
//! default int8 activations (rounded per block of 32, as llama.cpp does; on CPUs with AVX-512
//! VNNI or AVX2, else f32 again) where the margin is under 0.5. The k-quant files (whose 576-wide rows fall
//! back to Q5_0 / Q5_1 / Q8_0, ours too; the 1536-wide down projections are k-quants, candle's
//! kernels, which round activations to 8 bits) may differ where the margin is under 0.5.

mod common;

use common::repo_path;
use sagemaker_hf_server::device::Placement;
use sagemaker_hf_server::models::config::ModelConfig;
use sagemaker_hf_server::models::decoders::CausalLm;
use sagemaker_hf_server::models::quantized::BlockActivations;
use sagemaker_hf_server::models::{StepInput, StepModel};
use sagemaker_hf_server::registry::DecoderFamily;
use serde_json::Value;

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Our next-token choices at every golden position, all prompts batched per step.
fn choices(model: &CausalLm, records: &[Value]) -> Vec<Vec<u32>> {
    let ids: Vec<Vec<u32>> = records
        .iter()
        .map(|r| serde_json::from_value(r["input_ids"].clone()).unwrap())
        .collect();
    let prompt_lens: Vec<usize> = records
        .iter()
        .map(|r| r["prompt_len"].as_u64().unwrap() as usize)
        .collect();
    let mut caches: Vec<_> = records.iter().map(|_| model.new_cache()).collect();
    let mut chosen: Vec<Vec<u32>> = vec![Vec::new(); records.len()];
    let steps = ids[0].len() - prompt_lens[0] + 1;
    for step in 0..steps {
        let mut inputs: Vec<StepInput<_>> = caches
            .iter_mut()
            .enumerate()
            .map(|(i, cache)| {
                let (start, end) = match step {
                    0 => (0, prompt_lens[i]),
                    s => (prompt_lens[i] + s - 1, prompt_lens[i] + s),
                };
                StepInput {
                    tokens: &ids[i][start..end],
                    cache,
                }
            })
            .collect();
        let logits = model.step(&mut inputs).unwrap();
        for (i, l) in logits.iter().enumerate() {
            chosen[i].push(argmax(l));
        }
    }
    chosen
}

fn check(kind: &str, activations: BlockActivations) {
    // f32 activations through our kernels only: the k-quant files' down projections are candle's.
    let exact = activations == BlockActivations::F32 && !kind.contains("_K");
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_path(
            "models/golden/text-generation/smollm2-quants.json",
        ))
        .unwrap(),
    )
    .unwrap();
    let entry = golden["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in the golden"));
    let dir = repo_path(&format!("models/{}", entry["dir"].as_str().unwrap()));
    assert!(
        dir.join(entry["file"].as_str().unwrap()).is_file(),
        "{} is missing: run models/fetch_models.sh (it runs models/make_gguf_quants.py)",
        dir.display()
    );
    let files = sagemaker_hf_server::source::from_dir(&dir).unwrap();
    let config = ModelConfig::from_json(files.config_json().unwrap()).unwrap();
    let placement = Placement {
        block_activations: activations,
        ..Placement::cpu()
    };
    let model = CausalLm::load(&files, &config, DecoderFamily::Llama, &placement).unwrap();
    let records = entry["records"].as_array().unwrap();
    let ours = choices(&model, records);
    let (mut total, mut agree) = (0, 0);
    let mut smallest_flip_margin = 0f64;
    for (record, ours) in records.iter().zip(&ours) {
        let want: Vec<u32> = serde_json::from_value(record["top1"].clone()).unwrap();
        let margins: Vec<f64> = serde_json::from_value(record["margin"].clone()).unwrap();
        for ((ours, want), margin) in ours.iter().zip(&want).zip(&margins) {
            total += 1;
            if ours == want {
                agree += 1;
            } else {
                smallest_flip_margin = smallest_flip_margin.max(*margin);
                // f32 activations: our logits are transformers' within ~1e-3, so only a near tie
                // may flip; 8-bit activations move them more.
                let allowed = if exact { 0.01 } else { 0.5 };
                assert!(
                    *margin < allowed,
                    "{kind}: {}: we chose {ours}, transformers {want} (its top-two margin {margin})",
                    record["prompt"]
                );
            }
        }
    }
    eprintln!(
        "{kind}, {activations:?} activations: {agree}/{total} next-token choices agree with transformers (largest margin of a flip: {smallest_flip_margin:.3})"
    );
    // Measured (2026-12-03, AVX-512 VNNI): 150/150 for Q4_0, Q4_1 and Q8_0 on f32 activations;
    // on int8 ones 141-146/150 across the six files with the VNNI kernel, 140-147 with the AVX2
    // one (its f32 sums round differently), where llama.cpp's own choices agree 142-147 times
    // (benches/results/gguf-choices.md). The floor leaves two choices of room below that.
    let floor = if exact { 0.99 } else { 0.92 };
    assert!(
        agree as f64 >= floor * total as f64,
        "{kind}: {agree}/{total} agree"
    );
}

#[test]
fn q4_1_choices_match_transformers() {
    check("Q4_1", BlockActivations::F32);
    check("Q4_1", BlockActivations::Int8);
}

#[test]
fn q4_0_choices_match_transformers() {
    check("Q4_0", BlockActivations::F32);
    check("Q4_0", BlockActivations::Int8);
}

#[test]
fn q8_0_choices_match_transformers() {
    check("Q8_0", BlockActivations::F32);
    check("Q8_0", BlockActivations::Int8);
}

#[test]
fn q4_k_s_choices_match_transformers() {
    check("Q4_K_S", BlockActivations::Int8);
}

#[test]
fn q5_k_s_choices_match_transformers() {
    check("Q5_K_S", BlockActivations::Int8);
}

#[test]
fn q6_k_choices_match_transformers() {
    check("Q6_K", BlockActivations::Int8);
}

/// `SERVER_QUANTIZE=q8_0` on a safetensors decoder (the tiny seeded Llama): its weights quantized at
/// load run the same greedy choices as f32 wherever f32's top-two margin is not tiny, with logits
/// close to f32's.
#[test]
fn server_quantize_q8_0_keeps_the_choices_of_f32() {
    use sagemaker_hf_server::models::quantized::Quantize;
    let files = sagemaker_hf_server::source::from_dir(&repo_path("models/tiny/llama-lm")).unwrap();
    let config = ModelConfig::from_json(files.config_json().unwrap()).unwrap();
    let f32_model =
        CausalLm::load(&files, &config, DecoderFamily::Llama, &Placement::cpu()).unwrap();
    let quantized = Placement {
        quantize: Some(Quantize::Q8_0),
        ..Placement::cpu()
    };
    let q8_model = CausalLm::load(&files, &config, DecoderFamily::Llama, &quantized).unwrap();
    let (mut compared, mut largest) = (0, 0f32);
    for prompt in [&[5u32, 17, 42, 99][..], &[7, 7, 300, 12, 150, 3], &[250]] {
        let (mut f_cache, mut q_cache) = (f32_model.new_cache(), q8_model.new_cache());
        let mut tokens = prompt.to_vec();
        for step in 0..12 {
            // The first step feeds the whole prompt, then one token at a time.
            let fresh = if step == 0 {
                &tokens[..]
            } else {
                &tokens[tokens.len() - 1..]
            };
            let f = f32_model
                .step(&mut [StepInput {
                    tokens: fresh,
                    cache: &mut f_cache,
                }])
                .unwrap()
                .remove(0);
            let q = q8_model
                .step(&mut [StepInput {
                    tokens: fresh,
                    cache: &mut q_cache,
                }])
                .unwrap()
                .remove(0);
            for (a, b) in f.iter().zip(&q) {
                largest = largest.max((a - b).abs());
            }
            let mut sorted = f.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            if sorted[0] - sorted[1] > 0.05 {
                assert_eq!(argmax(&f), argmax(&q), "prompt {prompt:?} after {tokens:?}");
                compared += 1;
            }
            tokens.push(argmax(&f));
        }
    }
    eprintln!("q8_0: {compared} choices compared, largest logit difference {largest}");
    assert!(compared >= 20, "only {compared} choices had a margin");
    assert!(largest < 0.1, "largest logit difference {largest}");
}
