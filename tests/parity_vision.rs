//! Image classification parity: every record of models/golden/image-classification and
//! models/golden/zero-shot-image-classification (CLIP and SigLIP; made by
//! models/make_vision_fixtures.py with transformers 4.51.3, through the DLC's own decoder for
//! raw bodies) replayed against the real binary, one at a time and then all at once (so images
//! share forward passes); labels identical, scores within 1e-4. Likewise image-to-text
//! (models/golden/image-to-text, made by models/make_image_to_text_fixtures.py): text identical.
//! Then the refusals: bodies that are not images, truncated, empty, or a 50000 x 50000
//! "decompression bomb".

mod common;

use base64::Engine;
use common::{assert_close, golden_records, invoke_concurrently, repo_path, Server, TOLERANCE};
use serde_json::{json, Value};

fn image_bytes(name: &str) -> Vec<u8> {
    std::fs::read(repo_path(&format!("models/fixtures/images/{name}"))).unwrap()
}

fn b64(name: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(image_bytes(name))
}

/// The request a golden record describes: (content type, body).
fn request_of(record: &Value) -> (String, Vec<u8>) {
    let via = record["via"].as_str().unwrap();
    if via == "raw" {
        let name = record["image"].as_str().unwrap();
        let content_type = record["content_type"].as_str().unwrap().to_string();
        return (content_type, image_bytes(name));
    }
    let encode = |name: &str| match via {
        "data-url" => format!(
            "data:image/{};base64,{}",
            name.rsplit('.').next().unwrap(),
            b64(name)
        ),
        _ => b64(name),
    };
    let inputs = match record.get("images") {
        Some(names) => Value::Array(
            names
                .as_array()
                .unwrap()
                .iter()
                .map(|n| Value::String(encode(n.as_str().unwrap())))
                .collect(),
        ),
        None => Value::String(encode(record["image"].as_str().unwrap())),
    };
    let mut body = json!({ "inputs": inputs });
    if let Some(parameters) = record.get("parameters") {
        body["parameters"] = parameters.clone();
    }
    ("application/json".into(), body.to_string().into_bytes())
}

fn check(golden: &str, i: usize, record: &Value, response: common::Response) {
    if let Some(error) = record.get("error").and_then(Value::as_str) {
        // The DLC answers the pipeline's exception with a 400 carrying its message.
        let message = response.envelope(400);
        assert!(
            message.contains(error),
            "{golden} record {i}: {message} lacks {error}"
        );
        return;
    }
    assert_eq!(
        response.status,
        200,
        "{golden} record {i}: {}",
        response.text()
    );
    let context = format!(
        "{golden} record {i} ({} via {}, {})",
        record["image"], record["via"], record["parameters"]
    );
    // JPEGs too: their pixels are Pillow's (libjpeg-turbo's decoder).
    assert_close(&response.json(), &record["response"], TOLERANCE, &context);
}

fn replay(family: &str) {
    replay_task("image-classification", family);
}

/// HF_TASK unset: the task is inferred from config.json's architecture. Returns the server.
fn replay_task(task: &str, family: &str) -> Server {
    replay_task_at(
        task,
        family,
        &repo_path(&format!("models/tiny/vision-{family}")),
    )
}

/// [`replay_task`] with the model served from `model_dir`.
fn replay_task_at(task: &str, family: &str, model_dir: &std::path::Path) -> Server {
    replay_with(task, family, model_dir, &[])
}

/// [`replay_task_at`] with the server's environment `env`.
fn replay_with(
    task: &str,
    family: &str,
    model_dir: &std::path::Path,
    env: &[(&str, &str)],
) -> Server {
    let golden = format!("models/golden/{task}/{family}.json");
    let records = golden_records(&golden);
    let server = Server::start(model_dir, env);
    for (i, record) in records.iter().enumerate() {
        let (content_type, body) = request_of(record);
        let response = server.request(
            "POST",
            "/invocations",
            &[("Content-Type", &content_type)],
            &body,
        );
        check(&golden, i, record, response);
    }
    let responses = invoke_concurrently(server.port, records.iter().map(request_of).collect());
    for (i, (record, response)) in records.iter().zip(responses).enumerate() {
        check(&golden, i, record, response);
    }
    server
}

