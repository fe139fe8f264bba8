//! Feature `python`: a model's user script (`code/inference.py`) runs as on the DLC, in CPython
//! embedded in the server (one interpreter for the process). `glue.py` is the toolkit's handler
//! service; the hooks the script does not define are native (`native`); hooks run on a small
//! pool of threads (`pool`), never on the async runtime's.
//!
//! Start-up, as the DLC's: `code/requirements.txt` is installed with pip, `code/` goes on
//! `sys.path`, the script is imported (under a module name of its own per model), then the model
//! loads: `model_fn` when the script has one (no native pipeline is built then), else the native
//! pipeline. Any failure there is a start-up error.

pub mod convert;
pub mod native;
pub mod pool;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyModule};

use crate::config::ServeArgs;
use crate::error::ServerError;
use crate::service::InferenceService;
use crate::source::ModelFiles;
use native::sagemaker_hf_server;

/// The handler service in Python (the toolkit's `handler_service.py`, MMS's `Context`).
const GLUE: &std::ffi::CStr = {
    const SOURCE: &str = concat!(include_str!("glue.py"), "\0");
    match std::ffi::CStr::from_bytes_with_nul(SOURCE.as_bytes()) {
        Ok(source) => source,
        Err(_) => panic!("glue.py holds a NUL byte"),
    }
};

/// One model's user script, loaded.
pub struct Handlers {
    /// The glue's `Handler` for this model.
    handler: Arc<Py<PyAny>>,
    pub script: PathBuf,
    /// The hooks the script defines, for the start-up log and `/models`.
    pub hooks: Vec<String>,
}

/// The interpreter's pool of hook threads (`SERVER_PYTHON_THREADS`), shared by every model.
static POOL: OnceLock<pool::Pool> = OnceLock::new();

/// The glue module, compiled once.
static GLUE_MODULE: OnceLock<Py<PyModule>> = OnceLock::new();

/// The handlers of a service's user script, if it has one (`serve` sets them).
pub fn handlers_of(service: &InferenceService) -> Option<&Handlers> {
    service.script.get()?.downcast_ref::<Handlers>()
}

/// Serves a model through its user script, as the DLC's handler service starts: installs
/// `code/requirements.txt`, imports the script, then loads the model: the script's `model_fn`
/// when it has one (no native pipeline is built then: the DLC builds none, and the folder need
/// not hold anything our loader reads), else the native pipeline from `files()`. The handlers
/// are attached to the service. Blocking; call it off the async runtime's threads, inside it
/// (`Handle::current`).
pub fn serve(
    args: &ServeArgs,
    script: &Path,
    model_dir: &Path,
    files: impl FnOnce() -> Result<ModelFiles>,
) -> Result<Arc<InferenceService>> {
    let python = interpreter(args)?;
    let code_dir = script
        .parent()
        .map(|p| {
            if script.ends_with("__init__.py") {
                p.parent().unwrap_or(p)
            } else {
                p
            }
        })
        .unwrap_or(Path::new("."));
    let requirements = code_dir.join("requirements.txt");
    if requirements.is_file() {
        install_requirements(&python, &requirements)?;
    }
    static MODELS: AtomicUsize = AtomicUsize::new(0);
    let stem = script
        .file_stem()
        .and_then(|s| s.to_str())
        .map(|s| if s == "__init__" { "package" } else { s })
        .unwrap_or("inference")
        .replace(|c: char| !c.is_ascii_alphanumeric(), "_");
    let module_name = format!(
        "sagemaker_user_code_{}_{stem}",
        MODELS.fetch_add(1, Ordering::Relaxed)
    );
    let failed = || {
        format!(
            "{} (custom inference code: importing it or its model_fn failed)",
            script.display()
        )
    };
    let (handler, hooks) = Python::attach(|py| -> PyResult<_> {
        let handler = glue(py)?.getattr("Handler")?.call1((
            module_name.as_str(),
            script.display().to_string(),
            model_dir.display().to_string(),
            args.task.as_deref(),
        ))?;
        let hooks: Vec<String> = handler.getattr("hooks")?.extract()?;
        Ok((handler.unbind(), hooks))
    })
    .map_err(|e| anyhow!("{}", traceback(e)))
    .with_context(failed)?;
    let has_model_fn = hooks.iter().any(|hook| hook == "model_fn");
    let service = if has_model_fn {
        Arc::new(InferenceService::without_pipeline(args, model_dir)?)
    } else {
        let service = Arc::new(InferenceService::load_files(args, files()?)?);
        native::register(&service);
        service
    };
    Python::attach(|py| -> PyResult<()> {
        let native_model = if has_model_fn {
            py.None()
        } else {
            Py::new(py, native::NativePipeline::served(&service))?.into_any()
        };
        handler
            .bind(py)
            .call_method1("load_model", (native_model,))?;
        Ok(())
    })
    .map_err(|e| anyhow!("{}", traceback(e)))
    .with_context(failed)?;
    tracing::info!(
        "custom inference code {} imported as {module_name}: {} in Python, the rest native",
        script.display(),
        if hooks.is_empty() {
            "no hooks".to_string()
        } else {
            hooks.join(", ")
        }
    );
    let handlers = Handlers {
        handler: Arc::new(handler),
        script: script.to_path_buf(),
        hooks,
    };
    let _ = service.script.set(Box::new(handlers));
    Ok(service)
}

