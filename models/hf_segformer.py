"""Hugging Face SegFormer key names -> this project's (``seg2tflite.models.segformer`` / ``seg2tflite.models.mit``).

Covers the files people download from the Hub (``segformer.encoder.block.0.0.attention.self.query``
..., ``decode_head.linear_c.0.proj`` ...; what ``save_pretrained`` writes, for
``SegformerForSemanticSegmentation``, ``SegformerForImageClassification`` such as nvidia/mit-b0,
and a bare ``SegformerModel``) and the in-memory names of transformers 5
(``segformer.stages.0.blocks.0.attention.q_proj`` ...). Every tensor keeps its layout: HF's
linears, convs and norms are the same shapes as ours, and HF's ``linear_fuse`` is a bias-free
1x1 conv followed by ``batch_norm``, exactly like our ``linear_fuse`` + ``bn``.
"""

from __future__ import annotations

import re

import torch

# Encoder names after the optional "segformer." prefix, relative to our MixVisionTransformer.
_ENCODER_RULES = [
    # transformers 4 / Hub files
    (r"^encoder\.patch_embeddings\.(\d+)\.proj\.", r"stages.\1.patch_embed.proj."),
    (r"^encoder\.patch_embeddings\.(\d+)\.layer_norm\.", r"stages.\1.patch_embed.norm."),
    (r"^encoder\.block\.(\d+)\.(\d+)\.layer_norm_1\.", r"stages.\1.blocks.\2.norm1."),
    (r"^encoder\.block\.(\d+)\.(\d+)\.layer_norm_2\.", r"stages.\1.blocks.\2.norm2."),
    (r"^encoder\.block\.(\d+)\.(\d+)\.attention\.self\.query\.", r"stages.\1.blocks.\2.attn.q."),
    (r"^encoder\.block\.(\d+)\.(\d+)\.attention\.self\.key\.", r"stages.\1.blocks.\2.attn.k."),
    (r"^encoder\.block\.(\d+)\.(\d+)\.attention\.self\.value\.", r"stages.\1.blocks.\2.attn.v."),
    (r"^encoder\.block\.(\d+)\.(\d+)\.attention\.self\.sr\.", r"stages.\1.blocks.\2.attn.sr."),
    (r"^encoder\.block\.(\d+)\.(\d+)\.attention\.self\.layer_norm\.", r"stages.\1.blocks.\2.attn.norm."),
    (r"^encoder\.block\.(\d+)\.(\d+)\.attention\.output\.dense\.", r"stages.\1.blocks.\2.attn.proj."),
    (r"^encoder\.block\.(\d+)\.(\d+)\.mlp\.dense1\.", r"stages.\1.blocks.\2.mlp.fc1."),
    (r"^encoder\.block\.(\d+)\.(\d+)\.mlp\.dwconv\.dwconv\.", r"stages.\1.blocks.\2.mlp.dwconv."),
    (r"^encoder\.block\.(\d+)\.(\d+)\.mlp\.dense2\.", r"stages.\1.blocks.\2.mlp.fc2."),
    (r"^encoder\.layer_norm\.(\d+)\.", r"stages.\1.norm."),
    # transformers 5 in-memory names
    (r"^stages\.(\d+)\.patch_embeddings\.proj\.", r"stages.\1.patch_embed.proj."),
    (r"^stages\.(\d+)\.patch_embeddings\.layer_norm\.", r"stages.\1.patch_embed.norm."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.layernorm_before\.", r"stages.\1.blocks.\2.norm1."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.layernorm_after\.", r"stages.\1.blocks.\2.norm2."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.attention\.q_proj\.", r"stages.\1.blocks.\2.attn.q."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.attention\.k_proj\.", r"stages.\1.blocks.\2.attn.k."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.attention\.v_proj\.", r"stages.\1.blocks.\2.attn.v."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.attention\.o_proj\.", r"stages.\1.blocks.\2.attn.proj."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.attention\.sequence_reduction\.sequence_reduction\.", r"stages.\1.blocks.\2.attn.sr."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.attention\.sequence_reduction\.layer_norm\.", r"stages.\1.blocks.\2.attn.norm."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc1\.", r"stages.\1.blocks.\2.mlp.fc1."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.dwconv\.dwconv\.", r"stages.\1.blocks.\2.mlp.dwconv."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc2\.", r"stages.\1.blocks.\2.mlp.fc2."),
    (r"^stages\.(\d+)\.layer_norm\.", r"stages.\1.norm."),
]

# Decode head names, relative to our SegFormerHead ("decode_head.").
_HEAD_RULES = [
    (r"^decode_head\.linear_c\.(\d+)\.proj\.", r"linear_c.\1."),
    (r"^decode_head\.linear_projections\.(\d+)\.proj\.", r"linear_c.\1."),
    (r"^decode_head\.linear_fuse\.weight$", r"linear_fuse.weight"),
    (r"^decode_head\.batch_norm\.", r"bn."),
    (r"^decode_head\.classifier\.", r"classifier."),
]

# Keys that only HF names have; one of them marks a state dict as Hugging Face's.
_HF_MARKERS = re.compile(
    r"^(segformer\.|encoder\.(patch_embeddings|block|layer_norm)\.|stages\.\d+\.(patch_embeddings|layer_norm)\."
    r"|decode_head\.(linear_c\.\d+\.proj|linear_projections|batch_norm)\.)"
)


def is_hf_state_dict(state: dict[str, torch.Tensor]) -> bool:
    """Whether ``state`` uses Hugging Face SegFormer key names."""
    return any(_HF_MARKERS.match(k) for k in state)


def _apply(rules: list[tuple[str, str]], key: str) -> str | None:
    for pattern, repl in rules:
        new, count = re.subn(pattern, repl, key)
        if count:
            return new
    return None


def map_hf_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename every HF key to ours; return ``(mapped, unmapped_keys)``.

    Mapped names are relative to ``SegFormer``: ``encoder.*`` (``encoder.head.*`` for the
    ImageNet classifier of an image-classification checkpoint) and ``decode_head.*``.
    """
    mapped: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, value in state.items():
        body = key[len("segformer.") :] if key.startswith("segformer.") else key
        new = _apply(_ENCODER_RULES, body)
        if new is not None:
            new = "encoder." + new
        elif (new := _apply(_HEAD_RULES, key)) is not None:
            new = "decode_head." + new
        elif re.match(r"^classifier\.(weight|bias)$", key):
            new = "encoder.head." + key.split(".", 1)[1]
        if new is None or new in mapped:
            unmapped.append(key)
        else:
            mapped[new] = value
    return mapped, unmapped
