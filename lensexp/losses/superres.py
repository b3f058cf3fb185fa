"""The super-resolution loss object that the `loss` config group instantiates.

It combines a pixel term, an optional VGG perceptual term and an optional adversarial term, and
owns the discriminator when there is one (so the discriminator is saved in checkpoints with the
training module). The training module runs the steps in BasicSR's order:

    g_loss, terms = loss(sr, hr, step)            # generator step; discriminator frozen inside
    d_loss, d_terms = loss.discriminator_loss(sr, hr)   # then a discriminator step on detached sr
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import Tensor, nn

from lensexp.errors import LensexpError
from lensexp.losses.adversarial import GANLoss
from lensexp.losses.perceptual import PerceptualLoss
from lensexp.losses.pixel import PixelLoss


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Turn off `requires_grad` on `module`'s parameters for the duration.

    Autograd records `requires_grad` when the graph is built, so a backward pass run after the
    block still leaves these parameters without gradients while gradients flow through them.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class SuperResolutionLoss(nn.Module):
    """Weighted sum of pixel, perceptual and adversarial terms for an SR generator.

    `perceptual` is a built PerceptualLoss, or (as the configs give it) a callable that builds
    one from `weights`, the VGG19 weights option `loss.weights` (imagenet | random | a path).
    `discriminator` is required exactly when `adversarial` is given. During the first
    `discriminator_warmup_steps` generator steps the adversarial term is left out (pixel and
    perceptual only); `discriminator_loss` may be used throughout.
    """

    task = "superres"

    def __init__(
        self,
        pixel: PixelLoss | None = None,
        perceptual: PerceptualLoss | Callable[..., PerceptualLoss] | None = None,
        adversarial: GANLoss | None = None,
        discriminator: nn.Module | None = None,
        discriminator_warmup_steps: int = 0,
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
        if (adversarial is None) != (discriminator is None):
            missing = "loss.discriminator" if discriminator is None else "loss.adversarial"
            raise LensexpError(
                f"loss: an adversarial term needs both loss.adversarial and loss.discriminator; "
                f"{missing} is missing (use loss=adversarial or loss=srgan)."
            )
        if int(discriminator_warmup_steps) < 0:
            raise LensexpError(
                f"loss.discriminator_warmup_steps={discriminator_warmup_steps}: must be >= 0."
            )
        if (
            adversarial is not None
            and discriminator_warmup_steps
            and pixel is None
            and perceptual is None
        ):
            raise LensexpError(
                "loss.discriminator_warmup_steps needs a pixel or perceptual term to train the "
                "generator during the warm-up; add loss.pixel or set it to 0."
            )
        self.pixel = pixel
        self.perceptual = perceptual
        self.adversarial = adversarial
        self.discriminator = discriminator
        self.discriminator_warmup_steps = int(discriminator_warmup_steps)

    @property
    def uses_discriminator(self) -> bool:
        """Whether there is a discriminator to optimise (adversarial training)."""
        return self.discriminator is not None

    @property
    def pretrained_loaded(self) -> bool | None:
        """Whether the perceptual VGG has pretrained weights; None without a perceptual term."""
        return None if self.perceptual is None else self.perceptual.pretrained_loaded

    def adversarial_active(self, step: int) -> bool:
        """Whether generator step `step` (0-based) includes the adversarial term."""
        return self.uses_discriminator and step >= self.discriminator_warmup_steps

    def forward(self, sr: Tensor, hr: Tensor, step: int = 0) -> tuple[Tensor, dict[str, Tensor]]:
        """Total generator loss and its weighted terms (`pixel`, `perceptual`, `adversarial`)."""
        terms: dict[str, Tensor] = {}
        if self.pixel is not None:
            terms["pixel"] = self.pixel(sr, hr)
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual(sr, hr)
        if self.adversarial is not None and self.adversarial_active(step):
            # Gradients reach sr through the discriminator but never its parameters.
            with frozen(self.discriminator):
                logits = self.discriminator(sr)
            terms["adversarial"] = self.adversarial(logits, True, is_discriminator=False)
        return sum(terms.values()), terms  # type: ignore[return-value]

    def discriminator_loss(self, sr: Tensor, hr: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Discriminator loss on real `hr` and detached `sr`: (real + fake, terms).

        Terms: `real` and `fake` (the two loss halves) and `real_logit`/`fake_logit` (mean
        logits, detached, for monitoring).
        """
        if self.discriminator is None or self.adversarial is None:
            raise RuntimeError("discriminator_loss called on a loss without a discriminator")
        real_logits = self.discriminator(hr)
        fake_logits = self.discriminator(sr.detach())
        real = self.adversarial(real_logits, True, is_discriminator=True)
        fake = self.adversarial(fake_logits, False, is_discriminator=True)
        terms = {
            "real": real,
            "fake": fake,
            "real_logit": real_logits.detach().mean(),
            "fake_logit": fake_logits.detach().mean(),
        }
        return real + fake, terms

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
            info.update(
                gan_type=self.adversarial.gan_type,
                gan_weight=self.adversarial.weight,
                discriminator_warmup_steps=self.discriminator_warmup_steps,
            )
        return info
