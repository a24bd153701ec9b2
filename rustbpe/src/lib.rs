//! placeholder, replaced by the rustbpe work
use pyo3::prelude::*;

#[pymodule]
fn rustbpe(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
