"""The classifier's network choices outside the paper's Deteclordose: keras.applications
baselines with the Deteclordose head, and the rule's class as a training target. Shared by
training and evaluation (train.py trains them, evaluate.py scores them)."""

from __future__ import annotations

from pipeline.classify import classify_lla
from pipeline.networks import LORDOSIS_CLASSES
from pipeline.preprocess import CLASSIFIER_INPUT

BASELINES = ("vgg16", "vgg19", "densenet121")
_IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN, _TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)



def build_baseline(name: str, input_size: int = CLASSIFIER_INPUT, weights: str | None = None,
                   freeze_base: bool = False):
    """VGG16 / VGG19 / DenseNet121 from keras.applications with the Deteclordose head (dense 128,
    dropout 0.5, softmax 3). Grey input on 0..255 is replicated to 3 channels and given each
    network's ImageNet preprocessing, so a local ImageNet weights file (notop) can be used."""
    import keras
    from keras import layers

    apps = {"vgg16": keras.applications.VGG16, "vgg19": keras.applications.VGG19,
            "densenet121": keras.applications.DenseNet121}
    if name not in apps:
        raise ValueError(f"unknown baseline {name!r}; choose from {BASELINES}")
    inputs = keras.Input((input_size, input_size, 1), name="image")
    x = layers.Concatenate(name="grey_to_rgb")([inputs, inputs, inputs])
    if name.startswith("vgg"):  # caffe mode: BGR mean subtraction (grey: order is moot)
        x = layers.Rescaling(1.0, offset=[-m for m in _IMAGENET_MEAN_BGR], name="imagenet_preprocess")(x)
    else:  # torch mode: 0..1 then per-channel standardisation
        x = layers.Rescaling([1.0 / (255.0 * s) for s in _TORCH_STD],
                             offset=[-m / s for m, s in zip(_TORCH_MEAN, _TORCH_STD)], name="imagenet_preprocess")(x)
    base = apps[name](include_top=False, weights=weights, input_shape=(input_size, input_size, 3), pooling="avg")
    base.trainable = not freeze_base
    x = base(x)
    x = layers.Dense(128, activation="relu", name="dense")(x)
    x = layers.Dropout(0.5, name="dropout")(x)
    outputs = layers.Dense(len(LORDOSIS_CLASSES), activation="softmax", name="lordosis")(x)
    return keras.Model(inputs, outputs, name=f"{name}_lordosis")


def lordosis_class_index(lla_deg: float) -> int:
    """The paper's rule (Algorithm 2, pipeline.classify) as an index into LORDOSIS_CLASSES."""
    return LORDOSIS_CLASSES.index(classify_lla(lla_deg))
