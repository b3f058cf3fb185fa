"""Network architectures (plain `nn.Module`s) and pretrained-weight loading."""
