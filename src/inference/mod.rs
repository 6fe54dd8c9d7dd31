//! ONNX Runtime environment and the model manifest. A model is only used
//! when its file matches the sha256 pinned in the manifest, so a template
//! always records exactly which model made it.

pub mod manifest;

use std::{
    path::Path,
    sync::{Mutex, OnceLock},
};

pub use manifest::{EmbedderSpec, Manifest, ModelError};

static RUNTIME: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

/// Loads the ONNX Runtime shared library once per process (later calls reuse
/// it, whatever path they pass: a process can hold one runtime only).
pub fn init_runtime(library: &Path) -> Result<(), ModelError> {
    let _guard = INIT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let result = RUNTIME.get_or_init(|| {
        if !library.is_file() {
            return Err(format!("{} does not exist (run models/fetch.sh)", library.display()));
        }
        ort::init_from(library)
            .map_err(|e| format!("cannot load {}: {e}", library.display()))?
            .with_name("cotejo")
            .with_telemetry(false)
            .build()
            .map_err(|e| e.to_string())
    });
    result.as_ref().map(|_| ()).map_err(|e| ModelError::Runtime(e.clone()))
}

/// Reads the manifest (checking every pinned sum) and loads the ONNX
/// Runtime library it names, unless the config names another.
pub fn load_models(config: &crate::config::ModelsConfig) -> Result<Manifest, ModelError> {
    let manifest = Manifest::load(&config.dir)?;
    let library = if config.onnxruntime.is_empty() {
        manifest.path(&manifest.onnxruntime)
    } else {
        config.onnxruntime.clone().into()
    };
    init_runtime(&library)?;
    Ok(manifest)
}

/// The process's ONNX Runtime environment, once [`init_runtime`] succeeded.
pub fn runtime() -> Result<&'static ort::environment::Environment, ModelError> {
    match RUNTIME.get() {
        Some(Ok(env)) => Ok(env),
        Some(Err(e)) => Err(ModelError::Runtime(e.clone())),
        None => Err(ModelError::Runtime("ONNX Runtime is not loaded yet".into())),
    }
}

/// A CPU session with `threads` intra-op threads and full graph optimisation.
pub fn session(path: &Path, threads: usize) -> Result<ort::session::Session, ModelError> {
    let env = runtime()?;
    let build = || -> ort::Result<ort::session::Session> {
        ort::session::Session::builder(env)?
            .with_optimization_level(ort::session::builder::GraphOptimizationLevel::Level3)?
            .with_intra_threads(threads)?
            .with_inter_threads(1)?
            .commit_from_file(path)
    };
    build().map_err(|e| ModelError::Session { path: path.display().to_string(), message: e.to_string() })
}
