"""Score a trained model: python src/eval.py ckpt=PATH [inference=slide|whole|resize|tta] [split=test]

Writes metrics.json, iou.md (per-class IoU), confusion.png and, with save_predictions=true, the predicted
masks into the run directory (logs/eval/runs/<time>). `--help` lists the options and inference modes.
"""

from segkit.entry import evaluate

if __name__ == "__main__":
    evaluate()
