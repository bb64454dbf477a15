"""Export a model to ONNX and/or TorchScript and check it against PyTorch.

    python src/export.py ckpt=PATH format=onnx output=FILE
    python src/export.py model=enet format=both height=360 width=480     (an untrained net)

`--help` lists the options. ONNX checking needs the `export` extra (onnx, onnxruntime).
"""

from segkit.entry import export

if __name__ == "__main__":
    export()
