//! Criterion benches of the hot path on the real MiniLM classifier (run models/fetch_models.sh):
//! dense layers (f32, bf16 where the CPU has AVX512-BF16, int8; MiniLM's and a ViT's MLP shape), and tokenize + forward at
//! the batch shapes the server sees, and GGUF Q4_1 products at SmolLM2-135M's shapes (the gated
//! MLP's stacked gate and up, 576 -> 3072; its down, 1536 -> 576) for 1 and 16 decode rows.
//! `SAGEMAKER_HF_NO_AMX=1` keeps the bf16 and int8 layers off
//! the AMX tiles (to compare the AVX-512 kernels on the same CPU).
//!
//! cargo bench --bench forward

use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sagemaker_hf_server::device::Placement;
use sagemaker_hf_server::kernels::quant::{BlockType, QuantMatrix, BLOCK};
use sagemaker_hf_server::kernels::PackedLinear;
use sagemaker_hf_server::models::config::ModelConfig;
use sagemaker_hf_server::models::encoder_model::{EncoderModel, HeadKind};
use sagemaker_hf_server::models::quantized::Quantize;
use sagemaker_hf_server::models::{Batch, BatchModel};
use sagemaker_hf_server::source;
use sagemaker_hf_server::tasks::tokenize::{TextEncoder, Truncation};

fn dense(c: &mut Criterion) {
    let mut group = c.benchmark_group("dense_384x1152");
    let (inp, out) = (384, 1152);
    let w: Vec<f32> = (0..out * inp).map(|i| (i % 7) as f32 * 0.01).collect();
    let b = vec![0.1f32; out];
    let layer = PackedLinear::pack(&w, &b, out, inp);
    // The same layer in bfloat16 (SERVER_DTYPE=bfloat16 on CPUs with AVX512-BF16).
    let bf16 = layer.to_bf16();
    let int8 = layer.to_int8().unwrap();
    eprintln!("int8 kernel: {}", int8.int8_kernel().unwrap());
    if let Some(bf16) = &bf16 {
        eprintln!("bf16 kernel: {}", bf16.bf16_kernel().unwrap());
    }
    for n in [1usize, 6, 8, 16, 32, 96, 560] {
        let x: Vec<f32> = (0..n * inp).map(|i| (i % 5) as f32 * 0.1).collect();
        group.throughput(Throughput::Elements((2 * n * inp * out) as u64));
        group.bench_with_input(BenchmarkId::new("f32", n), &n, |bench, &n| {
            bench.iter(|| layer.forward(&x, n))
        });
        if let Some(bf16) = &bf16 {
            group.bench_with_input(BenchmarkId::new("bf16", n), &n, |bench, &n| {
                bench.iter(|| bf16.forward(&x, n))
            });
        }
        group.bench_with_input(BenchmarkId::new("int8", n), &n, |bench, &n| {
            bench.iter(|| int8.forward(&x, n))
        });
    }
    group.finish();
}

/// A ViT-base MLP layer (768 -> 3072) on one image's 197 patches and on a batch of 8 images:
/// the shapes of the image pipelines' batches.
fn dense_vit(c: &mut Criterion) {
    let mut group = c.benchmark_group("dense_768x3072");
    group.sample_size(20);
    let (inp, out) = (768, 3072);
    let w: Vec<f32> = (0..out * inp)
        .map(|i| ((i * 7919) % 13) as f32 * 0.01 - 0.06)
        .collect();
    let layer = PackedLinear::pack(&w, &vec![0.1f32; out], out, inp);
    let bf16 = layer.to_bf16();
    let int8 = layer.to_int8().unwrap();
    for n in [197usize, 1576] {
        let x: Vec<f32> = (0..n * inp).map(|i| ((i * 31) % 5) as f32 * 0.1).collect();
        group.throughput(Throughput::Elements((2 * n * inp * out) as u64));
        let mut run = |name: &str, layer: &PackedLinear| {
            group.bench_with_input(BenchmarkId::new(name, n), &n, |bench, &n| {
                bench.iter(|| layer.forward(&x, n))
            });
        };
        run("f32", &layer);
        if let Some(bf16) = &bf16 {
            run("bf16", bf16);
        }
        run("int8", &int8);
    }
    group.finish();
}

