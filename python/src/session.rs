//! `SessionOptions`, `InferenceSession` and `NodeArg`: ONNX Runtime's session API over a
//! [`dconv::Session`].

use crate::errors::{guarded, invalid};
use crate::feed::float_array;
use dconv::conv::select::CostProfile;
use dconv::onnx::Dim;
use dconv::runtime::Profile;
use dconv::{Model, Policy, Tensor, TensorData, TensorView};
use numpy::{PyArray, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use std::path::PathBuf;
use std::sync::Arc;

/// A run's outputs as numpy arrays (float32, or int64 for integer constants).
type Outputs<'py> = Vec<Bound<'py, PyAny>>;

/// ONNX Runtime's name of the CPU provider: the one provider dconv is.
pub const CPU_PROVIDER: &str = "CPUExecutionProvider";

/// How an `InferenceSession` runs: ONNX Runtime's `SessionOptions` for the settings dconv
/// has, plus dconv's own.
///
/// Attributes:
///     intra_op_num_threads (int): threads a run uses; 0 (the default) uses every core.
///     inter_op_num_threads (int): accepted for ONNX Runtime's code; dconv runs one node at
///         a time, each with all of its threads.
///     policy (str): how each convolution picks its method: "auto" (the default: by dconv's
///         cost model, layer by layer and input by input) or a method's name ("dense",
///         "im2csr", "im2csoa", "sparse-weight", "lowered-csr", "reference").
///     max_memory (int | None): the most bytes a plan may take (buffers, prepared weights,
///         workspace); None: dconv's default limit.
///     profile (str | os.PathLike | None): a cost profile written by `dconv tune`; None: the
///         one compiled in for this CPU.
#[pyclass(module = "dconv", from_py_object)]
#[derive(Clone, Debug)]
pub struct SessionOptions {
    #[pyo3(get, set)]
    intra_op_num_threads: usize,
    #[pyo3(get, set)]
    inter_op_num_threads: usize,
    #[pyo3(get, set)]
    policy: String,
    #[pyo3(get, set)]
    max_memory: Option<usize>,
    #[pyo3(get, set)]
    profile: Option<PathBuf>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            intra_op_num_threads: 0,
            inter_op_num_threads: 0,
            policy: Policy::Auto.to_string(),
            max_memory: None,
            profile: None,
        }
    }
}

#[pymethods]
impl SessionOptions {
    #[new]
    fn new() -> Self {
        SessionOptions::default()
    }

    fn __repr__(&self) -> String {
        format!(
            "SessionOptions(intra_op_num_threads={}, policy='{}', max_memory={}, profile={})",
            self.intra_op_num_threads,
            self.policy,
            self.max_memory
                .map_or("None".to_string(), |m| m.to_string()),
            self.profile
                .as_ref()
                .map_or("None".to_string(), |p| format!("'{}'", p.display())),
        )
    }
}

impl SessionOptions {
    /// The library's options; fails on an unknown policy or an unreadable profile.
    fn to_dconv(&self) -> dconv::Result<dconv::SessionOptions> {
        Ok(dconv::SessionOptions {
            threads: self.intra_op_num_threads,
            policy: self.policy.parse()?,
            cost_profile: match &self.profile {
                Some(path) => CostProfile::load(path)?,
                None => CostProfile::default(),
            },
            max_memory: self.max_memory,
        })
    }
}

/// A model input or output as ONNX Runtime describes it.
///
/// Attributes:
///     name (str): the name to feed or ask for.
///     shape (list): the declared dimensions: ints, strings for symbolic ones, None for
///         unnamed unknown ones.
///     type (str): the element type, "tensor(float)".
#[pyclass(module = "dconv", frozen)]
pub struct NodeArg {
    #[pyo3(get)]
    name: String,
    dims: Vec<Dim>,
    #[pyo3(get, name = "type")]
    element_type: &'static str,
}

#[pymethods]
impl NodeArg {
    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let dims = self.dims.iter().map(|d| match d {
            Dim::Fixed(v) => v
                .into_pyobject(py)
                .map_or_else(|e| match e {}, |v| v.into_any()),
            Dim::Dynamic(name) if name.is_empty() => py.None().into_bound(py),
            Dim::Dynamic(name) => name
                .into_pyobject(py)
                .map_or_else(|e| match e {}, |v| v.into_any()),
        });
        PyList::new(py, dims)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "NodeArg(name='{}', type='{}', shape={})",
            self.name,
            self.element_type,
            self.shape(py)?.repr()?
        ))
    }
}

