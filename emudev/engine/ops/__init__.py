"""The NPU engines' arithmetic as pure numpy: one module per engine, fed strided views of device memory.

Every op writes its result into the dst view it is given (in place) and reads its sources through views
that may be non-contiguous or broadcast (0 strides). Beside each op sits a `check_*` function that decides,
from dims and dtype enums alone, whether SUBMIT takes the packet (None) or not (a short reason for EINVAL).
"""

from ._common import DTYPES, FLOAT_DTYPES, FP16, FP32, INT8, INT32, MAX_TENSOR_DIM

__all__ = ["DTYPES", "FLOAT_DTYPES", "FP16", "FP32", "INT8", "INT32", "MAX_TENSOR_DIM"]