fn minilm(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/minilm-l6-cls");
    assert!(
        dir.join("model.safetensors").is_file(),
        "run models/fetch_models.sh first"
    );
    let files = source::resolve(&{
        use clap::Parser;
        let mut args = sagemaker_hf_server::config::Cli::parse_from(["bench"]).into_serve_args();
        args.model_id = Some(dir.to_str().unwrap().to_string());
        args
    })
    .unwrap();
    let config = ModelConfig::from_json(files.config_json().unwrap()).unwrap();
    let load = |placement: &Placement| {
        EncoderModel::load(&files, &config, placement, HeadKind::SequenceClassification).unwrap()
    };
    let model = load(&Placement::cpu());
    // SERVER_QUANTIZE=int8 and SERVER_DTYPE=bfloat16, at the batch the server forms under load.
    let int8 = load(&Placement {
        quantize: Some(Quantize::Int8),
        ..Placement::cpu()
    });
    let bf16 = load(&Placement {
        dtype: candle_core::DType::BF16,
        ..Placement::cpu()
    });
    let encoder = TextEncoder::load(&files.tokenizer, 512, false, true).unwrap();

    let mut group = c.benchmark_group("minilm_tokenize_forward");
    let runs = [
        ("f32", &model, 1usize, 3usize),
        ("f32", &model, 16, 3),
        ("f32", &model, 64, 3),
        ("f32", &model, 1, 120),
        ("int8", &int8, 1, 3),
        ("int8", &int8, 64, 3),
        ("bf16", &bf16, 64, 3),
    ];
    for (precision, model, batch, words) in runs {
        let text = ["I", "love", "this"]
            .iter()
            .cycle()
            .take(words)
            .cloned()
            .collect::<Vec<_>>()
            .join(" ");
        group.throughput(Throughput::Elements(batch as u64));
        // f32's ids keep the names of earlier runs' results.
        let name = match precision {
            "f32" => format!("batch{batch}"),
            other => format!("{other}_batch{batch}"),
        };
        group.bench_function(BenchmarkId::new(name, format!("{words}words")), |bench| {
            bench.iter(|| {
                let sequences: Vec<_> = (0..batch)
                    .map(|_| encoder.encode(&text, None, &Truncation::none()).unwrap())
                    .collect();
                model.forward(&Batch::from_sequences(&sequences)).unwrap()
            })
        });
    }
    group.finish();
}

/// Q4_1 blocks with fixed scales and minimums and pseudo-random nibbles (speed only).
fn q4_1_blocks(rows: usize, cols: usize) -> Vec<u8> {
    const D: u16 = 0x211f; // f16 0.01
    const M: u16 = 0xad1f; // f16 -0.08
    let mut state = 0x9e37_79b9u32;
    let mut blocks = Vec::with_capacity(rows * cols / BLOCK * BlockType::Q4_1.bytes());
    for _ in 0..rows * cols / BLOCK {
        blocks.extend_from_slice(&D.to_le_bytes());
        blocks.extend_from_slice(&M.to_le_bytes());
        for _ in 0..16 {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            blocks.push((state >> 24) as u8);
        }
    }
    blocks
}

fn gguf_q4_1(c: &mut Criterion) {
    for (rows, cols) in [(3072usize, 576usize), (576, 1536)] {
        let matrix =
            QuantMatrix::new(BlockType::Q4_1, q4_1_blocks(rows, cols), rows, cols, true).unwrap();
        let mut group = c.benchmark_group(format!("gguf_q4_1_{cols}x{rows}"));
        eprintln!("gguf_q4_1_{cols}x{rows}: {}", matrix.kernel_name());
        for m in [1usize, 16] {
            let x: Vec<f32> = (0..m * cols)
                .map(|i| ((i * 7 % 23) as f32 - 11.0) / 7.0)
                .collect();
            group.throughput(Throughput::Elements((2 * m * rows * cols) as u64));
            group.bench_with_input(BenchmarkId::new("int8_activations", m), &m, |bench, &m| {
                bench.iter(|| matrix.forward(&x, m))
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = dense, dense_vit, minilm, gguf_q4_1
}
criterion_main!(benches);
