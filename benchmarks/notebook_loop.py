"""The reference notebook's training loop as a plain script, the peer of a short `python
train.py` run: the same network (MobileNetV3-Large from scratch, 3 classes, one band repeated
to RGB), optimizer, batch size and number of batches, with the notebook's data loading (a
`DatasetFolder` reading each .npy file), then a validation pass and its accuracy and AUC.

python benchmarks/notebook_loop.py ROOT TRAIN_BATCHES VAL_BATCHES [BATCH_SIZE]
"""

import sys
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader
from torchvision.datasets import DatasetFolder
from torchvision.models import mobilenet_v3_large


def loader(folder: str, batch_size: int, shuffle: bool) -> DataLoader:
    def load(path: str) -> torch.Tensor:
        return torch.from_numpy(np.asarray(np.load(path), dtype=np.float32))

    dataset = DatasetFolder(folder, loader=load, extensions=(".npy",))
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle)


def main() -> None:
    root, n_train, n_val = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    batch_size = int(sys.argv[4]) if len(sys.argv) > 4 else 32
    torch.manual_seed(0)
    net = mobilenet_v3_large(num_classes=3)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    for i, (x, y) in enumerate(loader(f"{root}/train", batch_size, True)):
        if i == n_train:
            break
        loss = loss_fn(net(x.expand(-1, 3, -1, -1)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    probs, labels = [], []
    with torch.no_grad():
        for i, (x, y) in enumerate(loader(f"{root}/val", batch_size, False)):
            if i == n_val:
                break
            probs.append(net(x.expand(-1, 3, -1, -1)).softmax(1))
            labels.append(y)
    p, y = torch.cat(probs).numpy(), torch.cat(labels).numpy()
    auc = roc_auc_score(np.eye(3)[y], p, average="micro")
    print(f"accuracy {(p.argmax(1) == y).mean():.3f} micro AUC {auc:.3f} at {time.time():.0f}")


if __name__ == "__main__":
    main()
