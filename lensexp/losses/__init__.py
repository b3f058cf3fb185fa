"""Losses: small `nn.Module`s that carry their own weight."""