impl NodeArg {
    fn new(name: &str, dims: Option<&[Dim]>) -> NodeArg {
        NodeArg {
            name: name.to_string(),
            dims: dims.map_or_else(Vec::new, <[Dim]>::to_vec),
            element_type: "tensor(float)",
        }
    }
}

/// A loaded ONNX model, ready to run: ONNX Runtime's `InferenceSession`.
///
/// `InferenceSession(path_or_bytes, sess_options=None, providers=None)` loads the model
/// from a path (external data beside it) or from the bytes of a serialized model (no
/// external data). `providers` is accepted and ignored, as ONNX Runtime's CPU build
/// does: dconv is a CPU engine.
///
/// A session may be run from several threads at once; the GIL is released while a model
/// loads and runs. Do not modify an input array while a run reads it: float32
/// C-contiguous inputs are read in place.
///
/// Raises InvalidArgument (a ValueError) for a malformed or unsupported model or a bad
/// option, RuntimeError for a failure inside dconv.
#[pyclass(module = "dconv", frozen)]
pub struct InferenceSession {
    session: dconv::Session<'static>,
    options: SessionOptions,
    inputs: Vec<Py<NodeArg>>,
    outputs: Vec<Py<NodeArg>>,
}

#[pymethods]
impl InferenceSession {
    #[new]
    #[pyo3(signature = (path_or_bytes, sess_options=None, providers=None, provider_options=None, **kwargs))]
    fn new(
        py: Python<'_>,
        path_or_bytes: &Bound<'_, PyAny>,
        sess_options: Option<SessionOptions>,
        providers: Option<&Bound<'_, PyAny>>,
        provider_options: Option<&Bound<'_, PyAny>>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let _ = (providers, provider_options, kwargs);
        let options = sess_options.unwrap_or_default();
        let model = if let Ok(bytes) = path_or_bytes.cast::<PyBytes>() {
            let bytes = bytes.as_bytes();
            py.detach(|| guarded(|| Model::from_bytes(bytes, None)))?
        } else {
            let path: PathBuf = path_or_bytes.extract().map_err(|_| {
                invalid("path_or_bytes must be a path (str or os.PathLike) or bytes")
            })?;
            py.detach(|| guarded(|| Model::load(&path)))?
        };
        let model = Arc::new(model);
        let session = guarded(|| dconv::Session::shared(model.clone(), options.to_dconv()?))?;
        let inputs = model
            .inputs()
            .iter()
            .map(|i| Py::new(py, NodeArg::new(&i.name, i.shape.as_deref())))
            .collect::<PyResult<_>>()?;
        let outputs = model
            .outputs()
            .iter()
            .zip(model.declared_output_shapes())
            .map(|(name, shape)| Py::new(py, NodeArg::new(name, shape.as_deref())))
            .collect::<PyResult<_>>()?;
        Ok(InferenceSession {
            session,
            options,
            inputs,
            outputs,
        })
    }

    /// The inputs to feed: a list of NodeArg (name, shape, type).
    fn get_inputs(&self, py: Python<'_>) -> Vec<Py<NodeArg>> {
        self.inputs.iter().map(|i| i.clone_ref(py)).collect()
    }

    /// The outputs a run returns, in order: a list of NodeArg.
    fn get_outputs(&self, py: Python<'_>) -> Vec<Py<NodeArg>> {
        self.outputs.iter().map(|o| o.clone_ref(py)).collect()
    }

