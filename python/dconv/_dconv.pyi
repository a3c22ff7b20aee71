"""Type stubs of dconv's extension module (re-exported by the dconv package)."""
import os
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

__version__: str

class InvalidArgument(ValueError):
    """A bad model, input name, shape, type or option."""

class SessionOptions:
    """How an InferenceSession runs."""

    intra_op_num_threads: int
    inter_op_num_threads: int
    policy: str
    max_memory: Optional[int]
    profile: Optional[Union[str, os.PathLike]]
    def __init__(self) -> None: ...

class NodeArg:
    """A model input or output as ONNX Runtime describes it."""

    @property
    def name(self) -> str: ...
    @property
    def shape(self) -> list[Union[int, str, None]]: ...
    @property
    def type(self) -> str: ...

class InferenceSession:
    """A loaded ONNX model, ready to run."""

    def __init__(
        self,
        path_or_bytes: Union[str, bytes, os.PathLike],
        sess_options: Optional[SessionOptions] = None,
        providers: Optional[Sequence[Any]] = None,
        provider_options: Optional[Sequence[Any]] = None,
        **kwargs: Any,
    ) -> None: ...
    def get_inputs(self) -> list[NodeArg]: ...
    def get_outputs(self) -> list[NodeArg]: ...
    def get_providers(self) -> list[str]: ...
    def get_session_options(self) -> SessionOptions: ...
    def run(
        self,
        output_names: Optional[Sequence[str]],
        input_feed: Mapping[str, npt.ArrayLike],
        run_options: Any = None,
    ) -> list[np.ndarray]: ...
    def run_with_stats(
        self,
        output_names: Optional[Sequence[str]],
        input_feed: Mapping[str, npt.ArrayLike],
    ) -> tuple[list[np.ndarray], list[dict[str, Any]]]: ...

def get_available_providers() -> list[str]: ...
def prune(
    in_path: Union[str, os.PathLike],
    out_path: Union[str, os.PathLike],
    sparsity: Union[float, str, Mapping[str, float]],
    block: Optional[int] = None,
    skip_first: bool = False,
    include_gemm: bool = False,
) -> list[dict[str, Any]]: ...