#[test]
fn vit_matches_transformers() {
    replay("vit");
}

#[test]
fn deit_with_teacher_matches_transformers() {
    replay("deit");
}

#[test]
fn resnet_bottleneck_matches_transformers() {
    replay("resnet");
}

#[test]
fn resnet_basic_matches_transformers() {
    replay("resnet-basic");
}

#[test]
fn convnext_matches_transformers() {
    replay("convnext");
}

/// The convolutional networks on candle's ops (what a GPU runs; the CPU runs our channels-last
/// kernels): the same goldens.
#[test]
fn convnets_match_transformers_on_the_generic_path() {
    let generic = [("SAGEMAKER_HF_GENERIC_KERNELS", "1")];
    for family in ["convnext", "resnet"] {
        let dir = repo_path(&format!("models/tiny/vision-{family}"));
        replay_with("image-classification", family, &dir, &generic);
    }
}

#[test]
fn dinov2_matches_transformers() {
    replay("dinov2");
}

#[test]
fn clip_zero_shot_matches_transformers() {
    let server = replay_task("zero-shot-image-classification", "clip");
    // A raw image body cannot carry the labels (the DLC fails on `None`).
    let png = image_bytes("rgb-64x48.png");
    let raw = server.request(
        "POST",
        "/invocations",
        &[("Content-Type", "image/png")],
        &png,
    );
    assert!(raw.envelope(400).contains("candidate_labels"));
    let missing = server.invoke_json(&json!({"inputs": b64("rgb-64x48.png")}).to_string());
    assert!(missing.envelope(400).contains("candidate_labels"));
}

/// SigLIP: sigmoid scores (not a softmax over the labels), texts padded to 64 tokens, one
/// label longer than 64 tokens (truncated).
#[test]
fn siglip_zero_shot_matches_transformers() {
    replay_task("zero-shot-image-classification", "siglip");
}

