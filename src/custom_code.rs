//! Custom inference code (`code/inference.py` with `model_fn` / `input_fn` / `predict_fn` /
//! `output_fn` / `transform_fn`): the way DLC users change what a model does. Built with the
//! feature `python`, the script runs (`crate::python`); without it, a model that ships such a
//! script is refused at start-up rather than served by the native pipeline with different
//! answers. `SERVER_IGNORE_CUSTOM_CODE=true` serves the native pipeline anyway, and says so in
//! the log.

use std::path::{Path, PathBuf};

#[cfg(not(feature = "python"))]
use anyhow::{bail, Result};

use crate::config::ServeArgs;

/// The user script the DLC would import for this model, if one exists: `SAGEMAKER_PROGRAM`
/// (default `inference.py`; `.py` optional; a package folder counts) under `<model dir>/code`,
/// `/opt/ml/model/code`, or a local `SAGEMAKER_SUBMIT_DIRECTORY`.
pub fn find_script(args: &ServeArgs, model_dir: &Path) -> Option<PathBuf> {
    let program = args
        .sagemaker_program
        .as_deref()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .unwrap_or("inference.py");
    let module = program.strip_suffix(".py").unwrap_or(program);
    let mut folders = vec![
        model_dir.join("code"),
        args.default_model_dir().join("code"),
    ];
    if let Some(submit) = args
        .sagemaker_submit_directory
        .as_deref()
        .filter(|d| !d.contains("://"))
    {
        folders.push(PathBuf::from(submit));
    }
    folders.into_iter().find_map(|folder| {
        [
            folder.join(format!("{module}.py")),
            folder.join(module).join("__init__.py"),
        ]
        .into_iter()
        .find(|candidate| candidate.is_file())
    })
}

/// Whether the user opted out of the script (`SERVER_IGNORE_CUSTOM_CODE`); says so in the log.
pub fn ignored(args: &ServeArgs, script: &Path) -> bool {
    if args.ignore_custom_code {
        tracing::warn!(
            "{} defines custom Python handlers; SERVER_IGNORE_CUSTOM_CODE is set: serving the native pipeline, whose answers may differ from the script's",
            script.display()
        );
    }
    args.ignore_custom_code
}

/// Without the feature `python`: refuses to start when the model has custom Python handlers,
/// unless the user opted out.
#[cfg(not(feature = "python"))]
pub fn check(args: &ServeArgs, model_dir: &Path) -> Result<()> {
    let Some(script) = find_script(args, model_dir) else {
        return Ok(());
    };
    if ignored(args, &script) {
        return Ok(());
    }
    bail!(
        "{} defines custom Python handlers (model_fn / input_fn / predict_fn / output_fn / transform_fn), and this build of the server cannot run Python: answering without them could silently give different results. Remove the script to serve the native pipeline, or set SERVER_IGNORE_CUSTOM_CODE=true to serve the native pipeline anyway (see the README, \"Custom inference code\").",
        script.display()
    )
}