    /// The providers the session runs on: ["CPUExecutionProvider"].
    fn get_providers(&self) -> Vec<&'static str> {
        vec![CPU_PROVIDER]
    }

    /// A copy of the options the session was made with.
    fn get_session_options(&self) -> SessionOptions {
        self.options.clone()
    }

    /// run(output_names, input_feed, run_options=None) -> list of numpy arrays
    ///
    /// Runs the model. `output_names`: None for every output, or a list of output names;
    /// `input_feed`: a dict from every input's name to a numpy array (float32 is read in
    /// place; other real-number dtypes are converted). Returns the outputs in the order
    /// asked for.
    #[pyo3(signature = (output_names, input_feed, run_options=None))]
    fn run<'py>(
        &self,
        py: Python<'py>,
        output_names: Option<Vec<String>>,
        input_feed: &Bound<'py, PyDict>,
        run_options: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Outputs<'py>> {
        let _ = run_options;
        Ok(self.execute(py, output_names, input_feed, false)?.0)
    }

    /// run_with_stats(output_names, input_feed) -> (outputs, layers)
    ///
    /// `run`, also returning one dict per step of the run, in order: `name` and `op` of the
    /// node, `method` (the convolution method, or None), `input_sparsity` and
    /// `weight_sparsity` (fractions of zeros; the latter None for other operators), `macs`
    /// (a convolution's dense multiply-adds) and `time_ms`.
    fn run_with_stats<'py>(
        &self,
        py: Python<'py>,
        output_names: Option<Vec<String>>,
        input_feed: &Bound<'py, PyDict>,
    ) -> PyResult<(Outputs<'py>, Vec<Bound<'py, PyDict>>)> {
        let (outputs, profile) = self.execute(py, output_names, input_feed, true)?;
        let rows = profile
            .unwrap_or_default()
            .steps
            .iter()
            .map(|step| {
                let row = PyDict::new(py);
                row.set_item("name", &step.name)?;
                row.set_item("op", &step.op)?;
                row.set_item("method", step.method.map(|m| m.name()))?;
                row.set_item("input_sparsity", step.input_sparsity)?;
                row.set_item("weight_sparsity", step.weight_sparsity)?;
                row.set_item("macs", step.macs)?;
                row.set_item("time_ms", step.time.as_secs_f64() * 1e3)?;
                Ok(row)
            })
            .collect::<PyResult<_>>()?;
        Ok((outputs, rows))
    }
}

impl InferenceSession {
    /// Reads the feed, runs the model without the GIL (profiled if asked), and returns the
    /// asked-for outputs as numpy arrays.
    fn execute<'py>(
        &self,
        py: Python<'py>,
        output_names: Option<Vec<String>>,
        input_feed: &Bound<'py, PyDict>,
        profiled: bool,
    ) -> PyResult<(Outputs<'py>, Option<Profile>)> {
        let mut arrays = Vec::with_capacity(input_feed.len());
        for (name, value) in input_feed.iter() {
            let name: String = name
                .extract()
                .map_err(|_| invalid("input_feed's keys must be input names (str)"))?;
            let array = float_array(py, &name, &value)?;
            let shape = array.shape().to_vec();
            arrays.push((name, shape, array));
        }
        let views = arrays
            .iter()
            .map(|(name, shape, array)| {
                let data = array
                    .as_slice()
                    .map_err(|e| invalid(format!("input '{name}': {e}")))?;
                let view = TensorView::new(shape, data).map_err(crate::errors::to_py)?;
                Ok((name.as_str(), view))
            })
            .collect::<PyResult<Vec<_>>>()?;
        let session = &self.session;
        let (outputs, profile) = py.detach(|| {
            guarded(|| {
                if profiled {
                    session.run_profiled(&views).map(|(o, p)| (o, Some(p)))
                } else {
                    session.run(&views).map(|o| (o, None))
                }
            })
        })?;
        let wanted = match output_names {
            None => (0..outputs.len()).collect::<Vec<_>>(),
            Some(names) => names
                .iter()
                .map(|name| {
                    outputs.iter().position(|(n, _)| n == name).ok_or_else(|| {
                        invalid(format!(
                            "invalid output name '{name}' (outputs: {})",
                            self.session.model().outputs().join(", ")
                        ))
                    })
                })
                .collect::<PyResult<_>>()?,
        };
        let mut outputs: Vec<Option<Tensor>> = outputs.into_iter().map(|(_, t)| Some(t)).collect();
        let arrays = wanted
            .iter()
            .enumerate()
            .map(|(k, &i)| {
                // An output asked for again later is copied; its last use takes it.
                let tensor = if wanted[k + 1..].contains(&i) {
                    outputs[i].clone()
                } else {
                    outputs[i].take()
                };
                let tensor = tensor.ok_or_else(|| {
                    pyo3::exceptions::PyRuntimeError::new_err("an output was taken twice")
                })?;
                to_numpy(py, tensor)
            })
            .collect::<PyResult<_>>()?;
        Ok((arrays, profile))
    }
}

/// A numpy array that owns the tensor's elements (no copy).
fn to_numpy(py: Python<'_>, tensor: Tensor) -> PyResult<Bound<'_, PyAny>> {
    let (shape, data) = tensor.into_parts();
    Ok(match data {
        TensorData::F32(v) => PyArray::from_vec(py, v).reshape(shape)?.into_any(),
        TensorData::I64(v) => PyArray::from_vec(py, v).reshape(shape)?.into_any(),
    })
}
