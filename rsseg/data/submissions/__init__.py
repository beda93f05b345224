"""Test-server submissions written by ``rsseg predict`` callbacks: LoveDA (``loveda``: one zip of index
PNGs) and UAVid (``uavid``: whole frames stitched from patches, as colour PNGs)."""
