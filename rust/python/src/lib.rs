//! `gslice._core`: the engine behind a small, JSON-shaped interface. Every failure, panics
//! included, becomes `EngineError(kind, message)`; the Python layer maps kinds to its own
//! exception classes.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use gslice_engine::compare::{compare as run_compare, ComparePlan};
use gslice_engine::hash::sha256_file;
use gslice_engine::{execute as run_plan, Checkpoint, Error, Plan, Progress};
use rayon::prelude::*;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyKeyboardInterrupt};
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
    with_progress(py, progress, |state, cancel| run_plan(&plan, state, cancel).and_then(to_json))
}

/// Compares an output checkpoint with what a plan (JSON: source, output, tensors) derives
/// from the source; returns the mismatches. Progress and cancellation as for `execute`.
#[pyfunction]
#[pyo3(signature = (plan_json, progress=None))]
fn compare(py: Python<'_>, plan_json: &str, progress: Option<Py<PyAny>>) -> PyResult<String> {
    let plan: ComparePlan = serde_json::from_str(plan_json)
        .map_err(|e| to_py(Error::Plan(format!("invalid comparison plan: {e}"))))?;
    with_progress(py, progress, |state, cancel| run_compare(&plan, state, cancel).and_then(to_json))
}

/// SHA-256 (hex) of each file, hashed in parallel. Progress and cancellation as for `execute`.
#[pyfunction]
#[pyo3(signature = (paths, progress=None))]
fn sha256_files(py: Python<'_>, paths: Vec<PathBuf>, progress: Option<Py<PyAny>>) -> PyResult<Vec<String>> {
    let text = with_progress(py, progress, |state, cancel| {
        let total = paths.iter().map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).sum();
        state.total.store(total, Ordering::Relaxed);
        let digests = paths.par_iter().map(|p| sha256_file(p, &state.done, cancel)).collect::<Result<Vec<_>, _>>()?;
        to_json(digests)
    })?;
    serde_json::from_str(&text).map_err(|e| to_py(Error::Internal(e.to_string())))
}

fn to_json(value: impl serde::Serialize) -> Result<String, Error> {
    serde_json::to_string(&value).map_err(|e| Error::Internal(e.to_string()))
}

/// Runs `work` on a worker thread without the GIL while this thread polls the progress
/// callback and Ctrl-C; either one failing sets the cancel flag and its error is returned.
fn with_progress(
    py: Python<'_>,
    progress: Option<Py<PyAny>>,
    work: impl FnOnce(&Progress, &AtomicBool) -> Result<String, Error> + Send,
) -> PyResult<String> {
    let state = Progress::default();
    let cancel = AtomicBool::new(false);
    // A callback or Ctrl-C that fails right away stops the run before anything is created.
    poll(py, progress.as_ref(), &state)?;
    let mut interrupt: Option<PyErr> = None;
    let result = py.detach(|| {
        std::thread::scope(|s| {
            let (tx, rx) = mpsc::channel();
            let (state, cancel) = (&state, &cancel);
            s.spawn(move || {
                let _ = tx.send(guarded(|| work(state, cancel)));
            });
            // Wake at once when the work ends; otherwise every 100 ms to poll.
            loop {
                match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(result) => break result,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break Err(Error::Internal("worker thread died".into())),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                }
                if interrupt.is_none() {
                    if let Err(e) = Python::attach(|py| poll(py, progress.as_ref(), state)) {
                        cancel.store(true, Ordering::Relaxed);
                        interrupt = Some(e);
                    }
                }
            }
        })
    });
    if let Some(e) = interrupt {
        // The work may have finished before it saw the cancel flag: then a failing callback
        // does not undo it. An interruption is still raised; the caller reports what is on disk.
        if result.is_err() || e.is_instance_of::<PyKeyboardInterrupt>(py) {
            return Err(e);
        }
    }
    let text = result.map_err(to_py)?;
    if let Some(cb) = progress.as_ref() {
        let total = state.total.load(Ordering::Relaxed);
        // The work is done: a failing progress bar must not turn that into a failure. An
        // interruption still propagates; the caller finds the finished output on disk.
        if let Err(e) = cb.bind(py).call1((total, total)) {
            if e.is_instance_of::<PyKeyboardInterrupt>(py) {
                return Err(e);
            }
        }
    }
    Ok(text)
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
    m.add_function(wrap_pyfunction!(compare, m)?)?;
    m.add_function(wrap_pyfunction!(sha256_files, m)?)?;
    Ok(())
}
