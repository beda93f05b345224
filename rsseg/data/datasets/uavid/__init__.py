"""UAVid: label convention and protocols (``labels``), preparation of the release into patches
(``prepare``), dataset and datamodule over a prepared root (``datamodule``).

Raw layout (docs/datasets.md §2), as the official release extracts, anywhere under ``--src``::

    uavid_train/seq1/Images/000000.png   uavid_train/seq1/Labels/000000.png   20 sequences × 10 frames
    uavid_val/seq16/Images/...           uavid_val/seq16/Labels/...           7 sequences × 10 frames
    uavid_test/seq21/Images/...                                               15 sequences × 10 frames, no labels

Frames are 3840×2160 or 4096×2160 RGB PNGs; labels are RGB colour PNGs with the same names. An image
is paired with the label of the same sequence and frame name (never by zipping two listings, the bug
risk of GeoSeg's ``uavid_patch_split.py``); sequences sort numerically (seq2 before seq10).

Class indices follow the official UAVidToolKit order (``colorTransformer.py``, its "trainId")::

    index  class                RGB             GeoSeg index
    0      background clutter   (0, 0, 0)       7
    1      building             (128, 0, 0)     0
    2      road                 (128, 64, 128)  1
    3      static car           (192, 0, 192)   5
    4      tree                 (0, 128, 0)     2
    5      low vegetation       (128, 128, 0)   3
    6      human                (64, 64, 0)     6
    7      moving car           (64, 0, 128)    4

Two other orders are in use: GeoSeg/UNetFormer (``OFFICIAL_TO_GEOSEG`` maps ours to theirs) and
SegEarth-OV, which keeps the official order but merges moving car into static car (7 → 3,
``SEGEARTH_OV_MERGE``). Colours are decoded with an exact-match table in RGB order; a colour outside
the table becomes ignore (255), is counted and reported per file (the toolkit silently makes it
clutter), or raises with ``strict=True``. mIoU is over all 8 classes, clutter included, as in the
official ``evaluate.py`` and GeoSeg.

Protocols: ``official`` (train = uavid_train, val = uavid_val) and ``trainval`` (train = uavid_train
+ uavid_val, no val split: what GeoSeg trains on for the server). Test labels are private: test frames
are cut into image patches with their origins, ``predict`` runs over them, and
``rsseg.data.UAVidSubmissionWriter`` stitches the patches back into full frames and
writes the server's ``seqN/Labels/<frame>.png`` colour PNGs. ``setup("test")`` refuses.

Tiling (``tiling.split_grid``): no pixel is lost (GeoSeg crops the top 112 rows away). Train and test
windows step by ``stride`` with the last row and column aligned to the frame edge, so a 2160-px frame
with 1024-px patches gives three rows without padding; val is cut without overlap (the last row and
column padded: images 0, masks ignore), so each val pixel is counted once in the metrics.
"""
