"""Models (face detector, person detector, face embedder) and the runtimes that execute them.

`engines.zoo` fetches and converts the real weights, `engines.runtime` opens sessions on ONNX
Runtime or TensorRT, and the model classes own their pre- and post-processing, written once for
numpy and CuPy arrays.
"""
