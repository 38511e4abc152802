"""A stand-in evaluation context whose embedder returns fixed features."""

from pathlib import Path

import torch

from clipforge.eval.tasks import EvalContext


class FixedEmbedder:
    """``images`` returns features by ImageSet key; ``texts`` looks texts up in a table."""

    def __init__(self, images: dict[str, torch.Tensor], texts: dict[str, torch.Tensor]):
        self._images, self._texts = images, texts
        self.embedded_images = 0

    def images(self, images, desc: str = "") -> torch.Tensor:
        return self._images[images.key]

    def texts(self, texts, desc: str = "") -> torch.Tensor:
        return torch.stack([self._texts[t] for t in texts])

    def classifier(self, classnames, templates) -> torch.Tensor:
        prompts = [t(c) if callable(t) else t.format(c) for c in classnames for t in templates]
        e = self.texts(prompts).view(len(classnames), len(templates), -1)
        return torch.nn.functional.normalize(e.mean(dim=1), dim=-1)


class _Model:
    def __init__(self, scale: float) -> None:
        self.scale = torch.tensor(scale)

    def logit_scale_exp(self) -> torch.Tensor:
        return self.scale


def fixed_context(tmp: Path, images: dict, texts: dict, scale: float = 10.0) -> EvalContext:
    return EvalContext(_Model(scale), None, FixedEmbedder(images, texts), tmp)  # type: ignore[arg-type]