/// SigLIP as the real checkpoints ship it: `spiece.model` and no tokenizer.json (the server
/// builds one that tokenizes as `SiglipTokenizer`).
#[test]
fn siglip_from_spiece_model_matches_transformers() {
    let from = repo_path("models/tiny/vision-siglip");
    let dir = std::env::temp_dir().join(format!("siglip-spiece-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "tokenizer.json" {
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
    }
    drop(replay_task_at(
        "zero-shot-image-classification",
        "siglip",
        &dir,
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// DETR with a transformers ResNet backbone: detections above `threshold` (default 0.5, also
/// 0, 0.3, 0.9), in query order, labels and integer boxes identical, scores within 1e-4.
#[test]
fn detr_object_detection_matches_transformers() {
    let server = replay_task("object-detection", "detr");
    let bad = server.invoke_json(
        &json!({"inputs": b64("rgb-64x48.png"), "parameters": {"threshold": "high"}}).to_string(),
    );
    assert!(bad.envelope(400).contains("threshold"));
    let not_an_image = server.request(
        "POST",
        "/invocations",
        &[("Content-Type", "image/png")],
        b"not an image at all",
    );
    assert!(!not_an_image.envelope(400).is_empty());
}

/// DETR with a timm backbone (`use_timm_backbone`, `backbone: "resnet50"`, timm's weight names,
/// as `facebook/detr-resnet-50` ships; narrow stages): the same records as
/// [`detr_object_detection_matches_transformers`].
#[test]
fn detr_timm_backbone_matches_transformers() {
    replay_task("object-detection", "detr-timm");
}

/// DC5 DETR (`dilation`: timm's output stride 16, the last stage dilated) with a timm
/// basic-block backbone (`resnet18`, narrow).
#[test]
fn detr_timm_dc5_backbone_matches_transformers() {
    replay_task("object-detection", "detr-timm-dc5");
}

/// YOLOS (a ViT over the whole image's patches with detection tokens, mid-layer position
/// embeddings, YolosImageProcessor's sizes in multiples of 16): the position tables are
/// interpolated for every processed size but one; the same records as DETR's. An image that
/// would be resized to no patch at all is a 400 (the DLC's PIL fails on a zero size).
#[test]
fn yolos_object_detection_matches_transformers() {
    let server = replay_task("object-detection", "yolos");
    let mut png = Vec::new();
    image::RgbImage::from_pixel(1000, 10, image::Rgb([90, 120, 200]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let sliver = server.request(
        "POST",
        "/invocations",
        &[("Content-Type", "image/png")],
        &png,
    );
    assert!(sliver.envelope(400).contains("multiples of 16"));
}

/// YOLOS with `SERVER_QUANTIZE=int8` (its ViT layers' dense products in int8), and DETR with
/// its ResNet backbone's convolutions in int8 or bfloat16: with threshold 0 every detection
/// answers, in order, each score within 0.03 of the f32 golden's and each box within 2 pixels.
#[test]
fn reduced_precision_detectors_stay_close_to_float32() {
    for (family, env) in [
        ("yolos", ("SERVER_QUANTIZE", "int8")),
        ("detr", ("SERVER_QUANTIZE", "int8")),
        ("detr", ("SERVER_DTYPE", "bfloat16")),
    ] {
        let compared = detections_stay_close(family, env);
        assert!(
            compared >= 100,
            "{family} {env:?}: {compared} detections compared"
        );
    }
}

/// Replays `family`'s threshold-0 goldens under `env`; the number of detections compared.
fn detections_stay_close(family: &str, env: (&str, &str)) -> usize {
    let server = Server::start(&repo_path(&format!("models/tiny/vision-{family}")), &[env]);
    let mut compared = 0;
    let (mut worst_score, mut worst_box) = (0f64, 0i64);
    for record in golden_records(&format!("models/golden/object-detection/{family}.json")) {
        if record["parameters"] != json!({"threshold": 0.0}) || record.get("image").is_none() {
            continue;
        }
        let (content_type, body) = request_of(&record);
        let response = server.request(
            "POST",
            "/invocations",
            &[("Content-Type", &content_type)],
            &body,
        );
        assert_eq!(response.status, 200, "{}", response.text());
        let (got, want) = (response.json(), &record["response"]);
        let (got, want) = (got.as_array().unwrap(), want.as_array().unwrap());
        let image = &record["image"];
        assert_eq!(got.len(), want.len(), "{family} {env:?} {image}");
        for (g, w) in got.iter().zip(want) {
            let score = |v: &Value| v["score"].as_f64().unwrap();
            worst_score = worst_score.max((score(g) - score(w)).abs());
            assert!(
                (score(g) - score(w)).abs() < 0.03,
                "{family} {env:?} {image}: {g} vs {w}"
            );
            for side in ["xmin", "ymin", "xmax", "ymax"] {
                let at = |v: &Value| v["box"][side].as_i64().unwrap();
                worst_box = worst_box.max((at(g) - at(w)).abs());
                assert!(
                    (at(g) - at(w)).abs() <= 2,
                    "{family} {env:?} {image}: {g} vs {w}"
                );
            }
            compared += 1;
        }
    }
    eprintln!("{family} {env:?}: {compared} detections, scores within {worst_score:.2e}, boxes within {worst_box} px");
    compared
}

/// image-to-text with a VisionEncoderDecoder (ViT encoder, GPT-2 decoder, a projection
/// between their widths): greedy and beam-search captions, lengths, penalties and bad words as
/// `generate` makes them; text identical. HF_TASK unset: inferred from the architecture.
#[test]
fn vision_encoder_decoder_captions_match_transformers() {
    let server = replay_task("image-to-text", "gpt2-captioner");
    let bad = server.invoke_json(
        &json!({"inputs": b64("rgb-64x48.png"), "parameters": {"top_k": 3}}).to_string(),
    );
    assert!(bad.envelope(400).contains("top_k"));
    let bad = server.invoke_json(
        &json!({"inputs": b64("rgb-64x48.png"),
                "parameters": {"generate_kwargs": {"return_full_text": false}}})
        .to_string(),
    );
    assert!(bad.envelope(400).contains("not used by the model"));
    let not_image = server.request(
        "POST",
        "/invocations",
        &[("Content-Type", "image/png")],
        b"not a png",
    );
    not_image.envelope(400);
}

/// image-to-text with TrOCR's layout (a VisionEncoderDecoder: a ViT encoder without Q/K/V
/// biases, a TrOCR decoder with learned positions and a norm after its embeddings, whose
/// cross-attention reads the encoder's width; and one with fairseq's sinusoidal positions, scaled
/// embeddings and a ReLU, trocr-small's kind): greedy and beam-search texts identical.
#[test]
fn trocr_texts_match_transformers() {
    replay_task("image-to-text", "trocr-captioner");
    replay_task("image-to-text", "trocr-sinusoidal-captioner");
}

/// trocr-small's layout: a DeiT encoder (its distillation token read by the cross-attention too)
/// and XLM-R's `sentencepiece.bpe.model` without a tokenizer.json (the server builds the fast
/// tokenizer as XLMRobertaConverter does; the pipeline decodes with that converter's output).
#[test]
fn trocr_small_with_xlm_roberta_sentencepiece_matches_transformers() {
    replay_task("image-to-text", "trocr-small-captioner");
}

/// image-to-text with BLIP (`BlipForConditionalGeneration`: its vision transformer, a BERT-style
/// text decoder with cross-attention; Salesforce/blip-image-captioning-*'s layout, no
/// generation_config.json): greedy and beam-search captions, prompts (kept in the caption),
/// lengths and penalties as `generate` makes them; text identical. The pipeline's errors for a
/// prompt that is not a string and for an end token that BLIP passes itself. HF_TASK unset:
/// inferred from the architecture.
#[test]
fn blip_captions_match_transformers() {
    let server = replay_task("image-to-text", "blip-captioner");
    let bad = server.invoke_json(
        &json!({"inputs": b64("rgb-64x48.png"), "parameters": {"prompt": 7}}).to_string(),
    );
    assert!(bad.envelope(400).contains("<class 'int'>"));
}

/// `SERVER_DTYPE=bfloat16` and `SERVER_QUANTIZE=int8` run the ViT encoder's dense layers (and
/// ConvNeXt's pointwise ones, ResNet's convolutions) in
/// bfloat16 (where the CPU's bf16 kernels pay: elsewhere in f32) or int8: every label keeps its
/// score within 0.03 of transformers' float32 one, and the top label is the same wherever the
/// golden's first two are 0.02 apart. Captions (a VisionEncoderDecoder's, BLIP's) run through the
/// same kernels.
#[test]
fn reduced_precision_vit_keeps_the_clear_answers() {
    // (ConvNeXt's pointwise layers and ResNet's convolutions too)
    for (family, env) in [
        ("vit", ("SERVER_DTYPE", "bfloat16")),
        ("vit", ("SERVER_QUANTIZE", "int8")),
        ("convnext", ("SERVER_DTYPE", "bfloat16")),
        ("convnext", ("SERVER_QUANTIZE", "int8")),
        ("resnet", ("SERVER_DTYPE", "bfloat16")),
        ("resnet", ("SERVER_QUANTIZE", "int8")),
    ] {
        let golden = format!("models/golden/image-classification/{family}.json");
        let records: Vec<Value> = golden_records(&golden)
            .into_iter()
            .filter(|r| r.get("parameters").is_none() && r.get("image").is_some())
            .collect();
        assert!(records.len() > 10);
        let model = repo_path(&format!("models/tiny/vision-{family}"));
        let server = Server::start(&model, &[env]);
        for (i, record) in records.iter().enumerate() {
            let (content_type, body) = request_of(record);
            let response = server.request(
                "POST",
                "/invocations",
                &[("Content-Type", &content_type)],
                &body,
            );
            assert_eq!(response.status, 200, "{env:?} record {i}");
            let ours = response.json();
            let theirs = record["response"].as_array().unwrap();
            let score_of = |answer: &Value, label: &Value| {
                answer
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|a| &a["label"] == label)
                    .map(|a| a["score"].as_f64().unwrap())
            };
            for item in theirs {
                if let Some(score) = score_of(&ours, &item["label"]) {
                    let expected = item["score"].as_f64().unwrap();
                    assert!(
                        (score - expected).abs() < 0.03,
                        "{env:?} record {i}: {} {score} vs {expected}",
                        item["label"]
                    );
                }
            }
            let margin =
                theirs[0]["score"].as_f64().unwrap() - theirs[1]["score"].as_f64().unwrap();
            if margin >= 0.02 {
                assert_eq!(ours[0]["label"], theirs[0]["label"], "{env:?} record {i}");
            }
        }
        let captioners = if family == "vit" {
            &["vision-gpt2-captioner", "vision-blip-captioner"][..]
        } else {
            &[]
        };
        for captioner in captioners {
            let server = Server::start(&repo_path(&format!("models/tiny/{captioner}")), &[env]);
            let answer = server.invoke_json(&json!({"inputs": b64("rgb-64x48.png")}).to_string());
            assert_eq!(answer.status, 200, "{env:?} {captioner}: {}", answer.text());
            assert!(answer.json()[0]["generated_text"].is_string());
        }
    }
}

/// text-to-image with a tiny Stable Diffusion folder (models/make_text_to_image_fixtures.py:
/// diffusers 0.32.2's StableDiffusionPipeline as the DLC calls it, PNDM): each record's image
/// from its starting latents (sent as `latents`), prompts with and without guidance, a negative
/// prompt, another size; pixels within 1 of diffusers' (float rounding at .5), one at a time and
/// concurrently. HF_TASK unset: inferred from model_index.json. Then the other answers (JSON,
/// JPEG), seeds, and refusals.
#[test]
fn stable_diffusion_matches_diffusers() {
    let (server, records) = replay_diffusion("sd-pndm");
    let png_accept = [
        ("Content-Type", "application/json"),
        ("Accept", "image/png"),
    ];
    // Accept: application/json (the default): a JSON string of the base64 PNG.
    let as_json = server.invoke_json(std::str::from_utf8(&diffusion_body(&records[0])).unwrap());
    assert_eq!(as_json.status, 200, "{}", as_json.text());
    let png = base64::engine::general_purpose::STANDARD
        .decode(as_json.json().as_str().unwrap())
        .unwrap();
    assert_eq!(pixels(&png).dimensions(), (32, 32));
    let jpeg = server.request(
        "POST",
        "/invocations",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "image/jpeg"),
        ],
        &diffusion_body(&records[0]),
    );
    assert_eq!(jpeg.header("content-type"), Some("image/jpeg"));
    assert_eq!(pixels(&jpeg.body).dimensions(), (32, 32));
    // Our seed: the same noise again, another seed another image.
    let seeded = |seed: u64| {
        let body =
            json!({"inputs": "a cat", "parameters": {"num_inference_steps": 2, "seed": seed}});
        server
            .request(
                "POST",
                "/invocations",
                &png_accept,
                body.to_string().as_bytes(),
            )
            .body
    };
    assert_eq!(seeded(7), seeded(7));
    assert_ne!(seeded(7), seeded(8));
    for (parameters, expected) in [
        (json!({"height": 30}), "divisible by 8"),
        (json!({"height": 2048, "width": 2048}), "pixels"),
        (json!({"num_inference_steps": 0}), "num_inference_steps"),
        (json!({"latents": [[1.0]]}), "latents"),
        (json!({"strength": 0.5}), "strength"),
    ] {
        let body = json!({"inputs": "a cat", "parameters": parameters});
        let bad = server.request(
            "POST",
            "/invocations",
            &png_accept,
            body.to_string().as_bytes(),
        );
        assert!(bad.envelope(400).contains(expected), "{parameters}");
    }
    let bad = server.invoke_json(&json!({"inputs": 3}).to_string());
    assert!(bad.envelope(400).contains("prompt"));
    // Batch transform's JSON Lines: one base64 PNG string per record, in order.
    let lines: Vec<u8> = records[..2]
        .iter()
        .flat_map(|r| [diffusion_body(r), b"\n".to_vec()].concat())
        .collect();
    let answer = server.request(
        "POST",
        "/invocations",
        &[("Content-Type", "application/jsonlines")],
        &lines,
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    let images: Vec<Value> = answer
        .text()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(images.len(), 2);
    for (image, record) in images.iter().zip(&records) {
        let decode = |v: &Value| {
            pixels(
                &base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap())
                    .unwrap(),
            )
        };
        let (ours, theirs) = (decode(image), decode(&record["png"]));
        assert!(ours
            .as_raw()
            .iter()
            .zip(theirs.as_raw())
            .all(|(a, b)| a.abs_diff(*b) <= 1));
    }
}

/// The request of a text-to-image golden record: its prompt and parameters, with its latents.
fn diffusion_body(record: &Value) -> Vec<u8> {
    let mut parameters = record["parameters"].clone();
    parameters["latents"] = record["latents"].clone();
    json!({"inputs": record["prompt"], "parameters": parameters})
        .to_string()
        .into_bytes()
}

fn pixels(png: &[u8]) -> image::RgbImage {
    image::load_from_memory(png).unwrap().to_rgb8()
}

/// Replays models/golden/text-to-image/{name}.json against models/tiny/{name} (one at a time,
/// then all at once): every image within one level per pixel of diffusers'.
fn replay_diffusion(name: &str) -> (Server, Vec<Value>) {
    let records = golden_records(&format!("models/golden/text-to-image/{name}.json"));
    let server = Server::start(&repo_path(&format!("models/tiny/{name}")), &[]);
    let check = |i: usize, record: &Value, response: &common::Response| {
        assert_eq!(
            response.status,
            200,
            "{name} record {i}: {}",
            response.text()
        );
        assert_eq!(response.header("content-type"), Some("image/png"));
        let ours = pixels(&response.body);
        let png = base64::engine::general_purpose::STANDARD
            .decode(record["png"].as_str().unwrap())
            .unwrap();
        let theirs = pixels(&png);
        assert_eq!(ours.dimensions(), theirs.dimensions(), "{name} record {i}");
        let worst = ours
            .as_raw()
            .iter()
            .zip(theirs.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(
            worst <= 1,
            "{name} record {i}: a pixel {worst} away from diffusers'"
        );
    };
    let accept = [
        ("Content-Type", "application/json"),
        ("Accept", "image/png"),
    ];
    for (i, record) in records.iter().enumerate() {
        let response = server.request("POST", "/invocations", &accept, &diffusion_body(record));
        check(i, record, &response);
    }
    let responses = common::invoke_concurrently_with(
        server.port,
        records
            .iter()
            .map(|r| ("application/json".to_string(), diffusion_body(r)))
            .collect(),
        &[("Accept", "image/png")],
    );
    for (i, (record, response)) in records.iter().zip(&responses).enumerate() {
        check(i, record, response);
    }
    (server, records)
}

/// The same components with SD 2.x's DDIM scheduler (v-prediction): diffusers' images from the
/// same latents; `eta` above 0 adds our generator's noise (seeded: repeatable).
#[test]
fn stable_diffusion_with_ddim_matches_diffusers() {
    let (server, _) = replay_diffusion("sd-ddim");
    let accept = [
        ("Content-Type", "application/json"),
        ("Accept", "image/png"),
    ];
    let with_eta = |eta: f64| {
        let body = json!({"inputs": "a cat", "parameters": {"num_inference_steps": 3, "seed": 5, "eta": eta}});
        server
            .request("POST", "/invocations", &accept, body.to_string().as_bytes())
            .body
    };
    assert_eq!(with_eta(0.5), with_eta(0.5));
    assert_ne!(with_eta(0.5), with_eta(0.0));
}

#[test]
fn vit_features_match_transformers() {
    replay_task("image-feature-extraction", "vit-features");
}

#[test]
fn dinov2_features_match_transformers() {
    replay_task("image-feature-extraction", "dinov2-features");
}

/// A base `DeiTModel` (distillation token, pooler): its last hidden state and, with `pool`, its
/// pooler output.
#[test]
fn deit_features_match_transformers() {
    replay_task("image-feature-extraction", "deit-features");
}

/// A base `ResNetModel`: its last hidden state as [channels][height][width] maps and, with
/// `pool`, its average-pooled [channels][1][1].
#[test]
fn resnet_features_match_transformers() {
    replay_task("image-feature-extraction", "resnet-features");
}

/// A base `ConvNextModel`: its maps and, with `pool`, its normalised mean [channels].
#[test]
fn convnext_features_match_transformers() {
    replay_task("image-feature-extraction", "convnext-features");
}

/// `CLIPVisionModel` (`clip_vision_model`: CLIP's vision tower alone, `CLIPFeatureExtractor` in
/// its preprocessor config as openai's folders have it): the encoder's output and, with `pool`,
/// the class token after `post_layernorm`.
#[test]
fn clip_vision_features_match_transformers() {
    replay_task("image-feature-extraction", "clip-features");
}

/// A PNG whose header says 50000 x 50000 (1-bit grey: 312 MB decoded), with a tiny body.
fn decompression_bomb() -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.finalize().to_be_bytes());
    }
    let mut png = vec![0x89, b'P', b'N', b'G', 13, 10, 26, 10];
    let mut header = Vec::new();
    header.extend_from_slice(&50_000u32.to_be_bytes());
    header.extend_from_slice(&50_000u32.to_be_bytes());
    header.extend_from_slice(&[1, 0, 0, 0, 0]); // 1 bit, grey, deflate, no filter, no interlace
    chunk(&mut png, b"IHDR", &header);
    chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut png, b"IEND", &[]);
    png
}

