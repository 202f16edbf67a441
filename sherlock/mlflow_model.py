"""The registered model as an MLflow pyfunc, logged as code (MLflow's models-from-code).

MLflow runs this file to load the model, so no pickled class travels with the model: what it needs
is the ``sherlock`` package logged beside it (``code_paths``) and the pinned requirements
(:func:`sherlock.tracking.register_checkpoint`), so ``mlflow models serve`` builds it a fresh
environment anywhere. Input: ``question`` and ``image`` (base64 PNG/JPEG/WebP) columns; params
``self_correction_rounds`` and ``max_new_tokens``; output per row: the answer and every round's response, the
rounds asked as the checkpoint was trained to (:mod:`sherlock.protocol`).
"""

import base64
import binascii
import io

from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

MAX_IMAGE_PIXELS = 2048 * 2048


class SherlockModel(PythonModel):
    """The checkpoint as an MLflow pyfunc: ``predict`` answers image–question rows."""

    def load_context(self, context):
        """Load the checkpoint, its processor and how it self-corrects from the model's artifacts."""
        import torch

        from sherlock.models.loading import load_vlm
        from sherlock.protocol import read_protocol

        self.model, self.processor = load_vlm(context.artifacts["checkpoint"], dtype=torch.float32)
        self.protocol = read_protocol(context.artifacts["checkpoint"])

    def predict(self, context, model_input, params=None):
        """Answer each row (a base64 ``image`` and a ``question``); a bad image is refused by its row."""
        from PIL import Image, UnidentifiedImageError

        from sherlock.data.schema import IMAGE_FORMATS, to_rgb
        from sherlock.decoding import DecodingConfig
        from sherlock.generation import answer_as_trained

        images = []
        for row, data in enumerate(model_input["image"]):
            try:
                with Image.open(io.BytesIO(base64.b64decode(data, validate=True)), formats=IMAGE_FORMATS) as image:
                    if image.width * image.height > MAX_IMAGE_PIXELS:
                        raise ValueError(f"row {row}: the image has over {MAX_IMAGE_PIXELS} pixels")
                    images.append(to_rgb(image))
            except (binascii.Error, UnidentifiedImageError, OSError, Image.DecompressionBombError):
                raise ValueError(f"row {row}: the image is not base64 of a PNG, JPEG or WebP image") from None
        rounds = int((params or {}).get("self_correction_rounds", 0))
        config = DecodingConfig(max_new_tokens=int((params or {}).get("max_new_tokens", 512)))
        responses = answer_as_trained(self.model, self.processor, list(model_input["question"]), images, rounds,
                                      config, self.protocol)
        return [{"answer": self.protocol.answer(per_item[-1]), "responses": list(per_item)}
                for per_item in zip(*responses)]


set_model(SherlockModel())