impl Handlers {
    /// Answers one request through the script's hooks, as the DLC's `handle` does, under the
    /// request `deadline`.
    pub async fn invoke(
        &self,
        body: Bytes,
        headers: &HeaderMap,
        deadline: Duration,
    ) -> Result<Response, ServerError> {
        let pool = POOL
            .get()
            .ok_or_else(|| ServerError::Internal("the Python thread pool is not started".into()))?;
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into(),
                )
            })
            .collect();
        let handler = self.handler.clone();
        let request_id = uuid::Uuid::new_v4().to_string();
        let outcome = pool
            .run(deadline, move || {
                Python::attach(|py| -> PyResult<HandlerAnswer> {
                    let header_dict = PyDict::new(py);
                    for (k, v) in &headers {
                        header_dict.set_item(k, v)?;
                    }
                    let answer = handler.bind(py).call_method1(
                        "handle",
                        (request_id, PyBytes::new(py, &body), header_dict),
                    )?;
                    let (status, headers, payload): GlueAnswer = answer.extract()?;
                    Ok(match headers {
                        Some(headers) => HandlerAnswer::Ok {
                            status,
                            headers,
                            body: payload.extract::<Vec<u8>>()?,
                        },
                        None => HandlerAnswer::Failed {
                            status,
                            message: payload.extract()?,
                        },
                    })
                })
                .map_err(traceback)
            })
            .await?;
        match outcome {
            Err(trace) => Err(ServerError::Internal(format!(
                "the Python handler service failed: {trace}"
            ))),
            Ok(HandlerAnswer::Failed { status, message }) => {
                Err(ServerError::Handler { status, message })
            }
            Ok(HandlerAnswer::Ok {
                status,
                headers,
                body,
            }) => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                let mut response = (status, body).into_response();
                for (name, value) in headers {
                    if let (Ok(name), Ok(value)) = (
                        HeaderName::from_bytes(name.as_bytes()),
                        HeaderValue::from_str(&value),
                    ) {
                        response.headers_mut().insert(name, value);
                    }
                }
                Ok(response)
            }
        }
    }
}

/// What the glue's `handle` returns: status, response headers (none: an error) and the body
/// (the error's message).
type GlueAnswer<'py> = (u16, Option<Vec<(String, String)>>, Bound<'py, PyAny>);