#[test]
fn bad_images_are_400_envelopes() {
    let server = Server::start(&repo_path("models/tiny/vision-vit"), &[]);
    let png = image_bytes("rgb-64x48.png");
    let truncated = png[..png.len() / 2].to_vec();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("image/png", Vec::new()),
        ("image/png", b"not an image at all".to_vec()),
        ("image/png", truncated.clone()),
        ("image/jpeg", image_bytes("photo-80x60.jpg")[..300].to_vec()),
        // Headers whole, the scan cut short: Pillow's "image file is truncated".
        ("image/jpeg", {
            let jpeg = image_bytes("photo-444-80x60.jpg");
            jpeg[..jpeg.len() * 3 / 4].to_vec()
        }),
        ("image/png", decompression_bomb()),
    ];
    for (content_type, body) in cases {
        let started = std::time::Instant::now();
        let response = server.request(
            "POST",
            "/invocations",
            &[("Content-Type", content_type)],
            &body,
        );
        let message = response.envelope(400);
        assert!(!message.is_empty() && message.len() < 1000, "{message}");
        assert!(started.elapsed().as_secs() < 10, "{message}");
    }
    let bomb = server.request(
        "POST",
        "/invocations",
        &[("Content-Type", "image/png")],
        &decompression_bomb(),
    );
    assert!(bomb.envelope(400).contains("50000 x 50000"));
    let json_cases = [
        json!({"inputs": "aGVsbG8gd29ybGQ="}),
        json!({"inputs": base64::engine::general_purpose::STANDARD.encode(&truncated)}),
        json!({"inputs": 5}),
        json!({"inputs": []}),
        json!({"inputs": "https://example.com/cat.png"}),
        json!({"inputs": b64("rgb-64x48.png"), "parameters": {"top_k": "two"}}),
        json!({"inputs": b64("rgb-64x48.png"), "parameters": {"function_to_apply": "relu"}}),
        json!({"inputs": b64("rgb-64x48.png"), "parameters": {"candidate_labels": ["a"]}}),
    ];
    for body in json_cases {
        let response = server.invoke_json(&body.to_string());
        let message = response.envelope(400);
        assert!(message.len() < 1000, "{message}");
    }
    // The server is still serving.
    let ok = server.request(
        "POST",
        "/invocations",
        &[("Content-Type", "image/png")],
        &png,
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
}

