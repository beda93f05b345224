"""Tiny configurations of the classes SDCI uses (open_clip CLIP, transformers DINO), for CPU tests.

SDCI compares DINO features with CLIP's text embeddings, so the DINO width equals CLIP's embed_dim.
"""

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 28, "patch_size": 14, "width": 32, "layers": 3, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TINY_DINO_V2 = {
    "model_type": "dinov2_with_registers", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
    "mlp_ratio": 2, "patch_size": 14, "image_size": 56, "num_register_tokens": 4,
}
TINY_DINO_V1 = {
    "model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
    "intermediate_size": 64, "patch_size": 8, "image_size": 32,
}
TINY_SDCI = {"clip_pretrained": None, "clip_config": TINY_CLIP, "clip_size": 56, "dino_pretrained": False,
             "dino_config": TINY_DINO_V2, "dino_size": 70, "knn": 5}