enum HandlerAnswer {
    Ok {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    Failed {
        status: u16,
        message: String,
    },
}

/// The exception with its traceback, as Python prints it.
fn traceback(error: PyErr) -> String {
    Python::attach(|py| {
        let formatted = error
            .traceback(py)
            .and_then(|tb| tb.format().ok())
            .unwrap_or_default();
        format!("{error}\n{formatted}")
    })
}

fn glue(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    if let Some(module) = GLUE_MODULE.get() {
        return Ok(module.bind(py).clone());
    }
    let module = PyModule::from_code(
        py,
        GLUE,
        c"sagemaker_hf_server_glue.py",
        c"sagemaker_hf_server_glue",
    )?;
    let _ = GLUE_MODULE.set(module.clone().unbind());
    Ok(module)
}

/// Starts the interpreter once (with the `sagemaker_hf_server` module) and the hook threads;
/// returns the Python executable pip runs with.
fn interpreter(args: &ServeArgs) -> Result<PathBuf> {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            native::set_server(native::Server {
                args: args.clone(),
                runtime: tokio::runtime::Handle::current(),
            });
            // Registers `import sagemaker_hf_server` (before the interpreter starts, as the
            // macro requires; it panics otherwise, and this runs once).
            pyo3::append_to_inittab!(sagemaker_hf_server);
            Python::initialize();
            let pool = pool::Pool::start(args.python_threads).map_err(|e| e.to_string())?;
            tracing::info!(
                "Python hooks run on {} threads (SERVER_PYTHON_THREADS)",
                pool.threads()
            );
            let _ = POOL.set(pool);
            Python::attach(|py| -> PyResult<PathBuf> {
                let setup = py.eval(c"__import__('sys').version", None, None)?;
                let version: String = setup.extract()?;
                let executable = python_executable(py)?;
                tracing::info!(
                    "embedded Python {} ({}), pip runs as {}",
                    version.split_whitespace().next().unwrap_or(""),
                    py.import("sys")?.getattr("prefix")?.extract::<String>()?,
                    executable.display()
                );
                Ok(executable)
            })
            .map_err(traceback)
        })
        .clone()
        .map_err(|e| anyhow!("starting the embedded Python interpreter: {e}"))
}

/// The Python executable of the embedded interpreter's installation (or of `VIRTUAL_ENV`, whose
/// site-packages then come first on `sys.path`): what pip runs as, and `sys.executable` for
/// user code that starts Python processes (it would be the server binary otherwise).
fn python_executable(py: Python<'_>) -> PyResult<PathBuf> {
    let locals = PyDict::new(py);
    py.run(
        cr#"
import os, site, sys
version = "python%d.%d" % sys.version_info[:2]
venv = os.environ.get("VIRTUAL_ENV")
if venv:
    before = list(sys.path)
    site.addsitedir(os.path.join(venv, "lib", version, "site-packages"))
    added = [p for p in sys.path if p not in before]
    sys.path[:] = added + before
    prefix = venv
else:
    prefix = sys.exec_prefix
executable = os.environ.get("SERVER_PYTHON_EXECUTABLE") or next(
    (p for p in (os.path.join(prefix, "bin", version), os.path.join(prefix, "bin", "python3"))
     if os.path.exists(p)),
    "python3",
)
sys.executable = executable
"#,
        Some(&locals), // as globals: the comprehensions below see these names
        None,
    )?;
    Ok(PathBuf::from(
        locals
            .get_item("executable")?
            .map(|e| e.extract::<String>())
            .transpose()?
            .unwrap_or_else(|| "python3".into()),
    ))
}

/// `python -m pip install -r requirements.txt`, as the DLC runs it before the model server
/// starts. A failure is a start-up error quoting pip (which names the package).
fn install_requirements(python: &Path, requirements: &Path) -> Result<()> {
    tracing::info!("installing packages from {}", requirements.display());
    let output = Command::new(python)
        .args(["-m", "pip", "install", "--disable-pip-version-check", "-r"])
        .arg(requirements)
        .output()
        .with_context(|| format!("running {} -m pip", python.display()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("ERROR") || l.contains("rror:"))
            .collect();
        let said = if errors.is_empty() {
            stderr
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join(" / ")
        } else {
            errors.join(" / ")
        };
        bail!(
            "installing the packages of {} failed ({} -m pip install -r, {}): {}",
            requirements.display(),
            python.display(),
            output.status,
            crate::error::cut(said.trim(), 2000)
        );
    }
    tracing::info!("installed the packages of {}", requirements.display());
    Ok(())
}
