//! A model directory on disk (`/opt/ml/model` or a path given as `HF_MODEL_ID`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{
    shard_names, ModelFiles, Weights, PYTORCH, PYTORCH_INDEX, SAFETENSORS, SAFETENSORS_INDEX,
};

pub fn from_dir(dir: &Path) -> Result<ModelFiles> {
    if !dir.is_dir() {
        bail!(
            "model directory {} does not exist: set HF_MODEL_ID to a Hub id or a local directory, or provide model.tar.gz",
            dir.display()
        );
    }
    let config = dir.join("config.json");
    if !config.is_file() && dir.join(super::MODEL_INDEX).is_file() {
        return diffusers_dir(dir);
    }
    if !config.is_file() && gguf_file(dir).is_none() {
        // The most common packaging mistake (HFTK #99): the files sit in a sub-folder of the archive.
        let nested = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.join("config.json").is_file());
        match nested {
            Some(sub) => bail!(
                "no config.json in {}, but {} has one: model.tar.gz must hold the model files at its root, not in a folder",
                dir.display(),
                sub.display()
            ),
            None => bail!("no config.json in model directory {}", dir.display()),
        }
    }
    let tokenizer = super::tokenizer_or_image_model(dir)?;
    let weights = find_weights(dir)?;
    Ok(ModelFiles {
        dir: dir.to_path_buf(),
        config,
        tokenizer,
        weights,
        origin: format!("local directory {}", dir.display()),
    })
}

/// A diffusers pipeline folder (`model_index.json`, a sub-folder per component): `config` is
/// the index, `tokenizer` the text encoder's (built from `tokenizer/`'s vocab.json and
/// merges.txt when there is no tokenizer.json), `weights` every component's safetensors.
fn diffusers_dir(dir: &Path) -> Result<ModelFiles> {
    let mut weights = Vec::new();
    for component in ["text_encoder", "unet", "vae"] {
        weights.extend(component_weights(dir, component)?);
    }
    Ok(ModelFiles {
        dir: dir.to_path_buf(),
        config: dir.join(super::MODEL_INDEX),
        tokenizer: super::tokenizer_file(&dir.join("tokenizer"))?,
        weights: Weights::Safetensors(weights),
        origin: format!("local directory {}", dir.display()),
    })
}

/// The safetensors weights of a diffusers pipeline's component `name` (its
/// `diffusion_pytorch_model.safetensors` or `model.safetensors`, or their shards; not the
/// `.fp16` variants beside them).
pub fn component_weights(dir: &Path, name: &str) -> Result<Vec<PathBuf>> {
    let sub = dir.join(name);
    for file in ["diffusion_pytorch_model.safetensors", "model.safetensors"] {
        if sub.join(file).is_file() {
            return Ok(vec![sub.join(file)]);
        }
    }
    for index in [
        "diffusion_pytorch_model.safetensors.index.json",
        "model.safetensors.index.json",
    ] {
        if let Ok(text) = std::fs::read_to_string(sub.join(index)) {
            return Ok(shard_names(&text)?
                .into_iter()
                .map(|n| sub.join(n))
                .collect());
        }
    }
    bail!(
        "no safetensors weights in {} (diffusion_pytorch_model.safetensors or model.safetensors)",
        sub.display()
    )
}

fn find_weights(dir: &Path) -> Result<Weights> {
    let shards = |index: &str| -> Result<Vec<PathBuf>> {
        let path = dir.join(index);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let names = shard_names(&text).with_context(|| format!("parsing {}", path.display()))?;
        let files: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
        if let Some(missing) = files.iter().find(|f| !f.is_file()) {
            bail!("{} lists {}, which is missing", index, missing.display());
        }
        Ok(files)
    };
    if dir.join(SAFETENSORS).is_file() {
        Ok(Weights::Safetensors(vec![dir.join(SAFETENSORS)]))
    } else if dir.join(SAFETENSORS_INDEX).is_file() {
        Ok(Weights::Safetensors(shards(SAFETENSORS_INDEX)?))
    } else if dir.join(PYTORCH).is_file() {
        Ok(Weights::Pytorch(vec![dir.join(PYTORCH)]))
    } else if dir.join(PYTORCH_INDEX).is_file() {
        Ok(Weights::Pytorch(shards(PYTORCH_INDEX)?))
    } else if let Some(gguf) = gguf_file(dir) {
        Ok(Weights::Gguf(gguf))
    } else {
        bail!(
            "no weights in {}: expected {SAFETENSORS}, {SAFETENSORS_INDEX}, {PYTORCH}, {PYTORCH_INDEX} or a .gguf file",
            dir.display()
        )
    }
}

/// The directory's `.gguf` file (the first by name when there are several).
pub fn gguf_file(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf") && p.is_file())
        .collect();
    found.sort();
    found.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shs-local-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn nested_archive_gets_a_hint() {
        let dir = tmp("nested");
        std::fs::create_dir_all(dir.join("my-model")).unwrap();
        std::fs::write(dir.join("my-model/config.json"), "{}").unwrap();
        let e = from_dir(&dir).unwrap_err().to_string();
        assert!(e.contains("at its root"), "{e}");
    }

    #[test]
    fn prefers_safetensors_and_reads_shard_index() {
        let dir = tmp("shards");
        for f in [
            "config.json",
            "tokenizer.json",
            "pytorch_model.bin",
            "a.safetensors",
            "b.safetensors",
        ] {
            std::fs::write(dir.join(f), "{}").unwrap();
        }
        std::fs::write(
            dir.join(SAFETENSORS_INDEX),
            r#"{"metadata":{},"weight_map":{"x":"a.safetensors","y":"b.safetensors","z":"a.safetensors"}}"#,
        )
        .unwrap();
        match from_dir(&dir).unwrap().weights {
            Weights::Safetensors(files) => {
                assert_eq!(
                    files,
                    vec![dir.join("a.safetensors"), dir.join("b.safetensors")]
                )
            }
            other => panic!("{other:?}"),
        }
        std::fs::remove_file(dir.join(SAFETENSORS_INDEX)).unwrap();
        assert!(matches!(
            from_dir(&dir).unwrap().weights,
            Weights::Pytorch(_)
        ));
    }

    #[test]
    fn missing_directory_and_tokenizer_are_explained() {
        let e = from_dir(Path::new("/nonexistent/model"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        let dir = tmp("notok");
        std::fs::write(dir.join("config.json"), "{}").unwrap();
        let e = from_dir(&dir).unwrap_err().to_string();
        assert!(e.contains("tokenizer.json"), "{e}");
    }
}
