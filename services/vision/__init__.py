"""MT Photos AI service: OCR, CLIP and face recognition on OpenVINO and ONNX Runtime."""
