"""The reference notebook's training loop as a plain script, the peer of a short `python
train.py` run: the same network (from scratch, 3 classes), optimizer, batch size and number of
batches, with the notebook's data loading (a `DatasetFolder` reading each .npy file), then a
validation pass and its accuracy and AUC. The last line is JSON with the wall-clock times of the
first training batch and of the end of the validation pass.

python benchmarks/notebook_loop.py ROOT TRAIN_BATCHES VAL_BATCHES [BATCH_SIZE [ARCH]]
ARCH: small_resnet (lensexp's default, its defaults; one band as it is), or a torchvision
classifier such as mobilenet_v3_small or mobilenet_v3_large (the reference's; one band repeated
to RGB).
"""

import json
import sys
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader
from torchvision import models
from torchvision.datasets import DatasetFolder


def loader(folder: str, batch_size: int, shuffle: bool) -> DataLoader:
    def load(path: str) -> torch.Tensor:
        return torch.from_numpy(np.asarray(np.load(path), dtype=np.float32))

    dataset = DatasetFolder(folder, loader=load, extensions=(".npy",))
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle)


def main() -> None:
    root, n_train, n_val = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    batch_size = int(sys.argv[4]) if len(sys.argv) > 4 else 32
    arch = sys.argv[5] if len(sys.argv) > 5 else "small_resnet"
    torch.manual_seed(0)
    if arch == "small_resnet":
        # A notebook would hold a copy of the class; importing it keeps one definition.
        from lensexp.models.small_resnet import SmallResNet

        net, bands = SmallResNet(num_classes=3), 1
    else:
        net, bands = getattr(models, arch)(num_classes=3), 3
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    for i, (x, y) in enumerate(loader(f"{root}/train", batch_size, True)):
        if i == n_train:
            break
        if i == 0:
            first_batch = time.time()
        loss = loss_fn(net(x.expand(-1, bands, -1, -1)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    probs, labels = [], []
    with torch.no_grad():
        for i, (x, y) in enumerate(loader(f"{root}/val", batch_size, False)):
            if i == n_val:
                break
            probs.append(net(x.expand(-1, bands, -1, -1)).softmax(1))
            labels.append(y)
    p, y = torch.cat(probs).numpy(), torch.cat(labels).numpy()
    auc = roc_auc_score(np.eye(3)[y], p, average="micro")
    print(f"accuracy {(p.argmax(1) == y).mean():.3f} micro AUC {auc:.3f}")
    print(json.dumps({"first_batch": first_batch, "fit_end": time.time()}))


if __name__ == "__main__":
    main()
