"""gslice: cut smaller models out of Gemma 3n checkpoints (MatFormer slicing), streaming.

    import gslice
    report = gslice.slice_model("gemma-3n-E4B-it", "out/", layers_to_skip=range(20, 25), ffn_dims=8192)
"""

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    ArgumentError,
    DiskFullError,
    GsliceError,
    HubError,
    InternalError,
    Interrupted,
    NothingFitsError,
    OutputExistsError,
    OutputPathError,
    ProtectedPathError,
    SourceError,
    SpecError,
    WriteError,
)
from .slicing import SlicePlan, SliceReport, prepare_slice, slice_model  # noqa: E402
from .formats.safetensors import Safetensors  # noqa: E402
from .formats.gguf import GGUF  # noqa: E402
from .formats.mlx import MLX  # noqa: E402
from .spec import SliceSpec, load_spec_file  # noqa: E402
from .catalogue import Preset, presets  # noqa: E402
from .proposals import ProposalVerdict, proposals  # noqa: E402
from .accounting import Footprint, SizePlan, plan  # noqa: E402
from .recommendation import Recommendation, recommend  # noqa: E402
from .runtimes import Compatibility, Verdict, compatibility  # noqa: E402
from .evaluation import EvalReport, EvalSettings, evaluate  # noqa: E402

__all__ = [
    "__version__",
    "slice_model",
    "prepare_slice",
    "SlicePlan",
    "SliceReport",
    "SliceSpec",
    "Safetensors",
    "GGUF",
    "MLX",
    "load_spec_file",
    "presets",
    "Preset",
    "proposals",
    "ProposalVerdict",
    "plan",
    "SizePlan",
    "Footprint",
    "recommend",
    "Recommendation",
    "compatibility",
    "Compatibility",
    "Verdict",
    "evaluate",
    "EvalSettings",
    "EvalReport",
    "GsliceError",
    "ArgumentError",
    "SpecError",
    "SourceError",
    "OutputExistsError",
    "OutputPathError",
    "ProtectedPathError",
    "DiskFullError",
    "WriteError",
    "HubError",
    "NothingFitsError",
    "InternalError",
    "Interrupted",
]
