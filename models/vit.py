"""Signal Vision Transformer for multi-lead ECG (the encoder of Turgut et al. 2025).

An ECG of shape ``(B, 1, leads, T)`` is cut into ``(p0, p1)`` patches (``(1, 100)`` by default: one
lead, 0.2 s at 500 Hz) and each patch becomes a token. The ``rows x cols = leads/p0 x T/p1`` grid is
flattened lead-major (``token = row * cols + col``), a cls token is prepended, and a stack of pre-norm
transformer blocks follows. Parameter names (and so state-dict keys) are those of the reference
implementation (oetu/mae, built on timm's ViT):

    cls_token (1, 1, D)            pos_embed (1, 1 + N, D)
    patch_embed.proj.{weight (D, C, p0, p1), bias (D,)}
    blocks.{i}.norm1 / attn.qkv (3D, D) / attn.proj / norm2 / mlp.fc1 (4D, D) / mlp.fc2 (D, 4D)
    norm                              (global_pool None or "cls")
    fc_norm                           (global_pool "avg" or "attention_pool", in place of norm)
    attention_pool.{in_proj_weight (3D, D), in_proj_bias, out_proj.weight, out_proj.bias}
    head (num_classes, D)             (num_classes > 0)

Pooling follows the reference's ``forward_features``: with ``cls`` the final ``norm`` is applied to
the tokens and the cls token is taken; with ``avg`` / ``attention_pool`` the block outputs are pooled
without ``norm`` (the reference deletes it) and ``fc_norm`` is applied once to the pooled vector (the
reference applies it a second time in ``forward_head``; we do not).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.pos_embed import resize_pos_embed, sincos_pos_embed_2d
from util.lr_decay import layer_id_for_vit
from util.schema import Bool, Choice, Float, Int, List, validate_args

__all__ = [
    "PatchEmbed",
    "Attention",
    "Mlp",
    "DropPath",
    "Block",
    "SignalViT",
    "random_masking",
    "init_vit_weights",
    "sincos_pos_embed_2d",
    "resize_pos_embed",
    "VIT_SIZES",
    "VIT_PARAMS",
]

LN_EPS = 1e-6
GLOBAL_POOLS = (None, "cls", "avg", "attention_pool")


def _pair(value: Sequence[int] | int, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"{name} must be (rows, cols), got {value}")
    return value  # type: ignore[return-value]


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens: ``(B, C, leads, T) -> (B, N, D)``, N = (leads/p0) * (T/p1).

    The parameters are those of ``Conv2d(C, D, kernel_size=patch, stride=patch)`` (``proj``). As
    stride equals kernel the conv is one linear map of each flattened ``(C, p0, p1)`` patch, and
    ``forward`` computes it as a single matmul (the same numbers, faster than the conv on CPU).
    A 3-D input ``(B, leads, T)`` is accepted when ``in_chans == 1``.
    """

    def __init__(
        self,
        input_size: Sequence[int] = (12, 2500),
        patch_size: Sequence[int] = (1, 100),
        in_chans: int = 1,
        embed_dim: int = 384,
    ) -> None:
        super().__init__()
        self.input_size = _pair(input_size, "input_size")
        self.patch_size = _pair(patch_size, "patch_size")
        (h, w), (p, q) = self.input_size, self.patch_size
        if p <= 0 or q <= 0 or h % p or w % q:
            raise ValueError(
                f"input size {self.input_size} (leads, time steps) is not divisible by the patch size "
                f"{self.patch_size}"
            )
        self.in_chans = int(in_chans)
        self.embed_dim = int(embed_dim)
        self.grid_size = (h // p, w // q)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(self.in_chans, self.embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` as ``(B, C, leads, T)``; a clear ValueError if it does not fit this embedding."""
        if x.dim() == 3 and self.in_chans == 1:
            x = x.unsqueeze(1)
        expected = (self.in_chans, *self.input_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            (h, w), (p, q) = self.input_size, self.patch_size
            shape = tuple(x.shape)
            hint = ""
            if x.dim() == 4 and (x.shape[-2] % p or x.shape[-1] % q):
                hint = f" ({shape[-2]} x {shape[-1]} is not divisible by the patch size {p} x {q})"
            raise ValueError(
                f"expected input of shape (B, {self.in_chans}, {h}, {w}) = (batch, channels, leads, time "
                f"steps), got {shape}{hint}"
            )
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.check_input(x)
        B, C = x.shape[:2]
        (rows, cols), (p, q) = self.grid_size, self.patch_size
        x = x.reshape(B, C, rows, p, cols, q).permute(0, 2, 4, 1, 3, 5).reshape(B, rows * cols, C * p * q)
        return F.linear(x, self.proj.weight.reshape(self.embed_dim, -1), self.proj.bias)  # (B, N, D)


class Attention(nn.Module):
    """Multi-head self-attention via ``F.scaled_dot_product_attention``: ``(B, N, D) -> (B, N, D)``."""

    def __init__(
        self, dim: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)  # 3 x (B, heads, N, head_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self._qkv(x)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, N, D)
        return self.proj_drop(self.proj(x))

    def attention_probs(self, x: torch.Tensor) -> torch.Tensor:
        """The softmax attention weights ``(B, heads, N, N)`` for ``x`` (for saliency maps, not training)."""
        q, k, _ = self._qkv(x)
        return ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)


class Mlp(nn.Module):
    """``fc1 -> GELU -> fc2``: ``(B, N, D) -> (B, N, D)`` with a hidden width of ``mlp_ratio * D``."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample with probability ``p`` (training only)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``; ``(B, N, D)``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def keyed_uniform(keys: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) noise (B, n) float64 that is a pure function of each sample's int64 key.

    A counter hash (PCG-style multiply + xorshift, wrapping int64 arithmetic) of ``key * n + j``:
    the same sample gets the same noise whatever batch or rank it lands in, which makes MAE masks
    independent of how a global batch is split across DDP ranks."""
    z = keys.to(device=device, dtype=torch.int64)[:, None] * n + torch.arange(n, device=device)
    z = z * 6364136223846793005 + 1442695040888963407
    z = z ^ ((z >> 29) & ((1 << 35) - 1))
    z = z * 5545529020109919103
    z = z ^ ((z >> 32) & 0xFFFFFFFF)
    return ((z >> 11) & ((1 << 53) - 1)).to(torch.float64) / float(1 << 53)


def random_masking(
    x: torch.Tensor, mask_ratio: float, generator: Optional[torch.Generator] = None,
    sample_keys: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking by argsort of uniform noise (small noise = keep).

    x: (B, L, D). Keeps ``int(L * (1 - mask_ratio))`` tokens per sample (note: floating point makes
    this 59, not 60, for L = 300 and ratio 0.8, exactly as the reference).
    Returns ``x_kept`` (B, K, D) in shuffled order, ``mask`` (B, L) float with 1 = removed, and
    ``ids_restore`` (B, L) that undoes the shuffle. The noise is drawn on ``generator``'s device (the
    input's device when no generator is given) so a CPU generator also seeds CUDA runs; with
    ``sample_keys`` (B,) it is ``keyed_uniform`` of the keys instead.
    """
    B, L, D = x.shape
    len_keep = int(L * (1 - mask_ratio))
    if sample_keys is not None:  # per-sample keys (from the dataset) instead of the generator
        noise = keyed_uniform(sample_keys, L, x.device)
    else:
        noise_device = generator.device if generator is not None else x.device
        noise = torch.rand(B, L, generator=generator, device=noise_device).to(x.device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # rank of each token in the shuffle
    ids_keep = ids_shuffle[:, :len_keep]
    x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))
    mask = (ids_restore >= len_keep).to(torch.float32)
    return x_kept, mask, ids_restore


@torch.no_grad()
def init_vit_weights(module: nn.Module) -> None:
    """Reference init: xavier_uniform for every Linear (bias 0), LayerNorm weight 1 / bias 0, and the
    patch conv initialised as a Linear (xavier on its weight viewed as (D, C*p0*p1)), bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, PatchEmbed):
            w = m.proj.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
            nn.init.zeros_(m.proj.bias)
        elif isinstance(m, nn.MultiheadAttention):
            nn.init.xavier_uniform_(m.in_proj_weight)
            nn.init.zeros_(m.in_proj_bias)


# the rules of the constructor arguments (also the model config's, via models.factory)
VIT_PARAMS = {
    "input_size": List(Int(min=1), length=2), "patch_size": List(Int(min=1), length=2), "in_chans": Int(min=1),
    "embed_dim": Int(min=1), "depth": Int(min=0), "num_heads": Int(min=1), "mlp_ratio": Float(min=0, min_open=True),
    "qkv_bias": Bool(), "drop_path_rate": Float(0, 1, max_open=True),
    "global_pool": Choice(*GLOBAL_POOLS[1:], nullable=True), "num_classes": Int(min=0), "learnable_pos_embed": Bool(),
}


class SignalViT(nn.Module):
    """ViT encoder / classifier for ``(B, 1, leads, T)`` signals.

    ``global_pool``: ``None`` -> ``forward_features`` returns all tokens ``(B, 1 + N, D)`` after
    ``norm``; ``"cls"`` -> ``norm`` then the cls token; ``"avg"`` -> mean of the patch tokens then
    ``fc_norm``; ``"attention_pool"`` -> ``nn.MultiheadAttention`` with query = mean of the patch tokens
    ``(B, 1, D)`` and keys/values = the patch tokens, then ``fc_norm``. ``num_classes > 0`` adds a
    linear ``head`` (needs a pooling). ``learnable_pos_embed=False`` freezes the sin-cos embedding.
    """

    def __init__(
        self,
        input_size: Sequence[int] = (12, 2500),
        patch_size: Sequence[int] = (1, 100),
        in_chans: int = 1,
        embed_dim: int = 384,
        depth: int = 3,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        global_pool: Optional[str] = None,
        num_classes: int = 0,
        learnable_pos_embed: bool = True,
    ) -> None:
        super().__init__()
        validate_args(VIT_PARAMS, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, depth=depth,
                      num_heads=num_heads, mlp_ratio=mlp_ratio, drop_path_rate=drop_path_rate,
                      global_pool=global_pool, num_classes=num_classes)
        if num_classes > 0 and global_pool is None:
            raise ValueError(
                "a classification head (num_classes > 0) needs global_pool 'cls', 'avg' or 'attention_pool'"
            )
        self.global_pool = global_pool
        self.num_classes = int(num_classes)
        self.embed_dim = int(embed_dim)

        self.patch_embed = PatchEmbed(input_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, embed_dim), requires_grad=learnable_pos_embed)

        dpr = torch.linspace(0, drop_path_rate, depth).tolist() if depth > 0 else []
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, drop_path=dpr[i]) for i in range(depth)
        )
        if global_pool in (None, "cls"):
            self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        else:
            self.fc_norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        if global_pool == "attention_pool":
            self.attention_pool = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        init_vit_weights(self)
        self.pos_embed.copy_(sincos_pos_embed_2d(self.embed_dim, self.patch_embed.grid_size, cls_token=True)[None])
        nn.init.normal_(self.cls_token, std=0.02)
        if isinstance(self.head, nn.Linear):
            # cut off at +-2 absolute (timm's and torch's default), as the reference: effectively N(0, 0.01)
            nn.init.trunc_normal_(self.head.weight, std=0.01)
            nn.init.zeros_(self.head.bias)

    # ---- helpers for the optimizer ---------------------------------------------------------------
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def num_layers(self) -> int:
        """Layer count for layer-wise LR decay: ``depth + 1`` (embeddings = 0, block k = k + 1)."""
        return len(self.blocks) + 1

    def layer_id(self, param_name: str) -> int:
        """Layer id of a parameter: 0 for cls_token / pos_embed / patch_embed, k + 1 for blocks.k,
        ``num_layers()`` for everything after the blocks (norms, pooling, head)."""
        return layer_id_for_vit(param_name, self.num_layers())

    # ---- forward ---------------------------------------------------------------------------------
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, leads, T) -> (B, 1 + N, D)``: patch tokens + pos embed, with the cls token first."""
        x = self.patch_embed(x) + self.pos_embed[:, 1:]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        return torch.cat([cls.to(x.dtype), x], dim=1)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, leads, T) -> (B, 1 + N, D)``: the tokens the pooling sees (after ``norm`` when the
        model has one, i.e. global_pool None / "cls"; raw block outputs for "avg" / "attention_pool")."""
        x = self.embed(x)
        for blk in self.blocks:
            x = blk(x)
        if self.global_pool in (None, "cls"):
            x = self.norm(x)
        return x

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, 1 + N, D) -> (B, D)`` per ``global_pool`` (identity when it is None)."""
        if self.global_pool is None:
            return tokens
        if self.global_pool == "cls":
            return tokens[:, 0]
        patches = tokens[:, 1:]
        if self.global_pool == "avg":
            pooled = patches.mean(dim=1)
        else:  # attention_pool
            query = patches.mean(dim=1, keepdim=True)  # (B, 1, D)
            pooled = self.attention_pool(query, patches, patches, need_weights=False)[0].squeeze(1)
        return self.fc_norm(pooled)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, leads, T) -> (B, D)`` pooled features (``(B, 1 + N, D)`` when global_pool is None)."""
        return self.pool(self.forward_tokens(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)``, or the features when there is no head."""
        return self.head(self.forward_features(x))

    @torch.no_grad()
    def last_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Attention weights of the last block, ``(B, heads, 1 + N, 1 + N)`` (for saliency maps)."""
        x = self.embed(x)
        for blk in self.blocks[:-1]:
            x = blk(x)
        last = self.blocks[-1]
        return last.attn.attention_probs(last.norm1(x))


# ---- sizes -------------------------------------------------------------------------------------------
# The one size table of the signal ViT family: encoder (embed_dim / depth / num_heads) and the MAE
# decoder (decoder_*). ``models.factory.build_network`` applies the columns a network takes.
VIT_SIZES: dict[str, dict[str, int]] = {
    "pluto": dict(embed_dim=256, depth=2, num_heads=8, decoder_embed_dim=160, decoder_depth=1, decoder_num_heads=8),
    # the paper's model
    "tiny": dict(embed_dim=384, depth=3, num_heads=6, decoder_embed_dim=256, decoder_depth=2, decoder_num_heads=8),
    "small": dict(embed_dim=512, depth=4, num_heads=8, decoder_embed_dim=256, decoder_depth=2, decoder_num_heads=8),
    "medium": dict(embed_dim=640, depth=5, num_heads=10, decoder_embed_dim=256, decoder_depth=2,
                   decoder_num_heads=8),
    "large": dict(embed_dim=864, depth=6, num_heads=12, decoder_embed_dim=256, decoder_depth=2, decoder_num_heads=8),
    "base": dict(embed_dim=768, depth=12, num_heads=12, decoder_embed_dim=512, decoder_depth=8,
                 decoder_num_heads=16),
}
