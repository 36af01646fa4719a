"""The project's own model converters: numpy + onnx (+ a .tflite flatbuffer reader), nothing else."""
