"""Loading the authors' released checkpoints: their parameter names mapped onto rsseg's networks.

One module per method, each with a pure ``convert_state_dict`` (released names → rsseg's) and a loader for the
released file format that loads strictly and names the file and the keys when something does not fit:

* :mod:`rsseg.models.released.d2ls` — ``load_released_checkpoint(net, path)``: the GeoSeg/Lightning ``.ckpt``;
* :mod:`rsseg.models.released.lavt` — ``load_released_checkpoint``: LAVT's ``.pth`` (DANet's baseline);
* :mod:`rsseg.models.released.idgbr` — ``load_released_checkpoint`` (the diffusers folders) and
  ``load_released_label_embedding`` (the shipped ``labelembednet`` weights);
* :mod:`rsseg.models.released.sdci` — ``load_released_checkpoint(model, clip_path, dino_path)``: OpenAI's CLIP
  and the torch-hub DINOv2 files.

Parity with each released forward pass is pinned by tests/test_parity_*.py (fixtures: tests/data/parity/).
"""
