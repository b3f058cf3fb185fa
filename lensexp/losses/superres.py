"""The super-resolution loss object that the `loss` config group instantiates.

It combines a pixel term, an optional VGG perceptual term and an optional adversarial term. It is
a function of its inputs and trains no network: the discriminator belongs to the training module
(`lensexp.tasks.superres.AdversarialSRModule`), which runs it and passes its logits in, in
BasicSR's order:

    g_loss, terms = loss(sr, hr, fake_logits=D(sr))                # generator step, D frozen
    d_loss, d_terms = loss.discriminator_loss(D(hr), D(sr.detach()))   # then the D step
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from lensexp.errors import LensexpError
from lensexp.losses.adversarial import GANLoss
from lensexp.losses.perceptual import PerceptualLoss
from lensexp.losses.pixel import PixelLoss


class SuperResolutionLoss(nn.Module):
    """Weighted sum of pixel, perceptual and adversarial terms for an SR generator.

    `perceptual` is a built PerceptualLoss, or (as the configs give it) a callable that builds
    one from `weights`, the VGG19 weights option `loss.weights` (imagenet | random | a path).
    The adversarial term is added only when discriminator logits of the SR images are passed
    (`fake_logits`); without them (validation of a plain module, the discriminator's warm-up)
    the loss is the pixel and perceptual terms.
    """

    task = "superres"

    def __init__(
        self,
        pixel: PixelLoss | None = None,
        perceptual: PerceptualLoss | Callable[..., PerceptualLoss] | None = None,
        adversarial: GANLoss | None = None,
        weights: str | None = None,
    ) -> None:
        super().__init__()
        if perceptual is not None and not isinstance(perceptual, nn.Module):
            perceptual = perceptual(weights="imagenet" if weights is None else weights)
        elif weights is not None:
            raise LensexpError(
                f"loss.weights={weights}: only used to build the VGG19 perceptual term, and "
                f"there is none to build here; drop it, or use loss=vgg or loss=srgan."
            )
        if pixel is None and perceptual is None and adversarial is None:
            raise LensexpError(
                "loss: no term configured; give at least one of loss.pixel, loss.perceptual, "
                "loss.adversarial (e.g. loss=mse)."
            )
        self.pixel = pixel
        self.perceptual = perceptual
        self.adversarial = adversarial

    @property
    def pretrained_loaded(self) -> bool | None:
        """Whether the perceptual VGG has pretrained weights; None without a perceptual term."""
        return None if self.perceptual is None else self.perceptual.pretrained_loaded

    @property
    def has_content_term(self) -> bool:
        """Whether a pixel or perceptual term ties the output to the HR image."""
        return self.pixel is not None or self.perceptual is not None

    def forward(
        self, sr: Tensor, hr: Tensor, *, fake_logits: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Total generator loss and its weighted terms (`pixel`, `perceptual`, `adversarial`).

        `fake_logits`: the discriminator's logits of `sr`; they add the adversarial term.
        """
        terms: dict[str, Tensor] = {}
        if self.pixel is not None:
            terms["pixel"] = self.pixel(sr, hr)
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual(sr, hr)
        if fake_logits is not None:
            terms["adversarial"] = self._gan()(fake_logits, True, is_discriminator=False)
        if not terms:
            raise ValueError(
                "SuperResolutionLoss: only an adversarial term, and no fake_logits were given"
            )
        return sum(terms.values()), terms  # type: ignore[return-value]

    def discriminator_loss(
        self, real_logits: Tensor, fake_logits: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The discriminator's loss on logits of real and of detached SR images (see GANLoss)."""
        return self._gan().discriminator_loss(real_logits, fake_logits)

    def _gan(self) -> GANLoss:
        if self.adversarial is None:
            raise ValueError(
                "SuperResolutionLoss: discriminator logits given, but there is no loss.adversarial"
            )
        return self.adversarial

    def describe(self) -> dict[str, object]:
        """Flat summary of the configured terms, for hyperparameter logging."""
        info: dict[str, object] = {"task": self.task}
        if self.pixel is not None:
            info.update(pixel_criterion=self.pixel.criterion, pixel_weight=self.pixel.weight)
        if self.perceptual is not None:
            info.update(
                perceptual_layer=self.perceptual.layer,
                perceptual_weight=self.perceptual.weight,
                perceptual_weights=self.perceptual.weights,
                pretrained_loaded=self.perceptual.pretrained_loaded,
            )
        if self.adversarial is not None:
            info.update(gan_type=self.adversarial.gan_type, gan_weight=self.adversarial.weight)
        return info
