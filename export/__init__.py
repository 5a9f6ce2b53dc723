"""Export SPAI to ONNX (fp32 and fp16) and TensorRT, and prove parity with PyTorch."""
