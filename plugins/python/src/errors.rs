//! Python exceptions as nbdkit errors: one line for the log (the
//! exception's type and message, and where in the script it was raised),
//! the full traceback as a debug message.

use pyo3::exceptions::PySyntaxError;
use pyo3::prelude::*;
use pyo3::types::PyList;

use nbdkit_plugin_abi as abi;

/// One frame of a traceback: file, line, function.
struct Frame {
    file: String,
    line: u32,
    func: String,
}

fn frames(py: Python<'_>, err: &PyErr) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut tb = err.traceback(py).map(Bound::into_any);
    // A traceback is a linked list; bound the walk all the same.
    for _ in 0..10_000 {
        let Some(t) = tb.take() else { break };
        if t.is_none() {
            break;
        }
        let frame = (|| -> PyResult<Frame> {
            let code = t.getattr("tb_frame")?.getattr("f_code")?;
            Ok(Frame {
                file: code.getattr("co_filename")?.extract()?,
                line: t.getattr("tb_lineno")?.extract().unwrap_or(0),
                func: code.getattr("co_name")?.extract()?,
            })
        })();
        if let Ok(f) = frame {
            out.push(f);
        }
        tb = t.getattr("tb_next").ok();
    }
    out
}

/// Newlines and runs of blanks in a message become one space.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `Type: message (line N, in func)`: the exception on one line, with the
/// innermost frame of `script` (else the innermost frame) it came from.
pub(crate) fn summary(py: Python<'_>, err: &PyErr, script: &str) -> String {
    let value = err.value(py);
    let ty = err
        .get_type(py)
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".to_string());
    if err.is_instance_of::<PySyntaxError>(py) {
        // A SyntaxError's place is in its attributes, not its traceback.
        let attr = |n: &str| value.getattr(n).ok().filter(|v| !v.is_none());
        let msg: String = attr("msg")
            .and_then(|m| m.extract().ok())
            .unwrap_or_else(|| "invalid syntax".to_string());
        let file: Option<String> = attr("filename").and_then(|f| f.extract().ok());
        let line: Option<u64> = attr("lineno").and_then(|l| l.extract().ok());
        let col: Option<u64> = attr("offset").and_then(|o| o.extract().ok());
        let text: Option<String> = attr("text").and_then(|t| t.extract().ok());
        let mut place = Vec::new();
        if let Some(f) = file.filter(|f| f != script) {
            place.push(f);
        }
        if let Some(l) = line {
            place.push(format!("line {l}"));
        }
        if let Some(c) = col {
            place.push(format!("column {c}"));
        }
        let mut s = format!("{ty}: {}", one_line(&msg));
        if !place.is_empty() {
            s.push_str(&format!(" ({}", place.join(", ")));
            if let Some(t) = text.map(|t| one_line(&t)).filter(|t| !t.is_empty()) {
                s.push_str(&format!(": {t}"));
            }
            s.push(')');
        }
        return s;
    }
    let msg = value.str().map(|s| s.to_string()).unwrap_or_default();
    let mut s = if msg.is_empty() {
        ty
    } else {
        format!("{ty}: {}", one_line(&msg))
    };
    let fr = frames(py, err);
    let f = fr.iter().rev().find(|f| f.file == script).or(fr.last());
    if let Some(f) = f {
        if f.file == script {
            s.push_str(&format!(" (line {}, in {})", f.line, f.func));
        } else {
            s.push_str(&format!(" ({}, line {}, in {})", f.file, f.line, f.func));
        }
    }
    s
}

/// The traceback as Python prints it.
fn traceback_text(py: Python<'_>, err: &PyErr) -> Option<String> {
    let tb = py.import("traceback").ok()?;
    let lines = tb
        .getattr("format_exception")
        .ok()?
        .call1((err.get_type(py), err.value(py), err.traceback(py)))
        .ok()?;
    let lines = lines.cast::<PyList>().ok()?;
    let mut s = String::new();
    for l in lines.iter() {
        s.push_str(&l.extract::<String>().ok()?);
    }
    Some(s)
}

/// Report `err`, raised by the script while loading it or in one of its
/// callbacks: `nbdkit_error("SCRIPT: CONTEXT: SUMMARY")`, and the
/// traceback as a debug message.
pub(crate) fn report(py: Python<'_>, script: &str, context: &str, err: &PyErr) {
    abi::error(&describe(py, script, context, err));
}

/// Like [`report`], but the error line is returned for the caller to
/// report (the traceback is already a debug message).
pub(crate) fn describe(py: Python<'_>, script: &str, context: &str, err: &PyErr) -> String {
    if let Some(tb) = traceback_text(py, err) {
        abi::debug(&format!("{script}: {context}: {}", tb.trim_end()));
    }
    format!("{script}: {context}: {}", summary(py, err, script))
}
