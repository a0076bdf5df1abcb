"""The embedded ImageNet weights are real: EfficientNet-Lite0 recognises skimage's cat photo offline."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modules.nets.imagenet import (
    EMBEDDED_MODEL,
    ImageNetWeightsError,
    embedded_imagenet_state,
    imagenet_normalisation,
    imagenet_timm_model,
    load_imagenet_encoder,
)
from modules.nets.unet import build_unet

CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def chelsea_batch() -> torch.Tensor:
    from skimage.data import chelsea

    image = torch.from_numpy(chelsea()).permute(2, 0, 1).float().unsqueeze(0) / 255.0
    image = F.interpolate(image, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    mean, std = imagenet_normalisation()
    return (image - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_the_cat_photo_is_classified_as_a_cat():
    model = imagenet_timm_model()
    with torch.no_grad():
        probs = model(chelsea_batch()).softmax(-1)[0]
    top5 = set(probs.topk(5).indices.tolist())
    assert top5 & CAT_CLASSES, f"top-5 {sorted(top5)} holds no cat class"
    assert int(probs.argmax()) in CAT_CLASSES


def test_converted_weights_cover_every_learned_tensor_of_timms_model():
    import timm

    state = embedded_imagenet_state()
    timm_keys = {k for k in timm.create_model(EMBEDDED_MODEL).state_dict() if not k.endswith("num_batches_tracked")}
    assert set(state) == timm_keys
    assert len(state) == 247


def test_unet_encoder_gets_exactly_the_imagenet_tensors():
    unet = build_unet(f"tu-{EMBEDDED_MODEL}", classes=2, decoder_channels=(16, 16, 8, 8, 8))
    loaded = load_imagenet_encoder(unet.encoder, f"tu-{EMBEDDED_MODEL}")
    state = embedded_imagenet_state()
    own = unet.encoder.state_dict()
    assert len(loaded) > 200
    for key in loaded:
        assert torch.equal(own[key], state[key.removeprefix("model.")]), key


def test_unknown_encoder_name_suggests_the_close_one():
    with pytest.raises(ImageNetWeightsError, match='Did you mean "tf_efficientnet_lite0"'):
        imagenet_timm_model("tf_efficientnet_lite00")
    unet = build_unet(f"tu-{EMBEDDED_MODEL}", decoder_channels=(16, 16, 8, 8, 8))
    with pytest.raises(ImageNetWeightsError, match="Did you mean"):
        load_imagenet_encoder(unet.encoder, "tu-tf_efficientnet_lite00")


def test_other_weights_need_the_download_flag():
    with pytest.raises(ImageNetWeightsError, match="allow_download"):
        imagenet_timm_model("resnet18")
