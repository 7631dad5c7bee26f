"""Fixed sine-cosine positional embeddings for the signal ViT, and resizing of learned ones.

The token grid of an ECG is ``rows x cols = leads/p0 x T/p1`` (12 x 25 for a 12 x 2500 input and
1 x 100 patches), flattened lead-major: ``token = row * cols + col``.

2D embedding of a ``D``-dim token at (row, col) (the reference's ``get_2d_sincos_pos_embed``):

    emb[0     : D/2] = 1d(D/2, col)      # time (column) index
    emb[D/2   : D  ] = 1d(D/2, row)      # lead (row) index
    1d(E, pos)     = [sin(pos * w_0..w_{E/2-1}), cos(pos * w_0..w_{E/2-1})],  w_i = 10000^(-i / (E/2))

so with ``E = D/2`` the frequencies are ``w_i = 10000^(-i / (D/4))``, ``i = 0 .. D/4 - 1``. With
``cls_token=True`` a zero row is prepended (the cls token carries no position).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["sincos_pos_embed_1d", "sincos_pos_embed_2d", "resize_pos_embed"]


def sincos_pos_embed_1d(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """1D sin-cos embedding: positions (M,) -> (M, embed_dim), float64, ``[sin | cos]`` halves."""
    if embed_dim % 2:
        raise ValueError(f"1D sin-cos embedding needs an even dimension, got {embed_dim}")
    half = embed_dim // 2
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / half)  # (E/2,)
    angles = positions.to(torch.float64).reshape(-1, 1) * omega.reshape(1, -1)  # (M, E/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_pos_embed_2d(embed_dim: int, grid_size: Sequence[int], cls_token: bool = True) -> torch.Tensor:
    """2D sin-cos embedding of a (rows, cols) token grid, flattened lead-major.

    Returns a float32 tensor of shape ``(1 + rows*cols, D)`` (cls row of zeros first) or
    ``(rows*cols, D)``. Dims ``[0:D/2]`` encode the column (time) index, ``[D/2:D]`` the row
    (lead) index. ``D`` must be divisible by 4.
    """
    if embed_dim % 4:
        raise ValueError(f"2D sin-cos embedding needs a dimension divisible by 4, got {embed_dim}")
    rows, cols = (int(g) for g in grid_size)
    row_idx = torch.arange(rows).repeat_interleave(cols)  # (rows*cols,) 0,0,..,1,1,..
    col_idx = torch.arange(cols).repeat(rows)  # (rows*cols,) 0,1,..,0,1,..
    emb = torch.cat(
        [sincos_pos_embed_1d(embed_dim // 2, col_idx), sincos_pos_embed_1d(embed_dim // 2, row_idx)], dim=1
    )
    if cls_token:
        emb = torch.cat([torch.zeros(1, embed_dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()


def resize_pos_embed(
    pos_embed: torch.Tensor,
    old_grid: Sequence[int],
    new_grid: Sequence[int],
    num_prefix_tokens: int = 1,
    mode: str = "bicubic",
) -> torch.Tensor:
    """Resize a (1, prefix + rows*cols, D) positional embedding to a new token grid.

    The prefix (cls) rows are kept; the grid rows are interpolated as a (D, rows, cols) image
    (bicubic, ``align_corners=False``, as the reference does for a changed time grid).
    """
    old_rows, old_cols = (int(g) for g in old_grid)
    new_rows, new_cols = (int(g) for g in new_grid)
    if pos_embed.dim() != 3 or pos_embed.shape[1] != num_prefix_tokens + old_rows * old_cols:
        raise ValueError(
            f"pos_embed of shape {tuple(pos_embed.shape)} does not match a {old_rows}x{old_cols} grid "
            f"with {num_prefix_tokens} prefix token(s)"
        )
    if (old_rows, old_cols) == (new_rows, new_cols):
        return pos_embed
    dim = pos_embed.shape[-1]
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    grid = grid.reshape(1, old_rows, old_cols, dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new_rows, new_cols), mode=mode, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_rows * new_cols, dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)

