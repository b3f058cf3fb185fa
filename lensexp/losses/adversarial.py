"""GAN loss with BasicSR's semantics: one object for the generator and discriminator terms.

A function of discriminator logits only: the discriminator itself belongs to the training module
(`lensexp.tasks.superres.AdversarialSRModule`), which runs it and passes the logits in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lensexp.checks import check_choice

GAN_TYPES = ("vanilla", "lsgan", "hinge")


class GANLoss(nn.Module):
    """Adversarial loss on discriminator logits.

    - `vanilla`: binary cross-entropy with logits against 1 (real) / 0 (fake);
    - `lsgan`: mean squared error against 1 / 0;
    - `hinge`: discriminator mean(relu(1 - x)) for real and mean(relu(1 + x)) for fake; the
      generator term is -mean(x).

    `weight` multiplies the generator's term only (`is_discriminator=False`); the discriminator's
    loss is unweighted, as in BasicSR.
    """

    def __init__(self, gan_type: str = "vanilla", weight: float = 5e-3) -> None:
        super().__init__()
        self.gan_type = check_choice("loss.adversarial.gan_type", gan_type, GAN_TYPES)
        self.weight = float(weight)

    def forward(
        self, logits: Tensor, target_is_real: bool, is_discriminator: bool = False
    ) -> Tensor:
        if self.gan_type == "hinge":
            if is_discriminator:
                margin = 1 - logits if target_is_real else 1 + logits
                loss = F.relu(margin).mean()
            else:
                # The generator wants high logits on its output whatever the label says.
                loss = -logits.mean()
        else:
            target = torch.full_like(logits, 1.0 if target_is_real else 0.0)
            if self.gan_type == "vanilla":
                loss = F.binary_cross_entropy_with_logits(logits, target)
            else:
                loss = F.mse_loss(logits, target)
        return loss if is_discriminator else self.weight * loss

    def discriminator_loss(
        self, real_logits: Tensor, fake_logits: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The discriminator's loss on logits of real and of (detached) SR images: real + fake.

        Terms: `real` and `fake` (the two halves) and `real_logit`/`fake_logit` (mean logits,
        detached, for monitoring).
        """
        real = self(real_logits, True, is_discriminator=True)
        fake = self(fake_logits, False, is_discriminator=True)
        terms = {
            "real": real,
            "fake": fake,
            "real_logit": real_logits.detach().mean(),
            "fake_logit": fake_logits.detach().mean(),
        }
        return real + fake, terms

    def extra_repr(self) -> str:
        return f"gan_type={self.gan_type}, weight={self.weight}"
