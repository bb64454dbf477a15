"""Segment images or videos: python src/predict.py ckpt=PATH input=demo/ output=DIR

For each input writes <name>_mask.png (class colours) and <name>_overlay.png (alpha blend with a legend) at the
input's size; videos give <name>_mask.mp4 and <name>_overlay.mp4. `--help` lists the options.
"""

from segkit.entry import predict

if __name__ == "__main__":
    predict()
