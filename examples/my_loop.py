"""A training loop of one's own, recorded by zigzag: full-batch Adam on blobs.npz (make_data.py) with the MLP of
mlp.py, writing my_loop.h5 next to this script, which config.yaml's run ``my_loop`` reads as a trajectory run."""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from mlp import mlp  # this script's folder is on sys.path when it runs as `python examples/my_loop.py`

from zigzag import Recorder

HERE = Path(__file__).resolve().parent
STEPS, LR, LAGS, SEED = 100, 0.01, 8, 0


def main():
    torch.set_num_threads(1)  # a model this small is fastest on one thread (the workflow trains on one too)
    data = np.load(HERE / "blobs.npz")
    x, y = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"])
    torch.manual_seed(SEED)
    model = mlp(num_classes=int(y.max()) + 1, in_channels=x.shape[1], image_size=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    settings = {"seed": SEED, "lr": LR, "optimizer": "adam", "loss": "cross_entropy"}
    with Recorder(HERE / "my_loop.h5", model, lags=LAGS, settings=settings, n_train=len(y)) as recorder:
        for _ in range(STEPS):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            recorder.record(loss=loss.item(), lr=optimizer.param_groups[0]["lr"])  # after backward, before step
            optimizer.step()
    print(f"wrote {HERE / 'my_loop.h5'}: {STEPS} steps, last loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
