//! `gslice._core`: the engine behind a small, JSON-shaped interface. Every failure, panics
//! included, becomes `EngineError(kind, message)`; the Python layer maps kinds to its own
//! exception classes.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gslice_engine::{execute as run_plan, Checkpoint, Error, Plan, Progress};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use serde_json::json;

create_exception!(_core, EngineError, PyException, "A failure inside the gslice engine: args are (kind, message).");

fn to_py(e: Error) -> PyErr {
    EngineError::new_err((e.kind(), e.to_string()))
}

/// Runs `f`, turning a panic into `Error::Internal` so it never unwinds into Python.
fn guarded<T>(f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        Err(Error::Internal(msg))
    })
}

/// Opens and validates a checkpoint; returns its shards and tensors as JSON.
#[pyfunction]
fn inspect(py: Python<'_>, path: PathBuf) -> PyResult<String> {
    py.detach(|| guarded(|| describe(&path))).map_err(to_py)
}

fn describe(path: &std::path::Path) -> Result<String, Error> {
    let ck = Checkpoint::open(path)?;
    let shards: Vec<_> = ck
        .shards
        .iter()
        .map(|s| json!({"path": s.path, "size": s.map.len(), "tensors": s.header.tensors.len(), "metadata": s.header.metadata}))
        .collect();
    let tensors: Vec<_> = ck
        .shards
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            s.header.tensors.iter().map(move |t| {
                json!({"name": t.name, "dtype": t.dtype.name(), "shape": t.shape, "shard": i, "offset": t.start, "nbytes": t.len})
            })
        })
        .collect();
    Ok(json!({"root": ck.root, "shards": shards, "tensors": tensors}).to_string())
}

/// Executes a plan (JSON). `progress(done_bytes, total_bytes)` is called about ten times a
/// second from this thread; if it raises, or Ctrl-C arrives, the run stops and cleans up.
#[pyfunction]
#[pyo3(signature = (plan_json, progress=None))]
fn execute(py: Python<'_>, plan_json: &str, progress: Option<Py<PyAny>>) -> PyResult<String> {
    let plan: Plan = serde_json::from_str(plan_json)
        .map_err(|e| to_py(Error::Plan(format!("invalid plan: {e}"))))?;
    let state = Progress::default();
    let cancel = AtomicBool::new(false);
    // A callback or Ctrl-C that fails right away stops the run before anything is created.
    poll(py, progress.as_ref(), &state)?;
    let mut interrupt: Option<PyErr> = None;
    let result = py.detach(|| {
        std::thread::scope(|s| {
            let worker = s.spawn(|| guarded(|| run_plan(&plan, &state, &cancel)));
            while !worker.is_finished() {
                std::thread::sleep(Duration::from_millis(100));
                if interrupt.is_none() {
                    if let Err(e) = Python::attach(|py| poll(py, progress.as_ref(), &state)) {
                        cancel.store(true, Ordering::Relaxed);
                        interrupt = Some(e);
                    }
                }
            }
            worker.join().unwrap_or_else(|_| Err(Error::Internal("worker thread died".into())))
        })
    });
    if let Some(e) = interrupt {
        return Err(e);
    }
    let report = result.map_err(to_py)?;
    if let Some(cb) = progress.as_ref() {
        let total = state.total.load(Ordering::Relaxed);
        cb.bind(py).call1((total, total))?;
    }
    serde_json::to_string(&report).map_err(|e| to_py(Error::Internal(e.to_string())))
}

fn poll(py: Python<'_>, progress: Option<&Py<PyAny>>, state: &Progress) -> PyResult<()> {
    py.check_signals()?;
    if let Some(cb) = progress {
        cb.bind(py).call1((state.done.load(Ordering::Relaxed), state.total.load(Ordering::Relaxed)))?;
    }
    Ok(())
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("EngineError", m.py().get_type::<EngineError>())?;
    m.add_function(wrap_pyfunction!(inspect, m)?)?;
    m.add_function(wrap_pyfunction!(execute, m)?)?;
    Ok(())
}