/// Our decoder against Pillow's (`load_image`: EXIF applied, `.convert("RGB")`), as recorded in
/// models/fixtures/images/decoded.json: every format byte for byte, JPEG included (libjpeg-turbo's
/// decoder, baseline and progressive, 4:2:0, 4:2:2, 4:4:4 and greyscale).
#[test]
fn decoded_pixels_match_pillow() {
    let text = std::fs::read_to_string(repo_path("models/fixtures/images/decoded.json")).unwrap();
    let decoded: Value = serde_json::from_str(&text).unwrap();
    for (name, want) in decoded.as_object().unwrap() {
        let image = sagemaker_hf_server::image::decode::decode_rgb(&image_bytes(name)).unwrap();
        assert_eq!(
            (image.width as u64, image.height as u64),
            (
                want["width"].as_u64().unwrap(),
                want["height"].as_u64().unwrap()
            ),
            "{name}"
        );
        let sum: i64 = image.data.iter().map(|&v| v as i64).sum();
        let want_sum = want["sum"].as_i64().unwrap();
        let first_row: Vec<i64> = image.data[..24].iter().map(|&v| v as i64).collect();
        let want_row: Vec<i64> = want["first_row"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!((sum, &first_row), (want_sum, &want_row), "{name}");
        let checksum: u64 = (image.data.iter().enumerate())
            .map(|(i, &v)| (i as u64 + 1) * v as u64)
            .sum();
        assert_eq!(checksum, want["checksum"].as_u64().unwrap(), "{name}");
    }
}

/// Our resize against Pillow's on decoded fixtures, every filter, down and up, one axis and
/// both (models/fixtures/images/resized.json: a position-weighted checksum of the bytes).
#[test]
fn resized_pixels_match_pillow() {
    use sagemaker_hf_server::image::resample::{resize, Filter};
    let text = std::fs::read_to_string(repo_path("models/fixtures/images/resized.json")).unwrap();
    let cases: Value = serde_json::from_str(&text).unwrap();
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() > 100);
    for case in cases {
        let name = case["image"].as_str().unwrap();
        let image = sagemaker_hf_server::image::decode::decode_rgb(&image_bytes(name)).unwrap();
        let filter = match case["filter"].as_str().unwrap() {
            "bilinear" => Filter::Bilinear,
            "bicubic" => Filter::Bicubic,
            "lanczos" => Filter::Lanczos,
            "box" => Filter::Box,
            "hamming" => Filter::Hamming,
            other => panic!("{other}"),
        };
        let (w, h) = (
            case["width"].as_u64().unwrap() as usize,
            case["height"].as_u64().unwrap() as usize,
        );
        let out = resize(&image, w, h, filter);
        let checksum: u64 = out
            .data
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as u64 + 1) * v as u64)
            .sum();
        assert_eq!(
            checksum,
            case["checksum"].as_u64().unwrap(),
            "{name} {w}x{h} {filter:?}"
        );
    }
}
