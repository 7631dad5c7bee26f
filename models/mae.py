"""Signal masked autoencoder (MAE) for multi-lead ECG, as in Turgut et al. 2025 (oetu/mae).

The encoder is the signal ViT (``models.vit``) run on the visible patches only; a light decoder
sees the encoded visible tokens plus a shared ``mask_token`` at every removed position and
predicts every patch. All parameters sit at the module root under the reference names, so an
oetu/mae checkpoint's ``model`` dict loads with ``load_state_dict(strict=True)``:

    encoder   cls_token (1,1,D)  pos_embed (1,1+L,D) [frozen sin-cos]  patch_embed.proj.*  blocks.{i}.*  norm
    decoder   mask_token (1,1,Dd)  decoder_pos_embed (1,1+L,Dd) [frozen sin-cos]  decoder_embed (Dd,D)
              decoder_blocks.{j}.*  decoder_norm  decoder_pred (p0*p1*C, Dd)

Both pos embeds are ``nn.Parameter(requires_grad=False)`` (as in the reference), so they are in
``state_dict()`` and in ``parameters()`` but never get gradients.

The loss is ``models.losses.ReconstructionLoss``: ``(1 - ncc_weight) * MSE + ncc_weight * (1 - NCC)``,
the MSE over the removed patches (``loss_on="masked"``) or all of them (``"all"``, oetu/mae).

``models.objectives.MAEPretraining`` is the pretraining objective: it wraps a ``SignalMAE`` as
``net``, feeds it the batch's signal field with the per-sample keys (so a sample's mask is the same
on any rank and in any batch), draws the reconstruction figure, and exports the encoder.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

from models.losses import RECONSTRUCTION_PARAMS, ReconstructionLoss
from models.pos_embed import sincos_pos_embed_2d
from models.vit import LN_EPS, VIT_PARAMS, Block, PatchEmbed, init_vit_weights, random_masking
from util.schema import Bool, Float, Int, validate_args

MAE_PARAMS = {
    **{k: VIT_PARAMS[k] for k in ("input_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads",
                                  "mlp_ratio")},
    "decoder_embed_dim": Int(min=1), "decoder_depth": Int(min=0), "decoder_num_heads": Int(min=1),
    "mask_ratio": Float(0, 1, max_open=True), "norm_pix_loss": Bool(), **RECONSTRUCTION_PARAMS,
}

__all__ = ["SignalMAE", "MAE_PARAMS", "patchify", "unpatchify"]


def patchify(x: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
    """``(B, C, H, W) -> (B, L, p*q*C)``; tokens lead-major, each patch flattened in (p, q, C) order."""
    B, C, H, W = x.shape
    p, q = patch_size
    h, w = H // p, W // q
    x = x.reshape(B, C, h, p, w, q).permute(0, 2, 4, 3, 5, 1)  # (B, h, w, p, q, C)
    return x.reshape(B, h * w, p * q * C)


def unpatchify(x: torch.Tensor, patch_size: Sequence[int], grid_size: Sequence[int]) -> torch.Tensor:
    """``(B, L, p*q*C) -> (B, C, H, W)``, the inverse of :func:`patchify`."""
    B, L, P = x.shape
    p, q = patch_size
    h, w = grid_size
    if L != h * w or P % (p * q):
        raise ValueError(
            f"cannot unpatchify {tuple(x.shape)} with patch {tuple(patch_size)} and grid {tuple(grid_size)}"
        )
    C = P // (p * q)
    x = x.reshape(B, h, w, p, q, C).permute(0, 5, 1, 3, 2, 4)  # (B, C, h, p, w, q)
    return x.reshape(B, C, h * p, w * q)


class SignalMAE(nn.Module):
    """Masked autoencoder on ``(B, 1, leads, T)`` signals (a 3-D ``(B, leads, T)`` input is accepted).

    ``forward(x)`` returns a dict: ``loss`` (0-dim, to backprop), detached 0-dim ``loss_mse``,
    ``loss_ncc`` (= 1 - ncc), ``ncc``, ``ncc_masked``, and the tensors ``pred`` (B, L, p0*p1*C) and ``mask``
    (B, L; 1 = removed).
    """

    def __init__(
        self,
        input_size: Sequence[int] = (12, 2500),
        patch_size: Sequence[int] = (1, 100),
        in_chans: int = 1,
        embed_dim: int = 384,
        depth: int = 3,
        num_heads: int = 6,
        decoder_embed_dim: int = 256,
        decoder_depth: int = 2,
        decoder_num_heads: int = 8,
        mlp_ratio: float = 4.0,
        mask_ratio: float = 0.8,
        ncc_weight: float = 0.1,
        norm_pix_loss: bool = False,
        loss_on: str = "masked",
    ) -> None:
        super().__init__()
        validate_args(MAE_PARAMS, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, depth=depth,
                      num_heads=num_heads, decoder_embed_dim=decoder_embed_dim, decoder_depth=decoder_depth,
                      decoder_num_heads=decoder_num_heads, mlp_ratio=mlp_ratio, mask_ratio=mask_ratio,
                      norm_pix_loss=norm_pix_loss)
        self.mask_ratio = float(mask_ratio)
        self.loss_fn = ReconstructionLoss(ncc_weight=ncc_weight, norm_pix_loss=norm_pix_loss, loss_on=loss_on)

        # encoder
        self.patch_embed = PatchEmbed(input_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        patch_dim = self.patch_embed.patch_size[0] * self.patch_embed.patch_size[1] * in_chans
        if norm_pix_loss and patch_dim < 2:
            raise ValueError("norm_pix_loss needs patches of at least 2 values")
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)

        # decoder
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, 1 + num_patches, decoder_embed_dim), requires_grad=False
        )
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True) for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=LN_EPS)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_dim)
        self.init_weights()

    @property
    def norm_pix_loss(self) -> bool:
        return self.loss_fn.norm_pix_loss

    @torch.no_grad()
    def init_weights(self) -> None:
        init_vit_weights(self)
        grid = self.patch_embed.grid_size
        self.pos_embed.copy_(sincos_pos_embed_2d(self.pos_embed.shape[-1], grid, cls_token=True)[None])
        self.decoder_pos_embed.copy_(sincos_pos_embed_2d(self.decoder_pos_embed.shape[-1], grid, cls_token=True)[None])
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        """Names exempt from weight decay besides biases / 1-D params. As in the reference pretraining
        (which exempts only 1-D params and biases), cls_token and mask_token ARE decayed; the pos
        embeds are frozen and never reach the optimizer."""
        return {"pos_embed", "decoder_pos_embed"}

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's entries (cls_token, pos_embed, patch_embed, blocks, norm) for ``SignalViT``."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(("decoder_", "mask_token"))}

    # ---- patches -----------------------------------------------------------------------------------
    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, leads, T) -> (B, L, p0*p1*C)``."""
        return patchify(self.patch_embed.check_input(x), self.patch_embed.patch_size)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, L, p0*p1*C) -> (B, C, leads, T)``."""
        return unpatchify(x, self.patch_embed.patch_size, self.patch_embed.grid_size)

    # ---- forward -----------------------------------------------------------------------------------
    def forward_encoder(
        self, x: torch.Tensor, mask_ratio: float, generator: Optional[torch.Generator] = None,
        sample_keys: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, C, leads, T)`` -> latent (B, 1 + K, D) of the K visible patches, mask (B, L), ids_restore (B, L)."""
        x = self.patch_embed(x) + self.pos_embed[:, 1:]
        x, mask, ids_restore = random_masking(x, mask_ratio, generator, sample_keys)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls.to(x.dtype), x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent (B, 1 + K, D), ids_restore (B, L) -> prediction (B, L, p0*p1*C) for every patch."""
        x = self.decoder_embed(latent)  # (B, 1 + K, Dd)
        B, K1, Dd = x.shape
        L = ids_restore.shape[1]
        mask_tokens = self.mask_token.to(x.dtype).expand(B, L + 1 - K1, Dd)
        patches = torch.cat([x[:, 1:], mask_tokens], dim=1)  # shuffled order
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, Dd))  # original order
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        return self.decoder_pred(x[:, 1:])  # drop the cls token before predicting

    def mask_signal(self, mask: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """mask (B, L) -> (B, C, leads, T), each patch's value over its samples (``pred`` gives P)."""
        return self.unpatchify(mask.to(pred.dtype).unsqueeze(-1).expand(-1, -1, pred.shape[-1]))

    def forward_loss(self, x: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (B, C, leads, T), pred (B, L, p0*p1*C), mask (B, L) -> loss dict (float32, autocast off)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            x, pred, mask = x.float(), pred.float(), mask.float()
            return self.loss_fn(x, self.patchify(x), pred, self.unpatchify(pred), mask, self.mask_signal(mask, pred))

    def forward(
        self, x: torch.Tensor, mask_ratio: Optional[float] = None, generator: Optional[torch.Generator] = None,
        sample_keys: Optional[torch.Tensor] = None,
    ) -> dict[str, torch.Tensor]:
        """x (B, 1, leads, T) -> {loss, loss_mse, loss_ncc, ncc, ncc_masked, pred (B, L, p0*p1*C), mask (B, L)}.

        ``mask_ratio`` defaults to the constructor's; ``generator`` seeds the masking noise, or, when
        given, the per-sample ``sample_keys`` (B,) int64 from the dataset fix each sample's mask.
        """
        x = self.patch_embed.check_input(x)
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.forward_encoder(x, ratio, generator, sample_keys)
        pred = self.forward_decoder(latent, ids_restore)
        out = self.forward_loss(x, pred, mask)
        out["pred"] = pred
        out["mask"] = mask
        return out

    @torch.no_grad()
    def reconstruct(
        self, x: torch.Tensor, generator: Optional[torch.Generator] = None, mask_ratio: Optional[float] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For figures: (recon (B, C, leads, T), mask_signal (B, C, leads, T) with 1 where masked).

        ``recon`` is the full prediction (visible patches predicted too, not pasted in). With
        ``norm_pix_loss`` it is mapped back to signal units with each input patch's mean and std.
        """
        x = self.patch_embed.check_input(x)
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.forward_encoder(x, ratio, generator)
        pred = self.forward_decoder(latent, ids_restore).float()
        if self.norm_pix_loss:
            target = self.patchify(x.float())
            pred = pred * (target.var(dim=-1, keepdim=True) + 1e-6).sqrt() + target.mean(dim=-1, keepdim=True)
        return self.unpatchify(pred), self.mask_signal(mask, pred)


