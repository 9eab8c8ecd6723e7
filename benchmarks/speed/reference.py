"""The per-image reference pipeline the original recipes use, for side-by-side comparisons:
PIL images through torchvision transforms in a worker ``DataLoader``, and an eager training loop
with the same networks and loss."""

from __future__ import annotations

import time
from typing import Any

import torch

from benchmarks.speed.timing import synchronize


class PILViews(torch.utils.data.Dataset):
    """uint8 images served as PIL images, ``n_views`` independently transformed views per item.

    This is how the original recipes feed their models: one Python call per image and view.
    ``multi_view=True`` is for transforms that return the list of views themselves (lightly's).
    """

    def __init__(self, images: torch.Tensor, transform: Any, n_views: int = 2,
                 multi_view: bool = False):
        self.images = images.numpy()
        self.transform = transform
        self.n_views = n_views
        self.multi_view = multi_view

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        array = self.images[i]
        image = Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0))
        if self.multi_view:
            return torch.stack(list(self.transform(image)))
        return torch.stack([self.transform(image) for _ in range(self.n_views)])


def torchvision_transform(augment: Any, size: int) -> Any:
    """The per-image torchvision pipeline equivalent to a selfsup ``AugmentConfig``."""
    import torchvision.transforms as T

    steps: list[Any] = []
    if augment.pre_resize:
        steps.append(T.Resize((augment.pre_resize, augment.pre_resize), antialias=True))
    jitter = []
    if augment.jitter_prob and any(augment.jitter):
        jitter = [T.RandomApply([T.ColorJitter(*augment.jitter)], p=augment.jitter_prob)]
    if augment.jitter_first:
        steps += jitter
    crop = T.RandomResizedCrop(size, scale=tuple(augment.crop_scale),
                               ratio=tuple(augment.crop_ratio), antialias=True)
    steps.append(crop if augment.crop_prob >= 1 else T.RandomApply([crop], p=augment.crop_prob))
    if augment.hflip:
        steps.append(T.RandomHorizontalFlip(augment.hflip))
    if augment.vflip:
        steps.append(T.RandomVerticalFlip(augment.vflip))
    if not augment.jitter_first:
        steps += jitter
    if augment.grayscale:
        steps.append(T.RandomGrayscale(augment.grayscale))
    if augment.blur_prob:
        kernel = augment.blur_kernel or (size // 10) * 2 + 1
        steps.append(T.RandomApply([T.GaussianBlur(kernel, tuple(augment.blur_sigma))],
                                   p=augment.blur_prob))
    if augment.solarize_prob:
        steps.append(T.RandomSolarize(128, p=augment.solarize_prob))
    steps.append(T.ToTensor())
    if augment.normalize and augment.mean:
        steps.append(T.Normalize(augment.mean, augment.std))
    return T.Compose(steps)


def reference_loop(
    params: list[torch.nn.Parameter], loss_of_views: Any, views: PILViews, steps: int,
    warmup: int, batch: int, workers: int, device: torch.device,
) -> float:
    """The original recipes' loop: a worker DataLoader of per-image transforms, pinned host
    batches copied to ``device``, an eager step with Adam. Returns samples/s after ``warmup``.

    ``loss_of_views`` maps a float batch of views (B, J, C, H, W) on ``device`` to the loss.
    """
    opt = torch.optim.Adam(params, lr=1e-3)
    loader = torch.utils.data.DataLoader(
        views, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
        persistent_workers=workers > 0, pin_memory=device.type == "cuda",
    )
    times = []
    done = 0
    while done < steps:
        for batch_views in loader:
            loss = loss_of_views(batch_views.to(device, non_blocking=True))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            synchronize(device)
            times.append(time.perf_counter())
            done += 1
            if done >= steps:
                break
    t = times[warmup:]
    return (len(t) - 1) * batch / (t[-1] - t[0])


def joint_embedding_loss(method: Any, loss_fn: Any) -> Any:
    """Views (B, 2, ...) -> loss_fn(projector(backbone(view 1)), projector(backbone(view 2))).

    ``loss_fn`` returns the loss, or a dict of terms holding it under ``"loss"`` (selfsup's).
    """
    def loss(views: torch.Tensor) -> torch.Tensor:
        za = method.projector(method.backbone(views[:, 0]))
        zb = method.projector(method.backbone(views[:, 1]))
        out = loss_fn(za, zb)
        return out["loss"] if isinstance(out, dict) else out
    return loss


def simvae_views_loss(method: Any) -> Any:
    """Views (B, J, ...) -> SimVAE's loss on the sample-major rows, as its training step."""
    from selfsup.losses.vae import reparameterize

    def loss(views: torch.Tensor) -> torch.Tensor:
        x = views.flatten(0, 1)
        mu, logvar = method.posterior(x)
        return method.objective(x, reparameterize(mu, logvar), mu, logvar)["loss"].mean()
    return loss
