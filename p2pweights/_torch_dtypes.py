"""safetensors dtype names and their torch twins: the one table that needs torch.

Kept apart from ``_safetensors`` so the format core (manifest, headers, chunking) imports
without torch; only code that makes or reads tensors imports this module.
"""

from __future__ import annotations

import torch

from .errors import SourceError

__all__ = ["TORCH_DTYPES", "dtype_name"]

TORCH_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "F8_E5M2": torch.float8_e5m2,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2FNUZ": torch.float8_e5m2fnuz,
    "F8_E4M3FNUZ": torch.float8_e4m3fnuz,
    "F8_E8M0": torch.float8_e8m0fnu,
    "I16": torch.int16,
    "U16": torch.uint16,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I32": torch.int32,
    "U32": torch.uint32,
    "F32": torch.float32,
    "C64": torch.complex64,
    "F64": torch.float64,
    "I64": torch.int64,
    "U64": torch.uint64,
}
_BY_TORCH: dict[torch.dtype, str] = {t: name for name, t in TORCH_DTYPES.items()}


def dtype_name(dtype: torch.dtype) -> str:
    """The safetensors name of a torch dtype.

    Raises:
        SourceError: if safetensors has no whole-byte equivalent.

    """
    try:
        return _BY_TORCH[dtype]
    except KeyError:
        raise SourceError(f"dtype {dtype} has no safetensors equivalent") from None
