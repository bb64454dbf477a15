"""Train a segmentation model: python src/train.py model=fcn8_vgg data=camvid data.root=/path/to/camvid

Every config group and key can be overridden on the command line; `--help` lists the groups and their choices,
`--cfg job` prints the composed config.
"""

from segkit.entry import train

if __name__ == "__main__":
    train()
