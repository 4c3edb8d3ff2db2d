"""Run onnx2tf 2.6.9's CLI with one fix for flatbuffer_direct per-channel int8 (run with convert/.venv's python).

Bug: ``tflite_builder.quantization._quantize_bias_tensor`` copies the weight's ``quantized_dimension`` onto the
1-D int32 bias. For DEPTHWISE_CONV_2D the weight axis is 3, so LiteRT rejects the bias ("quantized_dimension must
be in range [0, 1). Was 3.") and per-channel conversion fails. A bias is 1-D: its quantized dimension is 0.
This wrapper patches that one function and otherwise runs ``onnx2tf.main()`` unchanged.
"""

import sys

from onnx2tf.tflite_builder import quantization as _q

_orig = _q._quantize_bias_tensor


def _quantize_bias_tensor(*, tensor, input_qparams, weight_qparams, reporter):
    _orig(tensor=tensor, input_qparams=input_qparams, weight_qparams=weight_qparams, reporter=reporter)
    qp = tensor.quantization
    if qp is not None and getattr(tensor.data, "ndim", 1) == 1 and getattr(qp, "quantized_dimension", 0) != 0:
        qp.quantized_dimension = 0


_q._quantize_bias_tensor = _quantize_bias_tensor

if __name__ == "__main__":
    from onnx2tf.onnx2tf import main

    sys.exit(main())
