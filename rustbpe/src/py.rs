//! The Python module `rustbpe`: a thin PyO3 binding over the Rust core.
//!
//! ```python
//! import rustbpe
//! tok = rustbpe.Tokenizer()
//! tok.train_from_iterator(texts, vocab_size=32768)      # vocab_size includes the 256 bytes
//! ids = tok.encode("hello world")                       # == tiktoken's ids for the same ranks
//! tok2 = rustbpe.Tokenizer.from_ranks(tok.get_mergeable_ranks(), tok.get_pattern())
//! ```
//!
//! Parallel work (chunk counting, batch encoding) and single encodes run with the GIL released.
//! Errors in the core become `ValueError`; a non-str item in the training iterator is a
//! `TypeError`.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::{PyBackedBytes, PyBackedStr};
use pyo3::types::{PyBytes, PyString};
use rayon::prelude::*;

use crate::train::{learn_merges, ChunkCounter};
use crate::{Error, Splitter, Tokenizer as CoreTokenizer, GPT4_PATTERN};

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        PyValueError::new_err(e.to_string())
    }
}

/// Byte-level BPE tokenizer (GPT-4 style split + merges).
#[pyclass(name = "Tokenizer", module = "rustbpe")]
pub struct PyTokenizer {
    inner: CoreTokenizer,
}

#[pymethods]
impl PyTokenizer {
    /// An untrained tokenizer: the 256 byte tokens and the default pattern.
    #[new]
    fn new() -> Self {
        PyTokenizer {
            inner: CoreTokenizer::default(),
        }
    }

    /// Train on an iterable of str. `vocab_size` counts the 256 byte tokens; the vocabulary can
    /// come out smaller when the text runs out of pairs. `buffer_size` strings are pulled from
    /// the iterator at a time (with the GIL) and split in parallel (without it). `pattern`
    /// defaults to `GPT4_PATTERN`.
    #[pyo3(signature = (iterator, vocab_size, buffer_size=8192, pattern=None))]
    fn train_from_iterator(
        &mut self,
        py: Python<'_>,
        iterator: &Bound<'_, PyAny>,
        vocab_size: i64,
        buffer_size: i64,
        pattern: Option<String>,
    ) -> PyResult<()> {
        // signed, so that a negative size is a ValueError with our message, not an OverflowError
        if vocab_size < 256 {
            return Err(Error::VocabTooSmall(vocab_size).into());
        }
        let vocab_size = vocab_size as usize;
        if buffer_size < 1 {
            return Err(PyValueError::new_err(format!(
                "buffer_size must be at least 1; got {buffer_size}"
            )));
        }
        let buffer_size = buffer_size as usize;
        let pattern = pattern.unwrap_or_else(|| GPT4_PATTERN.to_string());
        let splitter = Splitter::new(&pattern)?;
        let mut iter = iterator.try_iter().map_err(|_| {
            PyTypeError::new_err(format!(
                "train_from_iterator expects an iterable of str; got {}",
                type_name(iterator)
            ))
        })?;
        let mut counter = ChunkCounter::default();
        let mut buffer: Vec<PyBackedStr> = Vec::with_capacity(buffer_size.min(1 << 16));
        let mut seen = 0usize;
        let mut exhausted = false;
        while !exhausted {
            buffer.clear();
            while buffer.len() < buffer_size {
                let Some(item) = iter.next() else {
                    exhausted = true;
                    break;
                };
                let item = item?;
                let text = item.cast::<PyString>().map_err(|_| {
                    PyTypeError::new_err(format!(
                        "train_from_iterator: item {seen} of the iterator is a {}, expected str",
                        type_name(&item)
                    ))
                })?;
                buffer.push(text.to_owned().try_into()?);
                seen += 1;
            }
            if !buffer.is_empty() {
                let batch = &buffer;
                py.detach(|| counter.add_batch(&splitter, batch))?;
            }
        }
        drop(buffer);
        let inner = py.detach(|| {
            let merges = learn_merges(counter.into_chunks(), vocab_size - 256);
            CoreTokenizer::from_merges(&merges, &pattern)
        })?;
        self.inner = inner;
        Ok(())
    }

    /// The split pattern (a regex string).
    fn get_pattern(&self) -> &str {
        self.inner.pattern()
    }

    /// [(token bytes, rank)] ordered by rank; rank == token id. tiktoken's `mergeable_ranks`
    /// is `dict(tok.get_mergeable_ranks())`.
    fn get_mergeable_ranks<'py>(&self, py: Python<'py>) -> Vec<(Bound<'py, PyBytes>, u32)> {
        self.inner
            .vocab()
            .iter()
            .enumerate()
            .map(|(id, bytes)| (PyBytes::new(py, bytes), id as u32))
            .collect()
    }

    /// Rebuild a tokenizer from `get_mergeable_ranks()` output (ranks 0..n-1, every single byte
    /// present) and a split pattern.
    #[staticmethod]
    fn from_ranks(ranks: Vec<(PyBackedBytes, u32)>, pattern: &str) -> PyResult<Self> {
        let ranks = ranks.into_iter().map(|(b, r)| (b.to_vec(), r)).collect();
        Ok(PyTokenizer {
            inner: CoreTokenizer::from_ranks(ranks, pattern)?,
        })
    }

    /// Token ids of `text` (identical to tiktoken's `encode_ordinary`).
    fn encode(&self, py: Python<'_>, text: &str) -> PyResult<Vec<u32>> {
        Ok(py.detach(|| self.inner.encode(text))?)
    }

    /// `[encode(t) for t in texts]`, computed in parallel (rayon) without the GIL.
    fn encode_batch(&self, py: Python<'_>, texts: Vec<PyBackedStr>) -> PyResult<Vec<Vec<u32>>> {
        let out: Result<Vec<Vec<u32>>, Error> =
            py.detach(|| texts.par_iter().map(|t| self.inner.encode(t)).collect());
        Ok(out?)
    }

    /// The concatenated bytes of `ids` (may be partial UTF-8; decode with errors="replace").
    fn decode_bytes<'py>(&self, py: Python<'py>, ids: Vec<i64>) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = self.inner.decode_bytes(&ids)?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// Number of tokens (the 256 bytes included).
    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    fn __repr__(&self) -> String {
        format!("rustbpe.Tokenizer(vocab_size={})", self.inner.vocab_size())
    }
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "<unknown type>".into())
}

#[pymodule]
fn rustbpe(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTokenizer>()?;
    m.add("GPT4_PATTERN", GPT4_PATTERN)?;
    Ok(())
}
