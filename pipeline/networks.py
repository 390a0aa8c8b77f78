"""The networks of the method, in Keras (METHOD.md sections 2 and 4).

`build_unet`: the paper's U-Net. Encoder 16,16 | 32,32 | 64,64 | 128,128 | 256,256 with 2x2
max-pooling between stages (10 convolutions); decoder 128, 64, 32, 16: a 3x3 transposed
convolution (stride 2) then two 3x3 convolutions per stage, with skip connections
(4 transposed + 8 convolutions). All 3x3, ReLU. A 1x1 convolution maps to the classes:
softmax over `classes` (multi-class head) or one sigmoid channel (`classes=1`, the paper's
binary variant).

`build_deteclordose`: the paper's classifier. 224x224 grey input scaled by 1/255, six 3x3
convolutions with ReLU and filters rising 32 -> 512, each followed by 2x2 max-pooling,
dense 128, dropout 0.5, softmax over hypolordosis / normal / hyperlordosis.
"""

from __future__ import annotations

import keras
from keras import layers

SEGMENTATION_CLASSES = ("background", "vertebra", "disc", "canal")
LORDOSIS_CLASSES = ("hypolordosis", "normal", "hyperlordosis")
ENCODER_FILTERS = (16, 32, 64, 128, 256)
DETECLORDOSE_FILTERS = (32, 64, 128, 256, 512, 512)


def _conv(x, filters: int, name: str):
    return layers.Conv2D(filters, 3, padding="same", activation="relu", name=name)(x)


def build_unet(classes: int = len(SEGMENTATION_CLASSES), input_size: int | None = None) -> keras.Model:
    """The paper's U-Net. input_size None accepts any size divisible by 16."""
    inputs = keras.Input((input_size, input_size, 1), name="image")
    x, skips = inputs, []
    for stage, filters in enumerate(ENCODER_FILTERS):
        x = _conv(x, filters, f"enc{stage}_a")
        x = _conv(x, filters, f"enc{stage}_b")
        if stage < len(ENCODER_FILTERS) - 1:
            skips.append(x)
            x = layers.MaxPooling2D(2, name=f"pool{stage}")(x)
    for stage, filters in enumerate(reversed(ENCODER_FILTERS[:-1])):
        x = layers.Conv2DTranspose(filters, 3, strides=2, padding="same", activation="relu", name=f"up{stage}")(x)
        x = layers.Concatenate(name=f"skip{stage}")([x, skips.pop()])
        x = _conv(x, filters, f"dec{stage}_a")
        x = _conv(x, filters, f"dec{stage}_b")
    activation = "sigmoid" if classes == 1 else "softmax"
    outputs = layers.Conv2D(classes, 1, activation=activation, name="labels")(x)
    return keras.Model(inputs, outputs, name="unet_binary" if classes == 1 else f"unet_{classes}class")


def build_deteclordose(input_size: int = 224, dense: int = 128, dropout: float = 0.5) -> keras.Model:
    inputs = keras.Input((input_size, input_size, 1), name="image")
    x = layers.Rescaling(1 / 255, name="scale")(inputs)
    for i, filters in enumerate(DETECLORDOSE_FILTERS):
        x = _conv(x, filters, f"conv{i}")
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(dense, activation="relu", name="dense")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(len(LORDOSIS_CLASSES), activation="softmax", name="lordosis")(x)
    return keras.Model(inputs, outputs, name="deteclordose")
