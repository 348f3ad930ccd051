"""Handing a run on: model card and its checklists, export (ONNX, TorchScript), predict, HTML reports."""
